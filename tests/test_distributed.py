"""embtab.distributed against the single-process modules, on 1-3 gloo ranks over loopback.

Workers are started by ``torch.multiprocessing`` (fork: a spawned interpreter re-imports torch
for seconds per rank on this machine) and rendezvous through a ``file://`` store under tmp_path.
Every worker recomputes the single-process reference itself (the data is a function of the seed)
and asserts on the IDs it owns; a failing assertion comes back through ``start_processes``.
"""

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

import embtab.distributed
import embtab.nn
import embtab.optim as eo
from embtab.distributed import ShardedCommError, ShardedCuckooEmbedding, ShardedCuckooEmbeddingBag

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

DIM = 4
SEED = 7
# A small pool of raw IDs, extremes and big unsigned ones included (int64 bit patterns).
POOL = np.array([0, 1, 2, 3, 17, 99, 12345, -1, -(2**63), 2**63 - 1, -5, 2**40 + 3,
                 31, 64, 1000003, -77, 555, 8, 9, 10], dtype=np.int64)
PAD = 17

# The first optimizer built in a process imports torch's compiler stack (seconds); do it once
# here, so that forked workers inherit it instead of each paying for it.
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


# A worker that hangs (in a collective, or in torch's own teardown) fails its test after this
# long instead of holding up the whole suite; a normal start takes 1-3 s.
START_TIMEOUT_S = 120.0


