"""Interaction data: a seeded power-law generator with planted structure, and loaders.

Every data set is an :class:`Interactions`: raw 64-bit user and item IDs (what embedding tables
see), a dense index space (users ``0..U-1``, items ``0..I-1``, what metrics and score matrices
use), the interaction pairs in that index space with optional weights and timestamps, the item
genres (categories) as a :class:`RowSets`, and, for synthetic data, the planted
:class:`GroundTruth` (true preference p(i|u) and each user's genre mix).

Sources, also reachable through :func:`load_dataset` spec strings (what the CLI passes):

=====================================  ============================================
``synthetic[:key=value,...]``          :func:`power_law` (keys are its arguments)
``movielens:PATH``                     :func:`load_movielens` (MovieLens-100K layout)
``interactions:PATH[,categories=P]``   :func:`load_interactions` (``user item [weight]``)
=====================================  ============================================

Example::

    >>> from embtab.data import power_law, train_test_split
    >>> data = power_law(n_users=200, n_items=300, interactions_per_user=20, seed=0)
    >>> train, test = train_test_split(data, test_fraction=0.2, seed=0)
    >>> train.n_items == data.n_items and train.n_interactions + test.n_interactions \
== data.n_interactions
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

import numpy as np

__all__ = [
    "MOVIELENS_GENRES",
    "GroundTruth",
    "Interactions",
    "RowSets",
    "load_dataset",
    "load_interactions",
    "load_movielens",
    "power_law",
    "train_test_split",
]

PathLike = Union[str, Path]

#: The 19 genre names of MovieLens-100K, used when ``u.genre`` is absent.
MOVIELENS_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)

_U64_MAX = 2**64 - 1


# RowSets ////////////////////////////////////////////////////////////////////////////////////


@dataclass(frozen=True, eq=False)
class RowSets:
    """Sets of column indices per row, in CSR form (a ragged array of sorted distinct ints).

    Used for a user's items (rows = users, columns = items: train and test sets for the metrics)
    and for an item's genres (rows = items, columns = genres).

    Parameters
    ----------
    indptr : ndarray of int64, shape [n_rows + 1]
        Row ``r`` holds ``indices[indptr[r]:indptr[r + 1]]``; ``indptr[0] == 0``, non-decreasing.
    indices : ndarray of int64, shape [nnz]
        Column indices, each in ``[0, n_cols)``, strictly increasing within a row.
    n_cols : int
        Size of the column space (number of items, or of genres).

    Example::

        >>> s = RowSets.from_lists([[2, 0], [], [1]], n_cols=3)
        >>> s.indptr.tolist(), s.indices.tolist(), s[0].tolist()
        ([0, 2, 2, 3], [0, 2, 1], [0, 2])
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_cols: int

    def __post_init__(self):
        indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0:
            raise ValueError(f"RowSets.indptr must be 1-D, start at 0; got shape {indptr.shape}")
        if np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size or indices.ndim != 1:
            raise ValueError("RowSets.indptr must be non-decreasing and end at len(indices) "
                             f"({indices.size}); got last value {indptr[-1]}")
        n_cols = int(self.n_cols)
        if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
            raise ValueError(f"RowSets.indices must lie in [0, {n_cols}); got "
                             f"[{indices.min()}, {indices.max()}]")
        if indices.size > 1:
            rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
            same_row = rows[1:] == rows[:-1]
            if np.any(same_row & (indices[1:] <= indices[:-1])):
                raise ValueError("RowSets.indices must be strictly increasing within each row "
                                 "(sorted, no duplicates); use RowSets.from_pairs to build one")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "n_cols", n_cols)

    @classmethod
    def from_pairs(cls, rows, cols, n_rows: int, n_cols: int) -> RowSets:
        """Build from parallel arrays of (row, column) pairs; duplicates are dropped.

        Parameters
        ----------
        rows, cols : array_like of int, shape [n]
        n_rows, n_cols : int
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        cols = np.asarray(cols, dtype=np.int64).ravel()
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols differ in shape: {rows.shape} vs {cols.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise ValueError(f"rows must lie in [0, {n_rows})")
        if cols.size and (cols.min() < 0 or cols.max() >= n_cols):
            raise ValueError(f"cols must lie in [0, {n_cols})")
        key = np.unique(rows * np.int64(max(n_cols, 1)) + cols)
        r = key // max(n_cols, 1)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
        return cls(indptr, key - r * max(n_cols, 1), n_cols)

    @classmethod
    def from_lists(cls, lists: Sequence, n_cols: int) -> RowSets:
        """Build from a sequence of per-row integer sequences (duplicates dropped)."""
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        cols = (np.concatenate([np.asarray(x, dtype=np.int64).ravel() for x in lists])
                if lengths.sum() else np.zeros(0, np.int64))
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
        return cls.from_pairs(rows, cols, len(lists), n_cols)

    @property
    def n_rows(self) -> int:
        return self.indptr.size - 1

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r]:self.indptr[r + 1]]

    def lengths(self) -> np.ndarray:
        """Set sizes, int64 [n_rows]."""
        return np.diff(self.indptr)

    def row_ids(self) -> np.ndarray:
        """The row of each stored index, int64 [nnz] (the COO row array)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.lengths())

    def to_dense(self, dtype=bool) -> np.ndarray:
        """Membership matrix, shape [n_rows, n_cols]."""
        out = np.zeros((self.n_rows, self.n_cols), dtype=dtype)
        out[self.row_ids(), self.indices] = 1
        return out

    def take_rows(self, rows) -> RowSets:
        """The sets of the given rows, in that order, shape [len(rows), n_cols]."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths()[rows]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        offs = np.repeat(self.indptr[rows] - indptr[:-1], lengths)
        return RowSets(indptr, self.indices[np.arange(indptr[-1]) + offs], self.n_cols)

    def transpose(self) -> RowSets:
        """Sets per column: shape [n_cols, n_rows]."""
        return RowSets.from_pairs(self.indices, self.row_ids(), self.n_cols, self.n_rows)


# ground truth ///////////////////////////////////////////////////////////////////////////////


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The planted preference model of a synthetic data set.

    A user ``u`` picks an interest genre ``g`` with probability ``user_mix[u, g]``, then an item
    of that genre with probability ``genre_item_prob[g, i]``::

        p(i|u) = sum_g user_mix[u, g] * genre_item_prob[g, i]
        genre_item_prob[g, i] = popularity[i]**beta * w(i, g) / Z_g

    where ``w(i, g) = 1/|genres(i)|`` if ``g`` is a genre of ``i`` else 0 (an item's genre weight
    split evenly over its genres) and ``Z_g`` normalises each genre row to sum 1. So p(i|u) is
    proportional to ``popularity(i)**beta * sum_g mix_u(g) w(i, g) / Z_g`` and sums to 1 over
    items for every user.

    Attributes
    ----------
    user_mix : ndarray of float64, shape [U, G]
        Each user's planted genre mix (rows sum to 1; 1-3 non-zero entries, e.g. 0.7/0.3).
    genre_item_prob : ndarray of float64, shape [G, I]
        p(i | genre g); rows sum to 1.
    popularity : ndarray of float64, shape [I]
        Zipf popularity weight ``rank(i)**-zipf_s`` (the most popular item has rank 1, weight 1).
    zipf_s, beta : float
        The Zipf exponent and the popularity exponent of the preference.

    Example::

        >>> data = power_law(n_users=50, n_items=80, interactions_per_user=5, seed=1)
        >>> p = data.truth.prob([0, 1])          # shape [2, 80], rows sum to 1
        >>> bool(np.allclose(p.sum(axis=1), 1.0))
        True
    """

    user_mix: np.ndarray
    genre_item_prob: np.ndarray
    popularity: np.ndarray
    zipf_s: float
    beta: float

    @property
    def n_users(self) -> int:
        return self.user_mix.shape[0]

    @property
    def n_items(self) -> int:
        return self.genre_item_prob.shape[1]

    def prob(self, users=None) -> np.ndarray:
        """True preference rows p(i|u), float64 [len(users), I] (all users when ``None``).

        U x I may be big: pass blocks of users.
        """
        mix = self.user_mix if users is None else self.user_mix[np.asarray(users, np.int64)]
        return mix @ self.genre_item_prob

    def pair_prob(self, users, items) -> np.ndarray:
        """p(i|u) for parallel arrays of users and items, float64 [n], without forming rows."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return np.einsum("ng,gn->n", self.user_mix[users], self.genre_item_prob[:, items])


# Interactions ///////////////////////////////////////////////////////////////////////////////


@dataclass(frozen=True, eq=False)
class Interactions:
    """An interaction data set over a dense index space, with its raw 64-bit IDs.

    Interactions are stored sorted by (user, item) with no duplicate pair (the constructor sorts
    and raises ``ValueError`` on duplicates; the loaders merge duplicates first). Train and test
    splits share ``user_ids``, ``item_ids``, genres and truth with the full data set, so dense
    indices mean the same in all three.

    Attributes
    ----------
    name : str
        Data set name (``summary()["name"]``).
    user_ids : ndarray of uint64, shape [U]
        Raw ID of dense user ``u`` (what an embedding table sees). Distinct.
    item_ids : ndarray of uint64, shape [I]
        Raw ID of dense item ``i``. Distinct.
    users, items : ndarray of int64, shape [N]
        Dense user and item index of each interaction.
    weights : ndarray of float64, shape [N], or None
        Optional interaction weight (e.g. the MovieLens rating).
    timestamps : ndarray of int64, shape [N], or None
        Optional time of each interaction (synthetic data: the order in which the user consumed
        the items, 0, 1, ...).
    item_genres : RowSets, shape [I, G]
        Genres (categories) of each item; an item may have none.
    genre_names : tuple of str, length G
    truth : GroundTruth or None
        Planted preferences (synthetic data only).

    Example::

        >>> d = Interactions.from_raw([10, 10, 7], [5, 6, 5], name="toy")
        >>> d.user_ids.tolist(), d.item_ids.tolist(), d.users.tolist(), d.items.tolist()
        ([7, 10], [5, 6], [0, 1, 1], [0, 0, 1])
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    item_genres: RowSets | None = None
    genre_names: tuple[str, ...] = ()
    truth: GroundTruth | None = None
    _sorted_ids: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("_sorted_ids", {})
        for k in ("user_ids", "item_ids"):
            v = np.asarray(getattr(self, k))
            if v.dtype not in (np.uint64, np.int64) or v.ndim != 1:
                raise TypeError(f"Interactions.{k} must be a 1-D uint64 or int64 array; got "
                                f"dtype {v.dtype}, shape {v.shape}")
            if v.dtype != np.uint64:
                v = np.ascontiguousarray(v).view(np.uint64)
            if np.unique(v).size != v.size:
                raise ValueError(f"Interactions.{k} holds duplicate raw IDs")
            set_(k, v)
        n_users, n_items = self.user_ids.size, self.item_ids.size
        users = np.asarray(self.users, dtype=np.int64).ravel()
        items = np.asarray(self.items, dtype=np.int64).ravel()
        if users.shape != items.shape:
            raise ValueError(f"users and items differ in shape: {users.shape} vs {items.shape}")
        if users.size and (users.min() < 0 or users.max() >= n_users):
            raise ValueError(f"users must lie in [0, {n_users})")
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(f"items must lie in [0, {n_items})")
        extra = {}
        for k, dt in (("weights", np.float64), ("timestamps", np.int64)):
            v = getattr(self, k)
            if v is not None:
                v = np.asarray(v, dtype=dt).ravel()
                if v.shape != users.shape:
                    raise ValueError(f"{k} has shape {v.shape}; expected {users.shape}")
                extra[k] = v
        key = users * np.int64(max(n_items, 1)) + items
        if key.size > 1 and not np.all(key[1:] > key[:-1]):
            order = np.argsort(key, kind="stable")
            key = key[order]
            users, items = users[order], items[order]
            extra = {k: v[order] for k, v in extra.items()}
            dup = np.flatnonzero(key[1:] == key[:-1])
            if dup.size:
                u, i = users[dup[0]], items[dup[0]]
                raise ValueError(f"duplicate interaction (user {self.user_ids[u]}, item "
                                 f"{self.item_ids[i]}); merge duplicates before building "
                                 "Interactions (Interactions.from_raw does)")
        set_("users", users)
        set_("items", items)
        for k in ("weights", "timestamps"):
            set_(k, extra.get(k))
        genres = self.item_genres
        if genres is None:
            genres = RowSets(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int64),
                             len(self.genre_names))
        if genres.n_rows != n_items:
            raise ValueError(f"item_genres has {genres.n_rows} rows; expected {n_items} items")
        names = tuple(str(g) for g in self.genre_names)
        if not names:
            names = tuple(f"genre{g}" for g in range(genres.n_cols))
        if len(names) != genres.n_cols:
            raise ValueError(f"{len(names)} genre names for {genres.n_cols} genres")
        set_("item_genres", genres)
        set_("genre_names", names)
        if self.truth is not None and (self.truth.n_users, self.truth.n_items) != (n_users,
                                                                                  n_items):
            raise ValueError("truth does not match the data set's users and items")

    # construction ------------------------------------------------------------------------------

    @classmethod
    def from_raw(cls, raw_users, raw_items, weights=None, timestamps=None, *, name="data",
                 item_genres: dict | None = None, genre_names=None) -> Interactions:
        """Build from raw IDs: dense indices follow ascending raw ID; duplicates are merged.

        Parameters
        ----------
        raw_users, raw_items : array_like of uint64 or int64, shape [N]
            Raw IDs of each interaction (int64 values are reinterpreted as uint64 bit patterns).
        weights : array_like of float, shape [N], optional
            Duplicate (user, item) pairs get the sum of their weights.
        timestamps : array_like of int, shape [N], optional
            Duplicate pairs keep the latest timestamp.
        name : str
        item_genres : dict or RowSets, optional
            ``{raw_item_id: [genre index, ...]}``, or a :class:`RowSets` whose rows follow the
            dense item order. Items of the dict absent from the interactions are ignored.
        genre_names : sequence of str, optional

        Returns
        -------
        Interactions
        """
        ru = _as_u64(raw_users, "raw_users")
        ri = _as_u64(raw_items, "raw_items")
        if ru.shape != ri.shape:
            raise ValueError(f"raw_users and raw_items differ in shape: {ru.shape} vs {ri.shape}")
        user_ids, users = np.unique(ru, return_inverse=True)
        item_ids, items = np.unique(ri, return_inverse=True)
        users = users.ravel().astype(np.int64)
        items = items.ravel().astype(np.int64)
        w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
        t = None if timestamps is None else np.asarray(timestamps, dtype=np.int64).ravel()
        key = users * np.int64(max(item_ids.size, 1)) + items
        ukey, first, inv = np.unique(key, return_index=True, return_inverse=True)
        if ukey.size != key.size:
            inv = inv.ravel()
            if w is not None:
                w = np.bincount(inv, weights=w, minlength=ukey.size)
            if t is not None:
                tt = np.full(ukey.size, np.iinfo(np.int64).min, dtype=np.int64)
                np.maximum.at(tt, inv, t)
                t = tt
            users, items = users[first], items[first]
        n_genres = 0 if genre_names is None else len(genre_names)
        if isinstance(item_genres, RowSets):
            genres = item_genres
        elif item_genres:
            pairs = [(k, g) for k, gs in item_genres.items() for g in gs]
            gi = _as_u64([p[0] for p in pairs], "item_genres keys")
            gg = np.asarray([p[1] for p in pairs], dtype=np.int64)
            pos = np.searchsorted(item_ids, gi).clip(0, max(item_ids.size - 1, 0))
            keep = item_ids[pos] == gi if item_ids.size else np.zeros(gi.size, bool)
            n_genres = max(n_genres, int(gg.max()) + 1 if gg.size else 0)
            genres = RowSets.from_pairs(pos[keep], gg[keep], item_ids.size, n_genres)
        else:
            genres = None
        return cls(name=name, user_ids=user_ids, item_ids=item_ids, users=users, items=items,
                   weights=w, timestamps=t, item_genres=genres,
                   genre_names=tuple(genre_names or ()))

    # sizes and views ---------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def n_genres(self) -> int:
        return int(self.item_genres.n_cols)

    @property
    def n_interactions(self) -> int:
        return int(self.users.size)

    def __len__(self) -> int:
        return self.n_interactions

    @property
    def raw_users(self) -> np.ndarray:
        """Raw user ID of each interaction, uint64 [N]."""
        return self.user_ids[self.users]

    @property
    def raw_items(self) -> np.ndarray:
        """Raw item ID of each interaction, uint64 [N]."""
        return self.item_ids[self.items]

    def user_items(self) -> RowSets:
        """Each user's item set, :class:`RowSets` of shape [U, I] (what the metrics take)."""
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.users, minlength=self.n_users), out=indptr[1:])
        return RowSets(indptr, self.items, self.n_items)

    def item_counts(self) -> np.ndarray:
        """Number of interactions (= distinct users) per item, int64 [I]."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64)

    def genre_weights(self) -> np.ndarray:
        """Item genre distribution, float64 [I, G]: weight 1/|genres(i)| on each genre of i.

        Rows of items without a genre are all zero.
        """
        return _genre_weights(self.item_genres)

    def user_index(self, raw_ids) -> np.ndarray:
        """Dense index of each raw user ID, int64; ``KeyError`` names an unknown ID."""
        return self._index("user_ids", raw_ids)

    def item_index(self, raw_ids) -> np.ndarray:
        """Dense index of each raw item ID, int64; ``KeyError`` names an unknown ID."""
        return self._index("item_ids", raw_ids)

    def _index(self, which, raw_ids):
        if which not in self._sorted_ids:
            ids = getattr(self, which)
            order = np.argsort(ids, kind="stable")
            self._sorted_ids[which] = (ids[order], order)
        sorted_ids, order = self._sorted_ids[which]
        raw = _as_u64(raw_ids, "raw_ids")
        pos = np.searchsorted(sorted_ids, raw).clip(0, max(sorted_ids.size - 1, 0))
        bad = (sorted_ids[pos] != raw) if sorted_ids.size else np.ones(raw.shape, bool)
        if np.any(bad):
            raise KeyError(f"unknown {which[:-4]} ID {int(raw[bad].ravel()[0])}")
        return order[pos].astype(np.int64)

    def subset(self, mask) -> Interactions:
        """The interactions where ``mask`` (bool [N]) is true, in the same index space."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.users.shape:
            raise ValueError(f"mask has shape {mask.shape}; expected {self.users.shape}")
        return replace(self, users=self.users[mask], items=self.items[mask],
                       weights=None if self.weights is None else self.weights[mask],
                       timestamps=None if self.timestamps is None else self.timestamps[mask])

    def summary(self) -> dict:
        """``{name, users, items, interactions, top1pct_share}`` as results.json stores it.

        ``top1pct_share`` is the share of interactions on the ``ceil(I/100)`` most-interacted
        items.
        """
        counts = np.sort(self.item_counts())[::-1]
        n_top = (self.n_items + 99) // 100
        n = self.n_interactions
        return {"name": self.name, "users": self.n_users, "items": self.n_items,
                "interactions": n,
                "top1pct_share": float(counts[:n_top].sum() / n) if n else 0.0}


