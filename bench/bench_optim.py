"""Benchmark embtab.optim's fused optimizers against torch's sparse optimizers and FBGEMM's TBE.

Usage: python bench/bench_optim.py [--quick] [--threads N] [--out results.json]
The code lives in embtab.benchmarks.optim (also run by `embtab bench optim`).
"""

import argparse
import json

from embtab.benchmarks import optim
from embtab.cli import int_at_least, out_file

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="100,000 rows: a smoke run, not the figures"
    )
    ap.add_argument("--out", type=out_file,   # checked before the run
                    help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int_at_least(1), default=5)
    ap.add_argument(
        "--threads",
        type=int_at_least(0),
        default=0,
        help="threads for every implementation (torch and embtab; 0 = torch's default)",
    )
    args = ap.parse_args()
    results = optim.run(
        quick=args.quick, seed=args.seed, repeats=args.repeats, threads=args.threads
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(optim.format_markdown(results))
