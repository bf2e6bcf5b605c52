"""Embedding-bag collections against a dict of independent bag modules (values, gradients,
fused optimizer steps), shared tables, the jagged input, state dicts and bad input."""

import copy

import numpy as np
import pytest
import torch

import embtab
import embtab.optim as eo
from embtab.nn import (
    CuckooEmbeddingBag,
    CuckooEmbeddingBagCollection,
    EmbeddingBagConfig,
    HashedEmbeddingBag,
    HashedEmbeddingBagCollection,
    KeyedJaggedIds,
)

B = 5
KINDS = {
    "cuckoo": (CuckooEmbeddingBagCollection, CuckooEmbeddingBag),
    "hashed": (HashedEmbeddingBagCollection, HashedEmbeddingBag),
}


def configs(kind):
    """Three tables: sum (grows from 4 rows), mean with a padding ID, sum with weights."""
    grow = {"seed": 1} if kind == "hashed" else {"seed": 1, "on_full": "grow"}
    return [
        EmbeddingBagConfig(num_embeddings=4, embedding_dim=4, name="t_a", feature_names=["a"],
                           options=grow),
        EmbeddingBagConfig(num_embeddings=16, embedding_dim=3, name="t_b", feature_names=["b"],
                           pooling="mean", options={"seed": 2, "padding_id": 5}),
        EmbeddingBagConfig(num_embeddings=16, embedding_dim=2, name="t_c", feature_names=["c"],
                           options={"seed": 3}),
    ]


def reference(kind, cfgs, optimizer=None, **kw):
    """{table: an independent bag module with the table's settings}."""
    bag = KINDS[kind][1]
    return {
        c.name: bag(c.num_embeddings, c.embedding_dim, mode=c.pooling, optimizer=optimizer,
                    **kw, **c.options)
        for c in cfgs
    }


def batches(steps, seed=0, n_ids=30):
    """Seeded batches: {feature: (ids, offsets)}, per_sample_weights of "c", targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        feats = {}
        for f in "abc":
            lengths = torch.randint(0, 4, (B,), generator=g)
            ids = torch.randint(0, n_ids, (int(lengths.sum()),), generator=g) * 7919 - 2**62
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
            feats[f] = (ids, offsets)
        a, b = feats["a"][0], feats["b"][0]
        feats["b"] = (torch.where(torch.arange(b.numel()) % 3 == 0, 5, b), feats["b"][1])
        psw = {"c": torch.rand(feats["c"][0].shape, generator=g)}
        targets = {f: torch.randn(B, d, generator=g) for f, d in zip("abc", (4, 3, 2))}
        out.append((feats, psw, targets))
    return out


def loss_of(outs, targets):
    return sum((outs[f] * targets[f]).sum() + 0.5 * outs[f].square().sum() for f in targets)


def ref_forward(refs, cfgs, feats, psw):
    outs = {}
    for c in cfgs:
        (f,) = c.feature_names
        ids, off = feats[f]
        outs[f] = refs[c.name](ids, off, psw.get(f))
    return outs


def close(a, b, msg=""):
    """Equal to float tolerance: the collection pools every feature in one native pass, whose
    sums may round differently from torch's embedding_bag kernel (it fuses multiply-adds)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=msg)


def assert_tables_equal(coll, refs, names=("weight",)):
    for t, ref in refs.items():
        bag = coll.embedding_bags[t]
        for n in names:
            close(getattr(bag, n), getattr(ref, n), msg=t + n)


# values and gradients ///////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize("kind", list(KINDS))
def test_equals_independent_modules_with_a_torch_optimizer(kind):
    cfgs = configs(kind)
    coll = KINDS[kind][0](cfgs)
    refs = reference(kind, cfgs)
    opt_c = torch.optim.SGD(coll.parameters(), lr=0.05)
    opt_r = torch.optim.SGD([p for r in refs.values() for p in r.parameters()], lr=0.05)
    for feats, psw, targets in batches(6):
        outs = coll(feats, psw)
        assert list(outs) == ["a", "b", "c"]
        ref_outs = ref_forward(refs, cfgs, feats, psw)
        for f in outs:
            assert torch.equal(outs[f], ref_outs[f]), f  # the per-table path: the same calls
        opt_c.zero_grad()
        opt_r.zero_grad()
        loss_of(outs, targets).backward()
        loss_of(ref_outs, targets).backward()
        for t, ref in refs.items():
            assert torch.equal(coll.embedding_bags[t].weight.grad, ref.weight.grad), t
        opt_c.step()
        opt_r.step()
        assert_tables_equal(coll, refs)
    if kind == "cuckoo":
        assert coll.stats()["t_a"]["num_growths"] > 0  # the growth path was exercised


OPTS = {
    "sgd": lambda: eo.SGD(lr=0.1, momentum=0.5),
    "adagrad": lambda: eo.Adagrad(lr=0.2, initial_accumulator_value=0.1),
    "rowwise_adagrad": lambda: eo.RowWiseAdagrad(lr=0.2),
    "adam": lambda: eo.Adam(lr=0.05),
}


