"""Calibrated top-k reranking (Steck, "Calibrated Recommendations", RecSys 2018) and fast top-k.

The greedy, for each user independently, chooses k of the C candidates one at a time, adding at
each step the unpicked candidate c that maximises

.. math::

    F(L \\cup c) = (1-\\lambda) \\sum_{i \\in L \\cup c} s_i
                  - \\lambda \\, \\mathrm{KL}(p \\,\\|\\, \\tilde q(L \\cup c)),

with natural logs, where ``p`` is the user's target distribution over G categories (genres, or
popularity bins), ``q(L)`` the mean of the list items' category distributions,
``q~ = (1-alpha) q + alpha p`` and ``KL(p || r) = sum_{g: p_g > 0} p_g ln(p_g / r_g)``
(categories with ``p_g = 0`` contribute 0). Ties go to the lower candidate index; ``lam = 0``
gives plain top-k by score. The work runs in C++ (``embtab._core``) with the GIL released,
users split over ``num_threads`` threads; the output does not depend on the thread count.

Limited attention (arXiv 2307.15142): :func:`expected_consumption` is the exact expected number
of items a user consumes from a list when they scan it top-down with position bias and stop after
``c`` consumptions; :func:`limited_attention` reranks candidates greedily to maximise it, with
the user's intents (categories) as the uncertainty that makes diversity pay
(docs/metrics.md, "Consumed utility under limited attention").

Also here: :func:`topk` (the usual first stage), :class:`ItemDistribution` (a catalogue checked
once, for many calls), :func:`genre_distribution`, :func:`user_distribution`,
:func:`popularity_bins` and :func:`miscalibration`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from embtab import _core
from embtab._checks import (
    check_int,
    check_ndarray,
    check_real,
    check_threads,
    is_sparse,
    refuse_masked,
    refuse_non_probabilities,
    shape_str,
)

__all__ = [
    "ItemDistribution",
    "RerankResult",
    "SHARE_TOL",
    "calibrated",
    "examination_probability",
    "expected_consumption",
    "genre_distribution",
    "intent_relevance",
    "limited_attention",
    "miscalibration",
    "popularity_bins",
    "smoothed_kl",
    "topk",
    "user_distribution",
]

#: Absolute tolerance on the row sums of ``item_dist`` and ``target``.
SUM_TOL = 1e-6

#: What ``item_dist`` may be: a dense [n_items, G] float array, a scipy.sparse CSR matrix, or an
#: :class:`ItemDistribution` (checked once).
ItemDistributionLike = Union[np.ndarray, "ItemDistribution", Any]


class RerankResult(NamedTuple):
    """What :func:`calibrated` returns with ``return_objective=True``.

    Attributes
    ----------
    lists : ndarray of int64, shape [U, k]
        Item ids (candidate positions when ``candidates`` is None) in list order.
    objective : ndarray of float64, shape [U]
        ``(1-lam) * sum(scores of the list) - lam * KL(p || q~(list))`` of the final list
        (the score term is dropped when ``lam == 1``; it is -inf when a -inf score was picked).
    miscalibration : ndarray of float64, shape [U]
        ``KL(p || q~(list))`` of the final list (natural log, the ``alpha`` given).
    """

    lists: np.ndarray
    objective: np.ndarray
    miscalibration: np.ndarray


# validation ###################################################################################


def _check_scores(scores: Any) -> np.ndarray:
    refuse_masked(scores, "scores", "-np.inf")
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"scores must be a numpy.ndarray of float32 or float64, got {type(scores).__name__}")
    if scores.dtype not in (np.float32, np.float64):
        if scores.dtype.kind == "f" and scores.dtype.newbyteorder() in (np.float32, np.float64):
            raise TypeError(f"scores must have dtype float32 or float64 in the machine's byte "
                            f"order, got {scores.dtype.str} (the other byte order): convert it "
                            f"with scores.astype(scores.dtype.newbyteorder())")
        raise TypeError(f"scores must have dtype float32 or float64, got {scores.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [U, C], got shape {shape_str(scores)}")
    return np.ascontiguousarray(scores)


def _check_distribution_rows(a: np.ndarray, name: str, allow_zero_rows: bool) -> None:
    """Raise ValueError naming the first row of `a` with NaN, inf, a negative or a bad sum."""
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        kind = "NaN" if np.isnan(a[row]).any() else ("-inf" if np.isneginf(a[row]).any() else "inf")
        raise ValueError(f"{name} row {row} holds {kind}")
    neg = a < 0
    if neg.any():
        row = int(np.nonzero(neg.any(axis=1))[0][0])
        raise ValueError(f"{name} row {row} holds a negative value; distributions must be >= 0")
    sums = a.sum(axis=1)
    ok = np.abs(sums - 1.0) <= SUM_TOL
    if allow_zero_rows:
        ok |= sums == 0.0
    if not ok.all():
        row = int(np.nonzero(~ok)[0][0])
        none = "no category" if name == "item_dist" else "no history"
        want = f"1 (or 0 for {none})" if allow_zero_rows else "1"
        raise ValueError(f"{name} row {row} sums to {float(sums[row])!r}, not {want} (tolerance {SUM_TOL})")


def _check_target(target: Any, U: int) -> np.ndarray:
    refuse_masked(target, "target")
    if not isinstance(target, np.ndarray):
        raise TypeError(f"target must be a numpy.ndarray, got {type(target).__name__}")
    if target.dtype.kind != "f":
        raise TypeError(f"target must have a float dtype, got {target.dtype}")
    if target.ndim != 2 or target.shape[0] != U or target.shape[1] == 0:
        raise ValueError(f"target must be 2-D [U, G] with U = {U} (the rows of scores) and G >= 1 "
                         f"categories, got shape {shape_str(target)}")
    t = np.ascontiguousarray(target, dtype=np.float64)
    _check_distribution_rows(t, "target", allow_zero_rows=True)
    return t


def _item_csr(item_dist: Any, G: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate item_dist ([n_items, G] dense or scipy CSR) and return its CSR arrays:
    (indptr int64, genre int32, wclass int32, distinct weights float64)."""
    refuse_masked(item_dist, "item_dist")
    if is_sparse(item_dist):
        if item_dist.format != "csr":
            raise TypeError(f"item_dist must be dense or scipy CSR, got scipy {item_dist.format.upper()}")
        if item_dist.ndim != 2 or item_dist.shape[1] != G:
            raise ValueError(f"item_dist and target disagree on the number of genres: item_dist "
                             f"must be [n_items, G] with G = {G} (the columns of target), got "
                             f"shape {shape_str(item_dist)} (one of the two is wrong)")
        if item_dist.dtype.kind != "f":
            raise TypeError(f"item_dist must have a float dtype, got {item_dist.dtype}")
        # scipy does not check its index arrays (check_format is shallow by default); the core
        # trusts an ItemDistribution's, so they are checked here
        ip, ix = np.asarray(item_dist.indptr), np.asarray(item_dist.indices)
        if not (ip.ndim == 1 and ip.size == item_dist.shape[0] + 1 and ip[0] == 0 and ip[-1] == ix.size
                and np.all(np.diff(ip) >= 0)):
            raise ValueError("item_dist is a scipy CSR matrix whose indptr is not a valid row pointer")
        if ix.size and (int(ix.min()) < 0 or int(ix.max()) >= G):
            raise ValueError(f"item_dist is a scipy CSR matrix with a column index outside [0, {G})")
        m = item_dist.copy()
        m.sum_duplicates()
        data = np.asarray(m.data, dtype=np.float64)
        good = np.isfinite(data) & (data >= 0)
        if not good.all():
            row = int(np.searchsorted(m.indptr, np.nonzero(~good)[0][0], side="right") - 1)
            raise ValueError(f"item_dist row {row} holds NaN, inf or a negative value")
        sums = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
        ok = np.abs(sums - 1.0) <= SUM_TOL
        if not ok.all():
            row = int(np.nonzero(~ok)[0][0])
            raise ValueError(f"item_dist row {row} sums to {float(sums[row])!r}, not 1 (tolerance {SUM_TOL})")
        m.eliminate_zeros()
        indptr = np.asarray(m.indptr, dtype=np.int64)
        genre = np.asarray(m.indices, dtype=np.int32)
        vals = np.asarray(m.data, dtype=np.float64)
    else:
        if not isinstance(item_dist, np.ndarray):
            raise TypeError(f"item_dist must be a numpy.ndarray or a scipy CSR matrix, got {type(item_dist).__name__}")
        if item_dist.dtype.kind != "f":
            raise TypeError(f"item_dist must have a float dtype, got {item_dist.dtype}")
        if item_dist.ndim != 2 or item_dist.shape[1] != G:
            raise ValueError(f"item_dist and target disagree on the number of genres: item_dist "
                             f"must be [n_items, G] with G = {G} (the columns of target), got "
                             f"shape {shape_str(item_dist)} (one of the two is wrong)")
        d = np.asarray(item_dist, dtype=np.float64)
        _check_distribution_rows(d, "item_dist", allow_zero_rows=False)
        # flatnonzero of a bool mask, then divmod: ~6x faster than np.nonzero on the float matrix
        flat = np.flatnonzero(d != 0)
        rows, cols = np.divmod(flat, d.shape[1])
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=d.shape[0]))]).astype(np.int64)
        genre = cols.astype(np.int32)
        vals = d.ravel()[flat]
    weights, wclass = np.unique(vals, return_inverse=True)
    return indptr, genre, np.ascontiguousarray(wclass.astype(np.int32).ravel()), np.ascontiguousarray(weights)