def _start(fn, world_size, *args):
    ctx = tmp.start_processes(fn, args=(world_size, *args), nprocs=world_size, join=False,
                              start_method="fork")
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):  # raises a rank's error
            if time.monotonic() >= deadline:
                hung = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
                pytest.fail(f"{fn.__name__}: rank(s) {hung} of {world_size} still running after "
                            f"{START_TIMEOUT_S:.0f} s (hung)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join()


def _init(rank, world_size, store, timeout_s=30.0):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def _global_batch(step, bag):
    """The global batch of a step: (ids, targets, per-sample weights or None); a rank takes its
    np.array_split chunk. ``bag``: False (embedding), "mean" or "sum" (bags)."""
    rng = np.random.default_rng([SEED, step])
    if bag:
        ids = POOL[rng.integers(0, len(POOL), size=(7, 3))]
    else:
        ids = POOL[rng.integers(0, len(POOL), size=(9, 2))]
    tgt = torch.from_numpy(rng.standard_normal((ids.shape[0],) + ((DIM,) if bag else (2, DIM)))).float()
    psw = torch.from_numpy(rng.random(ids.shape)).float() if bag == "sum" else None
    return torch.from_numpy(ids), tgt, psw


def _forward(m, ids, psw):
    return m(ids) if psw is None else m(ids, per_sample_weights=psw)


def _loss(out, tgt):
    return ((out - tgt) ** 2).sum() + (out ** 3).sum() * 0.01  # a sum over elements: splits over ranks


def _make(bag, sharded, **kw):
    common = {"seed": SEED, "num_embeddings": 4, "embedding_dim": DIM}
    if bag == "mean":  # every occurrence travels (admission counts them)
        common.update(mode="mean", padding_id=PAD, min_count=2)
    elif bag == "sum":  # distinct IDs travel once per rank and step
        common.update(mode="sum", padding_id=PAD)
    if bag:
        cls = ShardedCuckooEmbeddingBag if sharded else embtab.nn.CuckooEmbeddingBag
    else:
        cls = ShardedCuckooEmbedding if sharded else embtab.nn.CuckooEmbedding
    m = cls(**common, **kw)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return m, opt


def _train(m, opt, steps, bag, rank=None, world_size=None, check_ref_outputs=None):
    for step in steps:
        ids, tgt, psw = _global_batch(step, bag)
        if rank is not None:
            part = np.array_split(np.arange(ids.shape[0]), world_size)[rank]
            ids, tgt = ids[part], tgt[part]
            psw = None if psw is None else psw[part]
        opt.zero_grad()
        out = _forward(m, ids, psw)
        if check_ref_outputs is not None:
            torch.testing.assert_close(out, check_ref_outputs[step][torch.from_numpy(part)])
        _loss(out, tgt).backward()
        opt.step()


def _reference(bag, steps):
    """Single-process module trained on the global batches; outputs per step."""
    m, opt = _make(bag, sharded=False)
    outs = {}
    for step in steps:
        ids, tgt, psw = _global_batch(step, bag)
        opt.zero_grad()
        out = _forward(m, ids, psw)
        outs[step] = out.detach().clone()
        _loss(out, tgt).backward()
        opt.step()
    return m, opt, outs


def _same_ids_and_vectors(sharded, ref):
    """Assert that the shard holds exactly the reference's IDs that this rank owns, with equal
    vectors; return (the shard's rows, the reference's rows) of those IDs (rows differ)."""
    ref_ids, ref_rows = ref._table.items()
    ref_ids = ref_ids.view(np.int64)
    mine = sharded.owner_of(torch.from_numpy(ref_ids)).numpy() == sharded.rank
    sh_ids, _ = sharded.shard._table.items()
    assert sorted(sh_ids.view(np.int64).tolist()) == sorted(ref_ids[mine].tolist())
    rows = sharded.shard.lookup(torch.from_numpy(ref_ids[mine]))
    rr = torch.from_numpy(ref_rows[mine])
    torch.testing.assert_close(sharded.weight.detach()[rows], ref.weight.detach()[rr])
    return rows, rr


def _assert_same_per_id(sharded, sopt, ref, ropt):
    """The shard holds exactly the reference's IDs that this rank owns, with equal vectors and
    momentum, compared by ID."""
    rows, rr = _same_ids_and_vectors(sharded, ref)
    sm = sopt.state[sharded.weight]["momentum_buffer"]
    rm = ropt.state[ref.weight]["momentum_buffer"]
    torch.testing.assert_close(sm[rows], rm[rr])


# forward / backward equality /////////////////////////////////////////////////////////////////


def _w_equal(rank, world_size, store, bag):
    _init(rank, world_size, store)
    steps = range(5)
    ref, ropt, outs = _reference(bag, steps)
    m, opt = _make(bag, sharded=True)
    assert m.dedup == (bag != "mean")
    _train(m, opt, steps, bag, rank, world_size, check_ref_outputs=outs)
    _assert_same_per_id(m, opt, ref, ropt)
    # Every occurrence of an ID reaches its owner: the shards together hold every ID once.
    n = torch.tensor([m.num_ids])
    dist.all_reduce(n)
    assert int(n) == ref.num_ids
    dist.destroy_process_group()


@pytest.mark.parametrize("bag", [False, "mean", "sum"], ids=["embedding", "bag_mean", "bag_sum"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_matches_single_process(tmp_path, world_size, bag):
    _start(_w_equal, world_size, str(tmp_path / "store"), bag)


def _w_eval_and_empty(rank, world_size, store):
    _init(rank, world_size, store)
    m, _ = _make(False, sharded=True)
    # Rank 1 brings no IDs: the collectives still line up.
    ids = torch.tensor([3, 99, -1]) if rank == 0 else torch.zeros(0, dtype=torch.int64)
    out = m(ids)
    assert out.shape == (ids.numel(), DIM)
    m.eval()
    out2 = m(torch.tensor([3, 424242]) if rank == 0 else torch.zeros(0, dtype=torch.int64))
    if rank == 0:
        torch.testing.assert_close(out2[0], out[0].detach())
        assert torch.count_nonzero(out2[1]) == 0  # unknown in eval: the zero vector, not inserted
    assert m.shard.lookup(torch.tensor([424242])).item() == -1
    dist.destroy_process_group()


def test_empty_rank_and_eval_mode(tmp_path):
    _start(_w_eval_and_empty, 2, str(tmp_path / "store"))


def _w_bag_no_bags(rank, world_size, store):
    """A rank with no bags passes empty 1-D ids and offsets, as nn.EmbeddingBag takes them; the
    collectives still line up and the shards equal one process fed rank 0's bags."""
    _init(rank, world_size, store)
    ref, _ = _make("sum", sharded=False, optimizer=FUSED["adagrad"]())
    m, _ = _make("sum", sharded=True, optimizer=FUSED["adagrad"]())
    ids, offsets = torch.from_numpy(POOL[[3, 5, 9, 3, 11]]), torch.tensor([0, 2, 2])
    empty = torch.zeros(0, dtype=torch.int64)
    for _ in range(2):
        ref(ids, offsets).square().sum().backward()
        out = m(ids, offsets) if rank == 0 else m(empty, empty)
        assert out.shape == ((3, DIM) if rank == 0 else (0, DIM))
        out.square().sum().backward()
    _assert_fused_same_per_id(m, ref)
    dist.destroy_process_group()


def test_a_rank_with_no_bags_passes_empty_ids_and_offsets(tmp_path):
    _start(_w_bag_no_bags, 2, str(tmp_path / "store"))


def _w_evict(rank, world_size, store):
    _init(rank, world_size, store)
    m = ShardedCuckooEmbedding(12, DIM, seed=SEED, on_full="evict_lru")  # 6 rows per shard
    # The shard behaves as a standalone module fed, each step, what the shard receives: each
    # source rank's distinct IDs that this rank owns, sources in rank order.
    ref = embtab.nn.CuckooEmbedding(6, DIM, seed=SEED, on_full="evict_lru")
    rng = np.random.default_rng(SEED)
    for _ in range(8):
        ids = torch.from_numpy(POOL[rng.integers(0, len(POOL), size=6)])
        parts = [ids[torch.from_numpy(p)] for p in np.array_split(np.arange(6), world_size)]
        m(parts[rank])
        got = [np.unique(p.numpy()) for p in parts]
        ref(torch.from_numpy(np.concatenate([g[m.owner_of(torch.from_numpy(g)).numpy() == rank] for g in got])))
    assert m.shard.num_embeddings == 6  # evicted, never grew
    assert m.stats()["num_evictions"] == ref.stats()["num_evictions"]
    assert sorted(m.shard._table.items()[0].tolist()) == sorted(ref._table.items()[0].tolist())
    ev = torch.tensor([ref.stats()["num_evictions"]])
    dist.all_reduce(ev)
    assert int(ev) > 0
    dist.destroy_process_group()


def test_eviction_per_shard(tmp_path):
    _start(_w_evict, 2, str(tmp_path / "store"))


def _w_ddp(rank, world_size, store):
    _init(rank, world_size, store)
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from embtab.distributed import sharded_parameter_names

    torch.manual_seed(0)
    model = nn.Sequential(ShardedCuckooEmbeddingBag(8, DIM, mode="sum", seed=SEED), nn.Linear(DIM, 1))
    assert sharded_parameter_names(model) == ["0.shard.weight"] + [
        f"0.shard.{n}" for n, _ in model[0].shard.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, sharded_parameter_names(model))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    rng = np.random.default_rng([SEED, rank])
    for _ in range(3):
        opt.zero_grad()
        ddp(torch.from_numpy(POOL[rng.integers(0, len(POOL), size=(4, 3))])).sum().backward()
        opt.step()
    # The dense part is averaged by DDP (identical on every rank); the shards differ.
    w = [torch.zeros(DIM + 1) for _ in range(world_size)]
    dist.all_gather(w, torch.cat([model[1].weight.detach().reshape(-1), model[1].bias.detach()]))
    for x in w[1:]:
        torch.testing.assert_close(x, w[0])
    ids = [None] * world_size
    dist.all_gather_object(ids, sorted(model[0].shard._table.items()[0].tolist()))
    assert not set(ids[0]) & set(ids[1])
    # DDP's reducer holds the process group, and its destructor (bound without releasing the GIL)
    # can deadlock with gloo's worker threads if it drops the last reference
    # (pytorch/pytorch#56297): release DDP first, so that destroy_process_group drops the last one.
    del ddp, opt
    dist.destroy_process_group()


def test_whole_model_ddp_ignoring_the_sharded_table(tmp_path):
    _start(_w_ddp, 2, str(tmp_path / "store"))


# fused optimizers (embtab.optim) //////////////////////////////////////////////////////////////

# name -> a fresh fused optimizer (each module gets its own object).
FUSED = {
    "sgd_momentum": lambda: eo.SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
    "adagrad": lambda: eo.Adagrad(lr=0.1, initial_accumulator_value=0.1),
    "rowwise_adagrad": lambda: eo.RowWiseAdagrad(lr=0.1),
    "adam": lambda: eo.Adam(lr=0.05),
}


def _fused_reference(bag, kind, steps):
    """Single-process module with the fused optimizer ``kind``, trained on the global batches;
    outputs per step."""
    m, _ = _make(bag, sharded=False, optimizer=FUSED[kind]())
    outs = {}
    for step in steps:
        ids, tgt, psw = _global_batch(step, bag)
        out = _forward(m, ids, psw)
        outs[step] = out.detach().clone()
        _loss(out, tgt).backward()  # the fused step
    return m, outs


def _assert_fused_same_per_id(sharded, ref):
    """The shard holds exactly the reference's IDs that this rank owns, with equal vectors and
    fused optimizer state by ID, and the same step count."""
    rows, rr = _same_ids_and_vectors(sharded, ref)
    names = [n for n, _, _ in ref.optimizer._states()]
    assert names == [n for n, _, _ in sharded.shard.optimizer._states()]
    for n in names:
        torch.testing.assert_close(sharded.shard._buffers["opt_" + n][rows], ref._buffers["opt_" + n][rr])
    assert int(sharded.shard.opt_step) == int(ref.opt_step)


def _w_fused_equal(rank, world_size, store, bag, kind):
    _init(rank, world_size, store)
    steps = range(5)
    ref, outs = _fused_reference(bag, kind, steps)
    m, _ = _make(bag, sharded=True, optimizer=FUSED[kind]())
    _train(m, m.shard.optimizer, steps, bag, rank, world_size, check_ref_outputs=outs)
    assert m.weight.grad is None  # the fused step updated the shard; no gradient is left
    _assert_fused_same_per_id(m, ref)
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size, bag, kind", [
    (2, False, "sgd_momentum"), (3, False, "adam"), (2, "mean", "adagrad"),
    (3, "mean", "rowwise_adagrad"), (2, "sum", "adam"), (3, "sum", "sgd_momentum"),
], ids=lambda v: str(v))
def test_fused_optimizer_matches_single_process(tmp_path, world_size, bag, kind):
    """Each shard trains with its own fused optimizer (optimizer= at construction): outputs,
    vectors and optimizer state per ID, and the step count, equal the single-process module's
    with the same optimizer fed the global batch, through growth ("mean": admission and
    padding too), on 2 and 3 ranks."""
    _start(_w_fused_equal, world_size, str(tmp_path / "store"), bag, kind)


def _w_fused_empty_shard(rank, world_size, store, bag):
    """Rank 0 feeds every step's batch, made of IDs rank 0 owns; rank 1 passes an empty tensor,
    so its shard receives no ID and backpropagates an empty gradient: it still counts the step,
    and the shards equal one process fed the same batches."""
    _init(rank, world_size, store)
    owner = embtab.distributed.owner_of(torch.from_numpy(POOL), world_size,
                                        _make(bag, sharded=True, optimizer=FUSED["adam"]())[0].shard_seed)
    pool = POOL[owner.numpy() == 0]
    rng = np.random.default_rng(3)
    batches = [torch.from_numpy(pool[rng.integers(0, len(pool), size=(5, 2))]) for _ in range(4)]
    ref, _ = _make(bag, sharded=False, optimizer=FUSED["adam"]())
    m, _ = _make(bag, sharded=True, optimizer=FUSED["adam"]())
    for ids in batches:
        _forward(ref, ids, None).square().sum().backward()
        mine = ids if rank == 0 else ids[:0]
        _forward(m, mine, None).square().sum().backward()
    assert m.num_ids == (0 if rank else ref.num_ids)
    assert int(m.shard.opt_step) == int(ref.opt_step) == len(batches)
    _assert_fused_same_per_id(m, ref)
    dist.destroy_process_group()


@pytest.mark.parametrize("bag", [False, "sum"], ids=["embedding", "bag_sum"])
def test_fused_step_counted_on_a_shard_that_receives_no_ids(tmp_path, bag):
    _start(_w_fused_empty_shard, 2, str(tmp_path / "store"), bag)


def _w_fused_save(rank, world_size, store, ckpt, bag, kind, steps):
    _init(rank, world_size, store)
    m, _ = _make(bag, sharded=True, optimizer=FUSED[kind](), name="fused")
    _train(m, m.shard.optimizer, range(steps), bag, rank, world_size)
    torch_opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="fused optimizer"):
        m.save(ckpt, torch_opt)  # the fused state is the module's own: refused on every rank
    m.save(ckpt)
    dist.destroy_process_group()