@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_fused_optimizer_equals_independent_modules_step_for_step(kind, opt):
    cfgs = configs(kind)
    coll = KINDS[kind][0](cfgs, optimizer=OPTS[opt]())
    refs = reference(kind, cfgs, optimizer=OPTS[opt]())
    state = [n for n in coll.embedding_bags["t_a"].state_dict() if n.startswith("opt_")]
    assert "opt_step" in state and len(state) >= (1 if opt == "sgd" else 2)
    for feats, psw, targets in batches(6, seed=1):
        outs = coll(feats, psw)
        ref_outs = ref_forward(refs, cfgs, feats, psw)
        for f in outs:
            close(outs[f], ref_outs[f], f)
        loss_of(outs, targets).backward()
        loss_of(ref_outs, targets).backward()
        assert all(b.weight.grad is None for b in coll.embedding_bags.values())
        assert_tables_equal(coll, refs, ["weight"] + state)
    assert int(coll.embedding_bags["t_b"].opt_step) == 6


def test_concat_is_the_dict_side_by_side():
    coll = CuckooEmbeddingBagCollection(configs("cuckoo"))
    feats, psw, _ = batches(1)[0]
    d = coll(feats, psw)
    c = coll(feats, psw, concat=True)
    assert coll.feature_names == ["a", "b", "c"] and coll.feature_dims == [4, 3, 2]
    assert torch.equal(c, torch.cat([d["a"], d["b"], d["c"]], 1))
    assert torch.equal(c[:, 4:7], d["b"])
    before = {k: v.clone() for k, v in coll.state_dict().items()}
    with pytest.raises(TypeError, match="concat must be a bool, got str"):   # was read as True
        coll(feats, psw, concat="no")
    assert all(torch.equal(v, coll.state_dict()[k]) for k, v in before.items())


def jagged(feats, keys, weights=None):
    values = torch.cat([feats[k][0] for k in keys])
    lengths = torch.cat(
        [torch.diff(feats[k][1], append=torch.tensor([feats[k][0].numel()])) for k in keys]
    )
    w = None if weights is None else torch.cat([weights[k] for k in keys])
    return KeyedJaggedIds(keys, values, lengths, w)


@pytest.mark.parametrize("kind", list(KINDS))
def test_jagged_input_equals_dict_input(kind):
    cfgs = configs(kind)
    coll = KINDS[kind][0](cfgs)
    twin = copy.deepcopy(coll)
    feats, _, _ = batches(1, seed=3)[0]
    got = coll(jagged(feats, ["b", "a", "c"]))  # any key order
    want = twin(feats)
    for f in want:
        close(got[f], want[f], f)
    # weights go to every feature: a "mean" table's (feature b) must be 1, and are unread
    feats, psw, _ = batches(1, seed=4)[0]
    ones = {f: torch.ones(feats[f][0].shape) for f in "ab"}
    heavy = {**ones, "b": torch.full(feats["b"][0].shape, 2.0)}
    with pytest.raises(ValueError, match=r"features\['b'\].*mode='mean'.*must all be 1"):
        coll(jagged(feats, ["a", "b", "c"], {**heavy, **psw}))
    got = coll(jagged(feats, ["a", "b", "c"], {**ones, **psw}))
    want = twin(feats, psw)
    for f in want:
        close(got[f], want[f], f)
    cfgs = shared_cfgs(kind)
    coll = KINDS[kind][0](cfgs)
    twin = copy.deepcopy(coll)
    got = coll(jagged(feats, ["c", "a", "b"], {**ones, **psw}))
    want = twin(feats, psw)
    for f in want:
        close(got[f], want[f], f)


def test_include_last_offset_and_fixed_length_bags():
    cfgs = configs("hashed")
    coll = HashedEmbeddingBagCollection(cfgs, include_last_offset=True)
    refs = reference("hashed", cfgs)
    feats, _, _ = batches(1, seed=4)[0]
    csr = {f: (ids, torch.cat([off, torch.tensor([ids.numel()])])) for f, (ids, off) in feats.items()}
    csr["c"] = torch.arange(2 * B).reshape(B, 2)  # 2-D: B bags of 2
    outs = coll(csr)
    ref = refs["t_c"](torch.arange(2 * B).reshape(B, 2))
    assert torch.equal(outs["c"], ref)
    assert torch.equal(outs["a"], refs["t_a"](*feats["a"]))


# shared tables ///////////////////////////////////////////////////////////////////////////////


def shared_cfgs(kind):
    opts = {"seed": 4} if kind == "hashed" else {"seed": 4, "on_full": "evict_lru"}
    return [
        EmbeddingBagConfig(num_embeddings=24, embedding_dim=3, name="shared",
                           feature_names=["a", "b"], options=opts),
        EmbeddingBagConfig(num_embeddings=16, embedding_dim=2, name="t_c", feature_names=["c"],
                           options={"seed": 3}),
    ]


