"""Fused optimizers (embtab.optim) against the unfused path: the same module + a torch optimizer."""

import numpy as np
import pytest
import torch

import embtab.optim as eo
from embtab import _core
from embtab.nn import (
    CuckooEmbedding,
    CuckooEmbeddingBag,
    CuckooEmbeddingBagCollection,
    EmbeddingBagConfig,
    HashedEmbedding,
    HashedEmbeddingBag,
)

pytestmark = pytest.mark.filterwarnings(
    # torch's sparse Adagrad / SparseAdam build sparse tensors without opting in or out of checks.
    "ignore:Sparse invariant checks are implicitly disabled:UserWarning"
)

D = 6
STEPS = 6

# name -> (fused optimizer, torch optimizer over params, torch needs sparse grads)
OPTS = {
    "sgd": (lambda: eo.SGD(lr=0.3), lambda p: torch.optim.SGD(p, lr=0.3), False),
    "adagrad": (
        lambda: eo.Adagrad(lr=0.2, lr_decay=0.01, initial_accumulator_value=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.2, lr_decay=0.01, initial_accumulator_value=0.1),
        False,
    ),
    "adam": (
        lambda: eo.Adam(lr=0.05, betas=(0.8, 0.9)),
        lambda p: torch.optim.SparseAdam(p, lr=0.05, betas=(0.8, 0.9)),
        True,
    ),
}

# name -> (module class, constructor kwargs, input kind)
SCENARIOS = {
    "grow": (CuckooEmbeddingBag, dict(num_embeddings=4, mode="sum"), "bag2d"),
    "evict_lru": (
        CuckooEmbeddingBag,
        dict(num_embeddings=16, mode="sum", on_full="evict_lru"),
        "bag2d",
    ),
    "evict_lfu": (
        CuckooEmbeddingBag,
        dict(num_embeddings=16, mode="sum", on_full="evict_lfu"),
        "bag2d",
    ),
    "min_count": (CuckooEmbeddingBag, dict(num_embeddings=8, mode="sum", min_count=2), "bag2d"),
    "padding_mean": (
        CuckooEmbeddingBag,
        dict(num_embeddings=8, mode="mean", padding_id=3),
        "bag1d",
    ),
    "psw": (CuckooEmbeddingBag, dict(num_embeddings=8, mode="sum", padding_id=3), "psw"),
    "last_offset": (
        CuckooEmbeddingBag,
        dict(num_embeddings=8, mode="sum", include_last_offset=True),
        "bag1d",
    ),
    "max": (CuckooEmbeddingBag, dict(num_embeddings=8, mode="max", padding_id=3), "bag1d"),
    # max_norm renormalises the rows read before pooling, in place, in every mode.
    "max_norm_max": (CuckooEmbeddingBag, dict(num_embeddings=8, mode="max", max_norm=0.5), "bag1d"),
    "max_norm_sum": (CuckooEmbeddingBag, dict(num_embeddings=8, mode="sum", max_norm=0.5), "bag2d"),
    # Reference: the sum over dim 1 of CuckooEmbedding (nn.Embedding's scale_grad_by_freq
    # divides by the row's count in the batch; torch 2.13's nn.EmbeddingBag uses other counts).
    "freq": (
        CuckooEmbeddingBag,
        dict(num_embeddings=8, mode="sum", scale_grad_by_freq=True),
        "bag2d",
    ),
    "embedding": (CuckooEmbedding, dict(num_embeddings=8, padding_id=3), "emb"),
    "embedding_freq": (CuckooEmbedding, dict(num_embeddings=8, scale_grad_by_freq=True), "emb"),
    "hashed_bag": (HashedEmbeddingBag, dict(num_embeddings=11, mode="mean", padding_id=3), "bag2d"),
    "hashed_emb": (HashedEmbedding, dict(num_embeddings=11), "emb"),
    "float64": (
        CuckooEmbeddingBag,
        dict(num_embeddings=8, mode="sum", dtype=torch.float64),
        "bag2d",
    ),
}