def _genre_weights(genres: RowSets) -> np.ndarray:
    w = np.zeros((genres.n_rows, genres.n_cols), dtype=np.float64)
    lengths = genres.lengths()
    w[genres.row_ids(), genres.indices] = 1.0 / np.repeat(lengths, lengths)
    return w


def _as_u64(x, what) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind in "iu":
        return a.astype(np.int64).view(np.uint64)
    if a.dtype == object or a.size == 0:
        try:
            return np.asarray([int(v) & _U64_MAX for v in a.ravel()],
                              dtype=np.uint64).reshape(a.shape)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{what} must be integer IDs (uint64 or int64); got dtype {a.dtype}")


# generator //////////////////////////////////////////////////////////////////////////////////


def power_law(n_users: int = 2000, n_items: int = 3000, n_genres: int = 18,
              interactions_per_user: int = 50, zipf_s: float = 1.1, beta: float = 1.0, *,
              genres_per_item: Sequence[float] = (0.55, 0.3, 0.15),
              interests_per_user: Sequence[float] = (0.3, 0.5, 0.2),
              mix_concentration: float = 1.5, activity_sigma: float = 0.5,
              seed: int = 0, name: str = "synthetic") -> Interactions:
    """Seeded power-law interaction data with planted genre structure.

    The generative story (all draws from ``numpy.random.default_rng(seed)``):

    1. **Items.** A random permutation assigns popularity ranks 1..I; ``popularity(i) =
       rank(i)**-zipf_s`` (Zipf). Each item gets 1, 2 or 3 distinct genres with probabilities
       ``genres_per_item``, drawn without replacement with genre prevalence ``∝ (g+1)**-0.5``
       (so genres differ in size); every genre gets at least one item.
    2. **Users.** Each user has 1, 2 or 3 interest genres (probabilities ``interests_per_user``,
       drawn like the item genres) and a planted mix over them, ``Dirichlet(mix_concentration)``
       (so 70/30 users are common). Activity ``n_u`` is log-normal with mean
       ``interactions_per_user`` and log-sd ``activity_sigma`` (0: every user has exactly
       ``interactions_per_user``), at least ``min(5, interactions_per_user)``, at most the number
       of items the user can like.
    3. **Preference** (see :class:`GroundTruth`): ``p(i|u) = Σ_g mix_u(g) ·
       popularity(i)**beta · w(i,g) / Z_g``, ``w(i,g) = 1/|genres(i)|`` for ``g ∈ genres(i)``.
    4. **Interactions.** Each user consumes ``n_u`` distinct items sampled without replacement
       from p(·|u) (successive sampling: the first ``n_u`` distinct items of an i.i.d. stream);
       ``timestamps`` record that order (0, 1, ...).
    5. **IDs.** Users and items get distinct uniformly random 64-bit raw IDs (uint64).

    Parameters
    ----------
    n_users, n_items, n_genres : int
        Sizes. ``n_items >= n_genres``. The default (2,000 x 3,000, 18 genres, ~50 per user, about
        100,000 interactions) generates in well under a second; tens of millions of interactions
        work too (memory is O(N + G·I)).
    interactions_per_user : int
        Mean interactions per user.
    zipf_s : float
        Zipf exponent of item popularity (> 0).
    beta : float
        Weight of popularity in the preference (0: uniform within a genre).
    genres_per_item, interests_per_user : sequence of 3 floats
        Probabilities of 1, 2, 3 genres per item / interest genres per user.
    mix_concentration : float
        Dirichlet concentration of a user's mix over their interest genres.
    activity_sigma : float
        Log-sd of user activity.
    seed : int
    name : str

    Returns
    -------
    Interactions
        With ``truth`` set (``truth.user_mix`` [U, G], ``truth.prob(users)`` [n, I]), genre names
        ``"g00", "g01", ...`` and timestamps.

    Example::

        >>> d = power_law(n_users=100, n_items=200, n_genres=5, interactions_per_user=10, seed=3)
        >>> d.n_users, d.n_items, d.n_genres, d.user_ids.dtype.name
        (100, 200, 5, 'uint64')
        >>> sorted(d.summary())
        ['interactions', 'items', 'name', 'top1pct_share', 'users']
    """
    if n_users < 1 or n_items < 1 or n_genres < 1:
        raise ValueError(f"sizes must be positive; got n_users={n_users}, n_items={n_items}, "
                         f"n_genres={n_genres}")
    if n_items < n_genres:
        raise ValueError(f"n_items ({n_items}) must be >= n_genres ({n_genres})")
    if interactions_per_user < 1:
        raise ValueError(f"interactions_per_user must be >= 1; got {interactions_per_user}")
    if zipf_s <= 0:
        raise ValueError(f"zipf_s must be > 0; got {zipf_s}")
    gpi = _probs3(genres_per_item, "genres_per_item")
    ipu = _probs3(interests_per_user, "interests_per_user")
    rng = np.random.default_rng(seed)
    U, I, G = int(n_users), int(n_items), int(n_genres)

    # items: popularity and genres
    rank = rng.permutation(I) + 1
    popularity = rank.astype(np.float64) ** -float(zipf_s)
    prevalence = np.log((np.arange(G) + 1.0) ** -0.5)
    n_item_genres = np.minimum(rng.choice(3, size=I, p=gpi) + 1, G)
    item_pick = _weighted_sets(rng, prevalence, n_item_genres)      # bool [I, G]
    first = rng.permutation(I)[:G]                                  # every genre gets an item
    item_pick[first] = False
    item_pick[first, np.arange(G)] = True
    rows, cols = np.nonzero(item_pick)
    item_genres = RowSets.from_pairs(rows, cols, I, G)
    w = _genre_weights(item_genres)                                 # [I, G]
    gip = (popularity ** float(beta))[None, :] * w.T                # [G, I]
    gip /= gip.sum(axis=1, keepdims=True)

    # users: interest genres and planted mix
    n_interests = np.minimum(rng.choice(3, size=U, p=ipu) + 1, G)
    user_pick = _weighted_sets(rng, prevalence, n_interests)        # bool [U, G]
    gam = rng.gamma(float(mix_concentration), size=(U, G)) * user_pick
    user_mix = gam / gam.sum(axis=1, keepdims=True)
    truth = GroundTruth(user_mix=user_mix, genre_item_prob=gip, popularity=popularity,
                        zipf_s=float(zipf_s), beta=float(beta))

    # activity, capped by each user's support (items of their interest genres)
    user_sets, user_inv = np.unique(user_pick, axis=0, return_inverse=True)
    item_sets, item_count = np.unique(item_pick, axis=0, return_counts=True)
    overlap = (user_sets.astype(np.float64) @ item_sets.T.astype(np.float64)) > 0
    support = (overlap @ item_count).astype(np.int64)[user_inv.ravel()]
    if activity_sigma > 0:
        mu = math.log(interactions_per_user) - activity_sigma**2 / 2
        n_u = np.rint(rng.lognormal(mu, activity_sigma, size=U)).astype(np.int64)
    else:
        n_u = np.full(U, int(interactions_per_user), dtype=np.int64)
    n_u = np.clip(n_u, min(5, int(interactions_per_user)), None)
    n_u = np.minimum(n_u, support)

    users, items = _sample_without_replacement(rng, truth, item_genres, n_u)
    order = np.arange(users.size) - np.repeat(np.cumsum(n_u) - n_u, n_u)

    return Interactions(name=name, user_ids=_random_ids(rng, U), item_ids=_random_ids(rng, I),
                        users=users, items=items, timestamps=order, item_genres=item_genres,
                        genre_names=tuple(f"g{g:02d}" for g in range(G)), truth=truth)


