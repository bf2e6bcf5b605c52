"""E1 ``dims``: collisionless (cuckoo) MF at each embedding dimension (Ohsaka & Togashi).

d ∈ {2, 4, 8, 16, 32, 64, 128}; docs/experiments.md states the protocol and what is expected.
Rows are measured against the truth where the data has one (an ``oracle`` row and the
truth-referenced metrics of :mod:`~embtab.experiments.truth`); the result carries a ``summary``
with 95% intervals over seeds and a smallest-vs-largest-d contrast, and the report's sentences
state a direction only where an interval excludes zero. ``tune=True`` picks lr, L2 and epochs
per (d, seed) on a validation split (:mod:`~embtab.experiments.tuning`); ``loss`` chooses BPR
or the softmax likelihood.

Example::

    >>> from embtab.experiments import run_dims
    >>> res = run_dims("synthetic:n_users=60,n_items=80,interactions_per_user=8", seeds=1,
    ...                dims=(2, 4), train_overrides={"epochs": 1}, progress=False)
    >>> res["experiment"], sorted({r["model"] for r in res["rows"]})
    ('dims', ['mf', 'most_popular', 'oracle', 'random'])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab import metrics
from embtab._research import K
from embtab.data import Interactions
from embtab.experiments.intervals import (
    CI_NOTE,
    ci_text,
    direction_sentence,
    interval,
    is_signed,
    summary_with_intervals,
)
from embtab.experiments.plots import (
    draw_baselines,
    errorbar,
    plot_deciles,
    pyplot,
    save_figure,
)
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section, model_label, table
from embtab.experiments.results import summarize
from embtab.experiments.session import (
    Progress,
    Session,
    evaluate_lists,
    make_result,
    reference_rows,
    int_sweep,
    seed_list,
    session_for,
)
from embtab.experiments.truth import total_relevance
from embtab.experiments.tuning import QUICK_TUNING_GRID, TUNING_GRID, untuned_note
from embtab.experiments.tuning import tune as tune_config
from embtab.train import recommend

__all__ = ["DIMS", "contrasts", "findings", "interval_table", "plot", "plot_dims", "plot_truth",
           "run_dims", "section"]

DIMS = (2, 4, 8, 16, 32, 64, 128)


def run_dims(dataset: str | Interactions = "synthetic", seeds=3, *, dims: Sequence[int] = DIMS,
             loss: str = "bpr", tune: bool = False, quick: bool = False,
             train_overrides: dict | None = None, progress: bool = True,
             session: Session | None = None) -> dict:
    """E1: collisionless (cuckoo) MF at each embedding dimension in ``dims``, per seed.

    Parameters
    ----------
    dataset : str or Interactions
        A :func:`embtab.data.load_dataset` spec, or a data set.
    seeds : int or sequence of int
        ``n`` means seeds ``0..n-1``.
    dims : sequence of int
    loss : {"bpr", "softmax"}
        The training objective (:class:`embtab.train.TrainConfig`).
    tune : bool
        Pick lr, l2 and epochs per (d, seed) on a validation split carved from the training
        split (:func:`embtab.experiments.tuning.tune`), then train on the whole training split.
    quick : bool
        With ``tune``: the small grid :data:`~embtab.experiments.tuning.QUICK_TUNING_GRID`.
    train_overrides : dict, optional
        :class:`embtab.train.TrainConfig` fields for every run (e.g. ``{"epochs": 5}``).
    progress : bool
        tqdm bars.

    Returns
    -------
    dict
        The results.json object (``experiment = "dims"``) with ``rows`` (one ``oracle`` row per
        seed when the data has a truth; ``mf`` rows report ``loss``, ``lr``, ``l2``,
        ``epochs``), ``summary`` (per model and d, each metric's mean, sd, ci95_low,
        ci95_high) and ``contrasts`` (:func:`contrasts`).
    """
    t0 = time.perf_counter()
    dims = int_sweep(dims, "dims")
    seeds = seed_list(seeds)
    s = session_for(dataset, train_overrides, progress, session)
    grid = QUICK_TUNING_GRID if quick else TUNING_GRID
    relevance = total_relevance(s.data.truth) if s.data.truth is not None else None
    rows = []
    bar = Progress(len(seeds) * len(dims), "E1 dims", progress)
    for seed in seeds:
        train, test, ref, first = reference_rows(s, seed, relevance)
        rows += first
        for d in dims:
            cfg = s.config(dim=int(d), table="cuckoo", seed=seed, loss=loss)
            extra = {}
            if tune:
                cfg, info = tune_config(train, cfg, grid, val_seed=seed + 1_000_003)
                extra["val_ndcg@10"] = info["val_ndcg@10"]
                extra["tuned"] = info["tuned"]
            model = s.model(cfg, f"E1 d={d} seed={seed}")
            top = recommend(model, train, K)
            rows.append({"model": "mf", "seed": seed, "dim": int(d), "table": "cuckoo",
                         "rows_per_id": 1.0, "collision_share": 0.0, "collision_theory": 0.0,
                         **evaluate_lists(top, train, test), **ref.metrics(top),
                         "loss": cfg.loss, "lr": cfg.lr, "l2": cfg.l2, "epochs": cfg.epochs,
                         **extra})
            bar.tick()
    bar.close()
    res = make_result("dims", s, {"dims": [int(d) for d in dims], "seeds": seeds,
                                  "loss": loss, "tuned": bool(tune),
                                  "tuning_grid": grid if tune else None,
                                  "oracle": s.data.truth is not None}, rows, t0)
    res["summary"] = summary_with_intervals(
        rows, SUMMARY_KEYS, skip=("seed", "lr", "l2", "epochs", "rows_per_id",
                                  "collision_share", "collision_theory"))
    res["contrasts"] = contrasts(rows)
    return res


def plot_dims(results: dict, path) -> Path:
    """Metric vs embedding dimension (E1), mean and 95% interval over seeds, baselines dashed."""
    plt = pyplot()
    summ = summarize(results)
    rows = sorted([r for r in summ if r["model"] == "mf"], key=lambda r: r["dim"])
    dims = [r["dim"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, metric in zip(axes, ("recall@10", "arp@10", "coverage@10", "tail_share@10")):
        errorbar(ax, dims, rows, metric, label="MF (cuckoo)")
        draw_baselines(ax, summ, metric)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dimension d")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"E1 dimension sweep — {results['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E1's plots: metrics vs d, per-decile recall, and the truth-referenced metrics with
    their intervals."""
    out = Path(out_dir)
    return [plot_dims(results, out / f"{prefix}dims.png"),
            plot_deciles(results, out / f"{prefix}dims_deciles.png"),
            plot_truth(results, out / f"{prefix}dims_truth.png")]


