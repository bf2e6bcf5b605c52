"""What the training experiments share: the data set, its splits, the model cache and the rows.

Protocol (docs/experiments.md): the data set is loaded once (synthetic data from seed 0); seed
``s`` draws the per-user random 80/20 train/test split and the model's initialisation, hashing,
shuffling and negatives. Baselines (most-popular, random) get rows for every seed of every
experiment.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence

import numpy as np

from embtab import metrics
from embtab._checks import check_int
from embtab._research import K
from embtab.data import Interactions, load_dataset, train_test_split
from embtab.experiments.truth import TruthReference
from embtab.train import TrainConfig, fit, most_popular, random_topk

__all__ = ["Progress", "Session", "baseline_rows", "check_enough_items", "check_has_test_items",
           "check_sequence",
           "evaluate_lists", "make_result", "overrides_of", "reference_rows", "seed_list",
           "session_for"]


class Session:
    """Caches the data set, splits and trained models across experiments of one run.

    Parameters
    ----------
    dataset : str or Interactions
        A :func:`embtab.data.load_dataset` spec (loaded with seed 0), or a data set.
    train_overrides : dict or None
        :class:`embtab.train.TrainConfig` fields for every model.
    progress : bool
        Progress bars while training.
    """

    def __init__(self, dataset: str | Interactions, train_overrides: dict | None, progress: bool):
        self.data = load_dataset(dataset, seed=0) if isinstance(dataset, str) else dataset
        check_enough_items(self.data)
        check_has_test_items(self.data, dataset if isinstance(dataset, str) else None)
        self.spec = dataset if isinstance(dataset, str) else self.data.name
        self.overrides = dict(train_overrides or {})
        if "epochs" in self.overrides and TrainConfig(**self.overrides).epochs < 1:
            # (TrainConfig takes 0 for an untrained model; an experiment measures trained ones)
            raise ValueError(f"train_overrides epochs={self.overrides['epochs']!r} trains "
                             f"nothing: the experiments compare trained models (epochs >= 1)")
        self.progress = progress
        self._splits: dict = {}
        self._models: dict = {}

    def split(self, seed: int):
        """``(train, test)``: the 80/20 random split of ``seed`` (cached)."""
        if seed not in self._splits:
            self._splits[seed] = train_test_split(self.data, test_fraction=0.2, seed=seed)
        return self._splits[seed]

    def config(self, **kw) -> TrainConfig:
        """The run's training overrides with ``kw`` on top."""
        return TrainConfig(**{**self.overrides, **kw})

    def model(self, cfg: TrainConfig, desc: str):
        """The model trained with ``cfg`` on the split of ``cfg.seed`` (cached)."""
        key = tuple(sorted(cfg.to_dict().items()))
        if key not in self._models:
            train, _ = self.split(cfg.seed)
            self._models[key] = fit(train, cfg, quiet=not self.progress, desc=desc)
        return self._models[key]

    def base_config(self) -> dict:
        """The training configuration results record (without the swept fields)."""
        cfg = TrainConfig(**self.overrides).to_dict()
        for k in ("dim", "table", "rows_per_id", "seed"):
            cfg.pop(k)
        return cfg


def check_enough_items(data: Interactions, k: int = K) -> None:
    """``ValueError`` when ``data`` has fewer than ``k`` items: top-k lists need k of them."""
    if data.n_items < k:
        raise ValueError(f"data set {data.name!r} has {data.n_items} item"
                         f"{'s' if data.n_items != 1 else ''}; the experiments recommend "
                         f"k = {k} items per user, so they need at least {k}")


def check_has_test_items(data: Interactions, spec: str | None = None) -> None:
    """``ValueError`` when the per-user 80/20 split leaves no user with a test item.

    The split (:func:`embtab.data.train_test_split`) sends at least one interaction of every
    user with two or more to test and none of a user with one, so the experiments have
    something to evaluate exactly when some user has two or more interactions.
    """
    n = np.bincount(data.users, minlength=data.n_users)
    if data.n_interactions == 0 or int(n.max()) < 2:
        what = f"data set {data.name!r}" + (f" (spec {spec!r})" if spec else "")
        raise ValueError(
            f"{what} has no user with 2 or more interactions ({data.n_users} users, "
            f"{data.n_interactions} interactions): the per-user train/test split keeps a "
            "user's only interaction in training, so no user gets a test item and there is "
            "nothing to evaluate")


