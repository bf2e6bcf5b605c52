"""What a pass of fused steps costs after the caches were flushed, at 1 and 2 threads.

Usage (from the repository root, the package built or installed):
    python bench/parts/cold_passes.py [--rounds 10]

The issue-16 workload of bench_optim.py (a 1,000,000 x 64 ``CuckooEmbeddingBag`` with fused
RowWiseAdagrad; 8 batches of 65,536 Zipf(1.1) raw IDs in bags of 8; a step is forward,
``sum()``, backward and ``loss.item()``). Each pass of the 8 batches is preceded by one of:

- ``none``: nothing (steps back to back, as in a training loop);
- ``gc0``, ``gc1``, ``gc2``: ``gc.collect(generation)``; ``gc2`` is the full collection that
  ``embtab.benchmarks._harness.time_calls`` runs before every timed call;
- ``write``: writing and freeing a 200 MiB ``bytearray`` (evicts the caches with no Python
  object walk).

Printed per setting and thread count: the median over ``--rounds`` of the pass's mean ms per
step, the median ms of each of the 8 step positions in the pass, and the median and largest
count of minor page faults per pass (``getrusage``), which tells a cold cache from fresh
memory. Within each round the thread counts take turns, and the settings run in an order that
rotates from round to round (so that none is always the first pass after a switch).
"""

import argparse
import gc
import resource
import time

import numpy as np
import torch

import embtab.optim as eo
from embtab.benchmarks._harness import machine_line, machine
from embtab.benchmarks.optim import workload
from embtab.nn import CuckooEmbeddingBag

BEFORE = {
    "none": lambda: None,
    "gc0": lambda: gc.collect(0),
    "gc1": lambda: gc.collect(1),
    "gc2": lambda: gc.collect(2),
    "write": lambda: bytearray(200 * 2**20),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    _, raw, offsets = workload()
    fm = CuckooEmbeddingBag(10**6, 64, mode="sum", seed=0,
                            optimizer=eo.RowWiseAdagrad(lr=0.01, eps=1e-8))
    for ids in raw:  # every ID seen: steady steps from here
        fm(ids, offsets).sum().backward()
    step_ms = {(k, t): [] for k in BEFORE for t in (1, 2)}
    faults = {(k, t): [] for k in BEFORE for t in (1, 2)}
    for r in range(args.rounds):
        for t in ((1, 2) if r % 2 == 0 else (2, 1)):
            fm.num_threads = t
            torch.set_num_threads(t)
            names = list(BEFORE)
            for k in names[r % len(names):] + names[:r % len(names)]:
                BEFORE[k]()
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                ts = []
                for ids in raw:
                    t0 = time.perf_counter()
                    loss = fm(ids, offsets).sum()
                    loss.backward()
                    loss.item()
                    ts.append(time.perf_counter() - t0)
                faults[k, t].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                step_ms[k, t].append(np.array(ts) * 1e3)
    print(f"Machine: {machine_line(machine())}; {args.rounds} rounds.")
    print("| before each pass | threads | ms per step (pass mean) | by position in the pass | "
          "minor faults per pass: median, largest |")
    print("|---|---:|---:|---|---:|")
    for k in BEFORE:
        for t in (1, 2):
            a = np.stack(step_ms[k, t])
            pos = " ".join(f"{x:.2f}" for x in np.median(a, axis=0))
            print(f"| {k} | {t} | {np.median(a.mean(axis=1)):.3f} | {pos} | "
                  f"{np.median(faults[k, t]):.0f}, {max(faults[k, t])} |")


if __name__ == "__main__":
    main()