def make_batches(kind, steps=STEPS, seed=0, n_ids=40, dtype=torch.float32):
    """Seeded batches: (input, offsets, per_sample_weights, target) per step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, n_ids, (5, 3), generator=g)
        target = torch.randn(5, D, generator=g, dtype=dtype)
        if kind == "bag2d":
            out.append((ids, None, None, target))
        elif kind == "emb":
            out.append((ids, None, None, torch.randn(5, 3, D, generator=g, dtype=dtype)))
        else:
            flat = ids.reshape(-1)
            offsets = torch.tensor([0, 2, 2, 7, 12])  # bag 1 is empty
            psw = torch.rand(flat.shape, generator=g, dtype=dtype) if kind == "psw" else None
            out.append((flat, offsets, psw, target))
    return out


def forward(module, batch, last_offset=False):
    ids, offsets, psw, target = batch
    if psw is not None:
        psw = psw.clone().requires_grad_(True)
    if offsets is not None and last_offset:
        offsets = torch.cat([offsets, torch.tensor([ids.numel()])])
    if isinstance(module, (CuckooEmbedding, HashedEmbedding)) or (offsets is None and psw is None):
        out = module(ids)
    else:
        out = module(ids, offsets, psw)
    loss = (out * target).sum() + 0.5 * out.square().sum()
    return loss, psw


class _BagSum(torch.nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = emb

    def forward(self, ids):
        return self.emb(ids).sum(1)


def run_pair(opt_name, scen_name, steps=STEPS):
    make_fused, make_torch, torch_sparse = OPTS[opt_name]
    cls, kw, kind = SCENARIOS[scen_name]
    dtype = kw.get("dtype", torch.float32)
    batches = make_batches(kind, steps, dtype=dtype)
    fused = cls(embedding_dim=D, optimizer=make_fused(), **kw)
    # torch has no sparse gradient for mode="max" nor with scale_grad_by_freq: dense there.
    dense = kw.get("mode") == "max" or kw.get("scale_grad_by_freq", False)
    if scen_name == "freq":
        ref = CuckooEmbedding(
            embedding_dim=D, sparse=False, num_embeddings=8, scale_grad_by_freq=True
        )
        ref_call = ref
        ref = _BagSum(ref)
    else:
        ref = cls(embedding_dim=D, sparse=not dense, **kw)
        ref_call = ref
    topt = make_torch(list(ref.parameters()))
    last = kw.get("include_last_offset", False)
    for batch in batches:
        lf, pf = forward(fused, batch, last)
        lf.backward()
        topt.zero_grad()
        lr, pr = forward(ref, batch, last)
        lr.backward()
        if dense and torch_sparse:
            ref_call.weight.grad = ref_call.weight.grad.to_sparse(1)
        topt.step()
        torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
        if pf is not None:
            torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-5, atol=1e-5)
        assert fused.weight.grad is None
        yield fused, ref_call


@pytest.mark.parametrize("scen", list(SCENARIOS))
@pytest.mark.parametrize("opt", list(OPTS))
def test_fused_equals_unfused(opt, scen):
    n = 0
    for fused, ref in run_pair(opt, scen):
        assert fused.weight.shape == ref.weight.shape
        tol = 1e-12 if fused.weight.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(fused.weight.detach(), ref.weight.detach(), rtol=tol, atol=tol)
        n += 1
    assert n == STEPS
    if scen == "grow":
        assert fused.num_growths.item() >= 2
    if scen.startswith("evict"):
        assert fused.num_evictions.item() > 0
    if scen == "min_count":
        assert 0 < fused.num_ids < 40


def _touched_rows(module, batch):
    ids = batch[0].reshape(-1)
    rows = module.lookup(ids).reshape(-1)
    rows = rows[rows >= 0]
    if module.padding_id is not None:
        rows = rows[ids[module.lookup(ids).reshape(-1) >= 0] != module.padding_id]
    return torch.unique(rows)


@pytest.mark.parametrize(
    "hyper",
    [
        dict(momentum=0.9),
        dict(momentum=0.5, nesterov=True),
        dict(weight_decay=0.1),
        dict(momentum=0.9, weight_decay=0.05),
    ],
)
def test_sgd_momentum_is_torch_sgd_restricted_to_touched_rows(hyper):
    # Reference: for each batch, torch.optim.SGD steps a parameter made of the touched rows
    # only, starting from those rows' momentum buffers (the lazy semantics).
    batches = make_batches("bag2d", seed=3)
    fused = CuckooEmbeddingBag(64, D, mode="sum", optimizer=eo.SGD(lr=0.1, **hyper))
    ref = CuckooEmbeddingBag(64, D, mode="sum")
    buf = torch.zeros_like(ref.weight)
    for batch in batches:
        forward(fused, batch)[0].backward()
        ref.zero_grad()
        forward(ref, batch)[0].backward()
        rows = _touched_rows(ref, batch)
        p = torch.nn.Parameter(ref.weight.detach()[rows].clone())
        p.grad = ref.weight.grad[rows]
        o = torch.optim.SGD([p], lr=0.1, **hyper)
        if hyper.get("momentum", 0) > 0:
            o.state[p]["momentum_buffer"] = buf[rows].clone()
        o.step()
        with torch.no_grad():
            ref.weight[rows] = p
            if hyper.get("momentum", 0) > 0:
                buf[rows] = o.state[p]["momentum_buffer"]
        torch.testing.assert_close(fused.weight.detach(), ref.weight.detach(), rtol=1e-5, atol=1e-6)
    if hyper.get("momentum", 0) > 0:
        torch.testing.assert_close(fused.opt_momentum_buffer, buf.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "scen", ["grow", "evict_lru", "padding_mean", "psw", "embedding", "hashed_bag"]
)
def test_rowwise_adagrad_matches_its_definition(scen):
    # EXACT_ROWWISE_ADAGRAD: acc[r] += mean_j g[r, j]^2; w[r] -= lr * g[r] / (sqrt(acc[r]) + eps)
    # for each touched row r, g the row's summed gradient (from the unfused module's dense grad).
    lr, eps, init = 0.2, 1e-8, 0.05
    cls, kw, kind = SCENARIOS[scen]
    batches = make_batches(kind)
    fused = cls(
        embedding_dim=D,
        optimizer=eo.RowWiseAdagrad(lr=lr, eps=eps, initial_accumulator_value=init),
        **kw,
    )
    ref = cls(embedding_dim=D, **kw)
    acc = torch.full((ref.weight.shape[0],), init)
    for batch in batches:
        forward(fused, batch)[0].backward()
        ref.zero_grad()
        forward(ref, batch)[0].backward()
        if acc.shape[0] != ref.weight.shape[0]:  # grown: new rows start fresh
            acc = torch.cat([acc[:-1], torch.full((ref.weight.shape[0] - acc.shape[0] + 1,), init)])
        new = np.concatenate(ref._pending_rows) if getattr(ref, "_pending_rows", None) else []
        acc[torch.as_tensor(new, dtype=torch.int64)] = init  # rows handed to new IDs
        if hasattr(ref, "_pending_rows"):
            ref._pending_rows.clear()
        rows = (
            _touched_rows(ref, batch)
            if isinstance(ref, (CuckooEmbedding, CuckooEmbeddingBag))
            else (torch.unique(ref.lookup(batch[0]).reshape(-1)))
        )
        rows = rows[rows != ref.num_embeddings]
        g = ref.weight.grad[rows]
        acc[rows] += (g * g).mean(1)
        with torch.no_grad():
            ref.weight[rows] -= lr * g / (acc[rows].sqrt() + eps)[:, None]
        torch.testing.assert_close(fused.weight.detach(), ref.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.opt_row_sum, acc, rtol=1e-5, atol=1e-7)
    assert fused.opt_row_sum.shape == (fused.weight.shape[0],)


def test_rowwise_adagrad_hand_worked():
    # One row, d = 2, g = (3, 4): acc = 0 + (9 + 16) / 2 = 12.5; w -= 0.5 * g / (sqrt(12.5) + 0)
    emb = HashedEmbedding(1, 2, init="zeros", optimizer=eo.RowWiseAdagrad(lr=0.5, eps=1e-30))
    (emb(torch.tensor([9])) * torch.tensor([[3.0, 4.0]])).sum().backward()
    assert emb.opt_row_sum[0].item() == pytest.approx(12.5)
    expect = -0.5 * torch.tensor([3.0, 4.0]) / np.sqrt(12.5)
    torch.testing.assert_close(emb.weight.detach()[0], expect)


@pytest.mark.parametrize("opt", ["sgd_momentum", "adagrad", "rowwise", "adam"])
def test_growth_is_invisible_to_fused_state(opt):
    make = {
        "sgd_momentum": lambda: eo.SGD(lr=0.1, momentum=0.9),
        "adagrad": lambda: eo.Adagrad(lr=0.1),
        "rowwise": lambda: eo.RowWiseAdagrad(lr=0.1),
        "adam": lambda: eo.Adam(lr=0.01),
    }[opt]
    batches = make_batches("bag2d")
    grown = CuckooEmbeddingBag(4, D, mode="sum", optimizer=make())
    sized = CuckooEmbeddingBag(64, D, mode="sum", optimizer=make())
    for batch in batches:
        forward(grown, batch)[0].backward()
        forward(sized, batch)[0].backward()
    assert grown.num_growths.item() >= 2
    n = int(grown.num_rows)
    assert torch.equal(grown.weight.detach()[:n], sized.weight.detach()[:n])
    for name, b in grown.named_buffers():
        if name.startswith("opt_") and name != "opt_step":
            assert torch.equal(b[:n], getattr(sized, name)[:n])


def test_evicted_rows_get_fresh_state():
    emb = CuckooEmbedding(
        2, 3, on_full="evict_lru", optimizer=eo.Adagrad(lr=0.1, initial_accumulator_value=0.5)
    )
    emb(torch.tensor([10, 11])).sum().backward()
    assert torch.all(emb.opt_sum[:2] > 0.5)
    emb(torch.tensor([12])).sum()  # forward only: evicts ID 10 (least recently used, lowest row)
    assert emb.num_evictions.item() == 1
    row = emb.lookup(torch.tensor([12])).item()
    assert torch.all(emb.opt_sum[row] == 0.5) and torch.all(emb.opt_sum[1 - row] > 0.5)


@pytest.mark.parametrize("opt", ["sgd", "rowwise", "adam"])
def test_thread_count_gives_identical_bits(opt):
    make = {
        "sgd": lambda: eo.SGD(lr=0.1, momentum=0.9),
        "rowwise": lambda: eo.RowWiseAdagrad(lr=0.1),
        "adam": lambda: eo.Adam(lr=0.01),
    }[opt]
    g = torch.Generator().manual_seed(5)
    # Zipf-like IDs: many repeats, > 1000 distinct rows over every partition, several chunks.
    batches = [
        (torch.randint(0, 5000, (4096,), generator=g) ** 2 // 5000, torch.arange(0, 4096, 8))
        for _ in range(3)
    ]
    weights = []
    for threads in (1, 2, 3):
        emb = CuckooEmbeddingBag(8192, 16, mode="sum", num_threads=threads, optimizer=make())
        for ids, off in batches:
            out = emb(ids, off)
            (out * torch.linspace(-1, 1, 16)).sum().backward()
        weights.append(emb.weight.detach().clone())
    assert len(torch.unique(emb.lookup(batches[0][0]))) > 1000
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])


@pytest.mark.parametrize(
    "outer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.1),
    ],
)
def test_outer_optimizer_does_not_update_weight_twice(outer):
    torch.manual_seed(0)
    emb = CuckooEmbeddingBag(16, 4, mode="sum", optimizer=eo.SGD(lr=0.1))
    head = torch.nn.Linear(4, 1)
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    opt = outer(model.parameters())  # the natural way: every parameter, the table's included
    for step in range(3):
        opt.zero_grad()
        ids = torch.tensor([[1, 2], [3, 1]]) + step
        out = emb(ids)
        # the fused step is exactly lr * the gradient of the touched rows; nothing else moves
        expect = emb.weight.detach().clone()
        g = head.weight.detach().reshape(-1)
        for i in ids.reshape(-1).tolist():
            expect[emb.lookup(torch.tensor([i])).item()] -= 0.1 * g
        head(out).sum().backward()
        assert emb.weight.grad is None
        torch.testing.assert_close(emb.weight.detach(), expect)
        after = emb.weight.detach().clone()
        h = head.weight.detach().clone()
        opt.step()
        assert torch.equal(emb.weight.detach(), after)  # the outer step left the table alone
        assert not torch.equal(head.weight.detach(), h)


def test_learning_rate_setter_and_scheduler():
    batches = make_batches("bag2d")
    fused_opt = eo.Adagrad(lr=0.5)
    fused = CuckooEmbeddingBag(64, D, mode="sum", optimizer=fused_opt)
    ref = CuckooEmbeddingBag(64, D, mode="sum", sparse=True)
    topt = torch.optim.Adagrad(ref.parameters(), lr=0.5)
    s_f = torch.optim.lr_scheduler.StepLR(fused_opt, step_size=2, gamma=0.5)
    s_r = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    for i, batch in enumerate(batches):
        if i == 4:
            fused_opt.lr = 0.01
            topt.param_groups[0]["lr"] = 0.01
        forward(fused, batch)[0].backward()
        fused_opt.step()
        s_f.step()
        topt.zero_grad()
        forward(ref, batch)[0].backward()
        topt.step()
        s_r.step()
        torch.testing.assert_close(fused.weight.detach(), ref.weight.detach(), rtol=1e-5, atol=1e-6)
    assert fused_opt.lr == topt.param_groups[0]["lr"] != 0.5


@pytest.mark.parametrize("make,key,value,err", [
    (lambda: eo.SGD(lr=0.1, momentum=0.5), "lr", -1.0, ValueError),
    (lambda: eo.SGD(lr=0.1, momentum=0.5), "momentum", 1.0, ValueError),
    (lambda: eo.SGD(lr=0.1), "weight_decay", float("nan"), ValueError),
    (lambda: eo.SGD(lr=0.1), "nesterov", True, ValueError),      # needs momentum > 0
    (lambda: eo.SGD(lr=0.1, momentum=0.5), "nesterov", 1, TypeError),
    (lambda: eo.Adagrad(), "lr_decay", -2.0, ValueError),
    (lambda: eo.Adagrad(), "eps", 0.0, ValueError),
    (lambda: eo.Adagrad(), "initial_accumulator_value", -1.0, ValueError),
    (lambda: eo.RowWiseAdagrad(), "eps", 0.0, ValueError),       # wrote NaN before
    (lambda: eo.RowWiseAdagrad(), "lr", "0.1", TypeError),
    (lambda: eo.Adam(), "betas", (1.0, 0.999), ValueError),      # ZeroDivisionError before
    (lambda: eo.Adam(), "betas", [0.9], TypeError),
    (lambda: eo.Adam(), "lr", float("inf"), ValueError),
])
def test_hyperparameters_written_into_param_groups_are_checked_before_any_change(make, key, value, err):
    # The constructor's checks hold for values a scheduler or the user writes later; the
    # training forward refuses them before it inserts an ID, so nothing changes.
    opt = make()
    mods = [CuckooEmbeddingBag(16, D, mode="sum", optimizer=opt),
            CuckooEmbeddingBagCollection(
                [EmbeddingBagConfig(num_embeddings=16, embedding_dim=D, name="t",
                                    feature_names=["a"])], optimizer=opt)]
    calls = [lambda m, ids: m(ids, torch.tensor([0])),
             lambda m, ids: m({"a": (ids, torch.tensor([0]))}, concat=True)]
    for m, call in zip(mods, calls):
        call(m, torch.tensor([1, 2])).sum().backward()
    opt.param_groups[0][key] = value
    name = f"param_groups\\[0\\]\\['{key}'\\]"
    for m, call in zip(mods, calls):
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(err, match=name):
            call(m, torch.tensor([1, 3])).sum().backward()
        after = m.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), key
    # a value the constructor takes is taken again, and training goes on
    opt.param_groups[0][key] = make().param_groups[0][key]
    for m, call in zip(mods, calls):
        call(m, torch.tensor([1, 3])).sum().backward()


@pytest.mark.parametrize("new_ids", [[5, 6], [5, 6, 7, 8, 9]], ids=["insert", "growth"])
@pytest.mark.parametrize("how", ["no_grad", "frozen"])
def test_bad_param_groups_refused_before_a_forward_that_records_no_step_inserts(how, new_ids):
    # A forward that records no step (torch.no_grad(), or a weight that needs no gradient)
    # still inserts new IDs and gives their rows fresh optimizer state, which reads
    # param_groups: a bad value is refused before the table changes (it was refused after the
    # insert, which left the new IDs in the table).
    opt = eo.Adagrad(lr=0.1)
    mods = [CuckooEmbeddingBag(4, D, mode="sum", optimizer=opt, num_threads=1),
            CuckooEmbeddingBagCollection(
                [EmbeddingBagConfig(num_embeddings=4, embedding_dim=D, name="t",
                                    feature_names=["a"])], optimizer=opt, num_threads=1)]
    calls = [lambda m, ids: m(ids, torch.tensor([0])),
             lambda m, ids: m({"a": (ids, torch.tensor([0]))}, concat=True)]
    opt.param_groups[0]["lr"] = -1.0
    for m, call in zip(mods, calls):
        if how == "frozen":
            for p in m.parameters():
                p.requires_grad_(False)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with torch.set_grad_enabled(how != "no_grad"):
            with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
                call(m, torch.tensor(new_ids))  # into the 4 free rows, or more: a growth
        after = m.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    opt.param_groups[0]["lr"] = 0.1
    for m, call in zip(mods, calls):
        with torch.set_grad_enabled(how != "no_grad"):
            call(m, torch.tensor(new_ids))
        stats = m.stats()
        assert stats.get("t", stats)["num_ids"] == len(new_ids)   # (a collection's: by table)


def test_collection_refuses_bad_param_groups_before_any_table_counts_a_step():
    # A collection under no_grad whose first table holds all of its batch's IDs and whose
    # second table would insert: the second table's check (which its insert needs) is made
    # before the first counts its step, so nothing changes.
    opt = eo.SGD(lr=0.1)
    coll = CuckooEmbeddingBagCollection(
        [EmbeddingBagConfig(num_embeddings=4, embedding_dim=D, name="a", feature_names=["a"]),
         EmbeddingBagConfig(num_embeddings=4, embedding_dim=D, name="b", feature_names=["b"])],
        optimizer=opt, num_threads=1)
    feats = {"a": (torch.tensor([1, 2]), torch.tensor([0])),
             "b": (torch.tensor([1]), torch.tensor([0]))}
    coll(feats, concat=True).sum().backward()
    opt.param_groups[0]["lr"] = -1.0
    before = {k: v.clone() for k, v in coll.state_dict().items()}
    with torch.no_grad(), pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        coll({"a": feats["a"], "b": (torch.tensor([7]), torch.tensor([0]))})
    after = coll.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        coll(feats)  # every ID known: no insert, nothing reads param_groups
    assert int(coll.embedding_bags["a"].num_steps) == 2


def test_state_dict_round_trip_continues_training(tmp_path):
    batches = make_batches("bag2d", steps=8)
    a = CuckooEmbeddingBag(4, D, mode="sum", optimizer=eo.Adam(lr=0.01))
    for batch in batches[:4]:
        forward(a, batch)[0].backward()
    torch.save(a.state_dict(), tmp_path / "m.pt")
    assert {"opt_step", "opt_exp_avg", "opt_exp_avg_sq"} <= set(a.state_dict())
    b = CuckooEmbeddingBag(4, D, mode="sum", optimizer=eo.Adam(lr=0.01))
    b.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert int(b.opt_step) == 4 and b.opt_exp_avg.shape == b.weight.shape
    for batch in batches[4:]:
        forward(a, batch)[0].backward()
        forward(b, batch)[0].backward()
    assert torch.equal(a.weight.detach(), b.weight.detach())
    assert torch.equal(a.opt_exp_avg_sq, b.opt_exp_avg_sq)


def test_eval_and_no_grad_do_not_step():
    emb = CuckooEmbedding(8, 3, optimizer=eo.SGD(lr=1.0))
    emb(torch.tensor([1, 2]))
    w = emb.weight.detach().clone()
    with torch.no_grad():
        emb(torch.tensor([1, 2])).sum()
    emb.eval()
    out = emb(torch.tensor([1, 2]))
    assert out.grad_fn is not None and int(emb.opt_step) == 0
    assert torch.equal(emb.weight.detach(), w)


def test_state_bytes_per_row():
    assert eo.SGD().state_bytes_per_row(64) == 0
    assert eo.SGD(momentum=0.9).state_bytes_per_row(64) == 256
    assert eo.Adagrad().state_bytes_per_row(64) == 256
    assert eo.RowWiseAdagrad().state_bytes_per_row(64) == 4
    assert eo.Adam().state_bytes_per_row(64) == 512
    assert eo.RowWiseAdagrad().state_bytes_per_row(64, torch.float64) == 8


# bad input ////////////////////////////////////////////////////////////////////////////////


def test_module_refuses_a_torch_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(TypeError, match="optimizer must be None or an embtab.optim"):
        CuckooEmbedding(8, 3, optimizer=torch.optim.SGD([p], lr=0.1))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: eo.SGD(lr=-1), "lr must be"),
        (lambda: eo.SGD(lr=float("nan")), "lr must be"),
        (lambda: eo.SGD(momentum=1.0), "momentum must be"),
        (lambda: eo.SGD(nesterov=True), "nesterov=True needs momentum"),
        (lambda: eo.Adagrad(eps=0), "eps must be"),
        (
            lambda: eo.RowWiseAdagrad(initial_accumulator_value=-1),
            "initial_accumulator_value must be",
        ),
        (lambda: eo.Adam(betas=(0.9, 1.0)), r"betas\[1\] must be"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types():
    with pytest.raises(TypeError, match="lr must be a number"):
        eo.SGD(lr="0.1")
    with pytest.raises(TypeError, match="betas must be a pair"):
        eo.Adam(betas=0.9)
    with pytest.raises(TypeError, match="float32 or float64 weight"):
        CuckooEmbedding(8, 3, dtype=torch.float16, optimizer=eo.SGD())
    opt = eo.SGD()
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = -0.5
    assert opt.lr == 0.01


def _odd(a: np.ndarray) -> np.ndarray:
    """A writeable copy of ``a`` one byte past an aligned address (C-contiguous, not aligned)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    v = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    v[...] = a
    assert not v.flags.aligned and v.flags.c_contiguous and v.flags.writeable
    return v


