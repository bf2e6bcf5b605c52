"""E2 ``stream``: item-table designs on a stream where IDs keep arriving (Monolith).

The time line is cut into windows (:func:`embtab.data.time_windows`). Every design starts from
empty tables with the same number of item rows, ``start_rows`` (default: the distinct items of
window 0), and is trained online (:class:`embtab.train.OnlineTrainer`): one pass over window w,
then evaluated on window w + 1. Designs of the item table (users: a growing collisionless table
in every design, so only the item table differs, as in E2 ``collisions``):

==================  ==========================================================================
``hashed``          the hashing trick with ``start_rows`` rows, fixed
``cuckoo-grow``     collisionless, grows as new items arrive
``cuckoo-lru``      collisionless, capped at ``start_rows`` rows, evicts the least recently used
``cuckoo-lfu``      collisionless, capped at ``start_rows`` rows, evicts the least often used
``cuckoo-expire``   collisionless, grows, and gives back the row of an item not looked up for
                    ``expire_windows`` windows' worth of steps (``expire_after``)
==================  ==========================================================================

Evaluation of window w + 1 (docs/experiments.md, "E2 stream", states every choice): the users
who have interactions in windows <= w; candidates are the items seen in windows <= w, each
user's earlier items masked; the test items are the user's window-(w + 1) interactions on
candidate items. On a :func:`embtab.data.power_law_stream` data set the oracle is the top-10 by
the truth at window w + 1 (:meth:`embtab.data.StreamTruth.at`) over the same candidates, and
``excess_arp@10`` is measured against it; on real data the reference is the users' own
profiles (``delta_gap@10:all``). Per row also the item table's collision shares
(:func:`collision_shares`), rows in use and bytes (:func:`item_table_bytes`).

An **empty window** (equal-width windows over real timestamps: a gap, an outlying timestamp)
is skipped: nothing is trained on it and it is not evaluated; the next non-empty window is
evaluated after training on every non-empty window before it. ``config`` records
``empty_windows`` and ``evaluated_windows`` and the report names the empty ones; fewer than 2
non-empty windows is a ``ValueError`` up front. A user with fewer than 10 candidates gets a
shorter list, padded with -1 (docs/metrics.md, "Short lists").
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embtab import metrics
from embtab._research import K, topk_indices
from embtab.data import Interactions, RowSets, StreamTruth, load_dataset, time_windows
from embtab.experiments.dims import fmt_ci
from embtab.experiments.intervals import CI_NOTE, direction_sentence, interval, summary_with_intervals
from embtab.experiments.plots import pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.report import finish_section
from embtab.experiments.session import Progress, check_enough_items, choice_sweep, seed_list
from embtab.experiments.truth import total_relevance
from embtab.train import OnlineTrainer, TrainConfig, score_matrix, table_bytes

__all__ = ["DEFAULT_DATASET", "DESIGNS", "QUICK_DATASET", "collision_shares", "contrasts",
           "findings", "item_table_bytes", "plot", "run_stream", "section"]

#: The item-table designs compared (module docstring).
DESIGNS = ("hashed", "cuckoo-grow", "cuckoo-lru", "cuckoo-lfu", "cuckoo-expire")

#: The stream of a full run: 2,000 users and 3,000 items over 8 windows (~95,000 interactions).
DEFAULT_DATASET = "stream"

#: The stream of ``quick=True``: 600 users and 900 items over 5 windows (~17,700 interactions).
QUICK_DATASET = "stream:n_users=600,n_items=900,n_windows=5"

#: Windows a real data set (no window count of its own) is cut into, and with ``quick=True``.
REAL_WINDOWS, QUICK_REAL_WINDOWS = 8, 5

#: Pairs per optimizer step (unless ``start_rows // 2`` is smaller).
BATCH_SIZE = 128

#: The designs the fixed table's degradation is measured against (reference, fixed).
REFERENCE, FIXED = "cuckoo-grow", "hashed"


# collisions //////////////////////////////////////////////////////////////////////////////////


def collision_shares(rows, lookups) -> dict:
    """How much a table's IDs share rows, by distinct ID and weighted by lookups.

    Parameters
    ----------
    rows : int array [n]
        The row of each of n distinct IDs (the table's ``lookup``); -1 for an ID without a
        row (evicted, expired, never admitted).
    lookups : array [n] of numbers >= 0
        How often each ID is looked up (e.g. its interactions in the evaluated window).

    Returns
    -------
    dict
        ``collision_id_share``: share of the n IDs whose row holds another of the IDs;
        ``collision_lookup_share``: share of the lookups that go to such an ID (NaN when there
        are no lookups); ``no_row_id_share`` and ``no_row_lookup_share``: the same for IDs
        without a row; ``rows_in_use``: distinct rows holding at least one of the IDs.

    Example::

        >>> # IDs a, b share row 0; c has row 1; d has none. Lookups 5, 1, 3, 1.
        >>> r = collision_shares([0, 0, 1, -1], [5, 1, 3, 1])
        >>> r["collision_id_share"], r["collision_lookup_share"], r["no_row_id_share"]
        (0.5, 0.6, 0.25)
        >>> r["rows_in_use"]
        2
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    w = np.asarray(lookups, dtype=np.float64).ravel()
    if rows.shape != w.shape:
        raise ValueError(f"rows and lookups differ in shape: {rows.shape} vs {w.shape}")
    if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
        raise ValueError("lookups must be finite numbers >= 0")
    has = rows >= 0
    used, counts = np.unique(rows[has], return_counts=True)
    shared = np.zeros(rows.size, dtype=bool)
    shared[has] = counts[np.searchsorted(used, rows[has])] > 1
    n, total = rows.size, w.sum()
    share = (lambda m: float(w[m].sum() / total)) if total > 0 else (lambda m: float("nan"))
    return {"collision_id_share": float(shared.mean()) if n else float("nan"),
            "collision_lookup_share": share(shared),
            "no_row_id_share": float((~has).mean()) if n else float("nan"),
            "no_row_lookup_share": share(~has),
            "rows_in_use": int(used.size)}


# the windows //////////////////////////////////////////////////////////////////////////////////


@dataclass
class _Eval:
    """What evaluating window ``window`` needs, the same for every design and seed."""

    window: int
    history: Interactions           # windows < window (masks, popularity)
    users: np.ndarray               # evaluated users: those with history
    train_rows: RowSets             # their history [len(users), I]
    test_rows: RowSets              # their window interactions on known items
    known: np.ndarray               # bool [I]: items seen before the window (the candidates)
    lookups: np.ndarray             # interactions of the window per known item
    recent: np.ndarray              # interactions of the previous window per item
    oracle: np.ndarray | None
    relevance: np.ndarray | None
    groups: np.ndarray


def _evals(data: Interactions, win: np.ndarray, n_windows: int) -> list:
    """The evaluations of the non-empty windows 1 .. n_windows − 1 (an empty one is skipped)."""
    truth = data.truth if isinstance(data.truth, StreamTruth) else None
    sizes = np.bincount(win, minlength=n_windows)
    out = []
    for w in range(1, n_windows):
        if sizes[w] == 0 or sizes[:w].sum() == 0:      # nothing to test, or nothing trained
            continue
        history = data.subset(win < w)
        users = np.flatnonzero(np.bincount(history.users, minlength=data.n_users) > 0)
        known = np.bincount(history.items, minlength=data.n_items) > 0
        now = (win == w) & known[data.items]
        test = data.subset(now)
        train_rows = history.user_items().take_rows(users)
        ev = _Eval(w, history, users, train_rows, test.user_items().take_rows(users), known,
                   np.bincount(data.items[now], minlength=data.n_items)[known],
                   np.bincount(data.items[win == w - 1], minlength=data.n_items), None, None,
                   metrics.user_groups(train_rows))
        if truth is not None and users.size:
            wt = truth.at(w, users=users, items=known)
            ev.oracle = metrics.oracle_topk(wt, train_rows, K, candidates=known)
            ev.relevance = total_relevance(wt)
        out.append(ev)
    return out


# _LOPSIDED: the share of the interactions in one window above which the stream warns that an
# outlying timestamp may have stretched the equal-width windows
_LOPSIDED = 0.9


def _check_measurable(evals: list, counts: np.ndarray, spec: str, data: Interactions,
                      win: np.ndarray) -> None:
    """ValueError when no evaluated window has a user with history and a test item (every
    metric would be undefined); a warning when one window holds nearly every interaction.

    The refusal's hint follows the cause the counts show: windows that are lopsided (one
    holds more than :data:`_LOPSIDED` of the interactions) point at an outlying timestamp;
    otherwise no user comes back in a later window (each user's interactions all lie in one
    window), or those who do take only items new in that window."""
    where = f"data set {spec!r} cut into {len(counts)} equal-width time windows " \
            f"(interactions per window: {counts.tolist()})"
    total = int(counts.sum())
    lopsided = bool(total and counts.max() > _LOPSIDED * total)
    if len(counts) > 2 and lopsided:
        warnings.warn(f"{where}: window {int(counts.argmax())} holds "
                      f"{counts.max() / total:.1%} of them, so the others train or test on "
                      "little; an outlying timestamp stretches equal-width windows (drop it, "
                      "or use fewer windows)", stacklevel=3)
    if any(bool((np.diff(ev.test_rows.indptr) > 0).any()) for ev in evals):
        return
    head = (f"{where} leaves nothing to measure: no window after the first holds an "
            "interaction of a user seen before on an item seen before.")
    if lopsided:
        raise ValueError(f"{head} One timestamp far from the others puts nearly every "
                         "interaction in one window: drop outlying timestamps, or use fewer "
                         "windows")
    # the windows are even: who comes back, and on what
    first = np.full(data.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, data.users, win)
    later = win > first[data.users]                 # an interaction after the user's first window
    back = int(np.unique(data.users[later]).size)
    if back == 0:
        raise ValueError(f"{head} No user has interactions in two windows: each user's "
                         f"interactions all lie in one window (of the {data.n_users} users), "
                         "so no window tests a user it trained; use fewer windows, or data "
                         "whose users come back over time")
    raise ValueError(f"{head} The {back} of the {data.n_users} users who come back in a later "
                     "window take only items new in that window (none seen in an earlier "
                     "one), which no model can have trained; use fewer windows")


def _list_metrics(top: np.ndarray, ev: _Eval, data: Interactions) -> dict:
    out = metrics.evaluate(top, ev.train_rows, ev.test_rows, data.item_genres, k=K)
    out.update(metrics.truth_metrics(top, ev.train_rows, ev.oracle, ev.relevance, ev.groups,
                                     k=K))
    out[f"delta_gap@{K}:all"] = metrics.delta_gap_at_k(
        top, ev.train_rows, np.zeros(ev.users.size, np.int64), k=K)["niche"]
    return out


def _masked_top(scores: np.ndarray, ev: _Eval) -> np.ndarray:
    """Top-10 of ``scores`` [len(users), I] over the known items, history masked; a user with
    fewer than 10 candidates gets a shorter list, padded with -1 (docs/metrics.md)."""
    s = np.array(scores, dtype=np.float64)
    s[:, ~ev.known] = -np.inf
    sub = ev.train_rows
    s[sub.row_ids(), sub.indices] = -np.inf
    return topk_indices(s, K)


# designs ///////////////////////////////////////////////////////////////////////////////////////


#: Each design as the :class:`embtab.train.TrainConfig` fields of its item table
#: (``expire_after=None`` is replaced by the run's ``expire_after``).
DESIGN_FIELDS = {
    "hashed": {"table": "hashed"},
    "cuckoo-grow": {"table": "cuckoo", "on_full": "grow"},
    "cuckoo-lru": {"table": "cuckoo", "on_full": "evict_lru"},
    "cuckoo-lfu": {"table": "cuckoo", "on_full": "evict_lfu"},
    "cuckoo-expire": {"table": "cuckoo", "on_full": "grow", "expire_after": None},
}


def _trainer(design: str, cfg: TrainConfig, start_rows: int, user_rows: int,
             expire_after: int) -> OnlineTrainer:
    """A trainer over the empty tables of ``design`` (:meth:`OnlineTrainer.empty`)."""
    fields = {k: (expire_after if k == "expire_after" else v)
              for k, v in DESIGN_FIELDS[design].items()}
    return OnlineTrainer.empty(TrainConfig(**{**cfg.to_dict(), **fields}), user_rows,
                               start_rows)


def item_table_bytes(trainer: OnlineTrainer) -> dict:
    """Bytes of the trainer's item table: ``bytes_weights`` and ``bytes_index`` as
    :func:`embtab.train.table_bytes` counts them (parameters; ID map, policy state, native
    cuckoo index), ``bytes_optimizer`` (a fused optimizer's state plus the trainer's torch
    optimizer state for the table's parameters: Adam keeps two values per weight and a step)
    and ``bytes``, their sum."""
    items = trainer.model.items
    b = table_bytes(items)
    params = set(map(id, items.parameters()))
    outer = sum(v.nbytes for p, st in trainer.optimizer.state.items() if id(p) in params
                for v in st.values() if isinstance(v, torch.Tensor))
    opt = b["optimizer"] + outer
    return {"bytes": int(b["weights"] + b["index"] + opt), "bytes_weights": int(b["weights"]),
            "bytes_index": int(b["index"]), "bytes_optimizer": int(opt)}


def _table_stats(trainer: OnlineTrainer, data: Interactions, ev: _Eval) -> dict:
    items = trainer.model.items
    ids = torch.from_numpy(data.item_ids[ev.known].view(np.int64))
    out = collision_shares(items.lookup(ids).numpy(), ev.lookups)
    out["table_rows"] = int(items.num_embeddings)
    out.update(item_table_bytes(trainer))
    out["known_items"] = int(ev.known.sum())
    return out


# run //////////////////////////////////////////////////////////////////////////////////////////


def _stream_data(dataset, quick: bool, session):
    if isinstance(dataset, Interactions):
        return dataset, dataset.name
    if dataset in ("synthetic", "stream"):
        dataset = QUICK_DATASET if quick else DEFAULT_DATASET
    if session is not None and getattr(session, "spec", None) == dataset:
        return session.data, dataset
    return load_dataset(dataset, seed=0), dataset


def run_stream(dataset: str | Interactions = DEFAULT_DATASET, seeds=5, *,
               n_windows: int | None = None, dim: int = 32, designs: Sequence[str] = DESIGNS,
               start_rows: int | None = None, expire_windows: float = 2.0,
               batch_size: int | None = None, quick: bool = False,
               train_overrides: dict | None = None, progress: bool = True,
               session=None) -> dict:
    """E2 stream: item-table designs trained online over time windows (module docstring).

    Parameters
    ----------
    dataset : str or Interactions
        ``"stream[:key=value,...]"`` (:func:`embtab.data.power_law_stream`; ``"synthetic"``
        and ``"stream"`` mean :data:`DEFAULT_DATASET`, or :data:`QUICK_DATASET` with
        ``quick``), ``"movielens:PATH"`` or ``"interactions:PATH"`` with a timestamp column.
        A ``synthetic:`` data set is refused: its timestamps are each user's consumption
        order, not a shared time line.
    seeds : int or sequence of int
        Seed s seeds the tables (init, hashing), the shuffling and the negatives; the data
        set is the same for every seed.
    n_windows : int, optional
        Default: the stream's own; :data:`REAL_WINDOWS` (:data:`QUICK_REAL_WINDOWS` with
        ``quick``) for real data, where it must not exceed the number of interactions.
    dim : int
        Embedding dimension of every table.
    designs : sequence of str
        Distinct names of :data:`DESIGNS`.
    start_rows : int, optional
        Item rows every design starts with (default: the distinct items of window 0, at least 2).
    expire_windows : float > 0
        ``cuckoo-expire``: ``expire_after`` = round(expire_windows × mean optimizer steps per
        trained window).
    batch_size : int, optional
        Pairs per step. Default :data:`BATCH_SIZE`, or ``start_rows // 2`` when smaller (a
        capped table must hold the up to 2 × batch_size items of a batch).
    quick : bool
        The small default stream (and 5 windows on real data).
    train_overrides : dict, optional
        :class:`embtab.train.TrainConfig` fields (lr, l2, optimizer, init_std).
    progress, session
        As the other experiments (``session.data`` is used when its spec is this one).

    Returns
    -------
    dict
        The results object (docs/results-schema.md, "E2 stream"): ``rows`` per (model,
        design, window, seed), ``summary`` with intervals, ``contrasts``.
    """
    t0 = time.perf_counter()
    designs = choice_sweep(designs, "designs", DESIGNS, "design")
    if not (expire_windows > 0 and math.isfinite(expire_windows)):
        raise ValueError(f"expire_windows must be a finite number > 0; got {expire_windows!r}")
    seeds = seed_list(seeds)
    data, spec = _stream_data(dataset, quick, session)
    if train_overrides is None and session is not None:
        train_overrides = getattr(session, "overrides", None)
    if data.truth is not None and not isinstance(data.truth, StreamTruth):
        raise ValueError(f"data set {spec!r} has no time line (a synthetic data set's "
                         "timestamps are each user's consumption order); use a 'stream:...' "
                         "data set, or real data with timestamps")
    check_enough_items(data)
    if isinstance(data.truth, StreamTruth) and n_windows is not None \
            and n_windows != data.truth.n_windows:
        # the oracle reads the truth of each generated window: another cut would pair a window
        # of interactions with the truth of another
        raise ValueError(f"n_windows must be None or the stream's own {data.truth.n_windows} "
                         f"for a synthetic stream (its truth is per generated window); got "
                         f"{n_windows!r}")
    if n_windows is None and not isinstance(data.truth, StreamTruth):
        n_windows = QUICK_REAL_WINDOWS if quick else REAL_WINDOWS
    win = time_windows(data, n_windows)
    W = int(data.truth.n_windows if n_windows is None else n_windows)
    if W < 2:
        raise ValueError(f"the stream needs n_windows >= 2 (train on one, test on the next); "
                         f"got {W}")
    if W > max(data.n_interactions, 2):   # (every window is listed: 2**62 ran out of memory)
        raise ValueError(f"n_windows must be at most the {data.n_interactions} interactions "
                         f"of data set {spec!r} (more windows than interactions are empty by "
                         f"construction); got {W}")
    counts = np.bincount(win, minlength=W)
    empty = [int(w) for w in np.flatnonzero(counts == 0)]
    if W - len(empty) < 2:
        raise ValueError(f"data set {spec!r} cut into {W} equal-width time windows has "
                         f"{W - len(empty)} non-empty window(s) (interactions per window: "
                         f"{counts.tolist()}); the stream needs at least 2 (train on one, test "
                         "on a later one): use fewer windows, or drop outlying timestamps")
    first = win == 0
    n0 = int(np.unique(data.items[first]).size)
    if start_rows is not None and (isinstance(start_rows, bool) or not isinstance(
            start_rows, (int, np.integer)) or start_rows < 1):
        raise ValueError(f"start_rows must be an integer >= 1; got {start_rows!r}")
    # (by default at least 2: a batch of 1 reads 2 rows, which a capped table must hold; a
    # first window with a single item was refused with advice the CLI cannot follow)
    rows0 = int(start_rows) if start_rows is not None else max(n0, 2)
    if batch_size is None:
        batch_size = max(1, min(BATCH_SIZE, rows0 // 2))
    cfg0 = TrainConfig(**{**(train_overrides or {}), "dim": int(dim),
                          "batch_size": int(batch_size)})
    if rows0 < 2 * cfg0.batch_size and any(d in ("cuckoo-lru", "cuckoo-lfu") for d in designs):
        raise ValueError(f"start_rows = {rows0} is below the 2 x batch_size = "
                         f"{2 * cfg0.batch_size} items a batch may read, which a capped table "
                         "must hold; lower batch_size or raise start_rows")
    user_rows = int(np.unique(data.users[first]).size)
    sizes = counts[:W - 1]
    steps = np.ceil(sizes[sizes > 0] / cfg0.batch_size)      # the trained (non-empty) windows
    expire_after = max(1, int(round(expire_windows * float(steps.mean()))))
    evals = _evals(data, win, W)
    _check_measurable(evals, counts, spec, data, win)
    windows = [data.subset(win == w) for w in range(W - 1)]
    negatives = [data.item_ids[np.unique(x.items)] for x in windows]

    rows: list = []
    bar = Progress(len(seeds) * len(designs), "E2 stream", progress)
    for seed in seeds:
        rng = np.random.default_rng([seed, 7])
        for ev in evals:
            base = {"seed": seed, "window": ev.window, "users": int(ev.users.size)}
            if ev.oracle is not None:
                rows.append({"model": "oracle", **base, **_list_metrics(ev.oracle, ev, data)})
            for name, scores in (("most_popular_recent", np.tile(
                    ev.recent - np.arange(data.n_items) / (data.n_items + 1.0),
                    (ev.users.size, 1))), ("random", rng.random((ev.users.size,
                                                                  data.n_items)))):
                rows.append({"model": name, **base,
                             **_list_metrics(_masked_top(scores, ev), ev, data)})
        for design in designs:
            cfg = TrainConfig(**{**cfg0.to_dict(), "seed": seed})
            trainer = _trainer(design, cfg, rows0, user_rows, expire_after)
            trained, loss = 0, float("nan")  # windows < trained are done; empty ones skipped
            for ev in evals:
                for w in range(trained, ev.window):
                    if sizes[w]:
                        loss = trainer.train_window(windows[w], negatives[w])
                trained = ev.window
                scores = score_matrix(trainer.model, ev.history, ev.users,
                                      exclude_train=False).numpy()
                top = _masked_top(scores, ev)
                rows.append({"model": "mf", "design": design, "seed": seed,
                             "window": ev.window, "users": int(ev.users.size),
                             "train_loss": loss, **_list_metrics(top, ev, data),
                             **_table_stats(trainer, data, ev)})
            bar.tick()
    bar.close()
    summary = summary_with_intervals(rows, ("model", "design", "window"),
                                     skip=("seed", "users"))
    config = {"designs": list(designs), "seeds": seeds, "n_windows": W, "dim": int(dim),
              "start_rows": rows0, "start_rows_default": start_rows is None,
              "window0_items": n0, "expire_windows": float(expire_windows),
              "expire_after": expire_after, "batch_size": cfg0.batch_size,
              "window_interactions": counts.tolist(), "empty_windows": empty,
              "evaluated_windows": [ev.window for ev in evals],
              "negatives": "uniform over the distinct items of the trained window",
              "users_table": "collisionless cuckoo, grows", "oracle": bool(
                  isinstance(data.truth, StreamTruth)), "k": K,
              "train": {k: v for k, v in cfg0.to_dict().items()
                        if k not in ("dim", "table", "rows_per_id", "seed", "epochs")},
              "seconds": round(time.perf_counter() - t0, 2)}
    res = {"experiment": "stream", "dataset": {**data.summary(), "spec": spec},
           "config": config, "rows": rows, "summary": summary}
    res["contrasts"] = contrasts(rows, designs)
    return res


# contrasts and sentences ////////////////////////////////////////////////////////////////////////


def excess_metric(rows) -> str:
    """``excess_arp@10`` when the rows have an oracle reference, else ``delta_gap@10:all``."""
    return f"excess_arp@{K}" if any(f"excess_arp@{K}" in r for r in rows) else \
        f"delta_gap@{K}:all"


def contrasts(rows, designs) -> dict:
    """The fixed hashed table against the growing cuckoo table, paired by seed.

    For m in recall@10 and the excess metric (:func:`excess_metric`): per window the interval
    of m(cuckoo-grow) − m(hashed) over seeds, and ``drift``, the interval of that difference
    at the last window minus at the first (> 0 for recall: the hashed table falls further
    behind over the stream); ``drift`` is None when only one window is evaluated (nothing to
    compare it with). Empty when either design is missing.
    """
    if REFERENCE not in designs or FIXED not in designs:
        return {}
    mf = {(r["design"], r["window"], r["seed"]): r for r in rows if r.get("model") == "mf"}
    windows = sorted({w for _, w, _ in mf})
    seeds = sorted({s for _, _, s in mf})
    out: dict = {"reference": REFERENCE, "fixed": FIXED, "first_window": windows[0],
                 "last_window": windows[-1], "metrics": {}}
    for m in (f"recall@{K}", excess_metric(rows)):
        diff = {w: [_sub((mf.get((REFERENCE, w, s)) or {}).get(m),
                         (mf.get((FIXED, w, s)) or {}).get(m))
                    for s in seeds] for w in windows}   # a missing row pairs nothing
        drift = [_sub(b, a) for a, b in zip(diff[windows[0]], diff[windows[-1]])]
        out["metrics"][m] = {"per_window": [{"window": w, "difference": interval(diff[w])}
                                            for w in windows],
                             "drift": interval(drift) if len(windows) > 1 else None}
    return out


def _sub(a, b):
    return None if a is None or b is None else a - b


def findings(results: dict) -> list:
    """The report's sentences; a direction only where its 95% interval excludes 0."""
    c = results.get("contrasts") or {}
    if not c:
        return []
    w0, w1 = c["first_window"], c["last_window"]
    rec, exc = f"recall@{K}", [m for m in c["metrics"] if m != f"recall@{K}"][0]
    mr, me = c["metrics"][rec], c["metrics"][exc]
    last = {m: c["metrics"][m]["per_window"][-1]["difference"] for m in (rec, exc)}
    first = {m: c["metrics"][m]["per_window"][0]["difference"] for m in (rec, exc)}
    two = w0 != w1                  # one evaluated window: no first-vs-last, no drift
    out = [direction_sentence(stat, f"At window {w}, the growing cuckoo table",
                              "is more accurate than the fixed hashed table",
                              "is less accurate than the fixed hashed table",
                              metric=f"{rec}(cuckoo-grow) − {rec}(hashed)")
           for w, stat in ([(w0, first[rec])] if two else []) + [(w1, last[rec])]]
    if two and mr["drift"] is not None:
        out.append(direction_sentence(
            mr["drift"], f"From window {w0} to {w1}, the fixed hashed table",
            "loses ground to the growing cuckoo table (cuckoo − hashed recall rises)",
            "gains ground on the growing cuckoo table (cuckoo − hashed recall falls)",
            metric=f"gap(window {w1}) − gap(window {w0})"))
    out.append(direction_sentence(last[exc], f"At window {w1}, the growing cuckoo table's lists",
                                  "are more popular than the hashed table's",
                                  "are less popular than the hashed table's",
                                  metric=f"{exc}(cuckoo-grow) − {exc}(hashed)"))
    if two and me["drift"] is not None:
        out.append(direction_sentence(
            me["drift"], f"From window {w0} to {w1}, the hashed table's lists",
            "become less popular relative to the growing table's",
            "become more popular relative to the growing table's",
            metric=f"{exc} gap(window {w1}) − gap(window {w0})"))
    return out


# plots and report ///////////////////////////////////////////////////////////////////////////////

#: The panels of the plot: (metric, title).
PANELS = ((f"recall@{K}", f"recall@{K}"), (None, "excess popularity"),
          ("collision_lookup_share", "collision share (lookups)"),
          ("collision_id_share", "collision share (distinct IDs)"),
          ("rows_in_use", "item rows in use"), ("bytes", "item table bytes"))


def plot_stream(results: dict, path) -> Path:
    """Metric vs window per design, mean with a 95%-interval band (oracle/baselines dashed)."""
    plt = pyplot()
    summ = results["summary"]
    exc = excess_metric(results["rows"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4))
    for ax, (metric, title) in zip(axes.ravel(), PANELS):
        metric = metric or exc
        for j, design in enumerate(results["config"]["designs"]):
            es = sorted([e for e in summ if e.get("design") == design and metric in e],
                        key=lambda e: e["window"])
            _band(ax, es, metric, color=f"C{j}", label=design)
        if metric in (f"recall@{K}", exc):
            for name, style in (("oracle", "k--"), ("most_popular_recent", "k:"),
                                ("random", "k-.")):
                es = sorted([e for e in summ if e.get("model") == name and metric in e],
                            key=lambda e: e["window"])
                if es:
                    ax.plot([e["window"] for e in es], [e[metric]["mean"] for e in es], style,
                            linewidth=1, label=name.replace("_", "-"))
        ax.set_title(metric if title == "excess popularity" else title, fontsize=9)
        ax.set_xlabel("evaluated window")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"E2 stream — {results['dataset'].get('spec')} "
                 f"({len(results['config']['seeds'])} seeds, start rows "
                 f"{results['config']['start_rows']})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _band(ax, entries, metric, **kw):
    if not entries:
        return
    x = [e["window"] for e in entries]
    y = np.array([e[metric]["mean"] for e in entries], dtype=float)
    lo = np.array([e[metric]["ci95_low"] for e in entries], dtype=float)
    hi = np.array([e[metric]["ci95_high"] for e in entries], dtype=float)
    ax.plot(x, y, marker=".", **kw)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], alpha=0.2, color=kw.get("color"))


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E2 stream's plot: six panels of metric vs window, one line per design."""
    return [plot_stream(results, Path(out_dir) / f"{prefix}stream.png")]


def section(results: dict, plots=()) -> list:
    """The report section: per design the first and last evaluated windows, mean [95% CI]."""
    cfg, summ, d = results["config"], results["summary"], results["dataset"]
    exc = excess_metric(results["rows"])
    windows = sorted({e["window"] for e in summ if "window" in e})
    lines = [f"## E2 — stream: item-table designs as IDs keep arriving (d = {cfg['dim']})", "",
             f"Dataset **{d['name']}** (`{d.get('spec')}`): {d['users']:,} users, "
             f"{d['items']:,} items, {d['interactions']:,} interactions in {cfg['n_windows']} "
             f"time windows ({', '.join(map(str, cfg['window_interactions']))} interactions). "
             f"Online training: one pass over window w (BPR, batch {cfg['batch_size']}, "
             f"negatives {cfg['negatives']}), then evaluation on window w + 1 (users with "
             f"history, candidates = items seen before, history masked). Every design starts "
             f"with {cfg['start_rows']:,} item rows; `cuckoo-expire` frees an item's row after "
             f"{cfg['expire_after']} steps without a lookup. Seeds {cfg['seeds']}; k = 10."
             + _empty_sentence(cfg), "",
             CI_NOTE, ""]
    cols = [f"recall@{K}", exc, "collision_lookup_share", "collision_id_share",
            "no_row_lookup_share", "rows_in_use", "bytes"]
    head = ["model / design", "window"] + cols
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pick = [windows[0], windows[-1]] if windows else []
    order = ([e for e in summ if e.get("model") != "mf"]
             + [e for e in summ if e.get("model") == "mf"])
    for e in order:
        if e.get("window") not in pick:
            continue
        name = e.get("design", e["model"].replace("_", "-"))
        lines.append("| " + " | ".join(
            [name, str(e["window"])] + [_cell(e.get(m), m) for m in cols]) + " |")
    return finish_section(lines, findings(results), results, plots)


def _empty_sentence(cfg: dict) -> str:
    """The report's note on the empty windows of the time line ("" when there are none)."""
    empty = cfg.get("empty_windows") or []
    if not empty:
        return ""
    names = ", ".join(map(str, empty))
    return (f" Window{'s' if len(empty) > 1 else ''} {names} "
            f"{'hold' if len(empty) > 1 else 'holds'} no interactions: nothing is trained on "
            f"{'them' if len(empty) > 1 else 'it'} and {'they are' if len(empty) > 1 else 'it is'}"
            f" not evaluated (evaluated windows: "
            f"{', '.join(map(str, cfg.get('evaluated_windows', [])))}; each after training on "
            "every non-empty earlier window).")


def _cell(stat, metric) -> str:
    if metric in ("rows_in_use", "bytes") and stat and stat.get("mean") is not None \
            and math.isfinite(stat["mean"]):
        return f"{stat['mean']:,.0f}"
    return fmt_ci(stat, metric=metric)


def check_dataset(spec) -> None:
    """``ValueError`` for a ``synthetic:...`` spec (a static data set, with no time line), for
    the runner to call before any data set is generated; the bare ``"synthetic"`` (the CLI's
    default) means this experiment's own stream data set, as in :func:`run_stream`."""
    if isinstance(spec, str) and spec not in ("synthetic", "stream") \
            and spec.partition(":")[0] == "synthetic":
        raise ValueError(f"data set {spec!r} has no time line (a synthetic data set's "
                         "timestamps are each user's consumption order); use a 'stream:...' "
                         "data set, or real data with timestamps")


register(Experiment("stream", "E2", "table designs on a stream where IDs keep arriving",
                    run_stream, section, plot, check_dataset=check_dataset))
