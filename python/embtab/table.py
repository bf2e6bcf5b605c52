"""The collisionless ID -> row table: :class:`CuckooTable`."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from embtab import _core
from embtab._checks import U64, check_bytes, check_int, check_real, check_seed, check_threads
from embtab._errors import TableFullError

__all__ = ["CuckooTable", "TableFullError"]


class CuckooTable:
    """A bucketized cuckoo hash table giving every raw 64-bit ID its own row.

    IDs are any 64-bit values (0 and 2**64-1 included; no key is reserved), passed as 1-D
    C-contiguous ``int64`` or ``uint64`` NumPy arrays; ``int64`` is reinterpreted bit for bit, so
    ``-1`` and ``2**64-1`` are the same ID. Any other dtype raises ``TypeError``, any other
    shape ``ValueError``: IDs are never cast implicitly.

    Rows are integers in ``[0, num_rows)``. A new ID takes the lowest row freed by
    :meth:`erase`, else the next unused row; within one batch, new IDs are numbered in order of
    first occurrence. Rows never move: growth rehashes the index only. The table's whole state
    is therefore its ``(key, row)`` pairs plus ``num_rows``, which :meth:`save`, pickling and
    :meth:`from_items` carry exactly.

    The index is an array of 64-byte buckets of 4 ``(key, row)`` slots; a key lives in one of
    two buckets chosen by ``mix64(key, seed)`` (a SplitMix64 finaliser; see
    ``cpp/include/embtab/hash.hpp``). An insert that finds both full moves keys along the
    shortest displacement path (breadth-first, at most 5 moves); the table grows by
    ``growth_factor`` when no path exists or the load factor would pass ``max_load_factor``.

    Parameters
    ----------
    capacity : int, default 0
        Number of IDs to make room for up front (the table grows past it as needed).
    max_size : int or None, default None
        Most live IDs. When reached, :meth:`lookup_or_insert` of a batch with new IDs raises
        :class:`TableFullError` and inserts nothing.
    growth_factor : float, default 2.0
        Multiplier of the bucket count on growth, in (1, 16]. Every growth rehashes the whole
        index, so a factor close to 1 grows often: filling from empty rehashes about
        1 / (growth_factor - 1) times as many keys as it ends with (once at 2.0; 100 times at
        1.01).
    max_load_factor : float, default 0.9
        The table grows before its load factor (live IDs / slots) passes this, in [0.5, 0.98].
        Higher packs more IDs per byte (16 bytes per slot: 17.8 bytes per ID at growth with
        0.9, 16.8 with 0.95) but slows inserts near the limit (displacement searches): a
        10^7-ID build from empty ran 1.2-1.5x faster at 0.9 than at 0.95 in the median
        (bench/README.md, "New IDs").
    seed : int, default 0
        Hash seed (0 <= seed < 2**64). The mixer is invertible, so whoever knows the seed can
        choose IDs that share both buckets at every size; nine of them cannot all be placed.
        An ID that finds no place while the index is under half of ``max_load_factor`` (random
        IDs essentially never do) makes its batch raise ``ValueError`` instead of growing the
        table for it: the batch is undone (IDs and rows; the index may keep room it grew).
        IDs that crowd a few buckets only at the current size are refused too. Give a table
        fed with IDs from outside a seed of your own.
    num_threads : int, default 0
        Threads for batch operations (0 = all hardware threads). Batches of up to 16,384 IDs
        run on the calling thread. Results are identical for any thread count.

    Notes
    -----
    Thread safety: every method may be called from several Python threads at once. Lookups
    share a reader lock; inserts, erases and the like take the writer lock for the whole batch,
    so a batch is applied atomically. A ``lookup_or_insert`` that fails (``TableFullError``,
    ``MemoryError`` in a growth, ``ValueError`` for IDs chosen to collide) leaves the same IDs,
    rows and free rows as before the call. The GIL is released while a batch runs, and while
    ``len()``, ``stats()`` and the size properties wait for the lock. The lock prefers
    writers: an insert waits for the lookups already running, not for ones that keep
    arriving. After ``os.fork()`` the child can use a table that other threads of the parent
    were only reading (the child's first call resets the lock, whose reader count was the
    parent's); a table another thread was writing at the fork must not be used in the child
    (its batch may be half applied there).

    Examples
    --------
    >>> import numpy as np, embtab
    >>> t = embtab.CuckooTable()
    >>> t.lookup_or_insert(np.array([42, -1, 42, 7], dtype=np.int64))
    array([0, 1, 0, 2])
    >>> t.lookup(np.array([7, 8], dtype=np.uint64))
    array([ 2, -1])
    """

    __slots__ = ("_t", "_num_threads", "__weakref__")

    def __init__(
        self,
        capacity: int = 0,
        *,
        max_size: Optional[int] = None,
        growth_factor: float = 2.0,
        max_load_factor: float = 0.9,
        seed: int = 0,
        num_threads: int = 0,
    ) -> None:
        capacity = check_int(capacity, "capacity", min=0, max=U64 - 1)
        if max_size is not None:
            max_size = check_int(max_size, "max_size", min=1, max=U64 - 1)
        seed = check_seed(seed)
        # The ranges are checked by the C++ core (TableConfig::validate), after these types.
        growth_factor = check_real(growth_factor, "growth_factor")
        max_load_factor = check_real(max_load_factor, "max_load_factor")
        self._num_threads = check_threads(num_threads, default=0)
        self._t = _core._CuckooTable(capacity, growth_factor, max_load_factor, max_size or 0, seed)

    @classmethod
    def _wrap(cls, core, num_threads: int = 0) -> "CuckooTable":
        self = cls.__new__(cls)
        self._t = core
        self._num_threads = num_threads
        return self

    # batch operations -------------------------------------------------------------------

    def lookup_or_insert(self, ids: np.ndarray, num_threads: Optional[int] = None) -> np.ndarray:
        """Rows of ``ids``, inserting the absent ones.

        Parameters
        ----------
        ids : ndarray of int64 or uint64, shape (n,)
        num_threads : int, optional
            Overrides the table's ``num_threads`` for this call.

        Returns
        -------
        ndarray of int64, shape (n,)

        Raises
        ------
        TableFullError
            If ``max_size`` would be exceeded; the table is then left exactly as it was.
        """
        return self._t.lookup_or_insert(ids, check_threads(num_threads, default=self._num_threads))

    def lookup(self, ids: np.ndarray, num_threads: Optional[int] = None, *,
               count_absent: bool = False):
        """Rows of ``ids`` (int64, shape (n,)), ``-1`` where an ID is absent. Never inserts.

        With ``count_absent=True``, returns ``(rows, absent)``: ``absent`` is how many entries
        are ``-1``, counted during the lookup (no second pass over the rows)."""
        nt = check_threads(num_threads, default=self._num_threads)
        if count_absent:
            return self._t.lookup_counted(ids, nt)
        return self._t.lookup(ids, nt)

    @staticmethod
    def lookup_many(
        tables: Sequence["CuckooTable"], ids: Sequence[np.ndarray], num_threads: int = 0, *,
        count_absent: bool = False,
    ) -> list:
        """``[tables[j].lookup(ids[j]) for j]`` in one native call: a list of int64 row arrays,
        ``-1`` where an ID is absent. Never inserts. With ``count_absent=True``, a list of
        ``(rows, absent)`` pairs, as :meth:`lookup` gives them.

        With at least as many tables as threads the tables are looked up side by side, each on
        one thread (what many small per-feature batches need); otherwise one after another on
        all ``num_threads`` (0 = all hardware threads). The results do not depend on it. Every
        argument is checked before any lookup: TypeError/ValueError naming ``tables[j]`` or
        ``ids[j]``.
        """
        tables, ids = list(tables), list(ids)
        for j, t in enumerate(tables):
            if not isinstance(t, CuckooTable):
                raise TypeError(
                    f"tables[{j}] must be an embtab.CuckooTable, got {type(t).__name__}"
                )
        return _core.lookup_many(
            [t._t for t in tables], ids, check_threads(num_threads, default=0),
            count_absent=bool(count_absent),
        )

    def contains(self, ids: np.ndarray, num_threads: Optional[int] = None) -> np.ndarray:
        """Boolean array, shape (n,): whether each ID is in the table."""
        return self._t.contains(ids, check_threads(num_threads, default=self._num_threads))

    def erase(self, ids: np.ndarray) -> int:
        """Remove ``ids``; their rows become free for new IDs (lowest first).

        Returns the number of IDs removed (absent IDs are ignored; a repeated ID counts once).
        """
        return self._t.erase(ids)

    # capacity ---------------------------------------------------------------------------

    def reserve(self, n: int) -> None:
        """Grow now so that ``n`` IDs fit without passing ``max_load_factor``."""
        self._t.reserve(check_int(n, "n", min=0, max=U64 - 1))

    def clear(self) -> None:
        """Remove every ID (the next new ID gets row 0). Keeps the capacity."""
        self._t.clear()

    def __len__(self) -> int:
        return self._t.size

    @property
    def capacity(self) -> int:
        """Slots in the index (4 per bucket)."""
        return self._t.capacity

    @property
    def num_rows(self) -> int:
        """Rows handed out so far (live + freed): every row is in ``[0, num_rows)``."""
        return self._t.num_rows

    @property
    def load_factor(self) -> float:
        """Live IDs / capacity."""
        return self._t.load_factor

    @property
    def max_size(self) -> Optional[int]:
        return self._t.config()["max_size"]

    @property
    def config(self) -> dict:
        """``growth_factor``, ``max_load_factor``, ``max_size`` and ``seed`` (a copy)."""
        return self._t.config()

    @property
    def num_threads(self) -> int:
        return self._num_threads

    def stats(self) -> dict:
        """Gauges and counters for tuning.

        Gauges: ``size``, ``capacity``, ``num_buckets``, ``num_rows``, ``free_rows``,
        ``load_factor``, ``memory_bytes`` (index + ``free_row_bytes``: the free rows as a
        tree of bit words, a bit per row handed out, allocated when a row is first freed or
        erased, or when a table is loaded or assigned with free rows),
        ``bytes_per_key`` and
        ``prepared_bytes`` (the next growth's index, prepared on a background thread while
        batches are mostly new IDs, the load is past 0.7 of ``max_load_factor``, the last
        growth came from inserts and ``num_threads`` allows two or more; see the tables guide,
        "Bulk loading").
        Counters since construction or load: ``lookups``, ``second_bucket_probes`` (lookups that
        read the second bucket), ``inserts``, ``erases``, ``displacements`` (keys moved to make
        room), ``bfs_searches`` (inserts that found both buckets full), ``max_bfs_path``,
        ``grows``, ``grows_on_failed_insert``, ``load_factor_at_last_grow``, ``rehashed_keys``.
        """
        return self._t.stats()

    def items(self) -> Tuple[np.ndarray, np.ndarray]:
        """Every live ``(keys, rows)`` pair, ordered by row: ``(uint64 [n], int64 [n])``."""
        return self._t.items()

    # persistence ------------------------------------------------------------------------

    @classmethod
    def from_items(
        cls, keys: np.ndarray, rows: np.ndarray, num_rows: Optional[int] = None, **kwargs
    ) -> "CuckooTable":
        """A table holding exactly the given ``(key, row)`` pairs.

        Parameters
        ----------
        keys : ndarray of int64 or uint64, shape (n,)
            Distinct IDs.
        rows : ndarray of int64, shape (n,)
            Distinct rows, each in ``[0, num_rows)``.
        num_rows : int, optional
            Rows handed out (default ``max(rows) + 1``); the rows below it that no key holds
            are free and are handed out lowest first.
        **kwargs
            Constructor arguments (``max_size``, ``growth_factor``, ``seed``, ...).
        """
        if not isinstance(rows, np.ndarray):  # a list: an empty one would be float64
            rows = np.asarray(rows) if len(rows) else np.zeros(0, np.int64)
        if num_rows is None:
            # (a negative largest row would read as a bad num_rows: the row is named instead)
            num_rows = max(int(rows.max()) + 1, 1) if rows.size else 0
        table = cls(**kwargs)
        table.assign(keys, rows, num_rows)
        return table

    def assign(self, keys: np.ndarray, rows: np.ndarray, num_rows: int) -> None:
        """Make this table hold exactly the given ``(key, row)`` pairs, with ``num_rows`` rows
        handed out (those of them no key holds are free, handed out lowest first); its
        configuration stays. Checked as :meth:`from_items` checks them: on an error
        (``ValueError``) the table is as it was."""
        self._t.assign(keys, rows, check_int(num_rows, "num_rows", min=0, max=U64 - 1))

    def save(self, path: "os.PathLike[str] | str") -> None:
        """Write the table to ``path`` atomically.

        The file (format: ``cpp/include/embtab/table.hpp``, ``CuckooTable::serialize``) holds a
        magic number, a format version, the configuration, the index's capacity, every
        ``(key, row)`` and a checksum. It is written to a temporary file in the same directory,
        fsynced and renamed over ``path``: a failed or interrupted save leaves the old file
        intact. A file it replaces keeps its read/write/execute bits (a new one gets 0666 less the
        umask). A symbolic link at ``path`` is replaced by the new file (the link's target is
        left as it was), as with any save by rename; pass the target's own path
        (``os.path.realpath``) to write there.
        """
        self._t.save(os.fsencode(path))  # bytes: a path need not be UTF-8

    @classmethod
    def load(cls, path: "os.PathLike[str] | str", num_threads: int = 0) -> "CuckooTable":
        """Read a table written by :meth:`save`.

        The table comes back with its capacity up to 8 slots per ID (so a :meth:`reserve` made
        for growth to come survives the round trip, as do pickling and copying, while a table
        that grew and was emptied comes back small), and never with an index of more than an
        eighth of this machine's memory.

        Raises
        ------
        ValueError
            If the file is truncated, corrupt (checksum mismatch), of another format or
            version, or inconsistent; nothing is half-loaded.
        MemoryError
            If the rows the file says were handed out (``num_rows``) need more bookkeeping
            than this machine's memory.
        OSError
            If the file cannot be read.
        """
        return cls._wrap(_core._CuckooTable.load(os.fsencode(path)),
                         check_threads(num_threads, default=0))

    def to_bytes(self) -> bytes:
        """The table in :meth:`save`'s file format."""
        return self._t.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, num_threads: int = 0) -> "CuckooTable":
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on corrupt input."""
        data = check_bytes(data)
        return cls._wrap(_core._CuckooTable.from_bytes(data), check_threads(num_threads, default=0))

    def __reduce__(self) -> tuple:
        return (_restore, (self.to_bytes(), self._num_threads))

    def __repr__(self) -> str:
        return (f"CuckooTable(size={len(self)}, capacity={self.capacity}, num_rows={self.num_rows}, "
                f"load_factor={self.load_factor:.3f}, max_size={self.max_size})")


def _restore(data: bytes, num_threads: int) -> CuckooTable:
    return CuckooTable.from_bytes(data, num_threads)