def _step_args(**over):
    w = np.zeros((5, 3), np.float32)
    kw = dict(
        weight=w,
        rows=np.array([0, 1, 1], np.int64),
        grad=np.ones((3, 3), np.float32),
        offsets=None,
        per_sample_weights=None,
        mean=False,
        scale_grad_by_freq=False,
        skip_row=4,
        state1=np.zeros((5, 3), np.float32),
        state2=None,
        kind="adagrad",
        lr=0.1,
        eps=1e-10,
    )
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    "over, exc, match",
    [
        (
            dict(grad=np.ones((3, 3), np.float64)),
            TypeError,
            "grad must have the weight's dtype float32",
        ),
        (
            dict(grad=np.ones((2, 3), np.float32)),
            ValueError,
            r"one row per entry of rows \(3\), got shape \(2, 3\)",
        ),
        (dict(rows=np.array([0, 1, 5], np.int64)), IndexError, r"rows\[2\] = 5 is outside"),
        (dict(rows=np.array([0, 1, 1], np.int32)), TypeError, "rows must have dtype int64"),
        (dict(state1=np.zeros((4, 3), np.float32)), ValueError, r"state1 must have shape \(5, 3\)"),
        (dict(state1=None), TypeError, "state1 must be a numpy.ndarray"),
        (dict(kind="lamb"), ValueError, "kind must be"),
        (
            dict(offsets=np.array([0, 2], np.int64)),
            ValueError,
            r"offsets must have grad.shape\[0\] \+ 1 = 4",
        ),
        (dict(num_threads=-1), ValueError, "num_threads must be >= 0"),
        (
            dict(weight=np.zeros((5, 3), np.float16)),
            TypeError,
            "weight must have dtype float32 or float64",
        ),
        # arrays at an odd byte offset: reading them through T* is undefined behaviour (the
        # sanitizer build aborted); the step refuses those it writes (and copies those it reads:
        # test_core_step_copies_unaligned_inputs)
        (dict(weight=_odd(np.zeros((5, 3), np.float32))), ValueError,
         "weight is not aligned to its 4-byte elements"),
        (dict(state1=_odd(np.zeros((5, 3), np.float32))), ValueError, "state1 is not aligned"),
        (dict(weight=np.zeros((5, 0), np.float32), grad=np.ones((3, 0), np.float32),
              state1=np.zeros((5, 0), np.float32)), ValueError,
         r"weight must have at least one column, got shape \(5, 0\)"),
    ],
)
def test_core_bad_input_leaves_state_unchanged(over, exc, match):
    kw = _step_args(**over)
    before = kw["weight"].copy()
    with pytest.raises(exc, match=match):
        _core.fused_step(**kw)
    assert np.array_equal(kw["weight"], before)
    if isinstance(kw["state1"], np.ndarray):
        assert not kw["state1"].any()