def _probs3(p, what):
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (3,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"{what} must be 3 probabilities (for 1, 2, 3) summing to 1; got {p}")
    return p / p.sum()


def _weighted_sets(rng, log_weights, sizes):
    """Bool [n, G]: row r holds sizes[r] distinct columns drawn without replacement ∝ weights."""
    keys = log_weights[None, :] + rng.gumbel(size=(sizes.size, log_weights.size))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    return rank < sizes[:, None]


def _random_ids(rng, n):
    ids = rng.integers(0, _U64_MAX, size=n, dtype=np.uint64, endpoint=True)
    while np.unique(ids).size != n:  # pragma: no cover  (probability ~ n^2 / 2^65)
        ids = rng.integers(0, _U64_MAX, size=n, dtype=np.uint64, endpoint=True)
    return ids


def _sample_without_replacement(rng, truth, item_genres, n_u, max_rounds=30):
    """Per user u, the first n_u[u] distinct items of an i.i.d. stream from p(.|u).

    Returns (users, items) int64 [sum n_u], sorted by user, in consumption order within a user.
    """
    U, G = truth.user_mix.shape
    I = truth.n_items
    # genre -> items, with the cumulative p(i|g) offset by g so one searchsorted serves all g
    by_genre = item_genres.transpose()                              # [G, I]
    g_of = by_genre.row_ids()
    p_ig = truth.genre_item_prob[g_of, by_genre.indices]
    cum = np.cumsum(p_ig)
    cum -= np.repeat(cum[by_genre.indptr[:-1]] - p_ig[by_genre.indptr[:-1]], by_genre.lengths())
    g_key = g_of + np.minimum(cum, 1.0)
    u_key = (np.arange(U)[:, None] + np.cumsum(truth.user_mix, axis=1).clip(max=1.0)).ravel()

    acc_u = np.zeros(0, np.int64)
    acc_i = np.zeros(0, np.int64)
    have = np.zeros(U, np.int64)
    for r in range(max_rounds):
        todo = np.flatnonzero(have < n_u)
        if todo.size == 0:
            break
        draws = (n_u[todo] - have[todo]) * (2 << min(r, 8)) + 8
        du = np.repeat(todo, draws)
        pos = np.searchsorted(u_key, du + rng.random(du.size), side="right")
        g = np.minimum(pos - du * G, G - 1)
        pos = np.searchsorted(g_key, g + rng.random(du.size), side="right")
        pos = np.minimum(pos, by_genre.indptr[g + 1] - 1)
        di = by_genre.indices[pos]
        acc_u, acc_i, have = _first_distinct(np.concatenate([acc_u, du]),
                                             np.concatenate([acc_i, di]), n_u, I)
    todo = np.flatnonzero(have < n_u)
    if todo.size:  # pragma: no cover  (only for users who want nearly all of their support)
        extra_u, extra_i = [acc_u], [acc_i]
        for u in todo:
            mine = acc_i[acc_u == u]
            with np.errstate(divide="ignore"):
                keys = np.log(truth.prob([u])[0]) + rng.gumbel(size=I)
            keys[mine] = -np.inf
            pick = np.argsort(-keys)[: n_u[u] - mine.size]
            extra_u.append(np.full(pick.size, u, np.int64))
            extra_i.append(pick.astype(np.int64))
        acc_u, acc_i, have = _first_distinct(np.concatenate(extra_u), np.concatenate(extra_i),
                                             n_u, I)
    return acc_u, acc_i


