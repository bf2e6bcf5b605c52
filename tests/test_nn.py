"""embtab.nn against nn.Embedding / nn.EmbeddingBag, and the grow / evict / admit policies."""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embtab
import embtab.optim as eo
from embtab import _core
from embtab._hashing import hashed_row, mix64, mix64_array
from embtab.nn import (
    CuckooEmbedding,
    CuckooEmbeddingBag,
    CuckooEmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingInit,
    HashedEmbedding,
    HashedEmbeddingBag,
    OnFull,
    init_vectors,
)

BIG = [0, 1, -1, 2**63 - 1, -(2**63), 12345678901234567, -987654321]


def raw_ids(n, seed=0):
    """n distinct raw 64-bit IDs (int64 bit patterns), seeded."""
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(-(2**63), 2**63 - 1, size=3 * n, dtype=np.int64))[:n]
    return torch.from_numpy(rng.permutation(ids))


def table_state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# hashing and init /////////////////////////////////////////////////////////////////////////


def test_mix64_mirror_agrees_with_core():
    ids = np.array(BIG + list(range(100)), dtype=np.int64)
    for seed in (0, 1, 2**64 - 1):
        for m in (1, 7, 2**20, 2**63 + 5):
            rows = _core.hashed_rows(ids, m, seed)
            assert rows.tolist() == [hashed_row(int(x), m, seed) for x in ids]
        assert mix64_array(ids, seed).tolist() == [mix64(int(x), seed) for x in ids]


def test_init_depends_on_seed_and_id_only():
    a = CuckooEmbedding(16, 5, seed=7)
    b = CuckooEmbedding(16, 5, seed=7)
    ids = raw_ids(10)
    out_a = a(ids)
    out_b = b(ids.flip(0))  # other order, other rows
    assert not torch.equal(a.lookup(ids), b.lookup(ids))
    assert torch.equal(out_a, out_b.flip(0))
    assert torch.equal(out_a, init_vectors(ids.numpy(), 5, 7, EmbeddingInit()))
    c = CuckooEmbedding(16, 5, seed=8)
    assert not torch.allclose(c(ids), out_a)


def test_init_vectors_in_place_equals_a_new_tensor():
    ids = np.array([5, -3, 2**62, 7], dtype=np.int64)
    for init in (EmbeddingInit(), EmbeddingInit("uniform", -1.0, 2.0), EmbeddingInit("zeros")):
        for dtype in (torch.float32, torch.float64):
            w = torch.full((9, 3), 7.0, dtype=dtype)
            got = init_vectors(ids, 3, 11, init, dtype, 2, out=w[2:6])
            assert got.data_ptr() == w[2:6].data_ptr()
            assert torch.equal(w[2:6], init_vectors(ids, 3, 11, init, dtype))
            assert (w[:2] == 7).all() and (w[6:] == 7).all()  # nothing outside the slice
    with pytest.raises(ValueError, match=r"out must be .* shape \(4, 3\)"):
        init_vectors(ids, 3, 0, EmbeddingInit(), torch.float32, out=torch.empty(3, 3))
    with pytest.raises(ValueError, match="dtype torch.float32"):
        init_vectors(ids, 3, 0, EmbeddingInit(), torch.float32, out=torch.empty(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        init_vectors(ids, 3, 0, EmbeddingInit(), torch.float32, out=torch.empty(3, 4).t())


def test_init_distribution_matches_nn_embedding_default():
    v = init_vectors(np.arange(20000, dtype=np.int64), 7, 3, EmbeddingInit()).double()
    assert abs(v.mean().item()) < 0.02 and abs(v.std().item() - 1.0) < 0.02
    u = init_vectors(np.arange(20000, dtype=np.int64), 4, 3, EmbeddingInit("uniform", -0.5, 0.25))
    assert u.min() >= -0.5 and u.max() < 0.25 and abs(u.mean().item() + 0.125) < 0.01
    assert (
        torch.count_nonzero(
            init_vectors(np.arange(3, dtype=np.int64), 4, 0, EmbeddingInit("zeros"))
        )
        == 0
    )


def test_init_config_validation():
    with pytest.raises(ValueError, match="init.kind"):
        EmbeddingInit("xavier")
    with pytest.raises(ValueError, match="a <= b"):
        EmbeddingInit("uniform", 1.0, 0.0)
    with pytest.raises(TypeError, match="init"):
        CuckooEmbedding(4, 2, init=3)
    with pytest.raises(ValueError, match="on_full"):
        CuckooEmbedding(4, 2, on_full="evict_fifo")
    with pytest.raises(ValueError, match="num_embeddings"):
        CuckooEmbedding(0, 2)
    with pytest.raises(ValueError, match="growth_factor"):
        CuckooEmbedding(4, 2, growth_factor=1.0)
    with pytest.raises(ValueError, match="_weight"):
        CuckooEmbedding(4, 2, _weight=torch.zeros(4, 2))
    assert CuckooEmbedding(4, 2, on_full=OnFull.EVICT_LFU).on_full is OnFull.EVICT_LFU
    with pytest.raises(ValueError, match="growth_factor"):
        CuckooEmbedding(4, 2, growth_factor=float("inf"))


ALL_MODULES = [CuckooEmbedding, CuckooEmbeddingBag, HashedEmbedding, HashedEmbeddingBag]


@pytest.mark.parametrize("cls", ALL_MODULES)
def test_num_threads_checked_at_construction(cls):
    with pytest.raises(ValueError, match=r"num_threads must be < 2\*\*31, got 2147483648"):
        cls(4, 2, num_threads=2**31)
    with pytest.raises(ValueError, match="num_threads must be >= 0"):
        cls(4, 2, num_threads=-1)
    with pytest.raises(TypeError, match="num_threads must be an int"):
        cls(4, 2, num_threads=2.0)


@pytest.mark.parametrize("cls", ALL_MODULES)
def test_sizes_too_large_to_allocate_refused_naming_the_arguments(cls):
    with pytest.raises(ValueError, match=r"num_embeddings, embedding_dim ask for a buffer of shape "
                       r"\(4611686018427387905, 4\)"):
        cls(2**62, 4)
    with pytest.raises(ValueError, match="num_embeddings, embedding_dim"):
        cls(2**40, 2**40)
    if cls in (CuckooEmbedding, CuckooEmbeddingBag):
        with pytest.raises(ValueError, match="admission_eps, admission_delta ask for a buffer"):
            cls(4, 2, min_count=2, admission_eps=1e-300)


@pytest.mark.parametrize("cls", [CuckooEmbeddingBag, HashedEmbeddingBag])
def test_bag_max_with_scale_grad_by_freq_refused_at_construction(cls):
    with pytest.raises(ValueError, match="mode='max' does not support scale_grad_by_freq"):
        cls(4, 2, mode="max", scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="mode='max' does not support sparse"):
        cls(4, 2, mode="max", sparse=True)
    # torch's embedding_bag refuses sparse + scale_grad_by_freq at the first backward only
    with pytest.raises(RuntimeError, match="scale_grad_by_freq not supported with sparse"):
        torch.nn.EmbeddingBag(4, 2, mode="sum", sparse=True, scale_grad_by_freq=True)(
            torch.tensor([1, 1]), torch.tensor([0])).sum().backward()
    for mode in ("sum", "mean"):
        with pytest.raises(ValueError, match="sparse=True does not support scale_grad_by_freq=True"):
            cls(4, 2, mode=mode, sparse=True, scale_grad_by_freq=True)


def test_init_bounds_that_overflow_are_refused():
    # b - a = 2e308 overflows float64: every draw would be inf.
    with pytest.raises(ValueError, match="overflows float64: the width b - a"):
        EmbeddingInit("uniform", -1e308, 1e308)
    with pytest.raises(ValueError, match="overflows float64"):
        EmbeddingInit("normal", 0.0, 1e308)
    # Finite in float64 but not in the weight's dtype: refused at construction, not at insert.
    init = EmbeddingInit("uniform", -1e300, 1e300)
    for cls in ALL_MODULES:
        with pytest.raises(ValueError, match="beyond the largest finite torch.float32"):
            cls(4, 2, init=init)
    with pytest.raises(ValueError, match="beyond the largest finite torch.float16"):
        CuckooEmbedding(4, 2, init=EmbeddingInit("normal", 0.0, 1e4), dtype=torch.float16)
    with pytest.raises(ValueError, match="beyond the largest finite torch.float32"):
        init_vectors(np.arange(2), 3, 0, init)
    w = init_vectors(np.arange(1000), 4, 0, EmbeddingInit("uniform", -1e300, 1e300), torch.float64)
    assert torch.isfinite(w).all() and w.abs().max() > 1e299
    big = CuckooEmbedding(4, 2, init=EmbeddingInit("normal", 0.0, 2.5e37))  # 12.01 * 2.5e37 < 3.4e38
    assert torch.isfinite(big(raw_ids(200))).all()


# values and gradients against nn.Embedding ////////////////////////////////////////////////


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("shape", [(), (6,), (3, 4), (2, 2, 3)])
def test_embedding_matches_nn_embedding(sparse, shape):
    if sparse and shape == ():
        pytest.skip("torch's sparse embedding backward fails on 0-d input (nn.Embedding too)")
    torch.manual_seed(0)
    ids = raw_ids(8, seed=1)
    x = ids[torch.randint(0, 8, shape)]
    x = torch.where(torch.rand(shape) < 0.2, torch.tensor(BIG[2]), x)  # some padding
    emb = CuckooEmbedding(4, 3, padding_id=-1, sparse=sparse)
    out = emb(x)
    rows = emb.lookup(x)
    R = emb.num_embeddings
    rows = torch.where(x == -1, torch.tensor(R), rows)
    ref = nn.Embedding(R + 1, 3, padding_idx=R, sparse=sparse)
    with torch.no_grad():
        ref.weight.copy_(emb.weight)
    expect = ref(rows)
    assert out.shape == (*shape, 3)
    assert torch.equal(out, expect)
    g = torch.randn(out.shape)
    (out * g).sum().backward()
    (expect * g).sum().backward()
    ga, gb = emb.weight.grad, ref.weight.grad
    if sparse:
        ga, gb = ga.to_dense(), gb.to_dense()
    assert torch.equal(ga, gb)
    assert torch.count_nonzero(ga[R]) == 0
    if x.numel() and (x == -1).any():
        assert torch.count_nonzero(out[x == -1]) == 0


def test_embedding_max_norm_and_scale_grad_match():
    ids = raw_ids(5, seed=2)
    x = ids[torch.tensor([0, 1, 1, 2, 4, 4, 4])]
    emb = CuckooEmbedding(8, 4, max_norm=0.5, scale_grad_by_freq=True)
    emb(x)  # insert
    ref = nn.Embedding(9, 4, padding_idx=8, max_norm=0.5, scale_grad_by_freq=True)
    with torch.no_grad():
        ref.weight.copy_(emb.weight)
    out, expect = emb(x), ref(emb.lookup(x))
    assert torch.allclose(out, expect)
    out.sum().backward()
    expect.sum().backward()
    assert torch.allclose(emb.weight.grad, ref.weight.grad)
    assert torch.allclose(emb.weight, ref.weight)


def test_gradcheck_embedding_float64():
    emb = CuckooEmbedding(6, 3, dtype=torch.float64, padding_id=5)
    x = torch.tensor([[10, 11, 5], [11, 12, 13]])
    emb(x)
    # The zero row is a constant (torch's padding_idx: read, never differentiated): check the rest.
    w = emb.weight.detach()[:-1].clone().requires_grad_(True)
    zero = emb.weight.detach()[-1:]
    f = lambda w: torch.func.functional_call(emb, {"weight": torch.cat([w, zero])}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(f, (w,))


# bags against nn.EmbeddingBag //////////////////////////////////////////////////////////////


def bag_case(include_last_offset, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = raw_ids(6, seed=seed)
    x = ids[torch.randint(0, 6, (11,), generator=g)]
    x[3] = 42  # padding
    offsets = torch.tensor([0, 2, 2, 7])  # bag 1 is empty
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([11])])
    return x, offsets


@pytest.mark.parametrize(
    "mode,psw", [("sum", False), ("sum", True), ("mean", False), ("max", False)]
)
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_bag_matches_nn_embedding_bag(mode, include_last_offset, psw, sparse):
    if sparse and mode == "max":
        with pytest.raises(ValueError, match="sparse"):
            CuckooEmbeddingBag(4, 3, mode=mode, sparse=True)
        return
    x, offsets = bag_case(include_last_offset)
    bag = CuckooEmbeddingBag(
        4,
        3,
        mode=mode,
        include_last_offset=include_last_offset,
        padding_id=42,
        sparse=sparse,
        seed=3,
    )
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) if psw else None
    out = bag(x, offsets, per_sample_weights=w)
    R = bag.num_embeddings
    rows = bag.lookup(x)
    rows[x == 42] = R
    ref = nn.EmbeddingBag(
        R + 1, 3, mode=mode, include_last_offset=include_last_offset, padding_idx=R, sparse=sparse
    )
    with torch.no_grad():
        ref.weight.copy_(bag.weight)
    expect = ref(rows, offsets, per_sample_weights=w)
    assert torch.equal(out, expect)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * go).sum().backward()
    (expect * go).sum().backward()
    ga, gb = bag.weight.grad, ref.weight.grad
    if sparse:
        ga, gb = ga.to_dense(), gb.to_dense()
    assert torch.equal(ga, gb)
    assert torch.count_nonzero(ga[R]) == 0


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_2d_input_matches(mode):
    ids = raw_ids(5, seed=4)
    x = ids[torch.tensor([[0, 1, 2], [2, 3, 4], [4, 4, 0]])]
    bag = CuckooEmbeddingBag(8, 2, mode=mode)
    out = bag(x)
    ref = nn.EmbeddingBag(9, 2, mode=mode, padding_idx=8)
    with torch.no_grad():
        ref.weight.copy_(bag.weight)
    assert torch.equal(out, ref(bag.lookup(x)))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gradcheck_bag_float64(mode):
    bag = CuckooEmbeddingBag(8, 3, mode=mode, dtype=torch.float64)
    x, offsets = torch.tensor([5, 6, 7, 5, 8]), torch.tensor([0, 2])
    psw = (
        torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        if mode == "sum"
        else None
    )
    bag(x, offsets)
    w = bag.weight.detach()[:-1].clone().requires_grad_(True)
    zero = bag.weight.detach()[-1:]

    def f(w, *p):
        return torch.func.functional_call(bag, {"weight": torch.cat([w, zero])}, (x, offsets, *p))

    if mode == "sum":
        assert torch.autograd.gradcheck(f, (w, psw.requires_grad_(True)))
    else:
        assert torch.autograd.gradcheck(f, (w,))


