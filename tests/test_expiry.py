"""Time-based expiry of CuckooEmbedding(Bag) (``expire_after``) against a lifetime oracle.

The oracle is an ``nn.Embedding`` with one row per ID *lifetime*, trained with the same torch
optimizer: a lifetime starts at the ID's init vector when the ID gets a row and ends when the ID
has not been looked up for ``expire_after`` steps (decided here from the definition, not read
from the module) or when an eviction takes its row (read from the module's counters). The
module must give the same bits at every step.
"""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import embtab.optim as eo
from embtab.nn import CuckooEmbedding, CuckooEmbeddingBag, EmbeddingInit, init_vectors

pytestmark = pytest.mark.filterwarnings(
    # torch's sparse Adagrad / SparseAdam build sparse tensors without opting in or out of checks.
    "ignore:Sparse invariant checks are implicitly disabled:UserWarning"
)

D = 3
SEED = 2
PAD = 7001

OPTIMIZERS = {
    "SGD": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "Adagrad": (torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.3)),
    "Adam": (torch.optim.Adam, dict(lr=0.05, amsgrad=True)),
    "SparseAdam": (torch.optim.SparseAdam, dict(lr=0.05)),
    "Rprop": (torch.optim.Rprop, dict(lr=0.02, step_sizes=(1e-4, 0.3))),
    # sparse gradients: torch keeps SGD's momentum as a sparse tensor, whose sparse additions
    # merge or concatenate a row's entries depending on the buffer's history: equal up to
    # float rounding, not bit for bit
    "SGD_sparse": (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
}


def state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def stream(step, g):
    """IDs of a step: a drifting window of 8 IDs over 1001, 2001, ..., so IDs leave and return."""
    lo = step // 3
    x = (torch.randint(lo, lo + 8, (4,), generator=g) % 14) * 1000 + 1
    if step % 5 == 4:
        x[0] = PAD
    return x


class Lifetimes:
    """The oracle's bookkeeping: ID -> reference row of its open lifetime, last-seen step, and
    sightings while without a row (admission)."""

    def __init__(self, expire_after, min_count):
        self.E, self.c = expire_after, min_count
        self.row, self.last, self.count = {}, {}, {}
        self.next_row = 0
        self.expired = 0

    def step(self, t, x, ref):
        """Open lifetimes for the IDs of batch x admitted at step t; return their reference rows
        (the zero row L for padding and not-yet-admitted IDs)."""
        L = ref.num_embeddings - 1
        ids = [i for i in x.tolist() if i != PAD]
        for i in ids:
            if i not in self.row:
                self.count[i] = self.count.get(i, 0) + 1
        for i in dict.fromkeys(ids):
            if i not in self.row and self.count[i] >= self.c:
                self.row[i], self.next_row = self.next_row, self.next_row + 1
                with torch.no_grad():
                    ref.weight[self.row[i]] = init_vectors(np.array([i]), D, SEED, EmbeddingInit())[0]
        for i in ids:
            if i in self.row:
                self.last[i] = t
        return torch.tensor([self.row.get(i, L) if i != PAD else L for i in x.tolist()])

    def due(self, t):
        """IDs whose lifetime the definition ends at the end of step t."""
        return {i for i in self.row if t - self.last[i] >= self.E}


