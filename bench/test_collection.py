"""A 26-table Criteo-shaped collection beside FBGEMM's TBE and a dict of nn.EmbeddingBag
(pytest-benchmark; the workload and the step functions are embtab.benchmarks.collection's).

A step is forward, ``sum()`` loss, backward and a row-wise Adagrad step (the dict of
``nn.EmbeddingBag`` uses ``torch.optim.Adagrad``: torch has no row-wise Adagrad). Full sizes
when timing (tables of 10**3 to 10**6 rows, batches of 8,192); with ``--benchmark-disable`` the
quick sizes, each path run once and checked. FBGEMM's test is skipped when it does not import.
"""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from embtab.benchmarks import collection as bc
from embtab.benchmarks.optim import load_fbgemm

N_BATCHES = 3


@pytest.fixture(scope="module")
def workload(full):
    return bc.make_workload(not full, 0, N_BATCHES, 8192 if full else 256)


def _run(benchmark, w, step):
    benchmark.group = (f"26-table collection step: {w['sizes'][0]:,} to {w['sizes'][-1]:,} rows "
                       f"x 16, batch {w['batch']:,}, row-wise Adagrad")
    state = {"b": 0, "losses": []}

    def one():
        state["losses"].append(step(state["b"] % N_BATCHES))
        state["b"] += 1

    for _ in range(N_BATCHES):  # steady state: every ID seen before the timed rounds
        one()
    benchmark(one)
    assert np.all(np.isfinite(state["losses"]))


def test_step_embtab_collection(benchmark, workload):
    coll = bc.make_collection(workload["sizes"], 16, bc.fused_optimizer("rowwise_adagrad"), 0)
    _run(benchmark, workload, lambda b: bc.collection_step(coll, workload["raw"][b]))
    assert [bag.num_ids for bag in coll.embedding_bags.values()] == workload["distinct"]
    assert all(bag.weight.grad is None for bag in coll.embedding_bags.values())


def test_step_dict_of_nn_embedding_bag(benchmark, workload):
    torch.manual_seed(0)
    bags = [nn.EmbeddingBag(n, 16, mode="sum", sparse=True) for n in workload["sizes"]]
    opt = torch.optim.Adagrad([p for b in bags for p in b.parameters()], lr=bc.LR)
    offsets = torch.arange(workload["batch"])
    with pytest.warns(UserWarning, match="Sparse invariant checks"):
        _run(benchmark, workload, lambda b: bc.dict_step(bags, opt, workload["dense"][b], offsets))


def test_step_fbgemm_tbe(benchmark, workload):
    with warnings.catch_warnings():  # fbgemm_gpu 1.8 warns while importing its SSD ops
        warnings.simplefilter("ignore", DeprecationWarning)
        fb, reason = load_fbgemm()
    if fb is None:
        pytest.skip(reason)
    tbe = bc.fbgemm_tbe(fb, workload["sizes"], 16, "rowwise_adagrad")
    _run(benchmark, workload, lambda b: bc.tbe_step(tbe, workload["tbe_indices"][b],
                                                    workload["tbe_offsets"]))


def test_report_names_every_target():
    times = {"embtab collection": 0.002, "FBGEMM TBE": 0.004, "dict of nn.EmbeddingBag": 0.01}
    r = {"machine": {}, "threads": 2, "table_sizes": bc.table_sizes(False), "embedding_dim": 16,
         "batch": 8192, "zipf_s": 1.1, "repeats": 5, "n_batches": 8, "fbgemm": "1.8.0",
         "fbgemm_skipped": None, "seconds_per_step": {"rowwise_adagrad": times, "sgd": times},
         "breakdown": {"remap_lookup_only": 1e-3, "forward": 2e-3, "backward": 3e-3}}
    md = bc.format_markdown(r)
    assert "rowwise_adagrad: embtab collection / FBGEMM TBE = 0.50x (target <= 0.8x: met)" in md
    assert f"{sum(bc.table_sizes(False)):,} in all" in md
    assert bc.table_sizes(False)[0] == 1000 and bc.table_sizes(False)[-1] == 10**6