# bad input leaves the table unchanged ///////////////////////////////////////////////////


def bad_bag_calls():
    x = torch.tensor([100, 101, 102, 103])
    return [
        (TypeError, "input must hold integer IDs", lambda b: b(x.double(), torch.tensor([0, 2]))),
        (TypeError, "input must hold integer IDs", lambda b: b(x.bool(), torch.tensor([0, 2]))),
        (TypeError, "torch.Tensor", lambda b: b([1, 2], torch.tensor([0]))),
        (ValueError, "offsets is required", lambda b: b(x)),
        (ValueError, r"offsets\[0\] must be 0", lambda b: b(x, torch.tensor([1, 2]))),
        (ValueError, "non-decreasing", lambda b: b(x, torch.tensor([0, 3, 1]))),
        (ValueError, "exceeds", lambda b: b(x, torch.tensor([0, 5]))),
        (ValueError, "offsets must be 1-D", lambda b: b(x, torch.tensor([[0, 1]]))),
        (TypeError, "offsets must have dtype", lambda b: b(x, torch.tensor([0.0, 1.0]))),
        (ValueError, "offsets must be None", lambda b: b(x.reshape(2, 2), torch.tensor([0, 1]))),
        (
            ValueError,
            r"per_sample_weights must have the shape of input \(4,\), got \(3,\)",
            lambda b: b(x, torch.tensor([0, 2]), torch.ones(3)),
        ),
        (
            TypeError,
            "per_sample_weights must have the weight's dtype",
            lambda b: b(x, torch.tensor([0, 2]), torch.ones(4, dtype=torch.float64)),
        ),
        (ValueError, "input must be 1-D", lambda b: b(x.reshape(1, 2, 2))),
    ]


@pytest.mark.parametrize("case", range(len(bad_bag_calls())))
def test_bad_bag_input_raises_and_changes_nothing(case):
    exc, match, call = bad_bag_calls()[case]
    bag = CuckooEmbeddingBag(8, 2, mode="sum", min_count=1)
    bag(torch.tensor([7, 8]), torch.tensor([0]))
    before = table_state(bag)
    with pytest.raises(exc, match=match):
        call(bag)
    assert_state_equal(before, table_state(bag))
    assert bag.num_ids == 2


def test_per_sample_weights_need_sum_mode():
    bag = CuckooEmbeddingBag(8, 2, mode="mean")
    with pytest.raises(ValueError, match="per_sample_weights is only supported with mode='sum'"):
        bag(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2))
    assert bag.num_ids == 0


def test_float_ids_refused_by_embedding():
    emb = CuckooEmbedding(4, 2)
    with pytest.raises(TypeError, match=r"dtype torch.float32 with shape \(2,\)"):
        emb(torch.tensor([1.0, 2.0]))
    assert emb.num_ids == 0


def test_integer_dtypes_are_read_by_value():
    emb = CuckooEmbedding(8, 2)
    a = emb(torch.tensor([3, 2**40], dtype=torch.int64))
    b = emb(torch.tensor([3], dtype=torch.int32))
    assert torch.equal(a[0], b[0]) and emb.num_ids == 2
    c = emb(torch.tensor([2**64 - 1], dtype=torch.uint64))
    d = emb(torch.tensor([-1]))
    assert torch.equal(c, d) and emb.num_ids == 3


# growth is invisible ///////////////////////////////////////////////////////////////////////

UNIVERSE = raw_ids(60, seed=11)


def make_opts(name, emb, head):
    e, h = list(emb.parameters()), list(head.parameters())
    if name == "sgd_momentum":
        return [torch.optim.SGD(e + h, lr=0.1, momentum=0.9)]
    if name == "sgd_momentum_wd":
        return [torch.optim.SGD(e + h, lr=0.1, momentum=0.9, weight_decay=0.01)]
    if name == "adagrad":
        return [torch.optim.Adagrad(e + h, lr=0.1, initial_accumulator_value=0.1)]
    if name == "adam":
        return [torch.optim.Adam(e + h, lr=0.05)]
    if name == "adamw":
        return [torch.optim.AdamW(e + h, lr=0.05, weight_decay=0.1)]
    if name == "sparse_adam":
        return [torch.optim.SparseAdam(e, lr=0.05), torch.optim.Adam(h, lr=0.05)]
    if name == "sparse_adagrad":
        return [torch.optim.Adagrad(e + h, lr=0.1, initial_accumulator_value=0.05)]
    raise AssertionError(name)


def batch(step):
    """Batch of step: IDs from a universe that widens from 5 to 60 IDs (distinct IDs 8 -> 60)."""
    g = torch.Generator().manual_seed(100 + step)
    width = min(60, 6 + 5 * step)
    x = UNIVERSE[torch.randint(0, width, (24,), generator=g)]
    y = (torch.rand(24, generator=g) < 0.5).float()
    return x, y


def train_run(
    name, num_embeddings, steps, bag=False, emb=None, opts=None, head=None, start=0, **kw
):
    sparse = name.startswith("sparse")
    if emb is None:
        torch.manual_seed(0)
        cls = CuckooEmbeddingBag if bag else CuckooEmbedding
        emb = cls(num_embeddings, 4, sparse=sparse, seed=5, **kw)
        head = nn.Linear(4, 1)
        opts = make_opts(name, emb, head)
    losses, weights = [], []
    for step in range(start, start + steps):
        x, y = batch(step)
        if bag:
            out = emb(x, torch.arange(0, 24, 2))
            y = y[::2]
        else:
            out = emb(x)
        loss = F.binary_cross_entropy_with_logits(head(out).squeeze(-1), y)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
        weights.append(emb.weight.detach()[: int(emb.num_rows)].clone())
    return emb, head, opts, losses, weights


