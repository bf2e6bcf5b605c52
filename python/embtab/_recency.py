"""Live rows grouped by the step of their last lookup: what ``expire_after`` and
``on_full="evict_lru"`` read, in time that grows with the batch instead of ``num_embeddings``.

A module with ``row_last_step`` decides each training step which rows expire
(``row_last_step <= num_steps - expire_after``) and, when full under LRU, which rows are the
least recently used (the lowest ``(row_last_step, row)``). A pass over all R rows for that
costs milliseconds per step at millions of rows, whatever the batch (bench/README.md,
"Expiry and LRU from the recency index"). :class:`RecencyIndex` keeps, for each step, the
rows looked up in it, so that a step reads only the rows whose turn has come:

* an *entry* ``(s, rows)`` lists rows looked up at step ``s``; a row of it is *current* while
  it is live and ``row_last_step[row] == s`` still (a later lookup makes it current in a later
  entry instead). Entries are in ascending step order.
* invariant: every live row is current in the entry of its ``row_last_step``, or is one of the
  *deferred* rows: rows due to expire that a graph not yet backpropagated still reads, checked
  again each step.
* an entry is read when it falls due (expiry: its step ``<= num_steps - expire_after``) or
  when LRU walks the oldest entries for victims; stale rows are dropped then, and all entries
  are cut to their current rows when they hold more than ``2 R + 4 * batch`` rows, so memory
  stays within a few times R and each pushed row is read a bounded number of times.

The index is derived state (not in ``state_dict``): it is built from ``row_last_step`` and
``row_live`` the first time it is needed and again whenever those buffers were replaced or
written through torch (``load_state_dict``, a user's in-place edit: the tensors' identity and
``_version`` are checked), and carried across a growth. Modules under :data:`MIN_ROWS` rows
scan instead: at that size a scan costs less than the index's upkeep. Both give the same rows,
which the tests check step by step on long streams (tests/test_recency.py).
"""

from __future__ import annotations

import collections
import weakref
from typing import Iterable, Optional

import numpy as np
from torch import Tensor

# Modules with at least this many rows keep a RecencyIndex; smaller ones scan their rows: with
# batches of 4,096 IDs the scan was the cheaper at 2^16 rows and the index at 2^18
# (bench_scaling.py's expiry_index part; bench/README.md, "Expiry and LRU from the recency
# index"). Tests lower it to run the index on small modules.
MIN_ROWS = 1 << 18

_EMPTY = np.empty(0, dtype=np.int64)


def _distinct(rows: np.ndarray) -> np.ndarray:
    """The distinct values of ``rows``, ascending: a sort and a comparison of neighbours
    (``np.unique`` of NumPy 2.4, used here, hashes first: many times slower on these arrays)."""
    s = np.sort(rows)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _key(last: Tensor, live: Tensor) -> tuple:
    return (weakref.ref(last), last._version, weakref.ref(live), live._version, len(last))