def test_core_step_copies_unaligned_inputs():
    # rows, grad, offsets and per-sample weights at an odd byte offset give the aligned ones'
    # results (the step reads a copy)
    rows = np.array([0, 4, 1, 0, 2], np.int64)
    grad = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    offsets = np.array([0, 2, 5], np.int64)
    psw = np.array([0.5, 1.0, 2.0, -1.0, 0.25], np.float32)
    out = []
    for make in (np.array, _odd):
        kw = _step_args(rows=make(rows), grad=make(grad), offsets=make(offsets),
                        per_sample_weights=make(psw))
        _core.fused_step(**kw)
        out.append((kw["weight"].copy(), kw["state1"].copy()))
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])
    assert out[0][0].any()


def test_core_step_counts_distinct_rows_and_skips_zero_row():
    kw = _step_args(rows=np.array([0, 4, 1, 0], np.int64), grad=np.ones((4, 3), np.float32))
    assert _core.fused_step(**kw) == 2
    s = kw["state1"]
    assert np.array_equal(s[:, 0], [4.0, 1.0, 0.0, 0.0, 0.0])  # row 0 twice: (1 + 1)^2 = 4
    assert not kw["weight"][4].any()


def test_core_reads_strided_gradients_in_place():
    # A column slice of a wider gradient, a row broadcast over all bags (row stride 0) and one
    # value broadcast over everything (strides (0, 0), a sum() loss's gradient) must give the
    # same bits as the packed copy; rows that are not contiguous are refused.
    rng = np.random.default_rng(10)
    rows = rng.integers(0, 40, 300).astype(np.int64)
    offsets = np.arange(0, 301, 3, dtype=np.int64)  # 100 bags of 3
    wide = rng.standard_normal((100, 11)).astype(np.float32)
    one = rng.standard_normal(4).astype(np.float32)
    for grad in (wide[:, 3:7], np.broadcast_to(one, (100, 4)),
                 np.broadcast_to(np.float32(0.7), (100, 4))):
        outs = []
        for g in (grad, np.ascontiguousarray(grad)):
            w = np.ones((41, 4), np.float32)
            s = np.zeros(41, np.float32)
            _core.fused_step(w, rows, g, offsets, None, False, False, 40, s, None,
                             "rowwise_adagrad", 0.1, 1e-8)
            outs.append((w, s))
        assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    w = np.ones((41, 4), np.float32)
    with pytest.raises(ValueError, match="grad's rows must be contiguous"):
        _core.fused_step(w, rows, wide[:, ::2][:, :4], offsets, None, False, False, 40,
                         np.zeros(41, np.float32), None, "rowwise_adagrad", 0.1, 1e-8)
    assert (w == 1).all()
    g = torch.ones(5, 3).expand(2, 5, 3)[0]  # broadcast rows: read as one row, no copy of 5
    arr = eo.grad_rows(torch.ones(1, 3).expand(5, 3), 3)
    assert arr.strides == (0, 4) and arr.shape == (5, 3)
    assert eo.grad_rows(torch.arange(12.0).reshape(2, 6)[:, 2:5], 3).strides == (24, 4)
    assert eo.grad_rows(torch.zeros(()).expand(4, 3), 3).strides == (0, 0)  # the core reads it
    assert np.array_equal(eo.grad_rows(g, 3), np.ones((5, 3), np.float32))