# torch's sparse Adagrad builds sparse tensors without opting in or out of invariant checks.
@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled:UserWarning")
@pytest.mark.parametrize(
    "name",
    [
        "sgd_momentum",
        "sgd_momentum_wd",
        "adagrad",
        "adam",
        "adamw",
        "sparse_adam",
        "sparse_adagrad",
    ],
)
@pytest.mark.parametrize("bag", [False, True])
def test_growth_is_invisible(name, bag):
    grown, *_, la, wa = train_run(name, 8, 14, bag=bag, growth_factor=2.0)
    sized, *_, lb, wb = train_run(name, 64, 14, bag=bag)
    assert grown.num_growths.item() == 3 and grown.num_embeddings == 64
    assert sized.num_growths.item() == 0 and grown.num_ids == sized.num_ids > 32
    assert la == lb
    for a, b in zip(wa, wb):
        assert torch.equal(a, b)


def test_backward_through_graph_from_before_growth_raises():
    emb = CuckooEmbedding(2, 3)
    a = emb(torch.tensor([1, 2]))
    b = emb(torch.tensor([3]))  # grows after `a` was built
    with pytest.raises(RuntimeError, match="swap_tensors"):
        (a.sum() + b.sum()).backward()


def test_growth_pads_accumulated_grad():
    emb = CuckooEmbedding(2, 3)
    emb(torch.tensor([1, 2])).sum().backward()
    emb(torch.tensor([3])).sum().backward()  # grows before its backward
    assert emb.weight.grad.shape == emb.weight.shape == (5, 3)
    assert torch.equal(emb.weight.grad[:3], torch.ones(3, 3))


# eviction resets row and optimizer state /////////////////////////////////////////////////


def adam_step(emb, opt, ids):
    out = emb(torch.tensor(ids))
    opt.zero_grad()
    (out**2).sum().backward()
    grad = emb.weight.grad.clone()
    opt.step()
    return out.detach(), grad


def test_lru_eviction_resets_row_and_adam_state():
    emb = CuckooEmbedding(3, 4, on_full="evict_lru", seed=9)
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    betas = opt.param_groups[0]["betas"]
    adam_step(emb, opt, [1, 2, 3])  # rows: 1 -> 0, 2 -> 1, 3 -> 2
    adam_step(emb, opt, [1, 2, 3])
    adam_step(emb, opt, [2, 3])  # last use: ID 1 at step 2, IDs 2 and 3 at step 3
    st = opt.state[emb.weight]
    assert torch.count_nonzero(st["exp_avg"][0]) == 4
    out, grad = adam_step(emb, opt, [4])  # evicts ID 1 (least recent), ID 4 takes row 0
    assert emb.stats()["num_evictions"] == 1 and emb.num_ids == 3
    assert emb.lookup(torch.tensor([1, 4])).tolist() == [-1, 0]
    assert torch.equal(out[0], init_vectors(np.array([4]), 4, 9, EmbeddingInit())[0])
    # Fresh moments: one Adam update from zero state, not the stale moments of ID 1.
    assert torch.allclose(st["exp_avg"][0], (1 - betas[0]) * grad[0])
    assert torch.allclose(st["exp_avg_sq"][0], (1 - betas[1]) * grad[0] ** 2)
    # ID 1 returns: LRU victim is ID 2 or 3 (both last used at step 3) -> lowest row, ID 2.
    out, _ = adam_step(emb, opt, [1])
    assert emb.lookup(torch.tensor([1, 2])).tolist() == [1, -1]
    fresh = CuckooEmbedding(3, 4, seed=9)
    assert torch.equal(out[0], fresh(torch.tensor([1]))[0])


def test_lfu_eviction_picks_least_frequent():
    emb = CuckooEmbedding(3, 2, on_full="evict_lfu")
    opt = torch.optim.SGD(emb.parameters(), lr=0.1, momentum=0.9)
    for ids in ([10, 11, 12], [10, 10, 12], [11, 12]):
        adam_step(emb, opt, ids)  # counts: 10 -> 3, 11 -> 2, 12 -> 3
    rows_before = emb.lookup(torch.tensor([10, 11, 12])).tolist()
    assert rows_before == [0, 1, 2]
    adam_step(emb, opt, [13, 10])
    assert emb.lookup(torch.tensor([11, 13])).tolist() == [-1, 1]
    assert (
        torch.count_nonzero(opt.state[emb.weight]["momentum_buffer"][1]) == 2
    )  # fresh: one step's grad
    mb = opt.state[emb.weight]["momentum_buffer"][1]
    assert torch.allclose(mb, emb.weight.grad[1])


def test_eviction_batch_larger_than_table_raises_and_changes_nothing():
    emb = CuckooEmbedding(2, 2, on_full="evict_lru")
    emb(torch.tensor([1, 2]))
    before = table_state(emb)
    # 2 new IDs (3, 4), no free row; row of ID 1 is used by the batch: 1 evictable.
    with pytest.raises(ValueError, match=r"brings 2 new IDs, 2 more than the 0 free rows, but only "
                       r"1 rows can be evicted .*num_embeddings \(now 2\)"):
        emb(torch.tensor([1, 3, 4]))
    assert_state_equal(before, table_state(emb))
    big = CuckooEmbedding(4, 2, on_full="evict_lfu")
    big(torch.arange(3))
    with pytest.raises(ValueError, match=r"brings 10 new IDs, 9 more than the 1 free rows, but only 3"):
        big(torch.arange(100, 110))


def test_on_full_error_raises_table_full_and_changes_nothing():
    emb = CuckooEmbedding(3, 2, on_full="error", min_count=2)
    emb(torch.tensor([1, 1, 2, 2, 3, 3]))
    assert emb.num_ids == 3
    before = table_state(emb)
    with pytest.raises(embtab.TableFullError):
        emb(torch.tensor([4, 4, 5]))
    assert_state_equal(before, table_state(emb))  # the admission sketch included
    assert emb(torch.tensor([1])).shape == (1, 2)


# admission /////////////////////////////////////////////////////////////////////////////


def test_admission_from_the_cth_sighting():
    emb = CuckooEmbedding(8, 3, min_count=3, seed=2)
    out = emb(torch.tensor([7, 7]))  # 2 sightings: not admitted
    assert emb.num_ids == 0 and torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.count_nonzero(emb.weight.grad) == 0
    emb.weight.grad = None
    out = emb(torch.tensor([7, 9]))  # 7: 3rd sighting -> admitted; 9: first
    assert emb.num_ids == 1 and emb.stats()["num_admissions"] == 1
    assert torch.equal(out[0], init_vectors(np.array([7]), 3, 2, EmbeddingInit())[0])
    assert torch.count_nonzero(out[1]) == 0
    out.sum().backward()
    assert torch.count_nonzero(emb.weight.grad[emb.lookup(torch.tensor([7]))]) == 3
    assert torch.count_nonzero(emb.weight.grad) == 3


def test_admission_bag_leaves_unadmitted_ids_out_of_mean():
    bag = CuckooEmbeddingBag(8, 2, mode="mean", min_count=2)
    bag(torch.tensor([1, 1]), torch.tensor([0]))  # ID 1 admitted
    out = bag(torch.tensor([1, 5]), torch.tensor([0]))  # ID 5 not yet: left out of the mean
    assert torch.equal(out[0], bag.weight[bag.lookup(torch.tensor([1]))[0]])


def test_count_min_never_undercounts_and_error_within_bound():
    rng = np.random.default_rng(0)
    ids = rng.zipf(1.3, size=20000).astype(np.int64)
    eps, delta = 0.01, 0.01
    width, depth = int(np.ceil(np.e / eps)), int(np.ceil(np.log(1 / delta)))
    sk = np.zeros((depth, width), dtype=np.int64)
    _core.cms_add(ids, sk, 3)
    uniq, true = np.unique(ids, return_counts=True)
    est = _core.cms_query(uniq, sk, 3)
    assert np.all(est >= true)
    assert np.mean(est - true > eps * len(ids)) <= delta
    _core.cms_add(ids, sk, 3, -1)
    assert not sk.any()


def test_eval_mode_changes_nothing_and_reads_zero_for_unknown():
    emb = CuckooEmbedding(4, 2, min_count=2)
    emb(torch.tensor([1, 1]))
    emb.eval()
    before = table_state(emb)
    out = emb(torch.tensor([1, 2, 2, 2]))
    assert torch.count_nonzero(out[1:]) == 0 and torch.count_nonzero(out[0]) == 2
    assert_state_equal(before, table_state(emb))