@pytest.mark.parametrize("kind", list(KINDS))
def test_shared_table_equals_one_module_read_per_feature(kind):
    """A table shared by "a" and "b": the same vector for an ID under either feature, and per
    ID the gradient of one module looked up once per feature (rows may differ, IDs may not)."""
    cfgs = shared_cfgs(kind)
    coll = KINDS[kind][0](cfgs)
    assert list(coll.embedding_bags) == ["shared", "t_c"]
    refs = reference(kind, cfgs)
    opt_c = torch.optim.Adagrad(coll.parameters(), lr=0.1)
    opt_r = torch.optim.Adagrad([p for r in refs.values() for p in r.parameters()], lr=0.1)
    mine, ref = coll.embedding_bags["shared"], refs["shared"]
    for feats, psw, targets in batches(5, seed=5):
        targets["b"] = targets["b"][:, :3]
        targets["a"] = targets["a"][:, :3]
        outs = coll(feats, psw)
        ref_outs = {f: ref(*feats[f]) for f in "ab"}
        ref_outs["c"] = refs["t_c"](*feats["c"], psw["c"])
        for f in outs:
            assert torch.equal(outs[f], ref_outs[f]), f
        opt_c.zero_grad()
        opt_r.zero_grad()
        loss_of(outs, targets).backward()
        loss_of(ref_outs, targets).backward()
        ids = torch.unique(torch.cat([feats["a"][0], feats["b"][0]]))
        ids = ids[ids != 5] if kind == "cuckoo" else ids
        rm, rr = mine.lookup(ids), ref.lookup(ids)
        torch.testing.assert_close(mine.weight.grad[rm], ref.weight.grad[rr], rtol=1e-6, atol=1e-6)
        opt_c.step()
        opt_r.step()
        torch.testing.assert_close(mine.weight[rm], ref.weight[rr], rtol=1e-6, atol=1e-6)


def test_shared_table_fused_steps_once_per_backward():
    """With a fused optimizer a shared table steps once per backward: the same as one module
    fed both features' bags in one call (a's bags, then b's)."""
    cfgs = shared_cfgs("cuckoo")
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.Adagrad(lr=0.3))
    ref = reference("cuckoo", cfgs[:1], optimizer=eo.Adagrad(lr=0.3))["shared"]
    for feats, _, targets in batches(5, seed=6):
        (ia, oa), (ib, ob) = feats["a"], feats["b"]
        outs = coll(feats, {})
        ref_out = ref(torch.cat([ia, ib]), torch.cat([oa, ob + ia.numel()]))
        close(torch.cat([outs["a"], outs["b"]]), ref_out)
        (outs["a"].sum() * 2 + outs["b"].square().sum() + outs["c"].sum()).backward()
        (ref_out[:B].sum() * 2 + ref_out[B:].square().sum()).backward()
        mine = coll.embedding_bags["shared"]
        for n in ("row_ids", "row_live", "opt_step"):
            assert torch.equal(getattr(mine, n), getattr(ref, n)), n
        for n in ("weight", "opt_sum"):
            close(getattr(mine, n), getattr(ref, n), n)
    assert int(mine.opt_step) == 5


# state dicts ///////////////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_round_trip_continues_training(kind, tmp_path):
    cfgs = configs(kind)
    a = KINDS[kind][0](cfgs, optimizer=eo.RowWiseAdagrad(lr=0.2))
    data = batches(6, seed=7)
    for feats, psw, targets in data[:3]:
        loss_of(a(feats, psw), targets).backward()
    torch.save(a.state_dict(), tmp_path / "c.pt")
    assert "embedding_bags.t_a.weight" in a.state_dict()
    assert "embedding_bags.t_b.opt_row_sum" in a.state_dict()
    b = KINDS[kind][0](cfgs, optimizer=eo.RowWiseAdagrad(lr=0.2))
    b.load_state_dict(torch.load(tmp_path / "c.pt"))
    for feats, psw, targets in data[3:]:
        outs_a, outs_b = a(feats, psw), b(feats, psw)
        for f in outs_a:
            assert torch.equal(outs_a[f], outs_b[f])
        loss_of(outs_a, targets).backward()
        loss_of(outs_b, targets).backward()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _corruptions(kind):
    def dup_id(sd):  # second table: two live rows for one ID
        sd["embedding_bags.t_b.row_ids"][1] = sd["embedding_bags.t_b.row_ids"][0]

    def bad_opt(sd):
        sd["embedding_bags.t_c.opt_sum"] = sd["embedding_bags.t_c.opt_sum"][:-1]

    def bad_weight(sd):
        sd["embedding_bags.t_c.weight"] = sd["embedding_bags.t_c.weight"][:, :1]

    def missing(sd):
        del sd["embedding_bags.t_c.weight"]

    def extra(sd):
        sd["embedding_bags.t_z.weight"] = torch.zeros(2, 2)

    out = {
        "bad_opt": (bad_opt, "t_c.opt_sum"),
        "bad_weight": (bad_weight, "t_c.weight"),
        "missing": (missing, "t_c.weight"),
        "extra": (extra, "t_z.weight"),
    }
    if kind == "cuckoo":
        out["dup_id"] = (dup_id, "t_b.row_ids")
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_state_dict_loads_nothing(kind):
    cfgs = configs(kind)
    src = KINDS[kind][0](cfgs, optimizer=eo.Adagrad(lr=0.2))
    for feats, psw, targets in batches(2, seed=8):
        loss_of(src(feats, psw), targets).backward()
    dst = KINDS[kind][0](cfgs, optimizer=eo.Adagrad(lr=0.2))
    for feats, psw, targets in batches(1, seed=9):
        loss_of(dst(feats, psw), targets).backward()
    before = _snapshot(dst)
    for name, (corrupt, key) in _corruptions(kind).items():
        sd = _snapshot(src)
        corrupt(sd)
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            dst.load_state_dict(sd)
        after = dst.state_dict()
        for k in before:  # t_a, loaded first if anything were, is unchanged too
            assert torch.equal(before[k], after[k]), (name, k)
    dst.load_state_dict(_snapshot(src))  # a good one loads
    assert torch.equal(dst.embedding_bags["t_a"].weight, src.embedding_bags["t_a"].weight)


