"""How calibrated reranking scales from 1 to 2 threads, without the per-call Python checks.

Times the C++ core (`_core.rerank_calibrated`, item CSR prepared once) on the benchmark workload
of bench_rerank.py, in blocks of N calls per thread count, twice (1, 2, 1, 2), and then on
four times the users (the rows tiled), to separate the per-call serial part from the scaling.
Usage: PYTHONPATH=python python bench/bench_rerank_threads.py [--calls 30] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from embtab import _core
from embtab.benchmarks import rerank
from embtab.benchmarks._harness import machine_line, time_calls
from embtab.cli import int_at_least


def _block(fn, calls):
    """Milliseconds of each of `calls` calls (no garbage collection between them)."""
    return np.array(time_calls(fn, calls, collect=False).times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int_at_least(1), default=30, help="calls per block")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    wl = rerank.make_workload(U=10_000, seed=args.seed)
    csr = rerank._core_args(wl)
    s, cand, tgt = wl["scores"], wl["candidates"], wl["target"]
    print(f"Machine: {machine_line()}.")
    print()
    print("| users | threads | block | min ms | median ms | max ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    meds = {}
    for rep in (1, 4):
        S, Cd, Tg = (np.ascontiguousarray(np.tile(x, (rep, 1))) for x in (s, cand, tgt))
        for block, nt in enumerate((1, 2, 1, 2) if rep == 1 else (1, 2)):
            ts = _block(lambda S=S, Cd=Cd, Tg=Tg, nt=nt: _core.rerank_calibrated(S, Cd, *csr, Tg, 10, 0.5, 0.01, nt, False),
                        args.calls)
            meds.setdefault((S.shape[0], nt), []).append(float(np.median(ts)))
            print(f"| {S.shape[0]:,} | {nt} | {block + 1} | {ts.min():.2f} | {np.median(ts):.2f} | {ts.max():.2f} |")
    print()
    for U in sorted({u for u, _ in meds}):
        r = [a / b for a, b in zip(meds[(U, 1)], meds[(U, 2)])]
        print(f"U = {U:,}: 2 threads vs 1 (median of each block): " + ", ".join(f"{x:.2f}×" for x in r))


if __name__ == "__main__":
    main()