# several tables in one native call (_core.fused_steps) ////////////////////////////////////////

_KINDS = {  # kind -> (state1 per row is a vector, state2 needed, resolved hyperparameters)
    "sgd": (True, False, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adagrad": (True, False, dict(lr=0.1, eps=1e-8)),
    "rowwise_adagrad": (False, False, dict(lr=0.1, eps=1e-8)),
    "adam": (True, True, dict(lr=0.01, eps=1e-8, beta1=0.9, beta2=0.999)),
}


def _job_args(rng, kind, num_rows, d, n, bags, dtype):
    vec, two, hyper = _KINDS[kind]
    kw = dict(eps=0.0, momentum=0.0, nesterov=False, weight_decay=0.0, beta1=0.9, beta2=0.999)
    kw.update(hyper)
    rows = rng.integers(0, num_rows + 1, n).astype(np.int64)  # num_rows: the skipped zero row
    offsets = np.sort(rng.integers(0, n + 1, bags - 1))
    offsets = np.concatenate([[0], offsets, [n]]).astype(np.int64)
    return [
        rng.standard_normal((num_rows + 1, d)).astype(dtype), rows,
        rng.standard_normal((bags, d)).astype(dtype), offsets,
        rng.random(n).astype(dtype), bool(rng.integers(2)), False, num_rows,
        np.abs(rng.standard_normal((num_rows + 1, d) if vec else (num_rows + 1,))).astype(dtype),
        np.zeros((num_rows + 1, d), dtype) if two else None, kind, kw["lr"], kw["eps"],
        kw["momentum"], kw["nesterov"], kw["weight_decay"], kw["beta1"], kw["beta2"],
    ]


def _copy_job(job):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in job]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_steps_equals_one_fused_step_per_table(threads):
    # Oracle: the same jobs run one by one through fused_step; every weight and state must be
    # the same bits, whatever the thread count (jobs of every optimizer, dtype and size).
    rng = np.random.default_rng(7)
    jobs = [_job_args(rng, kind, int(rng.integers(5, 300)), int(rng.integers(1, 20)),
                      int(rng.integers(0, 2000)), int(rng.integers(1, 50)), dtype)
            for kind in _KINDS for dtype in (np.float32, np.float64)]
    ref = [_copy_job(j) for j in jobs]
    total = 0
    for j in ref:
        total += _core.fused_step(*j, num_threads=1)
    assert _core.fused_steps([tuple(j) for j in jobs], num_threads=threads) == total
    for j, r in zip(jobs, ref):
        for a, b in zip(j, r):
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, b)


def test_fused_steps_bad_job_changes_nothing():
    rng = np.random.default_rng(8)
    jobs = [_job_args(rng, "adagrad", 50, 4, 300, 20, np.float32) for _ in range(3)]
    before = [_copy_job(j) for j in jobs]
    bad = _copy_job(jobs[2])
    bad[1] = bad[1].copy()
    bad[1][17] = 51  # past the zero row (50)
    jobs_bad = [tuple(jobs[0]), tuple(jobs[1]), tuple(bad)]
    with pytest.raises(IndexError, match=r"job 2: rows\[17\] = 51 is outside"):
        _core.fused_steps(jobs_bad, num_threads=2)
    shared = [tuple(jobs[0]), tuple([jobs[0][0]] + list(jobs[1][1:]))]  # job 1 on job 0's weight
    with pytest.raises(ValueError, match="jobs 0 and 1 share memory that one of them writes"):
        _core.fused_steps(shared, num_threads=2)
    # job 1 reads (as its gradient) a slice of the weight job 0 writes, while job 0 runs
    reads = list(jobs[1])
    reads[2] = jobs[0][0][1 : 1 + len(reads[2]), : reads[2].shape[1]]
    with pytest.raises(ValueError, match="jobs 0 and 1 share memory that one of them writes"):
        _core.fused_steps([tuple(jobs[0]), tuple(reads)], num_threads=2)
    with pytest.raises(TypeError, match=r"jobs\[1\] must be a tuple of fused_step's first 18"):
        _core.fused_steps([tuple(jobs[0]), tuple(jobs[1][:5])])
    with pytest.raises(TypeError, match="grad must have the weight's dtype"):
        wrong = list(jobs[1])
        wrong[2] = wrong[2].astype(np.float64)
        _core.fused_steps([tuple(jobs[0]), tuple(wrong)])
    for j, b in zip(jobs, before):
        for x, y in zip(j, b):
            if isinstance(x, np.ndarray):
                assert np.array_equal(x, y)
    assert _core.fused_steps([], num_threads=2) == 0


