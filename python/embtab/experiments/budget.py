"""E2 ``budget``: embedding-table designs compared at equal bytes (Monolith's question).

Budgets are fractions of the bytes of a reference model: d = 32 collisionless (cuckoo) tables
for every user and item, counted as :func:`embtab.train.model_bytes` counts them (weights, ID
index, and the state of the trainer's dense Adam: two float32 values per weight). At each
budget every design of :data:`DESIGNS` takes the largest size that fits (the largest d for the
collisionless table, the most rows at d = 32 for the others); a design that cannot fit (its
index alone is over the budget, or a capped table too small to serve one batch) is listed in
``skipped``. The designs of one budget train with one batch size, the largest that every
capped table at that budget can serve (:func:`common_batch`). Each fitted design is tuned per
seed on a validation split as E1 with ``--tune``
(:mod:`~embtab.experiments.tuning`), trained, and measured against the truth (the ``oracle``
row, ``excess_arp@10``, ΔGAP per user group) where the data has one; on real data the reference
is the users' profiles. docs/experiments.md states the protocol.

The mechanism (``model = "mechanism"`` rows): for each design whose item table shares rows
between items, the exposure (share of users whose top-10 holds the item) and the mean
percentile rank of tail items that share a row with a head item against tail items that do
not, matched within training-popularity deciles; head items likewise (:func:`mechanism_rows`).

Example::

    >>> from embtab.experiments.budget import run_budget
    >>> res = run_budget("synthetic:n_users=60,n_items=90,interactions_per_user=8", seeds=1,
    ...                  budgets=(0.25,), designs=("hashed",), tune=False,
    ...                  train_overrides={"epochs": 1}, progress=False)
    >>> sorted({r["model"] for r in res["rows"]})
    ['mechanism', 'mf', 'most_popular', 'oracle', 'random']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from embtab import metrics
from embtab._checks import check_int, chunk_rows
from embtab._research import K
from embtab.data import Interactions
from embtab.experiments.dims import fmt_ci
from embtab.experiments.intervals import (CI_NOTE, ci_text, direction_sentence, interval,
                                         summary_with_intervals)
from embtab.experiments.plots import num, pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import dataset_line, finish_section
from embtab.experiments.session import (
    Progress,
    Session,
    choice_sweep,
    evaluate_lists,
    make_result,
    overrides_of,
    real_sweep,
    reference_rows,
    seed_list,
    session_for,
)
from embtab.experiments.truth import total_relevance
from embtab.experiments.tuning import QUICK_TUNING_GRID, TUNING_GRID, untuned_note
from embtab.experiments.tuning import tune as tune_config
from embtab.train import (
    MFModel,
    TrainConfig,
    build_model,
    collision_share,
    model_bytes,
    recommend,
    score_matrix,
    table_design,
)

__all__ = ["BUDGETS", "DESIGNS", "QUICK_BUDGETS", "QUICK_DATASET", "QUICK_DESIGNS",
           "REFERENCE_DIM", "common_batch", "design_config", "with_expiry", "findings", "item_row_sets", "largest_partner",
           "matched_difference", "merge_runs", "planned_bytes",
           "mechanism_rows", "plot", "reference_bytes", "run_budget", "section",
           "shares_with_head"]

#: Budgets as fractions of the reference model's bytes (full runs).
BUDGETS = (1 / 16, 1 / 4, 1.0, 4.0)
#: Budgets of quick runs.
QUICK_BUDGETS = (1 / 4, 1.0)
#: The reference: collisionless tables of this d for all IDs; the d of the non-cuckoo designs.
REFERENCE_DIM = 32
#: The data set of quick runs when the spec is the default ``"synthetic"``.
QUICK_DATASET = "synthetic:n_users=600,n_items=900,interactions_per_user=20"
#: Smallest batch a capped table must serve (a smaller cap is skipped, not trained).
MIN_BATCH = 32
#: min_count of the admission design (an ID gets a row from its second sighting).
ADMISSION_MIN_COUNT = 2

#: design name -> (TrainConfig fields at d = 32 besides the searched size, what it is).
DESIGNS = {
    "cuckoo": ({}, "collisionless cuckoo tables for all IDs at the largest d that fits"),
    "hashed-items": ({"table": "hashed"},
                     "hashing trick on the items (m rows that fit), users collisionless"),
    "hashed": ({"table": "hashed", "hash_users": True},
               "hashing trick on users and items, m/n rows each"),
    "qr": ({"table": "qr", "hash_users": True},
           "quotient-remainder tables (Shi et al. 2020) for users and items, V virtual rows, "
           "ceil(V / sqrt V) + sqrt V stored"),
    "double-hashed": ({"table": "double_hashed", "hash_users": True},
                      "double hashing for users and items: each ID the sum of two of m rows"),
    "cuckoo-lru": ({"on_full": "evict_lru", "hash_users": True},
                   "cuckoo tables capped at m/n rows, least recently used evicted"),
    "cuckoo-lfu": ({"on_full": "evict_lfu", "hash_users": True},
                   "cuckoo tables capped at m/n rows, least frequently used evicted"),
    "cuckoo-admit": ({"on_full": "evict_lru", "hash_users": True,
                      "min_count": ADMISSION_MIN_COUNT, "admission_delta": 0.5},
                     f"cuckoo tables capped at m/n rows, a row from an ID's "
                     f"{ADMISSION_MIN_COUNT}nd sighting (count-min sketch of one row of n "
                     f"counters), LRU eviction"),
    "cuckoo-expire": ({"on_full": "evict_lru", "hash_users": True, "expire_after": 1},
                      "cuckoo tables capped at m/n rows, an ID unseen for one epoch's batches "
                      "of table steps expiring (Monolith), LRU eviction when full"),
}
#: Designs of quick runs (no capped design: its small batches would slow every design of
#: its budget, see :func:`common_batch`).
QUICK_DESIGNS = ("cuckoo", "hashed-items", "hashed")

#: Row keys that name a configuration (the summary groups rows by them).
SUMMARY_KEYS = ("model", "budget", "design", "group")
#: Row fields that are settings, not measurements (left out of the summary).
SETTINGS = ("seed", "lr", "l2", "epochs", "batch_size", "rows_per_id", "dim", "budget_bytes",
            "bytes_weights", "bytes_index", "bytes_optimizer", "bytes_total", "val_ndcg@10")


def reference_bytes(data: Interactions, config: TrainConfig) -> int:
    """Bytes of the reference: d = :data:`REFERENCE_DIM` cuckoo tables for every user and item
    of ``data`` (:func:`embtab.train.model_bytes`, Adam's state as :func:`fit` keeps it)."""
    cfg = TrainConfig(**{**config.to_dict(), "dim": REFERENCE_DIM, "table": "cuckoo",
                         "rows_per_id": 1.0, "hash_users": False, "on_full": "grow",
                         "min_count": 1})
    return model_bytes(build_model(data, cfg))["total"]


def planned_bytes(data: Interactions, config: TrainConfig) -> int:
    """The bytes a design is budgeted at: :func:`~embtab.train.model_bytes` of its untrained
    model, plus, for each capped cuckoo table (``on_full`` an eviction policy), its index bytes
    once more: such a table trains nearly full under eviction churn, where a failed insert can
    grow its native index (measured: 232 -> 464 slots), so the bytes measured after training
    stay within the budget."""
    model = build_model(data, config)
    room = sum(t.memory_bytes()["index"] for t in (model.users, model.items)
               if getattr(t, "on_full", None) is not None and t.on_full.value != "grow")
    return model_bytes(model)["total"] + room


def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest x in [lo, hi] with ``fits(x)`` (``fits`` monotone: true up to some x), or
    None when ``fits(lo)`` is false."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def design_config(design: str, data: Interactions, budget_bytes: float,
                  base: TrainConfig) -> tuple:
    """The largest configuration of ``design`` whose :func:`planned_bytes` fit
    ``budget_bytes`` on the catalogue of ``data``.

    Returns ``(TrainConfig, None)`` or ``(None, reason)``. ``"cuckoo"`` searches d >= 1; the
    others keep d = :data:`REFERENCE_DIM` and search the item rows m (users: the same m/n).
    Capped cuckoo designs are searched below m = n (a cap of n rows holds every ID: that is
    the plain cuckoo design, not a capped one) and get the largest batch their caps serve (at
    most ``base.batch_size``, at least :data:`MIN_BATCH`); :func:`common_batch` then gives
    every design of a budget that batch.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {list(DESIGNS)}, got {design!r}")
    fields, _ = DESIGNS[design]
    n_items, n_users = data.n_items, data.n_users
    common = {**base.to_dict(), **fields}

    def cfg_for(x: int) -> TrainConfig:
        if design == "cuckoo":
            return TrainConfig(**{**common, "dim": x})
        kw = {**common, "dim": REFERENCE_DIM, "rows_per_id": x / n_items}
        if "on_full" in fields:
            caps = [x] + ([max(1, round(x / n_items * n_users))] if fields.get("hash_users")
                          else [])
            kw["batch_size"] = max(1, min(base.batch_size, x // 2, *caps[1:]))
            if "min_count" in fields:
                # one row of about n counters (delta = 0.5 gives depth 1)
                kw["admission_eps"] = min(0.5, math.e / max(n_items, n_users))
        return TrainConfig(**kw)

    def fits(x: int) -> bool:
        return planned_bytes(data, cfg_for(x)) <= budget_bytes

    if design == "cuckoo":
        d = _largest(fits, 1, 4096)
        if d is None:
            return None, "its ID index and one dimension exceed the budget"
        return cfg_for(d), None
    if "on_full" not in fields:
        # QR's stored rows grow as 2 sqrt(V): its virtual rows V may reach n^2 and beyond
        hi = 64 * n_items if fields.get("table") != "qr" else 64 * n_items * n_items
        m = _largest(fits, 1, hi)
        if m is None:
            return None, "one row per table exceeds the budget"
        return cfg_for(m), None
    # a cap serves batches of MIN_BATCH pairs: 2 * MIN_BATCH item rows, MIN_BATCH user rows
    lo = max(2 * MIN_BATCH, math.ceil((MIN_BATCH + 0.5) * n_items / n_users))
    if lo >= n_items - 1:
        return None, (f"a cap that serves batches of {MIN_BATCH} pairs holds (nearly) every "
                      f"item: no cap needed (the cuckoo design)")
    m = _largest(fits, lo, n_items - 1)
    if m is None:
        return None, f"a cap that serves batches of {MIN_BATCH} pairs exceeds the budget"
    if m == n_items - 1:
        return None, "the budget holds every ID: no cap needed (the cuckoo design)"
    return cfg_for(m), None


def common_batch(plans: Sequence[tuple]) -> list:
    """``(budget, design, TrainConfig)`` plans with one batch size per budget: the smallest of
    the budget's plans (the largest every capped table at that budget can serve), so the
    designs compared at a budget differ by their tables only."""
    smallest: dict = {}
    for b, _, cfg in plans:
        smallest[b] = min(smallest.get(b, cfg.batch_size), cfg.batch_size)
    return [(b, d, TrainConfig(**{**cfg.to_dict(), "batch_size": smallest[b]}))
            for b, d, cfg in plans]


def with_expiry(plans: Sequence[tuple], n_pairs: int) -> list:
    """Plans whose config expires IDs (``expire_after`` set) get ``expire_after`` = the
    batches of one epoch over ``n_pairs`` training pairs at their batch size."""
    out = []
    for b, d, cfg in plans:
        if cfg.expire_after is not None:
            steps = max(1, math.ceil(n_pairs / cfg.batch_size))
            cfg = TrainConfig(**{**cfg.to_dict(), "expire_after": steps})
        out.append((b, d, cfg))
    return out


# the mechanism //////////////////////////////////////////////////////////////////////////////


def item_row_sets(model: MFModel, data: Interactions) -> list:
    """Where each item of ``data`` (dense order) lives in its item table: a list with one int64
    array per physical table, ``[I]`` (one row per item) or ``[I, c]`` (c rows per item in
    that table); rows < 0 (an item without a row) share nothing. A hashed table gives one
    ``[I]`` array, a quotient-remainder module two (quotient, remainder), a double-hashed
    module one ``[I, 2]``; a collisionless table none."""
    tab = model.items
    ids = torch.from_numpy(np.ascontiguousarray(data.item_ids, dtype=np.uint64).view(np.int64))
    if not (hasattr(tab, "collision_report") or hasattr(tab, "seed2")
            or hasattr(tab, "quotient")):
        return []
    rows = tab.lookup(ids).numpy().astype(np.int64)
    if rows.ndim == 1:
        return [rows]
    if hasattr(tab, "quotient"):
        return [rows[:, 0], rows[:, 1]]
    return [rows]


def _pairs(rows: np.ndarray) -> tuple:
    """The distinct (item, row) pairs of a ``[I]`` or ``[I, c]`` row array, rows >= 0 only."""
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[:, None] if rows.ndim == 1 else rows
    items = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    r = rows.ravel()
    keep = r >= 0
    items, r = items[keep], r[keep]
    key = np.unique(items * (int(r.max(initial=0)) + 1) + r)
    return key // (int(r.max(initial=0)) + 1), key % (int(r.max(initial=0)) + 1)


def shares_with_head(row_sets: Sequence[np.ndarray], is_head: np.ndarray) -> np.ndarray:
    """Per item, whether another item that is head holds one of its rows, bool [I].

    ``row_sets`` as :func:`item_row_sets`; an item's own headness does not count, and a
    negative row (no row) shares with nothing.

    Example::

        >>> rows = [np.array([0, 0, 1, 1, 2])]           # items 0, 1 share row 0; 2, 3 row 1
        >>> shares_with_head(rows, np.array([True, False, False, False, True])).tolist()
        [False, True, False, False, False]
    """
    is_head = np.asarray(is_head, dtype=bool)
    out = np.zeros(is_head.size, dtype=bool)
    for rows in row_sets:
        items, r = _pairs(rows)
        if r.size == 0:
            continue
        heads = np.bincount(r, weights=is_head[items].astype(np.float64))
        others = heads[r] - is_head[items]
        out[items[others > 0.5]] = True
    return out


def largest_partner(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per item, the largest ``values`` of another item holding one of its rows (0 when it
    shares none); ``rows`` ``[I]`` or ``[I, c]`` as in :func:`item_row_sets`.

    Example::

        >>> largest_partner(np.array([0, 0, 0, 1, -1]), np.array([.5, .2, .1, .9, .3])).tolist()
        [0.2, 0.5, 0.5, 0.0, 0.0]
    """
    values = np.asarray(values, dtype=np.float64)
    items, r = _pairs(rows)
    out = np.zeros(values.size)
    if r.size == 0:
        return out
    order = np.lexsort((-values[items], r))      # by row, largest value first
    r_o, v_o = r[order], values[items[order]]
    first = np.r_[True, r_o[1:] != r_o[:-1]]
    starts = np.flatnonzero(first)
    size = np.diff(np.r_[starts, r_o.size])
    top1 = np.repeat(v_o[starts], size)
    top2 = np.repeat(np.where(size > 1, v_o[np.minimum(starts + 1, r_o.size - 1)], 0.0), size)
    np.maximum.at(out, items[order], np.where(first, top2, top1))
    return out


