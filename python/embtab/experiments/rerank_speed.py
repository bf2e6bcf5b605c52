"""E4 ``rerank-speed``: the calibrated reranker against plain Python and NumPy, users/s.

The timing itself is a benchmark, which belongs to the tools layer
(:mod:`embtab.benchmarks.rerank`); the research layer never imports the tools layer
(docs/architecture.md). So this module holds what E4 is as an experiment (its results schema
and report section) and :func:`entry`, which the tools layer calls with the benchmark to
register E4: ``embtab.cli`` does, so ``embtab experiment rerank-speed`` runs it.

Example::

    >>> raw = {"config": {"U": 100, "n_items": 50},
    ...        "embtab": {"1": {"us_per_user": 2.0, "users_per_s": 5e5}},
    ...        "numpy_b": {"us_per_user": 20.0, "users": 100, "identical": True},
    ...        "numpy_a": {"us_per_user": 200.0, "users": 10, "identical": True},
    ...        "python": {"us_per_user": 4000.0, "users": 2, "identical": True}}
    >>> res = results_from_benchmark(raw, "| table |", seconds=1.0)
    >>> [(r["impl"], r["users_per_s"]) for r in res["rows"]][-1]
    ('plain Python', 250.0)
"""

from __future__ import annotations

import time

from embtab.experiments.registry import Experiment
from embtab.experiments.report import finish_section

__all__ = ["entry", "results_from_benchmark", "run_rerank_speed", "section"]


def results_from_benchmark(raw: dict, markdown: str, seconds: float) -> dict:
    """The results.json object of E4 from the benchmark's raw output.

    ``rows`` has one row per implementation (``impl``, ``users``, ``us_per_user``,
    ``users_per_s``, ``identical``); the raw output is under ``"benchmark"``, its Markdown
    under ``"markdown"``.
    """
    rows = []
    for nt, v in raw["embtab"].items():
        rows.append({"impl": f"embtab C++ ({nt} thread{'s' if nt != '1' else ''})",
                     "users": raw["config"]["U"], "us_per_user": v["us_per_user"],
                     "users_per_s": v["users_per_s"], "identical": True})
    for key, name in (("numpy_b", "NumPy (batched)"), ("numpy_a", "NumPy (per user)"),
                      ("python", "plain Python")):
        v = raw[key]
        rows.append({"impl": name, "users": v["users"], "us_per_user": v["us_per_user"],
                     "users_per_s": 1e6 / v["us_per_user"], "identical": v["identical"]})
    cfg = raw["config"]
    return {"experiment": "rerank-speed",
            "dataset": {"name": "synthetic rerank workload", "users": cfg["U"],
                        "items": cfg["n_items"], "interactions": None, "top1pct_share": None},
            "config": {**cfg, "seconds": seconds},
            "rows": rows, "benchmark": raw, "markdown": markdown}


def run_rerank_speed(quick: bool = True, progress: bool = True, *, benchmark) -> dict:
    """E4: run ``benchmark`` (an object with ``run(quick=...)`` and ``format_markdown(raw)``,
    normally :mod:`embtab.benchmarks.rerank`) and return its results dict.

    ``progress`` is accepted for the registry's interface (the benchmark prints nothing).
    """
    t0 = time.perf_counter()
    raw = benchmark.run(quick=quick)
    return results_from_benchmark(raw, benchmark.format_markdown(raw),
                                  round(time.perf_counter() - t0, 2))


def section(results: dict, plots=()) -> list:
    """E4's report section: the benchmark's own Markdown table."""
    return finish_section(["## E4 — calibrated rerank speed", "", results["markdown"], ""], [],
                          results, plots)


def entry(load_benchmark) -> Experiment:
    """The E4 registry entry; ``load_benchmark()`` returns the benchmark module when E4 runs.

    The tools layer registers it: ``register(entry(lambda: embtab.benchmarks.rerank))``.
    """
    def run(*, quick: bool = True, progress: bool = True) -> dict:
        return run_rerank_speed(quick, progress, benchmark=load_benchmark())

    return Experiment("rerank-speed", "E4", "calibrated rerank speed: C++ vs NumPy vs Python "
                      "(a benchmark of the tools layer)", run, section, None, in_demo=False,
                      needs_data=False)