def _w_fused_resume(rank, world_size, store, ckpt, bag, kind, done, total):
    _init(rank, world_size, store)
    other = "adam" if kind != "adam" else "adagrad"
    wrong, _ = _make(bag, sharded=True, optimizer=FUSED[other](), name="fused")
    with pytest.raises(ValueError, match="optimizer="):  # the manifest names the saved optimizer
        wrong.load(ckpt)
    plain, _ = _make(bag, sharded=True, name="fused")
    with pytest.raises(ValueError, match="optimizer="):
        plain.load(ckpt)
    ref, outs = _fused_reference(bag, kind, range(total))
    m, _ = _make(bag, sharded=True, optimizer=FUSED[kind](), name="fused")
    m.load(ckpt)
    _train(m, m.shard.optimizer, range(done, total), bag, rank, world_size, check_ref_outputs=outs)
    _assert_fused_same_per_id(m, ref)
    dist.destroy_process_group()


@pytest.mark.parametrize("bag, kind", [("sum", "adam"), (False, "rowwise_adagrad")],
                         ids=["bag_sum-adam", "embedding-rowwise_adagrad"])
def test_fused_state_saved_on_2_ranks_resumes_on_3_and_1(tmp_path, bag, kind):
    """The fused optimizer's state travels with the checkpoint by ID and is resharded: saved on
    2 ranks after 3 steps, resumed on 3 and on 1, the next 2 steps equal the single-process
    module's (Adam's bias correction included: the step count is restored). A module with
    another or no fused optimizer is refused the checkpoint, and save(dir, torch_optimizer) is
    refused for a fused module."""
    ckpt = tmp_path / "ckpt"
    _start(_w_fused_save, 2, str(tmp_path / "s1"), str(ckpt), bag, kind, 3)
    _start(_w_fused_resume, 3, str(tmp_path / "s2"), str(ckpt), bag, kind, 3, 5)
    _start(_w_fused_resume, 1, str(tmp_path / "s3"), str(ckpt), bag, kind, 3, 5)


def _tamper_fused(ckpt, edit, shard_rank=0):
    """Rewrite the shard file of rank ``shard_rank`` of a checkpoint with edit(payload) applied,
    as a tamperer would (a valid file checksum, and the manifest updated to match)."""
    import hashlib
    import io

    from embtab.distributed import _MAGIC

    shard = _listed(ckpt)[shard_rank]
    with open(ckpt / shard, "rb") as f:
        data = f.read()
    payload = torch.load(io.BytesIO(data[len(_MAGIC) + 32:]), weights_only=True)
    edit(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).digest()
    with open(ckpt / shard, "wb") as f:
        f.write(_MAGIC + digest + body)
    _rewrite_manifest(ckpt / _manifest(ckpt),
                      lambda m: m["shards"][shard_rank].update(sha256=digest.hex()))


def _w_fused_bad_state(rank, world_size, store, ckpt, expect):
    _init(rank, world_size, store)
    m, _ = _make("sum", sharded=True, optimizer=FUSED["adam"](), name="fused")
    with pytest.raises(ValueError, match=expect):
        m.load(ckpt)
    assert m.num_ids == 0 and int(m.shard.opt_step) == 0  # nothing was loaded
    dist.destroy_process_group()


def test_corrupt_fused_state_is_refused_and_loads_nothing(tmp_path):
    """A shard file whose fused state is negative where it accumulates squares, not finite, of
    the wrong length, missing, of another dtype than the weight (float64 values past float32's
    range) or whose step count would overflow is refused by load, which then changes nothing."""
    edits = {
        "negative": lambda p: p["fused"]["per_row"]["exp_avg_sq"].neg_().sub_(1.0),
        "not finite": lambda p: p["fused"]["per_row"]["exp_avg"].fill_(float("nan")),
        "of shape": lambda p: p["fused"]["per_row"].update(exp_avg=p["fused"]["per_row"]["exp_avg"][:-1]),
        "lacks the fused optimizer state": lambda p: p.pop("fused"),
        "of dtype torch.float64": lambda p: p["fused"]["per_row"].update(
            exp_avg=p["fused"]["per_row"]["exp_avg"].double().fill_(1e300)),
        "without a valid type, step": lambda p: p["fused"].update(step=1 << 62),
    }
    for i, (expect, edit) in enumerate(edits.items()):
        ckpt = tmp_path / f"ckpt{i}"
        _start(_w_fused_save, 1, str(tmp_path / f"s{i}"), str(ckpt), "sum", "adam", 2)
        _tamper_fused(ckpt, edit)
        _start(_w_fused_bad_state, 1, str(tmp_path / f"t{i}"), str(ckpt), expect)


def _w_bad_torch_state(rank, world_size, store, ckpt, expect, wrong_optimizer):
    _init(rank, world_size, store)
    m, opt = _make(False, sharded=True)
    if wrong_optimizer:  # holds another tensor, not this module's weight
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=expect):
        m.load(ckpt, opt)
    assert m.num_ids == 0 and int(m.shard.num_steps) == 0 and not opt.state  # nothing loaded
    dist.destroy_process_group()


def test_crafted_torch_optimizer_state_is_refused_and_loads_nothing(tmp_path):
    """A shard whose torch optimizer state or counters are malformed (a rewritten file with a
    valid checksum), or an optimizer that does not hold the module's weight, is refused with a
    ValueError before the module changes (it used to load the module, then fail on the
    optimizer with a KeyError or AttributeError)."""
    edits = {
        "'per_row' and 'other'": [lambda p: p["optimizer"].pop("other"),
                                  lambda p: p["optimizer"].pop("per_row"),
                                  lambda p: p.update(optimizer=[1, 2])],
        r"lacks valid counters": [lambda p: p["counters"].update(num_steps=2**70)],
    }
    i = 0
    for expect, fns in edits.items():
        for edit in fns:
            ckpt = tmp_path / f"ckpt{i}"
            _start(_w_save, 1, str(tmp_path / f"s{i}"), str(ckpt), False, 2)
            _tamper_fused(ckpt, edit)
            _start(_w_bad_torch_state, 1, str(tmp_path / f"t{i}"), str(ckpt), expect, False)
            i += 1
    ckpt = tmp_path / "ckpt_ok"
    _start(_w_save, 1, str(tmp_path / "s_ok"), str(ckpt), False, 2)
    _start(_w_bad_torch_state, 1, str(tmp_path / "t_ok"), str(ckpt),
           "optimizer does not hold this sharded module's weight", True)


def _w_successor_saves(rank, world_size, store, ckpt):
    import gc

    _init(rank, world_size, store)
    m1 = ShardedCuckooEmbedding(8, DIM, seed=SEED, name="resumed")
    loss = m1(torch.arange(4).reshape(2, 2)).sum()
    loss.backward()
    m1.save(ckpt)
    del m1
    gc.collect()
    # `loss` (its graph already backpropagated) is still referenced: it must not keep m1 alive
    m2 = ShardedCuckooEmbedding(8, DIM, seed=SEED, name="resumed")
    m2.load(ckpt)
    m2.save(ckpt)
    assert m2.num_ids == 4 and loss.item() == loss.item()
    dist.destroy_process_group()


