"""embtab.nn beside torch's machinery: hooks through growth, functional_call, inference_mode,
AveragedModel, threads and shared memory, DDP, outer optimizers, the meta device,
reset_parameters and state dicts saved with or without a fused optimizer."""

import copy
import multiprocessing
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embtab.optim as eo
from embtab.nn import (
    CuckooEmbedding,
    CuckooEmbeddingBag,
    CuckooEmbeddingBagCollection,
    DoubleHashedEmbedding,
    EmbeddingBagConfig,
    EmbeddingInit,
    HashedEmbedding,
    HashedEmbeddingBag,
    QREmbedding,
    init_vectors,
)


def state_of(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_state(m, state):
    now = m.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def vectors(m, ids):
    """The module's vectors of raw IDs, read in eval mode without changing its mode."""
    was = m.training
    m.eval()
    try:
        with torch.no_grad():
            return m(ids).clone()
    finally:
        m.train(was)


# hooks ///////////////////////////////////////////////////////////////////////////////////////


def test_weight_hooks_fire_after_a_growth_and_removed_ones_stay_removed():
    m = CuckooEmbedding(2, 3)
    fired = []
    h = m.weight.register_hook(lambda g: fired.append(("hook", tuple(g.shape))))
    p = m.weight.register_post_accumulate_grad_hook(
        lambda w: fired.append(("post", tuple(w.grad.shape))))
    m(torch.tensor([1, 2])).sum().backward()
    assert fired == [("hook", (3, 3)), ("post", (3, 3))]
    fired.clear()
    m(torch.tensor([3, 4, 5])).sum().backward()  # grows
    shape = tuple(m.weight.shape)
    assert shape[0] > 3
    assert fired == [("hook", shape), ("post", shape)]
    h.remove()
    fired.clear()
    m(torch.tensor([6, 7, 8, 9, 10])).sum().backward()  # grows again
    shape = tuple(m.weight.shape)
    assert fired == [("post", shape)]
    p.remove()
    fired.clear()
    m(torch.tensor(list(range(11, 30)))).sum().backward()  # and again
    assert fired == []


def test_optimizer_step_in_a_post_accumulate_grad_hook_through_growth():
    """torch's "optimizer step in backward" recipe: equal to a pre-sized module's."""
    def train(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)

        def hook(p):
            opt.step()
            opt.zero_grad()

        m.weight.register_post_accumulate_grad_hook(hook)
        for ids in ([1, 2], [3, 4, 5], [1, 6, 7, 8, 9]):
            m(torch.tensor(ids)).square().sum().backward()
        return vectors(m, torch.arange(1, 10))

    grown = CuckooEmbedding(2, 3)
    got = train(grown)
    assert grown.num_embeddings > 2
    assert torch.equal(got, train(CuckooEmbedding(16, 3)))


# functional_call /////////////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize("rows", [2, 8])  # the insert would grow, or not
def test_functional_call_refuses_inserts_and_reads_the_substituted_weight(rows):
    m = CuckooEmbedding(rows, 3)
    m(torch.tensor([1, 2]))
    state = state_of(m)
    w = m.weight.detach().clone().requires_grad_()
    w0 = w.detach().clone()
    with pytest.raises(RuntimeError, match=r"functional_call.*eval\(\) mode"):
        torch.func.functional_call(m, {"weight": w}, (torch.tensor([1, 2, 3]),))
    assert_state(m, state)
    assert isinstance(m.weight, nn.Parameter) and m.num_ids == 2
    assert torch.equal(w.detach(), w0)
    # IDs the module holds, in training mode: the substituted tensor is read, and trained
    rows12 = m.lookup(torch.tensor([1, 2]))
    out = torch.func.functional_call(m, {"weight": w}, (torch.tensor([2, 1]),))
    assert torch.equal(out, w0[rows12.flip(0)])
    out.sum().backward()
    assert w.grad is not None and torch.equal(w.grad[rows12], torch.ones(2, 3))
    state = state_of(m)  # a training step was counted
    # eval mode: unknown IDs read the zero row of the substituted tensor
    m.eval()
    out = torch.func.functional_call(m, {"weight": w * 2}, (torch.tensor([2, 3]),))
    assert torch.equal(out.detach(), torch.stack([2 * w0[int(rows12[1])], torch.zeros(3)]))
    m.train()
    assert_state(m, state)
    # the module's own Parameter, replaced by valid means, still inserts and grows
    for make in (lambda: copy.deepcopy(m), lambda: pickle.loads(pickle.dumps(m)),
                 lambda: copy.deepcopy(m).double()):
        c = make()
        c(torch.arange(10, 20))
        assert c.num_ids == 12
    c = CuckooEmbedding(rows, 3)
    c.load_state_dict(copy.deepcopy(m.state_dict()), assign=True)
    c(torch.arange(10, 20))
    assert c.num_ids == 12
    m(torch.arange(10, 20))
    assert m.num_ids == 12


# inference_mode //////////////////////////////////////////////////////////////////////////////


@pytest.mark.parametrize("fused", [False, True])
def test_growth_under_inference_mode_then_training(fused):
    def make(n):
        return CuckooEmbedding(n, 3, optimizer=eo.Adam(lr=0.1) if fused else None)

    m, ref = make(2), make(16)
    with torch.inference_mode():
        m(torch.tensor([1, 2, 3]))  # grows
    with torch.no_grad():
        ref(torch.tensor([1, 2, 3]))
    assert m.num_embeddings > 2
    assert not any(t.is_inference() for t in [*m.parameters(), *m.buffers()])
    for mod in (m, ref):
        opt = None if fused else torch.optim.Adam(mod.parameters(), lr=0.1)
        for ids in ([1, 2], [3, 4, 5, 6]):  # the second grows again
            mod(torch.tensor(ids)).square().sum().backward()
            if opt is not None:
                opt.step()
                opt.zero_grad()
    assert torch.equal(vectors(m, torch.arange(1, 7)), vectors(ref, torch.arange(1, 7)))


def test_a_resizing_load_under_inference_mode_then_training():
    src = CuckooEmbedding(16, 3)
    src(torch.arange(1, 10))
    m = CuckooEmbedding(2, 3)
    with torch.inference_mode():
        m.load_state_dict(src.state_dict())
    assert not any(t.is_inference() for t in [*m.parameters(), *m.buffers()])
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.tensor([1, 20])).sum().backward()
    opt.step()
    assert m.num_ids == 10


