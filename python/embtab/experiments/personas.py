"""E6 ``personas``: multi-persona users and limited attention on the crowding-out setting.

Does a user model with several persona vectors keep a 70/30 user's minority interest without
reranking, and does a reranker that maximises consumption under limited attention serve users
better than Steck's calibration? docs/experiments.md ("E6") states the protocol; in short:

* data: generator v2's crowding-out setting (every user 70/30 over two genres) by default;
  ``movielens:PATH`` and other specs work without the oracle fields;
* models at an **equal user-side parameter budget**: the single-vector model with dimension d,
  and K personas of dimension d/K each (:class:`embtab.train.TrainConfig` ``personas=K``; items
  then have dimension d/K too, so the persona model has at most the single model's parameters);
  lr, L2 and epochs tuned per model on a validation split of the first seed's training split
  (:func:`embtab.experiments.tuning.tune`) and reused for every seed;
* arms: each model's own top-10, the same candidates reranked by Steck's calibration
  (:func:`embtab.experiments.calibration.calibrated_lists`, λ = 0.5, C = 100), and by the
  limited-attention reranker (:func:`embtab.experiments.attention.attention_lists`, budget
  c); the oracle (top-10 of the
  truth) when there is one;
* metrics: E3's (recall, ndcg, miscalibration, ``minority_share@10`` against the history), the
  truth metrics (``excess_arp@10`` ...), and ``consumed_utility@10`` with budget c
  (:func:`embtab.experiments.attention.consumed_utility`, docs/metrics.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab._checks import check_int
from embtab._research import K, topk_indices
from embtab.data import Interactions
from embtab.experiments.attention import attention_lists, consumed_utility
from embtab.experiments.calibration import calibrated_lists, categories, minority_share
from embtab.experiments.intervals import direction_sentence, interval, summary_with_intervals
from embtab.experiments.plots import pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section, table
from embtab.experiments.results import summarize
from embtab.experiments.session import (
    Progress,
    Session,
    check_candidates,
    evaluate_lists,
    int_sweep,
    make_result,
    overrides_of,
    seed_list,
)
from embtab.experiments.truth import TruthReference, total_relevance
from embtab.experiments.tuning import QUICK_TUNING_GRID, TUNING_GRID, tune as tune_config
from embtab.train import drop_excluded, score_matrix

__all__ = ["DEFAULT_DATASET", "QUICK_DATASET", "contrasts", "findings", "plot",
           "plot_personas", "run_personas", "section"]

#: The data set of ``dataset="synthetic"``: generator v2's 70/30 crowding-out setting.
DEFAULT_DATASET = "synthetic:crowding=1,n_users=1000,n_items=1500,interactions_per_user=30"
#: The same setting, smaller, for ``quick=True``.
QUICK_DATASET = "synthetic:crowding=1,n_users=500,n_items=750,interactions_per_user=30"

METRICS = ("recall@10", "ndcg@10", "miscalibration@10", "minority_share@10", "excess_arp@10",
           "consumed_utility@10")


def run_personas(dataset: str | Interactions = "synthetic", seeds=5, *, dim: int = 32,
                 personas: Sequence[int] = (2, 4), lam: float = 0.5, candidates: int = 100,
                 budget: int = 2, loss: str = "bpr", tune: bool = True,
                 quick: bool = False, train_overrides: dict | None = None,
                 progress: bool = True, session: Session | None = None) -> dict:
    """E6: single-vector vs persona models, each with and without Steck's and the
    limited-attention reranking; one row per (arm, seed).

    Parameters
    ----------
    dataset : str or Interactions
        ``"synthetic"`` means :data:`DEFAULT_DATASET` (:data:`QUICK_DATASET` with ``quick``).
    seeds : int or sequence
    dim : int
        The single-vector dimension d; a K-persona model gets d/K per persona (d divisible
        by every K).
    personas : sequence of int
        The distinct persona counts K > 1 to compare with the single-vector model (K = 1,
        always run); ``ValueError`` naming ``personas`` for a K <= 1.
    lam, candidates : float, int
        Steck's λ and the candidate count C of both rerankers.
    budget : int
        The consumption budget c of the limited-attention reranker and of
        ``consumed_utility@10``.
    loss : {"bpr", "softmax"}
    tune : bool
        Tune lr, L2 and epochs per model (on the first seed's split; the grid is
        :data:`~embtab.experiments.tuning.QUICK_TUNING_GRID` with ``quick``, else
        :data:`~embtab.experiments.tuning.TUNING_GRID`).
    quick : bool
        The smaller data set and tuning grid (minutes on 2 cores).
    train_overrides, progress, session
        As the other experiments; a shared ``session`` is used when its data set is the one
        asked for.
    """
    t0 = time.perf_counter()
    train_overrides = overrides_of(train_overrides, session)
    # K = 1 is the single-vector arm, always run: a sweep of (1,) ran no persona arm at all
    personas = int_sweep(personas, "personas", min=2)
    candidates = check_candidates(candidates)
    budget = check_int(budget, "budget", min=1, max=K)
    dim = check_int(dim, "dim", min=1)
    seed_list(seeds)
    ks = [1] + personas
    for kk in ks:
        if dim % kk:
            raise ValueError(f"dim={dim} must be divisible by every persona count; got {kk}")
    spec = dataset
    if isinstance(dataset, str) and dataset == "synthetic":
        spec = QUICK_DATASET if quick else DEFAULT_DATASET
    if session is not None and (session.spec == spec or not isinstance(spec, str)):
        s = session
    else:
        s = Session(spec, train_overrides, progress)
    seeds = seed_list(seeds)
    grid = QUICK_TUNING_GRID if quick else TUNING_GRID
    truth = s.data.truth
    relevance = total_relevance(truth) if truth is not None else None
    configs, tuning = {}, {}
    rows = []
    bar = Progress(len(seeds) * len(ks), "E6 personas", progress)
    for seed in seeds:
        train, test = s.split(seed)
        item_dist, kind = categories(train)
        cats = item_dist > 0
        ref = TruthReference(s.data, train, relevance)

        # a short list's -1 padding maps to an extra item without categories (no mass)
        dist_pad = np.vstack([item_dist, np.zeros((1, item_dist.shape[1]))])

        def evaluate(arm, top, extra):
            minority, hist = minority_share(np.where(top < 0, train.n_items, top), train,
                                            dist_pad)
            return {"arm": arm, "model": arm, "seed": seed, **extra,
                    **evaluate_lists(top, train, test, cats),
                    "minority_share@10": minority, "minority_share_history": hist,
                    **ref.metrics(top),
                    "consumed_utility@10": consumed_utility(top, budget, truth=truth,
                                                            test=test)}

        if ref.oracle is not None:
            rows.append(evaluate("oracle", ref.oracle, {}))
        for kk in ks:
            name = "single" if kk == 1 else f"personas-{kk}"
            cfg = s.config(dim=dim // kk, personas=kk, loss=loss, seed=seed)
            if tune:
                if kk not in configs:
                    chosen, info = tune_config(train, cfg, grid, val_seed=seed + 1_000_003)
                    configs[kk] = {f: getattr(chosen, f) for f in ("lr", "l2", "epochs")}
                    tuning[name] = {**configs[kk], "val_ndcg@10": info["val_ndcg@10"],
                                    "tuned": info["tuned"]}
                cfg = s.config(**{**cfg.to_dict(), **configs[kk]})
            model = s.model(cfg, f"E6 {name} seed={seed}")
            scores = score_matrix(model, train).numpy()
            extra = {"personas": kk, "dim": dim // kk}
            rows.append(evaluate(name, topk_indices(scores, K), extra))
            cal = calibrated_lists(scores, train, item_dist, candidates, [lam])[float(lam)]
            rows.append(evaluate(f"{name}+steck", drop_excluded(cal, scores), extra))
            att = attention_lists(scores, train, item_dist, candidates, budget)
            rows.append(evaluate(f"{name}+attention", drop_excluded(att, scores), extra))
            bar.tick()
    bar.close()
    res = make_result("personas", s, {
        "dim": int(dim), "personas": ks, "lam": float(lam), "candidates": int(candidates),
        "budget": int(budget), "loss": loss, "tuned": bool(tune),
        "tuning_grid": grid if tune else None, "tuning": tuning, "categories": kind,
        "seeds": seeds,
        "budget_rule": "single-vector d; K personas of d/K (items d/K)"}, rows, t0)
    res["summary"] = summary_with_intervals(rows, ("arm",), skip=("seed", "model"))
    res["contrasts"] = contrasts(rows)
    return res


def _paired(rows, arm_a: str, arm_b: str, metric: str) -> dict:
    """Per-seed ``metric(arm_a) − metric(arm_b)`` as an :func:`interval`."""
    a = {r["seed"]: r.get(metric) for r in rows if r["arm"] == arm_a}
    b = {r["seed"]: r.get(metric) for r in rows if r["arm"] == arm_b}
    return interval([a[s] - b[s] for s in a if s in b and a[s] is not None
                     and b[s] is not None])


def contrasts(rows) -> list:
    """The paired per-seed differences the report's sentences rest on, each an
    :func:`interval`: every arm's minority share minus its history's (``minority_gap``); each
    arm against ``single`` on minority share, ndcg@10 and consumed utility; and the
    limited-attention reranker against Steck's on consumed utility and ndcg@10, per model;
    with an oracle, every arm's consumed utility against the oracle's (``vs_oracle``)."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    out = []
    for arm in arms:
        vals = [r["minority_share@10"] - r["minority_share_history"] for r in rows
                if r["arm"] == arm and r.get("minority_share@10") is not None]
        out.append({"kind": "minority_gap", "arm": arm, "difference": interval(vals)})
    for arm in arms:
        if arm in ("single", "oracle"):
            continue
        for m in ("minority_share@10", "ndcg@10", "consumed_utility@10"):
            out.append({"kind": "vs_single", "arm": arm, "metric": m,
                        "difference": _paired(rows, arm, "single", m)})
    if "oracle" in arms:
        for arm in arms:
            if arm != "oracle":
                out.append({"kind": "vs_oracle", "arm": arm, "metric": "consumed_utility@10",
                            "difference": _paired(rows, arm, "oracle", "consumed_utility@10")})
    for base in [a for a in arms if f"{a}+attention" in arms and f"{a}+steck" in arms]:
        for m in ("consumed_utility@10", "ndcg@10", "minority_share@10"):
            out.append({"kind": "attention_vs_steck", "arm": base, "metric": m,
                        "difference": _paired(rows, f"{base}+attention", f"{base}+steck", m)})
    return out


