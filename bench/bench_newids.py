"""Benchmark embtab's new-ID path: building a table from empty, a module's first sighting of IDs
and a growth step, each split into its parts.

Usage: python bench/bench_newids.py [--quick] [--threads N] [--repeats R] [--out results.json]
The code lives in embtab.benchmarks.newids (also run by `embtab bench newids`).
"""

import argparse
import json

from embtab.benchmarks import newids
from embtab.cli import int_at_least, out_file

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="10**6 keys, a 100,000-row module, batches of 8,192: a smoke run")
    ap.add_argument("--out", type=out_file,   # checked before the run
                    help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int_at_least(1), default=3)
    ap.add_argument("--threads", type=int_at_least(0), default=1,
                    help="num_threads of the table and module, and torch's (0 = all)")
    args = ap.parse_args()
    results = newids.run(quick=args.quick, seed=args.seed, repeats=args.repeats,
                         threads=args.threads)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(newids.format_markdown(results))