# state round trips ///////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize(
    "kw", [dict(on_full="grow"), dict(on_full="evict_lru", min_count=2), dict(on_full="evict_lfu")]
)
@pytest.mark.parametrize("bag", [False, True])
def test_state_dict_resume_equals_uninterrupted(kw, bag):
    n0 = 8 if kw["on_full"] == "grow" else 20
    _, _, _, la, wa = train_run("adam", n0, 12, bag=bag, **kw)
    emb, head, opts, lb1, _ = train_run("adam", n0, 6, bag=bag, **kw)
    buf = io.BytesIO()
    torch.save(
        {"emb": emb.state_dict(), "head": head.state_dict(), "opt": opts[0].state_dict()}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    torch.manual_seed(123)
    cls = CuckooEmbeddingBag if bag else CuckooEmbedding
    emb2 = cls(4, 4, seed=5, **kw)
    head2 = nn.Linear(4, 1)
    emb2.load_state_dict(saved["emb"])
    head2.load_state_dict(saved["head"])
    opts2 = make_opts("adam", emb2, head2)
    opts2[0].load_state_dict(saved["opt"])
    assert emb2.num_ids == emb.num_ids and emb2.stats() == emb.stats()
    assert torch.equal(emb2.lookup(UNIVERSE), emb.lookup(UNIVERSE))
    *_, lb2, wb2 = train_run("adam", None, 6, bag=bag, emb=emb2, opts=opts2, head=head2, start=6)
    assert lb1 + lb2 == la
    assert torch.equal(wb2[-1], wa[-1])


def test_pickle_and_torch_save_module_round_trip(tmp_path):
    emb = CuckooEmbedding(8, 3, on_full="evict_lru", min_count=2, padding_id=0)
    x = raw_ids(6, seed=3).repeat(2)
    emb(x)
    emb.eval()
    clone = pickle.loads(pickle.dumps(emb))
    torch.save(emb, tmp_path / "emb.pt")
    loaded = torch.load(tmp_path / "emb.pt", weights_only=False)
    deep = copy.deepcopy(emb)
    for other in (clone, loaded, deep):
        assert other.stats() == emb.stats()
        assert_state_equal(table_state(other), table_state(emb))
        assert torch.equal(other(x[:3]), emb(x[:3]))


def test_dtype_conversion_keeps_id_map_on_cpu():
    emb = CuckooEmbedding(4, 3)
    emb(torch.tensor([5, 6]))
    emb.double()
    assert emb.weight.dtype == torch.float64 and emb.row_ids.dtype == torch.int64
    assert emb(torch.tensor([7])).dtype == torch.float64


def test_from_pretrained():
    emb = CuckooEmbedding.from_pretrained(torch.tensor([7, 2**62]), torch.eye(2))
    assert emb(torch.tensor([2**62, 7])).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert not emb.weight.requires_grad


def test_from_pretrained_never_writes_the_zero_row():
    vecs = torch.arange(1.0, 7.0).reshape(3, 2)
    with pytest.raises(ValueError, match="ids contains padding_id=9"):
        CuckooEmbedding.from_pretrained(torch.tensor([7, 9, 11]), vecs, padding_id=9)
    # min_count > 1: the pretrained IDs own their rows at once; the zero row stays zero.
    for cls, kw in ((CuckooEmbedding, {}), (CuckooEmbeddingBag, {"mode": "sum"})):
        emb = cls.from_pretrained(torch.tensor([7, 9, 11]), vecs, min_count=3, padding_id=5, **kw)
        assert emb.num_ids == 3 and emb.lookup(torch.tensor([7, 9, 11])).tolist() == [0, 1, 2]
        assert torch.count_nonzero(emb.weight[emb.num_embeddings]) == 0
        x = torch.tensor([[9, 5, 123]])  # pretrained, padding, unknown (not yet admitted)
        out = emb(x) if cls is CuckooEmbedding else emb(x)[:, None]
        want = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]])
        assert torch.equal(out, want if cls is CuckooEmbedding else want.sum(1, keepdim=True))
    with pytest.raises(ValueError, match=r"embeddings must have shape \(2, d >= 1\)"):
        CuckooEmbedding.from_pretrained(torch.tensor([1, 2]), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="embeddings must be a floating-point"):
        CuckooEmbedding.from_pretrained(torch.tensor([1, 2]), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="ids must be distinct"):
        CuckooEmbedding.from_pretrained(torch.tensor([1, 1]), torch.zeros(2, 2))


# hashing-trick baseline //////////////////////////////////////////////////////////////////


def test_hashed_embedding_rows_and_values():
    emb = HashedEmbedding(10, 3, seed=4, padding_id=-1)
    x = torch.tensor([[5, -1], [2**62, 5]])
    rows = emb.lookup(x)
    assert rows.tolist() == [
        [hashed_row(5, 10, 4), 10],
        [hashed_row(2**62, 10, 4), hashed_row(5, 10, 4)],
    ]
    out = emb(x)
    ref = nn.Embedding(11, 3, padding_idx=10)
    with torch.no_grad():
        ref.weight.copy_(emb.weight)
    assert torch.equal(out, ref(rows))
    assert torch.count_nonzero(out[0, 1]) == 0


def test_rows_of_is_a_deprecated_alias_of_lookup():
    x = torch.tensor([[5, -1], [2**62, 5]])
    for m in (HashedEmbedding(10, 3, padding_id=-1), HashedEmbeddingBag(10, 3, padding_id=-1)):
        with pytest.warns(DeprecationWarning, match="rows_of is deprecated; use lookup"):
            rows = m.rows_of(x)
        assert torch.equal(rows, m.lookup(x))
    assert hasattr(CuckooEmbedding, "lookup") and not hasattr(CuckooEmbedding, "rows_of")


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_hashed_bag_matches(mode):
    x, offsets = bag_case(False)
    bag = HashedEmbeddingBag(5, 3, mode=mode, padding_id=42)
    ref = nn.EmbeddingBag(6, 3, mode=mode, padding_idx=5)
    with torch.no_grad():
        ref.weight.copy_(bag.weight)
    assert torch.equal(bag(x, offsets), ref(bag.lookup(x), offsets))
    with pytest.raises(ValueError, match="non-decreasing"):
        bag(x, torch.tensor([0, 3, 1]))


def test_collision_report_hand_worked():
    m = 4
    # Find four small IDs whose rows are a, a, b, c (one collision pair) with the Python mirror.
    rows = {i: hashed_row(i, m, 0) for i in range(50)}
    a_ids = [i for i in rows if rows[i] == rows[0]][:2]
    others = []
    for i in rows:
        if rows[i] != rows[0] and all(rows[i] != rows[j] for j in others):
            others.append(i)
    ids = a_ids + others[:2]
    # IDs a0, a1 share a row; lookups: a0 x3, a1 x1, b x2, c x2 -> 4 of 8 hit a shared row.
    x = torch.tensor([ids[0]] * 3 + [ids[1]] + [ids[2]] * 2 + [ids[3]] * 2)
    rep = HashedEmbedding(m, 2).collision_report(x)
    assert rep["distinct_ids"] == 4 and rep["rows_used"] == 3
    assert rep["colliding_id_share"] == 0.5 and rep["colliding_lookup_share"] == 0.5
    assert rep["expected_colliding_id_share"] == pytest.approx(1 - 0.75**3)


def test_cuckoo_never_collides_where_hashed_does():
    x = raw_ids(2000, seed=5)
    rep = HashedEmbedding(2000, 2).collision_report(x)
    assert rep["colliding_id_share"] == pytest.approx(1 - np.exp(-1), abs=0.05)
    emb = CuckooEmbedding(2000, 2)
    emb(x)
    assert len(np.unique(emb.lookup(x).numpy())) == 2000


def test_signatures_mirror_torch():
    import inspect

    for ours, theirs in (
        (CuckooEmbedding, nn.Embedding),
        (HashedEmbedding, nn.Embedding),
        (CuckooEmbeddingBag, nn.EmbeddingBag),
        (HashedEmbeddingBag, nn.EmbeddingBag),
    ):
        p_ours = list(inspect.signature(ours.__init__).parameters)
        p_theirs = [
            p.replace("padding_idx", "padding_id")
            for p in inspect.signature(theirs.__init__).parameters
        ]
        assert p_ours[: len(p_theirs)][:7] == p_theirs[:7], ours.__name__


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_weight_on_device_map_on_cpu(device):
    emb = CuckooEmbedding(2, 3, sparse=True, on_full="grow").to(device)
    opt = torch.optim.SparseAdam(emb.parameters(), lr=0.1)
    for ids in ([1, 2], [3, 4, 5], [1, 6, 7, 8, 9]):  # grows twice
        out = emb(torch.tensor(ids, device=device))
        assert out.device.type == device
        opt.zero_grad()
        out.sum().backward()
        opt.step()
    assert emb.weight.device.type == device and emb.num_growths.item() >= 2
    assert all(b.device.type == "cpu" for b in emb.buffers())
    assert opt.state[emb.weight]["exp_avg"].shape == emb.weight.shape
    bag = CuckooEmbeddingBag(4, 2, mode="sum").to(device)
    x, off = torch.tensor([5, 6, 7], device=device), torch.tensor([0, 1], device=device)
    assert bag(x, off).shape == (2, 2)


# optimizer state through growth and eviction, every torch.optim optimizer ////////////////////
#
# Reference: an nn.Embedding with one row per *ID lifetime* (an ID evicted and re-admitted gets a
# new row), all zero until the lifetime starts, when it is set to the ID's init vector. A row
# that was never used holds exactly the state a pre-sized table gives a row no ID has touched;
# embtab must give the rows it grows into or hands to new IDs that same state. The loss is a sum
# over lookups, so each row's trajectory depends on its own gradients and the shared step count.

OPTIMIZERS = {
    "SGD": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "SGD_nesterov": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "Adagrad": (torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.3, lr_decay=0.01)),
    "Adam": (torch.optim.Adam, dict(lr=0.05, weight_decay=0.01)),
    "Adam_amsgrad": (torch.optim.Adam, dict(lr=0.05, amsgrad=True)),
    "AdamW": (torch.optim.AdamW, dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    "SparseAdam": (torch.optim.SparseAdam, dict(lr=0.05)),
    "Adamax": (torch.optim.Adamax, dict(lr=0.05, weight_decay=0.01)),
    "Adadelta": (torch.optim.Adadelta, dict(lr=0.5, weight_decay=0.01)),
    "NAdam": (torch.optim.NAdam, dict(lr=0.05, weight_decay=0.01)),
    "NAdam_decoupled": (torch.optim.NAdam, dict(lr=0.05, decoupled_weight_decay=True)),
    "RAdam": (torch.optim.RAdam, dict(lr=0.05)),
    "RMSprop": (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    "Rprop": (torch.optim.Rprop, dict(lr=0.02, step_sizes=(1e-4, 0.3))),
    "ASGD": (torch.optim.ASGD, dict(lr=0.05, t0=2)),
}
REFUSED = {"Adafactor": torch.optim.Adafactor, "LBFGS": torch.optim.LBFGS, "Muon": torch.optim.Muon}


def test_every_torch_optimizer_is_covered():
    classes = {c for c in vars(torch.optim).values()
               if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)} - {torch.optim.Optimizer}
    assert classes == {c for c, _ in OPTIMIZERS.values()} | set(REFUSED.values())