def run(name, expire_after=2, steps=14, bag=False, min_count=1, **kw):
    """Train the module and its lifetime oracle side by side; check the bits and the live set at
    every step. Returns (module, its optimizer, oracle lifetimes, reference weight)."""
    cls_opt, okw = OPTIMIZERS[name]
    sparse = cls_opt is torch.optim.SparseAdam or name.endswith("_sparse")
    cls = CuckooEmbeddingBag if bag else CuckooEmbedding
    extra = dict(mode="sum") if bag else {}
    emb = cls(kw.pop("num_embeddings", 4), D, sparse=sparse, seed=SEED, padding_id=PAD,
              expire_after=expire_after, min_count=min_count, **extra, **kw)
    Lrows = 128
    ref = nn.Embedding(Lrows + 1, D, padding_idx=Lrows, sparse=sparse)
    with torch.no_grad():
        ref.weight.zero_()
    opt, ropt = cls_opt(emb.parameters(), **okw), cls_opt(ref.parameters(), **okw)
    life = Lifetimes(expire_after, min_count)
    g = torch.Generator().manual_seed(7)
    for t in range(1, steps + 1):
        x = stream(t, g)
        tgt = torch.randn(2 if bag else 4, D, generator=g)
        before = dict(emb.stats())
        out = emb(x.reshape(2, 2)) if bag else emb(x)
        rrows = life.step(t, x, ref)
        rout = ref(rrows.reshape(2, 2)).sum(1) if bag else ref(rrows)
        same(out, rout, name, t)
        # The live set after the step: the definition's expiries, and evictions by the policy.
        live = set(emb._table.items()[0].tolist())
        due = life.due(t)
        assert not (due & live), (t, due & live)
        gone = set(life.row) - live
        st = emb.stats()
        n_evicted = st["num_evictions"] - before["num_evictions"]
        n_expired = st["num_expired"] - before["num_expired"]
        assert len(gone) == n_evicted + n_expired and due <= gone
        if emb.on_full.value in ("grow", "error"):
            assert gone == due and n_evicted == 0
        else:
            assert n_expired <= len(due) and not ((gone - due) & set(x.tolist()))
        life.expired += n_expired
        for i in gone:
            del life.row[i]
        assert set(life.row) == live
        for o, y in ((opt, out), (ropt, rout)):
            o.zero_grad()
            ((y - tgt) ** 2 + 0.1 * y**3).sum().backward()
            o.step()
    assert life.next_row < Lrows
    ids = torch.tensor(sorted(life.row))
    rows = emb.lookup(ids)
    same(emb.weight.detach()[rows], ref.weight.detach()[[life.row[i] for i in ids.tolist()]], name)
    return emb, opt, life


def same(a, b, name, *where):
    if name.endswith("_sparse"):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(a, b), (name, *where)


# the lifetime oracle, bit for bit ////////////////////////////////////////////////////////////


@pytest.mark.parametrize(
    "name, policy",
    [(n, p) for n in OPTIMIZERS for p in ("grow", "evict_lru")]
    + [("SGD", "evict_lfu"), ("Adam", "evict_lfu"), ("Adagrad", "error"), ("Rprop", "error")],
    # SGD_sparse + grow: a sparse momentum buffer padded on growth (it raised
    # NotImplementedError before) and its reused rows reset
)
def test_expiry_matches_lifetime_reference(name, policy):
    n = 16 if policy == "error" else 4
    emb, _, life = run(name, on_full=policy, num_embeddings=n)
    assert life.expired >= 4 and emb.stats()["num_expired"] == life.expired
    if policy.startswith("evict"):
        assert emb.stats()["num_evictions"] > 0


@pytest.mark.parametrize("policy", ["grow", "evict_lru"])
@pytest.mark.parametrize("expire_after", [1, 3])
def test_expiry_with_admission_and_bags(policy, expire_after):
    emb, _, life = run("Adam", expire_after=expire_after, bag=True, min_count=2, on_full=policy,
                       num_embeddings=4, steps=16)
    assert life.expired > 0
    # An expired ID keeps its sighting count: some lifetime began at the first sighting after
    # an expiry (more lifetimes than IDs that ever reached min_count).
    assert life.next_row > len([i for i, c in life.count.items() if c >= 2])


def test_hand_worked_schedule():
    emb = CuckooEmbedding(4, 2, expire_after=2)
    # step: batch      -> live after the step (last-seen step)
    # 1: [1, 2]        -> 1 (1), 2 (1)
    # 2: [1]           -> 1 (2), 2 (1)          2 - 1 < 2
    # 3: [1]           -> 1 (3)                 ID 2: 3 - 1 >= 2, expired; row 1 is free
    # 4: [3]           -> 1 (3), 3 (4)          ID 3 takes the lowest free row, 1
    # 5: [1, 2]        -> 1 (5), 3 (4), 2 (5)   ID 1: 5 - 3 = 2 but seen at 5; ID 2 gets row 2
    # 6: []            -> 1 (5), 3 (4)... ID 3: 6 - 4 >= 2, expired
    expect = [
        ([1, 2], [0, 1, -1], 0),
        ([1], [0, 1, -1], 0),
        ([1], [0, -1, -1], 1),
        ([3], [0, -1, 1], 1),
        ([1, 2], [0, 2, 1], 1),
        ([], [0, 2, -1], 2),
    ]
    for batch, rows, expired in expect:
        emb(torch.tensor(batch, dtype=torch.int64))
        assert emb.lookup(torch.tensor([1, 2, 3])).tolist() == rows, batch
        assert emb.stats()["num_expired"] == expired
    assert emb.stats()["num_steps"] == 6 and emb.num_ids == 2
    fresh = CuckooEmbedding(4, 2)
    assert torch.equal(emb.weight.detach()[1], fresh(torch.tensor([3]))[0].detach())
    assert torch.count_nonzero(emb.weight.detach()[4]) == 0


