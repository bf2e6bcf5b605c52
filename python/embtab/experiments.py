"""The popularity-bias experiments E1–E4 (DESIGN.md): sweeps, results JSON, plots, report.

Each ``run_*`` function returns one results dict (the results.json schema, documented in
``docs/results-schema.md``)::

    {"experiment": "dims" | "collisions" | "calibration" | "rerank-speed",
     "dataset": {"name", "users", "items", "interactions", "top1pct_share"},
     "config": {...},            # what was swept and the training hyperparameters
     "rows": [ {...}, ... ]}     # one per (configuration, seed)

A row holds ``model`` ("mf", "most_popular", "random" or "mf+calibrated"), ``seed``, the
parameters of its configuration (``dim``; ``table`` = "cuckoo" | "hashed", ``rows_per_id`` =
m/n, the measured ``collision_share`` and ``collision_theory`` = 1 − e^(−n/m); ``lam`` and
``candidates``) and the metrics of :func:`embtab.metrics.evaluate` at k = 10 (``"recall@10"``,
``"arp@10"``, ..., ``"decile_recall@10"`` a list of 10 with ``null`` for an empty decile).

Protocol: the data set is loaded once (synthetic data from seed 0); seed ``s`` draws the
per-user random 80/20 train/test split and the model's initialisation, hashing, shuffling and
negatives. Baselines (most-popular, random) get rows for every seed of every experiment.

E1 ``dims``: cuckoo tables, d ∈ {2, 4, 8, 16, 32, 64, 128}. E2 ``collisions``: item table
hashed with m/n ∈ {1/16, 1/4, 1/2, 1} beside the cuckoo table, all at d = 32. E3
``calibration``: the d = 32 cuckoo model's scores, top-C candidates (training items
excluded), each user's scores min-max scaled to [0, 1] over the candidates (so the score term
and the KL term are on comparable scales, as with Steck's predicted probabilities), then
:func:`embtab.rerank.calibrated` to k = 10 with λ ∈ {0, 0.1, ..., 0.9, 0.99}, α = 0.01, target
p = the user's training genre distribution, item distribution = ``data.genre_weights()``.
E4 ``rerank-speed``: :func:`embtab.benchmarks.rerank.run`.

Example::

    >>> from embtab.experiments import run_dims
    >>> res = run_dims("synthetic:n_users=60,n_items=80,interactions_per_user=8", seeds=1,
    ...                dims=(2, 4), train_overrides={"epochs": 1}, progress=False)
    >>> res["experiment"], sorted({r["model"] for r in res["rows"]})
    ('dims', ['mf', 'most_popular', 'random'])
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embtab import metrics
from embtab.data import Interactions, load_dataset, train_test_split
from embtab.train import (
    TrainConfig,
    collision_share,
    fit,
    most_popular,
    random_topk,
    recommend,
    score_matrix,
)

__all__ = [
    "CANDIDATES",
    "DIMS",
    "EXPERIMENTS",
    "LAMBDAS",
    "ROWS_PER_ID",
    "SCORE_SCALINGS",
    "calibrated_lists",
    "categories",
    "heldout_miscalibration",
    "load_results",
    "minority_share",
    "plot_results",
    "render_report",
    "run_calibration",
    "run_collisions",
    "run_demo",
    "run_dims",
    "run_experiments",
    "run_feedback",
    "run_rerank_speed",
    "save_results",
    "summarize",
]

DIMS = (2, 4, 8, 16, 32, 64, 128)
ROWS_PER_ID = (1 / 16, 1 / 4, 1 / 2, 1.0)
LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
CANDIDATES = (100, 500)
K = 10
FIXED_DIM = 32
ALPHA = 0.01


# shared plumbing ////////////////////////////////////////////////////////////////////////////


class _Session:
    """Caches the data set, splits and trained models across experiments of one run."""

    def __init__(self, dataset: str | Interactions, train_overrides: dict | None, progress: bool):
        self.data = load_dataset(dataset, seed=0) if isinstance(dataset, str) else dataset
        self.spec = dataset if isinstance(dataset, str) else self.data.name
        self.overrides = dict(train_overrides or {})
        self.progress = progress
        self._splits: dict = {}
        self._models: dict = {}

    def split(self, seed: int):
        if seed not in self._splits:
            self._splits[seed] = train_test_split(self.data, test_fraction=0.2, seed=seed)
        return self._splits[seed]

    def config(self, **kw) -> TrainConfig:
        return TrainConfig(**{**self.overrides, **kw})

    def model(self, cfg: TrainConfig, desc: str):
        key = tuple(sorted(cfg.to_dict().items()))
        if key not in self._models:
            train, _ = self.split(cfg.seed)
            self._models[key] = fit(train, cfg, quiet=not self.progress, desc=desc)
        return self._models[key]

    def base_config(self) -> dict:
        cfg = TrainConfig(**self.overrides).to_dict()
        for k in ("dim", "table", "rows_per_id", "seed"):
            cfg.pop(k)
        return cfg


def _session(dataset, train_overrides, progress, session):
    return session if session is not None else _Session(dataset, train_overrides, progress)


def _evaluate(top: np.ndarray, train: Interactions, test: Interactions, cats=None) -> dict:
    return metrics.evaluate(top, train, test, train.item_genres if cats is None else cats, k=K)


def _baseline_rows(s: _Session, seed: int, cats=None) -> list:
    train, test = s.split(seed)
    rows = []
    for name, top in (("most_popular", most_popular(train, K)),
                      ("random", random_topk(train, K, seed=seed))):
        rows.append({"model": name, "seed": seed, **_evaluate(top, train, test, cats)})
    return rows


def _seeds(seeds) -> list:
    if isinstance(seeds, int):
        return list(range(seeds))
    return [int(x) for x in seeds]


def _result(name: str, s: _Session, config: dict, rows: list, t0: float) -> dict:
    return {"experiment": name, "dataset": {**s.data.summary(), "spec": s.spec},
            "config": {**config, "k": K, "train": s.base_config(),
                       "seconds": round(time.perf_counter() - t0, 2)},
            "rows": rows}


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run")


def _tick(bar):
    if bar is not None:
        bar.update(1)


def _close(bar):
    if bar is not None:
        bar.close()


# E1 /////////////////////////////////////////////////////////////////////////////////////////


def run_dims(dataset: str | Interactions = "synthetic", seeds=3, *, dims: Sequence[int] = DIMS,
             train_overrides: dict | None = None, progress: bool = True,
             session: _Session | None = None) -> dict:
    """E1: collisionless (cuckoo) MF at each embedding dimension in ``dims``, per seed.

    Parameters
    ----------
    dataset : str or Interactions
        A :func:`embtab.data.load_dataset` spec, or a data set.
    seeds : int or sequence of int
        ``n`` means seeds ``0..n-1``.
    dims : sequence of int
    train_overrides : dict, optional
        :class:`embtab.train.TrainConfig` fields for every run (e.g. ``{"epochs": 5}``).
    progress : bool
        tqdm bars.

    Returns
    -------
    dict
        The results.json object (``experiment = "dims"``).
    """
    t0 = time.perf_counter()
    s = _session(dataset, train_overrides, progress, session)
    seeds = _seeds(seeds)
    rows = []
    bar = _bar(len(seeds) * len(dims), "E1 dims", progress)
    for seed in seeds:
        train, test = s.split(seed)
        rows += _baseline_rows(s, seed)
        for d in dims:
            cfg = s.config(dim=int(d), table="cuckoo", seed=seed)
            model = s.model(cfg, f"E1 d={d} seed={seed}")
            rows.append({"model": "mf", "seed": seed, "dim": int(d), "table": "cuckoo",
                         "rows_per_id": 1.0, "collision_share": 0.0, "collision_theory": 0.0,
                         **_evaluate(recommend(model, train, K), train, test)})
            _tick(bar)
    _close(bar)
    return _result("dims", s, {"dims": [int(d) for d in dims], "seeds": seeds}, rows, t0)


# E2 /////////////////////////////////////////////////////////////////////////////////////////


def run_collisions(dataset: str | Interactions = "synthetic", seeds=3, *,
                   rows_per_id: Sequence[float] = ROWS_PER_ID, dim: int = FIXED_DIM,
                   train_overrides: dict | None = None, progress: bool = True,
                   session: _Session | None = None) -> dict:
    """E2: item table hashed with m = round(rows_per_id · n_items) rows vs cuckoo, at ``dim``.

    Users stay collisionless (one row each) so that only item collisions differ. Each hashed
    row records the measured share of item IDs that share a row (``collision_share``) and the
    uniform-hashing expectation ``collision_theory`` = 1 − e^(−n/m). Arguments as
    :func:`run_dims`.
    """
    t0 = time.perf_counter()
    s = _session(dataset, train_overrides, progress, session)
    seeds = _seeds(seeds)
    rows = []
    bar = _bar(len(seeds) * (len(rows_per_id) + 1), "E2 collisions", progress)
    for seed in seeds:
        train, test = s.split(seed)
        rows += _baseline_rows(s, seed)
        configs = [("cuckoo", 1.0)] + [("hashed", float(r)) for r in rows_per_id]
        for table, rpi in configs:
            cfg = s.config(dim=int(dim), table=table, rows_per_id=rpi, seed=seed)
            model = s.model(cfg, f"E2 {table} m/n={rpi:g} seed={seed}")
            col = collision_share(model, train)
            rows.append({"model": "mf", "seed": seed, "dim": int(dim), "table": table,
                         "rows_per_id": rpi, "collision_share": col["collision_share"],
                         "collision_theory": col["collision_theory"], "table_rows": col["rows"],
                         **_evaluate(recommend(model, train, K), train, test)})
            _tick(bar)
    _close(bar)
    return _result("collisions", s, {"dim": int(dim), "rows_per_id": [float(r) for r in rows_per_id],
                                     "hashed": "items (users collisionless)", "seeds": seeds},
                   rows, t0)


# E3 /////////////////////////////////////////////////////////////////////////////////////////


def _item_dist(data: Interactions) -> np.ndarray:
    """Genre distribution [I, G'] with rows summing to 1; genre-less items get an extra column."""
    w = data.genre_weights()
    empty = w.sum(axis=1) == 0
    if empty.any():
        w = np.concatenate([w, empty[:, None].astype(np.float64)], axis=1)
    return w


def categories(train: Interactions) -> tuple:
    """The categories E3 calibrates to: ``(item_dist [I, G], kind)``, rows summing to 1.

    Genres when the data set has any (items without a genre get a "none" category);
    otherwise head / mid / tail popularity bins of the training counts
    (:func:`embtab.rerank.popularity_bins`, Abdollahpouri et al.'s 20/60/20 split of
    interactions), ``kind = "popularity bins"``.
    """
    if train.n_genres > 0 and train.item_genres.indices.size > 0:
        return _item_dist(train), "genres"
    from embtab import rerank

    return rerank.popularity_bins(train.item_counts()), "popularity bins (head/mid/tail)"


def _minmax(values: np.ndarray) -> np.ndarray:
    """Scale each row's finite values to [0, 1]; -inf stays -inf (never picked first)."""
    fin = np.isfinite(values)
    lo = np.where(fin, values, np.inf).min(axis=1, keepdims=True)
    hi = np.where(fin, values, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.where(fin, (values - np.where(np.isfinite(lo), lo, 0.0)) / span, -np.inf)
    return out.astype(np.float64)


def _user_mix(data: Interactions, item_dist: np.ndarray) -> np.ndarray:
    """Each user's mean category distribution over their items of ``data``, [U, G] (0 rows
    for users without items)."""
    m = np.zeros((data.n_users, item_dist.shape[1]))
    np.add.at(m, data.users, item_dist[data.items])
    tot = m.sum(axis=1, keepdims=True)
    return np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)


#: How E3 puts candidate scores on the scale of the KL term (per user, over its C candidates).
SCORE_SCALINGS = {
    "minmax": ("per-user min-max over the C candidates", _minmax),
    "raw": ("raw dot products", lambda v: v),
    "sigmoid": ("sigmoid of the dot products", lambda v: 1.0 / (1.0 + np.exp(-v))),
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
    training category distribution under ``item_dist``.
    """
    from embtab import rerank

    rows = np.arange(train.n_users) if users is None else np.asarray(users, dtype=np.int64)
    C = min(int(candidates), scores.shape[1])
    values, cand = rerank.topk(np.ascontiguousarray(scores, dtype=np.float32), C)
    if score_scaling not in SCORE_SCALINGS:
        raise ValueError(f"score_scaling must be one of {sorted(SCORE_SCALINGS)}, "
                         f"got {score_scaling!r}")
    scaled = SCORE_SCALINGS[score_scaling][1](values.astype(np.float64))
    target = _user_mix(train, item_dist)[rows]
    return {float(lam): rerank.calibrated(scaled, item_dist, target, k, lam=float(lam),
                                          alpha=ALPHA, candidates=cand)
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
    p, q = _user_mix(train, w), _user_mix(test, w)
    ok = (p.sum(1) > 0) & (q.sum(1) > 0)
    p, q = p[ok], q[ok]
    qt = (1 - alpha) * q + alpha * p
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / qt), 0.0).sum(1)
    return float(kl.mean()) if kl.size else float("nan")


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
    p = _user_mix(train, w)
    q = w[top].sum(axis=1)
    ok = (p.sum(1) > 0) & (q.sum(1) > 0)
    if not ok.any():
        return float("nan"), float("nan")
    p, q = p[ok], q[ok] / q[ok].sum(1, keepdims=True)
    main = p.argmax(1)
    rows = np.arange(main.size)
    return float((1 - q[rows, main]).mean()), float((1 - p[rows, main]).mean())


def run_calibration(dataset: str | Interactions = "synthetic", seeds=3, *,
                    lams: Sequence[float] = LAMBDAS, candidates: Sequence[int] = CANDIDATES,
                    dim: int = FIXED_DIM, train_overrides: dict | None = None,
                    progress: bool = True, session: _Session | None = None,
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
    s = _session(dataset, train_overrides, progress, session)
    seeds = _seeds(seeds)
    rows, heldout = [], []
    bar = _bar(len(seeds) * len(candidates), "E3 calibration", progress)
    for seed in seeds:
        train, test = s.split(seed)
        item_dist, kind = categories(train)
        cats = item_dist > 0
        rows += _baseline_rows(s, seed, cats)
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
                             **_evaluate(top, train, test, cats),
                             "minority_share@10": minority,
                             "minority_share_history": minority_hist})
            _tick(bar)
    _close(bar)
    return _result("calibration", s, {"dim": int(dim), "lams": [float(x) for x in lams],
                                      "candidates": [int(c) for c in candidates], "alpha": ALPHA,
                                      "score_scaling": SCORE_SCALINGS[score_scaling][0],
                                      "categories": kind,
                                      "heldout_miscalibration": float(np.mean(heldout)),
                                      "seeds": seeds}, rows, t0)


# E4 /////////////////////////////////////////////////////////////////////////////////////////


def run_rerank_speed(quick: bool = True, progress: bool = True) -> dict:
    """E4: the rerank benchmark (:func:`embtab.benchmarks.rerank.run`) as a results dict.

    ``rows`` has one row per implementation (``impl``, ``users``, ``us_per_user``,
    ``users_per_s``, ``identical``); the raw benchmark output is under ``"benchmark"`` and its
    Markdown under ``"markdown"``.
    """
    from embtab.benchmarks import rerank as bench

    t0 = time.perf_counter()
    raw = bench.run(quick=quick)
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
            "config": {**cfg, "seconds": round(time.perf_counter() - t0, 2)},
            "rows": rows, "benchmark": raw, "markdown": bench.format_markdown(raw)}


def run_feedback(dataset="synthetic", seeds=1, **kw) -> dict:
    """E5 feedback loop: :func:`embtab.feedback.run_feedback` (imported lazily)."""
    from embtab import feedback

    return feedback.run_feedback(dataset, seeds, **kw)


EXPERIMENTS = {"dims": run_dims, "collisions": run_collisions, "calibration": run_calibration,
               "rerank-speed": run_rerank_speed, "feedback": run_feedback}


# results I/O ////////////////////////////////////////////////////////////////////////////////


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def save_results(results, path) -> Path:
    """Write a results dict (or a list of them) as JSON; NaN/inf become ``null``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n")
    return path


def load_results(path):
    """Read what :func:`save_results` wrote."""
    return json.loads(Path(path).read_text())


# aggregation ////////////////////////////////////////////////////////////////////////////////


_KEYS = ("model", "table", "dim", "rows_per_id", "lam", "candidates")


def _group_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in _KEYS)


def _mean_sd(values):
    a = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if a.ndim == 1:
        ok = a[~np.isnan(a)]
        if ok.size == 0:
            return float("nan"), float("nan")
        return float(ok.mean()), float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=0), (np.nanstd(a, axis=0, ddof=1) if a.shape[0] > 1
                                           else np.zeros(a.shape[1]))


