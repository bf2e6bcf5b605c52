"""The recency index (embtab/_recency.py) that large modules use for expiry and LRU eviction,
against the scan of every row that small modules use and that defines both policies.

Two oracles: a brute-force reading of the definition over the buffers (the index alone, on
random histories), and the same module run with the index switched off (``MIN_ROWS`` raised),
which must reach the same state bit for bit at every step, through pinned graphs, growth,
``load_state_dict``, pickling and in-place edits of the buffers.
"""

import pickle

import numpy as np
import pytest
import torch

import embtab._recency as recency
from embtab._recency import RecencyIndex
from embtab.nn import CuckooEmbedding, CuckooEmbeddingBag

OFF = 1 << 62  # MIN_ROWS that no module reaches: the scan


def brute_due(last, live, cutoff, pins):
    held = np.zeros(len(live), bool)
    for p in pins:
        held[p] = True
    return np.flatnonzero(live & (last <= cutoff) & ~held)


def brute_lowest(last, live, k, exclude):
    ok = live.copy()
    for e in exclude:
        ok[e] = False
    rows = np.flatnonzero(ok)
    if len(rows) < k:
        return None, len(rows)
    return np.sort(rows[np.lexsort((rows, last[rows]))][:k]), len(rows)


@pytest.mark.parametrize("tiny", [False, True], ids=["chunks", "tiny-chunks"])
@pytest.mark.parametrize("seed", range(12))
def test_index_against_the_definition_on_random_histories(seed, tiny, monkeypatch):
    """Random steps over a small buffer pair: rows looked up (repeats included), rows freed and
    handed out again, pins that come and go, queries for due rows and for the k oldest, a
    growth of the buffers and a write through torch (which must force a rebuild). With
    ``tiny``, merged entries hold 3 rows and entries are merged beyond 8 of them, so that
    entries share boundary steps, expiry cuts entries in the middle and merges happen often."""
    if tiny:
        monkeypatch.setattr(recency, "_CHUNK", 3)
        monkeypatch.setattr(recency, "_MAX_ENTRIES", 8)
    rng = np.random.default_rng(seed)
    R = int(rng.integers(20, 200))
    last_t = torch.zeros(R, dtype=torch.int64)
    live_t = torch.zeros(R, dtype=torch.bool)
    idx = RecencyIndex()
    E = int(rng.integers(1, 6))
    pins = []
    for step in range(1, 300):
        last, live = last_t.numpy(), live_t.numpy()
        # rows handed out (their last step becomes this step below), rows looked up
        free = np.flatnonzero(~live)
        new = rng.choice(free, min(len(free), int(rng.integers(0, 4))), replace=False)
        live[new] = True
        known = np.flatnonzero(live)
        looked = rng.choice(known, int(rng.integers(0, 12))) if len(known) else new[:0]
        used = np.concatenate([new, looked])
        last[used] = step
        idx.push(last_t, live_t, step, used.astype(np.int64))
        if rng.random() < 0.3:
            pins.append(rng.choice(R, int(rng.integers(1, 6))).astype(np.int64))
        if pins and rng.random() < 0.3:
            pins.pop(int(rng.integers(0, len(pins))))
        if rng.random() < 0.5:
            k = int(rng.integers(1, 10))
            excl = [rng.choice(R, int(rng.integers(0, 8))).astype(np.int64), *pins]
            got, n = idx.lowest(last_t, live_t, k, excl)
            want, wn = brute_lowest(last, live, k, excl)
            assert n == wn if want is None else n >= k
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(got, want)
                live[got] = False  # evicted
        cutoff = step - E
        got = idx.due(last_t, live_t, cutoff, pins)
        want = brute_due(last, live, cutoff, pins)
        np.testing.assert_array_equal(got, want)
        live[got] = False  # expired
        if step == 150:  # a growth: longer copies, carried over
            old = (last_t, live_t)
            last_t = torch.cat([last_t, torch.zeros(R, dtype=torch.int64)])
            live_t = torch.cat([live_t, torch.zeros(R, dtype=torch.bool)])
            idx.carry(*old, last_t, live_t)
            R *= 2
        if step == 200:  # a write through torch: the index must notice and rebuild
            r = int(np.flatnonzero(live_t.numpy())[0]) if live_t.any() else 0
            live_t[r] = True
            last_t[r] = step - E  # due at once
        if step == 250:  # the same through row_live alone: a row with an old step comes back
            r = int(np.flatnonzero(~live_t.numpy())[0])
            last_t.numpy()[r] = 1
            live_t[r] = True


