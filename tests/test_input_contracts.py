"""Bad inputs that used to get through a check: each is refused with an error naming the
argument, before anything changes, or (jagged weights of mean tables) read as documented."""

import numpy as np
import pytest
import torch

import embtab.nn as enn
from embtab import metrics, rerank
from embtab.nn import EmbeddingBagConfig, KeyedJaggedIds


def snapshot(m):
    keys, rows = m._table.items()
    return ({k: v.clone() for k, v in m.state_dict().items()}, keys.tolist(), rows.tolist(),
            m.stats())


def same(a, b):
    sa, ka, ra, ta = a
    sb, kb, rb, tb = b
    assert (ka, ra, ta) == (kb, rb, tb)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kw", [{}, dict(min_count=2), dict(expire_after=2),
                                dict(on_full="evict_lru")])
def test_sparse_per_sample_weights_refused_before_the_remap(kw):
    m = enn.CuckooEmbeddingBag(8, 4, mode="sum", num_threads=1, **kw)
    m(torch.tensor([5, 6]), torch.tensor([0]))
    before = snapshot(m)
    with pytest.raises(TypeError, match="per_sample_weights must be a dense"):
        m(torch.tensor([1, 2, 3]), torch.tensor([0]), torch.ones(3).to_sparse())
    same(before, snapshot(m))


def test_per_sample_weights_on_another_device_refused_before_the_remap():
    m = enn.CuckooEmbeddingBag(8, 4, mode="sum", num_threads=1)
    before = snapshot(m)
    with pytest.raises(ValueError, match="per_sample_weights must be on the weight's device"):
        m(torch.tensor([1, 2, 3]), torch.tensor([0]), torch.ones(3, device="meta"))
    same(before, snapshot(m))


def test_collection_names_the_feature_of_sparse_weights():
    ebc = enn.CuckooEmbeddingBagCollection(
        [EmbeddingBagConfig(num_embeddings=8, embedding_dim=4, name="s", feature_names=["a"])],
        num_threads=1)
    with pytest.raises(TypeError, match=r"features\['a'\]: per_sample_weights must be a dense"):
        ebc({"a": (torch.tensor([1, 2]), torch.tensor([0]))}, {"a": torch.ones(2).to_sparse()})
    assert ebc.embedding_bags["s"].num_ids == 0


@pytest.mark.parametrize("cls", [enn.CuckooEmbeddingBagCollection,
                                 enn.HashedEmbeddingBagCollection])
def test_jagged_weights_of_mean_and_max_tables_must_be_one(cls):
    """A jagged input carries one weight per value; the "sum" table reads its features'
    weights, the others read none: theirs must be 1."""
    cfg = [EmbeddingBagConfig(num_embeddings=16, embedding_dim=3, name="s", feature_names=["a"]),
           EmbeddingBagConfig(num_embeddings=16, embedding_dim=3, name="m",
                              feature_names=["b"], pooling="mean"),
           EmbeddingBagConfig(num_embeddings=16, embedding_dim=3, name="x",
                              feature_names=["c"], pooling="max")]
    ebc = cls(cfg, num_threads=1)
    values = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9])
    lengths = torch.tensor([1, 2, 2, 1, 1, 2])  # features a, b, c; 2 bags each
    weights = torch.tensor([0.5, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    got = ebc(KeyedJaggedIds(["a", "b", "c"], values, lengths, weights))
    for f, at in (("b", 4), ("c", 8)):  # a weight other than 1 there would be ignored: refused
        w = weights.clone()
        w[at] = 7.0
        with pytest.raises(ValueError, match=rf"features\['{f}'\].*must all be 1"):
            ebc(KeyedJaggedIds(["a", "b", "c"], values, lengths, w))
    feats = {"a": (torch.tensor([1, 2, 3]), torch.tensor([0, 1])),
             "b": (torch.tensor([4, 5, 6]), torch.tensor([0, 2])),
             "c": (torch.tensor([7, 8, 9]), torch.tensor([0, 1]))}
    plain = ebc(feats, {"a": torch.tensor([0.5, 2.0, 3.0])})
    unweighted = ebc(feats)
    for f in "abc":
        torch.testing.assert_close(got[f], plain[f], rtol=0, atol=0)
    # bag 0 of feature a is ID 1 alone, weighted 0.5
    torch.testing.assert_close(got["a"][0], 0.5 * unweighted["a"][0], rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda: enn.HashedEmbedding(4, 4),
    lambda: enn.QREmbedding(16, 4, num_collisions=4),
    lambda: enn.DoubleHashedEmbedding(4, 4),
    lambda: enn.QREmbeddingBag(16, 4, num_collisions=4, mode="sum"),
    lambda: enn.DoubleHashedEmbeddingBag(4, 4, mode="sum"),
])
def test_meta_ids_refused_by_every_module(make):
    m = make()
    ids = torch.ones(2, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="input is on the meta device"):
        m(ids)


@pytest.mark.parametrize("make", [
    lambda: enn.CuckooEmbedding(4, 4),
    lambda: enn.CuckooEmbeddingBag(4, 4, mode="sum"),
    lambda: enn.HashedEmbedding(4, 4),
    lambda: enn.QREmbeddingBag(16, 4, num_collisions=4, mode="sum"),
])
@pytest.mark.parametrize("to_layout", [lambda t: t.to_sparse(), lambda t: t.to_sparse_csr()])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_ids_refused_naming_the_layout_and_nothing_changes(make, to_layout):
    # RuntimeError "reshape is not implemented for sparse tensors" from deep inside before
    m = make()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match=r"input must be a dense \(strided\) tensor of IDs, got "
                                        r"layout torch.sparse_\w+ with shape \(1, 2\)"):
        m(to_layout(torch.tensor([[1, 2]])))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("make", [
    lambda: enn.CuckooEmbedding(4, 4),
    lambda: enn.CuckooEmbeddingBag(4, 4, mode="sum"),
    lambda: enn.HashedEmbedding(4, 4),
    lambda: enn.QREmbeddingBag(16, 4, num_collisions=4, mode="sum"),
])
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_nested_ids_refused_naming_the_input_and_nothing_changes(make, layout):
    # a strided nested tensor passed the plain-int64 check: torch's "Internal error:
    # NestedTensorImpl doesn't support sizes" from .numpy()
    m = make()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    nt = torch.nested.nested_tensor([torch.arange(3), torch.arange(2)], layout=layout)
    with pytest.raises(TypeError, match="input must be a dense tensor of IDs, got a nested"):
        m(nt)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("cls", [enn.CuckooEmbedding, enn.HashedEmbedding,
                                 enn.CuckooEmbeddingBag])