def _lifetime_run(name, policy, steps=10):
    """Train a CuckooEmbedding (4 rows, growing or evicting) and its lifetime reference; return
    (module, optimizer, reference weight, ID -> reference row)."""
    cls, kw = OPTIMIZERS[name]
    sparse = cls is torch.optim.SparseAdam
    emb = CuckooEmbedding(4, 3, sparse=sparse, on_full=policy, seed=2)
    L = 64
    ref = nn.Embedding(L + 1, 3, padding_idx=L, sparse=sparse)
    with torch.no_grad():
        ref.weight.zero_()
    opt, ropt = cls(emb.parameters(), **kw), cls(ref.parameters(), **kw)
    life, nxt = {}, 0
    g = torch.Generator().manual_seed(7)
    for step in range(steps):
        x = torch.randint(0, 5 + step, (3,), generator=g) * 1000 + 1
        tgt = torch.randn(3, 3, generator=g)
        out = emb(x)
        live = set(emb._table.items()[0].tolist())
        life = {i: r for i, r in life.items() if i in live}
        for i in x.unique().tolist():
            if i not in life:  # a new lifetime starts at the ID's init vector
                life[i], nxt = nxt, nxt + 1
                with torch.no_grad():
                    ref.weight[life[i]] = init_vectors(np.array([i]), 3, 2, EmbeddingInit())[0]
        rout = ref(torch.tensor([life[i] for i in x.tolist()]))
        assert torch.equal(out, rout), (name, step)
        for o, y in ((opt, out), (ropt, rout)):
            o.zero_grad()
            ((y - tgt) ** 2 + 0.1 * y**3).sum().backward()
            o.step()
    assert nxt < L
    return emb, opt, ref.weight.detach(), life


# torch's sparse Adagrad / SparseAdam build sparse tensors without opting in or out of checks.
@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled:UserWarning")
@pytest.mark.parametrize("policy", ["grow", "evict_lru", "evict_lfu"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_state_through_growth_and_eviction_matches_reference(name, policy):
    emb, opt, ref_w, life = _lifetime_run(name, policy)
    if policy == "grow":
        assert emb.num_growths.item() >= 2
    else:
        assert emb.stats()["num_evictions"] >= 4 and emb.num_embeddings == 4
    ids = torch.tensor(sorted(life))
    rows = emb.lookup(ids)
    assert (rows >= 0).all()
    assert torch.equal(emb.weight.detach()[rows], ref_w[torch.tensor([life[i] for i in ids.tolist()])])
    assert torch.count_nonzero(emb.weight.detach()[emb.num_embeddings]) == 0


@pytest.mark.parametrize("policy", ["grow", "evict_lru"])
@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_optimizer_mixing_rows_refused_when_rows_change(name, policy):
    cls = REFUSED[name]
    emb = CuckooEmbedding(2, 4, on_full=policy)
    opt = cls(emb.parameters(), lr=0.01)

    def step(ids):
        opt.zero_grad()
        emb(torch.tensor(ids)).pow(2).sum().backward()
        opt.step()

    step([1, 2])  # fills the table; no growth or eviction yet: trains as nn.Embedding would
    step([1, 2])
    w_before = emb.weight.detach().clone()
    state_before = {k: v.clone() if isinstance(v, torch.Tensor) else v
                    for k, v in opt.state[emb.weight].items()} if opt.state[emb.weight] else {}
    with pytest.raises(ValueError, match=f"growing or evicting rows .* cannot be done for {cls.__name__}"):
        step([3])  # grows or evicts: the optimizer's state cannot follow
    # The step was not applied: ID 2 (row 1, kept by both policies) did not move.
    assert emb.lookup(torch.tensor([2])).item() == 1
    assert torch.equal(emb.weight.detach()[1], w_before[1])
    for k, v in state_before.items():
        got = opt.state[emb.weight][k]
        assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v, k


def test_lbfgs_refused_with_a_module_that_may_grow_or_evict():
    def closure(emb, opt, ids):
        def f():
            opt.zero_grad()
            loss = emb(torch.tensor(ids)).pow(2).sum()
            loss.backward()
            return loss
        return f

    for policy in ("grow", "evict_lfu"):
        emb = CuckooEmbedding(2, 4, on_full=policy)
        opt = torch.optim.LBFGS(emb.parameters(), lr=0.1)
        with pytest.raises(ValueError, match=f"LBFGS runs the forward inside step.*{policy}"):
            opt.step(closure(emb, opt, [1, 2, 3]))
        assert emb.num_ids == 0
    emb = CuckooEmbedding(4, 4, on_full="error")
    opt = torch.optim.LBFGS(emb.parameters(), lr=0.1)
    for _ in range(2):
        opt.step(closure(emb, opt, [1, 2, 3]))
    assert emb.num_ids == 3


def test_unknown_optimizer_refused_only_when_its_state_must_change():
    class MySGD(torch.optim.SGD):
        pass

    emb = CuckooEmbedding(2, 2)
    opt = MySGD(emb.parameters(), lr=0.1, momentum=0.9)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()  # no growth: fine
    emb(torch.tensor([3])).sum().backward()  # grows
    with pytest.raises(ValueError, match="per-row optimizer state of MySGD, which embtab does not know"):
        opt.step()


# eviction and graphs not yet backpropagated ////////////////////////////////////////////////


def test_eviction_never_takes_a_row_a_pending_graph_reads():
    emb = CuckooEmbedding(3, 2, on_full="evict_lru")
    a = emb(torch.tensor([1, 2, 3]))  # its graph reads rows 0, 1, 2
    before = table_state(emb)
    with pytest.raises(ValueError, match="not yet backpropagated"):
        emb(torch.tensor([4]))  # every row is read by `a`: nothing may be evicted
    assert_state_equal(before, table_state(emb))
    a.sum().backward()  # now the rows are free
    emb(torch.tensor([4]))
    assert emb.lookup(torch.tensor([1, 4])).tolist() == [-1, 0]

    # A pending graph keeps its rows; the eviction takes another, and each gradient reaches
    # the ID that produced it.
    emb = CuckooEmbedding(3, 2, on_full="evict_lfu")
    emb(torch.tensor([1, 2, 2])).sum().backward()
    emb(torch.tensor([3, 3, 3]))  # ID 3 fills the last row; counts 1:1, 2:2, 3:3
    b = emb(torch.tensor([1]))  # pending: row of ID 1 (least frequent) is pinned
    emb.weight.grad = None
    c = emb(torch.tensor([4]))  # evicts ID 2, not ID 1
    assert emb.lookup(torch.tensor([1, 2, 4])).tolist() == [0, -1, 1]
    (b.sum() + 2 * c.sum()).backward()
    assert emb.weight.grad[:3].tolist() == [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]


def test_a_freed_graph_releases_its_rows():
    import gc

    emb = CuckooEmbeddingBag(2, 2, mode="sum", on_full="evict_lru")
    loss = emb(torch.tensor([[1, 2]])).sum()
    del loss
    gc.collect()
    emb(torch.tensor([[3]]))  # may evict: the graph that read rows 0 and 1 is gone
    assert emb.stats()["num_evictions"] == 1
    with torch.no_grad():
        emb(torch.tensor([[1]]))  # no graph, nothing pinned
    emb.eval()
    emb(torch.tensor([[5]]))
    assert emb._graph_rows == {}


# load_state_dict validates before it changes anything ////////////////////////////////////////


def _tampered_state_dicts(sd):
    """(what, state dict) pairs that must be refused; ``sd`` is a valid state dict."""
    def edit(**kw):
        out = {k: v.clone() for k, v in sd.items()}
        for k, v in kw.items():
            if v is None:
                del out[k]
            else:
                out[k] = v(out[k]) if callable(v) else v
        return out

    R = sd["row_ids"].numel()
    live = torch.nonzero(sd["row_live"]).reshape(-1)
    dup = sd["row_ids"].clone()
    dup[live[1]] = dup[live[0]]
    zero_row = sd["weight"].clone()
    zero_row[-1] = 1.0
    return [
        ("weight", edit(weight=torch.zeros(R + 1, 5))),  # another embedding_dim
        ("weight", edit(weight=torch.zeros(R + 3, 3))),  # rows disagree with the ID map
        ("weight", edit(weight=zero_row)),
        ("weight", edit(weight=lambda w: w.to(torch.int64))),
        ("row_ids", edit(row_ids=dup)),  # a duplicate ID
        ("row_ids", edit(row_ids=lambda t: t.to(torch.int32))),
        ("row_live", edit(row_live=lambda t: t.to(torch.int64))),
        ("row_last_step", edit(row_last_step=lambda t: t[:-1])),
        ("num_rows", edit(num_rows=torch.tensor(R + 1))),
        ("num_rows", edit(num_rows=torch.tensor(int(live[-1])))),  # a live row beyond num_rows
        ("num_evictions", edit(num_evictions=torch.tensor(-1))),
        ("num_steps", edit(num_steps=torch.tensor([1, 2]))),
        ("admission_sketch", edit(admission_sketch=lambda t: t[:, :-1])),
        ("row_ids", edit(row_ids=None)),  # a missing key
        ("unexpected", edit(row_count=torch.zeros(R, dtype=torch.int64))),  # another policy's
        ("padding_id", edit(row_ids=lambda t: torch.where(torch.arange(R) == live[0], 99, t))),
    ]


def test_failed_load_state_dict_changes_nothing():
    kw = dict(on_full="evict_lru", min_count=2, padding_id=99, seed=3)
    src = CuckooEmbedding(6, 3, **kw)
    src(raw_ids(5, seed=1).repeat(2))
    src(raw_ids(4, seed=2).repeat(2))  # evicts 3
    sd = src.state_dict()
    dst = CuckooEmbedding(4, 3, **kw)
    own = raw_ids(4, seed=3).repeat(2)
    dst(own)
    for what, bad in _tampered_state_dicts(sd):
        before = table_state(dst)
        items = [a.copy() for a in dst._table.items()]
        rows = dst.lookup(own)
        with pytest.raises(ValueError, match="load_state_dict|unexpected keys"):
            dst.load_state_dict(bad)
        assert_state_equal(before, table_state(dst))
        assert dst.num_embeddings == 4 and dst.weight.shape == (5, 3), what
        assert all(np.array_equal(a, b) for a, b in zip(items, dst._table.items())), what
        assert torch.equal(dst.lookup(own), rows), what
    dst.load_state_dict(sd)  # the untampered one loads
    assert dst.stats() == src.stats()
    assert torch.equal(dst.lookup(raw_ids(4, seed=2)), src.lookup(raw_ids(4, seed=2)))


def test_load_state_dict_messages_name_the_key():
    src = CuckooEmbedding(4, 3)
    src(torch.tensor([1, 2, 3]))
    sd = table_state(src)
    sd["row_ids"][1] = 1
    with pytest.raises(ValueError, match=r"row_ids gives ID 1 several live rows \[0, 1\]"):
        CuckooEmbedding(4, 3).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"weight must have shape \(R \+ 1, 2\).*got \(5, 3\)"):
        CuckooEmbedding(4, 2).load_state_dict(src.state_dict())
    # strict=False: keys of other modules are ignored as torch does, this module's still checked.
    m = nn.ModuleDict({"a": CuckooEmbedding(4, 3)})
    m.load_state_dict({"a." + k: v for k, v in src.state_dict().items()} | {"b.x": torch.ones(1)},
                      strict=False)
    assert m["a"].num_ids == 3


# load_state_dict(strict=False), optimizer state values, degenerate inputs -------------------------


@pytest.mark.parametrize("make", [
    lambda: HashedEmbeddingBag(10, 3, mode="sum"),
    lambda: CuckooEmbeddingBag(4, 3, mode="sum"),
    lambda: CuckooEmbeddingBagCollection(
        [EmbeddingBagConfig(num_embeddings=4, embedding_dim=3, name="t", feature_names=["f"])]),
])
def test_strict_false_ignores_unknown_keys_as_torch_does(make):
    src, dst = make(), make()
    with torch.no_grad():
        for p in src.parameters():
            p[:-1].uniform_(-1, 1)
    sd = {**src.state_dict(), "extra": torch.zeros(1)}
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\].*nothing was loaded"):
        dst.load_state_dict(sd)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())
    res = dst.load_state_dict(sd, strict=False)
    assert res.unexpected_keys == ["extra"] and res.missing_keys == []
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_strict_false_loads_a_fused_checkpoint_into_a_plain_module():
    src = CuckooEmbeddingBag(4, 3, mode="sum", optimizer=eo.Adam(lr=0.1))
    src(torch.tensor([[1, 2]])).sum().backward()
    dst = CuckooEmbeddingBag(4, 3, mode="sum")
    res = dst.load_state_dict(src.state_dict(), strict=False)
    assert sorted(res.unexpected_keys) == ["opt_exp_avg", "opt_exp_avg_sq", "opt_step"]
    assert torch.equal(dst.weight, src.weight) and dst.num_ids == 2
    # a nested module: torch's strict=False reaches it through torch's own load_state_dict
    outer = nn.ModuleDict({"a": CuckooEmbeddingBag(4, 3, mode="sum")})
    res = outer.load_state_dict({"a." + k: v for k, v in src.state_dict().items()}, strict=False)
    assert len(res.unexpected_keys) == 3 and outer["a"].num_ids == 2


