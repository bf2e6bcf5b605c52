"""``posthoc``: can popularity calibration patch a low-d model after the fact?

A low-d and a high-d collisionless (cuckoo) model are trained as in E1 (``dims``). Each model's
top-C candidates are reranked by :func:`embtab.rerank.calibrated` toward the user's own
head / mid / tail mix (:func:`embtab.rerank.popularity_bins` of the training counts) for each
λ in ``lams`` (λ = 0 is the model's own list). Per seed, the low-d model's *matched* λ* is
where its exposure (``excess_arp@10``, or ``arp@10`` without a truth) equals the high-d
model's plain (λ = 0) exposure, interpolated linearly between the two grid λ around it (the
largest λ when no λ reaches it; see :func:`contrasts`). The contrasts, each with a
95% interval over seeds (:mod:`~embtab.experiments.intervals`), are the accuracy of the high-d
model at λ = 0 minus that of the low-d model at λ* (equal exposure), and the reverse
question: the high-d model's accuracy at λ = 0 minus at the same λ* (what calibration
costs a model that has the capacity). docs/experiments.md states the protocol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab import rerank
from embtab._checks import check_int
from embtab._research import K
from embtab.data import Interactions
from embtab.experiments.calibration import calibrated_lists
from embtab.experiments.dims import fmt_ci
from embtab.experiments.intervals import CI_NOTE, direction_sentence, interval, summary_with_intervals
from embtab.experiments.plots import num, pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section, model_label
from embtab.experiments.session import (
    Progress,
    Session,
    evaluate_lists,
    make_result,
    reference_rows,
    check_candidates,
    real_sweep,
    seed_list,
    session_for,
)
from embtab.experiments.truth import total_relevance
from embtab.train import drop_excluded, score_matrix

__all__ = ["LAMBDAS", "contrasts", "findings", "plot", "popcal_lists", "run_posthoc", "section"]

#: The calibration weights each model is reranked with.
LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)

#: The accuracy metrics compared at equal exposure.
ACCURACY = ("recall@10", "ndcg@10")


def popcal_lists(model, train: Interactions, item_dist: np.ndarray, candidates: int,
                 lams: Sequence[float], chunk: int = 4096) -> dict:
    """λ -> calibrated top-10 lists [U, 10] of ``model``'s top-``candidates`` items.

    Scores ``chunk`` users at a time (training items masked) and reranks them with
    :func:`embtab.experiments.calibration.calibrated_lists` over the categories ``item_dist``.
    A user with fewer than 10 untrained items gets a shorter list, padded with -1
    (:func:`embtab.train.drop_excluded`). ``chunk`` is an int >= 1.
    """
    chunk = check_int(chunk, "chunk", min=1)
    lists: dict = {}
    for start in range(0, train.n_users, chunk):
        users = np.arange(start, min(start + chunk, train.n_users))
        scores = score_matrix(model, train, users).numpy()
        for lam, top in calibrated_lists(scores, train, item_dist, candidates, lams,
                                         users=users).items():
            lists.setdefault(lam, []).append(drop_excluded(top, scores))
    return {lam: np.concatenate(parts) for lam, parts in lists.items()}


def run_posthoc(dataset: str | Interactions = "synthetic:rank=16", seeds=3, *,
                low_dim: int = 4, high_dim: int = 64, lams: Sequence[float] = LAMBDAS,
                candidates: int = 100, train_overrides: dict | None = None,
                progress: bool = True, session: Session | None = None) -> dict:
    """Popularity-calibrated reranking of a low-d and a high-d cuckoo model, per seed and λ.

    Parameters
    ----------
    dataset : str or Interactions
        A :func:`embtab.data.load_dataset` spec, or a data set (a planted truth gives
        ``excess_arp@10``; without one exposure is ``arp@10``).
    seeds : int or sequence of int
    low_dim, high_dim : int
        The two embedding dimensions (``low_dim < high_dim``).
    lams : sequence of float
        Calibration weights in [0, 1]; must contain 0 (the plain lists).
    candidates : int
        C, the candidates reranked per user.
    train_overrides, progress, session
        As :func:`embtab.experiments.run_dims`.

    Returns
    -------
    dict
        results.json object (``experiment = "posthoc"``): ``rows`` (oracle and baselines per
        seed; ``model = "mf+popcal"`` rows per (dim, λ, seed)), ``summary`` (per model, dim
        and λ) and ``contrasts`` (:func:`contrasts`).
    """
    if int(low_dim) >= int(high_dim):
        raise ValueError(f"low_dim must be smaller than high_dim; got {low_dim} and {high_dim}")
    lams = [float(x) for x in lams]
    if 0.0 not in lams or any(not 0.0 <= x <= 1.0 for x in lams):
        raise ValueError(f"lams must lie in [0, 1] and contain 0; got {lams}")
    t0 = time.perf_counter()
    lams = real_sweep(lams, "lams", low=0.0, high=1.0)
    candidates = check_candidates(candidates)
    low_dim, high_dim = check_int(low_dim, "low_dim", min=1), check_int(high_dim, "high_dim", min=1)
    seeds = seed_list(seeds)
    s = session_for(dataset, train_overrides, progress, session)
    relevance = total_relevance(s.data.truth) if s.data.truth is not None else None
    rows = []
    bar = Progress(len(seeds) * 2, "posthoc", progress)
    for seed in seeds:
        train, test, ref, first = reference_rows(s, seed, relevance)
        rows += first
        item_dist = rerank.popularity_bins(train.item_counts())
        for d in (int(low_dim), int(high_dim)):
            model = s.model(s.config(dim=d, table="cuckoo", seed=seed), f"posthoc d={d} "
                            f"seed={seed}")
            for lam, top in popcal_lists(model, train, item_dist, candidates, lams).items():
                rows.append({"model": "mf+popcal", "seed": seed, "dim": d, "table": "cuckoo",
                             "lam": lam, "candidates": int(candidates),
                             **evaluate_lists(top, train, test), **ref.metrics(top)})
            bar.tick()
    bar.close()
    res = make_result("posthoc", s, {"low_dim": int(low_dim), "high_dim": int(high_dim),
                                     "lams": lams, "candidates": int(candidates),
                                     "categories": "popularity bins (head/mid/tail)",
                                     "oracle": s.data.truth is not None, "seeds": seeds},
                      rows, t0)
    res["summary"] = summary_with_intervals(rows, ("model", "dim", "lam"),
                                            skip=("seed", "candidates"))
    res["contrasts"] = contrasts(rows, int(low_dim), int(high_dim))
    return res


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def contrasts(rows, low_dim: int, high_dim: int) -> dict:
    """Per-seed comparisons at equal exposure, each an :func:`interval` over seeds.

    ``exposure``: the metric matched (``excess_arp@10`` when rows have it, else ``arp@10``).
    Per seed, the target is the high-d model's exposure at λ = 0, and the low-d model is matched
    to it on its grid of λ:

    - ``"equal"``: the first grid λ whose exposure is at most the target, λ_j, comes after one
      above it, λ_{j-1}; λ* is interpolated linearly between them to the target's exposure
      (weight w = (e_{j-1} − target) / (e_{j-1} − e_j)), and every metric of both models at λ*
      is interpolated with the same w (the gap at λ* is 0 by construction; λ_j itself would
      compare a model calibrated past the target, which leans the accuracy comparison toward
      the high-d model). A λ = 0 exactly at the target counts here too;
    - ``"below"``: the low-d lists are already less popular than the target at λ = 0 (λ* = 0);
      there is nothing to match, and no equal-exposure comparison;
    - ``"short"``: no λ of the grid reaches the target (λ* = the largest λ).

    Keys: ``match`` (per seed, one of the above), ``lam_matched`` (per seed, λ*), ``reached``
    (per seed, "equal" or "below"), ``gap_before`` / ``gap_after``: exposure(low, 0) −
    target and exposure(low, λ*) − target; ``gap_matched``: the latter over the reached seeds;
    ``equal_exposure:<m>``: m(high, 0) − m(low, λ*) over the "equal" seeds, for m in
    recall@10, ndcg@10; ``high_cost:<m>``: m(high, 0) − m(high, λ*) over every seed. Empty when
    a seed lacks either model's λ = 0 row.
    """
    # a metric saved as null (NaN in a JSON results file) reads as NaN, as it was in memory
    mf = [{k: float("nan") if v is None else v for k, v in r.items()}
          for r in rows if r.get("model") == "mf+popcal"]
    exp = "excess_arp@10" if any("excess_arp@10" in r for r in mf) else "arp@10"
    by = {(r["seed"], r["dim"], r["lam"]): r for r in mf}
    seeds = sorted({r["seed"] for r in mf})
    out: dict = {"exposure": exp, "interpolation": "linear in λ", "match": [],
                 "lam_matched": [], "reached": [], "gap_before": [], "gap_after": [],
                 "gap_matched": []}
    acc = {f"{kind}:{m}": [] for kind in ("equal_exposure", "high_cost") for m in ACCURACY}
    for seed in seeds:
        lams = sorted(lam for (s_, d, lam) in by if s_ == seed and d == low_dim)
        hi0, lo0 = by.get((seed, high_dim, 0.0)), by.get((seed, low_dim, 0.0))
        if hi0 is None or lo0 is None:
            return {}
        target = hi0[exp]
        j = next((i for i, lam in enumerate(lams) if by[(seed, low_dim, lam)][exp] <= target),
                 None)
        if j is None:
            match, j = "short", len(lams) - 1
        elif j == 0:
            match = "equal" if lo0[exp] == target else "below"
        else:
            match = "equal"
        lo_j, hi_j = by[(seed, low_dim, lams[j])], by.get((seed, high_dim, lams[j]))
        if match == "equal" and j > 0:
            lo_p, hi_p = by[(seed, low_dim, lams[j - 1])], by.get((seed, high_dim, lams[j - 1]))
            w = (lo_p[exp] - target) / (lo_p[exp] - lo_j[exp])   # in (0, 1]: e_{j-1} > target >= e_j
            lam = lams[j - 1] + w * (lams[j] - lams[j - 1])

            def low(m, lo_p=lo_p, lo_j=lo_j, w=w):
                return lo_p[m] + w * (lo_j[m] - lo_p[m])

            def high(m, hi_p=hi_p, hi_j=hi_j, w=w):
                return (hi_p[m] + w * (hi_j[m] - hi_p[m])
                        if hi_p is not None and hi_j is not None else None)
            gap = 0.0   # by construction
        else:
            lam = lams[j]

            def low(m, lo_j=lo_j):
                return lo_j[m]

            def high(m, hi_j=hi_j):
                return hi_j[m] if hi_j is not None else None
            gap = lo_j[exp] - target
        out["match"].append(match)
        out["reached"].append(match != "short")
        out["lam_matched"].append(float(lam))
        out["gap_before"].append(lo0[exp] - target)
        out["gap_after"].append(gap)
        if match != "short":
            out["gap_matched"].append(gap)
        for m in ACCURACY:  # equal exposure only where the match was made
            acc[f"equal_exposure:{m}"].append(hi0[m] - low(m) if match == "equal" else None)
            h = high(m)
            acc[f"high_cost:{m}"].append(hi0[m] - h if h is not None else None)
    out["gap_before"] = interval(out["gap_before"])
    out["gap_after"] = interval(out["gap_after"])
    out["gap_matched"] = interval(out["gap_matched"])
    out.update({k: interval(v) for k, v in acc.items()})
    return out


def findings(results: dict) -> list:
    """The report's sentences, each stating a direction only when its 95% interval excludes 0."""
    c = results.get("contrasts") or {}
    cfg = results["config"]
    lo, hi = cfg["low_dim"], cfg["high_dim"]
    if c and "match" not in c:
        # results saved before λ* was interpolated: recomputed from their rows; without rows,
        # only the sentences that do not need the match
        c = (contrasts(results["rows"], lo, hi) if results.get("rows") else
             {k: v for k, v in c.items() if k.startswith(("exposure", "gap_before", "high_"))})
    if not c:
        return []
    exp = c["exposure"]
    match = c.get("match", [])
    n_equal, n_below, n_short = (match.count(k) for k in ("equal", "below", "short"))
    out = [direction_sentence(c["gap_before"], f"Before calibration, the d = {lo} lists",
                              f"are more popular than the d = {hi} lists",
                              f"are less popular than the d = {hi} lists",
                              metric=f"{exp}(d={lo}) − {exp}(d={hi})")]
    if "gap_after" in c:
        lams = ", ".join(f"{x:.3g}" for x in c["lam_matched"])
        out.append(direction_sentence(
            c["gap_after"], f"At the matched λ* (per seed: {lams}; matched on "
            f"{n_equal} of {len(match)} seeds" + (f", already less popular at λ = 0 on "
                                                  f"{n_below}" if n_below else "")
            + (f", the others short of it at the largest λ" if n_short else "") + f"), the "
            f"d = {lo} lists", f"are still more popular than the d = {hi} lists",
            f"are less popular than the d = {hi} lists",
            metric=f"{exp}(d={lo}, λ*) − {exp}(d={hi}, λ=0)"))
    if n_below:
        out.append(f"On {_plural(n_below, 'seed')} the d = {lo} lists were already less popular "
                   f"than the d = {hi} lists at λ = 0, so there is no exposure to match and no "
                   "accuracy comparison there.")
    cal = f"the d = {lo} model at λ*"
    for m in ACCURACY:
        if "match" not in c:
            break
        if not n_equal:
            out.append(f"No seed was matched to the d = {hi} exposure, so {m} is not compared "
                       "at equal exposure.")
            continue
        out.append(direction_sentence(
            c[f"equal_exposure:{m}"],
            f"At equal exposure (on the {_plural(n_equal, 'matched seed')}, λ* interpolated "
            f"linearly between the two grid λ around the d = {hi} exposure), the d = {hi} "
            "model", f"is more accurate than {cal}", f"is less accurate than {cal}",
            metric=f"{m}(d={hi}) − {m}(d={lo}, λ*)"))
    for m in ACCURACY:
        out.append(direction_sentence(
            c[f"high_cost:{m}"], f"Calibrating the d = {hi} model at the same λ",
            f"costs it {m}", f"raises its {m}",
            metric=f"{m}(d={hi}, λ=0) − {m}(d={hi}, λ*)"))
    return out