def section(results: dict, plots=()) -> list:
    """E1's report section (Markdown lines): mean [95% CI] of the accuracy and bias metrics,
    then of the truth-referenced ones, plots and the interval-based findings."""
    summ = summarize(results)
    cfg = results["config"]
    lines = ["## E1 — embedding dimension (cuckoo tables)", "", dataset_line(results), ""]
    rows = [r for r in summ if r["model"] != "mf"] + sorted(
        [r for r in summ if r["model"] == "mf"], key=lambda r: r["dim"])
    lines += table(rows, [("model", model_label), ("d", lambda r: str(r.get("dim", "")))])
    if "summary" in results:
        lines += ["", f"Loss {cfg.get('loss', 'bpr')}; " + (
            f"lr, l2, epochs tuned per (d, seed) on a validation split over "
            f"{cfg['tuning_grid']}" + untuned_note(results["rows"]) if cfg.get("tuned")
            else "training as above")
            + ". " + CI_NOTE, ""]
        lines += interval_table(results)
        if cfg.get("tuned"):
            mf = sorted([r for r in results["rows"] if r.get("model") == "mf"],
                        key=lambda r: (r["dim"], r["seed"]))
            lines += ["", "Chosen (lr, l2, epochs): " + "; ".join(
                f"d={r['dim']} seed {r['seed']}: ({r['lr']:g}, {r['l2']:g}, {r['epochs']})"
                for r in mf) + "."]
    text = findings(results) if "summary" in results else []
    return finish_section(lines, text, results, plots)


