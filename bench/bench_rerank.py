"""Calibrated reranking benchmark: embtab C++ vs NumPy (a), NumPy (b) and plain Python, plus top-k.

Thin wrapper around embtab.benchmarks.rerank (what `embtab bench rerank` runs).
Usage: python bench/bench_rerank.py [--quick] [--out results.json] [--threads 1 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json

from embtab.benchmarks import rerank
from embtab.cli import int_at_least


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, fewer repeats (smoke run)")
    ap.add_argument("--out", default=None, help="write the raw results as JSON here")
    ap.add_argument("--threads", type=int_at_least(1), nargs="+", default=[1, 2],
                    help="embtab thread counts (each >= 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = rerank.run(quick=args.quick, num_threads=tuple(args.threads), seed=args.seed)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    print(rerank.format_markdown(res))


if __name__ == "__main__":
    main()
