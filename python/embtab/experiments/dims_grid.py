"""E1 grid ``dims-grid``: E1 against the truth over the intrinsic rank and the Zipf exponent.

For each rank r in ``ranks`` and Zipf exponent s in ``zipfs`` the data set ``base`` +
``rank=r,zipf_s=s`` (generator v2, docs/experiments.md) is generated and E1
(:func:`~embtab.experiments.dims.run_dims`) runs on it; rows carry ``rank`` and ``zipf_s``.
What would show the effect of dimension: ``excess_arp@10`` > 0 with its interval excluding 0
for d well below r, shrinking toward 0 as d reaches r. The report gives the d × (r, s) table of
``excess_arp@10`` (and recall@10) with 95% intervals and one interval-based sentence per cell.

Example::

    >>> from embtab.experiments.dims_grid import run_dims_grid
    >>> res = run_dims_grid("synthetic:n_users=60,n_items=80,interactions_per_user=8", seeds=1,
    ...                     ranks=(2,), zipfs=(1.1,), dims=(2,), train_overrides={"epochs": 1},
    ...                     progress=False)
    >>> sorted({(r["rank"], r["zipf_s"], r["model"]) for r in res["rows"]})[0]
    (2, 1.1, 'mf')
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from embtab.experiments.dims import DIMS, fmt_ci, run_dims
from embtab.experiments.intervals import CI_NOTE, direction_sentence
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import finish_section
from embtab.experiments.session import Session, int_sweep, overrides_of, real_sweep, seed_list

__all__ = ["GRID_BASE", "GRID_RANKS", "GRID_ZIPFS", "grid_table", "run_dims_grid", "section"]

#: The data set of every cell before ``rank`` and ``zipf_s`` are added (``--dataset synthetic``
#: means this).
GRID_BASE = "synthetic:n_users=1000,n_items=1500,interactions_per_user=30"
GRID_RANKS = (4, 16, 64)
GRID_ZIPFS = (0.8, 1.1, 1.4)


def run_dims_grid(dataset: str = GRID_BASE, seeds=5, *, ranks: Sequence[int] = GRID_RANKS,
                  zipfs: Sequence[float] = GRID_ZIPFS, dims: Sequence[int] = DIMS,
                  loss: str = "bpr", tune: bool = False, quick: bool = False,
                  train_overrides: dict | None = None, progress: bool = True,
                  session=None) -> dict:
    """E1 on ``dataset`` + ``rank=r,zipf_s=s`` for every (r, s); one results object.

    Parameters
    ----------
    dataset : str
        A ``synthetic[:key=value,...]`` spec without ``rank`` and ``zipf_s`` (plain
        ``"synthetic"`` means :data:`GRID_BASE`).
    seeds, dims, loss, tune, quick, train_overrides, progress
        As :func:`~embtab.experiments.dims.run_dims`, for every cell.
    session : Session, optional
        Each cell loads its own data set (the runner's shared data set does not apply); only
        the session's training overrides are used, when ``train_overrides`` is not given.

    Returns
    -------
    dict
        ``experiment = "dims-grid"``; ``rows`` and ``summary`` of every cell with ``rank`` and
        ``zipf_s``; ``cells``: per (r, s) its data set summary, ``contrasts`` and run time.
    """
    if not isinstance(dataset, str) or not dataset.startswith("synthetic"):
        raise ValueError(f"dims-grid needs a synthetic dataset spec; got {dataset!r}")
    base = GRID_BASE if dataset == "synthetic" else dataset
    if "rank=" in base or "zipf_s=" in base:
        raise ValueError(f"the dims-grid dataset must not set rank or zipf_s (the grid does); "
                         f"got {dataset!r}")
    t0 = time.perf_counter()
    # (each refuses an empty sweep by name; `not ranks` failed on a NumPy array)
    ranks, zipfs = int_sweep(ranks, "ranks"), real_sweep(zipfs, "zipfs", low=0.0)
    dims = int_sweep(dims, "dims")
    train_overrides = overrides_of(train_overrides, session)
    seed_list(seeds)
    sep = "," if ":" in base else ":"
    # every cell's data set is generated (and checked) before any training, so that a cell the
    # base cannot hold (e.g. a rank above min(n_users, n_items)) fails at once, not after the
    # cells before it have trained; each session is dropped once its cell has run
    cells_todo = [(r, z, Session(f"{base}{sep}rank={int(r)},zipf_s={float(z)!r}",
                                 train_overrides, progress)) for r in ranks for z in zipfs]
    rows, summary, cells = [], [], []
    while cells_todo:
        r, z, s = cells_todo.pop(0)
        res = run_dims(s.spec, seeds, dims=dims, loss=loss, tune=tune, quick=quick,
                       train_overrides=train_overrides, progress=progress, session=s)
        tag = {"rank": int(r), "zipf_s": float(z)}
        rows += [{**tag, **row} for row in res["rows"]]
        summary += [{**tag, **e} for e in res["summary"]]
        cells.append({**tag, "dataset": res["dataset"], "contrasts": res["contrasts"],
                      "seconds": res["config"]["seconds"]})
        config = res["config"]
    return {"experiment": "dims-grid",
            "dataset": {"name": "synthetic v2 grid", "spec": base, "users": None,
                        "items": None, "interactions": None, "top1pct_share": None},
            "config": {**config, "ranks": [int(r) for r in ranks],
                       "zipfs": [float(z) for z in zipfs],
                       "seconds": round(time.perf_counter() - t0, 2)},
            "rows": rows, "summary": summary, "cells": cells}


def grid_table(results: dict, metric: str = "excess_arp@10") -> list:
    """Markdown lines: ``metric`` as mean [95% CI] per d (rows) and (rank, Zipf) (columns)."""
    cfg = results["config"]
    cell = {(e["rank"], e["zipf_s"], e.get("dim")): e for e in results["summary"]
            if e.get("model") == "mf"}
    head = ["d"] + [f"r={r}, s={z:g}" for r in cfg["ranks"] for z in cfg["zipfs"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in cfg["dims"]:
        cells = [str(d)] + [fmt_ci(cell.get((r, z, d), {}).get(metric), metric=metric)
                            for r in cfg["ranks"] for z in cfg["zipfs"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def section(results: dict, plots=()) -> list:
    """The grid's report section: excess_arp@10 and recall@10 tables, one sentence per cell."""
    cfg = results["config"]
    lines = ["## E1 grid — excess popularity against d, intrinsic rank and Zipf exponent", "",
             f"Data `{results['dataset']['spec']}` + `rank=r,zipf_s=s` (generator v2); seeds "
             f"{cfg['seeds']}; 80/20 random split per user; k = 10; loss {cfg['loss']}; "
             + (f"tuned per (d, seed) over {cfg['tuning_grid']}" if cfg["tuned"]
                else f"training {cfg['train']}")
             + ". Cells: excess_arp@10 (the lists' arp@10 minus the oracle's). " + CI_NOTE, ""]
    lines += grid_table(results)
    lines += ["", "recall@10 of the same models:", ""]
    lines += grid_table(results, "recall@10")
    text = []
    for c in results["cells"]:
        con = c["contrasts"]
        if con:
            text.append(direction_sentence(
                con["difference"], f"r = {c['rank']}, s = {c['zipf_s']:g}: from d = "
                f"{con['d_low']} to d = {con['d_high']}, excess popularity", "falls", "rises",
                metric=f"{con['metric']}(d={con['d_low']}) − {con['metric']}(d={con['d_high']})"))
    return finish_section(lines, text, results, plots)


register(Experiment("dims-grid", "E1", "E1 against the truth over rank x Zipf exponent "
                    "(generator v2)", run_dims_grid, section))