def summarize(results: dict) -> list:
    """Mean and sd over seeds per configuration: a list of dicts, in first-seen row order.

    Each dict has the configuration keys (``model``, ``table``, ``dim``, ``rows_per_id``,
    ``lam``, ``candidates``), ``n`` seeds, and for each metric ``m`` the pair ``m`` (mean) and
    ``m:sd``; ``decile_recall@10`` becomes arrays. Extra per-row numbers (``collision_share``,
    ``collision_theory``) are averaged too.
    """
    groups: dict = {}
    for row in results["rows"]:
        groups.setdefault(_group_key(row), []).append(row)
    out = []
    for key, rows in groups.items():
        agg = {k: v for k, v in zip(_KEYS, key) if v is not None}
        agg["n"] = len(rows)
        names = [k for k, v in rows[0].items()
                 if k not in _KEYS and k not in ("seed", "impl") and
                 (isinstance(v, (int, float, list)) or v is None)]
        for name in names:
            m, sd = _mean_sd([r.get(name) for r in rows])
            agg[name], agg[name + ":sd"] = m, sd
        out.append(agg)
    return out


def _find(summary, **kw):
    for row in summary:
        if all(row.get(k) == v for k, v in kw.items()):
            return row
    return None


# plots //////////////////////////////////////////////////////////////////////////////////////


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _baselines(ax, summary, metric):
    for name, style in (("most_popular", ":"), ("random", "--")):
        b = _find(summary, model=name)
        if b is not None and np.isfinite(b.get(metric, np.nan)):
            ax.axhline(b[metric], color="gray", linestyle=style, linewidth=1,
                       label=name.replace("_", "-"))