# bad input /////////////////////////////////////////////////////////////////////////////////


def _bad_inputs():
    def edit(f, value):
        def go(feats):
            feats[f] = value(feats[f])
            return feats
        return go

    return {
        "unknown": (lambda fs: {**fs, "zz": fs["a"]}, ValueError, r"unknown feature.*'zz'"),
        "missing": (lambda fs: {k: v for k, v in fs.items() if k != "b"}, ValueError,
                    r"missing feature.*'b'"),
        "float_ids": (edit("b", lambda x: (x[0].float(), x[1])), TypeError,
                      r"features\['b'\].*ids.*float32"),
        "3d_ids": (edit("c", lambda x: x[0].reshape(1, 1, -1)), ValueError,
                   r"features\['c'\].*input must be 1-D"),
        "offsets_dtype": (edit("a", lambda x: (x[0], x[1].float())), TypeError,
                          r"features\['a'\].*offsets"),
        "offsets_past_end": (edit("a", lambda x: (x[0], x[1] + 100)), ValueError,
                             r"features\['a'\].*offsets"),
        "batch_size": (edit("c", lambda x: (x[0], x[1][:-1])), ValueError,
                       r"features\['c'\] has 4 bags"),
        "triple": (edit("a", lambda x: (x[0], x[1], None)), ValueError,
                   r"features\['a'\].*pair"),
        "not_a_dict": (lambda fs: list(fs.values()), TypeError, "features must be a dict"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_names_the_feature_and_changes_nothing(kind, case):
    coll = KINDS[kind][0](configs(kind), optimizer=eo.SGD(lr=0.1))
    feats, psw, _ = batches(2, seed=10)[0]
    coll(feats, psw)
    before = _snapshot(coll)
    make, exc, match = _bad_inputs()[case]
    new_feats, _, _ = batches(2, seed=11)[1]  # new IDs the failed call must not insert
    with pytest.raises(exc, match=match):
        coll(make(dict(new_feats)), psw if case != "batch_size" else None)
    after = coll.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_bad_per_sample_weights_name_the_feature():
    coll = CuckooEmbeddingBagCollection(configs("cuckoo"))
    feats, psw, _ = batches(1)[0]
    with pytest.raises(ValueError, match=r"features\['b'\].*per_sample_weights.*mode='sum'"):
        coll(feats, {"b": torch.ones(feats["b"][0].shape)})
    with pytest.raises(TypeError, match=r"features\['c'\].*per_sample_weights.*float32"):
        coll(feats, {"c": psw["c"].double()})
    with pytest.raises(ValueError, match=r"per_sample_weights: unknown feature.*'q'"):
        coll(feats, {"q": psw["c"]})
    assert all(b.num_ids == 0 for b in coll.embedding_bags.values())


def test_bad_jagged_input():
    coll = CuckooEmbeddingBagCollection(configs("cuckoo"))
    vals = torch.arange(6)
    with pytest.raises(ValueError, match="lengths sum to 5"):
        coll(KeyedJaggedIds(["a", "b", "c"], vals, torch.tensor([1, 1, 1, 1, 1, 0])))
    with pytest.raises(ValueError, match="multiple of len"):
        coll(KeyedJaggedIds(["a", "b", "c"], vals, torch.tensor([1, 1, 1, 1, 2])))
    with pytest.raises(ValueError, match="missing feature"):
        coll(KeyedJaggedIds(["a", "b"], vals, torch.tensor([1, 1, 2, 2])))
    with pytest.raises(TypeError, match="lengths"):
        coll(KeyedJaggedIds(["a", "b", "c"], vals, torch.ones(3)))
    assert all(b.num_ids == 0 for b in coll.embedding_bags.values())


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: EmbeddingBagConfig(10, 4, "t", "a"), TypeError, "feature_names must be a list"),
        (lambda: EmbeddingBagConfig(10, 4, "t", []), ValueError, "at least one"),
        (lambda: EmbeddingBagConfig(10, 4, "t.x", ["a"]), ValueError, "without '.'"),
        (lambda: EmbeddingBagConfig(10, 4, "t", ["a"], pooling="prod"), ValueError, "pooling"),
        (lambda: EmbeddingBagConfig(0, 4, "t", ["a"]), ValueError, "num_embeddings"),
        (lambda: EmbeddingBagConfig(10, 4, "t", ["a"], options={"mode": "sum"}), ValueError,
         "set by the collection"),
        (lambda: CuckooEmbeddingBagCollection([]), ValueError, "at least one"),
        (lambda: CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(10, 4, "t", ["a"]), EmbeddingBagConfig(10, 4, "t", ["b"])]),
         ValueError, "two tables are named 't'"),
        (lambda: CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(10, 4, "t", ["a"]), EmbeddingBagConfig(10, 4, "u", ["a"])]),
         ValueError, "feature 'a' is read by tables 't' and 'u'"),
        (lambda: HashedEmbeddingBagCollection(
            [EmbeddingBagConfig(10, 4, "t", ["a"], options={"on_full": "grow"})]),
         TypeError, "table 't'.*on_full"),
        (lambda: CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(10, 4, "t", ["a"], options={"on_full": "spill"})]),
         ValueError, "table 't'.*on_full"),
        (lambda: CuckooEmbeddingBagCollection(
            [EmbeddingBagConfig(10, 4, "t", ["a"])], optimizer=torch.optim.SGD),
         TypeError, "optimizer"),
    ],
)
def test_bad_configuration(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_config_copies_the_callers_options():
    opts = {"seed": 3}
    names = ["a"]
    c = EmbeddingBagConfig(10, 4, "t", names, pooling="SUM", options=opts)
    opts["seed"] = 4
    names.append("b")
    assert c.options == {"seed": 3} and c.feature_names == ("a",) and c.pooling == "sum"


# the native pooling pass ////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize("kind", list(KINDS))
def test_native_pass_equals_per_table_path(kind):
    """Eval mode under no_grad pools in one native call: the values of per-table modules
    holding the same state."""
    cfgs = configs(kind)
    coll = KINDS[kind][0](cfgs, optimizer=eo.SGD(lr=0.1))
    refs = reference(kind, cfgs)
    for feats, psw, targets in batches(3, seed=12):
        loss_of(coll(feats, psw), targets).backward()
    for t, r in refs.items():
        r.load_state_dict({k: v for k, v in coll.embedding_bags[t].state_dict().items()
                           if not k.startswith("opt_")})
    feats, psw, _ = batches(1, seed=13)[0]
    coll.eval()
    for r in refs.values():
        r.eval()
    with torch.no_grad():
        got = coll(feats, psw)
        want = ref_forward(refs, cfgs, feats, psw)
    for f in want:
        close(got[f], want[f], f)
    assert not got["a"].requires_grad


def test_native_pass_is_the_same_bits_for_any_thread_count():
    cfgs = configs("cuckoo")
    feats, psw, targets = batches(1, seed=14)[0]
    outs = []
    for threads in (1, 2, 3):
        coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.Adagrad(lr=0.1),
                                            num_threads=threads)
        loss_of(coll(feats, psw), targets).backward()
        outs.append((coll(feats, psw, concat=True).detach(),
                     coll.embedding_bags["t_a"].opt_sum.clone()))
    for o, s in outs[1:]:
        assert torch.equal(o, outs[0][0]) and torch.equal(s, outs[0][1])


