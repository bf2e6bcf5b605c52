"""A fused module looked up once and twice per backward pass (one step either way).

Usage (from the repository root, the package built or installed):
    python bench/parts/two_lookups.py [--bags 32 16384] [--threads 1] [--passes 15]

A ``HashedEmbeddingBag`` of 200,000 x 64 rows with fused Adagrad, raw IDs uniform over
10**9 in bags of 8, ``sum()`` losses. "once": ``m(a, off).sum().backward()``; "twice":
``(m(a, off).sum() + m(b, off).sum()).backward()``, whose one step runs at the end of the
pass on both lookups' gradients joined (``embtab.optim``: one step per module per backward
pass). Prints the median milliseconds per pass of each.
"""

import argparse
import time

import numpy as np
import torch

import embtab.nn as enn
import embtab.optim as eo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, nargs="+", default=[32, 16384])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = enn.HashedEmbeddingBag(200_000, 64, mode="sum", optimizer=eo.Adagrad(lr=0.1),
                               num_threads=args.threads)
    rng = np.random.default_rng(0)
    for bags in args.bags:
        n = 8 * bags
        a, b = (torch.from_numpy(rng.integers(0, 10**9, n)) for _ in range(2))
        off = torch.arange(0, n, 8)
        runs = {"once": lambda: m(a, off).sum().backward(),
                "twice": lambda: (m(a, off).sum() + m(b, off).sum()).backward()}
        times = {k: [] for k in runs}
        for f in runs.values():
            f()  # warm-up
        for _ in range(args.passes):
            for k, f in runs.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        print(f"{bags} bags of 8: " + ", ".join(
            f"{k} {np.median(v) * 1e3:.3f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