def findings(results: dict) -> list:
    """The report's sentences, each from a contrast's interval (a direction only where the
    interval excludes 0)."""
    c = results.get("contrasts") or []
    budget = results["config"].get("budget")
    out = []
    for e in c:
        if e["kind"] == "minority_gap" and e["arm"] in ("single", "oracle") + tuple(
                f"personas-{k}" for k in results["config"]["personas"]):
            out.append(direction_sentence(
                e["difference"], f"The `{e['arm']}` lists' share outside each user's main "
                "category", "is above their history's", "is below their history's (crowded out)",
                metric="minority_share@10 − minority_share_history"))
    for e in c:
        if e["kind"] == "vs_single" and e["arm"].startswith("personas-") and "+" not in e["arm"] \
                and e["metric"] in ("minority_share@10", "ndcg@10"):
            out.append(direction_sentence(
                e["difference"], f"Without reranking, `{e['arm']}` against `single`: "
                f"{e['metric']}", "is higher", "is lower", metric="difference"))
    for e in c:
        if e["kind"] == "vs_oracle" and e["arm"] in ("single", "single+steck",
                                                     "single+attention"):
            out.append(direction_sentence(
                e["difference"], f"Consumed utility (c = {budget}) of `{e['arm']}` against the "
                "accuracy-optimal oracle's", "is higher", "is lower", metric="difference"))
    for e in c:
        if e["kind"] == "attention_vs_steck":
            out.append(direction_sentence(
                e["difference"], f"On the `{e['arm']}` candidates, the limited-attention "
                f"reranker (c = {budget}) against Steck's: {e['metric']}", "is higher",
                "is lower", metric="difference"))
    return out