def test_native_backward_after_a_growth_raises_and_steps_nothing():
    cfgs = configs("cuckoo")
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.SGD(lr=0.1))
    feats, psw, targets = batches(2, seed=15)[0]
    loss = loss_of(coll(feats, psw), targets)
    coll({**feats, "a": (torch.arange(40), torch.arange(0, 40, 8))}, psw)  # t_a grows
    before = _snapshot(coll)
    with pytest.raises(RuntimeError, match="table 't_a' grew"):
        loss.backward()
    after = coll.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_native_pass_pins_rows_against_eviction():
    cfgs = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="t", feature_names=["a"],
                               options={"on_full": "evict_lru"})]
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.SGD(lr=0.1))
    out = coll({"a": torch.arange(4).reshape(4, 1)})
    with pytest.raises(ValueError, match="can be evicted"):
        coll({"a": torch.arange(4, 8).reshape(4, 1)})
    out["a"].sum().backward()  # the first graph's rows are free now
    coll({"a": torch.arange(4, 8).reshape(4, 1)})
    assert coll.stats()["t"]["num_evictions"] == 4


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_table_whose_features_miss_the_loss_takes_no_step(opt):
    """As with independent modules: an output left out of the loss steps nothing (momentum
    and Adam's moments would otherwise move its rows); a shared table steps when one of its
    features is used."""
    cfgs = shared_cfgs("cuckoo")
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=OPTS[opt]())
    feats, psw, _ = batches(1, seed=16)[0]
    coll(feats, psw)["c"].sum().backward()  # backward ones: every table has seen the IDs
    outs = coll(feats, psw)
    before = _snapshot(coll)
    outs["a"].sum().backward()  # "b" and "c" unused; "a" reads the shared table
    after = coll.state_dict()
    assert int(after["embedding_bags.shared.opt_step"]) == 1
    for k in before:
        if k.startswith("embedding_bags.t_c."):
            assert torch.equal(before[k], after[k]), k