def test_collection_strict_false_skips_a_table_with_no_keys():
    cfg = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=3, name=n, feature_names=[n])
           for n in ("a", "b")]
    src, dst = CuckooEmbeddingBagCollection(cfg), CuckooEmbeddingBagCollection(cfg)
    src({"a": torch.tensor([[1, 2]]), "b": torch.tensor([[3]])})
    dst({"a": torch.tensor([[7]]), "b": torch.tensor([[8, 9]])})
    b_before = {k: v.clone() for k, v in dst.embedding_bags["b"].state_dict().items()}
    only_a = {k: v for k, v in src.state_dict().items() if k.startswith("embedding_bags.a.")}
    with pytest.raises(ValueError, match="embedding_bags.b.weight is missing"):
        dst.load_state_dict(only_a)
    res = dst.load_state_dict(only_a, strict=False)
    assert res.missing_keys and all(k.startswith("embedding_bags.b.") for k in res.missing_keys)
    assert dst.embedding_bags["a"].num_ids == 2
    assert all(torch.equal(v, dst.embedding_bags["b"].state_dict()[k]) for k, v in b_before.items())


@pytest.mark.parametrize("opt, key", [(lambda: eo.Adam(lr=0.1), "opt_exp_avg_sq"),
                                      (lambda: eo.Adagrad(lr=0.1), "opt_sum"),
                                      (lambda: eo.RowWiseAdagrad(lr=0.1), "opt_row_sum"),
                                      (lambda: eo.Adam(lr=0.1), "opt_exp_avg")])
@pytest.mark.parametrize("cls", [CuckooEmbedding, HashedEmbedding])
def test_corrupt_optimizer_state_is_refused(cls, opt, key):
    src = cls(4, 3, optimizer=opt())
    src(torch.tensor([1, 2])).sum().backward()
    dst = cls(4, 3, optimizer=opt())
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    bads = [("NaN or infinite", float("nan")), ("NaN or infinite", float("inf"))]
    if key != "opt_exp_avg":  # a first moment may be negative; a sum of squares may not
        bads.append(("negative", -1.0))
    for what, value in bads:
        sd = {k: v.clone() for k, v in src.state_dict().items()}
        sd[key].view(-1)[0] = value
        with pytest.raises(ValueError, match=f"{key} holds {what}"):
            dst.load_state_dict(sd)
        assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["opt_step"].fill_(1 << 62)  # counting on (and Adam's bias correction) would overflow
    with pytest.raises(ValueError, match="opt_step"):
        dst.load_state_dict(sd)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())
    if key == "opt_exp_avg":
        sd = {k: v.clone() for k, v in src.state_dict().items()}
        sd[key].view(-1)[0] = -1.0
        dst.load_state_dict(sd)  # a negative first moment is a valid state


def test_float32_checkpoint_loads_into_a_float64_fused_module():
    src = CuckooEmbedding(4, 3, optimizer=eo.Adam(lr=0.1))
    src(torch.tensor([1, 2])).sum().backward()
    dst = CuckooEmbedding(4, 3, optimizer=eo.Adam(lr=0.1), dtype=torch.float64)
    dst.load_state_dict(src.state_dict())
    assert dst.opt_exp_avg.dtype == torch.float64
    torch.testing.assert_close(dst.opt_exp_avg, src.opt_exp_avg.double())


@pytest.mark.parametrize("cls", [CuckooEmbeddingBag, HashedEmbeddingBag])
def test_2d_input_without_ids_is_refused_and_changes_nothing(cls):
    m = cls(4, 3, mode="sum")
    m(torch.tensor([[1, 2]]))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for shape in [(3, 0), (0, 0)]:
        with pytest.raises(ValueError, match=rf"input of shape \({shape[0]}, 0\) has bags of no IDs"):
            m(torch.zeros(shape, dtype=torch.long))
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert m(torch.zeros((0, 2), dtype=torch.long)).shape == (0, 3)  # no bags: as torch


def test_meta_tensors_are_refused_by_name():
    m = CuckooEmbeddingBag(4, 3, mode="sum")
    with pytest.raises(ValueError, match="input is on the meta device"):
        m(torch.tensor([5], device="meta"), torch.tensor([0]))
    with pytest.raises(ValueError, match="offsets is on the meta device"):
        m(torch.tensor([5]), torch.tensor([0], device="meta"))
    sd = {k: v.to("meta") if k == "weight" else v for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="weight is on the meta device"):
        CuckooEmbeddingBag(4, 3, mode="sum").load_state_dict(sd)
    assert m.stats()["num_steps"] == 0


@pytest.mark.parametrize("make", [lambda: HashedEmbedding(8, 4), lambda: CuckooEmbedding(8, 4)])
def test_a_nested_module_reads_the_parents_strict(make):
    src, dst = nn.Sequential(make()), nn.Sequential(make())
    src[0](torch.tensor([1, 2]))
    with torch.no_grad():
        src[0].weight[:-1].uniform_(-1, 1)
    sd = {**src.state_dict(), "0.bogus": torch.zeros(1)}
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"unexpected keys \['0.bogus'\].*nothing was loaded"):
        dst.load_state_dict(sd)                        # through torch's own load_state_dict
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())
    res = dst.load_state_dict(sd, strict=False)
    assert res.unexpected_keys == ["0.bogus"]
    assert torch.equal(dst[0].weight, src[0].weight)


def test_collection_under_a_parent_with_strict_false_skips_a_missing_table():
    cfg = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=3, name=n, feature_names=[n])
           for n in ("a", "b")]
    src = nn.ModuleDict({"c": CuckooEmbeddingBagCollection(cfg)})
    dst = nn.ModuleDict({"c": CuckooEmbeddingBagCollection(cfg)})
    src["c"]({"a": torch.tensor([[1, 2]]), "b": torch.tensor([[3]])})
    only_a = {k: v for k, v in src.state_dict().items() if k.startswith("c.embedding_bags.a.")}
    res = dst.load_state_dict(only_a, strict=False)
    assert res.missing_keys and dst["c"].embedding_bags["a"].num_ids == 2
    with pytest.raises(ValueError, match="embedding_bags.b.weight is missing"):
        dst.load_state_dict(only_a)


def test_assigned_optimizer_state_of_another_float_dtype_is_cast():
    src = CuckooEmbedding(4, 3, optimizer=eo.Adagrad(lr=0.1))
    src(torch.tensor([1, 2])).sum().backward()
    sd = src.state_dict()
    sd["opt_sum"] = sd["opt_sum"].double()
    dst = CuckooEmbedding(4, 3, optimizer=eo.Adagrad(lr=0.1))
    dst.load_state_dict(sd, assign=True)
    assert dst.opt_sum.dtype == torch.float32 and sd["opt_sum"].dtype == torch.float64
    dst(torch.tensor([1, 3])).sum().backward()  # was: TypeError, state of another dtype


@pytest.mark.parametrize("cls", [CuckooEmbedding, CuckooEmbeddingBag])
@pytest.mark.parametrize("opt", ["sgd_momentum", "adagrad", "rowwise", "adam"])
def test_dtype_conversion_converts_the_fused_state_with_the_weight(cls, opt):
    import embtab.optim as eo

    make = {"sgd_momentum": lambda: eo.SGD(lr=0.1, momentum=0.9), "adagrad": lambda: eo.Adagrad(lr=0.1),
            "rowwise": lambda: eo.RowWiseAdagrad(lr=0.1), "adam": lambda: eo.Adam(lr=0.1)}[opt]
    kw = {"mode": "sum"} if cls is CuckooEmbeddingBag else {}
    conv = cls(4, 3, seed=2, optimizer=make(), **kw)
    born = cls(4, 3, seed=2, optimizer=make(), dtype=torch.float64, **kw)
    x = torch.tensor([[5, 6], [6, 9]])
    conv(x).sum().backward()  # a float32 step first: its state is converted, not reset
    born.load_state_dict({k: v.double() if v.is_floating_point() else v
                          for k, v in conv.state_dict().items()})
    conv.double()
    states = [n for n in conv._buffers if n.startswith("opt_") and n != "opt_step"]
    assert states and all(conv._buffers[n].dtype == torch.float64 for n in states)
    assert conv.opt_step.dtype == torch.int64 and conv.row_ids.dtype == torch.int64
    for _ in range(2):
        for m in (conv, born):
            m(x * 3).pow(2).sum().backward()
    for name, b in born.state_dict().items():
        assert torch.equal(conv.state_dict()[name], b), name