def session_for(dataset, train_overrides, progress, session) -> Session:
    """``session`` when given (shared by several experiments), else a new one.

    With a ``session``, ``dataset`` must be its data set (its spec, or the very
    :class:`Interactions` it holds) and ``train_overrides`` None or the session's overrides:
    ``ValueError`` otherwise (both were silently dropped, so a run reported another data set
    or training setting than the one asked for).
    """
    if session is None:
        return Session(dataset, train_overrides, progress)
    same = dataset is session.data if isinstance(dataset, Interactions) else (
        isinstance(dataset, str) and dataset == session.spec)
    if not same:
        asked = dataset if isinstance(dataset, str) else getattr(dataset, "name", dataset)
        raise ValueError(f"dataset {asked!r} is not the data set of the shared session "
                         f"({session.spec!r}); pass the session's data set, or no session")
    if train_overrides is not None and dict(train_overrides) != session.overrides:
        raise ValueError(f"train_overrides {dict(train_overrides)!r} differ from those of the "
                         f"shared session ({session.overrides!r}); pass None (the session's), "
                         "or no session")
    return session


def overrides_of(train_overrides, session) -> dict | None:
    """The training overrides of a run: ``train_overrides`` when given, else those of the
    shared ``session`` (the runner passes its overrides to every experiment through the
    session, also to one that loads its own data sets)."""
    if train_overrides is None and session is not None:
        return dict(session.overrides)
    return train_overrides


def evaluate_lists(top: np.ndarray, train: Interactions, test: Interactions, cats=None) -> dict:
    """:func:`embtab.metrics.evaluate` at k = 10 with the data set's genres (or ``cats``)."""
    return metrics.evaluate(top, train, test, train.item_genres if cats is None else cats, k=K)


def baseline_rows(s: Session, seed: int, cats=None, extra=None) -> list:
    """The most-popular and random rows of ``seed``; ``extra(top)``, when given, adds keys to
    each row from its lists (e.g. :meth:`embtab.experiments.truth.TruthReference.metrics`)."""
    train, test = s.split(seed)
    rows = []
    for name, top in (("most_popular", most_popular(train, K)),
                      ("random", random_topk(train, K, seed=seed))):
        rows.append({"model": name, "seed": seed, **evaluate_lists(top, train, test, cats),
                     **(extra(top) if extra is not None else {})})
    return rows


def reference_rows(s: Session, seed: int, relevance=None) -> tuple:
    """What a truth-referenced experiment starts each seed with: ``(train, test, ref, rows)``.

    ``train, test`` is the seed's split, ``ref`` its :class:`~embtab.experiments.truth.
    TruthReference` (``relevance`` as that class takes it), and ``rows`` the oracle's row (when
    the data set has a truth) and the baselines' (:func:`baseline_rows`), each with the split's
    list metrics and ``ref.metrics``.
    """
    train, test = s.split(seed)
    ref = TruthReference(s.data, train, relevance)
    rows = []
    if ref.oracle is not None:
        rows.append({"model": "oracle", "seed": seed,
                     **evaluate_lists(ref.oracle, train, test), **ref.metrics(ref.oracle)})
    rows += baseline_rows(s, seed, extra=ref.metrics)
    return train, test, ref, rows


def seed_list(seeds) -> list:
    """The seeds an experiment runs: an int ``n`` means seeds ``0..n-1``; a sequence of ints
    (list, tuple, range, NumPy array) is taken as given.

    Raises TypeError for anything else (a string such as ``"10"``, a float, a bool, a sequence
    holding a non-int) and ValueError for no seed or a repeated one (two runs of one seed are
    not independent: their spread would read as agreement), each naming ``seeds``.
    """
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, (bool, np.bool_)):
        out = list(range(int(seeds)))
    else:
        out = [check_int(x, f"seeds[{i}]") for i, x in
               enumerate(check_sequence(seeds, "seeds", "an int (a count) or a sequence of ints"))]
    if not out:
        raise ValueError(f"seeds must name at least one seed (a count >= 1 or a list); got "
                         f"{seeds!r}")
    if len(set(out)) != len(out):
        dup = next(x for x in out if out.count(x) > 1)
        raise ValueError(f"seeds must be distinct, got seed {dup} more than once in {out}")
    return out