@pytest.mark.parametrize("name", ["lr", "eps", "momentum", "weight_decay", "beta1", "beta2"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_fused_step_refuses_non_finite_hyperparameters(name, value):
    rng = np.random.default_rng(9)
    job = _job_args(rng, "adam", 30, 4, 100, 10, np.float32)
    before = _copy_job(job)
    at = {"lr": 11, "eps": 12, "momentum": 13, "weight_decay": 15, "beta1": 16, "beta2": 17}[name]
    job[at] = value
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        _core.fused_step(*job, num_threads=1)
    for x, y in zip(job, before):
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y)


def test_fused_step_refuses_arrays_sharing_the_written_memory():
    # Oracle: the step writes weight, state1 and state2 in place; an alias of any of them among
    # its arrays would make the update read what it has just written. Each is refused with the
    # two names and nothing written; disjoint slices of one buffer are fine.
    rng = np.random.default_rng(10)
    job = _job_args(rng, "adam", 30, 4, 100, 10, np.float32)
    w, s1, s2 = job[0], job[8], job[9]
    cases = {
        ("state1", "weight"): {8: w},
        ("state2", "state1"): {9: s1},
        ("weight", "grad"): {2: w[:10]},
        ("weight", "per_sample_weights"): {4: w.reshape(-1)[:100]},
        ("state2", "grad"): {2: s2[5:15]},
    }
    for (a, b), change in cases.items():
        bad = list(job)
        for k, v in change.items():
            bad[k] = v
        before = [x.copy() if isinstance(x, np.ndarray) else x for x in bad]
        names = f"({a} shares memory with {b}|{b} shares memory with {a})"
        with pytest.raises(ValueError, match=names):
            _core.fused_step(*bad, num_threads=1)
        for x, y in zip(bad, before):
            if isinstance(x, np.ndarray):
                assert np.array_equal(x, y)
    # state1 and state2 as the two halves of one buffer: apart, so accepted
    both = np.zeros((2, 31, 4), np.float32)
    ok = list(job)
    ok[8], ok[9] = both[0], both[1]
    _core.fused_step(*ok, num_threads=1)


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad"])
def test_kernel_matches_fbgemm_when_importable(kind):
    # FBGEMM's CPU TBE (fbgemm-gpu-cpu, an optional benchmark dependency) fuses the same three
    # optimizers; the C++ step on the same indices and output gradient gives the same rows.
    tbe_mod = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_training")
    common = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_common")
    cfg = pytest.importorskip("fbgemm_gpu.split_embedding_configs")
    n, d, lr, eps = 50, 8, 0.1, 1e-8
    opt = {
        "sgd": cfg.EmbOptimType.EXACT_SGD,
        "adagrad": cfg.EmbOptimType.EXACT_ADAGRAD,
        "rowwise_adagrad": cfg.EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    }[kind]
    tbe = tbe_mod.SplitTableBatchedEmbeddingBagsCodegen(
        [(n, d, common.EmbeddingLocation.HOST, tbe_mod.ComputeDevice.CPU)],
        optimizer=opt,
        learning_rate=lr,
        eps=eps,
        pooling_mode=common.PoolingMode.SUM,
        weights_precision=cfg.SparseType.FP32,
        device="cpu",
    )
    w = tbe.split_embedding_weights()[0].detach().clone().numpy()
    w = np.vstack([w, np.zeros((1, d), np.float32)])  # + an unused zero row, as the modules have
    state = {
        "sgd": None,
        "adagrad": np.zeros((n + 1, d), np.float32),
        "rowwise_adagrad": np.zeros(n + 1, np.float32),
    }[kind]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(0, n, (40,), generator=g)
        csr = torch.arange(0, 41, 5)
        target = torch.randn(8, d, generator=g)
        (tbe(idx, csr) * target).sum().backward()
        _core.fused_step(
            w,
            idx.numpy(),
            target.numpy(),
            csr.numpy(),
            None,
            False,
            False,
            n,
            state,
            None,
            kind,
            lr,
            eps,
        )
    np.testing.assert_allclose(
        w[:n], tbe.split_embedding_weights()[0].detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_sharded_bag_refuses_max_with_a_fused_optimizer():
    from embtab.distributed import ShardedCuckooEmbeddingBag

    with pytest.raises(ValueError, match="mode='max' with a fused optimizer"):
        ShardedCuckooEmbeddingBag(8, 4, mode="max", optimizer=eo.Adam())  # before the group is looked at


@pytest.mark.parametrize("bag", [False, True])
def test_an_empty_batch_counts_a_fused_step_and_changes_no_row(bag):
    """A backward with no IDs (a shard of a sharded module can get none) is a step: opt_step
    counts it (Adam's bias correction stays in step with the other ranks), no row moves."""
    cls = CuckooEmbeddingBag if bag else CuckooEmbedding
    m = cls(4, 3, optimizer=eo.Adam(lr=0.1), **({"mode": "sum"} if bag else {}))
    m(torch.tensor([[1, 2]]) if bag else torch.tensor([1, 2])).sum().backward()
    w = m.weight.detach().clone()
    # no ID at all (no bag, for the bag module): a gradient of 0 rows
    out = m(torch.empty(0, 2, dtype=torch.int64)) if bag else m(torch.empty(0, dtype=torch.int64))
    assert out.shape == (0, 3)
    out.sum().backward()
    assert int(m.opt_step) == 2
    assert torch.equal(m.weight.detach(), w)


def test_sgd_momentum_is_fixed_at_construction_for_its_state():
    """A scheduler that cycles momentum (OneCycleLR) works on an SGD built with momentum > 0;
    on one built with momentum=0 (no momentum buffer) the training forward says why it cannot,
    before it changes anything (the backward did, after the forward had inserted the IDs)."""
    emb = CuckooEmbedding(4, 3, optimizer=eo.SGD(lr=0.1, momentum=0.9))
    sched = torch.optim.lr_scheduler.OneCycleLR(emb.optimizer, max_lr=0.1, total_steps=10)
    for _ in range(3):
        emb(torch.tensor([1, 2])).sum().backward()
        emb.optimizer.step()
        sched.step()
    assert emb.optimizer.param_groups[0]["momentum"] != 0.9 and emb.opt_momentum_buffer.abs().sum() > 0
    emb = CuckooEmbedding(4, 3, optimizer=eo.SGD(lr=0.1))
    torch.optim.lr_scheduler.OneCycleLR(emb.optimizer, max_lr=0.1, total_steps=10)
    before = {k: v.clone() for k, v in emb.state_dict().items()}
    with pytest.raises(ValueError, match="built with momentum=0"):
        emb(torch.tensor([1, 2]))
    assert all(torch.equal(v, emb.state_dict()[k]) for k, v in before.items())
    assert emb.num_ids == 0 and int(emb.num_steps) == 0 and int(emb.opt_step) == 0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_module_with_fused_sgd_survives_deepcopy_pickle_and_torch_save(momentum):
    """SGD's construction-time choice of a momentum buffer travels with copies of the module
    (torch.optim.Optimizer's own pickling keeps only defaults, state and param_groups), and the
    copies train as the original does; loading another momentum into the optimizer keeps it."""
    import copy
    import io
    import pickle

    emb = CuckooEmbedding(4, 3, optimizer=eo.SGD(lr=0.1, momentum=momentum))
    emb(torch.tensor([1, 2])).sum().backward()
    buf = io.BytesIO()
    torch.save(emb, buf)
    copies = [copy.deepcopy(emb), pickle.loads(pickle.dumps(emb)),
              torch.load(io.BytesIO(buf.getvalue()), weights_only=False)]
    emb(torch.tensor([2, 3])).sum().backward()
    for c in copies:
        c(torch.tensor([2, 3])).sum().backward()
        assert torch.equal(c.weight, emb.weight) and int(c.opt_step) == 2
    opt = eo.SGD(lr=0.1, momentum=momentum)
    opt.load_state_dict(eo.SGD(lr=0.1, momentum=0.9 - momentum).state_dict())
    assert [n for n, _, _ in opt._states()] == (["momentum_buffer"] if momentum else [])


def test_backward_of_a_lookup_from_before_a_growth_raises_without_a_wrong_update():
    emb = CuckooEmbeddingBag(2, 3, mode="sum", padding_id=0, optimizer=eo.SGD(lr=1.0))
    a = emb(torch.tensor([[1, 0]]))  # ID 1 -> row 0; the padding reads the zero row 2
    b = emb(torch.tensor([[3, 4]]))  # grows to 4 rows: row 2 now belongs to ID 4
    w = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="grew"):
        (a.sum() + b.sum()).backward()
    # a's lookup stepped nothing: ID 1's row is as it was (b's lookup, built after the growth,
    # may have stepped rows 1 and 2 before a's raised)
    assert torch.equal(emb.weight.detach()[0], w[0])


def test_bench_format_reports_every_target():
    from embtab.benchmarks import optim as bench

    sec = {
        "sgd": {"nn.EmbeddingBag(sparse) + torch": 0.02, "embtab fused": 0.01, "FBGEMM TBE fused": 0.02},
        "adagrad": {"embtab fused": 0.02, "FBGEMM TBE fused": 0.02},
        "rowwise_adagrad": {"embtab fused": 0.01, "FBGEMM TBE fused": 0.02},
        "adam": {"nn.EmbeddingBag(sparse) + torch": 0.1, "embtab fused": 0.02},
    }
    r = {
        "machine": {"cpu": "X", "cores": 2, "isa": "AVX2"}, "threads": 1, "fbgemm": "1.8.0",
        "fbgemm_skipped": None, "num_embeddings": 10, "embedding_dim": 64, "batch": 16,
        "zipf_s": 1.1, "distinct_ids_per_batch": 5.0, "bag_size": 8, "repeats": 1, "n_batches": 1,
        "seconds_per_step": sec,
        "state_bytes_per_row": {"sgd": 0, "adagrad": 256, "rowwise_adagrad": 4, "adam": 512},
        "threads_step": {"1": 0.02, "2": 0.01}, "threads_kernel": {"1": 0.002, "2": 0.0015},
        "breakdown": {"remap_lookup_only": 4e-4, "forward": 1.2e-3, "backward": 1.6e-3},
    }
    text = bench.format_markdown(r)
    assert ("remap lookup 0.40 ms, forward (remap included) 1.20 ms, backward (the C++ step "
            "included) 1.60 ms") in text
    assert "sgd: fused / FBGEMM = 0.50x (target <= 0.8x: met)" in text
    assert "adagrad: fused / FBGEMM = 1.00x (target <= 0.8x: missed)" in text
    assert "adam: fused / nn.EmbeddingBag + SparseAdam = 0.20x (target <= 0.5x: met)" in text
    assert "2.00x (target >= 1.6x: met)" in text and "| rowwise_adagrad | embtab fused | 10.0 | 4 |" in text


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_core_step_same_bits_at_every_isa_level_and_thread_count(kind, dtype):
    """The fused step is compiled once per ISA level (optim_impl.inc: baseline, AVX2, AVX-512)
    and dispatched at run time; capped at AVX2 or at the baseline it gives the same bits, at 1
    and 3 threads, for bags with weights and mean, scale_grad_by_freq and skipped rows, with
    dims that are not multiples of a vector (and d = 64), over a split batch (>= 4,096
    occurrences) and a small one; and the result is a step (weights moved). The forms the CPU
    lacks are not run: the AVX-512 one is compared only on an AVX-512 machine."""
    from embtab._core import _testing

    rng = np.random.default_rng(3)
    for n, d, R in ((6000, 64, 700), (300, 13, 50), (5000, 5, 3000)):
        rows = rng.integers(0, R + 1, n).astype(np.int64)  # row R: the zero row, skipped
        lens = rng.integers(0, 5, n)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        offsets = offsets[offsets <= n]
        offsets[-1] = n
        nb = len(offsets) - 1
        w0 = rng.standard_normal((R + 1, d)).astype(dtype)
        w0[R] = 0
        rowwise = kind == "rowwise_adagrad"
        s10 = np.abs(rng.standard_normal((R + 1,) if rowwise else (R + 1, d))).astype(dtype)
        s20 = np.abs(rng.standard_normal((R + 1, d))).astype(dtype) if kind == "adam" else None
        grad = rng.standard_normal((nb, d)).astype(dtype)
        psw = rng.random(n).astype(dtype)
        got = []
        for level in ("auto", "avx2", "baseline"):
            for threads in (1, 3):
                w, s1 = w0.copy(), s10.copy()
                s2 = None if s20 is None else s20.copy()
                _testing.set_isa_limit(level)
                try:
                    _core.fused_step(w, rows, grad, offsets, psw, True, kind != "rowwise_adagrad",
                                     R, s1, s2, kind, 0.05, 1e-8, momentum=0.9 if kind == "sgd" else 0.0,
                                     weight_decay=0.01 if kind == "sgd" else 0.0,
                                     num_threads=threads)
                finally:
                    _testing.set_isa_limit("auto")
                got.append(w.tobytes() + s1.tobytes() + (b"" if s2 is None else s2.tobytes()))
        assert all(g == got[0] for g in got[1:]), (n, d)
        assert got[0][: w0.nbytes] != w0.tobytes()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["bag", "embedding", "hashed", "collection"])