def test_eval_and_pretrained_ids():
    emb = CuckooEmbedding.from_pretrained(torch.tensor([5, 6]), torch.eye(2), expire_after=1)
    emb.eval()
    for _ in range(3):
        emb(torch.tensor([5]))  # eval forwards are not steps
    assert emb.num_ids == 2 and emb.stats()["num_steps"] == 0
    emb.train()
    emb(torch.tensor([5]))  # step 1: ID 6 (seen at step 0) expires, ID 5 stays
    assert emb.lookup(torch.tensor([5, 6])).tolist() == [0, -1]
    with torch.no_grad():
        emb(torch.tensor([9]))  # a no_grad training forward is a step: ID 5 expires
    assert emb.lookup(torch.tensor([5, 9])).tolist() == [-1, 1]


# fused optimizers ////////////////////////////////////////////////////////////////////////////

FUSED = {
    "sgd": (lambda: eo.SGD(lr=0.3), lambda p: torch.optim.SGD(p, lr=0.3), False),
    "adagrad": (lambda: eo.Adagrad(lr=0.2, initial_accumulator_value=0.1),
                lambda p: torch.optim.Adagrad(p, lr=0.2, initial_accumulator_value=0.1), False),
    "adam": (lambda: eo.Adam(lr=0.05), lambda p: torch.optim.SparseAdam(p, lr=0.05), True),
}


@pytest.mark.parametrize("policy", ["grow", "evict_lru", "evict_lfu"])
@pytest.mark.parametrize("opt", list(FUSED))
def test_fused_optimizer_equals_unfused_through_expiry(opt, policy):
    make_fused, make_torch, sparse = FUSED[opt]
    kw = dict(mode="sum", on_full=policy, expire_after=2, seed=4, padding_id=PAD)
    fused = CuckooEmbeddingBag(4, D, optimizer=make_fused(), **kw)
    ref = CuckooEmbeddingBag(4, D, sparse=sparse, **kw)
    topt = make_torch(list(ref.parameters()))
    g = torch.Generator().manual_seed(3)
    for t in range(1, 15):
        x = stream(t, g).reshape(2, 2)
        tgt = torch.randn(2, D, generator=g)
        lf = ((fused(x) - tgt) ** 2).sum()
        lf.backward()
        topt.zero_grad()
        lr = ((ref(x) - tgt) ** 2).sum()
        lr.backward()
        topt.step()
        torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
        assert fused.stats() == ref.stats()
        assert torch.equal(fused.row_ids[fused.row_live], ref.row_ids[ref.row_live])
        torch.testing.assert_close(fused.weight.detach(), ref.weight.detach(), rtol=1e-5, atol=1e-5)
    assert fused.stats()["num_expired"] >= 2


def test_expired_row_reused_gets_fresh_fused_state():
    emb = CuckooEmbedding(2, D, expire_after=1, optimizer=eo.Adagrad(lr=0.1, initial_accumulator_value=0.5))
    emb(torch.tensor([10])).sum().backward()  # ID 10 -> row 0, its accumulator moves
    assert not torch.all(emb.opt_sum[0] == 0.5)
    emb(torch.tensor([11])).sum()  # ID 10 expires (not looked up at step 2)
    emb(torch.tensor([12])).sum()  # ID 11 expires, ID 12 takes row 0 with fresh state
    assert emb.lookup(torch.tensor([10, 11, 12])).tolist() == [-1, -1, 0]
    assert torch.all(emb.opt_sum[0] == 0.5)


# pinned rows, unknown optimizers ////////////////////////////////////////////////////////////


