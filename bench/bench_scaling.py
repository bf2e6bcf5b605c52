"""Benchmark per-call costs that must not grow with the table, catalogue or user count.

Usage: python bench/bench_scaling.py [--quick] [--repeats R] [--out results.json]
The code lives in embtab.benchmarks.scaling (also run by `embtab bench scaling`).
"""

import argparse
import json

from embtab.benchmarks import scaling

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller large sizes: a smoke run")
    ap.add_argument("--out", help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    results = scaling.run(quick=args.quick, seed=args.seed, repeats=args.repeats)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(scaling.format_markdown(results))