def test_converted_weight_refused_before_the_forward_changes_anything(kind, dtype):
    """A fused module converted by .half()/.bfloat16() after construction cannot step: a
    training forward raises TypeError naming the dtype before any ID is inserted (it used to
    run, insert its IDs, and fail in backward inside Tensor.numpy() or the native step); a
    forward without gradient still runs (inference)."""
    make = {
        "bag": lambda: CuckooEmbeddingBag(100, 4, mode="sum", optimizer=eo.Adam()),
        "embedding": lambda: CuckooEmbedding(100, 4, optimizer=eo.Adam()),
        "hashed": lambda: HashedEmbedding(100, 4, optimizer=eo.Adam()),
        "collection": lambda: CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(num_embeddings=100, embedding_dim=4, name="t", feature_names=["a"])],
            optimizer=eo.Adam(),
        ),
    }[kind]
    m = make().to(dtype)
    ids = torch.tensor([1, 2, 3])
    call = {
        "bag": lambda: m(ids, torch.tensor([0])),
        "collection": lambda: m({"a": (ids, torch.tensor([0]))})["a"],
    }.get(kind, lambda: m(ids))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match=f"float32 or float64 weight, got {dtype}"):
        call()
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        out = call()
    assert out.dtype == dtype and out.shape[-1] == 4
    m.float()  # converted back, it trains
    call().sum().backward()
    table = m.embedding_bags["t"] if kind == "collection" else m
    assert int(table.opt_step) == 1


@pytest.mark.parametrize("cls", ["CuckooEmbeddingBag", "HashedEmbeddingBag"])
def test_psw_gradients_of_two_lookups_in_one_graph_read_the_rows_as_looked_up(cls):
    # A module read twice in one loss (e.g. one item table for a weighted history bag and the
    # target): the per_sample_weights gradients read the rows as the forwards did. Oracle: the
    # same module without a fused optimizer (plain autograd, rows as at forward time).
    import embtab.nn as enn

    make = getattr(enn, cls)
    fused = make(10, 3, mode="sum", optimizer=eo.SGD(lr=1.0), num_threads=1, seed=3)
    plain = make(10, 3, mode="sum", num_threads=1, seed=3)
    ids = torch.tensor([5, 6, 7, 5])
    off = torch.tensor([0, 2])
    grads = []
    for m in (fused, plain):
        p1 = torch.tensor([1.0, 0.5, 2.0, 1.5], requires_grad=True)
        p2 = torch.tensor([0.3, 1.0, 1.0, 0.7], requires_grad=True)
        w = torch.tensor([[1.0, -2.0, 0.5], [0.2, 0.1, 3.0]])
        loss = (m(ids, off, p1) * w).sum() + (m(ids, off, p2) * 2 * w).sum()
        loss.backward()
        grads.append((p1.grad.clone(), p2.grad.clone()))
    for got, want in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, want)


def test_param_groups_checks_see_a_list_changed_in_place_and_refuse_a_tensor():
    opt = eo.Adam(lr=0.01)
    m = CuckooEmbeddingBag(16, D, mode="sum", optimizer=opt)
    opt.param_groups[0]["betas"] = [0.9, 0.999]   # a list: taken
    m(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    opt.param_groups[0]["betas"][0] = 1.0           # then changed in place
    before = m.weight.detach().clone()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['betas'\]\[0\]"):
        m(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    assert torch.equal(before, m.weight.detach())
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.2])
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\] must be a number, got Tensor"):
        m(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    # a value equal to one checked before but of another type is checked again (True == 1.0)
    opt.param_groups[0]["lr"] = 1.0
    m(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    opt.param_groups[0]["lr"] = True
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\] must be a number, got bool"):
        m(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()


@pytest.mark.parametrize("make", [eo.Adagrad, eo.RowWiseAdagrad])
def test_a_numpy_float_initial_accumulator_value_fills_grown_and_new_rows(make):
    # a np.float32 written into param_groups passed the check, then torch refused to assign it
    # into the grown state (the growth failed as a MemoryError)
    opt = make(lr=0.1)
    m = CuckooEmbedding(2, 3, optimizer=opt)
    m(torch.tensor([1, 2])).sum().backward()
    opt.param_groups[0]["initial_accumulator_value"] = np.float32(0.5)
    m(torch.tensor([3, 4, 5])).sum().backward()    # grows, new IDs get fresh state
    state = m.opt_sum if make is eo.Adagrad else m.opt_row_sum
    rows = m.lookup(torch.tensor([3, 4, 5]))
    assert m.num_embeddings >= 5 and (rows >= 0).all()
    # (each new row started at 0.5, then took one step's squares)
    assert bool((state[rows] > 0.5).all())


@pytest.mark.parametrize("where", ["module", "embedding", "collection"])
def test_an_optimizer_assigned_after_construction_is_checked_before_any_change(where):
    # The fused optimizer is fixed at construction (its state buffers are registered then).
    # Assigned later: a torch optimizer (TypeError) or a fused one whose state the module does
    # not hold (ValueError) is refused by the next forward before anything changes; one of
    # the same state (other hyperparameters) is taken.
    if where == "collection":
        m = CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(num_embeddings=8, embedding_dim=D, name="t",
                                feature_names=["a"])], optimizer=eo.RowWiseAdagrad(lr=0.1),
            num_threads=1)
        table = m.embedding_bags["t"]

        def call(ids):
            return m({"a": (ids, torch.tensor([0]))}, concat=True)
    elif where == "module":
        m = table = CuckooEmbeddingBag(8, D, mode="sum", optimizer=eo.RowWiseAdagrad(lr=0.1),
                                       num_threads=1)

        def call(ids):
            return m(ids, torch.tensor([0]))
    else:
        m = table = CuckooEmbedding(8, D, optimizer=eo.RowWiseAdagrad(lr=0.1), num_threads=1)

        def call(ids):
            return m(ids)
    call(torch.tensor([1, 2])).sum().backward()
    for bad, err, match in [
        (torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), TypeError,
         r"optimizer must be None or an embtab.optim optimizer, got SGD"),
        (eo.Adagrad(lr=0.1), ValueError, r"Adagrad, whose state \(opt_sum\) this module"),
    ]:
        table.optimizer = bad
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(err, match=match):
            call(torch.tensor([3, 4]))   # new IDs: nothing inserted either
        after = m.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    table.optimizer = eo.RowWiseAdagrad(lr=0.5)   # the same state: taken, its lr used
    w = table.weight.detach().clone()
    call(torch.tensor([1])).sum().backward()
    assert int(table.opt_step) == 2
    g2 = torch.ones(D)
    row = int(table.lookup(torch.tensor([1])))
    acc = float(table.opt_row_sum[row])
    torch.testing.assert_close(table.weight.detach()[row],
                               w[row] - 0.5 * g2 / (acc ** 0.5 + 1e-10), rtol=1e-5, atol=1e-6)