def _first_distinct(users, items, n_u, n_items):
    """Keep, per user, the first n_u distinct items in stream order (stable)."""
    key = users * np.int64(n_items) + items
    _, first = np.unique(key, return_index=True)
    first.sort()                                    # stream order
    order = first[np.argsort(users[first], kind="stable")]
    u, i = users[order], items[order]
    counts = np.bincount(u, minlength=n_u.size)
    start = np.cumsum(counts) - counts
    rank = np.arange(u.size) - np.repeat(start, counts)
    keep = rank < n_u[u]
    u, i = u[keep], i[keep]
    return u, i, np.bincount(u, minlength=n_u.size)


# loaders ////////////////////////////////////////////////////////////////////////////////////


def _read_lines(path: Path, encoding="utf-8"):
    try:
        text = path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not {encoding} text ({e})") from None
    return text.splitlines()


def _split_lines(lines, sep):
    """Return (rows of fields, 1-based line numbers) skipping blank and '#' comment lines."""
    if sep is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = [[f.strip() for f in ln.split(sep)] if ln.strip() else [] for ln in lines]
    keep = [n for n, r in enumerate(rows) if r and not r[0].startswith("#")]
    return [rows[n] for n in keep], [n + 1 for n in keep]


def _is_int(tok: str) -> bool:
    try:
        int(tok)
        return True
    except ValueError:
        return False


