"""embtab's loops on torch's OpenMP team or on embtab's own pool, in one process.

Usage (from the repository root, the package built or installed):
    python bench/parts/thread_pool.py [--passes 12]

The issue-16 workload of bench_optim.py (a 1,000,000 x 64 ``CuckooEmbeddingBag`` with fused
RowWiseAdagrad; 8 batches of 65,536 Zipf(1.1) raw IDs in bags of 8; forward, ``sum()``,
backward), torch at 2 threads throughout, timed as ms per step for three settings that take
turns pass by pass (so that a machine whose speed drifts shifts all three alike):

- embtab 1 thread;
- embtab 2 threads on embtab's own pool (``embtab.set_thread_pool("embtab")``);
- embtab 2 threads on torch's OpenMP team (``embtab.set_thread_pool("openmp")``, the default).

Prints each setting's median and minimum over ``--passes`` passes of 8 batches, and the
1-thread median over each. ``bench/parts/threads.py`` runs each setting in a process of its own
instead, with torch's thread count and ``OMP_WAIT_POLICY`` varied too.
"""

import argparse
import time

import numpy as np
import torch

import embtab
import embtab.optim as eo
from embtab.benchmarks._harness import machine_line
from embtab.benchmarks.optim import fused_step, workload
from embtab.nn import CuckooEmbeddingBag

SETTINGS = [("embtab 1 thread", 1, "openmp"), ("embtab 2 threads, own pool", 2, "embtab"),
            ("embtab 2 threads, OpenMP team", 2, "openmp")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(f"Machine: {machine_line()}")
    n, dim = 10**6, 64
    _, raw, offsets = workload(n)
    modules = {t: CuckooEmbeddingBag(n, dim, mode="sum", seed=0, num_threads=t,
                                     optimizer=eo.RowWiseAdagrad(lr=0.01, eps=1e-8)) for t in (1, 2)}
    for m in modules.values():  # every batch seen once: steady state
        for b in raw:
            fused_step(m, b, offsets)
    times = {name: [] for name, _, _ in SETTINGS}
    previous = embtab.thread_pool()
    try:
        for p in range(a.passes):
            for name, threads, pool in SETTINGS[p % 3:] + SETTINGS[:p % 3]:
                embtab.set_thread_pool(pool)
                m = modules[threads]
                t0 = time.perf_counter()
                for b in raw:
                    fused_step(m, b, offsets)
                times[name].append((time.perf_counter() - t0) / len(raw) * 1e3)
    finally:
        embtab.set_thread_pool(previous)
    base = float(np.median(times[SETTINGS[0][0]]))
    print("Whole fused RowWiseAdagrad step, torch at 2 threads, ms per step "
          f"(median and min over {a.passes} passes of 8 batches):")
    for name, v in times.items():
        print(f"  {name}: {np.median(v):.2f} (min {min(v):.2f}); 1 thread / this = "
              f"{base / np.median(v):.2f}x")


if __name__ == "__main__":
    main()