# AveragedModel, threads, processes, DDP //////////////////////////////////////////////////////


def test_averaged_model_copy_is_refused_rather_than_read_wrong():
    model = nn.Sequential(CuckooEmbedding(8, 2))
    model(torch.tensor([1]))
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5))
    model(torch.tensor([2, 3]))  # IDs the copy's table never saw
    ema.update_parameters(model)  # copies row_ids/row_live into the copy in place
    ema.eval()
    with pytest.raises(RuntimeError, match="AveragedModel"):
        ema(torch.tensor([2]))
    # load_state_dict makes the copy consistent again
    ema.module.load_state_dict(model.state_dict())
    model.eval()
    assert torch.equal(ema(torch.tensor([2, 3])), model(torch.tensor([2, 3])))


def test_training_forwards_on_several_threads_take_turns_and_keep_the_map_whole():
    # Two threads inserting into one module at once corrupted its ID map (review); refusing
    # the second (a first fix) broke threads that only read known IDs in train mode (a second
    # review): the training remaps now take turns on a lock.
    import threading

    # pre-sized: a growth while another thread's forward reads the weight is refused
    # (swap_tensors sees the other reference; nothing changes), as the guide says
    m = CuckooEmbedding(2000, 3)
    ids = [torch.arange(t * 1000, t * 1000 + 400) for t in range(4)]
    errors = []

    def work(t):
        try:
            with torch.no_grad():
                for start in range(0, 400, 20):
                    m(ids[t][start:start + 20])
                    m(ids[t][:start + 20])          # known IDs (no insert)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    all_ids = torch.cat(ids)
    m.eval()
    rows = m.lookup(all_ids)
    live = m.row_live.nonzero().flatten()
    assert m.num_ids == 1600 and len(live) == 1600
    # every ID has its own row, and the map's buffers agree with the table
    assert sorted(m.row_ids[live].tolist()) == sorted(all_ids.tolist())
    assert len(set(rows.tolist())) == 1600 and int(rows.min()) >= 0
    # a training remap waits while another thread holds the lock, then completes
    m.train()
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def holder():
        with m._writer:
            held.set()
            release.wait()

    h = threading.Thread(target=holder, daemon=True)
    h.start()
    held.wait()
    w = threading.Thread(target=lambda: (m(torch.tensor([99_999])), done.set()), daemon=True)
    try:
        w.start()
        w.join(0.2)
        assert not done.is_set()       # it cannot pass the held lock
        m.eval()
        assert m(torch.tensor([1])).shape == (1, 3)   # eval-mode reads take no lock
        m.train()
    finally:
        release.set()
    h.join()
    w.join()
    assert done.is_set() and m.num_ids == 1601