def _parse_column(tokens, kind, path, numbers, what):
    """Vectorised parse of a column of strings; on failure find and name the first bad line."""
    try:
        if kind == "id":
            try:
                return np.fromiter(map(int, tokens), np.int64, len(tokens)).view(np.uint64)
            except OverflowError:
                return np.fromiter(map(int, tokens), np.uint64, len(tokens))
        if kind == "int":
            return np.fromiter(map(int, tokens), np.int64, len(tokens))
        out = np.fromiter(map(float, tokens), np.float64, len(tokens))
        if np.all(np.isfinite(out)):
            return out
    except (ValueError, OverflowError):
        pass
    values = []
    for tok, n in zip(tokens, numbers):
        try:
            if kind == "float":
                v = float(tok)
                if not math.isfinite(v):
                    raise ValueError
            else:
                v = int(tok)
                hi = _U64_MAX if kind == "id" else 2**63 - 1
                if not -(2**63) <= v <= hi:
                    raise ValueError
                v = v & _U64_MAX if kind == "id" else v
        except ValueError:
            need = {"id": "an integer ID in [-2^63, 2^64)", "int": "an int64 integer",
                    "float": "a finite number"}[kind]
            raise ValueError(f"{path}, line {n}: {what} {tok!r} is not {need}") from None
        values.append(v)
    # only reached for an ID column mixing negative IDs and IDs >= 2^63
    return np.asarray(values, dtype=np.uint64)


