"""torch's embedding_bag forward with the weight as a Parameter or detached, at 1 and 2 threads.

Usage (from the repository root, the package built or installed):
    python bench/parts/embedding_bag_detached.py [--rounds 3]

The issue-16 workload of bench_optim.py (a 1,000,000 x 64 float32 weight; 4 batches of 65,536
Zipf(1.1) rows in bags of 8, sum pooling), under ``torch.no_grad()`` as inside the fused
lookup's autograd Function. Given a weight that requires a gradient, ``torch.embedding_bag``
takes its training path, which also builds what only its own backward reads (the bag of each
entry); given the same weight detached it takes the forward-only path. The fused lookup
(``embtab/optim.py``, ``_FusedLookup.forward``) pools with the weight detached since its own
backward reads none of that. Printed: the median µs per call over 100 calls, per round, thread
count and form, the forms taking turns; and whether both forms gave the same bits.
"""

import argparse
import time

import numpy as np
import torch

from embtab.benchmarks.optim import workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n, d = 10**6, 64
    weight = torch.nn.Parameter(torch.randn(n, d, generator=torch.Generator().manual_seed(0)))
    ranks, _, offsets = workload(n, 65536, 4, 8, 1)
    idx = [torch.from_numpy(r) for r in ranks]
    same = True
    for rnd in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs = {}
            for form, w in (("detached", weight.detach()), ("parameter", weight)):
                ts = []
                with torch.no_grad():
                    for rep in range(100):
                        t = time.perf_counter()
                        out = torch.embedding_bag(w, idx[rep % 4], offsets, False, 0, False,
                                                  None, False, None)[0]
                        ts.append(time.perf_counter() - t)
                outs[form] = out
                print(f"round {rnd}, {threads} thread(s), {form}: "
                      f"{np.median(ts) * 1e6:.1f} us per call")
            same = same and torch.equal(outs["detached"], outs["parameter"])
    print(f"same bits: {same}")


if __name__ == "__main__":
    main()
