"""How per-call costs scale with the table, catalogue or user count, where they should not.

Run it with ``embtab bench scaling`` or ``python bench/bench_scaling.py [--quick]``.

Each part times one operation at a small and a large size, with a reference of the same work
whose cost is known not to grow with that size, in the same process; the report gives each
time and the large/small ratio (about 1 for a cost that does not depend on the size, and the
size ratio for one that scales with it):

- ``lfu_forward``: a training forward of 8 known IDs through ``CuckooEmbedding`` with
  ``on_full="evict_lfu"`` (no eviction), at ``R`` rows, against the same module with
  ``on_full="grow"``; the LFU counts are summed per distinct row of the batch.
- ``evict_forward``: a training forward (no gradient) of 4,096 new IDs through a full
  ``CuckooEmbedding(R, 16)`` with ``on_full="evict_lru"`` and ``"evict_lfu"``: victims chosen
  among R rows, their IDs erased, the new IDs inserted into the freed rows and initialised;
  against the same forward of 4,096 known IDs (``known``). LRU's victims come from the rows of
  the oldest steps (``embtab/_recency.py``, from 2^18 rows on); LFU's choice reads every row
  (O(R)); the rest is O(batch).
- ``expiry_forward``: training forwards (no gradient) of a stream of 4,096 Zipf(1.1) draws
  per step over 200,000 IDs through ``CuckooEmbedding(R, 16, expire_after=20)``, whose live
  IDs (about 15,000) expire and return all the time; ``R`` is the initial size (the small
  module grows to hold them). The due rows come from the steps now due (from 2^18 rows on),
  not from a pass over every row's last step; ``expire_s`` is the expiry part alone.
  ``expiry_index`` runs the same stream at 2^16 and 2^18 rows with the index forced off
  (``scan``) and on (``index``): where the module's threshold (``_recency.MIN_ROWS``) sits.
- ``reused_rows``: ``CuckooTable.lookup_or_insert`` of 65,536 new IDs into a table of R IDs
  (capacity for R / 0.7) whose 65,536 rows were just freed by ``erase`` (the new IDs take the
  freed rows, lowest first), against the same insert into fresh rows (a table of R - 65,536
  IDs); and the ``erase`` itself.
- ``rerank_one_user``: ``rerank.calibrated`` of one user (200 candidates, k = 10) with a
  prebuilt ``ItemDistribution`` over ``n_items`` items; the distribution's arrays are checked
  once when it is built, not per call.
- ``recommend``: ``train.recommend`` over ``U`` users of a 200-item catalogue (an untrained
  d = 16 model), against the reference that embeds every user once and scores chunks of 4,096
  users with one matrix product each: both are linear in ``U``, and their ratio stays near 1.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from embtab.benchmarks._harness import machine, machine_line, torch_threads

__all__ = ["format_markdown", "run"]


def _median_call(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``calls`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls)
    return float(np.median(out))


def _filled_module(R: int, policy: str, seed: int):
    """A ``CuckooEmbedding(R, 16)`` with ``on_full=policy`` holding the R IDs ``7 r + 1``."""
    from embtab.nn import CuckooEmbedding

    ids = np.arange(R, dtype=np.int64) * 7 + 1
    m = CuckooEmbedding(R, 16, num_threads=1, on_full=policy, seed=seed)
    with torch.no_grad():
        for i in range(0, R, 1 << 16):
            m(torch.from_numpy(ids[i:i + (1 << 16)]))
    return m


def _lfu_forward(R: int, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = np.arange(R, dtype=np.int64) * 7 + 1
    batches = [torch.from_numpy(ids[rng.integers(0, R, 8)]) for _ in range(200)]
    res = {}
    for policy in ("evict_lfu", "grow"):
        m = _filled_module(R, policy, seed)
        it = iter(range(10**9))

        def step(m=m, it=it):
            with torch.no_grad():
                m(batches[next(it) % len(batches)])

        res[policy] = _median_call(step, 200, repeats)
        del m
    return res


def _evict_forward(R: int, repeats: int, seed: int) -> dict:
    res = {}
    for policy in ("evict_lru", "evict_lfu"):
        m = _filled_module(R, policy, seed)
        fresh = iter(range(1, 10**9))

        def new_batch(m=m, fresh=fresh):
            b = next(fresh)
            with torch.no_grad():   # 4,096 IDs no earlier batch had
                m(torch.from_numpy(-(np.arange(4096, dtype=np.int64) + 4096 * b)))

        res[policy] = _median_call(new_batch, 20, repeats)
        known = torch.from_numpy(-(np.arange(4096, dtype=np.int64) + 4096 * next(fresh)))
        with torch.no_grad():
            m(known)

        def known_batch(m=m):
            with torch.no_grad():
                m(known)

        res[policy + "_known"] = _median_call(known_batch, 20, repeats)
        # the mean over many calls too: it includes the recency index's periodic compactions
        t0 = time.perf_counter()
        for _ in range(1000):
            known_batch()
        res[policy + "_known_mean"] = (time.perf_counter() - t0) / 1000
        del m
    return res


def _expiry_forward(R: int, repeats: int, seed: int, index: Optional[bool] = None) -> dict:
    """``index``: True or False forces the recency index on or off (``_recency.MIN_ROWS``);
    None keeps the module's own choice."""
    from embtab import _recency

    saved = _recency.MIN_ROWS
    if index is not None:
        _recency.MIN_ROWS = 0 if index else 1 << 62
    try:
        return _expiry_stream(R, repeats, seed)
    finally:
        _recency.MIN_ROWS = saved


