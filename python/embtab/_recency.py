"""Live rows ordered by the step of their last lookup: what ``expire_after`` and
``on_full="evict_lru"`` read, in time that grows with the batch instead of ``num_embeddings``.

A module with ``row_last_step`` decides each training step which rows expire
(``row_last_step <= num_steps - expire_after``) and, when full under LRU, which rows are the
least recently used (the lowest ``(row_last_step, row)``). A pass over all R rows for that
costs milliseconds per step at millions of rows, whatever the batch (bench/README.md,
"Expiry and LRU from the recency index"). :class:`RecencyIndex` keeps the rows each step
looked up, in step order, so that a step reads only the rows whose turn has come:

* an *entry* lists rows with the step they were looked up at: a step's batch as pushed (one
  step, repeats and any order), or, once *clean*, distinct rows in ascending
  ``(step, row)`` order. Entries cover ascending, non-overlapping step ranges (neighbours may
  share their boundary step), so their clean rows, one after the other, are in
  ``(step, row)`` order. A row of an entry is *current* while it is live and
  ``row_last_step[row]`` still equals its step there (a later lookup makes it current in a
  later entry instead).
* invariant: every live row is current in some entry, or is one of the *deferred* rows: rows
  due to expire that a graph not yet backpropagated still reads, checked again each step.
* expiry pops the entries now due (and the due prefix of one that straddles the cutoff); LRU
  walks the oldest entries from their front, only until it has its victims, and moves an
  entry's front past the rows that are no longer current, so a large entry (a warm start, a
  ``from_pretrained`` table, all at one step) is consumed from the front, not re-read.
* all entries are cut to their current rows and merged into entries of up to ``_CHUNK`` rows
  when they hold more than ``2 R + 4 * batch`` rows, and the newest ones when they number
  more than ``_MAX_ENTRIES`` beyond the full chunks; so memory stays within a few int64 per row and per batch
  row, each pushed row is read a bounded number of times, and the entries stay few whatever
  the batches.

The index is derived state (not in ``state_dict``): it is built from ``row_last_step`` and
``row_live`` the first time it is needed and again whenever those buffers were replaced or
written through torch (``load_state_dict``, an in-place torch op on them: the tensors'
identity and ``_version`` are checked), and carried across a growth. Writes it cannot see
(through ``.data`` or a NumPy view of the buffers) are not supported: the buffers are the
module's state, changed through ``load_state_dict`` or torch ops. Modules under
:data:`MIN_ROWS` rows scan instead: at that size a scan costs less than the index's upkeep.
Both give the same rows, which the tests check step by step on long streams
(tests/test_recency.py).
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


def distinct_sorted(rows: np.ndarray) -> np.ndarray:
    """The distinct values of ``rows``, ascending: a sort and a comparison of neighbours
    (``np.unique`` of NumPy 2.4, used here, hashes first: many times slower on these arrays)."""
    s = np.sort(rows)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


# Rows per entry when entries are merged (compaction, rebuild), and the number of entries
# beyond which they are merged whatever their size.
_CHUNK = 1 << 15
_MAX_ENTRIES = 1024

# An index not queried for this many pushes drops itself (an LRU module that evicts rarely:
# its evictions scan instead, see RecencyIndex.wanted_for_eviction).
_IDLE_PUSHES = 256

# An LRU module uses (and builds) the index for an eviction that comes within this many steps
# of the previous one; rarer evictions scan, as a rebuild costs more than a scan.
EVICTION_GAP = 64


def _key(last: Tensor, live: Tensor) -> tuple:
    return (weakref.ref(last), last._version, weakref.ref(live), live._version, len(last))


class _Entry:
    """Rows and their steps (``steps`` None: all at step ``lo``); ``rows[:start]`` are used up
    (no longer current); ``clean``: distinct rows in ``(step, row)`` order."""

    __slots__ = ("rows", "steps", "lo", "hi", "start", "clean")

    def __init__(self, rows: np.ndarray, steps: Optional[np.ndarray], lo: int, hi: int,
                 clean: bool) -> None:
        self.rows, self.steps, self.lo, self.hi, self.start, self.clean = rows, steps, lo, hi, 0, clean

    def __len__(self) -> int:
        return len(self.rows) - self.start

    def steps_of(self, a: int, b: int):
        return self.lo if self.steps is None else self.steps[a:b]


def _chunked(rows: np.ndarray, steps: np.ndarray) -> list:
    """Clean entries of ``_CHUNK`` rows over ``(step, row)``-ordered ``rows``/``steps``."""
    out = []
    for a in range(0, len(rows), _CHUNK):
        r, st = rows[a:a + _CHUNK], steps[a:a + _CHUNK]
        out.append(_Entry(r, st, int(st[0]), int(st[-1]), True))
    return out


class RecencyIndex:
    """Rows by step of last lookup for one module (see the module docstring)."""

    __slots__ = ("_entries", "_deferred", "_deferred_at", "_total", "_key", "_mask", "_idle",
                 "__weakref__")

    def __init__(self) -> None:
        self._entries: collections.deque = collections.deque()  # of _Entry, ascending steps
        self._deferred = _EMPTY  # due rows kept by a pin
        self._deferred_at = 0    # the cutoff at which they were due
        self._total = 0          # rows held in entries (past their fronts)
        self._key: Optional[tuple] = None
        self._mask: Optional[np.ndarray] = None  # scratch, all False between calls
        self._idle = 0           # pushes since the last query

    # validity ----------------------------------------------------------------------------------

    def valid(self, last: Tensor, live: Tensor) -> bool:
        """Whether the index is built and current for these buffers (a query costs no
        rebuild)."""
        return self._valid(last, live)

    def _valid(self, last: Tensor, live: Tensor) -> bool:
        k = self._key
        return (k is not None and k[0]() is last and k[1] == last._version and k[2]() is live
                and k[3] == live._version and k[4] == len(last))

    def invalidate(self) -> None:
        """Forget everything; the next use rebuilds from the buffers."""
        self._idle = 0
        self._entries.clear()
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
        rows = np.flatnonzero(live.numpy())
        steps = last.numpy()[rows]
        order = np.argsort(steps, kind="stable")  # rows ascending within a step
        rows, steps = rows[order], steps[order]
        self._entries.extend(_chunked(rows, steps))
        self._total = len(rows)
        self._key = _key(last, live)

    # upkeep ------------------------------------------------------------------------------------

    def push(self, last: Tensor, live: Tensor, step: int, rows: np.ndarray) -> None:
        """Record that ``rows`` (< R; repeats allowed) were looked up at ``step``, after
        ``row_last_step[rows] = step`` was written (through NumPy). An index that is not
        current records nothing: its next use rebuilds it from the buffers."""
        if not self._valid(last, live):
            return
        self._idle += 1
        if self._idle > _IDLE_PUSHES:  # not queried for a while (LRU that rarely evicts):
            self.invalidate()           # stop paying for the upkeep
            return
        if self._entries and self._entries[-1].hi >= step:
            self.invalidate()  # not a new step (cannot happen through a module): rebuild later
            return
        self._entries.append(_Entry(rows, None, step, step, False))
        self._total += len(rows)
        if self._total > 2 * len(last) + 4 * len(rows):
            self._compact(last.numpy(), live.numpy())  # every entry: O(rows held)
        elif len(self._entries) > _MAX_ENTRIES + 2 * self._total // _CHUNK:
            # many small entries (small batches): merge the newest ones, O(their rows); the
            # limit grows with the rows held, so that full chunks alone never reach it
            self._compact(last.numpy(), live.numpy(), len(self._entries) - _MAX_ENTRIES // 2)

    def _clean(self, e: _Entry, last: np.ndarray, live: np.ndarray) -> None:
        """Make a pushed entry distinct and sorted (once), keeping its current rows only (a
        row no longer current in an entry never is again): the sort is of those alone, few
        when the batch's rows were looked up again since."""
        if not e.clean:
            r = e.rows[e.start:]
            r = distinct_sorted(r[(last[r] == e.lo) & live[r]])
            self._total -= len(e) - len(r)
            e.rows, e.start, e.clean = r, 0, True

    def _current(self, e: _Entry, a: int, b: int, last: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Mask of the current rows among ``e.rows[a:b]``."""
        r = e.rows[a:b]
        return (last[r] == e.steps_of(a, b)) & live[r]

    def _compact(self, last: np.ndarray, live: np.ndarray, first: int = 0) -> None:
        """Cut the entries from index ``first`` on to their current rows, merged into clean
        entries of up to ``_CHUNK`` rows (they stay in (step, row) order)."""
        rows, steps = [], []
        tail = [self._entries.pop() for _ in range(len(self._entries) - first)][::-1]
        dropped = 0
        for e in tail:
            self._clean(e, last, live)
            n = len(e.rows)
            dropped += n - e.start
            cur = self._current(e, e.start, n, last, live)
            rows.append(e.rows[e.start:][cur])
            st = e.steps_of(e.start, n)
            steps.append(np.full(int(cur.sum()), st, dtype=np.int64) if e.steps is None
                         else st[cur])
        self._total -= dropped
        if rows:
            r, st = np.concatenate(rows), np.concatenate(steps)
            self._entries.extend(_chunked(r, st))
            self._total += len(r)

    # queries -----------------------------------------------------------------------------------

    def due(self, last: Tensor, live: Tensor, cutoff: int,
            pinned: Iterable[np.ndarray]) -> np.ndarray:
        """The live rows with ``row_last_step <= cutoff`` that no array of ``pinned`` holds,
        ascending, and forgets them; the pinned ones among the due rows are deferred (asked
        about again at the next call)."""
        self._ensure(last, live)
        self._idle = 0
        la, lv = last.numpy(), live.numpy()
        parts = []
        d = self._deferred
        if len(d):
            parts.append(d[(la[d] <= cutoff) & lv[d]])
        while self._entries and self._entries[0].lo <= cutoff:
            e = self._entries[0]
            n = len(e.rows)
            if e.hi <= cutoff:
                self._entries.popleft()
                cut = n
            else:  # straddles the cutoff: a clean entry of several steps; its due prefix
                cut = max(int(np.searchsorted(e.steps, cutoff, side="right")), e.start)
            parts.append(e.rows[e.start:cut][self._current(e, e.start, cut, la, lv)])
            self._total -= cut - e.start
            e.start = cut
            if cut < n:
                e.lo = int(e.steps[cut])
                break
        self._deferred = _EMPTY
        if not parts:
            return _EMPTY
        rows = distinct_sorted(np.concatenate(parts))
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
        the module sees (entries are cleaned and their used-up fronts dropped on the way)."""
        self._ensure(last, live)
        self._idle = 0
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
            # The entries' clean rows, one after the other, are in (step, row) order and a row
            # is current in one entry only: the k lowest are the first k eligible rows met.
            parts, need, found, i = [], k, 0, 0
            while i < len(self._entries) and need > 0:
                e = self._entries[i]
                self._clean(e, la, lv)
                n, pos = len(e.rows), e.start
                if n == 0:
                    del self._entries[i]
                    continue
                while pos < n and need > 0:
                    end = min(n, pos + max(2 * need, 1024))
                    cur = self._current(e, pos, end, la, lv)
                    if pos == e.start:  # drop the front rows that are no longer current
                        lead = int(np.argmax(cur)) if cur.any() else end - pos
                        self._total -= lead
                        e.start += lead
                    seg = e.rows[pos:end]
                    el = seg[cur & ~mask[seg]]
                    found += len(el)
                    parts.append(el[:need])
                    need -= min(need, len(el))
                    pos = end
                if e.start == n:
                    del self._entries[i]
                    continue
                e.lo = e.lo if e.steps is None else int(e.steps[e.start])
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