def check_sequence(values, name: str, what: str) -> list:
    """``values`` (a list, tuple, range or NumPy array, not a string) as a list; TypeError
    naming ``name`` otherwise (``what`` says what was expected)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be {what}, got {type(values).__name__} {values!r}")
    return values.ravel().tolist() if isinstance(values, np.ndarray) else list(values)


def int_sweep(values, name: str, *, min: int = 1) -> list:
    """The values of an experiment's integer sweep (``dims``, ``candidates``, ...): a non-empty
    sequence of distinct ints ``>= min``, checked before anything runs. TypeError names
    ``name[i]`` for a value that is not an int (a float was truncated before: ``dims=(2.5,)``
    trained d = 2), ValueError for an empty sweep (it wrote empty tables), a value under
    ``min`` or a repeated one."""
    items = check_sequence(values, name, "a sequence of ints")
    out = [check_int(v, f"{name}[{i}]", min=min) for i, v in enumerate(items)]
    if not out:
        raise ValueError(f"{name} must hold at least one value, got {values!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must hold distinct values, got {out}")
    return out


def real_sweep(values, name: str, *, low: float | None = None, high: float | None = None) -> list:
    """The values of an experiment's real sweep (``lams``, ``rows_per_id``, ...): a non-empty
    sequence of distinct finite reals in ``[low, high]`` (either bound optional), checked
    before anything runs (TypeError/ValueError naming ``name[i]`` or ``name``)."""
    out = []
    for i, v in enumerate(check_sequence(values, name, "a sequence of numbers")):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}[{i}] must be a number, got {type(v).__name__}")
        x = float(v)
        if not math.isfinite(x) or (low is not None and x < low) or (high is not None and x > high):
            rng = f"[{'-inf' if low is None else format(low, 'g')}, " \
                  f"{'inf' if high is None else format(high, 'g')}]"
            raise ValueError(f"{name}[{i}] must be finite and in {rng}, got {v!r}")
        out.append(x)
    if not out:
        raise ValueError(f"{name} must hold at least one value, got {values!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must hold distinct values, got {out}")
    return out


def choice_sweep(values, name: str, choices: Sequence[str], noun: str = "name") -> list:
    """The values of an experiment's sweep of names (``designs``, ...): a non-empty sequence
    (not a string) of distinct names from ``choices``, checked before anything runs. TypeError
    names ``name`` for a string or a non-sequence; ValueError for an empty sweep, an unknown
    ``noun`` or a repeated one (its rows were doubled and its intervals took n = 2 × seeds)."""
    out = check_sequence(values, name, f"a sequence of {noun}s from {list(choices)}")
    if not out:
        raise ValueError(f"{name} must hold at least one {noun} of {list(choices)}, got "
                         f"{values!r}")
    for v in out:
        if not isinstance(v, str) or v not in choices:
            raise ValueError(f"{name}: unknown {noun} {v!r}; {name} must be {noun}s from "
                             f"{list(choices)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must hold distinct values, got {out}")
    return out


def check_candidates(value, name: str = "candidates") -> int:
    """A candidate count C: an int >= k (each list holds k items taken from C candidates;
    a C above the catalogue is the catalogue, as the experiments report)."""
    c = check_int(value, name)
    if c < K:
        raise ValueError(f"{name} must be >= k = {K} (a list holds k items taken from its C "
                         f"candidates), got {c}")
    return c


#: The training fields a tuned experiment picks per (configuration, seed): its rows hold them.
TUNED_FIELDS = ("lr", "l2", "epochs")


def make_result(name: str, s: Session, config: dict, rows: list, t0: float) -> dict:
    """The results.json object of a training experiment (docs/results-schema.md).

    ``config.train`` holds only the training fields shared by every run: a field the
    experiment sets itself (in ``config``, e.g. ``loss``) is recorded there instead, and with
    ``config["tuned"]`` the tuned fields (:data:`TUNED_FIELDS`) are per row."""
    train = {k: v for k, v in s.base_config().items()
             if k not in config and not (config.get("tuned") and k in TUNED_FIELDS)}
    return {"experiment": name, "dataset": {**s.data.summary(), "spec": s.spec},
            "config": {**config, "k": K, "train": train,
                       "seconds": round(time.perf_counter() - t0, 2)},
            "rows": rows}


class Progress:
    """A tqdm bar when ``progress`` is true, else nothing; ``tick()`` and ``close()`` either way."""

    def __init__(self, total: int, desc: str, progress: bool, unit: str = "run"):
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
