"""Per-user train/test split in the same index space (:func:`train_test_split`)."""

from __future__ import annotations

import numbers

import numpy as np

from embtab.data.containers import Interactions
from embtab.data.synthetic import check_seed

__all__ = ["train_test_split"]


def train_test_split(data: Interactions, test_fraction: float = 0.2, seed: int = 0, *,
                     by_time: bool = False, n_test: int | None = None
                     ) -> tuple[Interactions, Interactions]:
    """Seeded per-user train/test split in the same index space.

    A user with ``n`` interactions sends ``t = clip(floor(test_fraction * n + 0.5), 1, n - 1)``
    of them to test when ``n >= 2`` and ``test_fraction > 0`` (``t = min(n_test, n - 1)`` when
    ``n_test`` is given), and none when ``n == 1``: every user with >= 2 interactions keeps >= 1
    train item and gets >= 1 test item.

    Random holdout (``by_time=False``): the ``t`` test items are a uniformly random subset.
    Leave-last-out (``by_time=True``, needs timestamps): the ``t`` latest interactions, ties broken
    at random; ``n_test=1, by_time=True`` is classic leave-one-last-out.

    Parameters
    ----------
    data : Interactions
    test_fraction : float in [0, 1)
    seed : int
    by_time : bool
    n_test : int, optional
        A fixed number of test items per user instead of ``test_fraction``.

    Returns
    -------
    train, test : Interactions
        Share ``user_ids``, ``item_ids``, genres and truth with ``data``.

    Example::

        >>> from embtab.data import power_law
        >>> d = power_law(n_users=20, n_items=50, interactions_per_user=10, seed=0)
        >>> tr, te = train_test_split(d, n_test=1, by_time=True)
        >>> te.n_interactions == d.n_users
        True
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number in [0, 1); got {test_fraction!r}")
    if n_test is not None:
        if isinstance(n_test, bool) or not isinstance(n_test, numbers.Integral):
            raise TypeError(f"n_test must be an integer >= 0; got {n_test!r}")
        if n_test < 0:
            raise ValueError(f"n_test must be >= 0; got {n_test}")
        n_test = min(int(n_test), np.iinfo(np.int64).max)
    seed = check_seed(seed)
    if by_time and data.timestamps is None:
        raise ValueError(f"by_time=True needs timestamps; data set {data.name!r} has none")
    rng = np.random.default_rng(seed)
    n = np.bincount(data.users, minlength=data.n_users)
    if n_test is not None:
        t = np.minimum(n_test, np.maximum(n - 1, 0))
    elif test_fraction > 0:
        t = np.clip(np.floor(test_fraction * n + 0.5).astype(np.int64), 1, None)
        t = np.minimum(t, np.maximum(n - 1, 0))
    else:
        t = np.zeros_like(n)
    tie = rng.random(data.n_interactions)
    if by_time:
        # latest first: ~t (= -t - 1) reverses the order without -t's overflow at INT64_MIN,
        # which sent the earliest possible stamp to the test set as the latest
        order = np.lexsort((tie, ~data.timestamps, data.users))
    else:
        order = np.lexsort((tie, data.users))
    rank = np.empty(data.n_interactions, dtype=np.int64)
    start = np.cumsum(n) - n
    rank[order] = np.arange(data.n_interactions) - np.repeat(start, n)
    is_test = rank < t[data.users]
    return data.subset(~is_test), data.subset(is_test)

