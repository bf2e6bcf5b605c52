"""Benchmark per-call costs that must not grow with the table, catalogue or user count.

Usage: python bench/bench_scaling.py [--quick] [--out results.json] [--isa LEVEL]
The same as `embtab bench scaling`; the code lives in embtab.benchmarks.scaling.
"""

import sys

from embtab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scaling", *sys.argv[1:]]))
