"""Benchmark of :mod:`embtab.distributed`: W gloo ranks on one machine against one process.

Workload: a Zipf(1.1) stream over ``n_ids`` distinct random 64-bit IDs; every step looks up a
global batch of ``batch`` IDs (each rank ``batch / W`` of them), sums the vectors into a loss and
runs backward (``sparse=True`` gradients, no optimizer step: the module's own cost). The tables
are warmed with every ID first, so the timed steps are steady-state lookups.

- single process: one :class:`embtab.nn.CuckooEmbedding` on the whole batch, one torch thread;
- sharded: W processes (fork, rendezvous through a ``file://`` store), one torch thread each;
  a step's time is the slowest rank's.

Traffic is what each rank sends to other ranks per step (IDs, the per-peer counts, vectors,
gradients), against the minimum: the distinct remote IDs of the rank's batch plus one vector for
each (forward), and one gradient for each (backward). Every figure is the median of
``repeats`` runs of ``iters`` steps; the workload is built outside the timed region and the
outputs' checksum is compared between the two setups.

Run it with ``python bench/bench_distributed.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import torch

from embtab.benchmarks._harness import machine, machine_line, zipf_stream

__all__ = ["format_markdown", "run"]


def _workload(n_ids: int, batch: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 2**64, int(n_ids * 1.01), dtype=np.uint64))[:n_ids]
    rng.shuffle(keys)
    return zipf_stream(keys.view(np.int64), steps * batch, 1.1, rng).reshape(steps, batch)


def _step(m, ids: torch.Tensor) -> float:
    out = m(ids)
    out.sum().backward()
    m.zero_grad(set_to_none=True)
    return float(out.detach().double().sum())


def _single(stream: np.ndarray, all_ids: np.ndarray, dim: int, iters: int, repeats: int) -> dict:
    import embtab.nn

    torch.set_num_threads(1)
    m = embtab.nn.CuckooEmbedding(len(all_ids), dim, sparse=True, seed=1)
    m(torch.from_numpy(all_ids))
    times, check = [], 0.0
    for rep in range(repeats):
        t0 = time.perf_counter()
        for i in range(iters):
            check += _step(m, torch.from_numpy(stream[rep * iters + i]))
        times.append((time.perf_counter() - t0) / iters)
    return {"seconds_per_step": float(np.median(times)), "checksum": check}


def _rank(rank: int, world_size: int, store: str, out_dir: str, stream: np.ndarray, all_ids: np.ndarray,
          dim: int, iters: int, repeats: int) -> None:
    import torch.distributed as dist

    from embtab.distributed import ShardedCuckooEmbedding

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    m = ShardedCuckooEmbedding(len(all_ids), dim, sparse=True, seed=1)
    m(torch.from_numpy(np.array_split(all_ids, world_size)[rank]))
    for k in m.traffic:
        m.traffic[k] = 0
    times, check = [], 0.0
    for rep in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(iters):
            part = np.array_split(stream[rep * iters + i], world_size)[rank]
            check += _step(m, torch.from_numpy(part))
        t = torch.tensor([(time.perf_counter() - t0) / iters])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(float(t))
    c = torch.tensor([check], dtype=torch.float64)
    dist.all_reduce(c)
    res = {"rank": rank, "seconds_per_step": float(np.median(times)), "checksum": float(c),
           "traffic": dict(m.traffic), "num_ids": m.num_ids}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def run(world_size: int = 2, n_ids: int = 10**6, batch: int = 2**15, dim: int = 32, iters: int = 20,
        repeats: int = 5, seed: int = 0, quick: bool = False) -> dict:
    """Run the benchmark; returns JSON-serialisable raw results (see the module docstring)."""
    import torch.multiprocessing as tmp

    import embtab

    if quick:
        n_ids, batch, iters, repeats = 10**4, 2**10, 3, 2
    stream = _workload(n_ids, batch, iters * repeats, seed)
    all_ids = np.unique(stream)
    single = _single(stream, all_ids, dim, iters, repeats)
    with tempfile.TemporaryDirectory() as d:
        tmp.start_processes(_rank, args=(world_size, os.path.join(d, "store"), d, stream, all_ids, dim, iters,
                                         repeats), nprocs=world_size, join=True, start_method="fork")
        ranks = []
        for r in range(world_size):
            with open(os.path.join(d, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
    if not np.isclose(ranks[0]["checksum"], single["checksum"], rtol=1e-6):
        raise AssertionError(f"sharded outputs' checksum {ranks[0]['checksum']} differs from the single "
                             f"process's {single['checksum']}")
    steps = iters * repeats
    traffic = {}
    for k in ranks[0]["traffic"]:
        if k != "steps":
            traffic[k] = float(np.mean([r["traffic"][k] for r in ranks])) / steps
    return {
        "benchmark": "distributed",
        "embtab": embtab.__version__,
        "torch": torch.__version__,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "world_size": world_size, "n_ids": n_ids, "batch": batch, "dim": dim, "iters": iters,
        "repeats": repeats, "zipf_s": 1.1,
        "single_seconds_per_step": single["seconds_per_step"],
        "sharded_seconds_per_step": max(r["seconds_per_step"] for r in ranks),
        "traffic_per_rank_per_step": traffic,
        "ids_per_rank": [r["num_ids"] for r in ranks],
    }


def format_markdown(r: dict) -> str:
    """Render :func:`run`'s results as Markdown."""
    m, t = r["machine"], r["traffic_per_rank_per_step"]
    s1, sw, W = r["single_seconds_per_step"], r["sharded_seconds_per_step"], r["world_size"]
    sent = t["id_bytes"] + t["count_bytes"] + t["vector_bytes"] + t["grad_bytes"]
    minimum = t["min_id_bytes"] + 2 * t["min_vector_bytes"]
    fwd_min = t["min_id_bytes"] + t["min_vector_bytes"]
    kb = 1024
    return "\n".join([
        f"Sharded tables: global batch {r['batch']:,} IDs per step, Zipf({r['zipf_s']}) over {r['n_ids']:,} "
        f"distinct 64-bit IDs, d={r['dim']}, float32, forward + backward (sparse grads), median of "
        f"{r['repeats']} runs of {r['iters']} steps; {machine_line(m)}; gloo over loopback.",
        "",
        "| setup | ms / step | M IDs/s | vs single process |",
        "|---|---:|---:|---:|",
        f"| 1 process, 1 thread | {s1 * 1e3:.2f} | {r['batch'] / s1 / 1e6:.2f} | 1.00 |",
        f"| {W} ranks x 1 thread | {sw * 1e3:.2f} | {r['batch'] / sw / 1e6:.2f} | {s1 / sw:.2f} |",
        "",
        f"Bytes each rank sends to other ranks per step (mean over ranks; IDs per rank: {r['ids_per_rank']}):",
        "",
        "| what | KiB / step | minimum KiB / step | ratio |",
        "|---|---:|---:|---:|",
        f"| IDs (+ per-peer counts) | {(t['id_bytes'] + t['count_bytes']) / kb:.1f} | {t['min_id_bytes'] / kb:.1f} | "
        f"{(t['id_bytes'] + t['count_bytes']) / max(t['min_id_bytes'], 1):.2f} |",
        f"| vectors (forward) | {t['vector_bytes'] / kb:.1f} | {t['min_vector_bytes'] / kb:.1f} | "
        f"{t['vector_bytes'] / max(t['min_vector_bytes'], 1):.2f} |",
        f"| gradients (backward) | {t['grad_bytes'] / kb:.1f} | {t['min_vector_bytes'] / kb:.1f} | "
        f"{t['grad_bytes'] / max(t['min_vector_bytes'], 1):.2f} |",
        f"| forward (IDs + vectors) | {(t['id_bytes'] + t['count_bytes'] + t['vector_bytes']) / kb:.1f} | "
        f"{fwd_min / kb:.1f} | {(t['id_bytes'] + t['count_bytes'] + t['vector_bytes']) / max(fwd_min, 1):.2f} |",
        f"| total | {sent / kb:.1f} | {minimum / kb:.1f} | {sent / max(minimum, 1):.2f} |",
        "",
        f"Remote IDs per rank per step: {t['remote_ids']:.0f} occurrences, {t['remote_distinct_ids']:.0f} distinct.",
    ])
