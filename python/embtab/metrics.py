"""Accuracy, popularity-bias and calibration metrics of top-k lists (docs/metrics.md definitions).

Inputs, shared by every function:

``topk`` : int array [U, >=k]
    Row ``u`` is user ``u``'s ranked list of dense item indices, best first; only the first ``k``
    columns count. **Lists may be shorter than k, padded with -1**: a slot without a candidate
    (the user has fewer than k items left to recommend) holds -1, after the list's last item.
    Item entries lie in ``[0, I)`` and are distinct within a row; a -1 before an item is refused
    too (``ValueError``). Excluding a user's training items is the recommender's job, not the
    metrics'. Padding is never an item: the metrics below count only the real items (the
    definitions say how; docs/metrics.md, "Short lists").
``train``, ``test`` : per-user item sets, any of
    a :class:`embtab.data.RowSets` [U, I]; an :class:`embtab.data.Interactions` (its
    ``user_items()``); a ``tuple`` ``(indptr, indices)`` in CSR form; a ``list`` of U integer
    arrays (or a 2-D integer array: item indices per row); or a bool indicator matrix [U, I].
    Row ``u`` must be user ``u`` of ``topk``. A 0/1 integer matrix is not read as indicators
    (its rows would be the items 0 and 1): one that repeats an index within a row is refused;
    pass indicators as bool.
``item_genres`` : an item's genres, either a :class:`~embtab.data.RowSets` [I, G] or a dense
    0/1 (bool) membership array [I, G]. An item's genre weight is split evenly over its genres:
    ``w(i, g) = 1/|genres(i)|``.

Definitions (pop(i) = share of training users who interacted with item i):

* ``recall@k`` = ``|top-k ∩ test| / min(k, |test|)``, averaged over users with a test item.
* ``ndcg@k`` = DCG/IDCG with binary gains, DCG = Σ_{j<k} [top-k_j ∈ test] / log2(j + 2),
  ``IDCG = Σ_{j < min(k, |test|)} 1 / log2(j + 2)``; averaged over users with a test item.
* ``arp@k`` = mean over users of the mean pop(i) of their top-k (users with an empty list are
  left out).
* head/tail: the head is the ``ceil(I/5)`` (20%) most popular items by training count, ties
  broken by lower item index; the rest is the tail. ``tail_share@k`` = share of all
  recommended items (U·k slots when no list is short) that are tail items.
* ``coverage@k`` = distinct recommended items / I.
* ``gini@k`` = Gini coefficient of the exposure counts c_i of all I items (never-shown items count
  as 0): with c sorted ascending, G = Σ_{i=1..I} (2i − I − 1) c_(i) / (I Σ c) (0 = uniform,
  (I−1)/I = one item gets every slot).
* ``entropy@k`` = −Σ_i e_i ln e_i / ln I with e_i = c_i / Σ c (1 = uniform exposure).
* ``miscalibration@k`` = mean over users of KL(p‖q̃) = Σ_g p(g|u) ln(p(g|u) / q̃(g|u)),
  q̃ = (1 − α) q + α p, α = 0.01; p(g|u) = Σ_{i ∈ train_u} w(i,g) / Σ_{i ∈ train_u} Σ_g w(i,g)
  (the mean genre distribution of the user's training items), q likewise from the top-k
  (users with an empty list are left out).
* ``consumed_utility@k`` (with budget c) = mean over users of the expected number of list items
  the user consumes when they scan the list top-down, examine rank r with probability
  1/log2(r + 1), consume an examined item with probability its relevance, and stop after c
  consumptions (exact, :func:`embtab.rerank.expected_consumption`).
* ``decile_recall@k``: recall@k restricted to test items in each training-popularity decile.

Example::

    >>> import numpy as np
    >>> from embtab.metrics import evaluate
    >>> topk = np.array([[0, 1], [2, 0]])
    >>> train = [np.array([3]), np.array([1])]
    >>> test = [np.array([1]), np.array([3])]
    >>> genres = np.eye(4, 2, dtype=bool) | np.eye(4, 2, k=-2, dtype=bool)
    >>> r = evaluate(topk, train, test, genres, k=2)
    >>> r["recall@2"], r["coverage@2"]
    (0.5, 0.75)
"""

from __future__ import annotations

import numpy as np

from embtab import rerank
from embtab._checks import (check_int, check_real, chunk_rows, refuse_masked,
                            refuse_non_probabilities)
from embtab._research import ALPHA, category_mix, mean, nanmean
from embtab.data import Interactions, RowSets

__all__ = [
    "USER_GROUPS",
    "arp_at_k",
    "as_row_sets",
    "consumed_utility_at_k",
    "coverage_at_k",
    "decile_recall_at_k",
    "delta_gap_at_k",
    "distinct_lists_at_k",
    "entropy_at_k",
    "evaluate",
    "excess_arp_at_k",
    "exposure_counts",
    "gini",
    "gini_at_k",
    "head_items",
    "item_counts",
    "item_popularity",
    "list_lengths",
    "miscalibration",
    "merit_exposure_at_k",
    "miscalibration_at_k",
    "ndcg_at_k",
    "oracle_topk",
    "popularity_deciles",
    "recall_at_k",
    "tail_share_at_k",
    "truth_metrics",
    "user_groups",
]

HEAD_FRACTION = 0.2


# inputs /////////////////////////////////////////////////////////////////////////////////////


def as_row_sets(sets, n_items: int | None = None, name: str = "item sets") -> RowSets:
    """Normalise per-user item sets to a :class:`~embtab.data.RowSets` [U, I].

    Parameters
    ----------
    sets : RowSets, Interactions, tuple (indptr, indices), list of int arrays or bool array
        Item indices must be integers in ``[0, n_items)``: float or other arrays are refused
        (``TypeError``), not truncated. Rows of integers are item indices; equal-length rows
        of 0s and 1s only, at least 3 wide, that repeat an index are refused (``ValueError``:
        a 0/1 indicator matrix read as indices would be the items 0 and 1); a 2-D bool array
        is an indicator matrix [U, I].
    n_items : int, optional
        Needed for the tuple and list forms (else the largest index + 1 is assumed).
    name : str
        What the sets are called in error messages (``"train"``, ``"test"``, ...).

    Example::

        >>> as_row_sets([[3, 1], []], n_items=4).indices.tolist()
        [1, 3]
    """
    if isinstance(sets, RowSets):
        if n_items is not None and sets.n_cols != n_items:
            raise ValueError(f"{name} span {sets.n_cols} items; expected {n_items}")
        return sets
    if isinstance(sets, Interactions):
        return as_row_sets(sets.user_items(), n_items, name)
    try:
        if isinstance(sets, tuple) and len(sets) == 2:
            indptr = _int_array(sets[0], "indptr")
            indices = _int_array(sets[1], "indices")
            if n_items is None:
                n_items = int(indices.max()) + 1 if indices.size else 0
            rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
            return RowSets.from_pairs(rows, indices, indptr.size - 1, n_items)
        if isinstance(sets, np.ndarray) and sets.ndim == 2 and sets.dtype == np.bool_:
            if n_items is not None and sets.shape[1] != n_items:
                raise ValueError(f"an indicator matrix of shape {sets.shape} spans "
                                 f"{sets.shape[1]} items; expected {n_items}")
            r, c = np.nonzero(sets)
            return RowSets.from_pairs(r.astype(np.int64), c.astype(np.int64), sets.shape[0],
                                      sets.shape[1])
        _refuse_integer_indicators(sets, n_items)
        if isinstance(sets, (list, np.ndarray)) and not isinstance(sets, tuple):
            lists = [_int_array(x, f"row {u}") for u, x in enumerate(sets)]
            if n_items is None:
                n_items = max((int(np.max(x)) + 1 for x in lists if len(x)), default=0)
            return RowSets.from_lists(lists, n_items)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None
    raise TypeError(f"{name} must be a RowSets, an Interactions, a tuple (indptr, indices) or "
                    f"a list of arrays; got {type(sets).__name__}")


