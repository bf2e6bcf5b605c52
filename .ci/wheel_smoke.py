"""Smoke test of an installed embtab wheel: run from outside the source tree, no compiler needed.

Used by `.ci/run` (step 2, the repaired manylinux wheel in a venv with no compiler reachable) and
by cibuildwheel's test command (pyproject.toml, [tool.cibuildwheel]). It checks that the compiled
core loads and that each native entry point a user reaches first gives the right answer:
a table round trip (insert, lookup, save, load), a module forward and backward, a calibrated
rerank against a brute-force reference, and top-k against NumPy. Exits non-zero on any failure.
"""

import math
import os
import sys
import tempfile

import numpy as np

import embtab
import embtab._core as core

here = os.path.dirname(os.path.abspath(embtab.__file__))
if os.path.exists(os.path.join(here, os.pardir, os.pardir, "pyproject.toml")):
    sys.exit(f"wheel smoke test: embtab was imported from a source tree ({here}), not a wheel")

# Table round trip: every 64-bit value is a key; rows survive save/load bit for bit.
keys = np.array([0, 1, 2**63 - 1, -(2**63), -1, 42], dtype=np.int64)
t = embtab.CuckooTable(num_threads=2)
rows = t.lookup_or_insert(keys)
assert sorted(rows.tolist()) == list(range(len(keys))), rows
assert np.array_equal(t.lookup(keys[::-1].copy()), rows[::-1])
assert t.lookup(np.array([7], dtype=np.int64)).tolist() == [-1]
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "ids.embtab")
    t.save(path)
    back = embtab.CuckooTable.load(path)
assert np.array_equal(back.lookup(keys), rows)

# Module forward and backward on raw IDs.
import torch  # noqa: E402

import embtab.nn  # noqa: E402

emb = embtab.nn.CuckooEmbedding(16, 4, seed=0)
ids = torch.tensor([[2**62 + 7, 12345], [12345, -1]])
out = emb(ids)
assert out.shape == (2, 2, 4), out.shape
assert torch.equal(out[0, 1], out[1, 0]), "one ID, two different rows"
out.pow(2).sum().backward()
assert emb.weight.grad is not None and emb.num_ids == 3

# Calibrated rerank: the greedy's lists against a brute-force greedy in plain Python.
from embtab import rerank  # noqa: E402

rng = np.random.default_rng(0)
n_items, G, C, k, lam, alpha = 30, 4, 12, 4, 0.5, 0.01
item_dist = rerank.genre_distribution(
    [rng.choice(G, rng.integers(1, 3), replace=False).tolist() for _ in range(n_items)], n_genres=G)
target = np.array([[0.7, 0.3, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
cand = np.stack([rng.choice(n_items, C, replace=False) for _ in target]).astype(np.int64)
scores = rng.random(cand.shape)
lists = rerank.calibrated(scores, item_dist, target, k=k, lam=lam, alpha=alpha, candidates=cand)


def greedy(s, c, p):
    picked = []
    for _ in range(k):
        best, best_j = -math.inf, -1
        for j in range(C):
            if j in picked:
                continue
            sel = picked + [j]
            q = item_dist[c[sel]].mean(axis=0)
            qt = (1 - alpha) * q + alpha * p
            kl = sum(pg * math.log(pg / qg) for pg, qg in zip(p, qt) if pg > 0)
            obj = (1 - lam) * s[sel].sum() - lam * kl
            if obj > best:
                best, best_j = obj, j
        picked.append(best_j)
    return c[picked]


for u in range(len(target)):
    expect = greedy(scores[u], cand[u], target[u])
    assert np.array_equal(lists[u], expect), (u, lists[u], expect)

# Top-k against NumPy.
x = rng.random((5, 100))
vals, idx = rerank.topk(x, 7)
assert np.array_equal(vals, -np.sort(-x, axis=1)[:, :7])
assert np.array_equal(np.take_along_axis(x, idx, axis=1), vals)

print(f"wheel smoke test passed: embtab {embtab.__version__} from {here}; "
      f"vector code {'on' if core._vector_code else 'off'}; torch {torch.__version__}; "
      f"numpy {np.__version__}; python {sys.version.split()[0]}")