def _errorbar(ax, x, summary_rows, metric, **kw):
    y = [r[metric] for r in summary_rows]
    e = [r[metric + ":sd"] for r in summary_rows]
    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, **kw)


def plot_dims(results: dict, path) -> Path:
    """Metric vs embedding dimension (E1), mean ± sd over seeds, baselines dashed."""
    plt = _plt()
    summ = summarize(results)
    rows = sorted([r for r in summ if r["model"] == "mf"], key=lambda r: r["dim"])
    dims = [r["dim"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, metric in zip(axes, ("recall@10", "arp@10", "coverage@10", "tail_share@10")):
        _errorbar(ax, dims, rows, metric, label="MF (cuckoo)")
        _baselines(ax, summ, metric)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dimension d")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"E1 dimension sweep — {results['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_collisions(results: dict, path) -> Path:
    """Metric vs m/n (E2) beside the cuckoo table, and measured collision share vs theory."""
    plt = _plt()
    summ = summarize(results)
    hashed = sorted([r for r in summ if r.get("table") == "hashed"], key=lambda r: r["rows_per_id"])
    cuckoo = _find(summ, model="mf", table="cuckoo")
    x = [r["rows_per_id"] for r in hashed]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, metric in zip(axes[:3], ("recall@10", "arp@10", "coverage@10")):
        _errorbar(ax, x, hashed, metric, label="hashed")
        if cuckoo is not None:
            ax.axhline(cuckoo[metric], color="C1", label="cuckoo (collisionless)")
        _baselines(ax, summ, metric)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows per ID, m/n")
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    ax = axes[3]
    grid = np.geomspace(min(x) / 1.5, max(x) * 1.5, 50) if x else np.array([1.0])
    ax.plot(grid, 1 - np.exp(-1 / grid), color="gray", label="theory 1 − e^(−n/m)")
    ax.plot(x, [r["collision_share"] for r in hashed], "o", color="C0", label="measured")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rows per ID, m/n")
    ax.set_title("share of item IDs sharing a row")
    ax.legend(fontsize=7)
    fig.suptitle(f"E2 collision sweep, d={results['config']['dim']} — "
                 f"{results['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_deciles(results: dict, path) -> Path:
    """Per-popularity-decile recall@10 of each configuration (decile 0 = most popular)."""
    plt = _plt()
    summ = summarize(results)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for r in summ:
        if r["model"] != "mf":
            continue
        label = (f"hashed m/n={r['rows_per_id']:g}" if r.get("table") == "hashed"
                 else f"cuckoo d={r['dim']}")
        ax.plot(range(10), r["decile_recall@10"], marker=".", label=label)
    ax.set_xlabel("training-popularity decile of the test item (0 = most popular)")
    ax.set_ylabel("recall@10 within decile")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"per-decile recall — {results['experiment']}, {results['dataset']['name']}",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_calibration(results: dict, path) -> Path:
    """Miscalibration@10 vs ndcg@10 over λ (E3), one curve per candidate count C."""
    plt = _plt()
    summ = summarize(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, C in enumerate(results["config"]["candidates"]):
        rows = sorted([r for r in summ if r.get("candidates") == C], key=lambda r: r["lam"])
        axes[0].plot([r["miscalibration@10"] for r in rows], [r["ndcg@10"] for r in rows],
                     marker="o", color=f"C{j}", label=f"C={C}")
        for r in rows:
            if r["lam"] in (0.0, 0.5, 0.9, 0.99):
                axes[0].annotate(f"λ={r['lam']:g}", (r["miscalibration@10"], r["ndcg@10"]),
                                 fontsize=6, xytext=(3, 3), textcoords="offset points")
        lam = [r["lam"] for r in rows]
        axes[1].plot(lam, [r["miscalibration@10"] for r in rows], marker="o", color=f"C{j}",
                     label=f"miscalibration, C={C}")
        axes[1].plot(lam, [r["arp@10"] * 10 for r in rows], marker="x", linestyle=":",
                     color=f"C{j}", label=f"10·arp, C={C}")
    axes[0].set_xlabel("miscalibration@10 (KL, lower = better calibrated)")
    axes[0].set_ylabel("ndcg@10")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("λ")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"E3 calibrated reranking — {results['dataset']['name']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def plot_results(results: dict, out_dir, prefix: str = "") -> list:
    """All plots of one experiment's results into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    name = results["experiment"]
    if name == "dims":
        return [plot_dims(results, out / f"{prefix}dims.png"),
                plot_deciles(results, out / f"{prefix}dims_deciles.png")]
    if name == "collisions":
        return [plot_collisions(results, out / f"{prefix}collisions.png"),
                plot_deciles(results, out / f"{prefix}collisions_deciles.png")]
    if name == "calibration":
        return [plot_calibration(results, out / f"{prefix}calibration.png")]
    if name == "feedback":
        from embtab.feedback import plot_feedback

        return [plot_feedback(results, out / f"{prefix}feedback.png")]
    return []


# report /////////////////////////////////////////////////////////////////////////////////////


def _fmt(m, sd=None, digits=4):
    if m is None or (isinstance(m, float) and not math.isfinite(m)):
        return "–"
    s = f"{m:.{digits}f}"
    if sd is not None and isinstance(sd, float) and math.isfinite(sd):
        s += f" ± {sd:.{digits}f}"
    return s


_TABLE_METRICS = ("recall@10", "ndcg@10", "arp@10", "tail_share@10", "coverage@10", "gini@10",
                  "miscalibration@10")


def _tail_recall(row) -> float:
    """Mean recall over the five least popular deciles (5–9) with test items."""
    d = np.asarray(row["decile_recall@10"], dtype=np.float64)[5:]
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else float("nan")


def _table(rows, first_cols, metrics_=_TABLE_METRICS, extra=None) -> list:
    head = [c for c, _ in first_cols] + list(metrics_) + [c for c, _ in (extra or [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f(r) for _, f in first_cols]
        cells += [_fmt(r.get(m), r.get(m + ":sd")) for m in metrics_]
        cells += [f(r) for _, f in (extra or [])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _model_label(r):
    return r["model"].replace("_", "-")


def _dims_text(summ) -> list:
    rows = sorted([r for r in summ if r["model"] == "mf"], key=lambda r: r["dim"])
    if len(rows) < 2:
        return []
    a, b = rows[0], rows[-1]
    out = []

    def trend(metric, word_up, word_down):
        x, y = a[metric], b[metric]
        if not (math.isfinite(x) and math.isfinite(y)):
            return f"{metric} is undefined here"
        direction = word_up if y > x else word_down if y < x else "stays"
        mono = all(r2[metric] <= r1[metric] for r1, r2 in zip(rows, rows[1:])) if y < x else \
            all(r2[metric] >= r1[metric] for r1, r2 in zip(rows, rows[1:]))
        return (f"{metric} {direction} from {x:.4f} at d={a['dim']} to {y:.4f} at d={b['dim']}"
                f"{' (monotonically)' if mono else ' (not monotonically)'}")

    out.append("As d grows, " + "; ".join([trend("arp@10", "rises", "falls"),
                                           trend("coverage@10", "rises", "falls"),
                                           trend("tail_share@10", "rises", "falls")]) + ".")
    best = max(rows, key=lambda r: r["recall@10"])
    sat = next(r for r in rows if r["recall@10"] >= 0.95 * best["recall@10"])
    out.append(f"Accuracy: recall@10 peaks at d={best['dim']} ({best['recall@10']:.4f}) and first "
               f"reaches 95% of that peak at d={sat['dim']} ({sat['recall@10']:.4f}).")
    arp_best = min(rows, key=lambda r: r["arp@10"])
    if arp_best["dim"] > sat["dim"]:
        out.append(f"The bias keeps improving past that point: arp@10 is lowest at "
                   f"d={arp_best['dim']} ({arp_best['arp@10']:.4f}), so accuracy saturates "
                   "earlier than popularity bias.")
    else:
        out.append(f"arp@10 is lowest at d={arp_best['dim']} ({arp_best['arp@10']:.4f}), not beyond "
                   "the dimension where accuracy saturates.")
    pop = _find(summ, model="most_popular")
    if pop is not None:
        out.append(f"Most-popular baseline: recall@10 {pop['recall@10']:.4f}, arp@10 "
                   f"{pop['arp@10']:.4f}; the best MF recall@10 is "
                   f"{best['recall@10'] / max(pop['recall@10'], 1e-12):.1f}× the baseline's.")
    return out


def _collisions_text(summ) -> list:
    hashed = sorted([r for r in summ if r.get("table") == "hashed"], key=lambda r: r["rows_per_id"])
    cuckoo = _find(summ, model="mf", table="cuckoo")
    if not hashed or cuckoo is None:
        return []
    lo, hi = hashed[0], hashed[-1]
    out = []
    out.append(
        f"Measured collision share goes from {hi['collision_share']:.3f} at m/n={hi['rows_per_id']:g} "
        f"(theory {hi['collision_theory']:.3f}) to {lo['collision_share']:.3f} at "
        f"m/n={lo['rows_per_id']:g} (theory {lo['collision_theory']:.3f}).")
    seq = [cuckoo["recall@10"]] + [r["recall@10"] for r in reversed(hashed)]
    if all(b < a for a, b in zip(seq, seq[1:])):
        rec = "falls at every step"
    elif lo["recall@10"] < cuckoo["recall@10"]:
        rec = "falls overall (not at every step)"
    else:
        rec = "does not fall"
    out.append(
        f"recall@10 {rec} from the cuckoo table down the m/n sweep: cuckoo "
        f"{cuckoo['recall@10']:.4f}, hashed "
        + ", ".join(f"m/n={r['rows_per_id']:g}: {r['recall@10']:.4f}" for r in reversed(hashed)) + ".")
    t_c, t_lo, t_hi = _tail_recall(cuckoo), _tail_recall(lo), _tail_recall(hi)
    h_c = np.nanmean(np.asarray(cuckoo["decile_recall@10"], dtype=float)[:2])
    h_lo = np.nanmean(np.asarray(lo["decile_recall@10"], dtype=float)[:2])
    if all(map(math.isfinite, (t_c, t_lo, h_c, h_lo))) and t_c > 0 and h_c > 0:
        if t_lo >= t_c:
            verdict = "tail recall does not fall at all, so the tail is not the part hit hardest"
        elif t_lo / t_c < h_lo / h_c:
            verdict = "the tail is hit harder than the head"
        else:
            verdict = "the head is hit as hard as the tail or harder"
        out.append(
            f"Tail recall (mean of deciles 5–9): cuckoo {t_c:.4f}, m/n={hi['rows_per_id']:g} "
            f"{t_hi:.4f}, m/n={lo['rows_per_id']:g} {t_lo:.4f} ({t_lo / t_c:.0%} of cuckoo); head "
            f"recall (deciles 0–1) at m/n={lo['rows_per_id']:g} is {h_lo / h_c:.0%} of cuckoo's: "
            f"{verdict}.")
    direction = ("raise" if lo["arp@10"] > cuckoo["arp@10"] else "lower")
    out.append(f"Collisions {direction} arp@10 here: cuckoo {cuckoo['arp@10']:.4f} vs "
               f"{lo['arp@10']:.4f} at m/n={lo['rows_per_id']:g} "
               f"(coverage@10 {cuckoo['coverage@10']:.4f} vs {lo['coverage@10']:.4f}).")
    return out


def _calibration_text(summ, config) -> list:
    out = []
    for C in config["candidates"]:
        r0 = _find(summ, candidates=C, lam=0.0)
        r5 = _find(summ, candidates=C, lam=0.5)
        if r0 is None or r5 is None:
            continue
        mis = r5["miscalibration@10"] / max(r0["miscalibration@10"], 1e-12)
        nd = 1 - r5["ndcg@10"] / max(r0["ndcg@10"], 1e-12)
        ok = mis <= 0.5 and nd <= 0.10
        out.append(
            f"C={C}: at λ=0.5 miscalibration@10 is {r5['miscalibration@10']:.4f} vs "
            f"{r0['miscalibration@10']:.4f} at λ=0 ({mis:.0%} of it) while ndcg@10 changes by "
            f"{-nd:+.1%} ({r0['ndcg@10']:.4f} → {r5['ndcg@10']:.4f}); the target "
            f"(≤ 50% miscalibration, ≤ 10% ndcg loss) is {'met' if ok else 'NOT met'}. "
            f"arp@10 goes {r0['arp@10']:.4f} → {r5['arp@10']:.4f}, coverage@10 "
            f"{r0['coverage@10']:.4f} → {r5['coverage@10']:.4f}.")
        if "minority_share@10" in r0:
            out.append(
                f"Category mass outside each user's main category: {r0['minority_share@10']:.1%} of the "
                f"list at λ=0, {r5['minority_share@10']:.1%} at λ=0.5, against "
                f"{r0['minority_share_history']:.1%} in the users' histories.")
        rows = sorted([r for r in summ if r.get("candidates") == C and "lam" in r],
                      key=lambda r: r["lam"])
        half = next((r for r in rows if r["miscalibration@10"] <= 0.5 * r0["miscalibration@10"]),
                    None)
        if half is None:
            out.append(f"No λ up to {rows[-1]['lam']:g} halves miscalibration@10 at C={C}.")
        else:
            loss = 1 - half["ndcg@10"] / max(r0["ndcg@10"], 1e-12)
            out.append(f"The smallest λ that halves miscalibration@10 at C={C} is λ={half['lam']:g}, "
                       f"with ndcg@10 changing by {-loss:+.1%}.")
    return out


def _dataset_line(results) -> str:
    d = results["dataset"]
    return (f"Dataset **{d['name']}** (`{d.get('spec', d['name'])}`): {d['users']:,} users, "
            f"{d['items']:,} items, {d['interactions']:,} interactions, top-1% items hold "
            f"{d['top1pct_share']:.1%} of interactions. Seeds {results['config'].get('seeds')}; "
            f"80/20 random split per user; k = 10; training: {results['config'].get('train')}.")


def render_report(results_list: Sequence[dict], plots: dict | None = None,
                  title: str = "embtab experiments") -> str:
    """A Markdown report: per experiment, a mean ± sd table, plots and generated findings.

    ``plots`` maps an experiment name to plot paths (relative links are written as given).
    The "what it shows" sentences are computed from the numbers (first vs last rows, the
    λ = 0 vs λ = 0.5 comparison), never fixed claims.
    """
    plots = plots or {}
    lines = [f"# {title}", ""]
    for res in results_list:
        name = res["experiment"]
        if name == "feedback":
            from embtab.feedback import render_section

            lines += render_section(res, plots.get(name, []))
            continue
        summ = summarize(res) if name != "rerank-speed" else None
        if name == "dims":
            lines += ["## E1 — embedding dimension (cuckoo tables)", "", _dataset_line(res), ""]
            rows = [r for r in summ if r["model"] != "mf"] + sorted(
                [r for r in summ if r["model"] == "mf"], key=lambda r: r["dim"])
            lines += _table(rows, [("model", _model_label), ("d", lambda r: str(r.get("dim", "")))])
            text = _dims_text(summ)
        elif name == "collisions":
            lines += [("## E2 — hash collisions (hashed item table vs cuckoo, d = "
                      f"{res['config']['dim']})"), "", _dataset_line(res), ""]
            rows = [r for r in summ if r["model"] != "mf"] + [
                r for r in summ if r.get("table") == "cuckoo"] + sorted(
                [r for r in summ if r.get("table") == "hashed"], key=lambda r: -r["rows_per_id"])
            lines += _table(
                rows, [("model", lambda r: r.get("table", _model_label(r))),
                       ("m/n", lambda r: f"{r['rows_per_id']:g}" if "rows_per_id" in r else ""),
                       ("collision share (theory)",
                        lambda r: (f"{r['collision_share']:.3f} ({r['collision_theory']:.3f})"
                                   if "collision_share" in r else ""))],
                extra=[("tail recall (deciles 5–9)",
                        lambda r: _fmt(_tail_recall(r)) if "decile_recall@10" in r else "")])
            text = _collisions_text(summ)
        elif name == "calibration":
            lines += [(f"## E3 — calibrated reranking (d = {res['config']['dim']}, α = "
                       f"{res['config']['alpha']}, scores {res['config']['score_scaling']}, "
                       f"categories: {res['config'].get('categories', 'genres')})"), "",
                      _dataset_line(res), ""]
            rows = [r for r in summ if r["model"] != "mf+calibrated"] + sorted(
                [r for r in summ if r["model"] == "mf+calibrated"],
                key=lambda r: (r["candidates"], r["lam"]))
            lines += _table(rows, [("model", _model_label),
                                   ("C", lambda r: str(r.get("candidates", ""))),
                                   ("λ", lambda r: f"{r['lam']:g}" if "lam" in r else "")],
                            metrics_=("recall@10", "ndcg@10", "miscalibration@10",
                                      "minority_share@10", "arp@10", "coverage@10",
                                      "tail_share@10"))
            text = _calibration_text(summ, res["config"])
            ref = res["config"].get("heldout_miscalibration")
            if ref is not None and math.isfinite(ref):
                text.append(f"For reference, the users' own held-out test items have a "
                            f"miscalibration of {ref:.4f} against their training mix (mean over "
                            "seeds): real consumption is not perfectly calibrated either.")
        elif name == "rerank-speed":
            lines += ["## E4 — calibrated rerank speed", "", res["markdown"], ""]
            text = []
        else:
            continue
        lines.append("")
        for p in plots.get(name, []):
            lines += [f"![{Path(p).stem}]({p})", ""]
        if text:
            lines += ["**What it shows.** " + " ".join(text), ""]
        lines.append(f"_Run time: {res['config'].get('seconds', '?')} s._")
        lines.append("")
    return "\n".join(lines)


# demo ///////////////////////////////////////////////////////////////////////////////////////


def run_experiments(names: Sequence[str], out_dir, *, dataset: str = "synthetic", seeds=3,
                    quick: bool = False, progress: bool = True,
                    train_overrides: dict | None = None, title: str = "embtab experiments",
                    kwargs: dict | None = None) -> dict:
    """Run experiments sharing one data set and model cache; write JSON, plots and report.

    Writes ``out_dir/<name>.json`` per experiment, ``out_dir/results.json`` (a list of the
    per-experiment objects), PNG plots and ``out_dir/report.md``. Returns
    ``{"report", "results", "plots"}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = kwargs or {}
    needs_data = [n for n in names if n != "rerank-speed"]
    s = _Session(dataset, train_overrides, progress) if needs_data else None
    results, plots = [], {}
    for name in names:
        if name == "rerank-speed":
            res = run_rerank_speed(quick=quick, progress=progress)
        else:
            res = EXPERIMENTS[name](dataset, seeds, progress=progress, session=s,
                                    **kwargs.get(name, {}))
        save_results(res, out / f"{name}.json")
        plots[name] = [p.name for p in plot_results(res, out)]
        results.append(res)
    save_results(results, out / "results.json")
    report = out / "report.md"
    report.write_text(render_report(results, plots, title=title))
    return {"report": report, "results": out / "results.json",
            "plots": [out / p for ps in plots.values() for p in ps]}


def run_demo(out_dir="embtab-demo", *, progress: bool = True, seeds=3,
             dataset: str = "synthetic") -> dict:
    """``embtab demo``: E1 + E2 + E3 + E5 on the default synthetic data (minutes on 2 cores).

    E5 (the feedback loop) runs on its own smaller default data set
    (:data:`embtab.feedback.DEFAULT_DATASET`) when ``dataset`` is ``"synthetic"``.

    Uses the default :class:`embtab.train.TrainConfig` (10 epochs) and 3 seeds; E3 with both
    candidate counts. See :func:`run_experiments` for what is written.
    """
    what = ("synthetic power-law data" if dataset.startswith("synthetic")
            else f"`{dataset}`")
    return run_experiments(["dims", "collisions", "calibration", "feedback"], out_dir,
                           dataset=dataset,
                           seeds=seeds, progress=progress,
                           title=f"embtab demo: popularity bias on {what}")