def test_a_successor_saves_where_a_dropped_module_saved(tmp_path):
    _start(_w_successor_saves, 1, str(tmp_path / "s"), str(tmp_path / "ckpt"))


# checkpoint and resharding ///////////////////////////////////////////////////////////////////


def _w_save(rank, world_size, store, ckpt, bag, steps):
    _init(rank, world_size, store)
    m, opt = _make(bag, sharded=True)
    _train(m, opt, range(steps), bag, rank, world_size)
    first = m.save(ckpt, opt)
    path = m.save(ckpt, opt)  # a second save replaces the first, then deletes its files
    assert re.fullmatch(rf"{re.escape(m.name)}\.shard-{rank:05d}-of-{world_size:05d}\.[0-9a-f]{{12}}\.embtab",
                        os.path.basename(path))
    assert first != path
    dist.destroy_process_group()


def _w_resume(rank, world_size, store, ckpt, bag, done, total):
    _init(rank, world_size, store)
    ref, ropt, outs = _reference(bag, range(total))
    m, opt = _make(bag, sharded=True)
    m.load(ckpt, opt)
    _train(m, opt, range(done, total), bag, rank, world_size, check_ref_outputs=outs)
    _assert_same_per_id(m, opt, ref, ropt)
    dist.destroy_process_group()


@pytest.mark.parametrize("bag", [False, "mean"], ids=["embedding", "bag_mean"])
def test_save_2_ranks_resume_on_3_and_1(tmp_path, bag):
    ckpt = tmp_path / "ckpt"
    _start(_w_save, 2, str(tmp_path / "s1"), str(ckpt), bag, 3)
    assert sorted(os.listdir(ckpt)) == sorted([_manifest(ckpt)] + _listed(ckpt))
    _start(_w_resume, 3, str(tmp_path / "s2"), str(ckpt), bag, 3, 5)
    _start(_w_resume, 1, str(tmp_path / "s3"), str(ckpt), bag, 3, 5)


def _manifest(ckpt):
    (name,) = [f for f in os.listdir(ckpt) if f.endswith(".manifest.json")]
    return name


def _listed(ckpt):
    with open(os.path.join(ckpt, _manifest(ckpt))) as f:
        return [e["file"] for e in json.load(f)["shards"]]


def _w_bad_checkpoint(rank, world_size, store, missing, corrupt, foreign, interrupted):
    _init(rank, world_size, store)
    m, opt = _make(False, sharded=True)
    with pytest.raises(ValueError, match=re.escape(missing) + r" is missing \(listed in the checkpoint manifest\)"):
        m.load(os.path.dirname(missing), opt)
    with pytest.raises(ValueError, match=re.escape(corrupt) + r" is corrupt \(checksum mismatch\)"):
        m.load(os.path.dirname(corrupt), opt)
    with pytest.raises(ValueError, match="does not belong to this checkpoint"):
        m.load(foreign, opt)
    assert m.num_ids == 0  # nothing half-loaded
    m.load(interrupted, opt)  # stray shard files of an unfinished later save are ignored
    assert m.num_ids > 0
    dist.destroy_process_group()


def test_missing_corrupt_and_foreign_shard_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    _start(_w_save, 2, str(tmp_path / "s1"), str(ckpt), False, 2)
    name = _listed(ckpt)[1]
    miss, bad, foreign, other, stray = (tmp_path / d for d in ("missing", "corrupt", "foreign", "other", "stray"))
    for d in (miss, bad, foreign, stray):
        shutil.copytree(ckpt, d)
    (stray / (name.split(".shard-")[0] + ".shard-00000-of-00002.0123456789ab.embtab")).write_bytes(b"half-written")
    os.unlink(miss / name)
    data = bytearray((bad / name).read_bytes())
    data[-10] ^= 0x40
    (bad / name).write_bytes(bytes(data))
    # A shard from another (valid) checkpoint beside this manifest.
    _start(_w_save, 2, str(tmp_path / "s2"), str(other), False, 3)
    shutil.copy(other / _listed(other)[1], foreign / name)
    _start(_w_bad_checkpoint, 1, str(tmp_path / "s3"), str(miss / name), str(bad / name), str(foreign),
           str(stray))


# fault behaviour //////////////////////////////////////////////////////////////////////////////


def _w_fault(rank, world_size, store, ckpt, result):
    _init(rank, world_size, store, timeout_s=10.0)
    m, opt = _make(False, sharded=True)
    _train(m, opt, range(2), False, rank, world_size)
    m.save(ckpt, opt)
    if rank == 1:
        os._exit(3)  # dies mid-run, before the next step's collectives
    t0 = time.monotonic()
    try:
        _train(m, opt, range(2, 3), False, rank, world_size)
        outcome = {"type": None}
    except Exception as e:  # noqa: BLE001 - the test inspects what came out
        outcome = {"type": type(e).__name__, "msg": str(e)}
    outcome["elapsed"] = time.monotonic() - t0
    with open(result, "w") as f:
        json.dump(outcome, f)
    os._exit(0)


