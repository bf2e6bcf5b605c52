"""Quotient-remainder and double-hashed modules against their definitions in plain torch, and
memory_bytes of every embtab.nn module against hand computation."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import embtab.optim as eo
from embtab._hashing import mix64, mix64_array
from embtab.nn import (
    CuckooEmbedding,
    CuckooEmbeddingBag,
    DoubleHashedEmbedding,
    DoubleHashedEmbeddingBag,
    EmbeddingInit,
    HashedEmbedding,
    HashedEmbeddingBag,
    QREmbedding,
    QREmbeddingBag,
    init_vectors,
)

pytestmark = pytest.mark.filterwarnings(
    # torch's sparse Adagrad / SparseAdam build sparse tensors without opting in or out of checks.
    "ignore:Sparse invariant checks are implicitly disabled:UserWarning"
)

PAD = 424242
IDS = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 12345678901234567, 7, 7, PAD, 99, 5, 3])
DOUBLE_SALT = 0x444F55424C45


def ref_rows(module, ids):
    """The rows of the definition, from the pure-Python hash mirror: [(table weight, rows)]."""
    h = mix64_array(ids.numpy(), module.seed)
    pad = (ids == PAD).numpy() if module.padding_id == PAD else np.zeros(len(ids), bool)
    if isinstance(module, (QREmbedding, QREmbeddingBag)):
        m, q = module.num_collisions, module.num_quotients
        v = h % np.uint64(q * m)
        rq = np.where(pad, q, (v // np.uint64(m)).astype(np.int64))
        rr = np.where(pad, m, (v % np.uint64(m)).astype(np.int64))
        assert np.array_equal(rq, np.where(pad, q, (h // np.uint64(m)) % np.uint64(q)))
        assert np.array_equal(rr, np.where(pad, m, h % np.uint64(m)))
        return [(module.quotient.weight, torch.from_numpy(rq)),
                (module.remainder.weight, torch.from_numpy(rr))]
    m = module.num_embeddings
    h2 = mix64_array(ids.numpy(), mix64(module.seed, DOUBLE_SALT))
    r1 = np.where(pad, m, (h % np.uint64(m)).astype(np.int64))
    r2 = np.where(pad, m, (h2 % np.uint64(m)).astype(np.int64))
    return [(module.weight, torch.from_numpy(r1)), (module.weight, torch.from_numpy(r2))]


def ref_vectors(module, ids, weights):
    """Vectors of the definition from leaf copies ``weights`` of the tables: gather, combine."""
    (_, ra), (_, rb) = ref_rows(module, ids)
    a, b = weights[0][ra], weights[-1][rb]
    op = getattr(module, "operation", "add")
    return a * b if op == "mult" else a + b if op == "add" else torch.cat([a, b], -1)


def leaf_copies(module):
    ws = [module.quotient.weight, module.remainder.weight] if hasattr(module, "quotient") else [module.weight]
    return [w.detach().clone().requires_grad_(True) for w in ws]


def module_grads(module):
    ws = [module.quotient.weight, module.remainder.weight] if hasattr(module, "quotient") else [module.weight]
    return [w.grad for w in ws]


EMB = {
    "qr_mult": lambda **kw: QREmbedding(50, 6, num_collisions=7, **kw),
    "qr_add": lambda **kw: QREmbedding(50, 6, num_collisions=7, operation="add", **kw),
    "qr_concat": lambda **kw: QREmbedding(50, 6, num_collisions=7, operation="concat", **kw),
    "double": lambda **kw: DoubleHashedEmbedding(11, 6, **kw),
}
BAG = {
    "qr_mult": lambda **kw: QREmbeddingBag(50, 6, num_collisions=7, **kw),
    "qr_concat": lambda **kw: QREmbeddingBag(50, 6, num_collisions=7, operation="concat", **kw),
    "double": lambda **kw: DoubleHashedEmbeddingBag(11, 6, **kw),
}


# values and gradients against the definition //////////////////////////////////////////////


@pytest.mark.parametrize("kind", list(EMB))
@pytest.mark.parametrize("padding", [None, PAD])
def test_embedding_values_and_gradients(kind, padding):
    mod = EMB[kind](padding_id=padding, seed=3)
    ids = IDS.reshape(3, 4)
    rows = mod.lookup(ids)
    want = ref_rows(mod, IDS)
    assert rows.shape == (3, 4, 2)
    assert torch.equal(rows.reshape(-1, 2), torch.stack([want[0][1], want[1][1]], -1))
    out = mod(ids)
    ws = leaf_copies(mod)
    ref = ref_vectors(mod, IDS, ws).reshape(3, 4, 6)
    assert torch.equal(out, ref)
    if padding is not None:
        assert torch.count_nonzero(out[2, 0]) == 0  # IDS[8] is the padding ID
    g = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1))
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for got, w in zip(module_grads(mod), ws):
        # The reference gathers the zero row like any row; the module's gets no gradient.
        torch.testing.assert_close(got[:-1], w.grad[:-1], rtol=1e-6, atol=1e-6)
        assert torch.count_nonzero(got[-1]) == 0


def ref_bags(vecs, ids, offsets, mode, psw, padding):
    out = []
    bounds = offsets.tolist() + [len(ids)]
    for b in range(len(offsets)):
        keep = [i for i in range(bounds[b], bounds[b + 1]) if padding is None or ids[i] != padding]
        if not keep:
            out.append(vecs.new_zeros(vecs.shape[1]))
            continue
        v = vecs[keep]
        if psw is not None:
            v = v * psw[keep, None]
        out.append(v.sum(0) if mode == "sum" else v.mean(0) if mode == "mean" else v.max(0).values)
    return torch.stack(out)


@pytest.mark.parametrize("kind", list(BAG))
@pytest.mark.parametrize("mode, psw", [("sum", False), ("sum", True), ("mean", False), ("max", False)])
@pytest.mark.parametrize("last", [False, True])
def test_bag_values_and_gradients(kind, mode, psw, last):
    mod = BAG[kind](mode=mode, padding_id=PAD, include_last_offset=last, seed=5)
    offsets = torch.tensor([0, 3, 3, 8, 9])  # bag 1 empty, bag 3 only the padding ID
    w = torch.rand(len(IDS), generator=torch.Generator().manual_seed(2)) if psw else None
    wr = w.clone().requires_grad_(True) if psw else None
    wm = w.clone().requires_grad_(True) if psw else None
    call_off = torch.cat([offsets, torch.tensor([len(IDS)])]) if last else offsets
    out = mod(IDS, call_off, wm)
    ws = leaf_copies(mod)
    ref = ref_bags(ref_vectors(mod, IDS, ws), IDS.tolist(), offsets, mode, wr, PAD)
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[3]) == 0
    g = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for got, r in zip(module_grads(mod), ws):
        torch.testing.assert_close(got[:-1], r.grad[:-1], rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(got[-1]) == 0
    if psw:
        torch.testing.assert_close(wm.grad, wr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(BAG))
def test_bag_2d_input_is_fixed_length_bags(kind):
    mod = BAG[kind](mode="mean", seed=1)
    ids = IDS.reshape(4, 3)
    flat = mod(IDS, torch.arange(0, 12, 3))
    assert torch.equal(mod(ids), flat)


def test_initial_rows():
    qr = QREmbedding(50, 4, num_collisions=7, seed=9, init=EmbeddingInit("uniform", -1, 1))
    assert qr.num_quotients == 8
    assert qr.quotient.weight.shape == (9, 4) and qr.remainder.weight.shape == (8, 4)
    u = EmbeddingInit("uniform", -1, 1)
    assert torch.equal(qr.quotient.weight.detach()[:8], init_vectors(np.arange(8), 4, 9, u))
    assert torch.equal(qr.remainder.weight.detach()[:7], init_vectors(np.arange(7), 4, 10, u))
    cat = QREmbedding(50, 4, num_collisions=7, operation="concat")
    assert cat.quotient.weight.shape == (9, 2)
    dh = DoubleHashedEmbedding(13, 5, seed=4)
    assert torch.equal(dh.weight, HashedEmbedding(13, 5, seed=4).weight)
    w = torch.randn(13, 5)
    assert torch.equal(DoubleHashedEmbedding(13, 5, _weight=w).weight.detach()[:13], w)


def test_collisions_follow_the_virtual_rows():
    # Two IDs share both QR rows exactly when they share the virtual row mix64 % (q * m).
    qr = QREmbedding(40, 2, num_collisions=5, seed=2)
    ids = torch.arange(2000)
    pairs = qr.lookup(ids)
    virtual = pairs[:, 0] * 5 + pairs[:, 1]
    h = mix64_array(ids.numpy(), 2) % np.uint64(40)
    assert np.array_equal(virtual.numpy(), h.astype(np.int64))
    assert len(torch.unique(virtual)) == 40


# fused optimizers ////////////////////////////////////////////////////////////////////////////

FUSED = {
    "sgd": (lambda: eo.SGD(lr=0.02), lambda p: torch.optim.SGD(p, lr=0.02), False),
    "adagrad": (lambda: eo.Adagrad(lr=0.2, initial_accumulator_value=0.1),
                lambda p: torch.optim.Adagrad(p, lr=0.2, initial_accumulator_value=0.1), False),
    "adam": (lambda: eo.Adam(lr=0.05), lambda p: torch.optim.SparseAdam(p, lr=0.05), True),
}


@pytest.mark.parametrize("opt", list(FUSED))
@pytest.mark.parametrize("kind, mode", [("qr_mult", "sum"), ("qr_concat", "mean"), ("double", "sum"),
                                        ("double", "max")])
def test_fused_optimizer_equals_unfused(opt, kind, mode):
    make_fused, make_torch, sparse = FUSED[opt]
    kw = dict(mode=mode, padding_id=PAD, seed=6)
    fused = BAG[kind](optimizer=make_fused(), **kw)
    ref = BAG[kind](sparse=sparse and mode != "max", **kw)
    topt = make_torch(list(ref.parameters()))
    g = torch.Generator().manual_seed(8)
    for _ in range(5):
        ids = torch.randint(0, 30, (4, 3), generator=g)
        ids[0, 0] = PAD
        tgt = torch.randn(4, 6, generator=g)
        lf = ((fused(ids) - tgt) ** 2).sum()
        lf.backward()
        topt.zero_grad()
        lr = ((ref(ids) - tgt) ** 2).sum()
        lr.backward()
        if sparse and mode == "max":  # torch refuses sparse with max: the rows gathered
            rows = torch.unique(ref.lookup(ids))
            rows = rows[rows < ref.weight.shape[0] - 1]
            ref.weight.grad = torch.sparse_coo_tensor(rows[None], ref.weight.grad[rows],
                                                      ref.weight.shape)
        topt.step()
        torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
        for a, b in zip(fused.parameters(), ref.parameters()):
            assert a.grad is None
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-5)


def test_fused_embedding_steps_each_table_once_per_backward():
    qr = QREmbedding(20, 3, num_collisions=4, optimizer=eo.Adam(lr=0.1))
    qr(torch.tensor([1, 2, 3])).sum().backward()
    qr(torch.tensor([4])).sum().backward()
    assert int(qr.quotient.opt_step) == 2 and int(qr.remainder.opt_step) == 2
    dh = DoubleHashedEmbedding(20, 3, optimizer=eo.Adam(lr=0.1))
    dh(torch.tensor([1, 2, 3])).sum().backward()
    assert int(dh.opt_step) == 1


# state_dict ///////////////////////////////////////////////////////////////////////////////////


def train(mod, steps, seed=0):
    opt = torch.optim.Adagrad(mod.parameters(), lr=0.1) if mod.optimizer is None else None
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 40, (6, 2), generator=g)
        loss = mod(ids).square().sum()
        if opt:
            opt.zero_grad()
        loss.backward()
        if opt:
            opt.step()


@pytest.mark.parametrize("kind", list(BAG))
@pytest.mark.parametrize("fused", [False, True])
def test_state_dict_round_trip(kind, fused):
    make = (lambda: BAG[kind](mode="sum", optimizer=eo.Adagrad(lr=0.1))) if fused else (
        lambda: BAG[kind](mode="sum"))
    a = make()
    train(a, 4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make()
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.tensor([[3, 4], [5, PAD]])
    assert torch.equal(a(x), b(x))
    if fused:
        train(a, 3, seed=1)
        train(b, 3, seed=1)
        for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k


def tampered(sd, wkey):
    def edit(k, v):
        out = {kk: vv.clone() for kk, vv in sd.items()}
        if v is None:
            del out[k]
        else:
            out[k] = v(out[k]) if callable(v) else v
        return out

    def nonzero_last(w):
        w = w.clone()
        w[-1] = 1.0
        return w

    return [
        (wkey, edit(wkey, lambda w: w[:-1])),
        (wkey, edit(wkey, lambda w: torch.zeros(w.shape[0], w.shape[1] + 1))),
        (wkey, edit(wkey, lambda w: w.to(torch.int64))),
        (wkey, edit(wkey, nonzero_last)),
        (wkey, edit(wkey, None)),
        ("unexpected", {**{k: v.clone() for k, v in sd.items()}, "extra": torch.ones(1)}),
    ]


@pytest.mark.parametrize("kind", ["qr_mult", "double", "hashed"])
def test_tampered_state_refused_and_nothing_changes(kind):
    def make():
        if kind == "hashed":
            return HashedEmbeddingBag(11, 6, mode="sum", optimizer=eo.Adagrad(lr=0.1))
        return BAG[kind](mode="sum", optimizer=eo.Adagrad(lr=0.1))

    src, dst = make(), make()
    train(src, 2)
    train(dst, 2, seed=5)
    sd = src.state_dict()
    last_key = list(sd)[-1]  # a table's (or the module's) last buffer
    cases = tampered(sd, "remainder.weight" if kind == "qr_mult" else "weight")
    cases.append((last_key, {**{k: v.clone() for k, v in sd.items()}, last_key: sd[last_key][:-1]}))
    for what, bad in cases:
        before = {k: v.clone() for k, v in dst.state_dict().items()}
        with pytest.raises(ValueError, match=f"load_state_dict: .*{what}" if what != "unexpected"
                           else "unexpected keys"):
            dst.load_state_dict(bad)
        after = dst.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), what
    dst.load_state_dict(sd)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in sd.items())


# bad input /////////////////////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_collisions=0), ValueError, "num_collisions must be >= 1"),
        (dict(num_collisions=-2), ValueError, "num_collisions"),
        (dict(num_collisions=51), ValueError, r"num_collisions must be <= num_embeddings \(50\)"),
        (dict(num_collisions=2.0), TypeError, "num_collisions must be an int"),
        (dict(num_collisions=True), TypeError, "num_collisions"),
        (dict(num_collisions=5, operation="mul"), ValueError, "operation must be 'mult', 'add' or 'concat'"),
        (dict(num_collisions=5, operation=None), ValueError, "operation"),
        (dict(num_collisions=5, operation="concat", embedding_dim=5), ValueError, "even embedding_dim"),
        (dict(num_collisions=5, num_embeddings=-1), ValueError, "num_embeddings must be >= 1"),
        (dict(num_collisions=5, num_embeddings=2**62 + 1), ValueError, "num_embeddings must be <= 2\\*\\*62"),
        (dict(num_collisions=5, embedding_dim=0), ValueError, "embedding_dim"),
        (dict(num_collisions=5, _weight=torch.zeros(50, 4)), ValueError, "_weight is not supported"),
        (dict(num_collisions=5, optimizer="sgd"), TypeError, "optimizer must be None or an embtab.optim"),
        (dict(num_collisions=5, mode="median"), ValueError, "mode must be 'sum', 'mean' or 'max'"),
    ],
)
def test_bad_construction(kwargs, exc, match):
    kw = {"num_embeddings": 50, "embedding_dim": 4, **kwargs}
    bag = "mode" in kw
    with pytest.raises(exc, match=match):
        (QREmbeddingBag if bag else QREmbedding)(**kw)
    with pytest.raises(TypeError, match="num_collisions"):
        QREmbedding(50, 4)  # required, keyword-only


def test_qr_huge_virtual_table_allocates_only_its_tables():
    qr = QREmbedding(2**40, 2, num_collisions=2**20)  # a hashed table would take 8.8 TB
    assert qr.num_quotients == 2**20 and qr.memory_bytes()["weights"] == 2 * (2**20 + 1) * 2 * 4
    assert qr(torch.tensor([2**63 - 1])).shape == (1, 2)


@pytest.mark.parametrize("cls", [QREmbedding, QREmbeddingBag, DoubleHashedEmbedding, DoubleHashedEmbeddingBag])
def test_bad_calls_name_the_argument(cls):
    kw = dict(num_collisions=4) if cls.__name__.startswith("QR") else {}
    mod = cls(20, 4, **kw)
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    with pytest.raises(TypeError, match=r"input must hold integer IDs.*float32 with shape \(2,\)"):
        mod(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        mod([1, 2])
    if cls.__name__.endswith("Bag"):
        with pytest.raises(ValueError, match="offsets is required when input is 1-D"):
            mod(torch.tensor([1, 2]))
        with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
            mod(torch.tensor([1, 2]), torch.tensor([1]))
        with pytest.raises(ValueError, match="per_sample_weights is only supported with mode='sum'"):
            mod(torch.tensor([[1, 2]]), None, torch.ones(1, 2))
        with pytest.raises(ValueError, match=r"input must be 1-D .* or 2-D"):
            mod(torch.zeros(1, 1, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="ids must hold integer IDs"):
        mod.lookup(torch.tensor([0.5]))
    assert all(torch.equal(v, mod.state_dict()[k]) for k, v in before.items())


# memory_bytes ///////////////////////////////////////////////////////////////////////////////////


def test_memory_bytes_hand_computed():
    f4, f8 = 4, 8
    # hashing: one [m + 1, d] weight, nothing else.
    assert HashedEmbedding(100, 16).memory_bytes() == dict(
        weights=101 * 16 * f4, index=0, optimizer=0, total=101 * 16 * f4)
    assert DoubleHashedEmbeddingBag(100, 16, dtype=torch.float64).memory_bytes()["total"] == 101 * 16 * f8
    # QR, q = ceil(1000 / 10) = 100, m = 10: (101 + 11) rows; concat halves the columns.
    assert QREmbedding(1000, 16, num_collisions=10).memory_bytes()["weights"] == 112 * 16 * f4
    assert QREmbedding(1000, 16, num_collisions=10, operation="concat").memory_bytes()["weights"] == 112 * 8 * f4
    # fused state: Adagrad one value per weight element, row-wise Adagrad one per row, plus
    # each table's int64 step counter.
    mb = QREmbeddingBag(1000, 16, num_collisions=10, optimizer=eo.Adagrad()).memory_bytes()
    assert mb["optimizer"] == 112 * 16 * f4 + 2 * 8 and mb["index"] == 0
    mb = HashedEmbeddingBag(100, 16, optimizer=eo.RowWiseAdagrad()).memory_bytes()
    assert mb["optimizer"] == 101 * f4 + 8 and mb["total"] == 101 * 16 * f4 + 101 * f4 + 8
    # an outer torch optimizer's state is not the module's
    h = HashedEmbedding(100, 16)
    opt = torch.optim.Adam(h.parameters())
    h(torch.tensor([1])).sum().backward()
    opt.step()
    assert h.memory_bytes()["optimizer"] == 0


@pytest.mark.parametrize("kw", [dict(), dict(on_full="evict_lru", min_count=2, expire_after=3)])
def test_cuckoo_memory_bytes_hand_computed(kw):
    emb = CuckooEmbeddingBag(64, 8, mode="sum", optimizer=eo.Adam(), **kw)
    emb(torch.arange(30).repeat(2).reshape(-1, 2))
    R = emb.num_embeddings
    st = emb._table.stats()
    mb = emb.memory_bytes()
    assert mb["weights"] == (R + 1) * 8 * 4
    assert st["memory_bytes"] == st["num_buckets"] * 64 + st["free_row_bytes"]
    assert mb["optimizer"] == 2 * (R + 1) * 8 * 4 + 8
    # the native index; row_ids (8 B) + row_live (1 B) per row; 5 int64 counters; with the
    # policies, LRU's last-seen step per row, num_expired and the admission sketch. The eval
    # snapshot (scratch for compile/export) is not counted: eval() leaves the figure alone.
    emb.eval()
    assert emb.memory_bytes() == mb and emb._snap_keys.numel() == emb.num_ids
    book = R * 9 + 5 * 8
    if kw:
        book += R * 8 + 8 + emb.admission_sketch.numel() * 8
    assert mb["index"] == st["memory_bytes"] + book
    assert mb["total"] == sum(v for k, v in mb.items() if k != "total")


# compile ////////////////////////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize("kind", ["qr_emb", "qr_bag", "double_emb", "double_bag"])
def test_compile_fullgraph_equals_eager(kind):
    torch._dynamo.reset()
    mod = (EMB if kind.endswith("emb") else BAG)[
        "qr_mult" if kind.startswith("qr") else "double"](padding_id=PAD, seed=3)
    if kind.endswith("bag"):
        mod.mode = "max"
    args = (IDS, torch.tensor([0, 4, 4])) if kind.endswith("bag") else (IDS.reshape(3, 4),)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for train in (False, True):  # eval, and training: no fused optimizer, nothing mutates
        mod.train(train)
        eager = mod(*args)
        got = compiled(*args)
        assert torch.equal(got, eager)
    (g,) = torch.autograd.grad(got.sum(), [next(mod.parameters())])
    (e,) = torch.autograd.grad(eager.sum(), [next(mod.parameters())])
    assert torch.equal(g, e)


@pytest.mark.parametrize("kind", ["qr_mult", "double"])
def test_export_eval_equals_eager(kind):
    mod = BAG[kind](mode="sum", padding_id=PAD, seed=3).eval()
    args = (IDS, torch.tensor([0, 4, 4]), torch.rand(len(IDS)))
    ep = torch.export.export(mod, args)
    assert torch.equal(ep.module()(*args), mod(*args))


def test_collection_memory_bytes_sums_its_tables():
    from embtab.nn import CuckooEmbeddingBagCollection, EmbeddingBagConfig

    ebc = CuckooEmbeddingBagCollection(
        [EmbeddingBagConfig(num_embeddings=8, embedding_dim=4, name="a", feature_names=["x"]),
         EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="b", feature_names=["y"])],
        optimizer=eo.RowWiseAdagrad(),
    )
    a, b = ebc.embedding_bags["a"].memory_bytes(), ebc.embedding_bags["b"].memory_bytes()
    assert a["weights"] == 9 * 4 * 4 and b["weights"] == 5 * 2 * 4
    assert ebc.memory_bytes() == {k: a[k] + b[k] for k in a}
    assert ebc.memory_bytes()["optimizer"] == 9 * 4 + 8 + 5 * 4 + 8


@pytest.mark.parametrize("kind", ["qr_mult", "double"])
def test_sparse_training_compiles_fullgraph_without_a_padding_id(kind):
    # torch's inductor cannot trace F.embedding(sparse=True) with a padding_idx; the tables
    # passed one (their zero row) even with no padding_id, so this failed to compile
    # ("GuardOnDataDependentSymNode"). Oracle: the eager gradients.
    torch._dynamo.reset()
    mod = EMB[kind](seed=3, sparse=True)
    ids = IDS.reshape(3, 4)
    eager = torch.autograd.grad(mod(ids).pow(2).sum(), list(mod.parameters()))
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(ids).pow(2).sum(), list(mod.parameters()))
    for g, e in zip(got, eager):
        assert g.is_sparse and e.is_sparse
        torch.testing.assert_close(g.to_dense(), e.to_dense())