def test_a_weight_beyond_the_machine_is_refused_naming_the_arguments(cls):
    if enn._machine_memory() is None:
        pytest.skip("this system does not report its memory (/proc/meminfo)")
    with pytest.raises(MemoryError, match="num_embeddings, embedding_dim ask for a buffer"):
        cls(4, 2**40)


def test_a_weight_on_another_device_is_not_held_to_the_hosts_memory():
    """Only a weight made in host memory is compared with RAM + swap: a cuckoo module's weight
    is made on its device (the meta device here, a GPU elsewhere)."""
    if enn._machine_memory() is None:
        pytest.skip("this system does not report its memory (/proc/meminfo)")
    d = enn._machine_memory() // (4 * 1001) + 1  # a float32 weight just past RAM + swap
    m = enn.CuckooEmbedding(1000, d, device="meta")
    assert m.weight.shape == (1001, d) and m.weight.device.type == "meta"


def test_smoothed_kl_refuses_what_it_cannot_define():
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    for alpha in (2.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            rerank.smoothed_kl(p, q, alpha=alpha)
    with pytest.raises(ValueError, match="^p must be non-negative"):
        rerank.smoothed_kl(np.array([-0.5, 1.5]), q)
    with pytest.raises(ValueError, match="^q must be non-negative"):
        rerank.smoothed_kl(p, np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="same number of categories"):
        rerank.smoothed_kl(p, np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="must broadcast"):
        rerank.smoothed_kl(np.ones((3, 2)), np.ones((2, 2)))
    # the definition still holds where it is defined (docs/metrics.md)
    got = rerank.smoothed_kl(np.array([[0.5, 0.5], [1.0, 0.0]]), q, alpha=0.5)
    want = [0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25), 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-15)


def test_metrics_refuse_items_that_are_not_integers():
    top = np.array([[1, 0], [3, 4]])
    with pytest.raises(TypeError, match="test: row 0 must hold integer item indices"):
        metrics.recall_at_k(top, [np.array([1.5]), np.array([3])], k=2, n_items=6)
    with pytest.raises(ValueError, match="^test: "):
        metrics.recall_at_k(top, [np.array([9]), np.array([3])], k=2, n_items=6)
    with pytest.raises(TypeError, match="train: indices must hold integer"):
        metrics.item_counts((np.array([0, 1]), np.array([0.5])), n_items=3)
    wrapped = np.array([[1, 2**64 - 1], [3, 2**64 - 1]], dtype=np.uint64)
    with pytest.raises(ValueError, match="topk entries must lie in"):
        metrics.recall_at_k(wrapped, [np.array([1]), np.array([3])], k=2, n_items=6)
    for k, exc in ((True, TypeError), (2.0, TypeError), (0, ValueError)):
        with pytest.raises(exc, match="^k must"):
            metrics.recall_at_k(top, [np.array([1]), np.array([3])], k=k, n_items=6)
    # integer inputs of every width still read as before
    got = metrics.recall_at_k(top.astype(np.uint8), [np.array([1], np.int32), [3]], k=2,
                              n_items=6)
    assert got == 1.0


def test_head_items_refuses_a_fraction_outside_0_1_and_negative_counts():
    with pytest.raises(ValueError, match="fraction must be in"):
        metrics.head_items(np.array([3, 2, 1]), fraction=1.5)
    with pytest.raises(ValueError, match="train_counts must be non-negative"):
        metrics.head_items(np.array([-3, 2, 1]))
    with pytest.raises(ValueError, match="train_counts must be non-negative"):
        metrics.popularity_deciles(np.array([np.nan, 2.0]))
    assert metrics.head_items(np.array([3, 9, 1]), fraction=0.5).tolist() == [True, True, False]