_PANELS = (("minority_share@10", "minority share@10 (history: dashed)"),
           ("consumed_utility@10", "consumed utility@10"), ("ndcg@10", "ndcg@10"),
           ("excess_arp@10", "excess arp@10 vs oracle"))


def plot_personas(results: dict, path) -> Path:
    """Bars with 95% intervals per arm: minority share, consumed utility, ndcg, excess arp;
    the oracle's mean dotted, the users' history's minority share dashed."""
    plt = pyplot()
    summ = [r for r in results["summary"] if r["arm"] != "oracle"]
    panels = [(m, t) for m, t in _PANELS if any(
        isinstance(r.get(m), dict) and r[m].get("mean") is not None for r in summ)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.8), squeeze=False)
    x = np.arange(len(summ))
    for ax, (m, title) in zip(axes[0], panels):
        mean = np.array([r[m]["mean"] if r[m]["mean"] is not None else np.nan for r in summ],
                        dtype=float)
        lo = np.array([r[m]["ci95_low"] if r[m]["ci95_low"] is not None else np.nan
                       for r in summ], dtype=float)
        err = np.where(np.isfinite(lo), mean - lo, 0.0)
        colors = [f"C{(['single'] + [f'personas-{k}' for k in results['config']['personas']]).index(r['arm'].split('+')[0]) % 10}"
                  if r["arm"].split("+")[0] in ["single"] + [f"personas-{k}" for k in
                                                             results["config"]["personas"]]
                  else "gray" for r in summ]
        ax.bar(x, mean, yerr=err, capsize=2, color=colors)
        if m == "minority_share@10":
            hist = summ[0].get("minority_share_history", {}).get("mean")
            if hist is not None:
                ax.axhline(hist, color="k", linestyle="--", linewidth=1)
        oracle = next((r for r in results["summary"] if r["arm"] == "oracle"), None)
        if oracle is not None and m in ("consumed_utility@10", "ndcg@10", "minority_share@10"):
            ax.axhline(oracle[m]["mean"], color="gray", linestyle=":", linewidth=1)
        ax.set_xticks(x)
        ax.set_xticklabels([r["arm"] for r in summ], rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    has_oracle = any(r["arm"] == "oracle" for r in results["summary"])
    fig.suptitle(f"E6 personas and limited attention — {results['dataset']['name']}"
                 + (" (dotted: oracle)" if has_oracle else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E6's plot."""
    return [plot_personas(results, Path(out_dir) / f"{prefix}personas.png")]


def section(results: dict, plots=()) -> list:
    """E6's report section (Markdown lines)."""
    cfg = results["config"]
    summ = summarize(results)
    lines = [(f"## E6 — personas and limited attention (d = {cfg['dim']}; K personas of "
              f"d/K; Steck λ = {cfg['lam']:g}; limited attention c = {cfg['budget']}; "
              f"C = {cfg['candidates']}; loss {cfg['loss']})"), "", dataset_line(results), ""]
    if cfg.get("tuning"):
        lines += ["Tuned on the first seed's validation split: " + "; ".join(
            f"{a}: lr {t['lr']:g}, L2 {t['l2']:g}, {t['epochs']} epochs"
            + ("" if t.get("tuned", True) else " (not tuned: the validation split held no "
               "items, so the given values)")
            for a, t in cfg["tuning"].items()) + ".", ""]
    # (a column no row has, such as excess_arp@10 without an oracle, is left out)
    shown = tuple(m for m in METRICS + ("minority_share_history",)
                  if any(isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) for r in summ))
    lines += table(summ, [("arm", lambda r: r["model"])], metrics_=shown)
    return finish_section(lines, findings(results), results, plots)


register(Experiment("personas", "E6", "multi-persona users and limited-attention reranking",
                    run_personas, section, plot))
