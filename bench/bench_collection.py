"""Benchmark a 26-table Criteo-shaped embedding-bag collection against FBGEMM's TBE and a dict of
nn.EmbeddingBag modules (forward + backward + fused optimizer step).

Usage: python bench/bench_collection.py [--quick] [--threads N] [--batch B] [--out results.json]
The code lives in embtab.benchmarks.collection (also run by `embtab bench collection`).
"""

import argparse
import json

from embtab.benchmarks import collection
from embtab.cli import int_at_least, out_file

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tables of 10**2 to 10**4 rows, batches of 512: a smoke run")
    ap.add_argument("--out", type=out_file,   # checked before the run
                    help="write the raw results here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int_at_least(1), default=5)
    ap.add_argument("--batch", type=int_at_least(0), default=0, help="samples per batch (default 8,192)")
    ap.add_argument("--threads", type=int_at_least(0), default=0,
                    help="threads for every implementation (torch and embtab; 0 = defaults)")
    args = ap.parse_args()
    results = collection.run(quick=args.quick, seed=args.seed, repeats=args.repeats,
                             threads=args.threads, batch=args.batch)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(collection.format_markdown(results))