def _shared_child(m, q):
    torch.set_num_threads(1)
    try:
        m(torch.tensor([100, 101]))
        got = "inserted"
    except RuntimeError as e:
        got = str(e)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)  # an ID the parent holds still trains
    m(torch.tensor([1])).sum().backward()
    opt.step()
    q.put((got, m.num_ids))


def _own_child(m, q):
    torch.set_num_threads(1)
    m(torch.tensor([100, 101]))
    q.put(m.num_ids)


def test_a_forked_process_sharing_the_weight_cannot_insert():
    ctx = multiprocessing.get_context("fork")
    m = CuckooEmbedding(16, 2)
    m(torch.tensor([1]))
    # without shared memory a child has its own copy, and may insert
    q = ctx.Queue()
    p = ctx.Process(target=_own_child, args=(m, q))
    p.start()
    assert q.get(timeout=120) == 3
    p.join(60)
    assert p.exitcode == 0
    m.share_memory()
    row = int(m.lookup(torch.tensor([1])))
    before = m.weight[row].detach().clone()
    q = ctx.Queue()
    p = ctx.Process(target=_shared_child, args=(m, q))
    p.start()
    got, child_ids = q.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0
    assert "shared memory" in got and child_ids == 1
    assert m.num_ids == 1
    assert torch.equal(m.weight[row].detach(), before - 1)  # the child's step on ID 1
    m(torch.tensor([100]))  # the creating process still inserts
    assert m.num_ids == 2


def test_growth_refused_while_a_graph_holds_the_weight_names_ddp():
    bag = CuckooEmbeddingBag(2, 3, mode="sum")
    psw = torch.ones(2, requires_grad=True)
    out = bag(torch.tensor([1, 2]), torch.tensor([0]), per_sample_weights=psw)
    with pytest.raises(RuntimeError, match="DistributedDataParallel.*embtab.distributed"):
        bag(torch.tensor([3, 4]), torch.tensor([0]))
    out.sum().backward()


