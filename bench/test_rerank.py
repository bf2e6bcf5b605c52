"""Calibrated reranking and top-k beside NumPy (and torch) (pytest-benchmark).

Rerank: the workload of ``embtab bench rerank`` (items with 1-3 of G = 20 genres, C = 500
candidates per user in score order, k = 10, lambda = 0.5, alpha = 0.01) for 1,000 users, by
embtab (1 and 2 threads; the item matrix prepared once as an ``ItemDistribution``, the serving
recipe) and by two NumPy greedies that compute the same objective: (a) vectorised over candidates,
looping over users and positions, (b) batched over users and candidates. Every implementation's
lists must equal NumPy (b)'s. Top-k: the k largest of each row of a [U, N] float32 matrix by
embtab, ``np.argpartition`` + sort and ``torch.topk``; the values must be equal.
"""

import numpy as np
import pytest
import torch

from embtab import rerank
from embtab.benchmarks.rerank import make_workload, numpy_topk, rerank_numpy_a, rerank_numpy_b

LAM = 0.5


@pytest.fixture(scope="module")
def case(full):
    if full:
        wl = make_workload(U=1_000, C=500, G=20, n_items=5_000, k=10, seed=0)
    else:
        wl = make_workload(U=16, C=40, G=6, n_items=200, k=5, history=10, seed=0)
    expected = rerank_numpy_b(wl["scores"], wl["candidates"], wl["item_dist"], wl["target"], wl["k"], LAM)
    return dict(wl, expected=expected, items=rerank.ItemDistribution(wl["item_dist"]))


def _group(benchmark, c):
    U, C = c["scores"].shape
    benchmark.group = (f"calibrated rerank: {U:,} users, C={C}, G={c['G']}, k={c['k']}, "
                       f"lambda={LAM}")


@pytest.mark.parametrize("threads", [1, 2])
def test_rerank_embtab(benchmark, case, threads):
    _group(benchmark, case)
    out = benchmark(rerank.calibrated, case["scores"], case["items"], case["target"], case["k"],
                    lam=LAM, candidates=case["candidates"], num_threads=threads)
    assert np.array_equal(out, case["expected"])


def test_rerank_numpy_b_batched(benchmark, case):
    _group(benchmark, case)
    out = benchmark.pedantic(rerank_numpy_b, args=(case["scores"], case["candidates"], case["item_dist"],
                                                   case["target"], case["k"], LAM), rounds=3)
    assert np.array_equal(out, case["expected"])


def test_rerank_numpy_a_per_user(benchmark, case):
    _group(benchmark, case)
    out = benchmark.pedantic(rerank_numpy_a, args=(case["scores"], case["candidates"], case["item_dist"],
                                                   case["target"], case["k"], LAM), rounds=3)
    assert np.array_equal(out, case["expected"])


@pytest.fixture(scope="module", params=[(1682, 10), (10_000, 500)], ids=["N1682-k10", "N10000-k500"])
def topk_case(request, full):
    N, k = request.param
    U = 2_000 if full else 8
    scores = np.random.default_rng(N).random((U, N), dtype=np.float32)
    values, _ = numpy_topk(scores, k)
    return dict(scores=scores, k=k, values=values)


def _topk_group(benchmark, c):
    U, N = c["scores"].shape
    benchmark.group = f"top-k: {U:,} x {N:,} float32, k={c['k']}"


@pytest.mark.parametrize("threads", [1, 2])
def test_topk_embtab(benchmark, topk_case, threads):
    _topk_group(benchmark, topk_case)
    vals, idx = benchmark(rerank.topk, topk_case["scores"], topk_case["k"], num_threads=threads)
    assert np.array_equal(vals, topk_case["values"])
    assert np.array_equal(np.take_along_axis(topk_case["scores"], idx, axis=1), vals)


def test_topk_numpy_argpartition(benchmark, topk_case):
    _topk_group(benchmark, topk_case)
    vals, _ = benchmark(numpy_topk, topk_case["scores"], topk_case["k"])
    assert np.array_equal(vals, -np.sort(-topk_case["scores"], axis=1)[:, :topk_case["k"]])


@pytest.mark.parametrize("threads", [1, 2])
def test_topk_torch(benchmark, topk_case, threads):
    _topk_group(benchmark, topk_case)
    t = torch.from_numpy(topk_case["scores"])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        vals, _ = benchmark(torch.topk, t, topk_case["k"], dim=1, largest=True, sorted=True)
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(vals.numpy(), topk_case["values"])