def test_a_pending_graph_keeps_its_row_past_expiry():
    emb = CuckooEmbedding(4, 2, expire_after=1)
    a = emb(torch.tensor([1]))  # step 1, pending: row 0 is pinned
    emb(torch.tensor([2])).sum().backward()  # step 2: ID 1 is due but pinned
    assert emb.lookup(torch.tensor([1])).tolist() == [0] and emb.stats()["num_expired"] == 0
    emb.weight.grad = None
    a.sum().backward()  # the gradient reaches ID 1's row, not a new owner's
    assert emb.weight.grad[0].tolist() == [1.0, 1.0]
    emb(torch.tensor([3])).sum().backward()  # step 3: ID 1 (released) and ID 2 expire
    assert emb.lookup(torch.tensor([1, 2, 3])).tolist() == [-1, -1, 2]
    assert emb.stats()["num_expired"] == 2


def test_unknown_optimizer_refused_when_an_expired_row_is_reused():
    class MySGD(torch.optim.SGD):
        pass

    emb = CuckooEmbedding(4, 2, expire_after=1)
    opt = MySGD(emb.parameters(), lr=0.1, momentum=0.9)
    for ids in ([1], [2]):  # ID 1 expires at step 2; no row reused yet: fine
        opt.zero_grad()
        emb(torch.tensor(ids)).sum().backward()
        opt.step()
    opt.zero_grad()
    emb(torch.tensor([3])).sum().backward()  # ID 3 takes ID 1's row: its momentum must reset
    w = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="per-row optimizer state of MySGD"):
        opt.step()
    assert torch.equal(emb.weight.detach(), w)


# state_dict ///////////////////////////////////////////////////////////////////////////////////


