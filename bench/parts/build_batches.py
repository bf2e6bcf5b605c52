"""A table built from empty in batches: the batch that grew it most against all the others.

Usage (from the repository root, the package built or installed):
    python bench/parts/build_batches.py [--ids 2000000] [--batch 65536] [--reps 9] [--threads 1]

Each repetition builds a new ``CuckooTable`` (default capacity, so it grows) from ``--ids``
random 62-bit IDs, ``--batch`` at a time with ``lookup_or_insert``, and prints, in
milliseconds, the build's total, its slowest batch (the one whose growth rehashed the largest
index: cold memory, bench/README.md "Cold huge pages", shows there) and the rest. The rest is
the table's own work on new IDs; compare it between builds of two commits (run this script
with each one's package on ``PYTHONPATH``, taking turns). The table's stats at the end
(growths, displacement searches) show that both builds did the same work.
"""

import argparse
import time

import numpy as np

from embtab import CuckooTable
from embtab.benchmarks._harness import machine_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ids = np.random.default_rng(args.seed).integers(0, 1 << 62, args.ids, dtype=np.int64)
    total, slowest, rest = [], [], []
    for _ in range(args.reps):
        t = CuckooTable(0, num_threads=args.threads)
        times = []
        for b in range(0, len(ids), args.batch):
            t0 = time.perf_counter()
            t.lookup_or_insert(ids[b:b + args.batch])
            times.append(time.perf_counter() - t0)
        total.append(sum(times))
        slowest.append(max(times))
        rest.append(sum(times) - max(times))
        stats = t.stats()
        del t

    def ms(v):
        return ", ".join(f"{x * 1e3:.0f}" for x in v)

    print(f"Machine: {machine_line()}.")
    print(f"{args.ids:,} IDs in batches of {args.batch:,}, {args.threads} thread(s); "
          f"growths {stats['grows']}, displacement searches {stats['bfs_searches']:,}")
    print(f"total ms:          {ms(total)} (median {np.median(total) * 1e3:.0f})")
    print(f"slowest batch ms:  {ms(slowest)} (median {np.median(slowest) * 1e3:.0f})")
    print(f"the other batches: {ms(rest)} (median {np.median(rest) * 1e3:.0f})")


if __name__ == "__main__":
    main()
