"""Benchmark embtab.nn's modules against nn.Embedding(sparse=True) and nn.EmbeddingBag.

Usage: python bench/bench_module.py [--quick] [--out results.json]
The code lives in embtab.benchmarks.module (also run by `embtab bench module`).
"""

import argparse
import json

from embtab.benchmarks import module
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
    args = ap.parse_args()
    results = module.run(quick=args.quick, seed=args.seed, repeats=args.repeats)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(module.format_markdown(results))
