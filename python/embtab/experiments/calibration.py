"""E3 ``calibration``: calibrated reranking (Steck 2018) of the d = 32 cuckoo model's candidates.

The d = 32 cuckoo model's scores, top-C candidates (training items excluded), each user's scores
min-max scaled to [0, 1] over the candidates (so the score term and the KL term are on comparable
scales, as with Steck's predicted probabilities), then :func:`embtab.rerank.calibrated` to k = 10
with λ ∈ {0, 0.1, ..., 0.9, 0.99}, α = 0.01, target p = the user's training genre distribution,
item distribution = :func:`item_distribution`. docs/experiments.md states what is expected.

:func:`calibrated_lists` and :func:`item_distribution` are also the calibrated arm of E5
(:mod:`embtab.experiments.feedback`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab import rerank
from embtab._checks import check_int
from embtab._research import ALPHA, K, category_mix, mean
from embtab.data import Interactions
from embtab.experiments.collisions import FIXED_DIM
from embtab.experiments.intervals import (
    ci95_half_width,
    ci_text,
    direction_sentence,
    interval,
    summary_with_intervals,
)
from embtab.experiments.plots import pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section, model_label, table
from embtab.experiments.results import find, seeds_of, summarize
from embtab.experiments.session import (
    Progress,
    Session,
    baseline_rows,
    evaluate_lists,
    make_result,
    check_candidates,
    int_sweep,
    real_sweep,
    seed_list,
    session_for,
)
from embtab.train import drop_excluded, score_matrix

__all__ = ["CANDIDATES", "LAMBDAS", "SCORE_SCALINGS", "calibrated_lists", "categories",
           "findings", "heldout_miscalibration", "item_distribution", "minmax",
           "minority_share", "plot", "plot_calibration", "run_calibration", "section",
           "tradeoff_findings", "user_mix"]

LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
CANDIDATES = (100, 500)


def item_distribution(data: Interactions) -> np.ndarray:
    """Genre distribution [I, G'] with rows summing to 1; genre-less items get an extra column."""
    w = data.genre_weights()
    empty = w.sum(axis=1) == 0
    if empty.any():
        w = np.concatenate([w, empty[:, None].astype(np.float64)], axis=1)
    return w


def categories(train: Interactions) -> tuple:
    """The categories E3 calibrates to: ``(item_dist [I, G], kind)``, rows summing to 1.

    Genres when the data set has any (items without a genre get a "none" category, and
    ``kind`` says so: E1's miscalibration@10 leaves such items out);
    otherwise head / mid / tail popularity bins of the training counts
    (:func:`embtab.rerank.popularity_bins`, Abdollahpouri et al.'s 20/60/20 split of
    interactions), ``kind = "popularity bins"``.
    """
    if train.n_genres > 0 and train.item_genres.indices.size > 0:
        dist = item_distribution(train)
        if dist.shape[1] > train.n_genres:
            # the report says so: this miscalibration@10 is not metrics.miscalibration_at_k's
            # (E1's), which leaves items without a genre out
            return dist, 'genres, and "none" for the items without a genre'
        return dist, "genres"
    return rerank.popularity_bins(train.item_counts()), "popularity bins (head/mid/tail)"


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale each row's finite values to [0, 1]; -inf stays -inf (never picked first)."""
    fin = np.isfinite(values)
    lo = np.where(fin, values, np.inf).min(axis=1, keepdims=True)
    hi = np.where(fin, values, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.where(fin, (values - np.where(np.isfinite(lo), lo, 0.0)) / span, -np.inf)
    return out.astype(np.float64)


def user_mix(data: Interactions, item_dist: np.ndarray) -> np.ndarray:
    """Each user's mean category distribution over their items of ``data``, [U, G] (0 rows
    for users without items)."""
    return category_mix((data.users, data.items), item_dist, data.n_users)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    """The logistic function of each finite value; -inf (an excluded item) stays -inf."""
    fin = np.isfinite(values)
    with np.errstate(over="ignore"):   # exp(-v) of a very negative v: inf, so 0
        out = 1.0 / (1.0 + np.exp(-np.where(fin, values, 0.0)))
    return np.where(fin, out, -np.inf)


#: How E3 puts candidate scores on the scale of the KL term (per user, over its C candidates).
#: Every scaling keeps an excluded item's -inf (it is never listed); the scores it gets hold no
#: NaN or +inf (:func:`calibrated_lists` refuses them).
SCORE_SCALINGS = {
    "minmax": ("per-user min-max over the C candidates", minmax),
    "raw": ("raw dot products", lambda v: v),
    "sigmoid": ("sigmoid of the dot products", _sigmoid),
    "rank": ("1 - rank/C", lambda v: np.where(np.isfinite(v), 1.0 - np.arange(v.shape[1])
                                              / v.shape[1], -np.inf)),
}


def calibrated_lists(scores: np.ndarray, train: Interactions, item_dist: np.ndarray,
                     candidates: int, lams: Sequence[float], k: int = K, *,
                     users=None, score_scaling: str = "minmax") -> dict:
    """For each λ, calibrated top-k lists [n, k] (dense item ids) from masked scores [n, I].

    ``scores`` rows are the users ``users`` (default: all users of ``train``, in order).
    Candidates are the top-``candidates`` items by score; their scores are min-max scaled per
    user (``score_scaling``, a key of :data:`SCORE_SCALINGS`); the target p is each user's
    training category distribution under ``item_dist``. Items scored ``-inf`` (excluded) are
    never listed, under every scaling: a user with fewer than k others gets a short list padded
    with -1. A NaN or +inf score (a diverged model) raises ``ValueError`` naming ``scores``.
    """
    rows = np.arange(train.n_users) if users is None else np.asarray(users, dtype=np.int64)
    if score_scaling not in SCORE_SCALINGS:
        raise ValueError(f"score_scaling must be one of {sorted(SCORE_SCALINGS)}, "
                         f"got {score_scaling!r}")
    C = min(int(candidates), scores.shape[1])
    values, cand = rerank.topk(np.ascontiguousarray(scores, dtype=np.float32), C)
    if np.isposinf(values).any():   # (NaN: topk refuses it, naming the row)
        u = int(np.nonzero(np.isposinf(values))[0][0])
        raise ValueError(f"scores row {u} holds +inf (a diverged model?): scores must be "
                         "finite, or -inf for an excluded item")
    scaled = SCORE_SCALINGS[score_scaling][1](values.astype(np.float64))
    target = user_mix(train, item_dist)[rows]
    # a user with fewer than k listable items gets a short list (-1 padding), never an
    # excluded (-inf) item in the free slots
    return {float(lam): drop_excluded(rerank.calibrated(scaled, item_dist, target, k,
                                                        lam=float(lam), alpha=ALPHA,
                                                        candidates=cand), scores)
            for lam in lams}


def heldout_miscalibration(train: Interactions, test: Interactions,
                           item_dist: np.ndarray | None = None, alpha: float = ALPHA) -> float:
    """Mean KL(p‖q̃) of the users' own held-out items: p from train, q from the test set.

    The same formula as ``miscalibration@k`` with the user's test items in place of the list
    (users with both train and test items); categories ``item_dist`` [I, G] (default: genre
    weights). A reference point: how calibrated real next consumption is, given the noise of
    a short list drawn from the user's mix.
    """
    w = train.genre_weights() if item_dist is None else item_dist
    p, q = user_mix(train, w), user_mix(test, w)
    ok = (p.sum(1) > 0) & (q.sum(1) > 0)
    p, q = p[ok], q[ok]
    return mean(rerank.smoothed_kl(p, q, alpha))


def minority_share(top: np.ndarray, train: Interactions,
                   item_dist: np.ndarray | None = None) -> tuple:
    """Category mass outside each user's main category: ``(in the lists, in the histories)``.

    For user u, the main category is the argmax of p(g|u) (training mix); the list's share is
    ``1 − q(main|u)`` with q the list's category mix, the history's ``1 − p(main|u)``. Both
    are means over users with a category-carrying history and list. A calibrated list's share
    approaches the history's (a 70/30 user gets ~30% minority genre instead of ~0%).
    ``item_dist`` [I, G] defaults to the genre weights.
    """
    w = train.genre_weights() if item_dist is None else item_dist
    p = user_mix(train, w)
    U = top.shape[0]
    real = top >= 0  # a short list's -1 padding is no item
    q = category_mix((np.nonzero(real)[0], top[real]), w, U)
    ok = (p.sum(1) > 0) & (q.sum(1) > 0)
    if not ok.any():
        return float("nan"), float("nan")
    p, q = p[ok], q[ok]
    main = p.argmax(1)
    rows = np.arange(main.size)
    return float((1 - q[rows, main]).mean()), float((1 - p[rows, main]).mean())


def run_calibration(dataset: str | Interactions = "synthetic", seeds=3, *,
                    lams: Sequence[float] = LAMBDAS, candidates: Sequence[int] = CANDIDATES,
                    dim: int = FIXED_DIM, train_overrides: dict | None = None,
                    progress: bool = True, session: Session | None = None,
                    chunk: int = 4096, score_scaling: str = "minmax") -> dict:
    """E3: calibrated reranking (Steck 2018) of the d=``dim`` cuckoo model's top-C candidates.

    One row per (λ, C, seed) with ``model = "mf+calibrated"`` (λ = 0 is the plain top-k of
    the candidates, i.e. the model's own list). Categories are the genres, or popularity bins
    when the data set has no categories (:func:`categories`); ``miscalibration@10`` of every
    row of this experiment (baselines included) is measured on the same categories. Users are
    scored ``chunk`` at a time. ``score_scaling`` (a key of :data:`SCORE_SCALINGS`) sets how
    the candidates' scores are scaled before reranking. Other arguments as :func:`run_dims`.
    """
    t0 = time.perf_counter()
    lams = real_sweep(lams, "lams", low=0.0, high=1.0)
    asked = [check_candidates(c, f"candidates[{i}]")
             for i, c in enumerate(int_sweep(candidates, "candidates"))]
    chunk = check_int(chunk, "chunk", min=1)
    dim = check_int(dim, "dim", min=1)
    seeds = seed_list(seeds)
    s = session_for(dataset, train_overrides, progress, session)
    rows, heldout = [], []
    # C is at most the catalogue: a C above it is the catalogue, run and reported once as such
    candidates = list(dict.fromkeys(min(c, s.data.n_items) for c in asked))
    bar = Progress(len(seeds) * len(candidates), "E3 calibration", progress)
    for seed in seeds:
        train, test = s.split(seed)
        item_dist, kind = categories(train)
        cats = item_dist > 0
        rows += baseline_rows(s, seed, cats)
        heldout.append(heldout_miscalibration(train, test, item_dist))
        cfg = s.config(dim=int(dim), table="cuckoo", seed=seed)
        model = s.model(cfg, f"E3 d={dim} seed={seed}")
        for C in candidates:
            lists: dict = {}
            for start in range(0, train.n_users, chunk):
                users = np.arange(start, min(start + chunk, train.n_users))
                scores = score_matrix(model, train, users).numpy()
                for lam, top in calibrated_lists(scores, train, item_dist, C, lams,
                                                 users=users,
                                                 score_scaling=score_scaling).items():
                    lists.setdefault(lam, []).append(top)
            for lam, parts in lists.items():
                top = np.concatenate(parts)
                minority, minority_hist = minority_share(top, train, item_dist)
                rows.append({"model": "mf+calibrated", "seed": seed, "dim": int(dim),
                             "table": "cuckoo", "lam": lam, "candidates": int(C),
                             **evaluate_lists(top, train, test, cats),
                             "minority_share@10": minority,
                             "minority_share_history": minority_hist})
            bar.tick()
    bar.close()
    res = make_result("calibration", s, {"dim": int(dim), "lams": [float(x) for x in lams],
                                         "candidates": [int(c) for c in candidates],
                                         **({"candidates_asked": asked}
                                            if asked != candidates else {}),
                                         "alpha": ALPHA,
                                         "score_scaling": SCORE_SCALINGS[score_scaling][0],
                                         "categories": kind,
                                         "heldout_miscalibration": float(np.mean(heldout)),
                                         "seeds": seeds}, rows, t0)
    res["summary"] = summary_with_intervals(rows, ("model", "lam", "candidates"),
                                            skip=("seed", "dim"))
    res["minority"] = minority_contrasts(rows)
    return res


def minority_contrasts(rows) -> list:
    """Per (C, λ): the list's minority share minus the history's, an :func:`interval` over
    seeds (paired: same users and split), as ``{"candidates", "lam", "difference"}``."""
    cal = [r for r in rows if r.get("model") == "mf+calibrated"
           and r.get("minority_share@10") is not None]
    keys = sorted({(r["candidates"], r["lam"]) for r in cal})
    return [{"candidates": c, "lam": lam, "difference": interval(
        [r["minority_share@10"] - r["minority_share_history"] for r in cal
         if r["candidates"] == c and r["lam"] == lam])} for c, lam in keys]


def minority_findings(results: dict) -> list:
    """Steck's crowding-out, from :func:`minority_contrasts`: at λ = 0 and at the largest λ,
    whether the lists hold less or more minority-category mass than the users' histories,
    a direction only when the 95% interval excludes 0."""
    out = []
    ms = results.get("minority") or []
    for C in sorted({m["candidates"] for m in ms}):
        mine = sorted([m for m in ms if m["candidates"] == C], key=lambda m: m["lam"])
        for m in ([mine[0], mine[-1]] if len(mine) > 1 else mine):
            out.append(direction_sentence(
                m["difference"], f"C={C}, λ={m['lam']:g}: the lists' share outside each "
                "user's main category", "is above their history's",
                "is below their history's (crowded out)",
                metric="minority_share@10 − minority_share_history"))
    return out


def _num(v, spec: str) -> str:
    """``v`` formatted with ``spec``, or ``"undefined"`` when it is missing or not finite."""
    return format(v, spec) if v is not None and math.isfinite(v) else "undefined"


def _ratio(new, base) -> float:
    """``new / base``; NaN (undefined) when ``base`` is 0 or either value is not finite."""
    if new is None or base is None or not (math.isfinite(new) and math.isfinite(base)) \
            or base == 0:
        return float("nan")
    return new / base


def tradeoff_findings(results: dict, lam: float = 0.5) -> list:
    """Steck's trade-off at ``lam`` per C, paired per seed against λ = 0: the miscalibration
    ratio and the relative ndcg@10 change, each with its 95% interval over seeds, and whether
    the target (≤ 50% of the miscalibration for ≤ 10% ndcg@10 loss) is met, missed, or not
    decided by the intervals (a bound on the far side of 50% or −10% printed with the decimals
    it needs not to read as the threshold)."""
    rows = [r for r in results["rows"] if r.get("model") == "mf+calibrated"]
    by = {(r["candidates"], r["lam"], r["seed"]): r for r in rows}
    out = []
    for C in sorted({r["candidates"] for r in rows}):
        seeds = sorted(s for (c, la, s) in by if c == C and la == 0.0 and (C, lam, s) in by)
        if len(seeds) < 2:
            continue
        ratios = [_ratio(by[(C, lam, s)]["miscalibration@10"],
                         by[(C, 0.0, s)]["miscalibration@10"]) for s in seeds]
        changes = [_ratio(by[(C, lam, s)]["ndcg@10"], by[(C, 0.0, s)]["ndcg@10"]) - 1
                   for s in seeds]
        bad = sum(not (math.isfinite(a) and math.isfinite(b)) for a, b in zip(ratios, changes))
        if bad:
            out.append(f"C={C}: at λ={lam:g} the miscalibration@10 ratio or the relative "
                       f"ndcg@10 change against λ=0 is undefined on {bad} of {len(seeds)} "
                       "seeds (λ=0's value is 0 or not finite there), so the trade-off "
                       "target is not assessed.")
            continue
        ratio, change = interval(ratios), interval(changes)
        if not all(math.isfinite(x[k]) for x in (ratio, change) for k in ("ci95_low",
                                                                         "ci95_high")):
            # (no spread: a value the same on every seed gives no interval, docs/experiments.md)
            out.append(f"C={C}, paired over {len(seeds)} seeds: at λ={lam:g} miscalibration@10 "
                       f"is {ratio['mean']:.0%} of λ=0's and ndcg@10 changes by "
                       f"{change['mean']:+.1%}; one of them is the same on every seed, which "
                       "gives no interval, so the trade-off target is not assessed.")
            continue
        met = ratio["ci95_high"] <= 0.5 and change["ci95_low"] >= -0.10
        missed = ratio["ci95_low"] > 0.5 or change["ci95_high"] < -0.10
        verdict = ("met with both intervals inside it" if met else
                   "missed (an interval lies outside it)" if missed else
                   "not decided by the intervals")
        out.append(
            f"C={C}, paired over {len(seeds)} seeds: at λ={lam:g} miscalibration@10 is "
            f"{ci_text(ratio, '.0%', ref=0.5)} of λ=0's and ndcg@10 changes by "
            f"{ci_text(change, '+.1%', ref=-0.10)}; the target (≤ 50%, ≥ −10%) is {verdict}.")
    return out


def _half(row: dict, metric: str) -> float:
    """The 95% interval's half width of a summary row's metric (0 with one seed: no bar)."""
    h = float(ci95_half_width(row[metric + ":sd"], seeds_of(row, metric)))
    return h if math.isfinite(h) else 0.0


def plot_calibration(results: dict, path) -> Path:
    """Miscalibration@10 vs ndcg@10 over λ (E3), one curve per candidate count C, with 95%
    intervals over seeds."""
    plt = pyplot()
    summ = summarize(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, C in enumerate(results["config"]["candidates"]):
        rows = sorted([r for r in summ if r.get("candidates") == C], key=lambda r: r["lam"])
        axes[0].errorbar([r["miscalibration@10"] for r in rows], [r["ndcg@10"] for r in rows],
                         xerr=[_half(r, "miscalibration@10") for r in rows],
                         yerr=[_half(r, "ndcg@10") for r in rows],
                         marker="o", capsize=2, color=f"C{j}", label=f"C={C}")
        for r in rows:
            if r["lam"] in (0.0, 0.5, 0.9, 0.99):
                axes[0].annotate(f"λ={r['lam']:g}", (r["miscalibration@10"], r["ndcg@10"]),
                                 fontsize=6, xytext=(3, 3), textcoords="offset points")
        lam = [r["lam"] for r in rows]
        axes[1].errorbar(lam, [r["miscalibration@10"] for r in rows],
                         yerr=[_half(r, "miscalibration@10") for r in rows], marker="o",
                         capsize=2, color=f"C{j}", label=f"miscalibration, C={C}")
        axes[1].errorbar(lam, [r["arp@10"] * 10 for r in rows],
                         yerr=[10 * _half(r, "arp@10") for r in rows], marker="x",
                         linestyle=":", capsize=2, color=f"C{j}", label=f"10·arp, C={C}")
    axes[0].set_xlabel("miscalibration@10 (KL, lower = better calibrated)")
    axes[0].set_ylabel("ndcg@10")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("λ")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"E3 calibrated reranking — {results['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _pairs(results: dict, C, lam: float) -> list:
    """Per seed with calibrated rows at both, the rows ``(at (C, lam), at (C, λ = 0))``."""
    by = {(r["candidates"], r["lam"], r["seed"]): r for r in results["rows"]
          if r.get("model") == "mf+calibrated"}
    return [(by[(C, lam, s)], by[(C, 0.0, s)])
            for (c, la, s) in by if c == C and la == 0.0 and (C, lam, s) in by]


def _paired_ratio(results: dict, C, lam: float, metric: str) -> dict:
    """Per seed, ``metric`` at (C, ``lam``) over its value at (C, λ = 0), as an
    :func:`interval` (seeds where the ratio is undefined are left out of it)."""
    return interval([_ratio(a[metric], b[metric]) for a, b in _pairs(results, C, lam)])


def _paired_diff(results: dict, C, lam: float, metric: str) -> dict:
    """Per seed, ``metric`` at (C, ``lam``) minus its value at (C, λ = 0), as an
    :func:`interval` (defined wherever both values are finite, unlike the ratio)."""
    return interval([a[metric] - b[metric] for a, b in _pairs(results, C, lam)
                     if a[metric] is not None and b[metric] is not None])


def _over(n: int, paired: int, base: str) -> str:
    """``"n seeds"``, or ``"n of paired seeds (...)"`` when a ratio to λ = 0's ``base`` left some
    out (``base`` is 0 or not finite on them)."""
    if n == paired:
        return f"{n} seed{'s' if n != 1 else ''}"
    return f"{n} of {paired} seeds (λ=0's {base} is 0 or not finite on the others)"


def _ci_over_seeds(results: dict, C, lam: float, metric: str, spec: str,
                   mark: bool = False) -> str:
    """``mean [low, high]`` over seeds of the calibrated lists' ``metric`` at (C, ``lam``): the
    95% interval of :func:`interval` ("undefined" when no seed has a finite value). With
    ``mark``, a mean without an interval says why: ``(no spread)`` for a value the same on
    every seed (as the tables write it; the histories' minority share when the seeds' splits
    leave it unchanged), ``(k of n seeds)`` when it is defined on one seed of several."""
    vals = [r.get(metric) for r in results["rows"] if r.get("model") == "mf+calibrated"
            and r.get("candidates") == C and r.get("lam") == lam]
    x = interval(vals)
    text = ci_text(x, spec, missing="undefined")
    if mark and text != "undefined" and "[" not in text:
        if x["n"] >= 2 and x.get("sd") == 0.0:
            text += " (no spread)"
        elif len(vals) >= 2:
            text += f" ({x['n']} of {len(vals)} seeds)"
    return text


def _ci_pct(x: dict, sign: str = "") -> str:
    """``mean [low, high]`` of an :func:`interval` in percent; "no interval" for n < 2, "no
    spread" for a value the same on every seed."""
    text = ci_text(x, f"{sign}.0%", missing="undefined")
    if text != "undefined" and "[" not in text:
        if x["n"] >= 2 and x.get("sd") == 0.0:  # interval() gives none to a constant
            text += f" (the same on all {x['n']} seeds: no spread)"
        else:
            text += f" (no interval from {x['n']} seed{'s' if x['n'] != 1 else ''})"
    return text


def findings(results: dict) -> list:
    """E3's "what it shows" sentences. The means at λ = 0.5 against λ = 0 are described
    (the target's verdict is :func:`tradeoff_findings`', from paired intervals); "halves" is
    said of a λ only when the paired per-seed ratio of miscalibration@10 to λ = 0's has its
    95% interval at or below 50%."""
    summ = summarize(results)
    out = []
    for C in results["config"]["candidates"]:
        r0 = find(summ, candidates=C, lam=0.0)
        r5 = find(summ, candidates=C, lam=0.5)
        if r0 is None:
            run = ", ".join(f"{x:g}" for x in results["config"].get("lams", []))
            out.append(f"C={C}: no λ is compared with the model's own list, which is λ=0: the "
                       f"run's λ values ({run}) do not include 0.")
            continue

        def ci(lam, metric, spec=".4f", mark=False):
            return _ci_over_seeds(results, C, lam, metric, spec, mark)

        n = r0["n"]
        if r5 is not None:
            out.append(
                f"C={C}, means over {n} seed{'s' if n != 1 else ''} with their 95% intervals"
                f"{'' if n >= 2 else ' (none from 1 seed)'}: at λ=0.5 miscalibration@10 is "
                f"{ci(0.5, 'miscalibration@10')} against {ci(0.0, 'miscalibration@10')} at λ=0, "
                f"ndcg@10 {ci(0.0, 'ndcg@10')} → {ci(0.5, 'ndcg@10')}, arp@10 "
                f"{ci(0.0, 'arp@10')} → {ci(0.5, 'arp@10')}, coverage@10 "
                f"{ci(0.0, 'coverage@10')} → {ci(0.5, 'coverage@10')}.")
            if "minority_share@10" in r0:
                out.append(
                    "Category mass outside each user's main category (means over "
                    f"{n} seed{'s' if n != 1 else ''}, "
                    f"{'95% intervals' if n >= 2 else 'no interval from 1 seed'}): "
                    f"{ci(0.0, 'minority_share@10', '.1%', True)} of the list at λ=0, "
                    f"{ci(0.5, 'minority_share@10', '.1%', True)} at λ=0.5, against "
                    f"{ci(0.0, 'minority_share_history', '.1%', True)} in the users' "
                    "histories.")
        lams = sorted({r["lam"] for r in summ if r.get("candidates") == C and "lam" in r
                       and r["lam"] > 0})
        if not lams:
            continue
        ratios = {lam: _paired_ratio(results, C, lam, "miscalibration@10") for lam in lams}
        half = next((lam for lam in lams if math.isfinite(ratios[lam]["ci95_high"])
                     and ratios[lam]["ci95_high"] <= 0.5), None)
        if half is None:
            last = ratios[lams[-1]]
            out.append(f"No λ up to {lams[-1]:g} is shown to halve miscalibration@10 at C={C} "
                       f"(no paired ratio to λ=0's has its 95% interval at or below 50%; at "
                       f"λ={lams[-1]:g} it is {_ci_pct(last)}, over "
                       f"{_over(last['n'], len(_pairs(results, C, lams[-1])), 'miscalibration@10')}).")
        else:
            paired = len(_pairs(results, C, half))
            ndcg = _paired_ratio(results, C, half, "ndcg@10")
            if ndcg["n"] == paired:
                change = {k: (v - 1 if k != "n" and k != "sd" else v) for k, v in ndcg.items()}
                ndcg_text = f"ndcg@10 changes by {_ci_pct(change, '+')}"
            else:
                # a relative change over the seeds where it is defined could move against the
                # means beside it: the paired difference is defined on every seed
                diff = _paired_diff(results, C, half, "ndcg@10")
                ndcg_text = (f"ndcg@10 changes by {ci_text(diff, '+.4f', missing='undefined')} "
                             f"in absolute terms, paired over {diff['n']} seeds (its relative "
                             f"change is undefined on {paired - ndcg['n']} of {paired} seeds, "
                             f"whose ndcg@10 at λ=0 is 0 or not finite)")
            out.append(f"The smallest λ shown to halve miscalibration@10 at C={C} is "
                       f"λ={half:g} (its ratio to λ=0's: {_ci_pct(ratios[half])}, paired over "
                       f"{_over(ratios[half]['n'], paired, 'miscalibration@10')}), where "
                       f"{ndcg_text}.")
    return out


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E3's plot: miscalibration vs ndcg over λ."""
    return [plot_calibration(results, Path(out_dir) / f"{prefix}calibration.png")]


def section(results: dict, plots=()) -> list:
    """E3's report section (Markdown lines)."""
    summ = summarize(results)
    cfg = results["config"]
    lines = [(f"## E3 — calibrated reranking (d = {cfg['dim']}, α = {cfg['alpha']}, scores "
              f"{cfg['score_scaling']}, categories: {cfg.get('categories', 'genres')})"), "",
             dataset_line(results), ""]
    rows = [r for r in summ if r["model"] != "mf+calibrated"] + sorted(
        [r for r in summ if r["model"] == "mf+calibrated"],
        key=lambda r: (r["candidates"], r["lam"]))
    lines += table(rows, [("model", model_label),
                          ("C", lambda r: str(r.get("candidates", ""))),
                          ("λ", lambda r: f"{r['lam']:g}" if "lam" in r else "")],
                   metrics_=("recall@10", "ndcg@10", "miscalibration@10", "minority_share@10",
                             "arp@10", "coverage@10", "tail_share@10"))
    text = findings(results) + tradeoff_findings(results) + minority_findings(results)
    ref = cfg.get("heldout_miscalibration")
    r0 = next((r for r in summ if r.get("model") == "mf+calibrated" and r.get("lam") == 0.0),
              None)
    if ref is not None and math.isfinite(ref) and r0 is not None:
        text.append(f"For reference, the users' own held-out test items have a "
                    f"miscalibration of {ref:.4f} against their training mix (mean over "
                    f"seeds), against {_num(r0['miscalibration@10'], '.4f')} for the λ = 0 "
                    "lists.")
    return finish_section(lines, text, results, plots)


register(Experiment("calibration", "E3", "calibrated reranking (Steck) over λ and C",
                    run_calibration, section, plot, in_demo=True))