class _DenseReuse:
    """The last few dense ``item_dist`` matrices that :func:`calibrated` checked, so that a
    serving loop passing the same matrix on every call skips the ``O(n_items * G)`` check and
    conversion (0.3-0.8 ms for [5,000, 20]; bench/README.md, "Reranking").

    An entry is reused only when the array passed is the same object (held by a weak reference,
    so a freed array never matches a new one at its address) *and* equal, bit for bit, to a
    private copy taken when it was checked: a matrix changed in place since is checked again, so
    the result is always that of checking the matrix as it is now. The comparison is one pass over
    the matrix. Only C-contiguous float64 matrices of at most ``MAX_BYTES`` are kept (the copy
    doubles their memory), at most ``SLOTS`` of them, the most recently checked first.
    """

    SLOTS = 4
    MAX_BYTES = 64 << 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list = []  # [(weakref to the array, private copy, csr tuple)]

    @classmethod
    def eligible(cls, a: Any) -> bool:
        return (type(a) is np.ndarray and a.dtype == np.float64 and a.ndim == 2
                and a.flags.c_contiguous and a.nbytes <= cls.MAX_BYTES)

    def get(self, a: np.ndarray) -> Optional[tuple]:
        with self._lock:
            entries = list(self._entries)
        for ref, copy, csr in entries:
            if ref() is a and copy.shape == a.shape and np.array_equal(
                    copy.view(np.uint64), a.view(np.uint64)):
                return csr
        return None

    def put(self, a: np.ndarray, csr: tuple) -> None:
        copy = a.copy()
        with self._lock:
            self._entries = [e for e in self._entries if e[0]() is not None and e[0]() is not a]
            self._entries.insert(0, (weakref.ref(a), copy, csr))
            del self._entries[self.SLOTS:]


_DENSE_REUSE = _DenseReuse()


