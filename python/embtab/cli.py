"""The ``embtab`` command: ``demo``, ``experiment``, ``bench``.

Examples::

    embtab demo --out embtab-demo                     # E1 + E2 + E3 on synthetic data
    embtab experiment dims --dataset movielens:../shared/data/ml-100k --seeds 3 --out runs/e1
    embtab experiment calibration --quick --out runs/e3
    embtab bench rerank --quick --out rerank.json
    embtab --version
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

__all__ = ["main"]

_EXPERIMENTS = ("dims", "collisions", "calibration", "rerank-speed", "feedback")
_BENCHES = ("table", "module", "rerank")

#: what --quick changes for the training experiments (default seeds: 3 -> 1)
QUICK_SEEDS = 1


def _version() -> str:
    try:
        from embtab import __version__

        return __version__
    except ImportError:  # pragma: no cover - the compiled core is missing
        from importlib.metadata import version

        return version("embtab")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="embtab",
        description="Collisionless embedding tables, calibrated reranking and popularity-bias "
                    "experiments.")
    p.add_argument("--version", action="version", version=f"embtab {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{demo,experiment,bench}")

    d = sub.add_parser("demo", help="quick E1 + E2 + E3 + E5 on synthetic data; writes a report")
    d.add_argument("--out", default="embtab-demo", help="output folder (default: embtab-demo)")
    d.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    d.add_argument("--dataset", default="synthetic",
                   help="data set spec as for 'experiment' (default: synthetic)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("experiment", help="run one experiment (E1-E5)")
    e.add_argument("name", choices=_EXPERIMENTS)
    e.add_argument("--dataset", default="synthetic",
                   help="synthetic[:key=value,...] | movielens:PATH | "
                        "interactions:PATH[,categories=PATH] (default: synthetic)")
    e.add_argument("--seeds", type=int, default=None,
                   help="number of seeds 0..N-1 (default 3, or 1 with --quick)")
    e.add_argument("--quick", action="store_true",
                   help="fewer seeds (1) and, for rerank-speed, a smaller benchmark")
    e.add_argument("--out", default=None, help="output folder (default: embtab-<name>)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="performance comparisons (embtab.benchmarks.<name>)")
    b.add_argument("name", choices=_BENCHES)
    b.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    b.add_argument("--out", default=None, help="write the raw results JSON to this file")
    return p


def _demo(args) -> int:
    from embtab.experiments import run_demo

    paths = run_demo(args.out, progress=not args.quiet, seeds=args.seeds, dataset=args.dataset)
    print(f"report: {paths['report']}")
    print(f"results: {paths['results']}")
    return 0


def _experiment(args) -> int:
    from embtab.experiments import run_experiments

    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 3)
    if seeds < 1:
        raise SystemExit("embtab experiment: --seeds must be >= 1")
    out = args.out or f"embtab-{args.name}"
    paths = run_experiments([args.name], out, dataset=args.dataset, seeds=seeds,
                            quick=args.quick, progress=not args.quiet,
                            title=f"embtab experiment {args.name}")
    print(f"report: {paths['report']}")
    print(f"results: {Path(out) / (args.name + '.json')}")
    return 0


def _bench(args) -> int:
    modname = f"embtab.benchmarks.{args.name}"
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == modname or modname.startswith(e.name + ".")):
            print(f"embtab bench {args.name}: {modname} is not part of this installation "
                  "(not written yet, or installed without it)", file=sys.stderr)
            return 2
        raise
    if not (hasattr(mod, "run") and hasattr(mod, "format_markdown")):
        print(f"embtab bench {args.name}: {modname} has no run()/format_markdown()",
              file=sys.stderr)
        return 2
    results = mod.run(quick=args.quick)
    print(mod.format_markdown(results))
    if args.out:
        from embtab.experiments import _jsonable

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_jsonable(results), indent=1) + "\n")
        print(f"raw results: {out}")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``embtab`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "experiment":
        try:
            return _experiment(args)
        except (ValueError, FileNotFoundError) as e:
            print(f"embtab experiment {args.name}: {e}", file=sys.stderr)
            return 2
    if args.command == "bench":
        return _bench(args)
    _parser().print_help()
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