def drive(m, batches, mode, hold_every=3, checkpoint_at=None, pickle_at=None, edit_at=None):
    """Run ``m`` over ``batches`` with the index (mode "index") or the scan; yields the module's
    map after every step. Every ``hold_every``-th output keeps its graph for two steps (a pin)."""
    held = []
    for t, ids in enumerate(batches):
        saved = recency.MIN_ROWS
        recency.MIN_ROWS = 0 if mode == "index" else OFF
        try:
            built = m._recency._key is not None
            out = m(torch.tensor(ids))
            if t % hold_every == 0:
                held.append(out)
            if len(held) > 2:
                held.pop(0).sum().backward()
            if t == checkpoint_at:  # a fresh module from the state dict: rebuilt index
                fresh = type(m)(m.num_embeddings, m.embedding_dim, on_full=m.on_full,
                                expire_after=m.expire_after, seed=m.seed)
                fresh.load_state_dict(m.state_dict())
                for h in held:
                    h.sum().backward()
                held.clear()
                m = fresh
            if t == pickle_at:
                for h in held:
                    h.sum().backward()
                held.clear()
                m = pickle.loads(pickle.dumps(m))
            if t == edit_at and bool(m.row_live.any()):  # through torch: _version moves
                r = int(torch.nonzero(m.row_live)[0])
                m.row_last_step[r] = 0
            expiring = m.expire_after is not None and int(m.num_steps) > m.expire_after
            plain = t not in (checkpoint_at, pickle_at, edit_at)
            if mode == "index" and (built or expiring) and plain:
                # a plain step keeps a built index current: no rebuild at the next one
                assert m._recency._valid(m.row_last_step, m.row_live), t
        finally:
            recency.MIN_ROWS = saved
        yield {
            "row_ids": m.row_ids.clone(), "row_live": m.row_live.clone(),
            "row_last_step": m.row_last_step.clone(), "stats": m.stats(),
            "items": sorted(zip(*(a.tolist() for a in m._table.items()))),
        }


@pytest.mark.parametrize(
    "on_full, expire_after",
    [("evict_lru", None), ("evict_lru", 1), ("evict_lru", 4), ("grow", 2), ("grow", 7)],
)
@pytest.mark.parametrize("events", ["none", "checkpoint", "pickle", "edit"])
def test_index_and_scan_reach_the_same_state_step_by_step(on_full, expire_after, events,
                                                          monkeypatch):
    if events in ("none", "edit"):  # entries merged often, into entries of 5 rows
        monkeypatch.setattr(recency, "_CHUNK", 5)
        monkeypatch.setattr(recency, "_MAX_ENTRIES", 6)
    rng = np.random.default_rng(len(events) + (expire_after or 0))
    R = 64
    pool = rng.permutation(10 * R)
    batches = []
    for step in range(60):
        n = int(rng.integers(R // 2, R)) if step % 9 == 8 else int(rng.integers(1, R // 4))
        batches.append(pool[(rng.zipf(1.3, n) - 1) % len(pool)].tolist())
    ev = {"checkpoint": dict(checkpoint_at=20), "pickle": dict(pickle_at=30),
          "edit": dict(edit_at=25)}.get(events, {})

    def module():
        return CuckooEmbedding(R, 3, on_full=on_full, expire_after=expire_after, seed=5)

    states = zip(drive(module(), batches, "scan", **ev), drive(module(), batches, "index", **ev))
    for t, (a, b) in enumerate(states):
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), (t, k)
            else:
                assert a[k] == b[k], (t, k)


def test_bags_with_padding_take_the_index_path_too():
    rng = np.random.default_rng(1)
    kw = dict(mode="sum", on_full="evict_lru", expire_after=3, padding_id=-1, seed=2)
    a, b = CuckooEmbeddingBag(40, 2, **kw), CuckooEmbeddingBag(40, 2, **kw)
    for step in range(50):
        ids = torch.from_numpy(rng.integers(-1, 120, (8, 4)))
        for m, mode in ((a, OFF), (b, 0)):
            saved, recency.MIN_ROWS = recency.MIN_ROWS, mode
            try:
                m(ids).sum().backward()
            finally:
                recency.MIN_ROWS = saved
        for name in ("row_ids", "row_live", "row_last_step", "num_expired", "num_evictions"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (step, name)


def test_lru_builds_the_index_for_frequent_evictions_only(monkeypatch):
    """An eviction long after the previous one scans (the index is not built for it); two
    within EVICTION_GAP steps build it; an index no eviction queries for _IDLE_PUSHES steps
    drops itself. The evictions are the same rows whichever path takes them."""
    monkeypatch.setattr(recency, "MIN_ROWS", 0)
    monkeypatch.setattr(recency, "_IDLE_PUSHES", 20)
    twin_kw = dict(on_full="evict_lru", seed=3)
    m = CuckooEmbedding(32, 2, **twin_kw)
    ref = CuckooEmbedding(32, 2, **twin_kw)  # always the scan
    known = torch.arange(32)

    def step(ids):
        m(ids)
        saved = recency.MIN_ROWS
        recency.MIN_ROWS = OFF
        try:
            ref(ids)
        finally:
            recency.MIN_ROWS = saved
        assert torch.equal(m.row_ids, ref.row_ids) and torch.equal(m.row_live, ref.row_live)

    step(known)  # full
    for t in range(100):
        step(known[:8])  # steps without evictions
    step(torch.tensor([1000]))  # a rare eviction: scanned
    assert not m._recency.valid(m.row_last_step, m.row_live)
    step(torch.tensor([1001]))  # the next one soon after: the index is built and used
    assert m._recency.valid(m.row_last_step, m.row_live)
    for t in range(30):  # no eviction queries it: it drops itself
        step(known[8:16])
    assert not m._recency.valid(m.row_last_step, m.row_live)
    for i in range(5):  # evictions back to back: built again, then kept
        step(torch.tensor([2000 + i]))
    assert m._recency.valid(m.row_last_step, m.row_live)