def _refuse_integer_indicators(sets, n_items) -> None:
    """ValueError for what looks like a 0/1 indicator matrix [U, I] given as integers: rows of
    equal length (a 2-D integer array, or a list of equal-length rows), at least 3 wide, of
    0s and 1s only (so every row repeats one); read as item indices they would be the items 0
    and 1. Other inputs are left to the checks."""
    if not isinstance(sets, (list, np.ndarray)) or len(sets) == 0:
        return
    if isinstance(sets, list) and not all(isinstance(r, (list, tuple, np.ndarray))
                                          and len(r) == len(sets[0]) for r in sets):
        return
    try:
        a = np.asarray(sets)
    except (TypeError, ValueError):
        return
    if a.ndim != 2 or a.shape[1] < 3 or a.dtype.kind not in "iu" or a.size == 0:
        return
    if a.min() < 0 or a.max() > 1:
        return   # not 0/1: item indices (or out of range, refused by the checks with that reason)
    # (rows at least 3 wide of 0s and 1s only: every row repeats an index)
    raise ValueError(
        f"row 0 holds an item index more than once ({a[0].tolist()[:8]}"
        f"{' ...' if a.shape[1] > 8 else ''}): rows of integers are read as item indices; "
        f"a 0/1 indicator matrix [U, I] must be a bool array (.astype(bool))")


def _int_array(x, what: str) -> np.ndarray:
    """``x`` as int64, refusing values that are not integers (a float item index would be
    truncated to another item) and integers beyond int64."""
    a = np.asarray(x)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer item indices, got dtype {a.dtype}")
    if a.size and a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} holds {a.max()}, beyond int64")
    return a.astype(np.int64, copy=False).ravel()


def _genre_sets(item_genres, n_items: int) -> RowSets:
    if isinstance(item_genres, RowSets):
        g = item_genres
    else:
        a = np.asarray(item_genres)
        if a.ndim != 2:
            raise ValueError(f"item_genres must be a RowSets or a [I, G] array; got shape "
                             f"{a.shape}")
        if a.dtype != np.bool_:
            if a.dtype.kind not in "iuf":
                raise TypeError(f"item_genres must be a 0/1 (bool) membership array; got "
                                f"dtype {a.dtype}")
            bad = np.flatnonzero(((a != 0) & (a != 1)).ravel())
            if bad.size:   # (-1 or NaN read as a genre, 0.5 as a whole one)
                i, g = divmod(int(bad[0]), a.shape[1])
                raise ValueError(f"item_genres must be a 0/1 (bool) membership array; "
                                 f"item_genres[{i}, {g}] is {a[i, g]!r}")
        r, c = np.nonzero(a)
        g = RowSets.from_pairs(r, c, a.shape[0], a.shape[1])
    if g.n_rows != n_items:
        raise ValueError(f"item_genres has {g.n_rows} items; expected {n_items}")
    return g


def _n_genre_rows(item_genres) -> int:
    if isinstance(item_genres, RowSets):
        return item_genres.n_rows
    return int(np.asarray(item_genres).shape[0])


