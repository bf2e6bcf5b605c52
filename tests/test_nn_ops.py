"""The C++ helpers behind embtab.nn (embtab._core ops) and a property test of the ID map."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtab import _core
from embtab.nn import CuckooEmbedding


def test_ops_identical_for_any_thread_count():
    ids = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64)
    sk = np.zeros((4, 1000), dtype=np.int64)
    _core.cms_add(ids[:1000], sk, 1)
    one = _core.hashed_rows(ids, 12345, 7, 1), _core.cms_query(ids, sk, 1, 1)
    out1 = np.empty((2000, 9), np.float32)
    _core.init_vectors(ids[:2000], out1, 3, "normal", 0.0, 1.0, 1)
    for threads in (0, 2, 3):
        assert np.array_equal(_core.hashed_rows(ids, 12345, 7, threads), one[0])
        assert np.array_equal(_core.cms_query(ids, sk, 1, threads), one[1])
        out = np.empty((2000, 9), np.float32)
        _core.init_vectors(ids[:2000], out, 3, "normal", 0.0, 1.0, threads)
        assert np.array_equal(out, out1)


def test_init_float64_and_float32_agree():
    ids = np.arange(10, dtype=np.uint64)
    a, b = np.empty((10, 5), np.float32), np.empty((10, 5), np.float64)
    _core.init_vectors(ids, a, 1)
    _core.init_vectors(ids, b, 1)
    assert np.array_equal(a, b.astype(np.float32))


def test_ops_refuse_bad_arguments():
    ids = np.arange(4, dtype=np.int64)
    with pytest.raises(TypeError, match="ids must have dtype int64 or uint64, got float64"):
        _core.hashed_rows(ids.astype(np.float64), 4, 0)
    with pytest.raises(ValueError, match=r"ids must be 1-D, got shape \(2, 2\)"):
        _core.hashed_rows(ids.reshape(2, 2), 4, 0)
    with pytest.raises(ValueError, match="m"):
        _core.hashed_rows(ids, 0, 0)
    with pytest.raises(ValueError, match=r"out must have shape \(4, dim\), got \(3, 2\)"):
        _core.init_vectors(ids, np.empty((3, 2), np.float32), 0)
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.init_vectors(ids, np.empty((4, 2), np.float16), 0)
    with pytest.raises(ValueError, match="kind"):
        _core.init_vectors(ids, np.empty((4, 2), np.float32), 0, "xavier")
    with pytest.raises(TypeError, match="sketch"):
        _core.cms_query(ids, np.zeros((2, 3), np.int32), 0)
    with pytest.raises(ValueError, match=r"sketch must be 2-D"):
        _core.cms_query(ids, np.zeros(3, np.int64), 0)
    with pytest.raises(ValueError, match="num_threads"):
        _core.hashed_rows(ids, 4, 0, -1)


batches = st.lists(st.lists(st.integers(-3, 12), min_size=1, max_size=6), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    batches=batches,
    policy=st.sampled_from(["grow", "evict_lru", "evict_lfu"]),
    min_count=st.integers(1, 3),
)
def test_id_map_invariants(batches, policy, min_count):
    """After any sequence of batches: one distinct row per live ID, buffers mirror the table,
    the size bound holds, and every batch's IDs read their own rows (or the zero row)."""
    emb = CuckooEmbedding(6, 2, on_full=policy, min_count=min_count, padding_id=0)
    for b in batches:
        x = torch.tensor(b)
        with torch.no_grad():  # no graph outlives its batch: eviction may take any other row
            out = emb(x)
        rows = emb.lookup(x)
        for i, v in enumerate(b):
            if v == 0 or rows[i] < 0:
                assert torch.count_nonzero(out[i]) == 0
            else:
                assert torch.equal(out[i], emb.weight[rows[i]])
        keys, trows = emb._table.items()
        live = torch.nonzero(emb.row_live).reshape(-1).numpy()
        assert sorted(trows.tolist()) == live.tolist()
        assert np.array_equal(emb.row_ids.numpy()[trows], keys.view(np.int64))
        assert emb.num_ids == len(live) <= emb.num_embeddings
        assert 0 not in keys.view(np.int64).tolist()
        if policy != "grow":
            assert emb.num_embeddings == 6