class RecencyIndex:
    """Rows by step of last lookup for one module (see the module docstring)."""

    __slots__ = ("_steps", "_rows", "_clean", "_deferred", "_deferred_at", "_total", "_key",
                 "_mask", "__weakref__")

    def __init__(self) -> None:
        self._steps: collections.deque = collections.deque()  # ascending step of each entry
        self._rows: collections.deque = collections.deque()   # int64 rows of each entry
        self._clean: collections.deque = collections.deque()  # whether they are distinct
        self._deferred = _EMPTY  # due rows kept by a pin
        self._deferred_at = 0    # the cutoff at which they were due
        self._total = 0          # rows held in entries
        self._key: Optional[tuple] = None
        self._mask: Optional[np.ndarray] = None  # scratch, all False between calls

    # validity ----------------------------------------------------------------------------------

    def _valid(self, last: Tensor, live: Tensor) -> bool:
        k = self._key
        return (k is not None and k[0]() is last and k[1] == last._version and k[2]() is live
                and k[3] == live._version and k[4] == len(last))

    def invalidate(self) -> None:
        """Forget everything; the next use rebuilds from the buffers."""
        self._steps.clear()
        self._rows.clear()
        self._clean.clear()
        self._deferred = _EMPTY
        self._total = 0
        self._key = None
        self._mask = None

    def carry(self, old_last: Tensor, old_live: Tensor, last: Tensor, live: Tensor) -> None:
        """The buffers were replaced by longer copies (a growth): keep the entries if they were
        current for the old buffers, else forget them."""
        if self._valid(old_last, old_live) and len(last) >= len(old_last):
            self._key = _key(last, live)
        else:
            self.invalidate()

    def _ensure(self, last: Tensor, live: Tensor) -> None:
        if self._valid(last, live):
            return
        self.invalidate()
        lv = live.numpy()
        rows = np.flatnonzero(lv)
        steps = last.numpy()[rows]
        order = np.argsort(steps, kind="stable")  # rows ascending within a step
        rows, steps = rows[order], steps[order]
        if len(rows):
            cuts = np.flatnonzero(steps[1:] != steps[:-1]) + 1
            starts = np.concatenate(([0], cuts)).tolist()
            ends = np.concatenate((cuts, [len(rows)])).tolist()
            for a, b in zip(starts, ends):
                self._steps.append(int(steps[a]))
                self._rows.append(rows[a:b])
                self._clean.append(True)
        self._total = len(rows)
        self._key = _key(last, live)

    # upkeep ------------------------------------------------------------------------------------

    def push(self, last: Tensor, live: Tensor, step: int, rows: np.ndarray) -> None:
        """Record that ``rows`` (< R; repeats allowed) were looked up at ``step``, after
        ``row_last_step[rows] = step`` was written (through NumPy). An index that is not
        current records nothing: its next use rebuilds it from the buffers."""
        if not self._valid(last, live):
            return
        if self._steps and self._steps[-1] >= step:
            self.invalidate()  # not a new step (cannot happen through a module): rebuild later
            return
        self._steps.append(step)
        self._rows.append(rows)
        self._clean.append(False)
        self._total += len(rows)
        if self._total > 2 * len(last) + 4 * len(rows):
            self._compact(last.numpy(), live.numpy())

    def _current(self, s: int, r: np.ndarray, last: np.ndarray, live: np.ndarray) -> np.ndarray:
        return r[(last[r] == s) & live[r]]

    def _compact(self, last: np.ndarray, live: np.ndarray) -> None:
        steps, rows, clean = collections.deque(), collections.deque(), collections.deque()
        total = 0
        for s, r, c in zip(self._steps, self._rows, self._clean):
            cur = self._current(s, r, last, live)
            if not c:
                cur = _distinct(cur)
            if len(cur):
                steps.append(s)
                rows.append(cur)
                clean.append(True)
                total += len(cur)
        self._steps, self._rows, self._clean, self._total = steps, rows, clean, total

    # queries -----------------------------------------------------------------------------------

    def due(self, last: Tensor, live: Tensor, cutoff: int,
            pinned: Iterable[np.ndarray]) -> np.ndarray:
        """The live rows with ``row_last_step <= cutoff`` that no array of ``pinned`` holds,
        ascending, and forgets them; the pinned ones among the due rows are deferred (asked
        about again at the next call)."""
        self._ensure(last, live)
        la, lv = last.numpy(), live.numpy()
        parts = []
        d = self._deferred
        if len(d):
            parts.append(d[(la[d] <= cutoff) & lv[d]])
        while self._steps and self._steps[0] <= cutoff:
            s = self._steps.popleft()
            r = self._rows.popleft()
            self._clean.popleft()
            self._total -= len(r)
            parts.append(self._current(s, r, la, lv))
        self._deferred = _EMPTY
        if not parts:
            return _EMPTY
        rows = _distinct(np.concatenate(parts))
        pins = [p for p in pinned if len(p)]
        if pins and len(rows):
            held = np.isin(rows, np.concatenate(pins))
            # Held rows wait here. Their steps are <= cutoff, so no entry holds them now; one
            # looked up again goes to that step's entry and leaves this list at the next call.
            self._deferred = rows[held]
            self._deferred_at = cutoff
            rows = rows[~held]
        return rows

    def lowest(self, last: Tensor, live: Tensor, k: int,
               exclude: Iterable[np.ndarray]) -> tuple[Optional[np.ndarray], int]:
        """The ``k`` live rows outside ``exclude`` (arrays of rows < R) with the lowest
        ``(row_last_step, row)``, ascending by row, and how many such rows were counted (at
        least ``k``); ``(None, how many exist)`` when fewer than ``k`` exist. Changes nothing
        the module sees (entries are cut to their current rows on the way)."""
        self._ensure(last, live)
        la, lv = last.numpy(), live.numpy()
        R = len(la)
        if self._mask is None or len(self._mask) != R:
            self._mask = np.zeros(R, dtype=bool)
        mask = self._mask
        marked = [np.asarray(e, dtype=np.int64) for e in exclude if len(e)]
        for e in marked:
            mask[e] = True
        try:
            d = self._deferred
            # deferred rows looked up again since are in an entry: counted there only
            held = d[lv[d] & ~mask[d] & (la[d] <= self._deferred_at)] if len(d) else _EMPTY
            # Every entry holds distinct rows in ascending order once cleaned, and a row is
            # current in one entry only: the k lowest of the entries are the first k rows of
            # their eligible rows in entry order.
            parts, need, found, i = [], k, 0, 0
            while i < len(self._steps) and need > 0:
                s, r = self._steps[i], self._rows[i]
                cur = self._current(s, r, la, lv)
                clean = self._clean[i]
                if not clean:  # a batch may repeat a row: made distinct and sorted, once
                    cur = _distinct(cur)
                    self._clean[i] = True
                if not clean or len(cur) != len(r):  # kept so (walked again next time)
                    self._total -= len(r) - len(cur)
                    if len(cur) == 0:
                        del self._steps[i]
                        del self._rows[i]
                        del self._clean[i]
                        continue
                    self._rows[i] = cur
                el = cur[~mask[cur]]
                found += len(el)
                parts.append(el[:need])
                need -= min(need, len(el))
                i += 1
        finally:
            for e in marked:
                mask[e] = False
        if found + len(held) < k:
            return None, found + len(held)
        rows = np.concatenate(parts) if parts else _EMPTY
        if len(held):  # the k lowest of both
            rows = np.concatenate([rows, held])
            rows = rows[np.lexsort((rows, la[rows]))[:k]]
        return np.sort(rows), found + len(held)