def test_ddp_around_a_plain_cuckoo_module_is_refused(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        base = nn.Sequential(CuckooEmbeddingBag(8, 4, mode="sum"), nn.Linear(4, 1))
        base[0](torch.tensor([[1, 2]]))
        ddp = nn.parallel.DistributedDataParallel(base)  # broadcasts the buffers
        with pytest.raises(RuntimeError, match="DistributedDataParallel"):
            ddp(torch.tensor([[1, 3]]))
    finally:
        dist.destroy_process_group()


# outer optimizers ////////////////////////////////////////////////////////////////////////////


def test_adafactor_over_model_parameters_with_a_fused_module_through_growth():
    def run(outer_over_all):
        torch.manual_seed(0)
        emb = CuckooEmbeddingBag(2, 4, mode="sum", optimizer=eo.Adagrad(lr=0.1))
        head = nn.Linear(4, 1)
        model = nn.Sequential(emb, head)
        opt = torch.optim.Adafactor(
            model.parameters() if outer_over_all else head.parameters(), lr=0.01)
        for b in ([[1, 2]], [[3, 4], [5, 6]], [[7, 8], [9, 1]]):
            model(torch.tensor(b)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        assert emb.num_embeddings > 2 and emb.weight.grad is None
        return vectors(emb, torch.arange(1, 10).view(-1, 1)), head.weight.detach().clone()

    got, want = run(True), run(False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# meta device, reset_parameters ///////////////////////////////////////////////////////////////


MAKERS = {
    "cuckoo": lambda: CuckooEmbedding(4, 3, padding_id=0, on_full="evict_lru", min_count=1),
    "cuckoo_bag": lambda: CuckooEmbeddingBag(4, 3, mode="sum", expire_after=2),
    "hashed": lambda: HashedEmbedding(6, 3, padding_id=0),
    "hashed_bag": lambda: HashedEmbeddingBag(6, 3, mode="sum"),
    "qr": lambda: QREmbedding(12, 4, num_collisions=3),
    "double": lambda: DoubleHashedEmbedding(6, 3),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_built_under_a_meta_device_context_then_to_empty_and_reset(name):
    with torch.device("meta"):
        m = MAKERS[name]()
    assert all(p.device.type == "meta" for p in m.parameters())
    assert all(b.device.type == "cpu" for b in m.buffers())  # the ID map stays on the CPU
    m.to_empty(device="cpu")
    m.reset_parameters()
    ref = MAKERS[name]()
    ids = torch.tensor([[0, 5, 7]])
    assert torch.equal(m(ids), ref(ids))
    assert_state(m, state_of(ref))


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_reset_parameters_restores_the_initial_vectors_and_keeps_the_map(name):
    m, fresh = MAKERS[name](), MAKERS[name]()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    ids = torch.tensor([[0, 5, 7], [9, 5, 11]])
    for _ in range(2):
        m(ids).square().sum().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        fresh(ids)  # the same IDs inserted (cuckoo), nothing trained
    before = state_of(m)
    m.reset_parameters()
    after = m.state_dict()
    for k, v in before.items():  # the ID map and the counters are left alone
        if not k.endswith("weight"):
            assert torch.equal(after[k], v), k
    for k, v in fresh.state_dict().items():
        if k.endswith("weight"):
            assert torch.equal(after[k], v), k
            assert not after[k][-1].any()  # the zero row


def test_reset_parameters_zeroes_the_padding_row_after_to_empty():
    m = CuckooEmbedding(4, 3, padding_id=0)
    m(torch.tensor([1, 2]))
    m.to_empty(device="cpu")
    m.weight.data.fill_(7.0)  # what to_empty's memory may hold
    m.reset_parameters()
    ref = CuckooEmbedding(4, 3, padding_id=0)
    ref(torch.tensor([1, 2]))
    assert torch.equal(m(torch.tensor([0, 1, 2])), ref(torch.tensor([0, 1, 2])))
    assert not m(torch.tensor([0])).any()


# state dicts with and without a fused optimizer //////////////////////////////////////////////


@pytest.mark.parametrize("kind", ["cuckoo", "hashed", "qr"])
def test_a_plain_state_dict_into_a_fused_module(kind):
    def make(opt=None):
        if kind == "cuckoo":
            return CuckooEmbedding(4, 3, optimizer=opt)
        if kind == "hashed":
            return HashedEmbedding(6, 3, optimizer=opt)
        return QREmbedding(12, 4, num_collisions=3, optimizer=opt)

    ids = torch.tensor([1, 2, 3])
    plain = make()
    plain(ids)
    sd = plain.state_dict()
    fused = make(eo.Adagrad(lr=0.1, initial_accumulator_value=0.25))
    fused(torch.tensor([7, 8, 9, 10, 11])).sum().backward()  # grows (cuckoo), has state
    state = state_of(fused)
    with pytest.raises(ValueError, match=r"fused optimizer's state .*missing.*strict=False"):
        fused.load_state_dict(sd)
    assert_state(fused, state)
    result = fused.load_state_dict(sd, strict=False)
    assert result.missing_keys and all(k.rsplit(".", 1)[-1].startswith("opt_")
                                       for k in result.missing_keys)
    # the plain entries loaded, the optimizer's state fresh, as a new module's
    new = make(eo.Adagrad(lr=0.1, initial_accumulator_value=0.25))
    new_state = new.state_dict()
    for k, v in fused.state_dict().items():
        want = sd[k] if k in sd else new_state[k]
        assert torch.equal(v, want.to(v.dtype)), k
    assert torch.equal(vectors(fused, ids), vectors(plain, ids))
    fused(ids).sum().backward()  # trains on


def test_fused_state_into_a_plain_module_points_at_optimizer():
    fused = CuckooEmbedding(4, 3, optimizer=eo.Adam(lr=0.1))
    fused(torch.tensor([1, 2])).sum().backward()
    plain = CuckooEmbedding(4, 3)
    with pytest.raises(ValueError, match=r"unexpected keys .*opt_.*optimizer=.*strict=False"):
        plain.load_state_dict(fused.state_dict())
    plain.load_state_dict(fused.state_dict(), strict=False)
    assert torch.equal(vectors(plain, torch.tensor([1, 2])), vectors(fused, torch.tensor([1, 2])))
    hashed = HashedEmbedding(6, 3)
    with pytest.raises(ValueError, match=r"optimizer="):
        hashed.load_state_dict(HashedEmbedding(6, 3, optimizer=eo.SGD(lr=0.1)).state_dict())


def test_an_eviction_under_inference_mode_leaves_a_normal_gradient():
    """An eviction clears the evicted rows' accumulated gradient (a new tensor for a sparse
    one): under inference_mode, still a normal tensor that training changes in place later."""
    m = CuckooEmbedding(2, 3, on_full="evict_lru", sparse=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.tensor([1, 2])).sum().backward()  # accumulated, not stepped yet
    with torch.inference_mode():
        m(torch.tensor([3]))  # evicts ID 1 (its gradient rows cleared)
    assert not m.weight.grad.is_inference()
    m(torch.tensor([3])).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    assert m.num_evictions == 1


def test_a_cpu_module_grows_inside_another_device_context():
    """What a training forward allocates (init vectors, grown buffers) stays on the CPU, as
    the module's state is, whatever device context the caller has entered."""
    m, ref = CuckooEmbedding(2, 3), CuckooEmbedding(16, 3)
    ids = torch.tensor([1, 2, 3, 4, 5])
    with torch.device("meta"):
        out = m(ids)  # grows
    assert out.device.type == "cpu" and m.num_embeddings > 2
    assert all(t.device.type == "cpu" for t in [*m.parameters(), *m.buffers()])
    ref(ids)
    assert torch.equal(vectors(m, ids), vectors(ref, ids))
    raw = np.array([7, -1, 2**40], dtype=np.int64)
    want = init_vectors(raw, 4, 3, EmbeddingInit("uniform", -1.0, 1.0))
    with torch.device("meta"):
        got = init_vectors(raw, 4, 3, EmbeddingInit("uniform", -1.0, 1.0))
    assert got.device.type == "cpu" and torch.equal(got, want)
    with torch.device("meta"):  # a CPU module with a fused optimizer built in the context
        f = CuckooEmbedding(4, 3, device="cpu", optimizer=eo.SGD(lr=0.1, momentum=0.9))
    assert all(t.device.type == "cpu" for t in [*f.parameters(), *f.buffers()])
    f(ids).sum().backward()
    assert int(f.opt_step) == 1


@pytest.mark.parametrize("capacity", [1000, 8])   # 8: the forward grows the module
def test_a_module_built_under_inference_mode_trains_under_it(capacity):
    # A whole-diff review: switching inference mode off inside the module's insert made a
    # module built under inference_mode (inference tensors) fail half-way, then read zeros
    with torch.inference_mode():
        m = CuckooEmbedding(capacity, 4)
        ids = torch.arange(100, 200)
        out = m(ids)
        assert m.num_ids == 100 and bool((out.norm(dim=1) > 0).all())
        m.eval()
        torch.testing.assert_close(m(ids), out)
