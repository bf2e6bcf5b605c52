"""Benchmark embtab.distributed: 2 gloo ranks on this machine against one process.

Usage: python bench/bench_distributed.py [--quick] [--world-size 2] [--out results.json]
The code lives in embtab.benchmarks.distributed.
"""

import argparse
import json

from embtab.benchmarks import distributed
from embtab.cli import int_at_least, out_file

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10**4 IDs, small batches: a smoke run, not the figures")
    ap.add_argument("--world-size", type=int_at_least(1), default=2)
    ap.add_argument("--out", type=out_file,   # checked before the run
                    help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = distributed.run(world_size=args.world_size, seed=args.seed, quick=args.quick)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(distributed.format_markdown(results))