def test_float64_tables_equal_independent_modules():
    cfgs = configs("cuckoo")
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.Adagrad(lr=0.2), dtype=torch.float64)
    refs = reference("cuckoo", cfgs, optimizer=eo.Adagrad(lr=0.2), dtype=torch.float64)
    for feats, psw, targets in batches(3, seed=17):
        psw = {f: w.double() for f, w in psw.items()}
        targets = {f: t.double() for f, t in targets.items()}
        outs = coll(feats, psw, concat=True)
        assert outs.dtype == torch.float64
        ref_outs = ref_forward(refs, cfgs, feats, psw)
        close(outs, torch.cat([ref_outs[f] for f in "abc"], 1))
        loss_of(dict(zip("abc", outs.split([4, 3, 2], 1))), targets).backward()
        loss_of(ref_outs, targets).backward()
        assert_tables_equal(coll, refs, ["weight", "opt_sum"])


def test_double_converts_the_fused_state_and_trains_as_a_float64_collection():
    cfgs = configs("cuckoo")
    conv = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.Adagrad(lr=0.2)).double()
    born = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.Adagrad(lr=0.2), dtype=torch.float64)
    for c in cfgs:
        assert conv.embedding_bags[c.name].opt_sum.dtype == torch.float64
    for feats, psw, targets in batches(3, seed=17):
        psw = {f: w.double() for f, w in psw.items()}
        targets = {f: t.double() for f, t in targets.items()}
        for coll in (conv, born):
            loss_of(coll(feats, psw), targets).backward()
    for c in cfgs:
        a, b = conv.embedding_bags[c.name], born.embedding_bags[c.name]
        assert torch.equal(a.weight, b.weight) and torch.equal(a.opt_sum, b.opt_sum)


@pytest.mark.parametrize("opt", [None, "adagrad"])
@pytest.mark.parametrize("shared", [False, True], ids=["own_tables", "shared_table"])
def test_a_batch_of_no_bags_gives_empty_outputs(opt, shared):
    if shared:
        cfgs = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="t", feature_names=["f", "g"])]
    else:
        cfgs = [EmbeddingBagConfig(num_embeddings=4, embedding_dim=2, name="t", feature_names=["f"]),
                EmbeddingBagConfig(num_embeddings=4, embedding_dim=3, name="u", feature_names=["g"])]
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=None if opt is None else eo.Adagrad(lr=0.1))
    empty = torch.zeros(0, dtype=torch.int64)
    dims = {"f": 2, "g": 2 if shared else 3}
    for feats in ({"f": (empty, empty), "g": (empty, empty)},
                  {"f": torch.zeros(0, 2, dtype=torch.int64), "g": torch.zeros(0, 2, dtype=torch.int64)},
                  KeyedJaggedIds(["f", "g"], empty, torch.zeros(0, dtype=torch.int64))):
        out = coll(feats)
        assert {f: tuple(v.shape) for f, v in out.items()} == {f: (0, d) for f, d in dims.items()}
        assert tuple(coll(feats, concat=True).shape) == (0, sum(dims.values()))
        if opt is not None:
            sum(v.sum() for v in out.values()).backward()
    assert all(b.num_ids == 0 for b in coll.embedding_bags.values())


@pytest.mark.parametrize("bad", ["negative opt_sum", "nan opt_sum", "int32 opt_step",
                                 "huge opt_step"])
def test_hashed_collection_load_refuses_a_bad_second_table_before_loading_the_first(bad):
    # Oracle: the docs' "one bad entry ... loads nothing": every table of the target is as it
    # was. The table's own checks (optimizer state values, opt_step's dtype and range) ran
    # only when that table loaded, after the tables before it had been copied.
    def make():
        return HashedEmbeddingBagCollection(
            [EmbeddingBagConfig(8, 2, "t1", ["a"], "sum", {"seed": 1}),
             EmbeddingBagConfig(8, 2, "t2", ["b"], "sum", {"seed": 2})],
            optimizer=eo.Adagrad(lr=0.1), num_threads=1)

    src = make()
    src({"a": torch.tensor([[1, 2]]), "b": torch.tensor([[3]])}, concat=True).sum().backward()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    key = "embedding_bags.t2.opt_sum" if "opt_sum" in bad else "embedding_bags.t2.opt_step"
    if bad == "negative opt_sum":
        sd[key][0, 0] = -1.0
    elif bad == "nan opt_sum":
        sd[key][0, 0] = float("nan")
    elif bad == "int32 opt_step":
        sd[key] = sd[key].to(torch.int32)
    else:
        sd[key] = torch.tensor(2**62)
    tgt = make()
    before = {k: v.clone() for k, v in tgt.state_dict().items()}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tgt.load_state_dict(sd)
    after = tgt.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# the native pass's steady batches (every ID known: a remap that only counts the step) ///////

POLICY_CFGS = [
    EmbeddingBagConfig(6, 3, "t_lru", ["l"], options={"seed": 1, "on_full": "evict_lru"}),
    EmbeddingBagConfig(6, 3, "t_lfu", ["f"], options={"seed": 2, "on_full": "evict_lfu"}),
    EmbeddingBagConfig(4, 2, "t_exp", ["e"], options={"seed": 3, "expire_after": 2}),
    EmbeddingBagConfig(8, 2, "t_pad", ["p"], pooling="mean", options={"seed": 4, "padding_id": 3}),
    EmbeddingBagConfig(8, 3, "t_min", ["m"], options={"seed": 5, "min_count": 2}),
    EmbeddingBagConfig(4, 2, "t_grow", ["g"], options={"seed": 6}),
    EmbeddingBagConfig(8, 2, "t_shared", ["s1", "s2"], options={"seed": 7}),
    EmbeddingBagConfig(8, 2, "t_frozen", ["z"], options={"seed": 8}),
]