@pytest.mark.parametrize("cls", [CuckooEmbeddingBag, HashedEmbeddingBag])
def test_no_bags_gives_an_empty_output_as_torch_does(cls):
    m = cls(4, 2, mode="sum")
    empty = torch.zeros(0, dtype=torch.int64)
    ref = torch.nn.EmbeddingBag(4, 2, mode="sum")(empty, empty)
    assert m(empty, empty).shape == ref.shape == (0, 2)
    before = m.state_dict()
    # torch drops IDs given with no bag; embtab refuses them, changing nothing
    with pytest.raises(ValueError, match=r"offsets is empty \(no bags\) but input holds 2 IDs"):
        m(torch.tensor([1, 2]), empty)
    last = cls(4, 2, mode="sum", include_last_offset=True)
    with pytest.raises(ValueError, match="with include_last_offset=True, offsets must hold at least one"):
        last(empty, empty)
    assert last(empty, torch.tensor([0])).shape == (0, 2)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("growth_factor", [1e12, 1e300])
def test_a_growth_too_large_to_allocate_raises_memoryerror_and_changes_nothing(growth_factor):
    m = CuckooEmbeddingBag(2, 4, mode="sum", growth_factor=growth_factor, seed=1)
    m(torch.tensor([[1]]))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(MemoryError, match=r"growing from 2 to .* rows \(growth_factor=.*\) failed, "
                                          r"nothing changed"):
        m(torch.tensor([[5], [6], [7]]))
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert m.num_ids == 1 and m.stats()["num_growths"] == 0
    assert m(torch.tensor([[5]])).shape == (1, 4)  # a batch that fits still trains


def test_half_and_back_keeps_the_fused_state_unrounded():
    import embtab.optim as eo

    m = CuckooEmbedding(8, 4, seed=2, optimizer=eo.Adagrad(lr=0.1))
    x = torch.tensor([1, 2, 3])
    for _ in range(3):
        (m(x) * 300).sum().backward()
    state = m.opt_sum.clone()
    assert state.max() > 65504  # beyond float16's range
    m.half()
    assert m.weight.dtype == torch.float16 and torch.equal(m.opt_sum, state)
    m.float()
    assert torch.equal(m.opt_sum, state)
    (m(x) * 300).sum().backward()  # trains on
    assert torch.isfinite(m.opt_sum).all()


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_a_growth_whose_optimizer_state_cannot_be_allocated_changes_nothing(opt, monkeypatch):
    import embtab.optim as eo

    make = {"adam": lambda: eo.Adam(lr=0.1), "adagrad": lambda: eo.Adagrad(lr=0.1)}[opt]
    m = CuckooEmbeddingBag(4, 3, mode="sum", seed=1, optimizer=make())
    m(torch.tensor([[1, 2], [3, 4]])).sum().backward()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    weight = m.weight

    def fail(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(eo, "grown_rows", fail)  # the optimizer state's allocation fails
    with pytest.raises(MemoryError, match=r"growing from 4 to 8 rows .* failed, nothing changed"):
        m(torch.tensor([[5, 6], [7, 8]]))
    monkeypatch.undo()
    assert m.weight is weight and m.num_embeddings == 4
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    m(torch.tensor([[5, 6], [7, 8]])).sum().backward()  # the growth goes through now
    assert m.num_embeddings == 8 and m.num_ids == 8


@pytest.mark.parametrize("on_full", ["grow", "evict_lru", "evict_lfu"])
def test_ids_chosen_against_seed_0_are_refused_by_seed_0_only_and_change_nothing(on_full):
    import embtab.optim as eo
    from test_table import _colliding_ids

    bad = torch.from_numpy(_colliding_ids(9).view(np.int64))
    own = CuckooEmbedding(4, 2, seed=12345, on_full=on_full if on_full == "grow" else "grow")
    assert own(bad).shape == (9, 2) and own.num_ids == 9  # an ordinary batch under its seed
    # seed 0, full: the batch needs a growth or evictions before its insert fails
    make = lambda: CuckooEmbedding(12, 2, seed=0, on_full=on_full,  # noqa: E731
                                   optimizer=eo.Adam(lr=0.1))
    m, twin = make(), make()
    for mod in (m, twin):
        mod(torch.arange(100, 112)).sum().backward()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    stats = m.stats()
    with pytest.raises(ValueError, match="give the table a seed of your own"):
        m(bad)
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert m.stats() == stats
    x = torch.tensor([100, 5, 6, 7, 103])  # new IDs evict or grow as in a module that never failed
    for mod in (m, twin):
        mod(x).sum().backward()
    for k, v in twin.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("policy", [dict(on_full="evict_lru"), dict(on_full="evict_lfu"),
                                    dict(on_full="grow", expire_after=1)],
                         ids=["lru", "lfu", "expiry"])
def test_accumulated_gradient_of_an_evicted_id_does_not_reach_the_new_id(policy, sparse):
    # Gradient accumulation over micro-batches with a torch optimizer: ID 10 trains row 0, is
    # evicted (or expires), and ID 20 takes row 0 before the step. Oracle: one nn.Embedding
    # row per ID lifetime: ID 20 gets its init minus its own gradient only (3 per entry),
    # while the rows of IDs still live keep theirs. 10's gradient used to be added to 20's.
    from embtab.nn import init_vectors

    m = CuckooEmbedding(2, 2, seed=0, num_threads=1, sparse=sparse, **policy)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    m(torch.tensor([10])).sum().backward()
    m(torch.tensor([11])).sum().mul(5).backward()
    # 10 is the least recent and least frequent (tie: lowest row), or has expired: 20 takes
    # its row 0; 11 is in the batch and stays
    (m(torch.tensor([20, 11])) * torch.tensor([[3.0], [5.0]])).sum().backward()
    opt.step()
    assert int(m.lookup(torch.tensor([10]))[0]) == -1
    init = init_vectors(np.array([20, 11]), 2, 0, m.init)
    for i, want in ((20, init[0] - 3.0), (11, init[1] - 10.0)):
        row = int(m.lookup(torch.tensor([i]))[0])
        assert row >= 0
        torch.testing.assert_close(m.weight.detach()[row], want, rtol=0, atol=1e-6)


def test_growth_while_a_graph_holds_the_weight_is_a_clear_runtime_error():
    # A graph whose per_sample_weights need a gradient saves the weight; a training forward
    # that must grow cannot swap it. That was reported as a MemoryError ("growing ... failed")
    # although no allocation failed. Nothing may change, and after the backward it grows.
    m = CuckooEmbeddingBag(2, 3, mode="sum", num_threads=1)
    p = torch.ones(2, requires_grad=True)
    out = m(torch.tensor([1, 2]), torch.tensor([0]), p)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="still holds the weight") as info:
        m(torch.tensor([3, 4, 5]), torch.tensor([0]))
    assert not isinstance(info.value, MemoryError)
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    out.sum().backward()
    del out
    assert m(torch.tensor([3, 4, 5]), torch.tensor([0])).shape == (1, 3)
    assert m.num_embeddings >= 5


@pytest.mark.parametrize("cls", [CuckooEmbedding, CuckooEmbeddingBag, embtab.nn.HashedEmbedding,
                                 embtab.nn.QREmbedding, embtab.nn.DoubleHashedEmbeddingBag])
def test_constructors_refuse_a_seed_past_64_bits_and_an_integer_dtype(cls):
    # seed=2**64 silently meant seed 0 (CuckooTable refuses it); dtype=torch.int64 failed in
    # torch.finfo, naming nothing
    kw = {"num_collisions": 4} if cls is embtab.nn.QREmbedding else {}
    assert cls(16, 2, seed=2**64 - 1, **kw).seed == 2**64 - 1
    with pytest.raises(ValueError, match="seed must be <= "):
        cls(16, 2, seed=2**64, **kw)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        cls(16, 2, dtype=torch.int64, **kw)


def test_rows_pending_a_torch_step_stay_bounded_with_a_fused_optimizer_alone():
    # Rows handed to new IDs wait for a torch optimizer's step to reset their state; with a
    # fused optimizer alone none comes, and every batch's array was kept (8 bytes per
    # admission, forever). Oracle: at most num_embeddings distinct rows are pending, and they
    # are exactly the rows handed out since the start.
    m = CuckooEmbedding(100, 2, num_threads=1, on_full="evict_lru", optimizer=eo.SGD(lr=0.1))
    rng = np.random.default_rng(0)
    handed = set()
    for _ in range(60):
        ids = torch.from_numpy(rng.integers(0, 2**62, 40))
        m(ids).sum().backward()
        handed |= set(m.lookup(ids).tolist())
    pending = np.concatenate(m._pending_rows)
    assert len(pending) <= 2 * m.num_embeddings + 40
    assert set(pending.tolist()) == handed


def test_lfu_counts_every_lookup_of_each_row():
    # Oracle: a dict of lookups per live ID (repeats within a batch counted, padding and
    # unknown IDs not); the counts are now summed per distinct row of the batch (they were
    # a bincount over every row of the table).
    m = CuckooEmbedding(50, 2, num_threads=1, on_full="evict_lfu", padding_id=-1)
    rng = np.random.default_rng(3)
    count = {}
    for _ in range(30):
        ids = rng.integers(0, 40, 25)
        ids[rng.random(25) < 0.1] = -1
        m(torch.from_numpy(ids))
        for i in ids.tolist():
            if i != -1:
                count[i] = count.get(i, 0) + 1
    rows = m.lookup(torch.tensor(sorted(count)))
    assert m.row_count[rows].tolist() == [count[i] for i in sorted(count)]