def plot_posthoc(results: dict, path) -> Path:
    """Accuracy against exposure over λ, one curve per model (mean ± 95% interval)."""
    plt = pyplot()
    summ = results["summary"]
    exp = (results.get("contrasts") or {}).get("exposure") or (
        "excess_arp@10" if results["config"].get("oracle") else "arp@10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, m in zip(axes, ACCURACY):
        for j, d in enumerate((results["config"]["low_dim"], results["config"]["high_dim"])):
            es = sorted([e for e in summ if e.get("model") == "mf+popcal" and e["dim"] == d],
                        key=lambda e: e["lam"])
            x = np.array([num(e[exp]["mean"]) for e in es])
            y = np.array([num(e[m]["mean"]) for e in es])
            err = [[num(e[m]["mean"]) - num(e[m]["ci95_low"]) for e in es],
                   [num(e[m]["ci95_high"]) - num(e[m]["mean"]) for e in es]]
            err = np.nan_to_num(np.array(err, dtype=float))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{j}", label=f"d = {d}")
            for e in es:
                ax.annotate(f"λ={e['lam']:g}", (num(e[exp]["mean"]), num(e[m]["mean"])), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        oracle = next((e for e in summ if e.get("model") == "oracle"), None)
        if oracle is not None:
            ax.plot([num(oracle[exp]["mean"])], [num(oracle[m]["mean"])], "k*", label="oracle")
        ax.set_xlabel(exp + (" (0 = oracle)" if exp.startswith("excess") else ""))
        ax.set_ylabel(m)
        ax.legend(fontsize=7)
    fig.suptitle(f"posthoc: popularity calibration, low vs high d — "
                 f"{results['dataset'].get('spec')} ({len(results['config']['seeds'])} seeds)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """The posthoc plot: accuracy against exposure, one curve per model."""
    return [plot_posthoc(results, Path(out_dir) / f"{prefix}posthoc.png")]


#: The columns of the report's table.
TABLE_METRICS = ("recall@10", "ndcg@10", "arp@10", "excess_arp@10", "miscalibration@10",
                 "coverage@10")


def section(results: dict, plots=()) -> list:
    """The report section: mean [95% CI] per (model, d, λ), the plot and the sentences."""
    cfg, summ = results["config"], results["summary"]
    lines = [f"## posthoc — popularity calibration of d = {cfg['low_dim']} vs d = "
             f"{cfg['high_dim']} (C = {cfg['candidates']}, categories: {cfg['categories']})",
             "", dataset_line(results), "",
             CI_NOTE, ""]
    order = [e for e in summ if e.get("model") != "mf+popcal"] + sorted(
        [e for e in summ if e.get("model") == "mf+popcal"], key=lambda e: (e["dim"], e["lam"]))
    cols = [m for m in TABLE_METRICS if any(m in e for e in summ)]
    head = ["model", "d", "λ"] + cols
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in order:
        lam = f"{e['lam']:g}" if "lam" in e else ""
        lines.append("| " + " | ".join([model_label(e), str(e.get("dim", "")), lam]
                                       + [fmt_ci(e.get(m), metric=m) for m in cols]) + " |")
    return finish_section(lines, findings(results), results, plots)


register(Experiment("posthoc", "E1", "popularity calibration of a low-d vs a high-d model at "
                    "equal exposure", run_posthoc, section, plot))