def _expiry_stream(R: int, repeats: int, seed: int) -> dict:
    from embtab.nn import CuckooEmbedding

    rng = np.random.default_rng(seed)
    pool = rng.permutation(200_000).astype(np.int64) * 7 + 1
    batches = [torch.from_numpy(pool[(rng.zipf(1.1, 4096) - 1) % len(pool)]) for _ in range(64)]
    m = CuckooEmbedding(R, 16, num_threads=1, on_full="grow", expire_after=20, seed=seed)
    spent = []
    expire = m._expire

    def timed_expire():
        t0 = time.perf_counter()
        expire()
        spent.append(time.perf_counter() - t0)

    m._expire = timed_expire  # an instance attribute: the module's own method, timed
    with torch.no_grad():
        for b in batches:  # warm-up: the live set reaches its steady size
            m(b)
    it = iter(range(10**9))

    def step():
        with torch.no_grad():
            m(batches[next(it) % len(batches)])

    spent.clear()
    res = {"forward": _median_call(step, 32, repeats), "expire_s": float(np.median(spent)),
           "live_ids": m.num_ids, "rows": m.num_embeddings}
    del m
    return res


def _reused_rows(R: int, repeats: int, seed: int) -> dict:
    from embtab import CuckooTable

    rng = np.random.default_rng(seed)
    n = 1 << 16
    res = {"reused": [], "fresh": [], "erase": []}
    for rep in range(repeats):
        for mode in ("fresh", "reused"):
            t = CuckooTable(int(R / 0.7 * 0.9), num_threads=1, seed=seed)
            t.lookup_or_insert(np.arange(R - (n if mode == "fresh" else 0), dtype=np.int64) * 7 + 1)
            if mode == "reused":
                gone = rng.choice(R, n, replace=False).astype(np.int64) * 7 + 1
                t0 = time.perf_counter()
                t.erase(gone)
                res["erase"].append(time.perf_counter() - t0)
            new = -rng.integers(1, 2**62, n)
            t0 = time.perf_counter()
            t.lookup_or_insert(new)
            res[mode].append(time.perf_counter() - t0)
            del t
    return {k: float(np.median(v)) for k, v in res.items()}