# arrays at an odd byte offset ////////////////////////////////////////////////////////////////
# NumPy and torch allow C-contiguous arrays whose data is not aligned to their element size
# (np.frombuffer(buf, offset=1)); the core read them through T*, undefined behaviour that the
# sanitizer build aborted on. Inputs that are only read are copied; results equal the aligned
# input's.


def _odd(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    v = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    v[...] = a
    assert not v.flags.aligned
    return v


def test_unaligned_inputs_give_the_aligned_inputs_results():
    from embtab import CuckooTable

    rng = np.random.default_rng(0)
    ids = rng.integers(-(2**63), 2**63 - 1, 300, dtype=np.int64)
    a, b = CuckooTable(0), CuckooTable(0)
    assert np.array_equal(a.lookup_or_insert(ids), b.lookup_or_insert(_odd(ids)))
    assert np.array_equal(a.lookup(ids[::-1].copy()), b.lookup(_odd(ids[::-1].copy())))
    rows = np.arange(300, dtype=np.int64)[::-1].copy()
    c = CuckooTable.from_items(ids, rows, 300)
    d = CuckooTable.from_items(_odd(ids), _odd(rows), 300)
    assert np.array_equal(c.lookup(ids), d.lookup(ids))
    # a module fed a torch tensor at an odd offset
    m1 = enn.CuckooEmbeddingBag(64, 4, mode="sum", seed=3)
    m2 = enn.CuckooEmbeddingBag(64, 4, mode="sum", seed=3)
    t = torch.from_numpy(ids[:40].copy())
    raw = bytearray(t.numpy().tobytes()) + b"\0"
    t_odd = torch.frombuffer(bytearray(b"\0") + raw[:-1], dtype=torch.int64, offset=1, count=40)
    assert t_odd.data_ptr() % 8 != 0 and torch.equal(t_odd, t)
    off = torch.tensor([0, 10, 25])
    torch.testing.assert_close(m1(t, off), m2(t_odd, off), rtol=0, atol=0)
    # the reranker's scores, candidates and target
    scores = rng.random((5, 12))
    item_dist = np.eye(3)[rng.integers(0, 3, 12)]
    target = np.full((5, 3), 1 / 3)
    cand = np.tile(np.arange(12, dtype=np.int64), (5, 1))
    assert np.array_equal(rerank.topk(scores, 4)[1], rerank.topk(_odd(scores), 4)[1])
    assert np.array_equal(
        rerank.calibrated(scores, item_dist, target, k=4, candidates=cand),
        rerank.calibrated(_odd(scores), item_dist, _odd(target), k=4, candidates=_odd(cand)))


def test_unaligned_per_sample_weights_train_as_aligned_ones():
    # per_sample_weights from torch.frombuffer at an odd offset reached the fused step and the
    # collection's pooling as they were (refused there, after the collection's remaps)
    import embtab.optim as eo

    ids = torch.tensor([5, 7, 9, 5, 11])
    off = torch.tensor([0, 2])
    psw = torch.tensor([0.5, 1.0, 2.0, -1.0, 0.25])
    raw = bytearray(b"\0") + bytearray(psw.numpy().tobytes())
    psw_odd = torch.frombuffer(raw, dtype=torch.float32, offset=1, count=5)
    assert psw_odd.data_ptr() % 4 != 0 and torch.equal(psw_odd, psw)
    for make in (
        lambda: enn.CuckooEmbeddingBag(16, 3, mode="sum", seed=1, optimizer=eo.Adagrad(lr=0.1)),
        lambda: enn.CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(num_embeddings=16, embedding_dim=3, name="t",
                                feature_names=["a"], options={"seed": 1})],
            optimizer=eo.Adagrad(lr=0.1)),
    ):
        states = []
        for p in (psw, psw_odd):
            m = make()
            if isinstance(m, enn.CuckooEmbeddingBagCollection):
                out = m({"a": (ids, off)}, per_sample_weights={"a": p}, concat=True)
            else:
                out = m(ids, off, per_sample_weights=p)
            (out * torch.arange(1.0, out.numel() + 1).reshape(out.shape)).sum().backward()
            states.append({k: v.clone() for k, v in m.state_dict().items()})
        assert states[0].keys() == states[1].keys()
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_unaligned_arrays_written_in_place_are_refused():
    from embtab import _core

    ids = np.arange(6, dtype=np.int64)
    with pytest.raises(ValueError, match="out is not aligned to its 4-byte elements"):
        _core.init_vectors(ids, _odd(np.zeros((6, 3), np.float32)), 0, "normal", 0.0, 1.0, 1)
    w = np.ones((4, 2), np.float32)
    feats = [(w, np.array([0, 1], np.int64), np.array([0, 1, 2], np.int64), None, False, 4, 0)]
    with pytest.raises(ValueError, match="out is not aligned"):
        _core.pool_bags(feats, _odd(np.zeros((2, 2), np.float32)), 1)