def policy_batches(steps, seed):
    """Batches of 6 bags from a few IDs per feature (most batches after the first few have only
    known IDs); "l", "f", "e", "m" and "z" share one offsets tensor, "z" with more IDs (its
    last bag is longer)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.arange(6)
    out = []
    for step in range(steps):
        pool = 4 if step % 5 else 9  # now and then more IDs than the small tables hold
        feats = {}
        for f in ("l", "f", "e", "m", "z", "p", "g", "s1", "s2"):
            if f in ("l", "f", "e", "m"):
                ids, off = torch.randint(0, pool, (6,), generator=g) * 1009 - 7, shared
            elif f == "z":
                ids, off = torch.randint(0, pool, (9,), generator=g) * 31 + 2**40, shared
            else:
                lengths = torch.randint(0, 3, (6,), generator=g)
                ids = torch.randint(0, pool, (int(lengths.sum()),), generator=g) * 7 + 1
                if f == "p":  # t_pad's padding_id, now and then
                    ids = torch.where(ids == 8, 3, ids)
                off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
            feats[f] = (ids, off)
        out.append((feats, torch.randn(6, 3 + 3 + 2 + 2 + 3 + 2 + 2 + 2 + 2, generator=g)))
    return out


def policy_reference(opt):
    """{table: (independent bag module, its features)}; the frozen table's weight needs no
    gradient (set on both sides)."""
    refs = {}
    for c in POLICY_CFGS:
        m = CuckooEmbeddingBag(c.num_embeddings, c.embedding_dim, mode=c.pooling,
                               optimizer=OPTS[opt](), **c.options)
        refs[c.name] = (m, c.feature_names)
    refs["t_frozen"][0].weight.requires_grad_(False)
    return refs


def policy_ref_forward(refs, feats):
    """The concatenated output, a table's features read in one call (one remap, one step)."""
    cols = []
    for m, names in refs.values():
        ids = torch.cat([feats[f][0] for f in names])
        starts = np.cumsum([0] + [feats[f][0].numel() for f in names[:-1]])
        off = torch.cat([feats[f][1] + int(s) for f, s in zip(names, starts)])
        out = m(ids, off)
        cols += list(out.split(6))
    return torch.cat(cols, dim=1)


@pytest.mark.parametrize("loss", ["squares", "sum"])  # "sum": a gradient of strides (0, 0)
@pytest.mark.parametrize("opt", ["sgd", "rowwise_adagrad"])
def test_native_pass_equals_independent_modules_under_every_policy(opt, loss):
    """Step for step, every buffer (step counts, recency, frequency, expiry, admission sketch,
    optimizer state) and weight equal to independent modules, over batches that are mostly of
    known IDs (the native pass then counts the step alone for tables that keep nothing else),
    one concatenated output (its gradient read per table from one array), a shared table, a
    table that takes no step, and one offsets tensor given to several features."""
    coll = CuckooEmbeddingBagCollection(POLICY_CFGS, optimizer=OPTS[opt](), num_threads=1)
    coll.embedding_bags["t_frozen"].weight.requires_grad_(False)
    refs = policy_reference(opt)
    steady = 0
    for step, (feats, target) in enumerate(policy_batches(30, seed=21)):
        known = all(int((coll.embedding_bags[c.name].lookup(
            torch.cat([feats[f][0] for f in c.feature_names])) < 0).sum()) == 0
            for c in POLICY_CFGS if c.name in ("t_lru", "t_grow", "t_shared"))
        steady += known
        if step % 7 == 6:  # an eval-mode forward now and then: it counts no step
            coll.eval()
            for m, _ in refs.values():
                m.eval()
            close(coll(feats, concat=True), policy_ref_forward(refs, feats), f"eval {step}")
            coll.train()
            for m, _ in refs.values():
                m.train()
        out = coll(feats, concat=True)
        ref_out = policy_ref_forward(refs, feats)
        close(out, ref_out, f"step {step}")
        if loss == "sum":
            out.sum().backward()
            ref_out.sum().backward()
        else:
            ((out - target) ** 2).sum().backward()
            ((ref_out - target) ** 2).sum().backward()
        for name, (m, _) in refs.items():
            got = coll.embedding_bags[name].state_dict()
            want = m.state_dict()
            assert list(got) == list(want)
            for k in want:
                if want[k].is_floating_point():
                    close(got[k], want[k], f"step {step} {name}.{k}")
                else:
                    assert torch.equal(got[k], want[k]), f"step {step} {name}.{k}"
    assert steady >= 10  # the steady path ran
    assert int(coll.embedding_bags["t_frozen"].num_steps) == 30   # training steps only
    assert coll.stats()["t_exp"]["num_expired"] > 0 and coll.stats()["t_lfu"]["num_evictions"] > 0