# E1 v2: against the truth, with intervals ///////////////////////////////////////////////////

#: Row keys that name a configuration of E1 (the summary groups rows by them).
SUMMARY_KEYS = ("model", "dim", "table", "loss")

#: The columns of E1's interval table.
INTERVAL_METRICS = ("recall@10", "ndcg@10", "arp@10", "excess_arp@10", "delta_gap@10:niche",
                    "delta_gap@10:diverse", "delta_gap@10:blockbuster", "distinct_lists@10",
                    "merit_exposure@10", "coverage@10")


def contrasts(rows) -> dict:
    """The per-seed difference between the smallest and the largest d, with its interval.

    ``{"metric", "d_low", "d_high", "difference"}``: ``difference`` is the
    :func:`~embtab.experiments.intervals.interval` of metric(d_low) − metric(d_high) over the
    seeds that have both; the metric is ``excess_arp@10`` when the rows have it (synthetic data
    with a truth), else ``arp@10``. Empty with fewer than two dims.
    """
    mf = [r for r in rows if r.get("model") == "mf"]
    dims = sorted({r["dim"] for r in mf})
    if len(dims) < 2:
        return {}
    metric = "excess_arp@10" if any("excess_arp@10" in r for r in mf) else "arp@10"
    lo = {r["seed"]: r.get(metric) for r in mf if r["dim"] == dims[0]}
    hi = {r["seed"]: r.get(metric) for r in mf if r["dim"] == dims[-1]}
    diffs = [lo[s] - hi[s] for s in lo if s in hi and lo[s] is not None and hi[s] is not None]
    return {"metric": metric, "d_low": dims[0], "d_high": dims[-1],
            "difference": interval(diffs)}


def findings(results: dict) -> list:
    """E1's "what it shows" sentences, each stating a direction only when its 95% interval
    excludes zero: per d, the lists against the oracle's (``excess_arp@10``; on real data the
    diverse users' ΔGAP, lists against profiles), and the smallest-vs-largest-d contrast."""
    out = []
    summ = sorted([e for e in results["summary"] if e.get("model") == "mf"],
                  key=lambda e: e["dim"])
    oracle = results["config"].get("oracle", False)
    metric = "excess_arp@10" if oracle else "delta_gap@10:diverse"
    for e in summ:
        if metric not in e:
            continue
        if oracle:
            out.append(direction_sentence(e[metric], f"At d = {e['dim']} the lists",
                                          "are more popular than the oracle's",
                                          "are less popular than the oracle's", metric=metric))
        else:
            out.append(direction_sentence(e[metric], f"At d = {e['dim']} the diverse users' "
                                          "lists", "are more popular than their profiles",
                                          "are less popular than their profiles",
                                          metric=metric))
    c = results.get("contrasts") or {}
    if c:
        out.append(direction_sentence(
            c["difference"], f"From d = {c['d_low']} to d = {c['d_high']}, {c['metric']}",
            "falls", "rises",
            metric=f"{c['metric']}(d={c['d_low']}) − {c['metric']}(d={c['d_high']})"))
    return out


def fmt_ci(stat, digits: int = 3, metric=None) -> str:
    """``mean [low, high]`` of an interval entry, ``*`` when it excludes 0 and ``metric`` can be
    negative (:func:`~embtab.experiments.intervals.is_signed`; None: any quantity; the bound that
    excludes 0 then printed with the decimals it needs not to read as 0); ``mean (no
    spread)`` when every seed gave the same value (as the report's other tables write it);
    "–" when missing."""
    text = ci_text(stat, f".{digits}f", ref=0.0 if is_signed(metric) else None)
    if "[" not in text and text != "–" and (stat or {}).get("sd") == 0.0 and \
            ((stat or {}).get("n") or 0) > 1:
        text += " (no spread)"
    lo, hi = (stat or {}).get("ci95_low"), (stat or {}).get("ci95_high")
    excludes0 = "[" in text and (lo > 0 or hi < 0) and is_signed(metric)
    return text + ("*" if excludes0 else "")


