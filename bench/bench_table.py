"""Benchmark embtab.CuckooTable against np.take, dict and np.unique+searchsorted.

Usage: python bench/bench_table.py [--quick] [--out results.json]
The code lives in embtab.benchmarks.table (also run by `embtab bench table`).
"""

import argparse
import json

from embtab.benchmarks import table
from embtab.cli import int_at_least, out_file

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10**6 keys: a smoke run, not the figures")
    ap.add_argument("--out", type=out_file,   # checked before the run
                    help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = table.run(quick=args.quick, seed=args.seed)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(table.format_markdown(results))