def test_native_pass_counts_the_steps_of_tables_before_one_that_fails():
    # As independent modules run in order: the tables before a table whose remap fails (here
    # on_full="error" with too few rows) have remapped and count their step, that table and
    # those after it are unchanged.
    cfgs = [EmbeddingBagConfig(8, 2, "s", ["s"], options={"seed": 1}),
            EmbeddingBagConfig(2, 2, "e", ["e"], options={"seed": 2, "on_full": "error"}),
            EmbeddingBagConfig(8, 2, "t", ["t"], options={"seed": 3})]
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.SGD(lr=0.1), num_threads=1)
    one = torch.tensor([0])
    ok = {"s": (torch.tensor([1, 2]), one), "e": (torch.tensor([1]), one),
          "t": (torch.tensor([1]), one)}
    coll(ok, concat=True).sum().backward()
    bad = dict(ok, e=(torch.tensor([5, 6]), one))   # two new IDs for the one free row
    before = {k: v.clone() for k, v in coll.state_dict().items()}
    with pytest.raises(embtab.TableFullError, match="the batch brings 2 new"):
        coll(bad, concat=True)
    after = coll.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["embedding_bags.s.num_steps"]   # "s" (all known) counted its step
    assert int(after["embedding_bags.s.num_steps"]) == 2


def test_a_mapping_that_refills_one_offsets_buffer_per_feature():
    """A Mapping (not a dict) may make or refill a feature's (ids, offsets) on each read: each
    feature's offsets are read as they were given (the per-call CSR reuse is for plain dicts,
    whose values stay as they are during the call), and bad ones are refused."""
    from collections.abc import Mapping

    class Reader(Mapping):
        def __init__(self, d):
            self.d, self.buf = d, torch.zeros(2, dtype=torch.int64)

        def __getitem__(self, k):
            ids, off = self.d[k]
            self.buf.copy_(torch.tensor(off))
            return ids, self.buf

        def __iter__(self):
            return iter(self.d)

        def __len__(self):
            return len(self.d)

    cfgs = [EmbeddingBagConfig(16, 2, "t0", ["a"], options={"seed": 0}),
            EmbeddingBagConfig(16, 2, "t1", ["b"], options={"seed": 1})]
    coll = CuckooEmbeddingBagCollection(cfgs, optimizer=eo.SGD(lr=0.1))
    data = {"a": (torch.arange(4), [0, 1]), "b": (torch.arange(4), [0, 3])}
    got = coll(Reader(data))
    want = coll({f: (ids, torch.tensor(off)) for f, (ids, off) in data.items()})
    for f in want:
        assert torch.equal(got[f], want[f]), f
    bad = {"a": (torch.arange(4), [0, 1]), "b": (torch.arange(4), [0, 9])}
    before = {k: v.clone() for k, v in coll.state_dict().items()}
    with pytest.raises(ValueError, match=r"features\['b'\]: offsets\[-1\]=9 exceeds"):
        coll(Reader(bad))
    after = coll.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_collection_looked_up_twice_in_one_graph_takes_one_step_per_table(kind):
    # Two forwards of one collection in one loss (e.g. a positive and a negative batch): the
    # collection with a torch optimizer accumulates both gradients and steps once; so must
    # the fused one. Adagrad, whose step is not additive, tells one step from two.
    cfgs = [EmbeddingBagConfig(num_embeddings=64, embedding_dim=c.embedding_dim, name=c.name,
                               feature_names=c.feature_names, pooling=c.pooling,
                               options=c.options) for c in configs(kind)]
    fused = KINDS[kind][0](cfgs, optimizer=eo.Adagrad(lr=0.3, initial_accumulator_value=0.1))
    plain = KINDS[kind][0](cfgs)
    topt = torch.optim.Adagrad(plain.parameters(), lr=0.3, initial_accumulator_value=0.1)
    first, second = batches(4, seed=3), batches(4, seed=4)
    for (fa, pa, ta), (fb, pb, tb) in zip(first, second):
        loss = loss_of(fused(fa, pa), ta) + loss_of(fused(fb, pb), tb)
        loss.backward()
        topt.zero_grad()
        (loss_of(plain(fa, pa), ta) + loss_of(plain(fb, pb), tb)).backward()
        topt.step()
        for t, bag in fused.embedding_bags.items():
            close(bag.weight, plain.embedding_bags[t].weight, msg=t)
    assert all(int(b.opt_step) == 4 for b in fused.embedding_bags.values())


def test_bad_jagged_weights_are_named_as_the_jagged_input_gave_them():
    # review: a float64 KeyedJaggedIds weights tensor was reported as "per_sample_weights"
    coll = HashedEmbeddingBagCollection([EmbeddingBagConfig(
        num_embeddings=10, embedding_dim=4, name="t", feature_names=["a"])])
    kj = KeyedJaggedIds(["a"], torch.tensor([1, 2, 3]), torch.tensor([2, 1]),
                        torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"features\['a'\]: the jagged input's weights \(its "
                                        r"per_sample_weights\) must have the weight's dtype"):
        coll(kj)