def _topk(topk, k: int, n_items: int, n_users: int | None = None, *,
          source: str | None = None, sets: str = "the item sets",
          name: str = "topk") -> np.ndarray:
    """Validate and cut a top-k array to int64 [U, k] (-1 = padding after the last item).

    ``source`` says where ``n_items`` came from when the caller did not pass it (the length
    of ``popularity``, an index inferred from ``test``, ...): an out-of-range entry may then
    be that argument's fault, and the message says so. ``sets`` names what ``n_users`` is the
    row count of; ``name`` the argument ``topk`` is."""
    k = check_int(k, "k", min=1)
    refuse_masked(topk, name)
    a = np.asarray(topk)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array; got dtype {a.dtype}")
    why = f" (I = {n_items} {source})" if source else ""
    if a.dtype.kind == "u" and a.size and a.max() >= n_items:  # before a cast could wrap it
        raise ValueError(f"{name} entries must lie in [0, {n_items}); got {a.max()}{why}")
    if a.ndim != 2 or a.shape[1] < k:
        raise ValueError(f"{name} must have shape [U, >= k] with k >= 1; got shape {a.shape} "
                         f"for k={k}")
    if n_users is not None and a.shape[0] != n_users:
        raise ValueError(f"{name} has {a.shape[0]} rows; {sets} has {n_users} users")
    a = a[:, :k].astype(np.int64)
    if a.size and (a.min() < -1 or a.max() >= n_items):
        raise ValueError(f"{name} entries must lie in [0, {n_items}) or be -1 (padding); got "
                         f"[{a.min()}, {a.max()}]{why}")
    if k > 1:
        bad = np.flatnonzero(((a[:, :-1] < 0) & (a[:, 1:] >= 0)).any(axis=1))
        if bad.size:
            raise ValueError(f"{name} row {bad[0]} has padding (-1) before an item: "
                             f"{a[bad[0]].tolist()}; pad a short list after its last item")
        s = np.sort(a, axis=1)
        dup = np.flatnonzero(((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(axis=1))
        if dup.size:
            raise ValueError(f"{name} row {dup[0]} repeats an item: {a[dup[0]].tolist()}")
    return a


def _inferred(sets, n_items, name: str) -> str | None:
    """For :func:`_topk`'s ``source``: a note when the catalogue size was inferred from the
    item sets ``sets`` (argument ``name``) as their largest index + 1 (``n_items`` not given,
    a tuple or list form), None when it was known."""
    if n_items is not None or isinstance(sets, (RowSets, Interactions)) or (
            isinstance(sets, np.ndarray) and sets.ndim == 2 and sets.dtype == np.bool_):
        return None
    return (f"was inferred from {name}, its largest item index + 1, as n_items was not given: "
            f"pass n_items, the number of items in the catalogue")


def _item_values(values, name: str, *, kinds: str = "iuf") -> np.ndarray:
    """A per-item array [I] (``popularity``, ``relevance``): 1-D, numbers, finite, >= 0, as
    float64; ``TypeError``/``ValueError`` naming ``name`` and the bad entry otherwise."""
    refuse_masked(values, name)
    a = np.asarray(values)
    if a.dtype.kind not in kinds:
        raise TypeError(f"{name} must hold numbers, one per item; got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [I], one value per item; got shape {a.shape}")
    a = a.astype(np.float64)
    bad = np.flatnonzero(~(np.isfinite(a) & (a >= 0)))
    if bad.size:
        raise ValueError(f"{name} must be finite and >= 0; {name}[{bad[0]}] is "
                         f"{float(a[bad[0]])!r}")
    return a


def _hits(top: np.ndarray, sets: RowSets) -> np.ndarray:
    """Bool [U, k]: is top[u, j] in sets[u] (padding, -1, never is)."""
    n = max(sets.n_cols, 1)
    keys = sets.row_ids() * n + sets.indices                 # sorted: rows, then items
    q = np.arange(top.shape[0], dtype=np.int64)[:, None] * n + top
    if keys.size == 0:
        return np.zeros(top.shape, dtype=bool)
    pos = np.searchsorted(keys, q).clip(max=keys.size - 1)
    return (keys[pos] == q) & (top >= 0)


def _per_user_mean(values: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Float64 [U]: each row's mean of ``values`` [U, k] over its real items (NaN: empty list).

    Each row is summed in sorted order, so that two lists of the same items in another order
    get the same bits: a difference of two such means (excess_arp@k against the oracle's
    lists) is then exactly 0, not rounding noise that an interval would take for an effect.
    """
    real = top >= 0
    n = real.sum(axis=1)
    tot = np.sort(np.where(real, values, 0.0), axis=1).sum(axis=1)
    return np.divide(tot, n, out=np.full(top.shape[0], np.nan), where=n > 0)


def list_lengths(topk, k: int = 10) -> np.ndarray:
    """Items in each list (its first k slots less the -1 padding), int64 [U].

    Example::

        >>> list_lengths([[3, 1, -1], [-1, -1, -1]], k=3).tolist()
        [2, 0]
    """
    a = np.asarray(topk)
    if a.ndim != 2:
        raise ValueError(f"topk must have shape [U, >= k]; got shape {a.shape}")
    n_items = max(int(a.max()) + 1, 1) if a.size else 1
    return (_topk(a, k, n_items) >= 0).sum(axis=1).astype(np.int64)


# popularity /////////////////////////////////////////////////////////////////////////////////


def item_counts(train, n_items: int | None = None) -> np.ndarray:
    """Training count per item (number of distinct training users), int64 [I]."""
    s = as_row_sets(train, n_items, name="train")
    return np.bincount(s.indices, minlength=s.n_cols).astype(np.int64)


def item_popularity(train, n_users: int | None = None,
                    n_items: int | None = None) -> np.ndarray:
    """pop(i) = share of training users who interacted with item i, float64 [I].

    Parameters
    ----------
    train : per-user item sets [U, I] (see the module docstring)
    n_users : int, optional
        Denominator, an int >= 1 (a float, even an integral one, is refused); defaults to U,
        the number of rows of ``train``.
    n_items : int, optional

    Example::

        >>> item_popularity([[0, 1], [1]], n_items=3).tolist()   # 1/2, 2/2, 0/2
        [0.5, 1.0, 0.0]
    """
    s = as_row_sets(train, n_items, name="train")
    n = s.n_rows if n_users is None else check_int(n_users, "n_users", min=1)
    if n <= 0:
        raise ValueError(f"n_users must be positive; got {n} (train has no rows: pass n_users)")
    return item_counts(s) / n


def _popularity_rank(train_counts) -> np.ndarray:
    """Rank of each item, 0 = most popular; ties by lower item index first."""
    c = np.asarray(train_counts)
    if c.ndim != 1:
        raise ValueError(f"train_counts must be 1-D [I]; got shape {c.shape}")
    if c.dtype.kind not in "iuf" or (c.size and not np.all((c >= 0) & np.isfinite(c))):
        # (NaN fails it too)
        raise ValueError(f"train_counts must be non-negative finite numbers; got dtype "
                         f"{c.dtype}" + (f", min {c.min()}, max {c.max()}"
                                         if c.size and c.dtype.kind in "iuf" else ""))
    order = np.lexsort((np.arange(c.size), -c.astype(np.float64)))
    rank = np.empty(c.size, dtype=np.int64)
    rank[order] = np.arange(c.size)
    return rank


def head_items(train_counts, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """Head mask, bool [I]: the ``ceil(fraction * I)`` most popular items.

    Items are ranked by training count (descending), ties broken by lower item index; the head is
    the first ``ceil(I/5)`` of that ranking for ``fraction=0.2`` (computed in integers), the tail
    is the rest.

    Example::

        >>> head_items([5, 9, 5, 0, 1]).tolist()   # ceil(5/5) = 1 item: item 1 (count 9)
        [False, True, False, False, False]
        >>> head_items([3, 3, 3, 3, 3, 3]).tolist()  # ceil(6/5) = 2; all tie: lowest indices
        [True, True, False, False, False, False]
    """
    fraction = check_real(fraction, "fraction", min=0.0, max=1.0)
    rank = _popularity_rank(train_counts)
    n = rank.size
    if fraction == HEAD_FRACTION:
        n_head = (n + 4) // 5
    else:
        n_head = int(np.ceil(round(fraction * n, 9)))
    return rank < n_head


def popularity_deciles(train_counts) -> np.ndarray:
    """Training-popularity decile of each item, int64 [I] in 0..9; 0 = most popular.

    Items are ranked as in :func:`head_items` (count descending, ties by lower index first); the
    item of rank r (0-based) is in decile ``floor(10 r / I)``, so decile sizes differ by at most
    one (with I < 10 some deciles are empty).

    Example::

        >>> popularity_deciles([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
        ...                     19]).tolist()
        [9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    """
    rank = _popularity_rank(train_counts)
    return rank * 10 // max(rank.size, 1)


def exposure_counts(topk, n_items: int, k: int = 10) -> np.ndarray:
    """Times each item is shown in the top-k lists, int64 [I] (never shown: 0; padding, -1,
    is not an item and counts nowhere)."""
    n_items = check_int(n_items, "n_items", min=0)
    top = _topk(topk, k, n_items)
    return np.bincount(top[top >= 0], minlength=n_items).astype(np.int64)


# accuracy ///////////////////////////////////////////////////////////////////////////////////


def recall_at_k(topk, test, k: int = 10, *, n_items: int | None = None,
                per_user: bool = False):
    """recall@k = ``|top-k ∩ test_u| / min(k, |test_u|)``, averaged over users with a test item.

    Only real items can hit: a short list's -1 padding is no hit, and the denominator stays
    ``min(k, |test_u|)``; a user with a test item and an empty list has recall 0.

    Parameters
    ----------
    topk : int [U, >=k]
    test : per-user item sets [U, I]
    k : int
    n_items : int, optional
        Needed only for the tuple/list forms of ``test``.
    per_user : bool
        Return float64 [U] instead (NaN for users without a test item).

    Returns
    -------
    float (NaN when no user has a test item), or ndarray [U]

    Example::

        >>> recall_at_k([[0, 1, 2]], [[2, 5]], k=3, n_items=6)   # 1 hit / min(3, 2)
        0.5
    """
    s = as_row_sets(test, n_items, name="test")
    top = _topk(topk, k, s.n_cols, s.n_rows, source=_inferred(test, n_items, "test"), sets="test")
    n_test = s.lengths()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = _hits(top, s).sum(axis=1) / np.minimum(k, n_test)
    r[n_test == 0] = np.nan
    return r if per_user else nanmean(r)


def consumed_utility_at_k(topk, relevance, c: int, k: int = 10, *,
                          intent_weights: np.ndarray | None = None,
                          n_items: int | None = None, per_user: bool = False):
    """consumed_utility@k with budget ``c``: expected items consumed under limited attention.

    The user scans the top-k from rank 1, examines rank r with probability
    ``e_r = 1/log2(r + 1)`` (:func:`embtab.rerank.examination_probability`), consumes an
    examined item with probability ``rel(u, i)``, and stops after ``c`` consumptions; the value
    is the exact expectation (:func:`embtab.rerank.expected_consumption`), in [0, min(c, k)].
    A short list's -1 padding holds nothing to consume (an empty list: 0).

    Parameters
    ----------
    topk : int [U, >=k]
    relevance : per-user item sets [U, I], or ndarray of float [U, I] or [U, Z, I]
        Item sets (e.g. the held-out test items): ``rel = 1`` for the user's items, 0 for the
        rest; the mean is then over users with at least one item, as recall@k. A float array
        gives ``rel`` in [0, 1] directly (per intent z when 3-D, with ``intent_weights``); the
        mean is over all users. Every entry of a float array is checked, listed or not: NaN or
        a value outside [0, 1] raises ``ValueError`` naming it (``relevance[u, i]``), a masked
        array ``TypeError``. Item sets are a list of index arrays, a RowSets, an
        Interactions or an ``(indptr, indices)`` tuple, not an integer ndarray: an integer or
        bool ndarray could be either form (a 0/1 matrix was read as item indices), so it
        raises ``TypeError`` (cast 0/1 values to float).
    c : int
        Consumption budget, >= 1.
    k : int
    intent_weights : ndarray [U, Z], optional
        With a 3-D ``relevance``: the probability that the user is in intent z.
    n_items : int, optional
        Needed only for the tuple/list forms of item sets.
    per_user : bool
        Return float64 [U] instead (NaN for users without an item in item-set form).

    Returns
    -------
    float, or ndarray [U]

    Example::

        >>> consumed_utility_at_k([[0, 1, 2]], [[0, 1]], c=1, k=3, n_items=3)  # 1 (rank 1)
        1.0
        >>> round(consumed_utility_at_k([[2, 0, 1]], [[0, 1]], c=1, k=3, n_items=3), 4)
        0.8155
    """
    if isinstance(relevance, np.ndarray) and relevance.dtype.kind in "biu":
        # an integer matrix read as lists of item indices: a 0/1 relevance matrix meant as
        # values gave another number than the same matrix as float
        raise TypeError(f"relevance: an integer or bool array (dtype {relevance.dtype}, shape "
                        f"{relevance.shape}) is ambiguous, item indices or 0/1 relevance "
                        "values; pass values as a float array (relevance.astype(float)), "
                        "item sets as a list of index arrays, a RowSets or (indptr, indices)")
    refuse_masked(relevance, "relevance")
    e = rerank.examination_probability(k)
    if isinstance(relevance, np.ndarray) and relevance.dtype.kind == "f":
        if relevance.ndim not in (2, 3):
            raise ValueError(f"relevance must be [U, I] or [U, Z, I]; got shape {relevance.shape}")
        # all of it, as passed (the gathered list entries, accept = e * rel, would name a rank
        # of an internal array, and pass bad values on items no list holds)
        refuse_non_probabilities(relevance, "relevance")
        top = _topk(topk, k, relevance.shape[-1], relevance.shape[0],
                    source="is the last axis of relevance, one value per item", sets="relevance")
        e = e * (top >= 0)                                   # padding: nothing to consume
        safe = np.maximum(top, 0)
        if relevance.ndim == 2:
            acc = np.take_along_axis(relevance, safe, axis=1) * e
        else:
            idx = np.broadcast_to(safe[:, None, :], relevance.shape[:2] + (k,))
            acc = np.take_along_axis(relevance, idx, axis=2) * e[:, None, :]
        r = rerank.expected_consumption(acc, c, intent_weights)
        return r if per_user else mean(r)
    if intent_weights is not None:
        raise ValueError("intent_weights needs relevance as a float array [U, Z, I]")
    s = as_row_sets(relevance, n_items, name="relevance")
    top = _topk(topk, k, s.n_cols, s.n_rows, source=_inferred(relevance, n_items, "relevance"),
                sets="relevance")
    r = rerank.expected_consumption(_hits(top, s) * e, c)
    r[s.lengths() == 0] = np.nan
    return r if per_user else nanmean(r)


def ndcg_at_k(topk, test, k: int = 10, *, n_items: int | None = None,
              per_user: bool = False):
    """ndcg@k with binary gains, averaged over users with a test item.

    DCG = Σ_{j<k} [topk[u, j] ∈ test_u] / log2(j + 2); ``IDCG = Σ_{j < min(k, |test_u|)}
    1 / log2(j + 2)``; ndcg = DCG / IDCG. Arguments as in :func:`recall_at_k`; -1 padding is
    no hit (a user with a test item and an empty list has ndcg 0).

    Example::

        >>> round(ndcg_at_k([[0, 1]], [[1]], k=2, n_items=2), 4)   # (1/log2 3) / 1
        0.6309
    """
    s = as_row_sets(test, n_items, name="test")
    top = _topk(topk, k, s.n_cols, s.n_rows, source=_inferred(test, n_items, "test"), sets="test")
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = _hits(top, s) @ disc
    n_test = s.lengths()
    idcg = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(k, n_test)]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = dcg / idcg
    r[n_test == 0] = np.nan
    return r if per_user else nanmean(r)


def decile_recall_at_k(topk, test, train_counts, k: int = 10) -> list:
    """Recall@k restricted to the test items of each training-popularity decile: 10 floats.

    Deciles come from :func:`popularity_deciles` (index 0 = the 10% most popular items by
    training count, ties by lower item index). For decile d and user u with
    ``T = test_u ∩ decile_d`` non-empty: ``|top-k ∩ T| / min(k, |T|)``; entry d is the mean over
    those users, NaN when no user has a test item in decile d.

    Parameters
    ----------
    topk : int [U, >=k]
    test : per-user item sets [U, I]
    train_counts : int [I]
        Training count per item (:func:`item_counts`).
    k : int

    Returns
    -------
    list of 10 floats

    Example::

        >>> counts = list(range(20, 0, -1))   # item 0 most popular; deciles of 2 items
        >>> r = decile_recall_at_k([[0, 19]], [[0, 1, 19]], counts, k=2)
        >>> r[0], r[9]      # decile 0: test {0, 1}, hit 0 -> 1/2; decile 9: test {19}, hit 19
        (0.5, 1.0)
    """
    counts = np.asarray(train_counts)
    dec = popularity_deciles(counts)   # (checks train_counts: 1-D, numbers >= 0)
    s = as_row_sets(test, counts.size, name="test")
    top = _topk(topk, k, s.n_cols, s.n_rows, sets="test",
                source="is the length of train_counts, one count per item")
    U = s.n_rows
    n_ud = np.bincount(s.row_ids() * 10 + dec[s.indices], minlength=U * 10).reshape(U, 10)
    hit = _hits(top, s)
    rows = np.broadcast_to(np.arange(U)[:, None], top.shape)
    h_ud = np.bincount((rows * 10 + dec[np.maximum(top, 0)])[hit],
                       minlength=U * 10).reshape(U, 10)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = h_ud / np.minimum(k, n_ud)
    r[n_ud == 0] = np.nan
    return [nanmean(r[:, d]) for d in range(10)]


# popularity bias and diversity //////////////////////////////////////////////////////////////


def arp_at_k(topk, popularity, k: int = 10) -> float:
    """arp@k = mean over users of the mean pop(i) of their top-k.

    A short list's mean is over its real items (padding, -1, is not an item); users with an
    empty list are left out; NaN when every list is empty (or there are no users).

    Parameters
    ----------
    topk : int [U, >=k]
    popularity : float [I]
        pop(i) from :func:`item_popularity`: 1-D, one finite value >= 0 per item (at least as
        many as the items ``topk`` lists); ``ValueError`` naming the entry otherwise.

    Example::

        >>> arp_at_k([[0, 1], [1, 2]], [0.5, 1.0, 0.0], k=2)   # mean(0.75, 0.5)
        0.625
    """
    pop = _item_values(popularity, "popularity")
    return _arp(topk, pop, k)


def _arp(topk, pop: np.ndarray, k: int, name: str = "topk") -> float:
    top = _topk(topk, k, pop.size, name=name,
                source="is the length of popularity, one value per item")
    return nanmean(_per_user_mean(pop[np.maximum(top, 0)], top))


def tail_share_at_k(topk, is_head, k: int = 10) -> float:
    """tail_share@k = share of all recommended items (U·k slots) that are tail items.

    Only real items count (a short list's -1 padding is no slot); NaN when no list holds an
    item.

    Parameters
    ----------
    topk : int [U, >=k]
    is_head : bool [I]
        From :func:`head_items` (0/1 numbers pass; other values are refused), one flag per item.

    Example::

        >>> tail_share_at_k([[0, 1], [0, 2]], [True, False, False], k=2)   # 2 of 4 slots
        0.5
    """
    refuse_masked(is_head, "is_head")
    h = np.asarray(is_head)
    if h.ndim != 1:
        raise ValueError(f"is_head must be a 1-D bool mask [I]; got shape {h.shape}")
    if h.dtype != np.bool_:
        if h.dtype.kind not in "iuf":
            raise TypeError(f"is_head must be a bool mask [I]; got dtype {h.dtype}")
        bad = np.flatnonzero((h != 0) & (h != 1))
        if bad.size:   # (2 or 0.5 read as "head" by a cast to bool)
            raise ValueError(f"is_head must be a bool mask [I] (or 0/1); is_head[{bad[0]}] is "
                             f"{h[bad[0]].item()!r}")
    head = h.astype(bool)
    top = _topk(topk, k, head.size, source="is the length of is_head, one flag per item")
    return mean(~head[top[top >= 0]])


def coverage_at_k(topk, n_items: int, k: int = 10) -> float:
    """coverage@k = distinct recommended items / all items (I = ``n_items``); padding (-1) is
    no item, so 0.0 when every list is empty. ``n_items`` must be >= 1.

    Example::

        >>> coverage_at_k([[0, 1], [1, 0]], 4, k=2)   # {0, 1} of 4
        0.5
    """
    n_items = check_int(n_items, "n_items", min=1)   # (0 gave NaN and a RuntimeWarning)
    return float(np.count_nonzero(exposure_counts(topk, n_items, k)) / n_items)


def gini_at_k(topk, n_items: int, k: int = 10) -> float:
    """gini@k = Gini coefficient of the exposure counts of all ``n_items`` items.

    Never-shown items count as 0; padding (-1) is shown nowhere (NaN when no list holds an
    item). With counts c sorted ascending,
    G = Σ_{i=1..I} (2i − I − 1) c_(i) / (I · Σ c), which equals
    ``Σ_i Σ_j |c_i − c_j| / (2 I² mean(c))``: 0 for uniform exposure, (I − 1)/I when one item takes
    every slot.

    Example::

        >>> gini_at_k([[0], [0]], 2, k=1)   # counts [0, 2]: (-1*0 + 1*2) / (2*2) = 0.5
        0.5
    """
    return gini(exposure_counts(topk, n_items, k))


def gini(values) -> float:
    """Gini coefficient of non-negative ``values`` [n]: 0 when all are equal, (n − 1)/n when one
    holds everything; NaN when they sum to 0 or are empty. A negative, NaN or infinite value
    raises ``ValueError`` naming it (even where the sum is 0).

    With v sorted ascending, G = Σ_{i=1..n} (2i − n − 1) v_(i) / (n · Σ v) (the formula of
    :func:`gini_at_k`, which applies it to exposure counts; E5 to utility across users).

    Example::

        >>> gini([0.0, 0.0, 3.0])   # (-2*0 + 0*0 + 2*3) / (3*3)
        0.6666666666666666
    """
    refuse_masked(values, "values")
    v = np.asarray(values)
    if v.dtype.kind not in "iuf":
        raise TypeError(f"values must be numbers; got dtype {v.dtype}")
    v = v.astype(np.float64).ravel()
    # checked before the zero-sum case: [-1, 1] sums to 0 and gave NaN
    bad = np.flatnonzero(~(np.isfinite(v) & (v >= 0)))
    if bad.size:
        raise ValueError(f"values must be finite and >= 0; values[{bad[0]}] (flattened) is "
                         f"{float(v[bad[0]])!r}")
    c = np.sort(v)
    n = c.size
    if n == 0 or c[-1] == 0:
        return float("nan")
    with np.errstate(over="ignore"):
        total = c.sum()
    if not np.isfinite(total):
        c = c / c[-1]   # G does not depend on the scale; values near 1e308 overflowed the sum
        total = c.sum()
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * i - n - 1) * c).sum() / (n * total))


def entropy_at_k(topk, n_items: int, k: int = 10) -> float:
    """entropy@k = Shannon entropy of the exposure distribution / ln(n_items).

    e_i = c_i / Σ c over all items; H = −Σ_{e_i > 0} e_i ln e_i; returns H / ln I (1 for uniform
    exposure over all items, 0 when one item takes every slot; 1.0 when I = 1). Padding (-1)
    is not exposure; NaN when no list holds an item.

    Example::

        >>> entropy_at_k([[0], [1]], 4, k=1)   # e = (1/2, 1/2, 0, 0): ln 2 / ln 4
        0.5
    """
    c = exposure_counts(topk, n_items, k).astype(np.float64)
    total = c.sum()
    if total == 0:
        return float("nan")
    if n_items == 1:
        return 1.0
    e = c[c > 0] / total
    return float(-(e * np.log(e)).sum() / np.log(n_items))


# calibration ////////////////////////////////////////////////////////////////////////////////


def miscalibration_at_k(topk, train, item_genres, k: int = 10, alpha: float = ALPHA, *,
                        per_user: bool = False):
    """miscalibration@k = mean over users of KL(p‖q̃) = Σ_g p(g|u) ln(p(g|u) / q̃(g|u)).

    ``w(i, g) = 1/|genres(i)|`` for each genre g of item i (an item's weight split evenly over
    its genres). p(g|u) = Σ_{i ∈ train_u} w(i,g) / Σ_{i ∈ train_u} Σ_g' w(i,g') (the mean genre
    distribution of the user's genre-bearing training items); q(g|u) likewise over the top-k;
    q̃ = (1 − α) q + α p. Terms with p(g|u) = 0 are 0. Users without a genre-bearing training item
    are skipped (NaN per user); a list without a genre-bearing item has q = 0, so its KL is
    ln(1/α). A short list's q is over its real items (padding, -1, carries no genre); users
    with an empty list are skipped (NaN per user).

    Parameters
    ----------
    topk : int [U, >=k]
    train : per-user item sets [U, I]
    item_genres : RowSets [I, G] or 0/1 array [I, G]
    k : int
    alpha : float
        Smoothing, 0.01 (docs/metrics.md).
    per_user : bool
        Return float64 [U] instead.

    Example::

        >>> genres = [[1, 0], [0, 1], [1, 1]]       # item 2 counts 1/2 to each genre
        >>> m = miscalibration_at_k([[0, 2]], [[0, 1]], genres, k=2)
        >>> round(m, 6)   # p = (.5, .5), q = (.75, .25): .5 ln(.5/.7475) + .5 ln(.5/.2525)
        0.140535
    """
    g = _genre_sets(item_genres, _n_genre_rows(item_genres))
    s = as_row_sets(train, g.n_rows, name="train")
    # sorted: q is summed in item order, so two orders of one list get the same bits
    top = np.sort(_topk(topk, k, s.n_cols, s.n_rows, sets="train"), axis=1)
    U = s.n_rows
    p = category_mix((s.row_ids(), s.indices), g, U)
    real = top >= 0
    q = category_mix((np.nonzero(real)[0], top[real]), g, U)
    kl = rerank.smoothed_kl(p, q, alpha)
    kl[(p.sum(axis=1) == 0) | ~real.any(axis=1)] = np.nan
    return kl if per_user else nanmean(kl)


# against the truth //////////////////////////////////////////////////////////////////////////

#: User groups by the popularity of their training profile (Abdollahpouri et al. 2021).
USER_GROUPS = ("niche", "diverse", "blockbuster")
GROUP_FRACTION = 0.2


def oracle_topk(truth, train, k: int = 10, *, n_items: int | None = None,
                chunk: int = 1024, candidates=None) -> np.ndarray:
    """The oracle's lists: top-k items by true p(i|u), training items excluded, int64 [U, k].

    A user with fewer than k listable items (untrained, among ``candidates``) gets a shorter
    list, padded with -1 (the module docstring); k itself must be in [1, I].

    Parameters
    ----------
    truth : object with ``prob(users) -> [n, I]`` (a planted truth of :mod:`embtab.data`)
    train : per-user item sets [U, I] (see the module docstring)
    k : int
    n_items : int, optional
        Needed only for the tuple/list forms of ``train``.
    chunk : int >= 1
        Users scored at a time.
    candidates : bool [I], optional
        The items that may be listed (default all); the others are excluded like training
        items (e.g. a stream's items not yet seen).

    Ties go to the lower item index.

    Example::

        >>> class T:
        ...     def prob(self, users):
        ...         return np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])[users]
        >>> oracle_topk(T(), [[1], []], k=2, n_items=3).tolist()   # user 0 has item 1
        [[2, 0], [0, 1]]
    """
    k = check_int(k, "k", min=1)
    chunk = check_int(chunk, "chunk", min=1)   # (a negative one listed nothing: all -1)
    s = as_row_sets(train, n_items, name="train")
    U, I = s.n_rows, s.n_cols
    if not 1 <= k <= I:
        raise ValueError(f"k must be in [1, {I}]; got {k}")
    cand = None
    if candidates is not None:
        cand = np.asarray(candidates, dtype=bool)
        if cand.shape != (I,):
            raise ValueError(f"candidates must be a bool mask of shape ({I},); got {cand.shape}")
    out = np.full((U, k), -1, dtype=np.int64)
    chunk = chunk_rows(chunk, I)
    for start in range(0, U, chunk):
        rows = np.arange(start, min(start + chunk, U))
        p = np.array(truth.prob(rows), dtype=np.float64)
        if p.shape != (rows.size, I):
            raise ValueError(f"truth.prob returned shape {p.shape}; expected {(rows.size, I)}")
        sub = s.take_rows(rows)
        p[sub.row_ids(), sub.indices] = -np.inf
        if cand is not None:
            p[:, ~cand] = -np.inf
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        order[np.isneginf(np.take_along_axis(p, order, axis=1))] = -1
        out[rows] = order
    return out


def excess_arp_at_k(topk, oracle, popularity, k: int = 10) -> float:
    """excess_arp@k = arp@k of ``topk`` minus arp@k of the oracle's lists, same users.

    Positive: the lists are more popular than the accuracy-optimal lists. Each arp@k is over
    its own non-empty lists (:func:`arp_at_k`).

    Parameters
    ----------
    topk, oracle : int [U, >=k]
        The evaluated lists and :func:`oracle_topk` for the same users.
    popularity : float [I]
        pop(i), as for :func:`arp_at_k`.

    Example::

        >>> excess_arp_at_k([[0, 1]], [[1, 2]], [0.5, 1.0, 0.0], k=2)   # 0.75 - 0.5
        0.25
    """
    pop = _item_values(popularity, "popularity")
    return _arp(topk, pop, k) - _arp(oracle, pop, k, name="oracle")


def user_groups(train, fraction: float = GROUP_FRACTION, *,
                n_items: int | None = None) -> np.ndarray:
    """Each user's popularity group from their training profile, int64 [U] into USER_GROUPS.

    Users are ranked by the share of head items (:func:`head_items` of the training counts)
    in their training profile, ties by lower user index; the lowest ``round(fraction * U)``
    are ``niche`` (0), the highest ``round(fraction * U)`` are ``blockbuster`` (2), the rest
    ``diverse`` (1). Users without training items count as share 0. ``n_items`` as for
    :func:`oracle_topk`; required (``ValueError``) when ``train`` is a tuple or list form, which
    does not tell the catalogue size the head items are a share of.

    Example::

        >>> user_groups([[0], [3], [0, 1], [2, 3], [1]], n_items=4).tolist()
        [2, 0, 1, 1, 1]
    """
    if not 0 <= fraction <= 0.5:
        raise ValueError(f"fraction must be in [0, 0.5]; got {fraction}")
    if _inferred(train, n_items, "train") is not None:
        raise ValueError(
            f"user_groups needs n_items, the number of items in the catalogue: train is a "
            f"{type(train).__name__}, which does not tell it, and the head items are a share "
            f"of the catalogue (train's largest item index + 1 would leave out the items no "
            f"training user has). Pass n_items (or train as a RowSets or Interactions)")
    s = as_row_sets(train, n_items, name="train")
    U = s.n_rows
    head = head_items(item_counts(s))
    n = s.lengths()
    hits = np.bincount(s.row_ids(), weights=head[s.indices].astype(np.float64), minlength=U)
    share = np.divide(hits, n, out=np.zeros(U), where=n > 0)
    order = np.lexsort((np.arange(U), share))
    m = int(round(fraction * U))
    g = np.ones(U, dtype=np.int64)
    g[order[:m]] = 0
    if m:
        g[order[U - m:]] = 2
    return g


def delta_gap_at_k(topk, train, groups, k: int = 10, *, n_items: int | None = None) -> dict:
    """ΔGAP@k per user group: relative change of mean item popularity, profile -> list.

    For the users of a group, GAP_p = mean over users of the mean pop(i) of their training
    profile, GAP_r the same over their top-k; ΔGAP = (GAP_r − GAP_p) / GAP_p (Abdollahpouri et
    al. 2019). 0: lists as popular as the profiles; > 0: more popular. A short list's mean is
    over its real items; users with an empty list are left out of both GAPs.

    Parameters
    ----------
    topk : int [U, >=k]
    train : per-user item sets [U, I]
    groups : int [U]
        Group of each user, index into :data:`USER_GROUPS` (:func:`user_groups`): integers
        (or integral floats) in ``[0, 3)``; other values, which would leave their users out of
        every group, raise ``ValueError`` naming the entry (a non-numeric array ``TypeError``).
    k : int
    n_items : int, optional
        Needed only for the tuple/list forms of ``train``.

    Returns
    -------
    dict
        ``{"niche": float, "diverse": float, "blockbuster": float}`` (NaN for an empty group
        or one whose profiles have popularity 0).

    Example::

        >>> # pop = (1, .5, 0) from 2 users; user 0 (niche) trained on item 0 gets item 2:
        >>> # (0 - 1) / 1 = -1; user 1 (blockbuster) trained on 0, 1 (.75) gets item 0 (1): +1/3
        >>> r = delta_gap_at_k([[2], [0]], [[0], [0, 1]], [0, 2], k=1, n_items=3)
        >>> r["niche"], round(r["blockbuster"], 4)
        (-1.0, 0.3333)
    """
    s = as_row_sets(train, n_items, name="train")
    top = _topk(topk, k, s.n_cols, s.n_rows, source=_inferred(train, n_items, "train"),
                sets="train")
    g = _groups(groups, s.n_rows)
    pop = item_popularity(s)
    n = s.lengths()
    prof = np.divide(np.bincount(s.row_ids(), weights=pop[s.indices], minlength=s.n_rows), n,
                     out=np.full(s.n_rows, np.nan), where=n > 0)
    rec = _per_user_mean(pop[np.maximum(top, 0)], top)
    out = {}
    for j, name in enumerate(USER_GROUPS):
        ok = (g == j) & np.isfinite(prof) & np.isfinite(rec)
        gp = prof[ok].mean() if ok.any() else np.nan
        out[name] = float((rec[ok].mean() - gp) / gp) if ok.any() and gp > 0 else float("nan")
    return out


def _groups(groups, n_users: int) -> np.ndarray:
    """``groups`` as int64 [n_users] of indices into USER_GROUPS, refusing what a cast would
    change (0.7 -> 0) and values outside [0, len(USER_GROUPS))."""
    refuse_masked(groups, "groups")
    g = np.asarray(groups)
    if g.dtype.kind not in "iuf":
        raise TypeError(f"groups must hold integer group indices into USER_GROUPS; got dtype "
                        f"{g.dtype}")
    if g.shape != (n_users,):
        raise ValueError(f"groups must have shape ({n_users},), one group per user of train; "
                         f"got {g.shape}")
    n = len(USER_GROUPS)
    ok = (g >= 0) & (g < n)   # (NaN fails it)
    if g.dtype.kind == "f":
        ok &= g == np.floor(g)
    bad = np.flatnonzero(~ok)
    if bad.size:
        raise ValueError(f"groups must hold group indices in [0, {n}) (USER_GROUPS = "
                         f"{USER_GROUPS}); groups[{bad[0]}] is {g[bad[0]].item()!r}")
    return g.astype(np.int64)


def distinct_lists_at_k(topk, k: int = 10) -> float:
    """distinct_lists@k = number of distinct top-k item sets / number of users.

    Lists are compared as sets of their real items (order and -1 padding ignored; empty
    lists are all the same set). 1: every user gets their own list; 1/U: everyone gets the
    same list. NaN when there are no users (as the other per-user metrics).

    Example::

        >>> distinct_lists_at_k([[0, 1], [1, 0], [2, 0]], k=2)   # {0,1} twice, {0,2}
        0.6666666666666666
    """
    a = np.asarray(topk)
    if a.ndim != 2:
        raise ValueError(f"topk must have shape [U, >= k]; got {a.shape}")
    top = _topk(a, k, max(int(a.max()) + 1, 1) if a.size else 1)
    if top.shape[0] == 0:
        return float("nan")
    return float(np.unique(np.sort(top, axis=1), axis=0).shape[0] / top.shape[0])


def merit_exposure_at_k(topk, relevance, k: int = 10) -> tuple:
    """Exposure of the top-merit decile against its share of true relevance.

    ``relevance`` [I] is each item's total true relevance (for a planted truth, Σ_u p(i|u)).
    The top-merit decile D holds the ``ceil(I/10)`` items of highest relevance (ties by lower
    index). Returns ``(exposure share, relevance share)``: the share of all list slots that
    show an item of D, and Σ_{i∈D} relevance(i) / Σ_i relevance(i). Exposure above the
    relevance share means D is over-exposed relative to its merit. Only real items are slots
    (padding, -1, is none); the exposure share is NaN when no list holds an item.

    Example::

        >>> # I = 10, D = {item 0}; relevance share 5/14; exposure: 1 of 4 slots
        >>> merit_exposure_at_k([[0, 1], [2, 3]], [5, 1, 1, 1, 1, 1, 1, 1, 1, 1], k=2)
        (0.25, 0.35714285714285715)
    """
    rel = _item_values(relevance, "relevance")
    if rel.size == 0:
        raise ValueError("relevance must hold one value per item; got an empty array")
    top = _topk(topk, k, rel.size, source="is the length of relevance, one value per item")
    n_top = (rel.size + 9) // 10
    order = np.lexsort((np.arange(rel.size), -rel))
    in_d = np.zeros(rel.size, dtype=bool)
    in_d[order[:n_top]] = True
    total = rel.sum()
    share = float(rel[in_d].sum() / total) if total > 0 else float("nan")
    return mean(in_d[top[top >= 0]]), share


def truth_metrics(topk, train, oracle, relevance, groups, k: int = 10, *,
                  n_items: int | None = None) -> dict:
    """The truth-referenced metrics of one set of lists, keyed as results.json stores them.

    ``{"excess_arp@k", "delta_gap@k:niche", "delta_gap@k:diverse", "delta_gap@k:blockbuster",
    "distinct_lists@k", "merit_exposure@k", "merit_relevance"}``. Without an oracle (real
    data: ``oracle`` and ``relevance`` None) only the ΔGAP and distinct-list keys.

    Parameters
    ----------
    topk : int [U, >=k]
    train : per-user item sets [U, I]
    oracle : int [U, >=k] or None
        :func:`oracle_topk` for the same users.
    relevance : float [I] or None
        Total true relevance per item (:func:`merit_exposure_at_k`).
    groups : int [U]
        :func:`user_groups` of ``train``.
    k : int
    n_items : int, optional
    """
    s = as_row_sets(train, n_items, name="train")
    _topk(topk, k, s.n_cols, s.n_rows, source=_inferred(train, n_items, "train"), sets="train")
    out = {}
    if oracle is not None:
        out[f"excess_arp@{k}"] = excess_arp_at_k(topk, oracle, item_popularity(s), k)
    for name, v in delta_gap_at_k(topk, s, groups, k).items():
        out[f"delta_gap@{k}:{name}"] = v
    out[f"distinct_lists@{k}"] = distinct_lists_at_k(topk, k)
    if relevance is not None:
        exp, rel = merit_exposure_at_k(topk, relevance, k)
        out[f"merit_exposure@{k}"] = exp
        out["merit_relevance"] = rel
    return out


# all at once ////////////////////////////////////////////////////////////////////////////////


def evaluate(topk, train, test, item_genres=None, k: int = 10, *,
             n_items: int | None = None) -> dict:
    """All metrics at k, keyed as results.json stores them.

    Parameters
    ----------
    topk : int [U, >=k]
        Dense item indices, best first (training items already excluded by the caller).
    train, test : per-user item sets [U, I]
        Same users (rows) and items as ``topk``. pop(i), head/tail and deciles come from
        ``train`` with U = its number of rows.
    item_genres : RowSets [I, G] or 0/1 array [I, G], optional
        Without it ``miscalibration@k`` is left out.
    k : int
    n_items : int, optional
        I, the number of items in the catalogue. Required when neither ``train`` (a RowSets,
        an Interactions or a bool indicator matrix) nor ``item_genres`` tells I: the tuple and
        list forms of ``train`` do not, and coverage@k, gini@k and entropy@k divide by I (and
        the head of tail_share@k and the deciles of decile_recall@k are shares of it), so the
        largest index + 1, which leaves out every item no training user has, would make them
        silently wrong; ``ValueError`` then. (The single-metric functions that take a catalogue
        size, :func:`coverage_at_k` and the others, take it explicitly.)

    Returns
    -------
    dict
        ``{"recall@k", "ndcg@k", "arp@k", "tail_share@k", "coverage@k", "gini@k",
        "entropy@k", "miscalibration@k", "decile_recall@k"}`` with ``k`` spelled out (e.g.
        ``"arp@10"``); floats, except ``decile_recall@k``, a list of 10 floats (NaN for a decile
        without test items).

    Example::

        >>> from embtab.data import power_law, train_test_split
        >>> d = power_law(n_users=100, n_items=200, interactions_per_user=10, seed=0)
        >>> train, test = train_test_split(d, seed=0)
        >>> pop_order = np.argsort(-train.item_counts(), kind="stable")
        >>> topk = np.tile(pop_order[:10], (d.n_users, 1))      # most-popular baseline
        >>> r = evaluate(topk, train, test, d.item_genres, k=10)
        >>> r["coverage@10"], len(r["decile_recall@10"])
        (0.05, 10)
    """
    if n_items is None:
        if isinstance(train, (RowSets, Interactions)):
            n_items = as_row_sets(train, name="train").n_cols
        elif isinstance(train, np.ndarray) and train.ndim == 2 and train.dtype == np.bool_:
            n_items = train.shape[1]
        elif item_genres is not None:
            n_items = _n_genre_rows(item_genres)
        else:
            raise ValueError(
                f"evaluate needs n_items, the number of items in the catalogue: train is a "
                f"{type(train).__name__}, which does not tell it, and item_genres is not given. "
                f"coverage@k, gini@k and entropy@k divide by it (and tail_share@k's head and "
                f"decile_recall@k's deciles are shares of it); train's largest item index + 1 "
                f"would leave out the items no training user has. Pass n_items (or train as a "
                f"RowSets or Interactions)")
    else:
        n_items = check_int(n_items, "n_items", min=0)
    tr = as_row_sets(train, n_items, name="train")
    te = as_row_sets(test, tr.n_cols, name="test")
    if te.n_rows != tr.n_rows:
        raise ValueError(f"train has {tr.n_rows} users, test {te.n_rows}")
    I = tr.n_cols
    top = _topk(topk, k, I, tr.n_rows, sets="train")
    counts = item_counts(tr)
    out = {
        f"recall@{k}": recall_at_k(top, te, k),
        f"ndcg@{k}": ndcg_at_k(top, te, k),
        f"arp@{k}": arp_at_k(top, counts / max(tr.n_rows, 1), k),
        f"tail_share@{k}": tail_share_at_k(top, head_items(counts), k),
        f"coverage@{k}": coverage_at_k(top, I, k),
        f"gini@{k}": gini_at_k(top, I, k),
        f"entropy@{k}": entropy_at_k(top, I, k),
    }
    if item_genres is not None:
        out[f"miscalibration@{k}"] = miscalibration_at_k(top, tr, item_genres, k)
    out[f"decile_recall@{k}"] = decile_recall_at_k(top, te, counts, k)
    return out


def miscalibration(lists, item_dist, target, alpha: float = ALPHA):
    """Per-user miscalibration of given lists: Σ_g p(g|u) ln(p(g|u) / q̃(g|u)).

    The same quantity the calibrated reranker minimises; see
    :func:`embtab.rerank.miscalibration` (this is that function, re-exported so that the
    metrics module names every metric). ``miscalibration_at_k`` is its mean over users with
    p from training items, as docs/metrics.md defines miscalibration@k.
    """
    return rerank.miscalibration(lists, item_dist, target, alpha=alpha)
