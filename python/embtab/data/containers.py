"""The data containers: :class:`RowSets` (ragged sets in CSR form) and :class:`Interactions`.

Example::

    >>> from embtab.data import Interactions
    >>> d = Interactions.from_raw([10, 10, 7], [5, 6, 5], name="toy")
    >>> d.n_users, d.n_items, d.n_interactions
    (2, 2, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from embtab._research import as_u64
from embtab.data.truth import Truth

__all__ = ["Interactions", "RowSets"]


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
        """The set of row ``r``; a negative ``r`` counts from the end, as in a list (``-1`` is
        the last row). IndexError for a row out of range, TypeError for a non-integer."""
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)):
            raise TypeError(f"RowSets row must be an int, got {type(r).__name__}")
        n = self.n_rows
        if not -n <= r < n:   # (-1 gave [], the empty slice indptr[-1]:indptr[0])
            raise IndexError(f"RowSets row {r} out of range for {n} rows")
        r = int(r) % n
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
        """The sets of the given rows, in that order, shape [len(rows), n_cols].

        ``rows`` are integers; a negative one counts from the end, as in :meth:`__getitem__`.
        IndexError for a row out of range, TypeError for a non-integer array.
        """
        rows = np.asarray(rows)
        if rows.size and rows.dtype.kind not in "iu":
            raise TypeError(f"RowSets.take_rows: rows must be integers, got dtype {rows.dtype}")
        rows = rows.ravel()
        n = self.n_rows
        if rows.size and (rows.max() >= n or (rows.dtype.kind == "i" and rows.min() < -n)):
            bad = rows[(rows >= n) | (rows < -n)][0]   # (checked before a cast could wrap)
            raise IndexError(f"RowSets row {bad} out of range for {n} rows")
        rows = rows.astype(np.int64, copy=False)
        if rows.size and rows.min() < 0:   # -1 read indptr[0] - indptr[-1]: negative lengths
            rows = np.where(rows < 0, rows + n, rows)
        lengths = self.indptr[rows + 1] - self.indptr[rows]  # (not all rows' lengths: O(len(rows)))
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        offs = np.repeat(self.indptr[rows] - indptr[:-1], lengths)
        return RowSets(indptr, self.indices[np.arange(indptr[-1]) + offs], self.n_cols)

    def transpose(self) -> RowSets:
        """Sets per column: shape [n_cols, n_rows]."""
        return RowSets.from_pairs(self.indices, self.row_ids(), self.n_cols, self.n_rows)

    def split_weights(self) -> np.ndarray:
        """Weight ``1/|row|`` on each member of a row, float64 [n_rows, n_cols].

        For item genres: an item's genre weight split evenly over its genres. Empty rows are
        all zero.

        Example::

            >>> RowSets.from_lists([[0, 1], [2]], n_cols=3).split_weights().tolist()
            [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
        """
        w = np.zeros((self.n_rows, self.n_cols), dtype=np.float64)
        lengths = self.lengths()
        w[self.row_ids(), self.indices] = 1.0 / np.repeat(lengths, lengths)
        return w



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
    truth : Truth or None
        The true preference p(i|u) (synthetic data: the planted
        :class:`~embtab.data.GroundTruth`).

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
    truth: Truth | None = None
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
            Duplicate (user, item) pairs get the sum of their weights; finite weights whose sum
            overflows float64 (to ±inf) are refused with ``ValueError`` naming ``weights`` and
            the pair.
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
        ru = as_u64(raw_users, "raw_users")
        ri = as_u64(raw_items, "raw_items")
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
                finite = bool(np.isfinite(w).all())
                w = np.bincount(inv, weights=w, minlength=ukey.size)
                if finite and not np.isfinite(w).all():
                    # finite weights of repeated pairs summed past float64's range to ±inf
                    j = int(np.flatnonzero(~np.isfinite(w))[0])
                    u, i = users[first[j]], items[first[j]]
                    raise ValueError(
                        f"weights: the {int(np.count_nonzero(inv == j))} weights of the "
                        f"repeated (user {user_ids[u]}, item {item_ids[i]}) pair sum to "
                        f"{w[j]} (beyond float64's range); scale the weights down before "
                        "merging")
            if t is not None:
                tt = np.full(ukey.size, np.iinfo(np.int64).min, dtype=np.int64)
                np.maximum.at(tt, inv, t)
                t = tt
            users, items = users[first], items[first]
        n_genres = 0 if genre_names is None else len(genre_names)
        if isinstance(item_genres, RowSets):
            genres = item_genres
        elif item_genres:
            pairs = []
            for k, gs in item_genres.items():
                if isinstance(gs, (str, bytes)) or not hasattr(gs, "__iter__"):
                    raise TypeError(f"item_genres[{k!r}] must be a list of genre indices; "
                                    f"got {gs!r}")
                for g in gs:
                    if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer)) \
                            or g < 0 or (genre_names is not None and g >= n_genres):
                        need = (f"in [0, {n_genres}) (one per genre name)"
                                if genre_names is not None else ">= 0")
                        raise ValueError(f"item_genres[{k!r}]: genre index {g!r} is not an "
                                         f"integer {need}")
                    pairs.append((k, int(g)))
            gi = as_u64([p[0] for p in pairs], "item_genres keys")
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
        """Item genre distribution, float64 [I, G]: weight ``1/|genres(i)|`` on each genre of i.

        Rows of items without a genre are all zero.
        """
        return self.item_genres.split_weights()

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
        raw = as_u64(raw_ids, "raw_ids")
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