def _eviction_oracle(R, policy, batches):
    """Rows per batch under LRU / LFU eviction, from the policy's definition (the modules
    guide): a new ID takes the lowest free row, else a fresh one; when the batch's new IDs do
    not fit, the live rows the batch does not read with the lowest (score, row) are freed,
    score = the step of the last lookup (LRU) or the number of lookups (LFU)."""
    id_row, row_id, free, next_row = {}, {}, [], 0
    last, count = [0] * R, [0] * R
    out = []
    for step, ids in enumerate(batches, 1):
        read = {id_row[i] for i in ids if i in id_row}
        new = list(dict.fromkeys(i for i in ids if i not in id_row))
        over = len(new) - (R - len(id_row))
        if over > 0:
            score = last if policy == "evict_lru" else count
            for r in sorted((r for r in row_id if r not in read), key=lambda r: (score[r], r))[:over]:
                del id_row[row_id.pop(r)]
                free.append(r)
        for i in new:
            if free:
                r = min(free)
                free.remove(r)
            else:
                r, next_row = next_row, next_row + 1
            id_row[i], row_id[r], last[r], count[r] = r, i, 0, 0
        rows = [id_row[i] for i in ids]
        for r in rows:
            last[r] = step
            count[r] += 1
        out.append(rows)
    return out


@pytest.mark.parametrize("policy", ["evict_lru", "evict_lfu"])
@pytest.mark.parametrize("R", [600, 20_000])
def test_eviction_follows_its_definition_on_long_skewed_streams(policy, R):
    # Zipf-repeated IDs (many tied scores under LFU, whole batches tied under LRU) and a
    # trickle of new ones, so that victims are few against the live rows (the sampled
    # threshold of _lowest_rows) or, in bursts, most of them (its fallback).
    rng = np.random.default_rng(R)
    pool = rng.permutation(4 * R)
    batches = []
    for step in range(40):
        n = int(rng.integers(R // 4, R)) if step % 7 == 6 else int(rng.integers(1, R // 10))
        batches.append(pool[(rng.zipf(1.2, n) - 1) % len(pool)
                            if step % 2 else rng.integers(0, len(pool), n)].tolist())
    want = _eviction_oracle(R, policy, batches)
    emb = CuckooEmbedding(R, 2, on_full=policy)
    for ids, rows in zip(batches, want):
        with torch.no_grad():
            emb(torch.tensor(ids))
        assert emb.lookup(torch.tensor(ids)).tolist() == rows


def test_lowest_rows_against_a_full_sort_including_a_threshold_that_misses():
    """embtab.nn._lowest_rows (the victim choice) against a lexsort of every eligible row; the
    periodic case puts every sampled row's score below the rest, so the sampled threshold keeps
    too few candidates and the fallback to all eligible rows must answer."""
    from embtab.nn import _lowest_rows

    rng = np.random.default_rng(3)
    cases = []
    for R in (50, 9_000, 100_000):
        for hi in (3, 1_000, 2**62):
            cases.append((rng.integers(0, hi, R), rng.random(R) < 0.9))
    R = 100_000
    stride = R // 8192
    periodic = np.where(np.arange(R) % stride == 0, 0, rng.integers(1, 5, R))
    cases.append((periodic, np.ones(R, bool)))
    for score, eligible in cases:
        n = int(eligible.sum())
        for k in sorted({1, 2, n // 50 + 1, n // 5 + 1, n // 3, n}):
            if not 1 <= k <= n:
                continue
            rows = np.flatnonzero(eligible)
            want = np.sort(rows[np.lexsort((rows, score[rows]))][:k])
            got = _lowest_rows(score, eligible, k, n)
            assert got.dtype == np.int64 and got.tolist() == want.tolist(), (len(score), k)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("free", ["evict", "expire", "load", "none"])
def test_a_second_backward_after_rows_were_freed_is_refused(fused, free):
    # retain_graph: the first backward releases the forward's rows; if the module then hands
    # rows to other IDs, a second backward through the old graph would train the new owners
    # (their gradient, or their fused step and state). Refused; without frees it runs.
    import embtab.optim as eo

    kw = dict(expire_after=1) if free == "expire" else dict(on_full="evict_lru")
    m = CuckooEmbedding(4, 2, optimizer=eo.Adagrad(lr=0.1) if fused else None, **kw)
    out = m(torch.arange(60, 64))
    l1, l2 = out.sum(), (out * 3).sum()
    l1.backward(retain_graph=True)
    if free == "evict":
        with torch.no_grad():
            m(torch.arange(70, 72))  # evicts two of the graph's rows
        assert int(m.num_evictions) == 2
    elif free == "expire":
        with torch.no_grad():
            m(torch.arange(70, 72))
            m(torch.arange(70, 72))  # the graph's IDs expire
        assert int(m.num_expired) > 0
    elif free == "load":
        m.load_state_dict(m.state_dict())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    grad = None if m.weight.grad is None else m.weight.grad.clone()
    if free == "none":
        l2.backward()  # nothing freed: the second backward runs as torch's would
        if fused:
            assert int(m.opt_step) == 2
        else:
            torch.testing.assert_close(m.weight.grad, grad * 4)
        return
    with pytest.raises(RuntimeError, match="second backward"):
        l2.backward()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    if grad is not None:
        assert torch.equal(m.weight.grad, grad)


def test_a_load_of_another_size_refuses_a_torch_optimizer_with_stale_state():
    # load_state_dict may change the number of rows (torch's modules cannot): the optimizer's
    # per-row state from before is then of the old size, and torch failed inside step() with
    # a size mismatch naming neither. Refused before the step; loading the optimizer's state
    # dict saved with the module (the documented way) trains on, also through a growth.
    def trained(n_ids):
        m = CuckooEmbedding(4, 2)
        opt = torch.optim.Adam(m.parameters(), lr=0.1)
        for i in range(3):
            opt.zero_grad()
            m(torch.arange(i * n_ids, (i + 1) * n_ids)).sum().backward()
            opt.step()
        return m, opt

    a, oa = trained(5)
    b, ob = trained(1)
    assert b.weight.shape != a.weight.shape
    b.load_state_dict(a.state_dict())
    ob.zero_grad()
    b(torch.arange(3)).sum().backward()
    before = (b.weight.detach().clone(), {k: v.clone() for k, v in ob.state[b.weight].items()})
    with pytest.raises(ValueError, match=r"weight was loaded with \d+ rows .*'exp_avg'"):
        ob.step()
    assert torch.equal(b.weight, before[0])
    for k, v in ob.state[b.weight].items():
        assert torch.equal(v, before[1][k]), k
    # the documented way: the optimizer's state dict too; a growth after it resizes the state
    ob.load_state_dict(oa.state_dict())
    ob.zero_grad()
    b(torch.arange(100, 140)).sum().backward()  # grows the table
    assert b.weight.shape[0] > a.weight.shape[0]
    ob.step()
    assert ob.state[b.weight]["exp_avg"].shape == b.weight.shape


def test_a_non_contiguous_weight_loaded_with_assign_trains():
    # load_state_dict(assign=True) kept a transposed checkpoint weight as it was: the fused
    # forward counted its step, then its backward refused the weight. It is made contiguous.
    import embtab.optim as eo

    a = CuckooEmbeddingBag(4, 3, mode="sum", optimizer=eo.SGD(lr=0.1))
    a(torch.arange(4), torch.tensor([0])).sum().backward()
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    sd["weight"] = sd["weight"].t().contiguous().t()
    assert not sd["weight"].is_contiguous()
    b = CuckooEmbeddingBag(4, 3, mode="sum", optimizer=eo.SGD(lr=0.1))
    b.load_state_dict(sd, assign=True)
    assert b.weight.is_contiguous() and torch.equal(b.weight, a.weight)
    for m in (a, b):
        m(torch.arange(2), torch.tensor([0])).sum().backward()
    torch.testing.assert_close(b.weight, a.weight)


@pytest.mark.parametrize("key", ["weight", "row_ids", "row_live"])
def test_a_sparse_state_dict_entry_is_refused_naming_it(key):
    # NotImplementedError from count_nonzero, or NumPy's TypeError, before
    a = CuckooEmbedding(4, 2)
    a(torch.arange(3))
    sd = a.state_dict()
    sd[key] = sd[key].to_sparse()
    b = CuckooEmbedding(4, 2)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(ValueError, match=f"{key} must be a dense \\(strided\\) tensor, got layout "
                                         "torch.sparse_coo"):
        b.load_state_dict(sd)
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())


def test_a_load_of_another_size_checks_only_per_row_optimizer_state():
    # Adafactor's col_var ([1, d]) is not per row: a correctly loaded Adafactor steps on
    src = CuckooEmbedding(8, 4, on_full="error")
    o = torch.optim.Adafactor(src.parameters(), lr=0.01)
    src(torch.tensor([1, 2, 3])).sum().backward()
    o.step()
    dst = CuckooEmbedding(32, 4, on_full="error")
    od = torch.optim.Adafactor(dst.parameters(), lr=0.01)
    dst.load_state_dict(src.state_dict())
    od.load_state_dict(o.state_dict())
    dst(torch.tensor([1, 2])).sum().backward()
    od.step()
    assert od.state[dst.weight]["col_var"].shape == (1, 4)


@pytest.mark.parametrize("make", [
    lambda: embtab.nn.HashedEmbedding(11, 3),
    lambda: embtab.nn.QREmbedding(40, 3, num_collisions=5),
    lambda: embtab.nn.DoubleHashedEmbedding(11, 3),
], ids=["hashed", "qr", "double"])
def test_hashed_modules_refuse_sparse_entries_and_copy_a_non_contiguous_assigned_weight(make):
    a = make()
    sd = a.state_dict()
    key = next(k for k in sd if k.endswith("weight"))
    bad = dict(sd)
    bad[key] = sd[key].to_sparse()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    with pytest.raises(ValueError, match=f"{key} must be a dense \\(strided\\) tensor"):
        a.load_state_dict(bad)
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())
    tr = {k: (v.t().contiguous().t() if k.endswith("weight") else v) for k, v in sd.items()}
    assert not tr[key].is_contiguous()
    b = make()
    b.load_state_dict(tr, assign=True)
    for k, v in b.state_dict().items():
        assert v.is_contiguous(), k
        assert torch.equal(v, sd[k]), k
