"""embtab's threads beside torch's: the whole fused step with each setting in its own process.

Usage (from the repository root, the package built or installed):
    python bench/parts/threads.py [--rounds 2]

The issue-16 workload of bench_optim.py (a 1,000,000 x 64 ``CuckooEmbeddingBag`` with fused
RowWiseAdagrad; 8 batches of 65,536 Zipf(1.1) raw IDs in bags of 8; forward, ``sum()``,
backward) timed as median ms per step over 10 passes, for each of:

- embtab 1 thread, torch 1 thread;
- embtab 2 threads, torch 2 threads (embtab's loops on torch's OpenMP team: the default,
  ``embtab.set_thread_pool("openmp")``);
- embtab 2 threads, torch 2 threads, ``EMBTAB_THREAD_POOL=embtab`` (embtab's own pool beside
  torch's OpenMP workers, as up to commit 7a3826b);
- embtab 2 threads, torch 1 thread (embtab's own pool: torch's thread count is below embtab's);
- embtab 2 threads, torch 2 threads, ``EMBTAB_THREAD_POOL=embtab`` and ``OMP_WAIT_POLICY=PASSIVE``
  (torch's OpenMP workers sleep at once after each parallel op instead of spinning for a while).

bench_optim.py interleaves its 1- and 2-thread passes in one process, switching torch's thread
count between passes, which mixes the states of torch's OpenMP pool; here each setting starts a
process of its own and keeps its setting throughout. Settings run in rotating order, ``--rounds``
times.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

SETTINGS = [
    ("embtab 1, torch 1", 1, 1, {}),
    ("embtab 2, torch 2 (OpenMP team)", 2, 2, {"EMBTAB_THREAD_POOL": "openmp"}),
    ("embtab 2, torch 2, EMBTAB_THREAD_POOL=embtab", 2, 2, {"EMBTAB_THREAD_POOL": "embtab"}),
    ("embtab 2, torch 1", 2, 1, {"EMBTAB_THREAD_POOL": "openmp"}),
    ("embtab 2, torch 2, EMBTAB_THREAD_POOL=embtab, OMP_WAIT_POLICY=PASSIVE", 2, 2,
     {"EMBTAB_THREAD_POOL": "embtab", "OMP_WAIT_POLICY": "PASSIVE"}),
]


def child(embtab_threads: int, torch_threads: int) -> None:
    import torch

    import embtab.optim as eo
    from embtab.benchmarks.optim import fused_step, workload
    from embtab.nn import CuckooEmbeddingBag

    torch.set_num_threads(torch_threads)
    n, dim = 10**6, 64
    _, raw, offsets = workload(n)
    m = CuckooEmbeddingBag(n, dim, mode="sum", seed=0, num_threads=embtab_threads,
                           optimizer=eo.RowWiseAdagrad(lr=0.01, eps=1e-8))
    for b in range(8):  # every batch seen once: steady state
        fused_step(m, raw[b], offsets)
    passes = []
    for _ in range(10):
        t0 = time.perf_counter()
        for b in range(8):
            fused_step(m, raw[b], offsets)
        passes.append((time.perf_counter() - t0) / 8)
    print(f"{np.median(passes) * 1e3:.3f} {min(passes) * 1e3:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    from embtab.benchmarks._harness import machine, machine_line

    print(f"Machine: {machine_line(machine())}")
    got = {name: [] for name, *_ in SETTINGS}
    for r in range(a.rounds):
        order = SETTINGS[r % len(SETTINGS):] + SETTINGS[: r % len(SETTINGS)]
        for name, et, tt, env in order:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(et), str(tt)],
                env={**os.environ, **env}, capture_output=True, text=True, check=True,
            ).stdout.split()
            got[name].append((float(out[0]), float(out[1])))
    base = np.median([m for m, _ in got[SETTINGS[0][0]]])
    print("Whole fused RowWiseAdagrad step, ms (median of 10 passes over 8 batches, "
          "then min; one process per run):")
    for name, runs in got.items():
        med = np.median([m for m, _ in runs])
        each = ", ".join(f"{m:.2f} (min {mn:.2f})" for m, mn in runs)
        print(f"  {name}: {each}; embtab 1, torch 1 / this = {base / med:.2f}x")


if __name__ == "__main__":
    main()
