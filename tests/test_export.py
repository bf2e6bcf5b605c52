"""torch.compile / torch.export of models holding embtab.nn modules (docs/site/guide/modules.md,
"Compile and export"): eval-mode forwards trace with no graph break, the exported program
carries the ID -> row map, and the ``embtab::hashed_rows`` operator passes opcheck."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import embtab.nn as enn
from embtab import _ops

SEEN = torch.tensor([[1, 2, 3], [2**40, -(2**63), 7], [11, 12, 13]])
# Known IDs, unknown IDs (99, -7, 2**62), the padding ID 5 and a repeat.
QUERY = torch.tensor([[1, 99, 5], [2**40, 3, -7], [2**62, -(2**63), 1]])


def _modules():
    return {
        "cuckoo": enn.CuckooEmbedding(4, 3, padding_id=5, seed=3),  # grows past 4 rows
        "hashed": enn.HashedEmbedding(8, 3, padding_id=5, seed=2**64 - 1),
        "cuckoo_bag": enn.CuckooEmbeddingBag(16, 3, mode="mean", padding_id=5),
        "hashed_bag": enn.HashedEmbeddingBag(8, 3, mode="sum", seed=7),
    }


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.m = nn.ModuleDict(_modules())

    def forward(self, ids, flat, offsets):
        return torch.cat(
            [
                self.m["cuckoo"](ids).sum(1),
                self.m["hashed"](ids).sum(1),
                self.m["cuckoo_bag"](ids),
                self.m["hashed_bag"](flat, offsets),
            ],
            dim=1,
        )


def _trained_model():
    torch.manual_seed(0)
    model = Model()
    model(SEEN, SEEN.reshape(-1), torch.tensor([0, 2, 5]))
    return model.eval()


def _args(ids):
    return ids, ids.reshape(-1), torch.tensor([0, 4, 4])  # an empty bag in the middle


def test_eval_forward_unknown_ids_read_zero_row():
    model = _trained_model()
    out = model.m["cuckoo"](QUERY)
    assert torch.equal(out[0, 1], torch.zeros(3))  # unknown
    assert torch.equal(out[0, 2], torch.zeros(3))  # padding
    assert not torch.equal(out[0, 0], torch.zeros(3))
    assert model.m["cuckoo"].num_embeddings > 4  # grew: the map's zero row moved


@pytest.mark.parametrize("name", list(_modules()))
def test_compile_fullgraph_eval_equals_eager(name):
    torch._dynamo.reset()
    model = _trained_model()
    mod = model.m[name]
    args = (QUERY.reshape(-1), torch.tensor([0, 4, 4])) if name == "hashed_bag" else (QUERY,)
    eager = mod(*args)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")(*args)
    assert torch.equal(compiled, eager)


def test_compiled_eval_follows_the_map_after_more_training():
    torch._dynamo.reset()
    emb = enn.CuckooEmbedding(8, 2)
    emb(torch.tensor([1, 2]))
    emb.eval()
    fn = torch.compile(emb, fullgraph=True, backend="eager")
    q = torch.tensor([1, 2, 3])
    assert torch.equal(fn(q)[2], torch.zeros(2))
    emb.train()
    emb(torch.tensor([3, 40, 50, 60, 70, 80, 90, 100]))  # inserts 3 and grows
    emb.eval()
    assert torch.equal(fn(q), emb(q))
    assert not torch.equal(fn(q)[2], torch.zeros(2))
    # load_state_dict in eval mode replaces the map at once
    fresh = enn.CuckooEmbedding(8, 2).eval()
    fresh.load_state_dict(emb.state_dict())
    assert torch.equal(torch.compile(fresh, fullgraph=True, backend="eager")(q), emb(q))


def test_export_save_load_in_fresh_process(tmp_path):
    model = _trained_model()
    ep = torch.export.export(model, _args(QUERY))
    assert torch.equal(ep.module()(*_args(QUERY)), model(*_args(QUERY)))
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    torch.save({"args": _args(QUERY)}, tmp_path / "in.pt")
    script = (
        "import sys, torch, embtab.nn\n"
        "d = sys.argv[1]\n"
        "ep = torch.export.load(d + '/model.pt2')\n"
        "a = torch.load(d + '/in.pt')\n"
        "torch.save({'out': ep.module()(*a['args'])}, d + '/out.pt')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    out = torch.load(tmp_path / "out.pt")["out"]
    assert torch.equal(out, model(*_args(QUERY)))


def test_train_mode_compile_without_fullgraph_equals_eager():
    torch._dynamo.reset()
    a, b = enn.CuckooEmbedding(4, 3, seed=1), enn.CuckooEmbedding(4, 3, seed=1)
    fn = torch.compile(b, backend="eager")
    for batch in (SEEN, QUERY):
        assert torch.equal(fn(batch), a(batch))
    assert a.num_ids == b.num_ids and torch.equal(a.row_ids, b.row_ids)


@pytest.mark.parametrize("fused", [False, True])
def test_train_mode_compile_keeps_growing(fused):
    """Once a compiled forward has recompiled, torch.compile's guards hold weak references to
    the weight, so growth cannot swap it: it replaces its data instead, and training equals
    eager through every growth."""
    import embtab.optim as eo

    def make():
        kw = dict(optimizer=eo.SGD(lr=0.1)) if fused else {}
        m = enn.CuckooEmbedding(2, 3, seed=1, **kw)
        return m, (None if fused else torch.optim.SGD(m.parameters(), lr=0.1))

    for _ in range(2):  # an old graph freed only by the cycle collector made this flaky
        torch._dynamo.reset()
        _compiled_growth_equals_eager(make)


def _compiled_growth_equals_eager(make):
    (m, opt), (ref, ref_opt) = make(), make()
    fn = torch.compile(m, backend="eager")
    with warnings.catch_warnings():
        # dynamo, resuming after the fused lookup's graph break, reads .grad of its output
        # (a non-leaf) and torch warns about that; nothing of embtab's
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
        for ids in ([1, 2], [3, 4, 5], [6, 7, 8, 9, 10], list(range(11, 40))):
            for f, o in ((fn, opt), (ref, ref_opt)):
                if o is not None:
                    o.zero_grad()
                f(torch.tensor(ids)).sum().backward()
                if o is not None:
                    o.step()
    assert m.num_growths.item() >= 3 and m.num_ids == 39
    assert torch.equal(m.weight, ref.weight)


@pytest.mark.parametrize("seed", [0, 12345, -1, -(2**63)])
def test_hashed_rows_opcheck(seed):
    ids = torch.tensor([[0, 1, -5], [2**62, -(2**63), 7]])
    torch.library.opcheck(torch.ops.embtab.hashed_rows.default, (ids, 11, seed, 1))
    torch.library.opcheck(torch.ops.embtab.hashed_rows.default, (torch.empty(0, dtype=torch.int64), 3, seed, 0))


def test_hashed_rows_matches_the_module_and_checks_arguments():
    emb = enn.HashedEmbedding(13, 2, seed=2**64 - 5)
    ids = torch.tensor([4, -9, 2**63 - 1])
    rows = torch.ops.embtab.hashed_rows(ids, 13, _ops.signed_seed(emb.seed), 1)
    assert torch.equal(rows, emb.lookup(ids))
    with pytest.raises(TypeError, match="ids"):
        torch.ops.embtab.hashed_rows(ids.to(torch.int32), 13, 0, 1)
    with pytest.raises(ValueError, match="num_rows"):
        torch.ops.embtab.hashed_rows(ids, 0, 0, 1)


@pytest.mark.parametrize("cls", [enn.HashedEmbedding, enn.HashedEmbeddingBag])
def test_hashed_train_mode_compiles_fullgraph_with_equal_gradients(cls):
    torch._dynamo.reset()
    a, b = cls(8, 3, padding_id=5, seed=4), cls(8, 3, padding_id=5, seed=4)
    fn = torch.compile(b, fullgraph=True, backend="aot_eager")
    (a(QUERY) ** 2).sum().backward()
    (fn(QUERY) ** 2).sum().backward()
    assert torch.equal(a.weight.grad, b.weight.grad)


def test_traced_forward_refuses_a_stale_map():
    torch._dynamo.reset()
    emb = enn.CuckooEmbedding(8, 2)
    emb(torch.tensor([1, 2]))
    emb.training = False  # bypasses .eval(), which would rebuild the snapshot
    with pytest.raises(Exception, match="call .eval"):
        torch.compile(emb, fullgraph=True, backend="eager")(torch.tensor([1]))
    emb.eval()
    fn = torch.compile(emb, fullgraph=True, backend="eager")
    assert torch.equal(fn(torch.tensor([1, 2])), emb(torch.tensor([1, 2])))


@pytest.mark.parametrize("make", [lambda: enn.CuckooEmbedding(8, 4),
                                  lambda: enn.HashedEmbedding(8, 4),
                                  lambda: enn.CuckooEmbeddingBag(8, 4, mode="sum")])
def test_jit_trace_is_refused_rather_than_baking_the_rows(make):
    m = make()
    m(torch.tensor([[1, 2], [3, 4]]))
    m.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: jit.trace is deprecated
        with pytest.raises(RuntimeError, match="torch.jit.trace cannot follow"):
            torch.jit.trace(m, (torch.tensor([[1, 2], [3, 4]]),))


@pytest.mark.parametrize("name", ["cuckoo", "cuckoo_bag", "hashed"])
def test_exported_program_refuses_ids_of_another_dtype(name):
    # The eager TypeError for float and bool IDs ran only while tracing: an exported cuckoo
    # module matched float IDs by value (2.0**53 read ID 2**53 + 1's row) and read bools as
    # 0 and 1. Oracle: eager refuses them; the exported program must not answer either.
    model = _trained_model()
    m = model.m[name]
    n = torch.export.Dim("n")
    ep = torch.export.export(m, (QUERY,), dynamic_shapes=({0: n},)).module()
    torch.testing.assert_close(ep(QUERY[:2]), m(QUERY[:2]))  # int64: as eager
    for bad in (torch.tensor([[1.0, 99.0, 2.0**53]]), torch.tensor([[True, False, True]])):
        with pytest.raises(TypeError, match="integer IDs"):
            m(bad)
        with pytest.raises(RuntimeError, match="dtype"):
            ep(bad)
