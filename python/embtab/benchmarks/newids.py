"""Benchmark of the new-ID path (issue 16, item 4): where building, first sightings and growth spend
their time.

Run it with ``embtab bench newids`` or ``python bench/bench_newids.py [--quick] [--threads N]``.

Three measurements, each with its parts timed inside the same calls:

- ``build``: a :class:`embtab.CuckooTable` built from empty with 10,000,000 distinct random
  64-bit IDs in batches of 65,536 (``--quick``: 1,000,000), growth included: M keys/s at the
  default max_load_factor and at 0.95, the time spent in the calls that grew the table against
  the others, and the same inserts into a table reserved up front (no growth). Beside it, the memory floor of this machine: seconds to write a
  freshly allocated array of the final index's size (page faults included) and to write it
  again (no faults); and the cost of cold pages: a table's reserved index (transparent huge
  pages) created after 3 s with nothing allocated, at once again, and a 4 KiB-page array of
  the same size after the same idle (``--quick``: 0.2 s).
- ``first``: a ``CuckooEmbeddingBag(1,000,000, 64, optimizer=RowWiseAdagrad)`` (raw IDs; 65,536
  Zipf(1.1) IDs per batch in bags of 8, sum pooling): the first training pass over 8 batches
  (every ID new to the module) against a steady pass over the same batches, with the first
  pass split into finding the batch's new IDs (``first_occurrence``), their initial vectors
  (``init_vectors``), the rest of the insert (table insert, row bookkeeping, copying the
  vectors in, resetting optimizer state) and everything else of the step.
- ``growth``: one training step whose 65,536 new IDs make that module grow from 500,000 to
  1,000,000 rows, against the same step on a module created with 1,000,000 rows; split into the
  weight and optimizer-state resize, the table's reserve and the rest.

Every figure is the median over ``repeats`` runs (a fresh module or table each time).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import torch

import embtab
import embtab.nn as enn
import embtab.optim as eo
from embtab.benchmarks._harness import machine, machine_line, torch_threads, zipf_ranks

__all__ = ["run", "format_markdown"]


class _Clock:
    """Accumulates the wall time of wrapped calls, by name."""

    def __init__(self):
        self.seconds: dict = {}

    def wrap(self, owner, name: str, label: str):
        f = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)
        return f


def _median_dicts(runs: list) -> dict:
    keys = runs[0].keys()
    return {k: float(np.median([r[k] for r in runs])) for k in keys}


def _memory_floor(nbytes: int) -> dict:
    """Seconds to write a fresh array of nbytes (first touch: page faults) and to rewrite it."""
    t0 = time.perf_counter()
    a = torch.empty(nbytes // 8, dtype=torch.float64)
    a.fill_(1.0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    a.fill_(2.0)
    again = time.perf_counter() - t0
    del a
    return {"first_touch_s": first, "rewrite_s": again}


def _cold_pages(n_keys: int, idle_s: float) -> dict:
    """Where a process's first build loses its time: seconds to create a table reserved for
    n_keys (its index allocated with transparent huge pages, as every index of 2 MiB or more
    is, and written once) after idle_s seconds with nothing allocated, then at once again
    (reusing the memory just freed), and to write a torch array of the same size (4 KiB
    pages) after the same idle. On a virtual machine whose kernel hands memory left free for a
    while back to the host, the first is the first build's page-fault cost."""
    time.sleep(idle_s)
    t0 = time.perf_counter()
    t = embtab.CuckooTable(n_keys)
    idle = time.perf_counter() - t0
    nbytes = t.stats()["memory_bytes"]
    del t
    t0 = time.perf_counter()
    t = embtab.CuckooTable(n_keys)
    again = time.perf_counter() - t0
    del t
    time.sleep(idle_s)
    t0 = time.perf_counter()
    a = torch.empty(nbytes // 8, dtype=torch.float64)
    a.fill_(1.0)
    small = time.perf_counter() - t0
    del a
    return {"index_bytes": float(nbytes), "table_idle_s": idle, "table_again_s": again,
            "small_pages_idle_s": small}


def _build(keys: np.ndarray, batch: int, threads: int, reserve: bool, max_load: float) -> dict:
    t = embtab.CuckooTable(
        len(keys) if reserve else 0, num_threads=threads, max_load_factor=max_load
    )
    grow_s = other_s = 0.0
    t_all = time.perf_counter()
    for i in range(0, len(keys), batch):
        before = t.stats()["grows"]
        t0 = time.perf_counter()
        t.lookup_or_insert(keys[i : i + batch])
        dt = time.perf_counter() - t0
        if t.stats()["grows"] != before:
            grow_s += dt
        else:
            other_s += dt
    total = time.perf_counter() - t_all
    if len(t) != len(keys):
        raise AssertionError(f"the build holds {len(t)} keys, expected {len(keys)}")
    st = t.stats()
    del t
    gc.collect()
    return {
        "seconds": total,
        "growth_calls_s": grow_s,
        "other_calls_s": other_s,
        "grows": st["grows"],
        "index_bytes": st["memory_bytes"],
    }


def _module(n: int, dim: int, threads: int):
    return enn.CuckooEmbeddingBag(
        n, dim, mode="sum", seed=0, optimizer=eo.RowWiseAdagrad(lr=0.01), num_threads=threads
    )


def _step(m, ids, offsets) -> None:
    loss = m(ids, offsets).sum()
    loss.backward()
    if not np.isfinite(loss.item()):
        raise AssertionError("a benchmark step gave a non-finite loss")


def _first_pass(raw, offsets, n, dim, threads) -> dict:
    clock = _Clock()
    m = _module(n, dim, threads)
    saved_init = clock.wrap(enn, "init_vectors", "initial vectors")
    clock.wrap(m, "_insert", "insert")
    try:
        t0 = time.perf_counter()
        for b in range(len(raw)):
            _step(m, raw[b], offsets)
        first = time.perf_counter() - t0
    finally:
        enn.init_vectors = saved_init
    # Finding each batch's new IDs: the module's hash pass (a scratch CuckooTable's
    # lookup_or_insert and items), timed here on the same new IDs.
    seen = np.empty(0, dtype=np.int64)
    for b in range(len(raw)):
        ids = raw[b].numpy()
        cand = ids[~np.isin(ids, seen)]
        t0 = time.perf_counter()
        scratch = embtab.CuckooTable(len(cand), num_threads=threads)
        scratch.lookup_or_insert(cand)
        distinct, _ = scratch.items()
        clock.seconds["find new IDs"] = clock.seconds.get("find new IDs", 0.0) + time.perf_counter() - t0
        seen = np.concatenate([seen, distinct.view(np.int64)])
    t0 = time.perf_counter()
    for b in range(len(raw)):
        _step(m, raw[b], offsets)
    steady = time.perf_counter() - t0
    s = clock.seconds
    out = {
        "first_pass_s": first,
        "steady_pass_s": steady,
        "find_new_ids_s": s.get("find new IDs", 0.0),
        "init_vectors_s": s.get("initial vectors", 0.0),
        "rest_of_insert_s": s.get("insert", 0.0) - s.get("initial vectors", 0.0),
        "new_ids": float(m.num_ids),
    }
    out["rest_of_step_s"] = first - out["find_new_ids_s"] - s.get("insert", 0.0)
    # (finding new IDs happens in the step, outside _insert: the rest excludes it)
    del m
    gc.collect()
    return out


def _growth(keys, offsets, n, dim, threads, batch) -> dict:
    res = {}
    for presized in (False, True):
        m = _module(n if presized else n // 2, dim, threads)
        half = n // 2
        for i in range(0, half, batch):
            chunk = keys[i : min(i + batch, half)]
            k = len(chunk) // 8 * 8
            _step(m, torch.from_numpy(chunk[:k]), torch.arange(0, k, 8))
        clock = _Clock()
        if not presized:
            clock.wrap(m, "_resize_rows", "resize")
            clock.wrap(m, "_grow", "grow")
        ids = torch.from_numpy(keys[half + batch : half + 2 * batch])
        t0 = time.perf_counter()
        _step(m, ids, offsets)
        dt = time.perf_counter() - t0
        if presized:
            res["presized_step_s"] = dt
        else:
            if m.num_embeddings != n:
                raise AssertionError(f"the module grew to {m.num_embeddings} rows, expected {n}")
            res["growth_step_s"] = dt
            res["resize_s"] = clock.seconds.get("resize", 0.0)
            res["table_reserve_s"] = clock.seconds.get("grow", 0.0) - res["resize_s"]
        del m
        gc.collect()
    return res


def run(quick: bool = False, seed: int = 0, repeats: int = 3, threads: int = 1) -> dict:
    """Run the benchmark; returns JSON-serialisable raw results.

    Parameters
    ----------
    quick : bool
        10^6 keys to build, a 100,000-row module and batches of 8,192 (a smoke run).
    seed : int
        Seed of the workload.
    repeats : int
        Runs of each measurement (the median is reported).
    threads : int
        ``num_threads`` of the table and the module, and torch's threads (0: all hardware
        threads and torch's default).
    """
    with torch_threads(threads):
        return _run(quick, seed, repeats, threads)


def _run(quick: bool, seed: int, repeats: int, threads: int) -> dict:
    rng = np.random.default_rng(seed)
    n_keys = 10**6 if quick else 10**7
    n, dim = (10**5, 64) if quick else (10**6, 64)
    batch = 2**13 if quick else 2**16
    keys = rng.integers(-(2**63), 2**63 - 1, n_keys, dtype=np.int64)
    default_load = embtab.CuckooTable().config["max_load_factor"]
    builds = [_build(keys, 2**16, threads, False, default_load) for _ in range(repeats)]
    tight = [_build(keys, 2**16, threads, False, 0.95) for _ in range(repeats)]
    reserved = [_build(keys, 2**16, threads, True, default_load) for _ in range(repeats)]
    reserved_095 = [_build(keys, 2**16, threads, True, 0.95) for _ in range(repeats)]
    floor = [_memory_floor(builds[0]["index_bytes"]) for _ in range(repeats)]
    idle_s = 0.2 if quick else 3.0
    cold = [_cold_pages(n_keys, idle_s) for _ in range(repeats)]
    ids = np.unique(rng.integers(-(2**63), 2**63 - 1, int(n * 1.2), dtype=np.int64))
    rng.shuffle(ids)
    ranks = [zipf_ranks(n, batch, 1.1, rng) for _ in range(8)]
    raw = [torch.from_numpy(ids[r]) for r in ranks]
    offsets = torch.arange(0, batch, 8)
    first = [_first_pass(raw, offsets, n, dim, threads) for _ in range(repeats)]
    growth = [_growth(ids, offsets, n, dim, threads, batch) for _ in range(repeats)]
    return {
        "benchmark": "newids",
        "machine": machine(),
        "threads": threads,
        "n_keys": n_keys,
        "module_rows": n,
        "embedding_dim": dim,
        "batch": batch,
        "repeats": repeats,
        "max_load_factor": default_load,
        "build": _median_dicts(builds),
        "build_rates": [n_keys / b["seconds"] for b in builds],
        "build_095": _median_dicts(tight),
        "build_095_rates": [n_keys / b["seconds"] for b in tight],
        "build_reserved": _median_dicts(reserved),
        "build_reserved_095": _median_dicts(reserved_095),
        "memory_floor": _median_dicts(floor),
        "cold_pages": _median_dicts(cold),
        "cold_idle_s": idle_s,
        "first": _median_dicts(first),
        "growth": _median_dicts(growth),
    }


def format_markdown(r: dict) -> str:
    b, br, fl, f, g = r["build"], r["build_reserved"], r["memory_floor"], r["first"], r["growth"]
    runs = ", ".join(f"{x / 1e6:.2f}" for x in r["build_rates"])
    runs95 = ", ".join(f"{x / 1e6:.2f}" for x in r["build_095_rates"])
    mb = b["index_bytes"] / 2**20
    cp = r["cold_pages"]
    idle = f"{r['cold_idle_s']:g}"
    cold_x = cp["table_idle_s"] / cp["table_again_s"]
    cold_small = cp["table_idle_s"] / cp["small_pages_idle_s"]
    rate = r["n_keys"] / b["seconds"] / 1e6
    out = [
        f"Machine: {machine_line(r['machine'])}; num_threads {r['threads']}; median of "
        f"{r['repeats']} runs each.",
        "",
        f"**Build** of {r['n_keys']:,} random 64-bit IDs from empty, batches of 65,536, "
        f"max_load_factor {r['max_load_factor']} (the default): {rate:.2f} M keys/s median "
        f"(runs in order: {runs}; target >= 10: {'met' if rate >= 10 else 'missed'}), "
        f"{b['seconds'] * 1e3:.0f} ms: {b['growth_calls_s'] * 1e3:.0f} ms in the "
        f"{b['grows']:.0f} calls that grew the table, {b['other_calls_s'] * 1e3:.0f} ms in the "
        f"others. With max_load_factor 0.95: {r['n_keys'] / r['build_095']['seconds'] / 1e6:.2f} "
        f"M keys/s (runs: {runs95}). The same inserts into a table reserved up front (no "
        f"growth): {r['n_keys'] / br['seconds'] / 1e6:.2f} M keys/s at {r['max_load_factor']}, "
        f"{r['n_keys'] / r['build_reserved_095']['seconds'] / 1e6:.2f} at 0.95. Writing a fresh {mb:.0f} MiB array "
        f"(the final index's size) takes {fl['first_touch_s'] * 1e3:.0f} ms, "
        f"{fl['rewrite_s'] * 1e3:.0f} ms to write it again: the page faults of first touch cost "
        f"{(fl['first_touch_s'] - fl['rewrite_s']) * 1e3:.0f} ms per {mb:.0f} MiB here.",
        "",
        f"**Cold pages**: creating a table reserved for {r['n_keys']:,} keys (a "
        f"{cp['index_bytes'] / 2**20:.0f} MiB index on transparent huge pages, written once) "
        f"took {cp['table_idle_s'] * 1e3:.0f} ms after {idle} s with nothing allocated and "
        f"{cp['table_again_s'] * 1e3:.0f} ms at once again; writing a torch array of the same "
        f"size (4 KiB pages) after the same idle took {cp['small_pages_idle_s'] * 1e3:.0f} ms. "
        f"Huge pages that sat free cost {cold_x:.1f}x huge pages just freed, and "
        f"{cold_small:.1f}x 4 KiB pages after the same idle.",
        "",
        f"**First sighting**: `CuckooEmbeddingBag({r['module_rows']:,}, {r['embedding_dim']}, "
        f"optimizer=RowWiseAdagrad)`, 8 batches of {r['batch']:,} Zipf(1.1) raw IDs "
        f"({f['new_ids']:,.0f} distinct):",
        "",
        "| pass over the 8 batches | ms |",
        "|---|---:|",
        f"| first (every ID new) | {f['first_pass_s'] * 1e3:.1f} |",
        f"| - finding each batch's new IDs (the hash pass of `first_occurrence`, timed apart on "
        f"the same IDs) | {f['find_new_ids_s'] * 1e3:.1f} |",
        f"| - their initial vectors (`init_vectors`) | {f['init_vectors_s'] * 1e3:.1f} |",
        f"| - the rest of the insert (table, bookkeeping, copy, optimizer state) | "
        f"{f['rest_of_insert_s'] * 1e3:.1f} |",
        f"| - the rest of the step (lookup, forward, backward, fused update) | "
        f"{f['rest_of_step_s'] * 1e3:.1f} |",
        f"| steady (the same batches again) | {f['steady_pass_s'] * 1e3:.1f} |",
        "",
        f"First pass / steady pass: {f['first_pass_s'] / f['steady_pass_s']:.2f}x.",
        "",
        f"**Growth**: a step whose {r['batch']:,} new IDs grow the module from "
        f"{r['module_rows'] // 2:,} to {r['module_rows']:,} rows took "
        f"{g['growth_step_s'] * 1e3:.1f} ms against {g['presized_step_s'] * 1e3:.1f} ms for the "
        f"same step on a module created with {r['module_rows']:,} rows: "
        f"{g['resize_s'] * 1e3:.1f} ms resizing the weight and optimizer state, "
        f"{g['table_reserve_s'] * 1e3:.1f} ms reserving the table.",
    ]
    return "\n".join(out)