# Scenarios where two lookups of one graph need no growth between them (pre-sized tables).
TWICE = ["padding_mean", "psw", "last_offset", "max", "max_norm_sum", "freq", "embedding",
         "embedding_freq", "hashed_bag", "hashed_emb", "float64"]


@pytest.mark.parametrize("scen", TWICE)
@pytest.mark.parametrize("opt", list(OPTS))
def test_a_module_looked_up_twice_in_one_graph_takes_one_step_on_both_gradients(opt, scen):
    # One table read twice per loss (users and items of one table, positives and negatives):
    # the module + a torch optimizer accumulates both lookups' gradients in .grad and steps
    # once; the fused optimizer must take that one step, not one per lookup.
    make_fused, make_torch, torch_sparse = OPTS[opt]
    cls, kw, kind = SCENARIOS[scen]
    kw = {**kw, "num_embeddings": 64} if cls in (CuckooEmbedding, CuckooEmbeddingBag) else kw
    dtype = kw.get("dtype", torch.float32)
    first, second = make_batches(kind, 4, seed=1, dtype=dtype), make_batches(kind, 4, seed=2,
                                                                               dtype=dtype)
    fused = cls(embedding_dim=D, optimizer=make_fused(), **kw)
    dense = kw.get("mode") == "max" or kw.get("scale_grad_by_freq", False)
    if scen == "freq":  # as in run_pair: nn.Embedding's counts, summed over dim 1
        ref_call = CuckooEmbedding(embedding_dim=D, num_embeddings=64, scale_grad_by_freq=True)
        ref = _BagSum(ref_call)
    else:
        ref = ref_call = cls(embedding_dim=D, sparse=not dense, **kw)
    topt = make_torch(list(ref.parameters()))
    last = kw.get("include_last_offset", False)
    for a, b in zip(first, second):
        (la, pa), (lb, pb) = forward(fused, a, last), forward(fused, b, last)
        (la + 2 * lb).backward()
        topt.zero_grad()
        (ra, qa), (rb, qb) = forward(ref, a, last), forward(ref, b, last)
        (ra + 2 * rb).backward()
        if dense and torch_sparse:
            ref_call.weight.grad = ref_call.weight.grad.to_sparse(1)
        topt.step()
        torch.testing.assert_close(la + 2 * lb, ra + 2 * rb, rtol=1e-5, atol=1e-5)
        for got, want in ((pa, qa), (pb, qb)):
            if got is not None:
                torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(fused.weight.detach(), ref_call.weight.detach(), rtol=tol,
                                   atol=tol)
    assert int(fused.opt_step) == 4


def test_a_backward_that_fails_steps_no_lookup_of_its_graph():
    # A module looked up twice steps when the pass ends: a pass that raises after both
    # lookups' nodes have run (a hook on a leaf reached later) leaves the fused module's weight
    # and state as they were, and keeps nothing queued.
    import gc

    emb = CuckooEmbedding(16, 3, optimizer=eo.Adagrad(lr=0.5), num_threads=1)
    emb(torch.tensor([1, 2, 3])).sum().backward()
    before = {k: v.clone() for k, v in emb.state_dict().items()
              if k == "weight" or k.startswith("opt_")}
    x = torch.ones(3, requires_grad=True)
    queued = []

    def boom(_):
        queued.append(len(eo._queues))
        raise RuntimeError("boom")

    x.register_hook(boom)
    y = x * 2
    # the lookups' nodes run before x's hook
    loss = y.sum() + emb(torch.tensor([1, 2])).sum() + emb(torch.tensor([2, 3])).square().sum()
    with pytest.raises(RuntimeError, match="boom"):
        loss.backward()
    assert queued == [1]  # the lookups had queued their step when the pass failed
    del loss, y
    gc.collect()
    for k, v in before.items():
        assert torch.equal(emb.state_dict()[k], v), k
    assert len(eo._queues) == 0
    emb(torch.tensor([1, 2])).sum().backward()  # and the next pass steps as usual
    assert int(emb.opt_step) == 2


class _ScaleGradInPlace(torch.autograd.Function):
    """Identity whose backward scales its incoming gradient in place (allowed for a Function:
    the gradient it receives is its own to change)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.mul_(10.0)


@pytest.mark.parametrize("lookups", [1, 2])
def test_a_gradient_changed_in_place_by_a_later_node_does_not_reach_the_step(lookups):
    # The add node hands one gradient tensor to both branches; the other branch's Function
    # scales it in place after the lookups' nodes ran. A queued step (a module looked up
    # twice) must use the gradient as it was when its node ran, as the unfused module does.
    weights = torch.tensor([[1.0, 2, 3], [4, 5, 6]])
    results = []
    for fused in (True, False):
        # (SGD: Adagrad's first step would not see a scale)
        emb = HashedEmbedding(11, 3, optimizer=eo.SGD(lr=0.1) if fused else None)
        other = HashedEmbedding(11, 3, seed=5)
        opt = None if fused else torch.optim.SGD(emb.parameters(), lr=0.1)
        fb = _ScaleGradInPlace.apply(other(torch.tensor([1, 2])))
        a = sum(emb(torch.tensor([3, 4])) for _ in range(lookups))  # made last: runs first
        ((a + fb) * weights).sum().backward()
        if opt is not None:
            opt.step()
        results.append(emb.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("how", ["grad", "inputs"])
def test_a_pass_that_asks_only_for_per_sample_weights_steps_nothing(how):
    # the unfused module gets no .grad then, so its torch optimizer would not step
    emb = CuckooEmbeddingBag(8, 3, mode="sum", optimizer=eo.Adagrad(lr=0.5))
    ids, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    emb(ids, off).sum().backward()
    before = {k: v.clone() for k, v in emb.state_dict().items()}
    psw = torch.ones(3, requires_grad=True)
    loss = emb(ids, off, psw).square().sum()
    if how == "grad":
        (g,) = torch.autograd.grad(loss, [psw])
    else:
        loss.backward(inputs=[psw])
        g = psw.grad
    assert g is not None and g.abs().sum() > 0
    for k in ("weight", "opt_step", "opt_sum"):
        assert torch.equal(emb.state_dict()[k], before[k]), k


def test_a_retained_graph_backpropagated_again_takes_one_step_per_module_per_pass():
    # loss.backward(retain_graph=True) twice over two lookups of one module: each pass one
    # Adagrad step on both lookups' gradients, as the unfused module + torch.optim.Adagrad
    # stepped after each pass (the second pass stepped once per lookup)
    def run(fused):
        m = HashedEmbedding(16, 4, seed=1, optimizer=eo.Adagrad(lr=0.5) if fused else None)
        opt = None if fused else torch.optim.Adagrad(m.parameters(), lr=0.5)
        a, b = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5])
        t = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        loss = ((m(a) - t) ** 2).sum() + ((m(b) + t) ** 2).sum()
        for _ in range(3):
            loss.backward(retain_graph=True)
            if opt is not None:
                opt.step()
                opt.zero_grad()
        return m

    fused, plain = run(True), run(False)
    torch.testing.assert_close(fused.weight.detach(), plain.weight.detach())
    assert int(fused.opt_step) == 3
