"""Benchmark embtab.CuckooTable against np.take, dict and np.unique+searchsorted.

Usage: python bench/bench_table.py [--quick] [--out results.json]
The code lives in embtab.benchmarks.table (also run by `embtab bench table`).
"""

import argparse
import json

from embtab.benchmarks import table
from embtab.cli import check_out_file, int_at_least

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10**6 keys: a smoke run, not the figures")
    ap.add_argument("--out", help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out:   # before the run: a bad path is a one-line error, not results lost at the end
        try:
            check_out_file(args.out)
        except (ValueError, OSError) as e:
            ap.error(str(e) if str(e).startswith("--out") else f"--out {args.out}: {e}")
    results = table.run(quick=args.quick, seed=args.seed)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(table.format_markdown(results))
