"""Digest of the reranker's outputs over thousands of random cases, to prove a change bit-identical.

Runs embtab.rerank.calibrated (lists, objective and miscalibration) and embtab.rerank.topk on
seeded random cases covering: C, G, k, lam (0, 1 and between), alpha (0 and > 0), item
weights from even genre splits (few distinct values) and from Dirichlet draws (real-valued,
up to G * D above the dense key-map limit), float32 and float64 scores, score-sorted and
shuffled rows, -inf scores, explicit candidate ids, single users and batches, at every ISA
level the testing hook offers. Prints one SHA-256 over every output byte and the case count.

Usage: PYTHONPATH=python python scripts/rerank_bits.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

from embtab import _core, rerank

# The ISA cap: _core._testing.set_isa_limit (older builds: _core._set_isa_limit), so that the
# same script digests a build from before the test hooks moved.
_set_isa_limit = getattr(getattr(_core, "_testing", None), "set_isa_limit", None) or getattr(_core, "_set_isa_limit")


def item_dist(rng, n_items, G, kind):
    if kind == "split":
        gs = [rng.choice(G, size=rng.integers(1, min(G, 3) + 1), replace=False) for _ in range(n_items)]
        return rerank.genre_distribution(gs, n_genres=G)
    out = np.zeros((n_items, G))
    for i in range(n_items):
        m = int(rng.integers(1, min(G, 3) + 1))
        out[i, rng.choice(G, size=m, replace=False)] = rng.dirichlet(np.ones(m))
    out /= out.sum(axis=1, keepdims=True)
    return out


def cases(quick):
    rng = np.random.default_rng(20261201)
    shapes = [(1, 5, 3), (1, 40, 19), (3, 33, 7), (16, 100, 19), (40, 64, 4), (2, 300, 40), (1, 200, 1)]
    n = 0
    for U, C, G in shapes:
        for kind in ("split", "dirichlet"):
            for trial in range(3 if quick else 40):
                n_items = int(rng.integers(C, 2 * C + 1))
                D = item_dist(rng, n_items, G, kind)
                k = int(rng.integers(1, min(C, 12) + 1))
                lam = float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]))
                alpha = float(rng.choice([0.0, 0.01, 0.3]))
                dtype = np.float32 if trial % 2 else np.float64
                scores = rng.standard_normal((U, C)).astype(dtype)
                if trial % 3 == 0:
                    scores = -np.sort(-scores, axis=1)
                if trial % 4 == 1:
                    scores[:, rng.integers(0, C, size=max(1, C // 5))] = -np.inf
                target = rng.dirichlet(np.ones(G), size=U)
                if trial % 5 == 2:
                    target[0] = 0.0
                cand = None
                if trial % 3 == 1:
                    cand = rng.integers(0, n_items, size=(U, C)).astype(np.int64)
                n += 1
                yield scores, D, target, k, lam, alpha, cand
    # real-valued weights whose (category, weight) pairs exceed the dense key map
    for trial in range(2 if quick else 6):
        G, n_items, C = 300, 600, 150
        D = item_dist(rng, n_items, G, "dirichlet")
        scores = rng.standard_normal((2, C))
        target = rng.dirichlet(np.ones(G), size=2)
        yield scores, D, target, 10, 0.5, [0.01, 0.0][trial % 2], None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases (a smoke run)")
    args = ap.parse_args(argv)
    levels = ["auto", "avx2", "baseline"]
    h = hashlib.sha256()
    count = 0
    try:
        for case in cases(args.quick):
            scores, D, target, k, lam, alpha, cand = case
            for level in levels:
                _set_isa_limit(level)
                for threads in (1, 2):
                    r = rerank.calibrated(scores, D, target, k, lam=lam, alpha=alpha, candidates=cand,
                                          num_threads=threads, return_objective=True)
                    for a in r:
                        h.update(np.ascontiguousarray(a).tobytes())
                    count += 1
                v, i = rerank.topk(scores, k)
                h.update(v.tobytes())
                h.update(i.tobytes())
    finally:
        _set_isa_limit("auto")
    print(f"{count} calibrated calls, sha256 {h.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
