"""Training steps of embtab.nn's modules beside nn.Embedding / nn.EmbeddingBag (pytest-benchmark).

A step is forward, ``sum()`` loss, backward with sparse gradients and ``torch.optim.SGD``, on a
table of 2**18 x 64 float32 rows and batches of 16,384 Zipf(1.1) draws over 2**18 distinct raw
64-bit IDs. The torch references get the same batches pre-remapped to dense indices (the ID's
Zipf rank); embtab's modules are timed in steady state (every batch seen once before). Each round
steps through the next of 4 prepared batches; every loss is checked finite and the ID maps are
checked to hold exactly the batches' distinct IDs. ``CuckooEmbedding`` also runs with the fused
SGD of :mod:`embtab.optim` (the step applied inside backward, no ``torch.optim`` pass).
"""

import numpy as np
import pytest
import torch
from torch import nn

from embtab.benchmarks._harness import zipf_ranks
import embtab.optim
from embtab.nn import CuckooEmbedding, CuckooEmbeddingBag, HashedEmbedding

N_BATCHES = 4
BAG = 8


@pytest.fixture(scope="module")
def workload(full):
    n, dim, batch = (2**18, 64, 2**14) if full else (2**10, 8, 2**8)
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, int(n * 1.01) + 16, dtype=np.int64))[:n]
    rng.shuffle(keys)
    ranks = [zipf_ranks(n, batch, 1.1, rng) for _ in range(N_BATCHES)]
    return dict(n=n, dim=dim, batch=batch,
                dense=[torch.from_numpy(r) for r in ranks],
                raw=[torch.from_numpy(keys[r]) for r in ranks],
                distinct=len(np.unique(np.concatenate(ranks))),
                offsets=torch.arange(0, batch, BAG))


def _stepper(module, batches, *extra):
    """A function doing one SGD step on the next batch (round robin); returns the losses seen.
    A module built with a fused optimizer (``optimizer=``) steps inside its backward."""
    fused = getattr(module, "optimizer", None) is not None
    opt = None if fused else torch.optim.SGD(module.parameters(), lr=0.01)
    losses = []

    def step():
        b = batches[len(losses) % len(batches)]
        loss = module(b, *extra).sum()
        if opt is not None:
            opt.zero_grad()
        loss.backward()
        if opt is not None:
            opt.step()
        losses.append(loss.item())
        return losses

    return step


def _run(benchmark, group, module, batches, *extra, warm=False):
    benchmark.group = group
    step = _stepper(module, batches, *extra)
    if warm:  # steady state: every ID has been seen (its insert and init are not timed)
        for _ in batches:
            step()
    losses = benchmark(step)
    assert len(losses) > 0 and np.all(np.isfinite(losses))
    return module


def _group(w, what):
    return (f"training step ({what}): {w['n']:,} x {w['dim']} rows, batch {w['batch']:,} "
            f"Zipf(1.1) IDs, sparse SGD")


def test_step_nn_embedding(benchmark, workload):
    torch.manual_seed(0)
    _run(benchmark, _group(workload, "embedding"), nn.Embedding(workload["n"], workload["dim"], sparse=True),
         workload["dense"])


def test_step_cuckoo_embedding(benchmark, workload):
    m = _run(benchmark, _group(workload, "embedding"),
             CuckooEmbedding(workload["n"], workload["dim"], sparse=True, seed=0), workload["raw"], warm=True)
    assert m.num_ids == workload["distinct"]


def test_step_cuckoo_embedding_fused_sgd(benchmark, workload):
    m = _run(benchmark, _group(workload, "embedding"),
             CuckooEmbedding(workload["n"], workload["dim"], sparse=True, seed=0,
                             optimizer=embtab.optim.SGD(lr=0.01)), workload["raw"], warm=True)
    assert m.num_ids == workload["distinct"] and m.weight.grad is None


def test_step_hashed_embedding(benchmark, workload):
    _run(benchmark, _group(workload, "embedding"),
         HashedEmbedding(workload["n"], workload["dim"], sparse=True, seed=0), workload["raw"])


def test_step_nn_embedding_bag(benchmark, workload):
    torch.manual_seed(0)
    _run(benchmark, _group(workload, f"bag of {BAG}, sum"),
         nn.EmbeddingBag(workload["n"], workload["dim"], mode="sum", sparse=True),
         workload["dense"], workload["offsets"])


def test_step_cuckoo_embedding_bag(benchmark, workload):
    m = _run(benchmark, _group(workload, f"bag of {BAG}, sum"),
             CuckooEmbeddingBag(workload["n"], workload["dim"], mode="sum", sparse=True, seed=0),
             workload["raw"], workload["offsets"], warm=True)
    assert m.num_ids == workload["distinct"]