def _ci_errorbar(ax, entries, metric, **kw):
    pts = [(e["dim"], e[metric]) for e in entries if metric in e]
    if not pts:
        return
    x = [d for d, _ in pts]
    y = np.array([s["mean"] for _, s in pts], dtype=float)
    lo = np.array([s["ci95_low"] for _, s in pts], dtype=float)
    hi = np.array([s["ci95_high"] for _, s in pts], dtype=float)
    err = np.vstack([np.where(np.isfinite(lo), y - lo, 0.0),
                     np.where(np.isfinite(hi), hi - y, 0.0)])
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, **kw)


def plot_truth(results: dict, path) -> Path:
    """E1 against the truth, mean and 95% interval over seeds vs d: excess popularity (the
    diverse users' ΔGAP on real data), recall@10 (oracle dashed), ΔGAP@10 per user group, and
    distinct lists with the top-merit decile's exposure (its relevance share dotted)."""
    plt = pyplot()
    summ = results["summary"]
    mf = sorted([e for e in summ if e.get("model") == "mf"], key=lambda e: e["dim"])
    oracle = next((e for e in summ if e.get("model") == "oracle"), None)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.3))
    first = "excess_arp@10" if oracle is not None else "delta_gap@10:diverse"
    _ci_errorbar(axes[0], mf, first, label="MF (cuckoo)")
    axes[0].axhline(0.0, color="gray", linewidth=1)
    axes[0].set_title(first + (" (0 = oracle)" if oracle is not None else " (0 = profiles)"),
                      fontsize=9)
    _ci_errorbar(axes[1], mf, "recall@10", label="MF (cuckoo)")
    if oracle is not None:
        axes[1].axhline(oracle["recall@10"]["mean"], color="C2", linestyle="--",
                        label="oracle")
    axes[1].set_title("recall@10", fontsize=9)
    axes[1].legend(fontsize=7)
    for j, g in enumerate(metrics.USER_GROUPS):
        _ci_errorbar(axes[2], mf, f"delta_gap@10:{g}", color=f"C{j}", label=g)
    axes[2].axhline(0.0, color="gray", linewidth=1)
    axes[2].set_title("ΔGAP@10 per user group (0 = profiles)", fontsize=9)
    axes[2].legend(fontsize=7)
    _ci_errorbar(axes[3], mf, "distinct_lists@10", color="C0", label="distinct lists")
    if oracle is not None:
        _ci_errorbar(axes[3], mf, "merit_exposure@10", color="C3",
                     label="top-merit decile exposure")
        axes[3].axhline(oracle["merit_relevance"]["mean"], color="C3", linestyle=":",
                        label="its relevance share")
    axes[3].set_title("distinct lists; merit exposure", fontsize=9)
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dimension d")
    fig.suptitle(f"E1 against the truth — {results['dataset'].get('spec')} "
                 f"({len(results['config']['seeds'])} seeds, 95% intervals)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def interval_table(results: dict) -> list:
    """Markdown lines: per (model, d), mean [95% CI] of :data:`INTERVAL_METRICS`."""
    summ = results["summary"]
    order = [e for e in summ if e.get("model") != "mf"] + sorted(
        [e for e in summ if e.get("model") == "mf"], key=lambda e: e["dim"])
    cols = [m for m in INTERVAL_METRICS if any(m in e for e in summ)]
    head = ["model", "d"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in order:
        cells = [model_label(e), str(e.get("dim", ""))] + [fmt_ci(e.get(m), metric=m) for m in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


register(Experiment("dims", "E1", "embedding dimension sweep, collisionless tables", run_dims,
                    section, plot, in_demo=True))