def _run_forked(target, world_size, *args):
    """Ranks as plain forked processes (a rank may kill itself, which torch's launcher would
    report as a failure); fails the test if one is still running after 60 s."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(r, world_size, *args)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung instead of failing"
    return procs


def test_killed_rank_fails_survivor_within_timeout_and_checkpoint_survives(tmp_path):
    ckpt, result = str(tmp_path / "ckpt"), str(tmp_path / "result.json")
    procs = _run_forked(_w_fault, 2, str(tmp_path / "s1"), ckpt, result)
    assert procs[1].exitcode == 3
    with open(result) as f:
        outcome = json.load(f)
    assert outcome["type"] == ShardedCommError.__name__, outcome
    assert "rank 0 of 2" in outcome["msg"]
    assert outcome["elapsed"] < 20.0
    # Restart from the last checkpoint (on one rank): nothing it held is lost.
    _start(_w_resume, 1, str(tmp_path / "s2"), ckpt, False, 2, 2)


def _w_sparse_momentum(rank, world_size, store, ckpt, phase):
    # sparse=True gradients with torch SGD(momentum): its momentum_buffer is a sparse tensor
    _init(rank, world_size, store)
    m, opt = _make(False, sharded=True, sparse=True)
    if phase == "save":
        _train(m, opt, range(2), False, rank, world_size)
        m.save(ckpt, opt)
    else:
        ref, ropt = _make(False, sharded=False, sparse=True)
        _train(ref, ropt, range(4), False)
        m.load(ckpt, opt)
        _train(m, opt, range(2, 4), False, rank, world_size)
        rows, rr = _same_ids_and_vectors(m, ref)
        sm = opt.state[m.weight]["momentum_buffer"]
        rm = ropt.state[ref.weight]["momentum_buffer"]
        sm, rm = (x.to_dense() if x.is_sparse else x for x in (sm, rm))
        torch.testing.assert_close(sm[rows], rm[rr])
    dist.destroy_process_group()


def test_sparse_gradients_with_sgd_momentum_checkpoint_and_reshard(tmp_path):
    # Saving failed inside torch (indexing a sparse momentum_buffer by row). Oracle: the
    # single-process module trained on the same batches, vectors and momentum by ID.
    ckpt = str(tmp_path / "ckpt")
    _start(_w_sparse_momentum, 2, str(tmp_path / "s1"), ckpt, "save")
    _start(_w_sparse_momentum, 1, str(tmp_path / "s2"), ckpt, "resume")
    _start(_w_sparse_momentum, 3, str(tmp_path / "s3"), ckpt, "resume")


def _w_bag_freq_scaling(rank, world_size, store):
    _init(rank, world_size, store)
    # the global batch: bags [10 10 20 | 30 30 30 | 20 40], split over the ranks by bag
    ids = torch.tensor([10, 10, 20, 30, 30, 30, 20, 40])
    offsets = [0, 3, 6]
    g = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, 1.0]])   # d loss / d bag
    mine = np.array_split(np.arange(3), world_size)[rank]
    m = ShardedCuckooEmbeddingBag(8, 2, mode="sum", scale_grad_by_freq=True, seed=0)
    if len(mine):
        lo, hi = offsets[mine[0]], (offsets + [8])[mine[-1] + 1]
        out = m(ids[lo:hi], torch.tensor(offsets)[mine] - lo)
        (out * g[torch.from_numpy(mine)]).sum().backward()
    else:
        m(ids[:0], torch.tensor([], dtype=torch.int64)).sum().backward()
    # Oracle (nn.Embedding's rule): an ID's gradient is the sum of its occurrences' bag
    # gradients divided by its number of occurrences in the global batch.
    bag_of = [0, 0, 0, 1, 1, 1, 2, 2]
    for i in (10, 20, 30, 40):
        occ = [k for k in range(8) if int(ids[k]) == i]
        want = sum(g[bag_of[k]] for k in occ) / len(occ)
        r = int(m.shard.lookup(torch.tensor([i])))
        if int(m.owner_of(torch.tensor([i]))) == rank:
            torch.testing.assert_close(m.weight.grad[r], want)
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sharded_bag_scales_gradients_by_each_ids_own_frequency(tmp_path, world_size):
    _start(_w_bag_freq_scaling, world_size, str(tmp_path / "s"))


def _w_killed_in_save(rank, world_size, store, ckpt, kill_rank, kill_at):
    import embtab.distributed as D

    _init(rank, world_size, store, timeout_s=10.0)
    m, opt = _make(False, sharded=True)
    _train(m, opt, range(2), False, rank, world_size)
    m.save(ckpt, opt)
    _train(m, opt, range(2, 3), False, rank, world_size)
    if rank == kill_rank:
        if kill_at == "after manifest":  # preempted right after the manifest's rename
            real = D._core.atomic_write

            def write_then_die(path, data):
                real(path, data)
                if path.endswith(".manifest.json"):
                    os._exit(3)

            D._core.atomic_write = write_then_die
        else:  # killed when it reaches an agreement step of the save
            agree = D._ShardedBase._agree

            def die_at(self, what, error):
                if what == kill_at:
                    os._exit(3)
                return agree(self, what, error)

            D._ShardedBase._agree = die_at
    try:
        m.save(ckpt, opt)
    except ShardedCommError:
        pass
    os._exit(0)


@pytest.mark.parametrize("kill_rank, kill_at, done", [
    (1, "save (shard files)", 2),   # before the manifest: the old checkpoint
    (1, "save (manifest)", 3),      # rank 0 renamed the new manifest: the new one, complete
    (0, "after manifest", 3),
])
def test_rank_killed_during_save_leaves_a_whole_checkpoint(tmp_path, kill_rank, kill_at, done):
    # A survivor used to delete its new shard once the save failed, also after rank 0 had put
    # the manifest naming it in place: neither checkpoint could then be loaded. Oracle: the
    # directory loads, as the old save (2 steps) or the new one (3), and training on from it
    # matches the single-process reference.
    ckpt = str(tmp_path / "ckpt")
    procs = _run_forked(_w_killed_in_save, 2, str(tmp_path / "s1"), ckpt, kill_rank, kill_at)
    assert procs[kill_rank].exitcode == 3
    assert set(_listed(ckpt)) <= set(os.listdir(ckpt))
    _start(_w_resume, 1, str(tmp_path / "s2"), ckpt, False, done, 4)


def _w_stall(rank, world_size, store, result):
    _init(rank, world_size, store, timeout_s=2.0)
    m, opt = _make(False, sharded=True)
    _train(m, opt, range(1), False, rank, world_size)
    if rank == 1:
        time.sleep(8.0)  # alive but out of step: never joins the next collective
        os._exit(0)
    t0 = time.monotonic()
    try:
        _train(m, opt, range(1, 2), False, rank, world_size)
        outcome = {"type": None}
    except Exception as e:  # noqa: BLE001 - the test inspects what came out
        outcome = {"type": type(e).__name__, "msg": str(e)}
    outcome["elapsed"] = time.monotonic() - t0
    with open(result, "w") as f:
        json.dump(outcome, f)
    os._exit(0)


def test_stalled_rank_fails_survivor_after_timeout(tmp_path):
    result = str(tmp_path / "result.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_w_stall, args=(r, 2, str(tmp_path / "s1"), result)) for r in range(2)]
    for p in procs:
        p.start()
    procs[0].join(30)
    alive = procs[0].is_alive()
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    assert not alive, "the survivor hung past its timeout"
    with open(result) as f:
        outcome = json.load(f)
    assert outcome["type"] == ShardedCommError.__name__, outcome
    assert "all_to_all of the forward header" in outcome["msg"]
    assert 1.0 < outcome["elapsed"] < 20.0


# ranks that disagree //////////////////////////////////////////////////////////////////////////


def _w_mismatch(rank, world_size, store):
    _init(rank, world_size, store)
    ids = torch.tensor([1, 2, 3, 99])

    def refused(field, m, call=lambda m: m(ids)):
        with pytest.raises(ShardedCommError, match=field):
            call(m)

    # Configurations that differ: every rank raises, naming the field; the group stays usable.
    refused("embedding_dim=5 where this rank has embedding_dim=4|embedding_dim=4 where this rank has embedding_dim=5",
            ShardedCuckooEmbedding(8, DIM + rank, seed=SEED))
    refused("dtype", ShardedCuckooEmbedding(8, DIM, seed=SEED, dtype=torch.float64 if rank else None))
    refused("padding_id", ShardedCuckooEmbedding(8, DIM, seed=SEED, padding_id=5 if rank else None))
    # settings the header has no field of, sent as a digest: a new ID's vector would depend on
    # the rank that owns it
    refused("another init", ShardedCuckooEmbedding(8, DIM, seed=SEED, init="zeros" if rank else None))
    refused("admission_eps", ShardedCuckooEmbedding(
        8, DIM, seed=SEED, min_count=2, admission_eps=0.01 if rank else 0.001))
    refused("norm_type", ShardedCuckooEmbeddingBag(
        8, DIM, seed=SEED, max_norm=1.0, norm_type=1.0 if rank else 2.0), lambda m: m(ids[None]))
    # a field of its own is named before the digest (dedup follows from min_count)
    refused("has min_count=", ShardedCuckooEmbedding(8, DIM, seed=SEED, min_count=2 if rank else 1))
    refused("has max_norm=", ShardedCuckooEmbeddingBag(
        8, DIM, seed=SEED, max_norm=1.0 if rank else None), lambda m: m(ids[None]))
    # alike settings spelled otherwise give one digest ("zeros" reads no a, b; -0.0 is 0.0)
    for alike in ((embtab.nn.EmbeddingInit("zeros", 0.0, 0.0), "zeros"),
                  (embtab.nn.EmbeddingInit("normal", -0.0, 1), None)):
        m = ShardedCuckooEmbedding(8, DIM, seed=SEED, init=alike[rank])
        m(ids).sum().backward()
    # one rank left in eval mode: its shard would not give the others' new IDs rows
    refused(r"forward \(eval mode\) while this rank is in forward|forward while this rank is in "
            r"forward \(eval mode\)", ShardedCuckooEmbedding(8, DIM, seed=SEED).train(rank == 0))
    refused("optimizer", ShardedCuckooEmbedding(8, DIM, seed=SEED,
                                                optimizer=eo.Adam() if rank else eo.Adagrad()))
    refused("kind", ShardedCuckooEmbeddingBag(8, DIM, seed=SEED, mode="sum") if rank
            else ShardedCuckooEmbedding(8, DIM, seed=SEED),
            lambda m: m(ids[None]) if rank else m(ids))
    # A rank that skips backward and goes on to the next forward.
    m = ShardedCuckooEmbedding(8, DIM, seed=SEED)
    out = m(ids)
    if rank == 0:
        refused("rank 1 is in forward while this rank is in backward", m, lambda m: out.sum().backward())
    else:
        refused("rank 0 is in backward while this rank is in forward .*skipped backward", m)
    # Two modules called in another order on the two ranks.
    a, b = ShardedCuckooEmbedding(8, DIM, seed=SEED), ShardedCuckooEmbedding(8, DIM, seed=SEED)
    refused("sharded module #", a if rank == 0 else b)
    # And the group still works.
    out = a(ids)
    out.sum().backward()
    assert out.shape == (4, DIM)
    # A save into a path rank 0 cannot create: every rank raises, none waits for the others.
    with pytest.raises(FileExistsError if rank == 0 else ShardedCommError, match="File exists"):
        a.save(store + ".file")
    dist.destroy_process_group()


def test_ranks_that_disagree_raise_on_every_rank(tmp_path):
    (tmp_path / "store.file").write_bytes(b"not a directory")
    _start(_w_mismatch, 2, str(tmp_path / "store"))


def _w_one_shard_fails(rank, world_size, store, ckpt):
    from embtab import TableFullError
    from embtab.distributed import owner_of

    _init(rank, world_size, store)
    m = ShardedCuckooEmbedding(2, DIM, on_full="error", shard_seed=0, seed=SEED)
    a = torch.arange(40)
    own = owner_of(a, world_size, 0)
    ids = a[own == 0][:5] if rank == 1 else a[own == 1][:1]   # overfills rank 0's shard only
    for _ in range(2):  # the user catches and carries on: the group stays in step
        if rank == 0:
            before = m.shard.num_ids
            with pytest.raises(TableFullError):
                m(ids).sum().backward()
            assert m.shard.num_ids == before                        # the failing shard: unchanged
        else:
            with pytest.raises(ShardedCommError, match="shard lookup failed on rank 0"):
                m(ids).sum().backward()
    # the failing shard did not count the refused calls as steps; the other one did
    # (docs/site/guide/sharding.md, "Errors")
    assert int(m.shard.num_steps) == (0 if rank == 0 else 2)
    out = m(a[own == 1][:1] if rank == 0 else a[own == 0][:1])  # a call that fits works
    out.sum().backward()
    assert out.shape == (1, DIM)
    # A load with an optimizer embtab cannot reshard, or another type than the one saved,
    # changes nothing on any rank.
    src = ShardedCuckooEmbedding(4, DIM, seed=SEED, name="m")
    opt = torch.optim.Adam(src.parameters(), lr=0.1)
    src(torch.tensor([1, 2, 3, 99]) + 10 * rank).sum().backward()
    opt.step()
    src.save(ckpt, opt)
    for bad, match in ((torch.optim.LBFGS, "cannot be done for LBFGS"),
                       (torch.optim.SGD, "holds the state of optimizer torch.optim.adam.Adam")):
        dst = ShardedCuckooEmbedding(4, DIM, seed=SEED, name="m")
        with pytest.raises((ValueError, ShardedCommError), match=match):
            dst.load(ckpt, bad(dst.parameters(), lr=0.1))
        assert dst.num_ids == 0
    dst = ShardedCuckooEmbedding(4, DIM, seed=SEED, name="m")
    dst.load(ckpt, torch.optim.Adam(dst.parameters(), lr=0.1))
    assert dst.num_ids == src.num_ids
    dist.destroy_process_group()


def test_a_failing_shard_raises_on_every_rank_and_a_bad_optimizer_loads_nothing(tmp_path):
    _start(_w_one_shard_fails, 2, str(tmp_path / "store"), str(tmp_path / "ckpt"))


def _w_refused_arguments(rank, world_size, store, bad_rank):
    # One rank's arguments fail their checks: every rank raises (that rank its own error, the
    # others ShardedCommError naming it), no rank counts the call, and the next calls pair up
    # as before. Oracle: the same calls without the refused one, on modules built alike.
    _init(rank, world_size, store)
    ids = torch.tensor([3, 5, 7, 5]) + 10 * rank
    off = torch.tensor([0, 2])
    bags = [ShardedCuckooEmbeddingBag(8, DIM, mode="sum", seed=SEED, name=f"b{i}") for i in range(2)]
    embs = [ShardedCuckooEmbedding(8, DIM, seed=SEED, name=f"e{i}") for i in range(2)]
    bad_bag = (torch.tensor([0, 9]), None)         # offsets past the IDs
    bad_emb = ids.double()                            # float IDs
    for m, call, bad in ((bags[0], lambda x: bags[0](ids, x), bad_bag[0]),
                         (embs[0], lambda x: embs[0](x), bad_emb)):
        for training in (True, False):
            m.train(training)
            if rank == bad_rank:
                with pytest.raises((TypeError, ValueError)):
                    call(bad)
            else:
                with pytest.raises(ShardedCommError, match=f"rank {bad_rank} of {world_size} refused"):
                    call(off if m is bags[0] else ids)
        m.train(True)
    for step in range(2):  # the ranks are in step: each call pairs with the same call elsewhere
        outs = []
        for m in bags:
            out = m(ids + step, off)
            out.sum().backward()
            outs.append(out)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
        outs = []
        for m in embs:
            out = m(ids + step)
            out.sum().backward()
            outs.append(out)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in (bags, embs):
        assert int(a.shard.num_steps) == int(b.shard.num_steps) == 2
        assert a.num_ids == b.num_ids
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size,bad_rank", [(2, 0), (2, 1), (3, 1)])
def test_arguments_refused_on_one_rank_raise_on_every_rank(tmp_path, world_size, bad_rank):
    # Before, the other ranks went on into the exchange, which paired with the refusing rank's
    # next call (another batch): the ranks were silently out of step.
    _start(_w_refused_arguments, world_size, str(tmp_path / "store"), bad_rank)


# checkpoints of several modules, tampered manifests, failed saves ///////////////////////////


def _w_save_two(rank, world_size, store, ckpt, out):
    _init(rank, world_size, store)
    users, uopt = _make(False, sharded=True, name="users")
    items = ShardedCuckooEmbedding(4, DIM, seed=SEED + 1, name="items")
    iopt = torch.optim.SGD(items.parameters(), lr=0.05, momentum=0.9)
    _train(users, uopt, range(2), False, rank, world_size)
    _train(items, iopt, range(2, 4), False, rank, world_size)
    users.save(ckpt, uopt)
    items.save(ckpt, iopt)
    users.save(ckpt, uopt)  # a second save of users leaves items' files alone
    clash, _ = _make(False, sharded=True, name="items")
    with pytest.raises(ValueError, match="another sharded module of this process saved"):
        clash.save(ckpt)
    got = [None] * world_size
    dist.all_gather_object(got, {k: (sorted(m.shard._table.items()[0].view(np.int64).tolist()),
                                     float(m.weight.detach()[: m.shard.num_embeddings].sum()))
                                 for k, m in (("users", users), ("items", items))})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(got, f)
    dist.destroy_process_group()


def _rewrite_manifest(path, edit, keep_checksum=False):
    from embtab.distributed import _manifest_checksum  # the test rewrites a manifest as a tamperer would

    with open(path) as f:
        m = json.load(f)
    edit(m)
    if not keep_checksum:
        m["checksum"] = _manifest_checksum(m)
    with open(path, "w") as f:
        json.dump(m, f)


def _w_load_two(rank, world_size, store, ckpt, saved, bad_dirs):
    _init(rank, world_size, store)
    with open(saved) as f:
        saved = json.load(f)
    users, uopt = _make(False, sharded=True, name="users")
    items = ShardedCuckooEmbedding(4, DIM, seed=SEED + 1, name="items")
    for what, d in bad_dirs:
        with pytest.raises(ValueError, match=what):
            users.load(d, uopt)
        assert users.num_ids == 0, what  # nothing half-loaded
    other_seed, _ = _make(False, sharded=True, name="users", shard_seed=123)
    with pytest.raises(ValueError, match="configured otherwise: shard_seed='[0-9]+' \\(this module: '123'\\)"):
        other_seed.load(ckpt)
    users.load(ckpt, uopt)
    items.load(ckpt)
    for k, m in (("users", users), ("items", items)):
        ids = sorted(i for s in saved for i in s[k][0])
        assert sorted(m.shard._table.items()[0].view(np.int64).tolist()) == ids, k
        total = sum(s[k][1] for s in saved)
        assert abs(float(m.weight.detach()[: m.shard.num_embeddings].sum()) - total) < 1e-4, k
    dist.destroy_process_group()


def test_two_modules_in_one_directory_and_tampered_manifests_refused(tmp_path):
    ckpt, saved = tmp_path / "ckpt", str(tmp_path / "saved.json")
    _start(_w_save_two, 2, str(tmp_path / "s1"), str(ckpt), saved)
    files = os.listdir(ckpt)
    assert sorted(f for f in files if f.endswith(".json")) == ["items.manifest.json", "users.manifest.json"]
    assert len(files) == 6
    bad = []

    def variant(tag, what, edit=None, keep_checksum=False, files_edit=None):
        d = tmp_path / tag
        shutil.copytree(ckpt, d)
        if edit is not None:
            _rewrite_manifest(d / "users.manifest.json", edit, keep_checksum)
        if files_edit is not None:
            files_edit(d)
        bad.append((what.replace("{d}", re.escape(str(d))), str(d)))

    man = r"{d}/users\.manifest\.json "
    variant("partial", man + "lists 1 shards for world_size 2", lambda m: m["shards"].pop())
    variant("partial1", man + "has an invalid entry for shard 0",
            lambda m: (m["shards"].pop(), m.update(world_size=1)))
    variant("nokey", man + "lacks a valid 'token'", lambda m: m.pop("token"))
    variant("nullfile", man + "has an invalid entry for shard 1", lambda m: m["shards"][1].update(file=None))
    variant("checksum", man + r"is corrupt \(checksum mismatch\)",
            lambda m: m["shards"][0].update(num_ids=0), keep_checksum=True)
    variant("count", r"{d}/users\.shard-00000-of-00002\.[0-9a-f]+\.embtab must hold 1 int64 ids",
            lambda m: m["shards"][0].update(num_ids=1))
    variant("garbage", man + r"is not a checkpoint manifest",
            files_edit=lambda d: (d / "users.manifest.json").write_bytes(b"\x00garbage"))
    variant("another", man + "belongs to module 'items', not 'users'",
            files_edit=lambda d: shutil.copy(d / "items.manifest.json", d / "users.manifest.json"))
    _start(_w_load_two, 1, str(tmp_path / "s2"), str(ckpt), saved, bad)


def _w_failed_save(rank, world_size, store, ckpt, fail_rank, fail_what):
    import embtab.distributed as D

    _init(rank, world_size, store)
    m, opt = _make(False, sharded=True)
    _train(m, opt, range(2), False, rank, world_size)
    m.save(ckpt, opt)
    before = {f: (ckpt + "/" + f, open(os.path.join(ckpt, f), "rb").read()) for f in os.listdir(ckpt)}
    real = D._core.atomic_write

    def failing(path, data):
        if rank == fail_rank and fail_what in os.path.basename(path):
            raise OSError(28, "No space left on device", path)
        return real(path, data)

    D._core.atomic_write = failing
    _train(m, opt, range(2, 3), False, rank, world_size)
    with pytest.raises(OSError if rank == fail_rank else ShardedCommError, match="No space left"):
        m.save(ckpt, opt)
    D._core.atomic_write = real
    dist.barrier()
    assert {f: open(os.path.join(ckpt, f), "rb").read() for f in os.listdir(ckpt)} == \
        {f: v for f, (_, v) in before.items()}  # the old checkpoint, and only it
    dist.destroy_process_group()


@pytest.mark.parametrize("fail_rank, fail_what", [(1, ".shard-"), (0, ".manifest.json")])
def test_failed_save_keeps_the_old_checkpoint(tmp_path, fail_rank, fail_what):
    ckpt = str(tmp_path / "ckpt")
    _start(_w_failed_save, 2, str(tmp_path / "s1"), ckpt, fail_rank, fail_what)
    _start(_w_resume, 1, str(tmp_path / "s2"), ckpt, False, 2, 2)


def _w_constructor_args(rank, world_size, store):
    _init(rank, world_size, store)
    for cls in (ShardedCuckooEmbedding, ShardedCuckooEmbeddingBag):
        for bad, err in ((0, ValueError), (-5, ValueError), (2.5, TypeError), ("10", TypeError),
                         (None, TypeError), (True, TypeError)):
            with pytest.raises(err, match="num_embeddings"):
                cls(bad, 4)
        with pytest.raises(TypeError, match="process_group must be a torch.distributed"):
            cls(8, 4, process_group="g")
        assert cls(5, 4).shard.num_embeddings == -(-5 // world_size)
    dist.destroy_process_group()


def test_sharded_constructors_check_num_embeddings_and_process_group(tmp_path):
    # -5, 0 and 2.5 built one row per shard, "10" five; the single-process modules refuse them
    _start(_w_constructor_args, 2, str(tmp_path / "s"))


def test_owner_of_checks_its_arguments():
    from embtab.distributed import owner_of

    assert owner_of(torch.tensor([[1, 2]]), 3, 5).shape == (1, 2)
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        owner_of(torch.tensor([1]), 0, 5)
    with pytest.raises(TypeError, match="shard_seed must be an int, got float"):
        owner_of(torch.tensor([1]), 2, 1.5)


# state dicts, subgroups and sketches (a review's findings) ///////////////////////////////////


def _w_state_dict_rank(rank, world_size, store, tmp):
    _init(rank, world_size, store)
    m = ShardedCuckooEmbedding(16, DIM, seed=SEED, min_count=1)
    for step in range(2):
        ids, _, _ = _global_batch(step, False)
        m(np.array_split(ids, world_size)[rank]).sum().backward()
    torch.save(m.state_dict(), os.path.join(tmp, f"sd{rank}.pt"))
    dist.barrier()
    other = torch.load(os.path.join(tmp, f"sd{1 - rank}.pt"))
    own = torch.load(os.path.join(tmp, f"sd{rank}.pt"))
    # another rank's shard, or this rank's under another shard_seed: its IDs would be
    # stranded on a rank no lookup reaches; refused, nothing loaded
    for target, sd in ((ShardedCuckooEmbedding(16, DIM, seed=SEED), other),
                       (ShardedCuckooEmbedding(16, DIM, seed=SEED, shard_seed=12345), own)):
        with pytest.raises(ValueError, match="does not own .* use save\\(\\) and load\\(\\)"):
            target.load_state_dict(sd)
        assert target.num_ids == 0
    back = ShardedCuckooEmbedding(16, DIM, seed=SEED)
    back.load_state_dict(own)  # this rank's own shard loads as before
    assert back.num_ids == m.num_ids > 0
    torch.testing.assert_close(back.shard.weight, m.shard.weight)
    dist.destroy_process_group()


def test_a_state_dict_loads_only_into_the_rank_that_owns_its_ids(tmp_path):
    # A review found the shards of a 3-rank state_dict() loaded on 2 ranks with no error, the
    # IDs left where no lookup reached them (their vectors lost at the next training step).
    _start(_w_state_dict_rank, 2, str(tmp_path / "s"), str(tmp_path))


def _w_subgroup(rank, world_size, store):
    _init(rank, world_size, store)
    sub = dist.new_group([1, 2])  # every rank takes part in making a group
    if rank in (1, 2):
        s = ShardedCuckooEmbedding(8, DIM, seed=SEED, process_group=sub)
        s(torch.tensor([1, 2, rank])).sum().backward()
    # every rank's next module over the whole group is the same module, numbered alike
    m = ShardedCuckooEmbedding(8, DIM, seed=SEED)
    out = m(torch.tensor([5, 6, rank]))
    out.sum().backward()
    assert out.shape == (3, DIM)
    dist.destroy_process_group()


def test_a_module_over_a_subgroup_does_not_shift_the_others(tmp_path):
    # Modules were numbered by one process-wide count, so after a module over ranks 1 and 2
    # every later module raised ShardedCommError ("in another order") on every rank.
    _start(_w_subgroup, 3, str(tmp_path / "s"))


def _w_sketch(rank, world_size, store, ckpt, eps, phase):
    _init(rank, world_size, store)
    m = ShardedCuckooEmbedding(16, DIM, seed=SEED, min_count=3, admission_eps=eps, name="m")
    if phase == "save":
        for _ in range(2):  # seen twice: counted, not admitted yet
            m(torch.tensor([1, 2, 3])).sum().backward()
        m.save(ckpt)
    else:
        with pytest.raises(ValueError, match="admission sketch of shape .*admission_eps"):
            m.load(ckpt)
        assert int(m.shard.admission_sketch.sum()) == 0 and m.num_ids == 0
    dist.destroy_process_group()


def test_a_checkpoint_with_another_sketch_shape_is_refused(tmp_path):
    # load() zero-filled a sketch of another shape: the sightings counted toward admission
    # were lost without a word.
    ckpt = str(tmp_path / "ckpt")
    _start(_w_sketch, 2, str(tmp_path / "s1"), ckpt, 0.01, "save")
    _start(_w_sketch, 2, str(tmp_path / "s2"), ckpt, 0.001, "load")


def _files(ckpt):
    return {f: open(os.path.join(ckpt, f), "rb").read() for f in sorted(os.listdir(ckpt))}


def _w_save_refuses(rank, world_size, store, ckpt, case):
    _init(rank, world_size, store)
    m = ShardedCuckooEmbedding(4, DIM, seed=SEED, optimizer=eo.Adam(lr=0.1), name="m")
    mine = torch.from_numpy(POOL)[m.owner_of(torch.from_numpy(POOL)) == 0]  # IDs rank 0 owns
    m(mine[rank:rank + 1]).sum().backward()
    m.save(ckpt)
    before = _files(ckpt)
    if case == "nan":  # a diverged step: Adam's state of the step's rows is NaN on every shard
        (m(torch.from_numpy(POOL)).sum() * float("nan")).backward()
        expect = "about to be saved has fused optimizer state 'exp_avg' that is not finite"
    else:
        # The module used twice in one loss; the second forward grows rank 0's shard only, so
        # rank 0's backward raises (a graph older than a growth) while rank 1's steps.
        x2 = mine[2:6] if rank == 0 else torch.zeros(0, dtype=torch.int64)
        try:
            (m(mine[rank:rank + 1]).sum() * m(x2).sum()).backward()
        except RuntimeError:
            assert rank == 0
        assert int(m.shard.opt_step) == 1 + rank
        expect = r"fused optimizer step counts differ \(rank 0: 1, rank 1: 2\)"
    with pytest.raises((ValueError, ShardedCommError), match=expect) as got:
        m.save(ckpt)  # load() would refuse what this save wrote, after it deleted the old shards
    assert "restore the module from it with load()" in str(got.value)
    dist.barrier()
    assert _files(ckpt) == before  # the previous checkpoint, untouched
    fresh = ShardedCuckooEmbedding(4, DIM, seed=SEED, optimizer=eo.Adam(lr=0.1), name="m")
    fresh.load(ckpt)
    assert int(fresh.shard.opt_step) == 1 and bool(torch.isfinite(fresh.shard.opt_exp_avg).all())
    dist.destroy_process_group()


@pytest.mark.parametrize("case", ["nan", "step_counts_differ"])
def test_save_refuses_what_load_would_refuse_and_keeps_the_old_checkpoint(tmp_path, case):
    # save() wrote (and so replaced the previous checkpoint with) shards that load() refuses:
    # fused optimizer state that is not finite, or shards whose fused step counts differ.
    _start(_w_save_refuses, 2, str(tmp_path / "s"), str(tmp_path / "ckpt"), case)


def _w_half_load(rank, world_size, store, ckpt, phase, expect):
    _init(rank, world_size, store)
    m = ShardedCuckooEmbedding(64, DIM, seed=SEED, padding_id=PAD, on_full="evict_lru",
                               min_count=2, name="m")
    if phase == "save":
        ids = torch.from_numpy(POOL[POOL != PAD])
        for _ in range(2):  # seen twice: admitted
            m(ids).sum().backward()
        assert m.num_ids > 0
        m.save(ckpt)
    else:
        with pytest.raises(ValueError, match=expect):
            m.load(ckpt)
        assert m.num_ids == 0 and int(m.shard.num_steps) == 0  # nothing loaded, on any rank
    dist.destroy_process_group()


def test_a_shard_the_local_module_would_refuse_loads_nothing_on_any_rank(tmp_path):
    # A rewritten shard file (valid checksums) that the owner's load_state_dict refuses passed
    # load()'s checks: the ranks agreed to load, rank 0 loaded, and rank 1 raised.
    def pad_id(p):
        p["ids"][0] = PAD

    edits = {"has row_last_step with negative values": lambda p: p["row_last_step"].fill_(-5),
             r"has row_last_step \d+, beyond its num_steps": lambda p: p["row_last_step"].add_(10),
             "holds the padding ID 17": pad_id,
             "has an admission_sketch with negative counts": lambda p: p["admission_sketch"].neg_()}
    for i, (expect, edit) in enumerate(edits.items()):
        ckpt = tmp_path / f"ckpt{i}"
        _start(_w_half_load, 2, str(tmp_path / f"s{i}"), str(ckpt), "save", None)
        _tamper_fused(ckpt, edit, shard_rank=1)
        path = re.escape(str(ckpt / _listed(ckpt)[1]))
        _start(_w_half_load, 2, str(tmp_path / f"t{i}"), str(ckpt), "load", f"{path} {expect}")
    # Shards each valid, whose summed admission sketch (a load on another world size) is not:
    # refused before the agreement, naming the manifest.
    ckpt = tmp_path / "ckpt_sum"
    _start(_w_half_load, 2, str(tmp_path / "s_sum"), str(ckpt), "save", None)
    for r in range(2):
        _tamper_fused(ckpt, lambda p: p["admission_sketch"][0].fill_(2**63 - 1), shard_rank=r)
    path = re.escape(str(ckpt / _manifest(ckpt)))
    _start(_w_half_load, 1, str(tmp_path / "t_sum"), str(ckpt), "load",
           f"{path} lists shards that rank 0 of 1 cannot load together: .*admission_sketch")


def _w_double_backward(rank, world_size, store):
    _init(rank, world_size, store, timeout_s=10.0)
    m = ShardedCuckooEmbedding(16, DIM, seed=SEED)
    x = torch.from_numpy(np.array_split(POOL, world_size)[rank])
    loss = (m(x) ** 3).sum()
    (g,) = torch.autograd.grad(loss, m.weight, create_graph=True)
    # The gradient penalty's own gradient would need the backward's all_to_all differentiated:
    # refused on every rank (it was dropped without a word: g did not require grad).
    with pytest.raises(RuntimeError, match="once_differentiable"):
        (loss + (g ** 2).sum()).backward()
    m(x).sum().backward()  # the ranks are still in step
    dist.destroy_process_group()


def test_double_backward_through_the_exchange_raises(tmp_path):
    _start(_w_double_backward, 2, str(tmp_path / "s"))


def _w_frozen_rank(rank, world_size, store):
    _init(rank, world_size, store, timeout_s=10.0)
    m = ShardedCuckooEmbedding(16, DIM, seed=SEED)
    x = torch.tensor([1, 2, 3 + rank])
    m.requires_grad_(rank != 1)  # rank 1's shard frozen: its forward records no backward
    with pytest.raises(ShardedCommError, match="rank [01] records (no|a) graph for backward where"):
        m(x)
    m.requires_grad_(True)
    with torch.no_grad() if rank == 0 else contextlib.nullcontext():
        with pytest.raises(ShardedCommError, match="torch.no_grad"):
            m(x)
    with torch.no_grad():  # alike on every rank: fine
        assert m(x).shape == (3, DIM)
    m(x).sum().backward()
    dist.destroy_process_group()


def test_a_rank_without_gradient_raises_in_forward_on_every_rank(tmp_path):
    # A rank with a frozen shard (or under no_grad) left the others waiting in backward for the
    # process group's timeout.
    _start(_w_frozen_rank, 2, str(tmp_path / "s"))