def load_interactions(path: PathLike, categories: PathLike | None = None, *,
                      name: str | None = None) -> Interactions:
    """Load a generic ``user item [weight [timestamp]]`` file.

    Format: one interaction per line, fields separated by whitespace, or by commas when the file
    contains a comma. Blank lines and lines starting with ``#`` are skipped. The first line is a
    header (and skipped) when its first field is not an integer. User and item IDs are integers in
    ``[-2^63, 2^64)`` (negative ones are stored as their uint64 bit pattern); ``weight`` is a
    finite float, ``timestamp`` an integer. Every line has the same number of fields (2, 3 or 4).
    Repeated (user, item) pairs are merged: weights summed, latest timestamp kept.

    The optional ``categories`` file has lines ``item category`` (same separator rules; the
    category is the rest of the line after the first separator, so it may contain spaces in a
    whitespace file), one or several lines per item. Genre indices follow sorted category names;
    items absent from the interactions are ignored; items without a line have no genre.

    Parameters
    ----------
    path : str or Path
    categories : str or Path, optional
    name : str, optional
        Defaults to the file's stem.

    Returns
    -------
    Interactions
        Dense indices follow ascending raw ID.

    Raises
    ------
    ValueError
        Malformed input; the message names the file and line (``"PATH, line 7: ..."``).
    FileNotFoundError

    Example::

        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "clicks.csv"
        >>> _ = p.write_text("user,item,weight\\n1,100,2.0\\n2,100,1.0\\n2,7,1.0\\n")
        >>> d = load_interactions(p)
        >>> d.n_users, d.n_items, d.weights.tolist()
        (2, 2, [2.0, 1.0, 1.0])
    """
    path = Path(path)
    lines = _read_lines(path)
    sep = "," if any("," in ln for ln in lines[:1000]) else None
    rows, numbers = _split_lines(lines, sep)
    if rows and not (_is_int(rows[0][0]) and len(rows[0]) > 1 and _is_int(rows[0][1])):
        if _is_int(rows[0][0]):
            pass  # a data line with a bad item field: reported below
        else:
            rows, numbers = rows[1:], numbers[1:]
    if not rows:
        raise ValueError(f"{path}: no interactions (expected lines 'user item [weight]')")
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ncol = int(widths[0])
    if ncol not in (2, 3, 4):
        raise ValueError(f"{path}, line {numbers[0]}: expected 2 to 4 fields "
                         f"'user item [weight [timestamp]]', found {ncol}")
    bad = np.flatnonzero(widths != ncol)
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"{path}, line {numbers[b]}: expected {ncol} fields like line "
                         f"{numbers[0]}, found {widths[b]}")
    flat = list(itertools.chain.from_iterable(rows))
    cols = [flat[c::ncol] for c in range(ncol)]
    ru = _parse_column(cols[0], "id", path, numbers, "user")
    ri = _parse_column(cols[1], "id", path, numbers, "item")
    w = _parse_column(cols[2], "float", path, numbers, "weight") if ncol >= 3 else None
    t = _parse_column(cols[3], "int", path, numbers, "timestamp") if ncol >= 4 else None
    genres, genre_names = (None, None)
    if categories is not None:
        genres, genre_names = _load_categories(Path(categories))
    return Interactions.from_raw(ru, ri, w, t, name=name or path.stem, item_genres=genres,
                                 genre_names=genre_names)