def _checked_csr(item_dist: Any, G: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_item_csr` of a raw ``item_dist``, reusing the result for a dense matrix that was
    checked before and has not changed since (:class:`_DenseReuse`)."""
    if not (_DenseReuse.eligible(item_dist) and item_dist.shape[1] == G):
        return _item_csr(item_dist, G)
    csr = _DENSE_REUSE.get(item_dist)
    if csr is None:
        csr = _item_csr(item_dist, G)
        for a in csr:
            a.setflags(write=False)
        _DENSE_REUSE.put(item_dist, csr)
    return csr


# public API ###################################################################################


class ItemDistribution:
    """Item category distributions, checked and converted once, for many :func:`calibrated` calls.

    :func:`calibrated` checks a raw ``item_dist`` on every call (every entry of a dense matrix:
    ``O(n_items * G)``) and converts it to the sparse form its C++ core reads. When one catalogue
    serves many calls (one request at a time in serving, or many small batches), build this once
    and pass it as ``item_dist``: a call then costs the reranking only (its arrays were checked
    when it was built, and are read-only).
    The lists are the same as with the raw matrix. It pickles (for worker processes), and
    :func:`miscalibration` (which reads only the listed items' rows) and
    :func:`user_distribution` (through :meth:`toarray`) take it too.

    Parameters
    ----------
    item_dist : ndarray of float, shape [n_items, G], or scipy.sparse CSR matrix
        As for :func:`calibrated`: rows >= 0 summing to 1 (within 1e-6). The object keeps its
        own read-only copy; later changes to ``item_dist`` do not reach it.

    Attributes
    ----------
    n_items : int
    n_genres : int
        G, the number of categories (the columns ``target`` must have).
    nnz : int
        Stored (item, category) weights.

    The object is immutable: setting or deleting any attribute raises ``AttributeError``
    (:func:`calibrated` trusts its arrays and sizes without checking them again, so an edited
    ``n_genres`` let the C++ core read out of bounds), and it cannot be subclassed. Build a
    new one for another catalogue.

    Raises
    ------
    TypeError
        Not a float ndarray or scipy CSR matrix.
    ValueError
        Not 2-D, NaN, inf or negative entries, rows not summing to 1.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> items = rerank.ItemDistribution(rerank.genre_distribution([[0], [0], [0], [1]], n_genres=2))
    >>> items
    ItemDistribution(n_items=4, n_genres=2, nnz=4)
    >>> rerank.calibrated(np.array([[0.9, 0.8, 0.7, 0.5]]), items, np.array([[0.5, 0.5]]), k=2)
    array([[0, 3]])
    """

    # Everything calibrated() hands the C++ core unchecked (the CSR arrays, the longest row,
    # G) lives in private slots, set once through object.__setattr__; the public sizes are
    # read-only properties over them.
    __slots__ = ("_csr", "_max_nnz", "_n_genres", "_n_items", "_nnz")

    def __init__(self, item_dist: "ItemDistributionLike") -> None:
        if isinstance(item_dist, ItemDistribution):
            _set_state(self, item_dist._csr, item_dist._n_items, item_dist._n_genres)
            return
        refuse_masked(item_dist, "item_dist")
        if not (is_sparse(item_dist) or isinstance(item_dist, np.ndarray)):
            raise TypeError(f"item_dist must be a numpy.ndarray or a scipy CSR matrix, got {type(item_dist).__name__}")
        if len(item_dist.shape) != 2:
            raise ValueError(f"item_dist must be 2-D [n_items, G], got shape {shape_str(item_dist)}")
        csr = tuple(_frozen(a) for a in _item_csr(item_dist, int(item_dist.shape[1])))
        _set_state(self, csr, int(item_dist.shape[0]), int(item_dist.shape[1]))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a subclass could shadow the sizes that calibrated() trusts
        raise TypeError("ItemDistribution cannot be subclassed (calibrated() trusts its checked "
                        "arrays and sizes); wrap it instead")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ItemDistribution is immutable: {name} cannot be set (calibrated() "
                             f"trusts the arrays and sizes it was built with); build a new "
                             f"ItemDistribution instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ItemDistribution is immutable: {name} cannot be deleted")

    @property
    def n_items(self) -> int:
        """The number of items (rows), read-only."""
        return self._n_items

    @property
    def n_genres(self) -> int:
        """G, the number of categories (the columns ``target`` must have), read-only."""
        return self._n_genres

    @property
    def nnz(self) -> int:
        """The number of stored (item, category) weights, read-only."""
        return self._nnz

    def __repr__(self) -> str:
        return f"ItemDistribution(n_items={self.n_items}, n_genres={self.n_genres}, nnz={self.nnz})"

    @property
    def csr(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The packed, read-only form the C++ core reads (immutable: ``setflags(write=True)``
        raises): ``(indptr, category, weight_class,
        weights)`` with ``indptr`` int64 [n_items + 1], ``category`` and ``weight_class`` int32
        [nnz] and ``weights`` float64 [number of distinct weights]; item ``i`` holds category
        ``category[j]`` with weight ``weights[weight_class[j]]`` for ``j`` in
        ``indptr[i]:indptr[i + 1]``."""
        return self._csr

    def toarray(self) -> npt.NDArray[np.float64]:
        """The distributions as a dense float64 array [n_items, G] (the stored weights, exactly)."""
        indptr, genre, wclass, weights = self._csr
        out = np.zeros((self.n_items, self.n_genres), dtype=np.float64)
        rows = np.repeat(np.arange(self.n_items), np.diff(indptr))
        out[rows, genre] = weights[wclass]
        return out

    def __reduce__(self) -> tuple:
        # Pickles (for worker processes) come back with read-only arrays, like the original.
        return (_item_distribution_from_state, (tuple(np.array(a) for a in self._csr), self._n_items, self._n_genres))


def _set_state(obj: ItemDistribution, csr: tuple, n_items: int, n_genres: int) -> None:
    """Fill a new :class:`ItemDistribution`'s slots from checked, frozen CSR arrays (the only
    writer of those slots)."""
    for name, value in (("_csr", csr), ("_max_nnz", _max_row_length(csr[0])), ("_n_items", int(n_items)),
                        ("_n_genres", int(n_genres)), ("_nnz", int(csr[1].size))):
        object.__setattr__(obj, name, value)


def _item_distribution_from_state(csr: tuple, n_items: int, n_genres: int) -> ItemDistribution:
    """Rebuild an unpickled :class:`ItemDistribution`, checking every index and value (the C++
    core trusts an ItemDistribution's arrays)."""
    obj = ItemDistribution.__new__(ItemDistribution)
    arrays = tuple(np.array(a, dtype=dt) for a, dt in zip(csr, (np.int64, np.int32, np.int32, np.float64)))
    indptr, genre, wclass, weights = arrays
    # Indices and values are checked here, as the constructor does (a state with a NaN or zero
    # weight would give NaN tables and lists with no error; the core does not re-check them).
    n_items, n_genres = int(n_items), int(n_genres)
    ok = (indptr.ndim == 1 and indptr.size == n_items + 1 and indptr[0] == 0 and indptr[-1] == genre.size
          and genre.shape == wclass.shape and weights.ndim == 1 and np.all(np.diff(indptr) > 0)
          and np.all((genre >= 0) & (genre < n_genres)) and np.all((wclass >= 0) & (wclass < weights.size))
          and np.all(np.isfinite(weights) & (weights > 0)))
    if ok:
        # every item holds a category (as the constructor requires: its row sums to 1), each
        # once (the core's scans assume it; a category listed twice read as its second weight)
        sums = np.add.reduceat(weights[wclass], indptr[:-1]) if n_items else np.zeros(0)
        keys = np.repeat(np.arange(n_items, dtype=np.int64), np.diff(indptr)) * n_genres + genre
        ok = bool(np.all(np.abs(sums - 1.0) <= SUM_TOL)) and np.unique(keys).size == keys.size
    if not ok:
        raise ValueError("not a valid pickled ItemDistribution: its arrays are not the CSR of "
                         f"{n_items} distributions over {n_genres} categories")
    _set_state(obj, tuple(_frozen(a) for a in arrays), n_items, n_genres)
    return obj


def _refuse_bad_weights(a: np.ndarray, where) -> None:
    """ValueError naming the first entry of ``a`` that is NaN, infinite or negative;
    ``where(*index)`` gives ``(name, note)``: which entry of the caller's argument it is, and
    what to add after its value."""
    bad = ~(np.isfinite(a) & (a >= 0))
    if bad.any():
        idx = tuple(int(x[0]) for x in np.nonzero(bad))
        name, note = where(*idx)
        raise ValueError(f"{name} is {float(a[idx])}{note}: category weights must be finite "
                         f"and >= 0")


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy of ``a`` over an immutable buffer: ``setflags(write=True)`` on it
    raises, so that the arrays the C++ core trusts unchecked (an ItemDistribution's) cannot be
    edited through the public ``csr`` property."""
    a = np.ascontiguousarray(a)
    return np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)


def _max_row_length(indptr: np.ndarray) -> int:
    """The most categories an item holds (0 for no items)."""
    return int(np.diff(indptr).max()) if indptr.size > 1 else 0



def calibrated(
    scores: np.ndarray,
    item_dist: ItemDistributionLike,
    target: np.ndarray,
    k: int,
    lam: float = 0.5,
    alpha: float = 0.01,
    candidates: Optional[np.ndarray] = None,
    num_threads: int = 0,
    return_objective: bool = False,
) -> Union[npt.NDArray[np.int64], RerankResult]:
    """Rerank each user's candidates greedily toward the user's category mix (Steck 2018).

    Chooses k of the C candidates per user, one at a time, adding the candidate that maximises
    ``(1-lam) * sum_{i in L} s_i - lam * KL(p || q~(L))`` (natural log), where ``p = target[u]``,
    ``q(L)`` is the mean of the list items' rows of ``item_dist`` and
    ``q~ = (1-alpha) * q + alpha * p``; ``KL(p || r) = sum over g with p_g > 0 of
    p_g ln(p_g / r_g)``. Ties go to the lower candidate index, where the values tie as
    computed (two candidates whose objectives tie exactly in real arithmetic can come out 1 ulp
    apart, see Notes); ``lam = 0`` is plain top-k by score (ties to the lower index).

    Parameters
    ----------
    scores : ndarray of float32 or float64, shape [U, C]
        Candidate scores. ``-inf`` means "never pick": such a candidate is picked only once
        every finite-score candidate of its row is in the list (k larger than the finite
        count); among them the greedy uses the KL term alone (their score term is dropped), so
        with ``lam = 0`` they follow in candidate order. NaN or +inf raise ``ValueError``.
        float32 scores are widened to float64 (exactly) inside the loop; all arithmetic is in
        float64.
    item_dist : ndarray of float, shape [n_items, G], scipy.sparse CSR matrix, or ItemDistribution
        Category distribution of each item; rows are >= 0 and sum to 1 (within 1e-6). Items
        usually have 1-3 categories; only the nonzeros are used. A raw matrix is checked on
        every call, except that a C-contiguous float64 matrix (up to 64 MiB) passed again
        unchanged reuses its last check: the same object, compared bit for bit with a copy
        taken then, so an in-place change is always seen. An :class:`ItemDistribution` was
        checked once, when it was built, and costs no comparison.
    target : ndarray of float, shape [U, G]
        The user's target distribution p (rows >= 0 summing to 1). An all-zero row (a user
        without history) is allowed: its KL term is 0 and, with ``lam < 1``, the list is
        top-k by score (with ``lam = 1`` every candidate's value is 0: the first k
        candidates, in candidate order).
    k : int
        List length, ``1 <= k <= C``.
    lam : float, default 0.5
        Trade-off in [0, 1]: 0 = scores only, 1 = calibration only.
    alpha : float, default 0.01
        Smoothing in [0, 1). With ``alpha = 0`` the KL is +inf while a category with
        ``p_g > 0`` is missing from the list; a candidate that makes it finite wins, and if
        none does every value is -inf and the lowest unpicked index among the candidates with
        a finite score wins (a ``-inf`` score is still picked only after every finite one;
        among ``-inf`` scores, the lowest index). (An alpha so small
        that ``alpha * p_g`` underflows, below ~1e-300, is not meaningful; there the result
        may differ from a literal evaluation by floating-point underflow.)
    candidates : ndarray of int64, shape [U, C], optional
        Item ids (rows of ``item_dist``) of the candidates. Default: candidate j is item j.
        Ids are never cast: another dtype raises ``TypeError``. Duplicate ids within a row are
        allowed and are separate candidates: the same item can then appear twice in a list
        (deduplicate first if that is not wanted).
    num_threads : int, default 0
        Threads to split users over (0 = all hardware threads). The output is identical for
        any value.
    return_objective : bool, default False
        Also return the final objective and miscalibration per user.

    Returns
    -------
    ndarray of int64, shape [U, k], or RerankResult
        Item ids (candidate positions when ``candidates`` is None) in list order; with
        ``return_objective=True`` a :class:`RerankResult` ``(lists, objective,
        miscalibration)``.

    Notes
    -----
    Cost per user is about ``k * (C * genres_per_item)`` table gathers plus ``k`` logs per
    (category with ``p_g > 0``, distinct item weight). Rows whose scores are in non-increasing
    order (as :func:`topk` returns them) take a bounded scan that stops once no later candidate
    can reach the best; the lists are the same either way. Everything is float64, with no
    fast-math; the logs are embtab's vectorised log (fdlibm's algorithm, within 1 ulp of the C
    library's, the same bits on every x86-64 CPU). Lists equal a plain evaluation of the
    objective except where two candidates' values differ only by rounding (a tie to ~1e-15).

    Memory: per thread, ``O(C * m + G)`` for a user's work arrays (m the most categories of
    an item) plus, for a batch, ``O(n_items * m)`` once, whatever the number D of distinct
    item weights: with real-valued weights (D near the number of nonzeros) the user's
    (category, weight) table keys go through a hash map of ``O(C * m)`` slots instead of dense
    ``G * D`` arrays (used while ``G * D <= 65536``); the lists are the same either way.

    Raises
    ------
    TypeError
        Wrong dtype or type of an argument, or a NumPy masked array (``scores``,
        ``item_dist``, ``target``, ``candidates``: its mask would be ignored; mask a candidate
        with a ``-inf`` score instead).
    ValueError
        Bad shapes, NaN (naming the row), +inf scores, k outside [1, C], lam outside [0, 1],
        alpha outside [0, 1), negative distributions or rows not summing to 1, candidate ids
        outside ``[0, n_items)``.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> item_dist = rerank.genre_distribution([[0], [0], [0], [1]], n_genres=2)
    >>> scores = np.array([[0.9, 0.8, 0.7, 0.5]])
    >>> target = np.array([[0.5, 0.5]])
    >>> rerank.calibrated(scores, item_dist, target, k=2, lam=0.0)
    array([[0, 1]])
    >>> rerank.calibrated(scores, item_dist, target, k=2, lam=0.5)
    array([[0, 3]])
    """
    s = _check_scores(scores)
    U, C = s.shape
    k = check_int(k, "k")
    if not 1 <= k <= C:
        raise ValueError(f"k must be in [1, C] with C = {C} (scores has shape {shape_str(s)}), got {k}")
    lam = check_real(lam, "lam", min=0.0, max=1.0)
    alpha = check_real(alpha, "alpha", min=0.0, max=1.0, max_open=True)
    num_threads = check_threads(num_threads)
    t = _check_target(target, U)
    if isinstance(item_dist, ItemDistribution):
        # (the private slots, which nothing but _set_state writes: not a property a caller
        # could have shadowed)
        if item_dist._n_genres != t.shape[1]:
            raise ValueError(f"item_dist has G = {item_dist._n_genres} categories but target has shape {shape_str(t)}")
        indptr, genre, wclass, weights = item_dist._csr
        # built (or unpickled) checked and read-only: the core skips its O(nnz) index check
        max_nnz = item_dist._max_nnz
    else:
        indptr, genre, wclass, weights = _checked_csr(item_dist, t.shape[1])
        max_nnz = -1
    cand = None
    if candidates is not None:
        refuse_masked(candidates, "candidates")
        if not isinstance(candidates, np.ndarray):
            raise TypeError(f"candidates must be a numpy.ndarray of int64, got {type(candidates).__name__}")
        if candidates.dtype != np.int64:
            raise TypeError(f"candidates must have dtype int64, got {candidates.dtype} (ids are never cast)")
        if candidates.shape != s.shape:
            raise ValueError(f"candidates must have the shape of scores {shape_str(s)}, got shape {shape_str(candidates)}")
        cand = np.ascontiguousarray(candidates)
    out = _core.rerank_calibrated(s, cand, indptr, genre, wclass, weights, t, k, lam, alpha, num_threads,
                                  bool(return_objective), max_nnz=max_nnz)
    if return_objective:
        return RerankResult(*out)
    return out


def topk(scores: np.ndarray, k: int, num_threads: int = 0) -> Tuple[np.ndarray, npt.NDArray[np.int64]]:
    """Row-wise top-k: the k largest scores of each row, sorted descending.

    Parameters
    ----------
    scores : ndarray of float32 or float64, shape [U, N]
        Scores; NaN raises ``ValueError`` naming the row, ±inf are ordered as usual.
    k : int
        ``1 <= k <= N``.
    num_threads : int, default 0
        Threads to split rows over (0 = all hardware threads); the output does not depend on it.

    Returns
    -------
    values : ndarray, shape [U, k], dtype of scores
        The k largest scores of each row in descending order.
    indices : ndarray of int64, shape [U, k]
        Their columns; equal values keep the lower column first.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> values, indices = rerank.topk(np.array([[0.1, 0.9, 0.5, 0.9]]), 2)
    >>> values
    array([[0.9, 0.9]])
    >>> indices
    array([[1, 3]])
    """
    s = _check_scores(scores)
    k = check_int(k, "k")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be in [1, N] with N = {s.shape[1]} (scores has shape {shape_str(s)}), got {k}")
    return _core.topk(s, k, check_threads(num_threads))


def genre_distribution(
    item_genres: Union[Sequence[Sequence[int]], np.ndarray], n_genres: Optional[int] = None
) -> npt.NDArray[np.float64]:
    """Item category distributions, each item's weight split evenly over its genres.

    Parameters
    ----------
    item_genres : sequence of sequences of int, or ndarray of shape [n_items, G]
        Either a sequence with one sequence (or array) of genre ids per item, or a 0/1 (bool,
        int or float) indicator matrix such as the 19 genre columns of MovieLens ``u.item``.
        A 2-D ndarray is always read as an indicator matrix, so it may hold only 0 and 1:
        genre ids in a 2-D array (one row of ids per item) are refused; pass them as a list of
        per-item arrays, ``list(ids)``. A flat sequence of ids (``[0, 1, 2]``) is refused
        too: one genre per item is ``[[0], [1], [2]]``.
    n_genres : int, optional
        G for the list form (default: largest id + 1). For an indicator matrix it is
        optional and, when given, must equal its number of columns.

    Returns
    -------
    ndarray of float64, shape [n_items, G]
        Row i is 1/m on each of item i's m genres.

    Raises
    ------
    ValueError
        An item without genres (its row could not sum to 1), a negative or non-integer genre
        id (``1.7``), an id ``>= n_genres`` or beyond int64, an item given as a scalar instead
        of a sequence of ids, an indicator matrix holding anything but 0 and 1, or one whose
        width is not ``n_genres``.
    TypeError
        Genre ids or an indicator matrix that are not numbers, or a masked array.

    Example
    -------
    >>> from embtab import rerank
    >>> rerank.genre_distribution([[0], [1, 2]], n_genres=3)
    array([[1. , 0. , 0. ],
           [0. , 0.5, 0.5]])
    """
    refuse_masked(item_genres, "item_genres")
    if isinstance(item_genres, np.ndarray) and item_genres.ndim == 2:
        if item_genres.dtype.kind not in "biuf":
            raise TypeError(f"item_genres must be a numeric indicator matrix, got dtype {item_genres.dtype}")
        if item_genres.dtype.kind != "b":
            # only 0 and 1 (NaN fails both): values such as 5 or 2 are genre ids, which a
            # matrix read as indicators turned into "has genre" flags
            bad = (item_genres != 0) & (item_genres != 1)
            if bad.any():
                r, c = (int(x[0]) for x in np.nonzero(bad))
                v = item_genres[r, c].item()
                raise ValueError(f"item_genres[{r}, {c}] is {v!r}; a 2-D array is read as an indicator "
                                 f"matrix [n_items, G] and must hold only 0 and 1 (or be bool). Genre ids "
                                 f"must be a list with one array of ids per item (list(item_genres) for "
                                 f"one row of ids per item)")
        if n_genres is not None:
            G = check_int(n_genres, "n_genres", min=1)
            if G != item_genres.shape[1]:
                raise ValueError(f"n_genres = {G} but the indicator matrix item_genres has "
                                 f"{item_genres.shape[1]} columns (shape {shape_str(item_genres)}); "
                                 f"its width is the number of genres")
        ind = item_genres != 0
        counts = ind.sum(axis=1)
        if (counts == 0).any():
            raise ValueError(f"item_genres row {int(np.nonzero(counts == 0)[0][0])} has no genre")
        return ind / counts[:, None].astype(np.float64)
    lists = [_genre_ids(g, i) for i, g in enumerate(item_genres)]
    top = max((int(g.max()) for g in lists if g.size), default=-1)
    G = top + 1 if n_genres is None else check_int(n_genres, "n_genres", min=1)
    try:
        out = np.zeros((len(lists), G), dtype=np.float64)
    except MemoryError as e:
        raise MemoryError(f"genre_distribution returns a dense [{len(lists)}, {G}] float64 matrix, more "
                          f"than this machine can hold" + (f": the largest genre id in item_genres "
                          f"is {top} (genre ids number categories from 0; pass n_genres)"
                          if n_genres is None else "")) from e
    for i, g in enumerate(lists):
        if g.size == 0:
            raise ValueError(f"item_genres[{i}] has no genre")
        if g[0] < 0 or g[-1] >= G:
            raise ValueError(f"item_genres[{i}] holds genre id outside [0, {G}): {g.tolist()}")
        out[i, g] = 1.0 / g.size
    return out


def _genre_ids(g: Any, i: int) -> np.ndarray:
    """item_genres[i] as sorted distinct int64 genre ids; integral floats pass, others refused."""
    a = np.asarray(g)
    if a.ndim == 0:
        raise ValueError(f"item_genres[{i}] is the scalar {a.item()!r}, not a sequence of genre ids: "
                         f"item_genres must hold one sequence (or array) of genre ids per item, e.g. "
                         f"[[0], [1, 2]] (one genre per item: [[0], [1], [2]], not [0, 1, 2])")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"item_genres[{i}] must be a flat sequence of genre ids, got shape {shape_str(a)}")
    if a.dtype.kind == "f":
        if not (np.isfinite(a) & (a == np.round(a))).all():
            bad = a[~(np.isfinite(a) & (a == np.round(a)))][0]
            raise ValueError(f"item_genres[{i}] holds a non-integer genre id {float(bad)!r}")
        big = np.abs(a) >= 2.0 ** 63   # (a cast to int64 would be undefined)
        if big.any():
            raise ValueError(f"item_genres[{i}] holds the genre id {float(a[big][0])!r}, beyond int64")
    elif a.dtype.kind not in "iu":
        raise TypeError(f"item_genres[{i}] must hold integer genre ids, got dtype {a.dtype}")
    elif a.dtype.kind == "u" and int(a.max()) > np.iinfo(np.int64).max:
        # (a cast to int64 wrapped it to a negative id)
        raise ValueError(f"item_genres[{i}] holds the genre id {int(a.max())}, beyond int64")
    return np.unique(a.astype(np.int64))


def user_distribution(
    histories: Union[Any, Sequence[npt.ArrayLike]], item_dist: ItemDistributionLike
) -> npt.NDArray[np.float64]:
    """Each user's category distribution p(g|u), the weighted mean of their history items' rows.

    ``p(g|u) = sum_i w_ui item_dist[i, g] / sum_i w_ui sum_g' item_dist[i, g']`` (Steck 2018,
    eq. 1, where every row of ``item_dist`` sums to 1), with ``w_ui`` the stored values of the
    user's history row (1 for a plain interaction); an item with no category (a zero row) does
    not count.

    Parameters
    ----------
    histories : scipy.sparse CSR matrix [U, n_items], or sequence of int arrays
        User-item interactions (stored values are the weights w_ui, >= 0), or each user's
        item ids (weight 1 each; repeats count repeatedly). A dense 2-D NumPy array is a
        sequence of rows of item ids, not an interaction matrix: pass a dense 0/1 matrix as
        ``scipy.sparse.csr_matrix(matrix)``.
    item_dist : ndarray [n_items, G], scipy CSR, or ItemDistribution
        Item category distributions, e.g. from :func:`genre_distribution`.

    Returns
    -------
    ndarray of float64, shape [U, G]
        Rows sum to 1; a user with an empty history, or one of items without a category only,
        gets an all-zero row (accepted by :func:`calibrated` as "no target").

    Raises
    ------
    ValueError
        A negative, NaN or infinite history weight (naming the row) or ``item_dist`` entry,
        an item id outside ``[0, n_items)``, a history row that is not 1-D, or shapes that do
        not match.
    TypeError
        History rows that are not integer item ids; a masked array.

    Weights large enough for a row's total to overflow (near 1e308) are scaled down first
    (the distribution does not depend on their scale): the row still sums to 1.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> item_dist = rerank.genre_distribution([[0], [1], [0, 1]], n_genres=2)
    >>> rerank.user_distribution([np.array([0, 2]), np.array([], dtype=np.int64)], item_dist)
    array([[0.75, 0.25],
           [0.  , 0.  ]])
    """
    refuse_masked(item_dist, "item_dist")
    refuse_masked(histories, "histories")
    if isinstance(item_dist, ItemDistribution) or is_sparse(item_dist):
        dense = np.asarray(item_dist.toarray(), dtype=np.float64)
    else:
        dense = np.asarray(item_dist, dtype=np.float64)
    if dense.ndim != 2:
        raise ValueError(f"item_dist must be 2-D [n_items, G], got shape {shape_str(dense)}")
    _refuse_bad_weights(dense, lambda i, g: (f"item_dist[{i}, {g}]", ""))
    n_items = dense.shape[0]
    if is_sparse(histories):
        h = histories.tocsr()
        if h.shape[1] != n_items:
            raise ValueError(f"histories must be [U, n_items] with n_items = {n_items}, got shape {shape_str(h)}")
        w = np.asarray(h.data, dtype=np.float64)
        if not (np.isfinite(w) & (w >= 0)).all():
            j = int(np.nonzero(~(np.isfinite(w) & (w >= 0)))[0][0])
            row = int(np.searchsorted(h.indptr, j, side="right") - 1)
            raise ValueError(f"histories row {row} holds the weight {float(w[j])!r}; weights must be finite and >= 0")
        num = _history_mix(h, dense)
    else:
        rows = [np.asarray(r) for r in histories]
        for u, r in enumerate(rows):
            if r.ndim != 1:
                raise ValueError(f"histories[{u}] must be a 1-D array of item ids, got shape "
                                 f"{shape_str(r)}")
            if r.size and r.dtype.kind not in "iu":
                raise TypeError(f"histories[{u}] must hold integer item ids, got dtype {r.dtype}")
            if r.size and (r.min() < 0 or r.max() >= n_items):
                raise ValueError(f"histories[{u}] holds an item id outside [0, {n_items})")
        def mix(d: np.ndarray) -> np.ndarray:
            return np.stack([d[r.astype(np.int64)].sum(axis=0) if r.size else np.zeros(d.shape[1])
                             for r in rows]) if rows else np.zeros((0, d.shape[1]))

        with np.errstate(over="ignore", invalid="ignore"):
            num = mix(dense)
            finite = np.isfinite(num.sum(axis=1)).all()
        if not finite:   # category weights near 1e308: the same distribution, scaled down
            num = mix(dense / float(dense.max()))
    # normalised by the history's category mass, not its weight: an item with no category (a
    # zero row of item_dist) does not count, and the rows sum to 1 (docs/metrics.md's p(g|u))
    tot = num.sum(axis=1, keepdims=True)
    return np.divide(num, tot, out=np.zeros_like(num), where=tot > 0)


def _history_mix(h: Any, dense: np.ndarray) -> np.ndarray:
    """``h @ dense`` [U, G] (h a CSR [U, n_items] of weights >= 0), with every row's category
    mass finite: a row whose product or total overflows (weights near 1e308) is recomputed
    with its weights divided by their largest and ``dense`` by its largest entry, which
    changes neither its normalised distribution nor, in the usual case, any bits."""
    with np.errstate(over="ignore", invalid="ignore"):
        num = np.asarray(h @ dense, dtype=np.float64)
        tot = num.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(tot))
    if bad.size:
        sub = h[bad].tocsr()
        sub.sum_duplicates()
        row = np.repeat(np.arange(bad.size), np.diff(sub.indptr))
        peak = np.zeros(bad.size)
        np.maximum.at(peak, row, sub.data)
        sub.data = sub.data / peak[row]
        top = float(dense.max()) if dense.size else 0.0
        num[bad] = np.asarray(sub @ (dense / top if top > 1 else dense), dtype=np.float64)
    return num


#: How far below a cut point of :func:`popularity_bins` a share may fall from float rounding
#: and still count as reaching it.
SHARE_TOL = 1e-9


def popularity_bins(item_counts: npt.ArrayLike, bins: Sequence[float] = (0.2, 0.8)) -> npt.NDArray[np.float64]:
    """Head / mid / tail one-hot distributions for popularity calibration.

    Items are sorted by count, most popular first (ties by lower id); an item falls in bin j
    when the share of all interactions held by the items before it is at least ``bins[j-1]``
    and below ``bins[j]`` (a share within :data:`SHARE_TOL` below a cut counts as reaching it:
    the shares are float sums, and the same proportions must give the same bins). Counts that
    are all 0 put every item in the head. With the default ``(0.2, 0.8)`` this is Abdollahpouri et al.'s split
    (UMAP 2021): the head holds the most popular items accounting for the first 20% of
    interactions, the tail the least popular ones accounting for the last 20%. Use the result as
    ``item_dist`` (and :func:`user_distribution` of it as ``target``) to calibrate popularity
    shares instead of genres.

    Parameters
    ----------
    item_counts : array_like of int or float, shape [n_items]
        Interactions per item (>= 0).
    bins : sequence of float
        Increasing cut points in (0, 1).

    Returns
    -------
    ndarray of float64, shape [n_items, len(bins) + 1]
        One-hot rows: column 0 = head, last column = tail.

    Example
    -------
    >>> from embtab import rerank
    >>> rerank.popularity_bins([50, 30, 10, 6, 4]).argmax(axis=1)
    array([0, 1, 2, 2, 2])
    """
    refuse_masked(item_counts, "item_counts")
    c = np.asarray(item_counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"item_counts must be 1-D [n_items], got shape {shape_str(c)}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("item_counts must be finite and >= 0")
    b = np.asarray(bins, dtype=np.float64)
    if b.ndim != 1 or b.size == 0 or not np.isfinite(b).all() or (np.diff(b) <= 0).any() \
            or b[0] <= 0 or b[-1] >= 1:   # (NaN fails the comparisons: checked first)
        raise ValueError(f"bins must be increasing cut points in (0, 1), got {tuple(np.ravel(bins))}")
    order = np.argsort(-c, kind="stable")
    cs = c
    total = cs.sum()
    if not np.isfinite(total):   # counts near 1e308: scaled, so that their sum does not overflow
        cs = c / float(c.max())
        total = cs.sum()
    before = np.concatenate([[0.0], np.cumsum(cs[order])[:-1]]) / (total if total > 0 else 1.0)
    # a share within SHARE_TOL below a cut reaches it: float sums round ([0.1] * 10 summed 8
    # of them to 0.7999999999999999, putting one more item in the mid bin than [1] * 10 did)
    which = np.searchsorted(b, before + SHARE_TOL, side="right")
    out = np.zeros((c.size, b.size + 1), dtype=np.float64)
    out[order, which] = 1.0
    return out


def smoothed_kl(p, q, alpha=0.01):
    """Steck's smoothed KL per row: ``sum_g p_g ln(p_g / q~_g)``, ``q~ = (1-alpha) q + alpha p``.

    The one definition of the calibration gap (docs/metrics.md): the metrics, the experiments and
    :func:`miscalibration` call it. Natural log; categories with ``p_g = 0`` contribute 0; +inf
    where ``q~_g = 0 < p_g`` (only with ``alpha = 0``).

    Parameters
    ----------
    p, q : ndarray of float, shape [..., G]
        Target and list distributions (rows need not be normalised): finite and non-negative
        (no NaN or inf), the same G, shapes that broadcast; ``ValueError`` naming the argument
        otherwise.
    alpha : float in [0, 1], default 0.01

    Returns
    -------
    ndarray of float64, shape [...]

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> round(float(rerank.smoothed_kl(np.array([0.5, 0.5]), np.array([1.0, 0.0]), alpha=0.5)), 6)
    0.143841
    """
    alpha = check_real(alpha, "alpha", min=0.0, max=1.0)
    refuse_masked(p, "p")
    refuse_masked(q, "q")
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    for name, a in (("p", p), ("q", q)):
        if a.ndim == 0:
            raise ValueError(f"{name} must have a last axis of categories, got a scalar")
        if not np.all(np.isfinite(a) & (a >= 0)):  # (+inf in q gave -inf)
            raise ValueError(f"{name} must be non-negative and finite, no NaN or inf "
                             f"(shape {a.shape})")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"p and q must have the same number of categories (last axis), got shapes "
            f"{p.shape} and {q.shape}"
        )
    try:
        np.broadcast_shapes(p.shape, q.shape)
    except ValueError:
        raise ValueError(
            f"p and q must broadcast against each other, got shapes {p.shape} and {q.shape}"
        ) from None
    qt = (1.0 - alpha) * q + alpha * p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / qt), 0.0)
    return terms.sum(axis=-1)


def miscalibration(
    lists: npt.ArrayLike, item_dist: ItemDistributionLike, target: npt.ArrayLike, alpha: float = 0.01
) -> npt.NDArray[np.float64]:
    """Per-user miscalibration ``sum_g p_g ln(p_g / q~_g)`` of given lists.

    ``q`` is the mean of the list items' rows of ``item_dist`` over the items that carry category
    mass (``q_g = sum_i item_dist[i, g] / sum_i sum_g' item_dist[i, g']``: a zero row, an item
    with no category, does not count; a list of such items only has ``q = 0``),
    ``q~ = (1-alpha) q + alpha p``,
    natural log, genres with ``p_g = 0`` contribute 0 (:func:`smoothed_kl`; ``miscalibration@k`` of
    docs/metrics.md is the mean of this over users).

    Parameters
    ----------
    lists : ndarray of int, shape [U, k]
        Item ids (rows of ``item_dist``).
    item_dist : ndarray [n_items, G], scipy CSR, or ItemDistribution
    target : ndarray of float, shape [U, G]
    alpha : float, default 0.01

    Returns
    -------
    ndarray of float64, shape [U]
        +inf where ``alpha = 0`` and a category with ``p_g > 0`` is missing from the list.

    Raises
    ------
    TypeError
        ``lists`` not of integers; a masked array.
    ValueError
        An item id outside ``[0, n_items)`` (naming its position; ``-1`` is not "the last
        item"), ``alpha`` outside ``[0, 1)``, a ``target`` row that is negative, not finite or
        sums neither to 1 nor to 0, ``k = 0``, or shapes that do not match.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> item_dist = np.eye(2)
    >>> rerank.miscalibration(np.array([[0, 1]]), item_dist, np.array([[0.5, 0.5]]))
    array([0.])
    """
    refuse_masked(lists, "lists")
    refuse_masked(target, "target")
    refuse_masked(item_dist, "item_dist")
    lists = np.asarray(lists)
    if lists.dtype.kind not in "iu" and lists.size:
        raise TypeError(f"lists must hold integer item ids, got dtype {lists.dtype} with shape {shape_str(lists)}")
    if lists.ndim != 2 or lists.shape[1] == 0:
        raise ValueError(f"lists must be a 2-D integer array [U, k] with k >= 1, got shape {shape_str(lists)}")
    p = np.asarray(target, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != lists.shape[0]:
        raise ValueError(f"target must be [U, G] with U = {lists.shape[0]}, got shape {shape_str(p)}")
    _check_distribution_rows(p, "target", allow_zero_rows=True)
    U, k = lists.shape
    alpha = check_real(alpha, "alpha", min=0.0, max=1.0, max_open=True)
    shape = ((item_dist.n_items, item_dist.n_genres) if isinstance(item_dist, ItemDistribution)
             else np.shape(item_dist))
    if len(shape) != 2 or shape[1] != p.shape[1]:
        raise ValueError(f"item_dist must be [n_items, G] with G = {p.shape[1]} (the columns of target), "
                         f"got shape {shape_str(item_dist) if not isinstance(item_dist, ItemDistribution) else shape}")
    n_items = int(shape[0])
    bad = (lists < 0) | (lists >= n_items)
    if bad.any():
        u, j = (int(x[0]) for x in np.nonzero(bad))
        raise ValueError(f"lists[{u}, {j}] holds item id {lists[u, j]}, outside [0, n_items) with "
                         f"n_items = {n_items} (the rows of item_dist)")
    # sorted: q does not depend on the order of a list's items, to the bit (as in
    # metrics.miscalibration_at_k, which gives the same bits on the same lists)
    lists = np.sort(lists.astype(np.int64, copy=False), axis=1)
    if isinstance(item_dist, ItemDistribution):
        # the list items' rows of the CSR only (not a dense copy of the catalogue per call),
        # summed per user and category in item order
        indptr, genre, wclass, weights = item_dist._csr
        flat = lists.ravel()
        starts, lens = indptr[flat], indptr[flat + 1] - indptr[flat]
        at = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
        user = np.repeat(np.arange(flat.size) // k, lens)
        G = item_dist.n_genres
        m = np.bincount(user * G + genre[at], weights=weights[wclass[at]],
                        minlength=U * G).astype(np.float64, copy=False).reshape(U, G)
    else:
        if is_sparse(item_dist):
            rows = np.asarray(item_dist.tocsr()[lists.ravel()].toarray(), dtype=np.float64).reshape(U, k, -1)
        else:
            rows = np.asarray(item_dist, dtype=np.float64)[lists]
        # (an ItemDistribution was checked when it was built)
        _refuse_bad_weights(rows, lambda u, j, g: (f"item_dist[{lists[u, j]}, {g}]",
                                                   f" (item of lists[{u}])"))
        m = rows.sum(axis=1)
    # q: the mean over the list items that carry category mass (an item with no category, a
    # zero row, does not count), as miscalibration@k defines it (docs/metrics.md); a list with
    # no such item has q = 0
    tot = m.sum(axis=1, keepdims=True)
    q = np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)
    return smoothed_kl(p, q, alpha)


# limited attention ############################################################################


def examination_probability(k: int) -> npt.NDArray[np.float64]:
    """Position bias ``e_r = 1 / log2(r + 1)`` of ranks ``r = 1..k``, float64 [k].

    The probability that a user who is still scanning looks at the item at rank r (the DCG
    discount; rank 1 is always examined).

    Example
    -------
    >>> from embtab import rerank
    >>> rerank.examination_probability(3).round(4)
    array([1.    , 0.6309, 0.5   ])
    """
    k = check_int(k, "k", min=0)
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _check_probabilities(a: Any, name: str) -> np.ndarray:
    refuse_masked(a, name)
    a = check_ndarray(a, name, kinds="f")
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be [U, n] or [U, Z, n] (Z intents), got shape {shape_str(a)}")
    a = np.asarray(a, dtype=np.float64)
    refuse_non_probabilities(a, name)
    return a


def _check_intents(intent_weights: Any, probs: np.ndarray, name: str) -> np.ndarray:
    """``probs`` as [U, Z, n] with the checked weights [U, Z] (Z = 1, weight 1 when 2-D)."""
    U = probs.shape[0]
    if probs.ndim == 2:
        if intent_weights is not None:
            raise ValueError(f"intent_weights needs {name} of shape [U, Z, n]; {name} has shape "
                             f"{shape_str(probs)}")
        return np.ones((U, 1))
    if intent_weights is None:
        raise ValueError(f"{name} has shape {shape_str(probs)} (intents): intent_weights [U, Z] "
                         "is required")
    refuse_masked(intent_weights, "intent_weights")
    w = check_ndarray(intent_weights, "intent_weights", kinds="f", ndim=2)
    if w.shape != probs.shape[:2]:
        raise ValueError(f"intent_weights must have shape {tuple(probs.shape[:2])} (U, Z of "
                         f"{name}), got {shape_str(w)}")
    w = np.asarray(w, dtype=np.float64)
    _check_distribution_rows(w, "intent_weights", allow_zero_rows=False)
    return w


def _consume_step(state: np.ndarray, a: np.ndarray) -> np.ndarray:
    """One rank of the consumption chain: ``state`` [..., c] = P(j consumed so far, still
    scanning), ``a`` [...] = P(the item here is consumed | still scanning)."""
    a = a[..., None]
    nxt = state * (1.0 - a)
    nxt[..., 1:] += state[..., :-1] * a
    return nxt


def expected_consumption(accept: np.ndarray, c: int,
                         intent_weights: Optional[np.ndarray] = None) -> npt.NDArray[np.float64]:
    """Exact expected number of consumed items per user under limited attention, float64 [U].

    The user scans the list top-down. At rank r, if they have consumed fewer than ``c`` items
    so far, they consume the item with probability ``accept[u, r]`` (examination times
    relevance, independently of the other ranks); after the c-th consumption they stop. With
    intents, the user is in intent z with probability ``intent_weights[u, z]`` for the whole
    scan and ``accept[u, z, r]`` applies. The expectation is a dynamic programme over ranks
    with states "j items consumed so far" (j < c), ``O(U * Z * k * c)``; no sampling.

    Parameters
    ----------
    accept : ndarray of float, shape [U, k] or [U, Z, k]
        Consumption probability of the item at each rank given the user is still scanning,
        in [0, 1] (e.g. ``examination_probability(k) * relevance``).
    c : int
        The consumption budget, >= 1 (``c >= k``: no budget, the sum of ``accept``).
    intent_weights : ndarray of float, shape [U, Z], optional
        Rows >= 0 summing to 1; required with a 3-D ``accept``, refused with a 2-D one.

    Returns
    -------
    ndarray of float64, shape [U]
        ``sum_z w_z sum_r P_z(fewer than c consumed before r) * accept[u, z, r]``, in [0, min(c, k)].

    Raises
    ------
    TypeError
        ``accept`` or ``intent_weights`` not a float ndarray (or a masked one), ``c`` not an
        int.
    ValueError
        Bad shapes, NaN or values outside [0, 1] (naming the entry, ``accept[u, r]``),
        ``c < 1``, weight rows not summing to 1.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> rerank.expected_consumption(np.array([[0.5, 0.5]]), c=1)   # 0.5 + 0.5 * 0.5
    array([0.75])
    """
    a = _check_probabilities(accept, "accept")
    c = check_int(c, "c", min=1)
    w = _check_intents(intent_weights, a, "accept")
    a3 = a if a.ndim == 3 else a[:, None, :]
    U, Z, k = a3.shape
    c = min(c, max(k, 1))  # at most k consumptions: a larger budget never binds
    state = np.zeros((U, Z, c))
    state[..., 0] = 1.0
    total = np.zeros((U, Z))
    for r in range(k):
        total += state.sum(axis=-1) * a3[..., r]
        state = _consume_step(state, a3[..., r])
    return (w * total).sum(axis=1)


def intent_relevance(scores: np.ndarray, item_dist: np.ndarray, target: np.ndarray,
                     candidates: Optional[np.ndarray] = None) -> npt.NDArray[np.float64]:
    """Per-intent consumption probabilities of candidates from marginal scores, [U, G, C].

    The intents are the categories: a user is in intent g with probability ``target[u, g]``
    (their category mix), and an item of category g can only be consumed in intent g. If
    ``scores[u, j]`` in [0, 1] is the user's marginal probability of consuming candidate j
    when examined, consistency (``sum_g target_g * rel_g = scores`` for a one-category item)
    gives ``rel[u, g, j] = min(1, scores[u, j] * item_dist[item, g] / target[u, g])``, and 0
    where ``target[u, g] = 0``. Non-finite scores (masked candidates) get 0.

    Parameters
    ----------
    scores : ndarray of float, shape [U, C]
        Marginal consumption probabilities in [0, 1] (e.g. per-user min-max scaled scores),
        or -inf for a candidate never to pick.
    item_dist : ndarray of float, shape [n_items, G]
        Category distribution of each item (rows summing to 1, or 0 for an item without a
        category).
    target : ndarray of float, shape [U, G]
        The users' intent (category) weights, rows summing to 1.
    candidates : ndarray of int64, shape [U, C], optional
        Item ids of the candidates (default: candidate j is item j).

    Returns
    -------
    ndarray of float64, shape [U, G, C]

    Raises
    ------
    ValueError
        NaN scores (mask with -inf), scores outside [0, 1], an ``item_dist`` or ``target`` row
        with NaN, inf, a negative value or a bad sum, or shapes that do not match.

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> rel = rerank.intent_relevance(np.array([[0.6, 0.3]]), np.eye(2), np.array([[0.7, 0.3]]))
    >>> rel.round(3)
    array([[[0.857, 0.   ],
            [0.   , 1.   ]]])
    """
    s = _check_scores(scores)
    U, C = s.shape
    fin = np.isfinite(s)
    if (s[fin] < 0).any() or (s[fin] > 1).any() or np.isposinf(s).any():
        raise ValueError(f"scores must lie in [0, 1] (or be -inf), got values in "
                         f"[{np.nanmin(s[fin]) if fin.any() else 0}, {np.nanmax(s)}]")
    if np.isnan(s).any():
        u, j = (int(x[0]) for x in np.nonzero(np.isnan(s)))
        raise ValueError(f"scores[{u}, {j}] is NaN: mask a candidate with -inf")
    refuse_masked(item_dist, "item_dist")
    d = check_ndarray(item_dist, "item_dist", kinds="f", ndim=2)
    _check_distribution_rows(np.asarray(d, dtype=np.float64), "item_dist", allow_zero_rows=True)
    t = _check_target(target, U)
    if t.shape[1] != d.shape[1]:
        raise ValueError(f"item_dist has G = {d.shape[1]} categories but target has shape "
                         f"{shape_str(t)}")
    if candidates is None:
        if C != d.shape[0]:
            raise ValueError(f"without candidates, scores needs one column per item_dist row "
                             f"({d.shape[0]}), got shape {shape_str(s)}")
        cand = np.broadcast_to(np.arange(C), (U, C))
    else:
        refuse_masked(candidates, "candidates")
        cand = check_ndarray(candidates, "candidates", dtypes=(np.int64,), ndim=2)
        if cand.shape != s.shape:
            raise ValueError(f"candidates must have the shape of scores {shape_str(s)}, got "
                             f"shape {shape_str(cand)}")
        if ((cand < 0) | (cand >= d.shape[0])).any():
            raise ValueError(f"candidates must be item ids in [0, {d.shape[0]})")
    w = np.asarray(d, dtype=np.float64)[cand]                                  # [U, C, G]
    marg = np.where(fin, s, 0.0)[..., None] * w
    tt = np.asarray(t, dtype=np.float64)[:, None, :]
    rel = np.divide(marg, tt, out=np.zeros_like(marg), where=tt > 0)
    return np.minimum(1.0, rel).transpose(0, 2, 1).copy()


def limited_attention(relevance: np.ndarray, k: int, c: int, *,
                      intent_weights: Optional[np.ndarray] = None,
                      candidates: Optional[np.ndarray] = None,
                      examination: Optional[np.ndarray] = None,
                      return_objective: bool = False):
    """Rerank candidates to maximise expected consumption under limited attention (greedy).

    Fills ranks r = 1..k in order. At rank r it adds the unpicked candidate j with the largest
    gain ``sum_z w_z * P_z(fewer than c consumed before r) * e_r * relevance[u, z, j]`` (the
    expected consumption it adds at r, given the list so far), then updates each intent's
    consumption chain as :func:`expected_consumption` does. The list's
    :func:`expected_consumption` is the sum of the gains. Ties go to the lower candidate index;
    once no candidate adds anything (every intent is out of budget, or all remaining
    relevances are 0) the rest is filled by marginal relevance ``sum_z w_z relevance[u, z, j]``,
    then by candidate index. With one intent the greedy is top-k by relevance; with several,
    an intent that the list already serves is worth less further down (its budget may be
    spent), which is what diversifies the list (arXiv 2307.15142). With several intents the
    greedy is not exact and has no known bound: docs/metrics.md gives how close to the best
    ordered list it was measured on random instances, and an exactly tied first pick (the
    lower index wins) that leaves it at 88% of the best.

    Parameters
    ----------
    relevance : ndarray of float, shape [U, C] or [U, Z, C]
        Probability that the user consumes candidate j when they examine it (in intent z),
        in [0, 1] (e.g. from :func:`intent_relevance`).
    k : int
        List length, ``1 <= k <= C``.
    c : int
        The consumption budget, >= 1.
    intent_weights : ndarray of float, shape [U, Z], optional
        Required with a 3-D ``relevance`` (rows summing to 1).
    candidates : ndarray of int64, shape [U, C], optional
        Item ids of the candidates; the lists hold these (candidate positions otherwise).
    examination : ndarray of float, shape [k], optional
        Examination probability per rank in [0, 1]; default :func:`examination_probability`.
        The greedy assumes it does not rise down the list (a position-bias curve): with one
        that rises (or a rank examined with probability 0 before ones that are not), it fills
        each rank in turn and is not optimal even with one intent (docs/metrics.md).
    return_objective : bool, default False
        Also return the expected consumption of each list.

    Returns
    -------
    ndarray of int64, shape [U, k], or (lists, objective [U])

    Raises
    ------
    TypeError, ValueError
        As :func:`expected_consumption`; also ``k`` outside [1, C], a bad ``examination`` or
        ``candidates`` (not int64, wrong shape).

    Example
    -------
    >>> import numpy as np
    >>> from embtab import rerank
    >>> rel = np.array([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # items 0, 1: intent 0; 2: intent 1
    >>> w = np.array([[0.7, 0.3]])
    >>> rerank.limited_attention(rel, k=2, c=1, intent_weights=w, examination=np.ones(2))
    array([[0, 2]])
    """
    rel = _check_probabilities(relevance, "relevance")
    w = _check_intents(intent_weights, rel, "relevance")
    r3 = rel if rel.ndim == 3 else rel[:, None, :]
    U, Z, C = r3.shape
    k = check_int(k, "k")
    if not 1 <= k <= C:
        raise ValueError(f"k must be in [1, C] with C = {C} (relevance has shape "
                         f"{shape_str(rel)}), got {k}")
    c = check_int(c, "c", min=1)
    if examination is None:
        e = examination_probability(k)
    else:
        refuse_masked(examination, "examination")
        e = check_ndarray(examination, "examination", kinds="f", ndim=1)
        if e.shape != (k,):
            raise ValueError(f"examination must have shape ({k},), got {shape_str(e)}")
        e = np.asarray(e, dtype=np.float64)
        refuse_non_probabilities(e, "examination")
    if candidates is not None:
        refuse_masked(candidates, "candidates")
        candidates = check_ndarray(candidates, "candidates", dtypes=(np.int64,), ndim=2)
        if candidates.shape != (U, C):
            raise ValueError(f"candidates must have shape {(U, C)}, got "
                             f"{shape_str(candidates)}")
    marginal = np.einsum("uz,uzc->uc", w, r3)
    c = min(c, k)  # at most k consumptions: a larger budget never binds
    state = np.zeros((U, Z, c))
    state[..., 0] = 1.0
    picked = np.zeros((U, C), dtype=bool)
    out = np.empty((U, k), dtype=np.int64)
    objective = np.zeros(U)
    rows = np.arange(U)
    for r in range(k):
        alive = w * state.sum(axis=-1)                                         # [U, Z]
        gain = e[r] * np.einsum("uz,uzc->uc", alive, r3)
        gain[picked] = -np.inf
        best = gain.max(axis=1)
        fallback = np.where(picked, -np.inf, marginal)
        key = np.where((best > 0)[:, None], gain, fallback)
        j = key.argmax(axis=1)
        out[:, r] = j
        picked[rows, j] = True
        objective += np.maximum(best, 0.0) * (best > 0)
        state = _consume_step(state, e[r] * r3[rows, :, j])
    lists = out if candidates is None else candidates[rows[:, None], out]
    if return_objective:
        return lists, objective
    return lists