def _rerank_one_user(n_items: int, repeats: int, seed: int) -> float:
    from embtab import rerank

    rng = np.random.default_rng(seed)
    G, C = 19, 200
    dist = np.zeros((n_items, G))
    dist[np.arange(n_items), rng.integers(0, G, n_items)] = 1.0
    items = rerank.ItemDistribution(dist)
    del dist
    cand = rng.choice(n_items, (1, C), replace=False).astype(np.int64)
    scores = np.sort(rng.random((1, C)))[:, ::-1].copy()
    target = np.full((1, G), 1.0 / G)
    return _median_call(lambda: rerank.calibrated(scores, items, target, k=10, lam=0.5,
                                                  candidates=cand, num_threads=1), 200, repeats)


def _recommend(U: int, repeats: int) -> dict:
    from embtab import train as T
    from embtab.data import Interactions

    I = 200
    users = np.repeat(np.arange(U), 5)
    items = np.arange(U * 5) * 7919 % I   # 5 distinct items per user
    data = Interactions("scaling", np.arange(1, U + 1, dtype=np.uint64) * 1000003,
                        np.arange(1, I + 1, dtype=np.uint64) * 17, users, items)
    model = T.build_model(data, T.TrainConfig(dim=16, epochs=0))
    model.eval()

    def reference():
        uv, iv, sets = T.user_vectors(model, data), T.item_vectors(model, data), data.user_items()
        for s in range(0, U, 4096):
            rows = np.arange(s, min(s + 4096, U))
            sc = uv[rows] @ iv.T
            sub = sets.take_rows(rows)
            sc[torch.from_numpy(np.repeat(np.arange(len(rows)), sub.lengths())),
               torch.from_numpy(sub.indices)] = -np.inf
            torch.topk(sc, 10, dim=1)

    return {"recommend": _median_call(lambda: T.recommend(model, data, k=10), 1, repeats),
            "reference": _median_call(reference, 1, repeats)}


def run(quick: bool = False, seed: int = 0, repeats: int = 3) -> dict:
    """Each part at its small and large size (``quick``: smaller large sizes). One torch
    thread and ``num_threads=1`` throughout."""
    sizes = {"lfu_rows": (10**4, 10**5 if quick else 2 * 10**6),
             "rerank_items": (10**4, 10**5 if quick else 2 * 10**6),
             "recommend_users": (2 * 10**4, 8 * 10**4 if quick else 4 * 10**5)}
    with torch_threads(1):
        res = {"benchmark": "scaling", "machine": machine(), "quick": quick, "sizes": sizes,
               "lfu_forward": {str(R): _lfu_forward(R, repeats, seed) for R in sizes["lfu_rows"]},
               "evict_forward": {str(R): _evict_forward(R, repeats, seed)
                                 for R in sizes["lfu_rows"]},
               "expiry_forward": {str(R): _expiry_forward(R, repeats, seed)
                                  for R in sizes["lfu_rows"]},
               # where the index starts to pay: the same stream with it forced off and on
               "expiry_index": {str(R): {"scan": _expiry_forward(R, repeats, seed, index=False),
                                         "index": _expiry_forward(R, repeats, seed, index=True)}
                                for R in (1 << 16, 1 << 18)},
               "reused_rows": _reused_rows(sizes["lfu_rows"][1], repeats, seed),
               "rerank_one_user": {str(n): _rerank_one_user(n, repeats, seed)
                                   for n in sizes["rerank_items"]},
               "recommend": {str(U): _recommend(U, repeats) for U in sizes["recommend_users"]}}
    return res