def train(emb, opt, steps, start=0):
    g = torch.Generator().manual_seed(11)
    losses = []
    for t in range(start + steps):
        x = stream(t, g)
        tgt = torch.randn(4, D, generator=g)
        if t < start:
            continue
        loss = ((emb(x) - tgt) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kw", [dict(on_full="grow"), dict(on_full="evict_lfu", min_count=2)])
def test_state_dict_round_trip_mid_stream(kw):
    kw = dict(expire_after=2, seed=5, padding_id=PAD, **kw)
    a = CuckooEmbedding(4, D, **kw)
    oa = torch.optim.Adam(a.parameters(), lr=0.05)
    la = train(a, oa, 14)
    b = CuckooEmbedding(4, D, **kw)
    ob = torch.optim.Adam(b.parameters(), lr=0.05)
    lb = train(b, ob, 7)
    buf = io.BytesIO()
    torch.save({"emb": b.state_dict(), "opt": ob.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    c = CuckooEmbedding(2, D, **kw)
    c.load_state_dict(saved["emb"])
    oc = torch.optim.Adam(c.parameters(), lr=0.05)
    oc.load_state_dict(saved["opt"])
    assert c.stats() == b.stats() and c.stats()["num_expired"] > 0
    assert torch.equal(c.row_last_step, b.row_last_step)
    lc = train(c, oc, 7, start=7)
    assert lb + lc == la
    assert torch.equal(c.weight, a.weight) and c.stats() == a.stats()


def test_pickle_keeps_expiry():
    emb = CuckooEmbedding(4, 2, expire_after=3)
    emb(torch.tensor([1, 2]))
    for other in (pickle.loads(pickle.dumps(emb)), copy.deepcopy(emb)):
        assert other.expire_after == 3
        for _ in range(3):
            other(torch.tensor([1]))
        assert other.lookup(torch.tensor([1, 2])).tolist() == [0, -1]


def _tampered(sd):
    def edit(**kw):
        out = {k: v.clone() for k, v in sd.items()}
        for k, v in kw.items():
            if v is None:
                del out[k]
            else:
                out[k] = v(out[k]) if callable(v) else v
        return out

    steps = int(sd["num_steps"])
    return [
        edit(row_last_step=lambda t: torch.where(torch.arange(t.numel()) == 0, steps + 1, t)),
        edit(row_last_step=lambda t: t.to(torch.int32)),
        edit(row_last_step=lambda t: t[:-1]),
        edit(row_last_step=lambda t: t - 100),
        edit(row_last_step=None),
        edit(num_expired=lambda t: t + 1),
        edit(num_expired=torch.tensor(-1)),
        edit(num_expired=None),
        edit(num_expired=torch.tensor([0, 1])),
    ]


def test_tampered_expiry_state_refused_and_nothing_changes():
    kw = dict(expire_after=2, on_full="evict_lru", seed=3)
    src = CuckooEmbedding(6, 3, **kw)
    for t in range(6):
        src(torch.tensor([t, t + 1, 100]))
    assert src.stats()["num_expired"] > 0
    sd = src.state_dict()
    dst = CuckooEmbedding(4, 3, **kw)
    dst(torch.tensor([7, 8]))
    for i, bad in enumerate(_tampered(sd)):
        before = state(dst)
        items = [a.copy() for a in dst._table.items()]
        with pytest.raises(ValueError, match="load_state_dict: (row_last_step|num_expired)"):
            dst.load_state_dict(bad)
        assert_state_equal(before, state(dst))
        assert all(np.array_equal(a, b) for a, b in zip(items, dst._table.items())), i
    # Another configuration's state: keys differ both ways.
    plain = CuckooEmbedding(6, 3, on_full="evict_lru", seed=3)
    plain(torch.tensor([1, 2]))
    before = state(dst)
    with pytest.raises(ValueError, match="num_expired is missing"):
        dst.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="unexpected keys.*num_expired.*expire_after"):
        plain.load_state_dict(sd)
    assert_state_equal(before, state(dst))
    dst.load_state_dict(sd)
    assert dst.stats() == src.stats()


# bad input ///////////////////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize(
    "value, exc",
    [(0, ValueError), (-3, ValueError), (2**63, ValueError), (10**30, ValueError),
     (True, TypeError), (2.0, TypeError), (float("inf"), TypeError), ("5", TypeError),
     (np.float64(3), TypeError), (torch.tensor(3), TypeError)],
)
@pytest.mark.parametrize("bag", [False, True])
def test_bad_expire_after_refused_naming_it(value, exc, bag):
    cls = CuckooEmbeddingBag if bag else CuckooEmbedding
    with pytest.raises(exc, match="expire_after"):
        cls(4, 2, expire_after=value)


def test_expire_after_bounds_accepted():
    assert CuckooEmbedding(2, 2, expire_after=np.int64(1)).expire_after == 1
    big = CuckooEmbedding(2, 2, expire_after=2**63 - 1)
    for t in range(3):
        big(torch.tensor([t]))
    assert big.stats()["num_expired"] == 0 and big.num_ids == 3


@pytest.mark.parametrize("bag", [False, True])
def test_sharded_modules_refuse_expiry(bag):
    from embtab.distributed import ShardedCuckooEmbedding, ShardedCuckooEmbeddingBag

    cls = ShardedCuckooEmbeddingBag if bag else ShardedCuckooEmbedding
    with pytest.raises(ValueError, match="expire_after is not supported by the sharded modules"):
        cls(8, 4, expire_after=3)  # refused before the process group is looked at


def test_an_eval_output_that_needs_a_gradient_pins_its_rows_and_one_under_no_grad_does_not():
    # (documented in CuckooEmbedding's Notes: its backward would still write the rows)
    import torch

    import embtab.nn as enn

    for keep in (True, False):
        m = enn.CuckooEmbedding(8, 2, expire_after=1)
        m(torch.tensor([14])).sum().backward()
        m.eval()
        if keep:
            preds = m(torch.tensor([14, 5]))
        else:
            with torch.no_grad():
                preds = m(torch.tensor([14, 5]))
        m.train()
        m(torch.tensor([1])).sum().backward()
        m(torch.tensor([2])).sum().backward()
        live = sorted(m.row_ids[m.row_live].tolist())
        assert live == ([2, 14] if keep else [2]), (keep, live)
        assert preds.shape == (2, 2)
    m = enn.CuckooEmbedding(2, 2, on_full="evict_lru")
    m(torch.tensor([14, 15])).sum().backward()
    m.eval()
    preds = m(torch.tensor([14, 15]))
    m.train()
    with pytest.raises(ValueError, match="can be evicted"):
        m(torch.tensor([1])).sum().backward()
    del preds   # the graph freed: its rows are free to go
    m(torch.tensor([1])).sum().backward()
    assert 1 in m.row_ids[m.row_live].tolist()