def _load_categories(path: Path):
    lines = _read_lines(path)
    sep = "," if any("," in ln for ln in lines[:1000]) else None
    items, cats, numbers = [], [], []
    for n, ln in enumerate(lines, 1):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(sep, 1)
        if len(parts) != 2 or not parts[1].strip():
            raise ValueError(f"{path}, line {n}: expected 'item category', found {s!r}")
        items.append(parts[0].strip())
        cats.append(parts[1].strip())
        numbers.append(n)
    if items and not _is_int(items[0]):
        items, cats, numbers = items[1:], cats[1:], numbers[1:]   # header line
    raw = _parse_column(items, "id", path, numbers, "item") if items else np.zeros(0, np.uint64)
    names, gidx = np.unique(np.asarray(cats, dtype=str), return_inverse=True)
    mapping: dict = {}
    for r, g in zip(raw.tolist(), gidx.ravel().tolist()):
        mapping.setdefault(r, []).append(g)
    return mapping, tuple(str(x) for x in names)


def load_movielens(path: PathLike, *, name: str = "ml-100k") -> Interactions:
    """Load MovieLens-100K: ``u.data`` ratings with genres from ``u.item``.

    ``u.data`` holds tab-separated ``user item rating timestamp`` lines; ``u.item`` holds
    pipe-separated lines (latin-1) whose last 19 fields are 0/1 genre flags; genre names come from
    ``u.genre`` (``name|index``) when present, else :data:`MOVIELENS_GENRES`. Ratings become
    ``weights`` (every rating counts as an interaction); timestamps are kept. Items listed in
    ``u.item`` but never rated are dropped; ``u.item`` is optional (no genres without it).

    Parameters
    ----------
    path : str or Path
        The directory holding ``u.data`` (or the ``u.data`` file itself).

    Returns
    -------
    Interactions
        For ml-100k: 943 users, 1682 items, 100,000 interactions, 19 genres.

    Raises
    ------
    ValueError
        Malformed input, naming the file and line.

    Example::

        >>> d = load_movielens("../shared/data/ml-100k")   # doctest: +SKIP
        >>> d.n_users, d.n_items, d.n_interactions, d.n_genres   # doctest: +SKIP
        (943, 1682, 100000, 19)
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    data_file = path if path.is_file() else folder / "u.data"
    rows, numbers = _split_lines(_read_lines(data_file, "latin-1"), None)
    if not rows:
        raise ValueError(f"{data_file}: no ratings")
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(widths != 4)
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"{data_file}, line {numbers[b]}: expected 4 tab-separated fields "
                         f"'user item rating timestamp', found {widths[b]}")
    flat = list(itertools.chain.from_iterable(rows))
    ru = _parse_column(flat[0::4], "id", data_file, numbers, "user")
    ri = _parse_column(flat[1::4], "id", data_file, numbers, "item")
    w = _parse_column(flat[2::4], "float", data_file, numbers, "rating")
    t = _parse_column(flat[3::4], "int", data_file, numbers, "timestamp")

    names = MOVIELENS_GENRES
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        pairs = []
        for n, ln in enumerate(_read_lines(genre_file, "latin-1"), 1):
            if not ln.strip():
                continue
            parts = ln.strip().rsplit("|", 1)
            if len(parts) != 2 or not _is_int(parts[1]):
                raise ValueError(f"{genre_file}, line {n}: expected 'name|index', found {ln!r}")
            pairs.append((int(parts[1]), parts[0]))
        names = tuple(nm for _, nm in sorted(pairs))
    genres = None
    item_file = folder / "u.item"
    if item_file.is_file():
        G = len(names)
        ids, flags = [], []
        for n, ln in enumerate(_read_lines(item_file, "latin-1"), 1):
            if not ln.strip():
                continue
            parts = ln.split("|")
            if len(parts) < G + 2 or not _is_int(parts[0]):
                raise ValueError(f"{item_file}, line {n}: expected 'id|title|...' followed by "
                                 f"{G} genre flags, found {len(parts)} fields")
            tail = parts[-G:]
            if any(f not in ("0", "1") for f in tail):
                raise ValueError(f"{item_file}, line {n}: genre flags must be 0 or 1")
            ids.append(int(parts[0]))
            flags.append([f == "1" for f in tail])
        fl = np.asarray(flags, dtype=bool).reshape(-1, G)
        genres = {i: np.flatnonzero(f).tolist() for i, f in zip(ids, fl)}
    return Interactions.from_raw(ru, ri, w, t, name=name, item_genres=genres, genre_names=names)


def load_dataset(spec: str, *, seed: int = 0) -> Interactions:
    """Load a data set from a CLI spec string.

    ``"synthetic"`` or ``"synthetic:n_users=5000,n_items=8000,zipf_s=1.2"`` (keyword arguments of
    :func:`power_law`; ``seed`` comes from this function unless given), ``"movielens:PATH"``,
    ``"interactions:PATH"`` or ``"interactions:PATH,categories=PATH"``.

    Example::

        >>> load_dataset("synthetic:n_users=30,n_items=40,interactions_per_user=5").n_users
        30
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        kwargs: dict = {"seed": seed}
        for item in filter(None, arg.split(",")):
            k, eq, v = item.partition("=")
            if not eq:
                raise ValueError(f"dataset spec {spec!r}: expected key=value, found {item!r}")
            kwargs[k.strip()] = _literal(v.strip())
        try:
            return power_law(**kwargs)
        except TypeError as e:
            raise ValueError(f"dataset spec {spec!r}: {e}") from None
    if kind == "movielens" and arg:
        return load_movielens(arg)
    if kind == "interactions" and arg:
        path, _, cats = arg.partition(",categories=")
        return load_interactions(path, categories=cats or None)
    raise ValueError(f"unknown dataset spec {spec!r}; expected 'synthetic[:key=value,...]', "
                     "'movielens:PATH' or 'interactions:PATH[,categories=PATH]'")


def _literal(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


# split //////////////////////////////////////////////////////////////////////////////////////


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

        >>> d = power_law(n_users=20, n_items=50, interactions_per_user=10, seed=0)
        >>> tr, te = train_test_split(d, n_test=1, by_time=True)
        >>> te.n_interactions == d.n_users
        True
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1); got {test_fraction}")
    if n_test is not None and n_test < 0:
        raise ValueError(f"n_test must be >= 0; got {n_test}")
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
        order = np.lexsort((tie, -data.timestamps, data.users))
    else:
        order = np.lexsort((tie, data.users))
    rank = np.empty(data.n_interactions, dtype=np.int64)
    start = np.cumsum(n) - n
    rank[order] = np.arange(data.n_interactions) - np.repeat(start, n)
    is_test = rank < t[data.users]
    return data.subset(~is_test), data.subset(is_test)