def format_markdown(r: dict) -> str:
    """The results as a Markdown table: each part's times and large/small ratios."""
    s = r["sizes"]
    lo, hi = (str(x) for x in s["lfu_rows"])
    lf = r["lfu_forward"]
    ev = r["evict_forward"]
    xf = r["expiry_forward"]
    ro = r["rerank_one_user"]
    rlo, rhi = (str(x) for x in s["rerank_items"])
    rc = r["recommend"]
    ulo, uhi = (str(x) for x in s["recommend_users"])
    us = 1e6
    lines = [
        f"Machine: {machine_line(r['machine'])}; 1 thread.",
        "",
        "| part | small | large | large / small |",
        "|---|---:|---:|---:|",
        f"| LFU forward, 8 known IDs ({int(lo):,} → {int(hi):,} rows) | {lf[lo]['evict_lfu'] * us:.0f} µs "
        f"| {lf[hi]['evict_lfu'] * us:.0f} µs | {lf[hi]['evict_lfu'] / lf[lo]['evict_lfu']:.2f} |",
        f"| growing module, same forward | {lf[lo]['grow'] * us:.0f} µs | {lf[hi]['grow'] * us:.0f} µs "
        f"| {lf[hi]['grow'] / lf[lo]['grow']:.2f} |",
        *(f"| {p.split('_')[1].upper()} eviction, 4,096 new IDs | {ev[lo][p] * us:.0f} µs "
          f"| {ev[hi][p] * us:.0f} µs | {ev[hi][p] / ev[lo][p]:.2f} |\n"
          f"| same module, 4,096 known IDs | {ev[lo][p + '_known'] * us:.0f} µs "
          f"| {ev[hi][p + '_known'] * us:.0f} µs | {ev[hi][p + '_known'] / ev[lo][p + '_known']:.2f} |\n"
          f"| same, mean of 1,000 calls | {ev[lo][p + '_known_mean'] * us:.0f} µs "
          f"| {ev[hi][p + '_known_mean'] * us:.0f} µs "
          f"| {ev[hi][p + '_known_mean'] / ev[lo][p + '_known_mean']:.2f} |"
          for p in ("evict_lru", "evict_lfu")),
        f"| expiring forward, 4,096 IDs (`expire_after=20`, {xf[lo]['live_ids']:,} live IDs) "
        f"| {xf[lo]['forward'] * us:.0f} µs | {xf[hi]['forward'] * us:.0f} µs "
        f"| {xf[hi]['forward'] / xf[lo]['forward']:.2f} |",
        f"| of which expiry | {xf[lo]['expire_s'] * us:.0f} µs | {xf[hi]['expire_s'] * us:.0f} µs "
        f"| {xf[hi]['expire_s'] / xf[lo]['expire_s']:.2f} |",
        *(f"| expiry alone at {int(R):,} rows: scan / recency index | | "
          f"{v['scan']['expire_s'] * us:.0f} / {v['index']['expire_s'] * us:.0f} µs | |"
          for R, v in r["expiry_index"].items()),
        f"| insert 65,536 IDs into rows just freed by erase ({int(hi):,} IDs) | | "
        f"{r['reused_rows']['reused'] * us:.0f} µs | |",
        f"| same insert into fresh rows | | {r['reused_rows']['fresh'] * us:.0f} µs | |",
        f"| the erase of 65,536 IDs | | {r['reused_rows']['erase'] * us:.0f} µs | |",
        f"| rerank one user, ItemDistribution ({int(rlo):,} → {int(rhi):,} items) | {ro[rlo] * us:.0f} µs "
        f"| {ro[rhi] * us:.0f} µs | {ro[rhi] / ro[rlo]:.2f} |",
        f"| recommend ({int(ulo):,} → {int(uhi):,} users) | {rc[ulo]['recommend']:.2f} s "
        f"| {rc[uhi]['recommend']:.2f} s | {rc[uhi]['recommend'] / rc[ulo]['recommend']:.2f} |",
        f"| reference: vectors once, one product per chunk | {rc[ulo]['reference']:.2f} s "
        f"| {rc[uhi]['reference']:.2f} s | {rc[uhi]['reference'] / rc[ulo]['reference']:.2f} |",
        "",
        f"recommend / reference at {int(uhi):,} users: "
        f"{rc[uhi]['recommend'] / rc[uhi]['reference']:.2f}.",
    ]
    return "\n".join(lines)