def matched_difference(values: np.ndarray, treated: np.ndarray, group: np.ndarray,
                       deciles: np.ndarray) -> dict:
    """Mean of ``values`` over treated items minus over untreated items of ``group``, matched
    within popularity deciles.

    In each decile with both treated and untreated items of ``group``, the difference of the
    two means; the deciles' differences are averaged weighted by their treated counts (the
    effect on the treated). Returns ``{"difference", "treated", "untreated", "n_treated",
    "n_untreated"}`` (``treated``/``untreated``: the two means weighted the same way); NaN
    differences when no decile has both.

    Example::

        >>> v = np.array([1., 3., 5., 9., 0.])
        >>> t = np.array([True, False, True, False, True])
        >>> d = matched_difference(v, t, np.ones(5, bool), np.array([0, 0, 1, 1, 2]))
        >>> d["difference"], d["n_treated"], d["n_untreated"]   # (-2 -4) / 2; decile 2 unmatched
        (-3.0, 2, 2)
    """
    values = np.asarray(values, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    group = np.asarray(group, dtype=bool)
    w_sum = t_sum = u_sum = 0.0
    n_t = n_u = 0
    for d in np.unique(deciles[group]):
        inside = group & (deciles == d)
        a, b = inside & treated, inside & ~treated
        if a.any() and b.any():
            w = float(a.sum())
            w_sum += w
            t_sum += w * values[a].mean()
            u_sum += w * values[b].mean()
            n_t += int(a.sum())
            n_u += int(b.sum())
    nan = float("nan")
    if w_sum == 0:
        return {"difference": nan, "treated": nan, "untreated": nan, "n_treated": 0,
                "n_untreated": 0}
    return {"difference": float((t_sum - u_sum) / w_sum), "treated": float(t_sum / w_sum),
            "untreated": float(u_sum / w_sum), "n_treated": n_t, "n_untreated": n_u}


def mean_percentile_rank(model: MFModel, train: Interactions, chunk: int = 1024) -> np.ndarray:
    """Per item, the mean over users without it in training of its percentile rank in the
    user's scores over the items the user has not trained on (0 = top, 1 = bottom), [I];
    ``chunk`` (an int >= 1) users at a time."""
    n_u, n_i = train.n_users, train.n_items
    chunk = chunk_rows(check_int(chunk, "chunk", min=1), n_i)
    total = np.zeros(n_i)
    count = np.zeros(n_i)
    sets = train.user_items()
    for start in range(0, n_u, chunk):
        rows = np.arange(start, min(start + chunk, n_u))
        s = score_matrix(model, train, rows).numpy()
        rank = np.empty_like(s, dtype=np.int64)
        order = np.argsort(-s, axis=1, kind="stable")
        np.put_along_axis(rank, order, np.arange(n_i)[None, :], axis=1)
        n_cand = n_i - sets.take_rows(rows).lengths()
        pct = rank / np.maximum(n_cand - 1, 1)[:, None]
        mask = np.isfinite(s)
        total += np.where(mask, pct, 0.0).sum(axis=0)
        count += mask.sum(axis=0)
    return np.divide(total, count, out=np.full(n_i, np.nan), where=count > 0)


def mechanism_rows(model: MFModel, train: Interactions, top: np.ndarray, base: dict) -> list:
    """The ``mechanism`` rows of one trained model (none when no item shares a row).

    For ``group`` in (tail, head): items of the group that share a row with a head item
    (:func:`shares_with_head`) against those that do not, matched within training-popularity
    deciles (:func:`matched_difference`): ``exposure_diff`` (share of users whose top-10 holds
    the item), ``rank_diff`` (mean percentile rank, 0 = top: < 0 means the sharing items rank
    higher), the two sides' means, ``sharing_share`` (the group's share of items that share a
    row with a head item) and ``partner_pop`` (mean over those items of the largest pop(i) of
    an item they share a row with). ``base`` adds keys (seed, budget, design).
    """
    row_sets = item_row_sets(model, train)
    if not row_sets:
        return []
    counts = train.item_counts()
    head = metrics.head_items(counts)
    deciles = metrics.popularity_deciles(counts)
    pop = metrics.item_popularity(train)
    sharing = shares_with_head(row_sets, head)
    if not sharing.any():
        return []
    exposure = metrics.exposure_counts(top, train.n_items, K) / max(train.n_users, 1)
    pct = mean_percentile_rank(model, train)
    partner = np.zeros(train.n_items)
    for rows in row_sets:
        partner = np.maximum(partner, largest_partner(rows, pop))
    out = []
    for name, group in (("tail", ~head), ("head", head)):
        e = matched_difference(exposure, sharing, group, deciles)
        r = matched_difference(pct, sharing, group, deciles)
        sel = group & sharing
        out.append({**base, "model": "mechanism", "group": name,
                    "sharing_share": float(sel.sum() / max(group.sum(), 1)),
                    "partner_pop": float(partner[sel].mean()) if sel.any() else float("nan"),
                    "exposure_diff": e["difference"], "exposure_sharing": e["treated"],
                    "exposure_alone": e["untreated"], "rank_diff": r["difference"],
                    "rank_sharing": r["treated"], "rank_alone": r["untreated"],
                    "n_sharing": e["n_treated"], "n_alone": e["n_untreated"]})
    return out


# the run ////////////////////////////////////////////////////////////////////////////////////


def run_budget(dataset: str | Interactions = "synthetic", seeds=5, *,
               budgets: Sequence[float] | None = None, designs: Sequence[str] | None = None,
               tune: bool = True, quick: bool = False, train_overrides: dict | None = None,
               progress: bool = True, session: Session | None = None) -> dict:
    """E2 at equal bytes: every design of ``designs`` that fits each budget, tuned, per seed.

    Parameters
    ----------
    dataset : str or Interactions
        A :func:`embtab.data.load_dataset` spec, or a data set. With ``quick`` the default
        ``"synthetic"`` becomes :data:`QUICK_DATASET` (a smaller data set; a shared
        ``session`` is then not used).
    seeds : int or sequence of int
    budgets : sequence of float, optional
        Distinct fractions > 0 of :func:`reference_bytes` (default :data:`BUDGETS`, quick
        :data:`QUICK_BUDGETS`).
    designs : sequence of str, optional
        Distinct names of :data:`DESIGNS` (default all; quick :data:`QUICK_DESIGNS`).
    tune : bool
        Pick lr, l2 and epochs per (budget, design, seed) on a validation split
        (:func:`embtab.experiments.tuning.tune`; the quick grid with ``quick``).
    quick : bool
    train_overrides : dict, optional
        :class:`embtab.train.TrainConfig` fields for every run.
    progress : bool

    Returns
    -------
    dict
        The results.json object (``experiment = "budget"``): ``rows`` (``mf`` rows with
        ``budget``, ``budget_bytes``, ``design``, ``dim``, ``rows_per_id``, the bytes really
        used, the chosen lr/l2/epochs/batch_size and the metrics; ``mechanism`` rows; the
        oracle and baselines per seed), ``skipped`` (designs that do not fit a budget, with
        the reason), ``summary`` (per model, budget, design and group: mean, sd, 95% interval)
        and ``contrasts`` (:func:`contrasts`).
    """
    t0 = time.perf_counter()
    if quick and isinstance(dataset, str) and dataset == "synthetic":
        train_overrides = overrides_of(train_overrides, session)
        dataset, session = QUICK_DATASET, None
    seeds = seed_list(seeds)
    budgets = tuple(real_sweep(budgets if budgets is not None
                               else (QUICK_BUDGETS if quick else BUDGETS), "budgets"))
    designs = tuple(choice_sweep(designs if designs is not None
                                 else (QUICK_DESIGNS if quick else list(DESIGNS)), "designs",
                                 list(DESIGNS), "design"))
    for b in budgets:
        if not b > 0:
            raise ValueError(f"budgets must be fractions > 0, got {b!r}")
    s = session_for(dataset, train_overrides, progress, session)
    grid = QUICK_TUNING_GRID if quick else TUNING_GRID
    relevance = total_relevance(s.data.truth) if s.data.truth is not None else None
    base = s.config(seed=0)
    ref = reference_bytes(s.data, base)
    plans, skipped = [], []
    for b in budgets:
        for d in designs:
            cfg, why = design_config(d, s.data, b * ref, base)
            if cfg is None:
                skipped.append({"budget": b, "design": d, "reason": why})
            else:
                plans.append((b, d, cfg))
    plans = common_batch(plans)
    rows = []
    bar = Progress(len(seeds) * len(plans), "E2 budget", progress)
    for seed in seeds:
        train, test, truth, first = reference_rows(s, seed, relevance)
        rows += first
        for b, d, planned in with_expiry(plans, train.n_interactions):
            cfg = TrainConfig(**{**planned.to_dict(), "seed": seed})
            extra = {}
            if tune:
                cfg, info = tune_config(train, cfg, grid, val_seed=seed + 1_000_003)
                extra["val_ndcg@10"] = info["val_ndcg@10"]
                extra["tuned"] = info["tuned"]
            model = s.model(cfg, f"E2 budget={b:g} {d} seed={seed}")
            used = model_bytes(model)
            top = recommend(model, train, K)
            key = {"seed": seed, "budget": b, "budget_bytes": int(b * ref), "design": d}
            rows.append({"model": "mf", **key, "table": table_design(cfg), "dim": cfg.dim,
                         "rows_per_id": cfg.rows_per_id,
                         "bytes_weights": used["weights"], "bytes_index": used["index"],
                         "bytes_optimizer": used["optimizer"], "bytes_total": used["total"],
                         "collision_share": collision_share(model, train)["collision_share"],
                         **evaluate_lists(top, train, test), **truth.metrics(top),
                         "lr": cfg.lr, "l2": cfg.l2, "epochs": cfg.epochs,
                         "batch_size": cfg.batch_size, **extra})
            rows += mechanism_rows(model, train, top, key)
            bar.tick()
    bar.close()
    res = make_result("budget", s, {"budgets": list(budgets), "designs": list(designs),
                                    "reference_bytes": int(ref),
                                    "reference": f"d = {REFERENCE_DIM} cuckoo, all IDs",
                                    "seeds": seeds, "tuned": bool(tune),
                                    "tuning_grid": grid if tune else None,
                                    "oracle": s.data.truth is not None}, rows, t0)
    res["skipped"] = skipped
    res["summary"] = summary_with_intervals(rows, SUMMARY_KEYS, skip=SETTINGS)
    res["contrasts"] = contrasts(rows)
    return res


def merge_runs(parts: Sequence[dict]) -> dict:
    """One results object from runs of the same configuration on disjoint seeds (e.g. one
    process per seed): rows concatenated, ``summary`` and ``contrasts`` recomputed over all
    seeds, ``config.seeds`` joined and ``config.seconds`` the longest part's. ``ValueError``
    when the parts differ in anything but their seeds, rows and time."""
    if not parts:
        raise ValueError("parts must hold at least one results object")

    def same(r):
        c = {k: v for k, v in r["config"].items() if k not in ("seeds", "seconds")}
        return r["experiment"], r["dataset"], c, r.get("skipped")

    first = same(parts[0])
    seeds: list = []
    for p in parts:
        if same(p) != first:
            raise ValueError("parts differ in more than their seeds (experiment, dataset, "
                             "config or skipped designs)")
        if set(p["config"]["seeds"]) & set(seeds):
            raise ValueError(f"parts share seeds {sorted(set(p['config']['seeds']) & set(seeds))}")
        seeds += list(p["config"]["seeds"])
    rows = [r for p in parts for r in p["rows"]]
    out = {**parts[0], "rows": rows,
           "config": {**parts[0]["config"], "seeds": seeds,
                      "seconds": max(p["config"]["seconds"] for p in parts)}}
    out["summary"] = summary_with_intervals(rows, SUMMARY_KEYS, skip=SETTINGS)
    out["contrasts"] = contrasts(rows)
    return out


# contrasts and sentences ////////////////////////////////////////////////////////////////////


def _pop_metric(rows) -> str:
    """``excess_arp@10`` where rows have it (a truth), else the diverse users' ΔGAP."""
    mf = [r for r in rows if r.get("model") == "mf"]
    return "excess_arp@10" if any("excess_arp@10" in r for r in mf) else "delta_gap@10:diverse"


def _value(row: dict, metric: str):
    """``row[metric]``, or the absolute value of ``row[name]`` for ``metric = "|name|"``."""
    if metric.startswith("|"):
        v = row.get(metric.strip("|"))
        return None if v is None else abs(v)
    return row.get(metric)


def _finite_mean(values) -> float:
    """Mean of the finite entries of ``values`` (``None`` skipped); NaN when there are none."""
    a = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(a) / len(a) if a else float("nan")


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def contrasts(rows) -> list:
    """Per budget and criterion, the best design against the runner-up, paired by seed.

    Criteria: ``recall@10`` and ``ndcg@10`` (higher wins) and the popularity metric's
    distance from its reference, ``|excess_arp@10|`` (0 = the oracle's popularity), or
    ``|delta_gap@10:diverse|`` without a truth (0 = the users' profiles); smaller wins. Each
    entry: ``{"budget", "metric", "best", "runner_up", "difference"}`` with ``metric`` as
    named here (``"|excess_arp@10|"``) and ``difference`` the
    :func:`~embtab.experiments.intervals.interval` of best − runner-up over seeds. Budgets with
    fewer than two designs get none.
    """
    mf = [r for r in rows if r.get("model") == "mf"]
    out = []
    pop = _pop_metric(rows)
    for b in sorted({r["budget"] for r in mf}):
        at = [r for r in mf if r["budget"] == b]
        names = list(dict.fromkeys(r["design"] for r in at))
        if len(names) < 2:
            continue
        for metric, sign in (("recall@10", 1.0), ("ndcg@10", 1.0), (f"|{pop}|", -1.0)):
            per = {d: {r["seed"]: _value(r, metric) for r in at if r["design"] == d}
                   for d in names}
            # rank on the seeds where every design has a value (the pairs the difference is
            # taken over), or each design's own finite seeds when no seed has them all
            common = [s for s in set.intersection(*(set(per[d]) for d in names))
                      if all(_finite(per[d][s]) for d in names)]
            means = {d: _finite_mean([per[d][s] for s in common] if common
                                     else per[d].values()) for d in names}
            # designs without a finite value rank last (their mean is undefined)
            ranked = sorted(names, key=lambda d: (not math.isfinite(means[d]),
                                                  -sign * means[d] if math.isfinite(means[d])
                                                  else 0.0))
            best, second = ranked[0], ranked[1]
            diffs = [per[best][s] - per[second][s] for s in per[best]
                     if s in per[second] and per[best][s] is not None
                     and per[second][s] is not None]
            out.append({"budget": b, "metric": metric, "best": best, "runner_up": second,
                        "difference": interval(diffs)})
    return out


def findings(results: dict) -> list:
    """The "what it shows" sentences, computed from the numbers: per budget, which design wins
    on accuracy and on excess popularity where the interval of its difference to the runner-up
    excludes 0 (else: not separated); the mechanism's matched exposure differences."""
    out = []
    for c in results.get("contrasts", []):
        metric, d = c["metric"], c["difference"]
        lower = metric.startswith("|")
        what = (f"popularity closest to the {'oracle' if 'excess' in metric else 'profiles'} "
                f"({metric} smaller)") if lower else metric
        subject = (f"At budget {c['budget']:g}×, {c['best']} against {c['runner_up']} "
                   f"({metric})")
        if d["n"] == 0 or not _finite(d["mean"]):
            out.append(f"{subject}: the difference is undefined (no seed has a finite value "
                       "for both designs).")
            continue
        # bounds saved as null (a contrast with no spread, reloaded from JSON) are no interval
        if d["n"] < 2 or not (_finite(d.get("ci95_low")) and _finite(d.get("ci95_high"))):
            seeds = "one seed" if d["n"] == 1 else f"{d['n']} seeds"
            out.append(f"{subject}: {d['mean']:+.4f} on {seeds}, no interval.")
            continue
        # best − runner-up: above 0 is better for accuracy, below 0 for a distance
        better = d["ci95_high"] < 0 if lower else d["ci95_low"] > 0
        worse = d["ci95_low"] > 0 if lower else d["ci95_high"] < 0
        verdict = (f"{c['best']} wins on {what}" if better else
                   f"{c['runner_up']} wins on {what}" if worse else
                   f"{c['best']} and {c['runner_up']} are not separated on {what}")
        # the bound that excludes 0 printed with the decimals it needs not to read as 0
        out.append(f"{subject}: difference {ci_text(d, '+.4f', ref=0.0)}, so {verdict}.")
    for e in results.get("summary", []):
        if e.get("model") != "mechanism" or "exposure_diff" not in e:
            continue
        g = e["group"]
        out.append(direction_sentence(
            e["exposure_diff"], f"At budget {e['budget']:g}× ({e['design']}), {g} items that "
            f"share a row with a head item", "are shown more often than matched " + g +
            " items that do not", "are shown less often than matched " + g +
            " items that do not", metric="exposure difference"))
    return out


# plots and report ///////////////////////////////////////////////////////////////////////////


def _xy(ax, entries, xm, ym, **kw):
    pts = [e for e in entries if xm in e and ym in e]
    for e in pts:
        x, y = e[xm], e[ym]

        def half(s):
            lo, hi = s.get("ci95_low"), s.get("ci95_high")
            if lo is None or not math.isfinite(lo):
                return [[0.0], [0.0]]
            return [[s["mean"] - lo], [hi - s["mean"]]]

        ax.errorbar([x["mean"]], [y["mean"]], xerr=half(x), yerr=half(y), marker="o",
                    capsize=3, label=e["design"], **kw)
    return pts


def _front(entries, xm, ym, x_lower: bool):
    """The non-dominated designs (higher ym; lower or higher xm), sorted by xm."""
    pts = [(e[xm]["mean"], e[ym]["mean"]) for e in entries if xm in e and ym in e]
    sign = 1.0 if x_lower else -1.0
    front = [p for p in pts if not any(
        (sign * q[0] <= sign * p[0] and q[1] >= p[1]) and q != p for q in pts)]
    return sorted(front)


def plot_budget(results: dict, budget: float, path) -> Path:
    """Pareto panels at one budget: recall@10 and ndcg@10 against the popularity metric and
    against tail exposure (tail_share@10), each design a point with 95% interval bars, the
    non-dominated ones joined, the oracle and baselines as references."""
    plt = pyplot()
    summ = results["summary"]
    mf = [e for e in summ if e.get("model") == "mf" and e.get("budget") == budget]
    refs = [e for e in summ if e.get("model") in ("oracle", "most_popular", "random")]
    pop = _pop_metric(results["rows"])
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = [(pop, "recall@10", True), (pop, "ndcg@10", True),
              ("tail_share@10", "recall@10", False), ("tail_share@10", "ndcg@10", False)]
    for ax, (xm, ym, lower) in zip(axes, panels):
        for j, e in enumerate(mf):
            _xy(ax, [e], xm, ym, color=f"C{j}")
        front = _front(mf, xm, ym, lower)
        if len(front) > 1:
            ax.plot(*zip(*front), color="gray", linewidth=1, zorder=0)
        for e in refs:
            if xm in e and ym in e:
                ax.plot(e[xm]["mean"], e[ym]["mean"], marker="x", color="black")
                ax.annotate(e["model"].replace("_", "-"), (e[xm]["mean"], e[ym]["mean"]),
                            fontsize=7)
        ax.set_xlabel(xm + (" (lower: less popular)" if lower else " (higher: more tail)"),
                      fontsize=8)
        ax.set_ylabel(ym, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"E2 designs at budget {budget:g}× the d={REFERENCE_DIM} cuckoo model "
                 f"({results['config']['reference_bytes']:,} B) — "
                 f"{results['dataset'].get('spec')} ({len(results['config']['seeds'])} seeds, "
                 "95% intervals)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_mechanism(results: dict, path) -> Path:
    """Matched exposure difference (sharing a row with a head item minus not), tail and head,
    per budget and design, with 95% intervals."""
    plt = pyplot()
    mech = [e for e in results["summary"] if e.get("model") == "mechanism"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, metric, title in ((axes[0], "exposure_diff", "exposure (share of top-10 lists)"),
                              (axes[1], "rank_diff", "mean percentile rank (0 = top)")):
        labels = []
        for j, g in enumerate(("tail", "head")):
            es = [e for e in mech if e["group"] == g and metric in e]
            xs = np.arange(len(es)) + 0.15 * (j - 0.5)
            ys = [num(e[metric]["mean"]) for e in es]
            err = [[0.0 if not math.isfinite(num(e[metric]["ci95_low"])) else
                    num(e[metric]["mean"]) - num(e[metric]["ci95_low"]) for e in es],
                   [0.0 if not math.isfinite(num(e[metric]["ci95_high"])) else
                    num(e[metric]["ci95_high"]) - num(e[metric]["mean"]) for e in es]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=g, color=f"C{j}")
            labels = [f"{e['design']}\n{e['budget']:g}×" for e in es]
        ax.axhline(0.0, color="gray", linewidth=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"{title}: sharing − alone, matched by decile", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E2 budget's plots: one Pareto figure per budget, and the mechanism."""
    out = Path(out_dir)
    paths = [plot_budget(results, b, out / f"{prefix}budget_{_tag(b)}.png")
             for b in results["config"]["budgets"]
             if any(r.get("budget") == b and r["model"] == "mf" for r in results["rows"])]
    if any(r["model"] == "mechanism" for r in results["rows"]):
        paths.append(plot_mechanism(results, out / f"{prefix}budget_mechanism.png"))
    return paths


def _tag(b: float) -> str:
    return f"{b:g}".replace(".", "p").replace("/", "_")


def section(results: dict, plots=()) -> list:
    """E2 budget's report section (Markdown lines)."""
    cfg = results["config"]
    summ = results["summary"]
    pop = _pop_metric(results["rows"])
    lines = ["## E2 — table designs at equal memory", "", dataset_line(results), "",
             f"Budgets are fractions of the reference (d = {REFERENCE_DIM} cuckoo tables for "
             f"all IDs: {cfg['reference_bytes']:,} bytes = weights + index + Adam state). "
             + ("lr, l2, epochs tuned per (budget, design, seed) over "
                f"{cfg['tuning_grid']}" + untuned_note(results["rows"]) + "."
                if cfg.get("tuned") else "Training as above.")
             + " " + CI_NOTE, ""]
    byd = {(r["budget"], r["design"]): r for r in results["rows"] if r["model"] == "mf"}
    cols = ["recall@10", "ndcg@10", pop, "tail_share@10", "delta_gap@10:niche"]
    head = ["budget", "design", "table", "d", "bytes (w/i/o)", "batch"] + cols
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summ:
        if e.get("model") in ("oracle", "most_popular", "random"):
            lines.append("| – | " + e["model"].replace("_", "-") + " | | | | | "
                         + " | ".join(fmt_ci(e.get(m), 4, metric=m) for m in cols) + " |")
    for e in summ:
        if e.get("model") != "mf":
            continue
        r = byd[(e["budget"], e["design"])]
        lines.append(
            f"| {e['budget']:g}× | {e['design']} | {r['table']} | {r['dim']} | "
            f"{r['bytes_total']:,} ({r['bytes_weights']:,}/{r['bytes_index']:,}/"
            f"{r['bytes_optimizer']:,}) | {r['batch_size']} | "
            + " | ".join(fmt_ci(e.get(m), 4, metric=m) for m in cols) + " |")
    if results.get("skipped"):
        lines += ["", "Not run: " + "; ".join(
            f"{s['design']} at {s['budget']:g}× ({s['reason']})" for s in results["skipped"])
            + "."]
    mech = [e for e in summ if e.get("model") == "mechanism"]
    if mech:
        lines += ["", "**Mechanism.** Items sharing a row with a head item against items that "
                  "do not, matched within training-popularity deciles (difference sharing − "
                  "alone):", "",
                  "| budget | design | group | share sharing | exposure diff | rank diff |",
                  "|---|---|---|---|---|---|"]
        for e in mech:
            lines.append(f"| {e['budget']:g}× | {e['design']} | {e['group']} | "
                         f"{fmt_ci(e.get('sharing_share'), 3, metric='sharing_share')} | "
                         f"{fmt_ci(e.get('exposure_diff'), 4, metric='exposure_diff')} | "
                         f"{fmt_ci(e.get('rank_diff'), 4, metric='rank_diff')} |")
    return finish_section(lines, findings(results), results, plots)


register(Experiment("budget", "E2", "table designs compared at equal memory (bytes)",
                    run_budget, section, plot))
