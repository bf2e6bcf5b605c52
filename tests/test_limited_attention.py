"""Limited attention: the exact consumption model (rerank.expected_consumption, metrics.
consumed_utility_at_k) against enumeration and Monte Carlo, and the limited-attention reranker
against brute force over every ordered list of tiny candidate sets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embtab import metrics, rerank


def brute_consumption(accept_row: np.ndarray, c: int) -> float:
    """E[min(c, number of consumed ranks)] by enumerating every outcome of the k ranks.

    Stopping after c consumptions changes nothing before the c-th, so the count consumed is
    min(c, S) with S the number of ranks whose Bernoulli(accept) comes up."""
    k = accept_row.size
    total = 0.0
    for outcome in itertools.product((0, 1), repeat=k):
        o = np.array(outcome)
        p = np.prod(np.where(o == 1, accept_row, 1 - accept_row))
        total += p * min(c, int(o.sum()))
    return total


def list_value(rel: np.ndarray, w: np.ndarray, order, c: int, e: np.ndarray) -> float:
    """Expected consumption of one user's list ``order`` by enumeration, per intent."""
    return float(sum(w[z] * brute_consumption(rel[z, list(order)] * e, c)
                     for z in range(rel.shape[0])))


@pytest.mark.parametrize("c", [1, 2, 3, 6])
def test_expected_consumption_equals_enumeration(c):
    rng = np.random.default_rng(c)
    acc = rng.random((7, 6))
    got = rerank.expected_consumption(acc, c)
    want = [brute_consumption(row, c) for row in acc]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_expected_consumption_with_intents_matches_monte_carlo():
    rng = np.random.default_rng(1)
    U, Z, k, c = 3, 2, 5, 2
    acc = rng.random((U, Z, k))
    w = rng.dirichlet(np.ones(Z), size=U)
    exact = rerank.expected_consumption(acc, c, w)
    n = 200_000
    for u in range(U):
        z = rng.choice(Z, size=n, p=w[u])
        draws = rng.random((n, k)) < acc[u, z]
        sim = np.minimum(c, draws.sum(axis=1)).mean()
        # 200K draws of a count in [0, 2]: standard error < 0.002
        assert abs(sim - exact[u]) < 0.01, (u, sim, exact[u])


def test_expected_consumption_hand_case_and_no_budget():
    # ranks consumed w.p. 0.5, 0.5, c = 1: 0.5 + 0.5 * 0.5
    assert rerank.expected_consumption(np.array([[0.5, 0.5]]), 1)[0] == pytest.approx(0.75)
    # c >= k: no budget, the sum of the probabilities
    acc = np.array([[0.2, 0.9, 0.4]])
    assert rerank.expected_consumption(acc, 3)[0] == pytest.approx(1.5)


def test_expected_consumption_rejects_bad_input():
    with pytest.raises(TypeError, match="accept"):
        rerank.expected_consumption([[0.5]], 1)
    with pytest.raises(ValueError, match="accept"):
        rerank.expected_consumption(np.array([[1.5]]), 1)
    with pytest.raises(ValueError, match="c must be >= 1"):
        rerank.expected_consumption(np.array([[0.5]]), 0)
    with pytest.raises(ValueError, match="intent_weights"):
        rerank.expected_consumption(np.ones((1, 2, 3)) / 2, 1)
    with pytest.raises(ValueError, match="intent_weights must have shape"):
        rerank.expected_consumption(np.ones((1, 2, 3)) / 2, 1, np.ones((1, 3)) / 3)
    with pytest.raises(ValueError, match="intent_weights"):
        rerank.expected_consumption(np.ones((1, 2, 3)) / 2, 1, np.array([[0.5, 0.6]]))


def test_metric_heldout_sets_and_dense_relevance():
    # test items {0, 1}: list [2, 0, 1] consumes rank 2 (e = 1/log2 3) or else rank 3 (e = 1/2)
    e2, e3 = 1 / np.log2(3), 0.5
    got = metrics.consumed_utility_at_k([[2, 0, 1]], [[0, 1]], c=1, k=3, n_items=3)
    assert got == pytest.approx(e2 + (1 - e2) * e3)
    # users without a test item are left out, as recall@k
    per = metrics.consumed_utility_at_k([[0, 1], [1, 0]], [[0], []], c=1, k=2, n_items=2,
                                        per_user=True)
    assert per[0] == pytest.approx(1.0) and np.isnan(per[1])
    # dense relevance: the same as the exact DP on the gathered values times e_r
    rng = np.random.default_rng(0)
    rel = rng.random((4, 9))
    top = np.argsort(-rel, axis=1)[:, :5]
    e = rerank.examination_probability(5)
    want = np.mean([brute_consumption(rel[u, top[u]] * e, 2) for u in range(4)])
    assert metrics.consumed_utility_at_k(top, rel, c=2, k=5) == pytest.approx(want, rel=1e-12)
    # intents: a [U, Z, I] relevance with weights
    rel3 = rng.random((4, 2, 9))
    w = np.array([[0.7, 0.3]] * 4)
    want3 = np.mean([list_value(rel3[u], w[u], top[u], 2, e) for u in range(4)])
    got3 = metrics.consumed_utility_at_k(top, rel3, c=2, k=5, intent_weights=w)
    assert got3 == pytest.approx(want3, rel=1e-12)
    with pytest.raises(ValueError, match="intent_weights"):
        metrics.consumed_utility_at_k(top, [[0]] * 4, c=1, k=5, n_items=9, intent_weights=w)


def _all_lists_best(rel, w, k, c, e):
    C = rel.shape[1]
    return max(list_value(rel, w, order, c, e) for order in itertools.permutations(range(C), k))


@pytest.mark.parametrize("c", [1, 2, 4])
def test_reranker_single_intent_is_optimal(c):
    rng = np.random.default_rng(10 + c)
    e = rerank.examination_probability(3)
    for _ in range(20):
        rel = rng.random((1, 6))
        lists, obj = rerank.limited_attention(rel, 3, c, return_objective=True)
        best = _all_lists_best(rel, np.ones(1), 3, c, e)
        assert obj[0] == pytest.approx(best, rel=1e-12)
        assert list(lists[0]) == list(np.argsort(-rel[0], kind="stable")[:3])


def test_reranker_multi_intent_against_brute_force():
    rng = np.random.default_rng(3)
    e = rerank.examination_probability(3)
    ratios = []
    for trial in range(40):
        Z = 2 + trial % 2
        rel = rng.random((1, Z, 6)) * (rng.random((1, Z, 6)) < 0.6)
        w = rng.dirichlet(np.ones(Z), size=1)
        c = 1 + trial % 3
        lists, obj = rerank.limited_attention(rel, 3, c, intent_weights=w,
                                              return_objective=True)
        # the reported objective is the list's exact value
        assert obj[0] == pytest.approx(list_value(rel[0], w[0], lists[0], c, e), rel=1e-12)
        best = _all_lists_best(rel[0], w[0], 3, c, e)
        assert obj[0] <= best + 1e-12
        ratios.append(obj[0] / best if best > 0 else 1.0)
    # a greedy, not an exact search: near the optimum on these instances
    assert min(ratios) > 0.95 and np.mean(ratios) > 0.99


def test_reranker_diversifies_a_70_30_user_when_budget_is_tight():
    # items 0-3 serve the majority intent (70%), 4-5 the minority (30%); examined for sure
    rel = np.zeros((1, 2, 6))
    rel[0, 0, :4] = [0.9, 0.9, 0.9, 0.9]
    rel[0, 1, 4:] = [0.8, 0.8]
    w = np.array([[0.7, 0.3]])
    e = np.ones(3)
    lists, obj = rerank.limited_attention(rel, 3, 1, intent_weights=w, examination=e,
                                          return_objective=True)
    assert sorted(lists[0]) == [0, 1, 4]                  # one minority item gets in
    assert obj[0] == pytest.approx(_all_lists_best(rel[0], w[0], 3, 1, e))
    # with no budget (c >= k) nothing is gained by mixing: top by marginal relevance
    lists = rerank.limited_attention(rel, 3, 3, intent_weights=w, examination=e)
    assert sorted(lists[0]) == [0, 1, 2]


def test_reranker_candidates_and_errors():
    rel = np.array([[0.1, 0.9, 0.5]])
    cand = np.array([[30, 10, 20]], dtype=np.int64)
    assert rerank.limited_attention(rel, 2, 1, candidates=cand).tolist() == [[10, 20]]
    with pytest.raises(TypeError, match="candidates"):
        rerank.limited_attention(rel, 2, 1, candidates=cand.astype(np.int32))
    with pytest.raises(ValueError, match="k must be in"):
        rerank.limited_attention(rel, 4, 1)
    with pytest.raises(ValueError, match="examination must have shape"):
        rerank.limited_attention(rel, 2, 1, examination=np.ones(3))
    with pytest.raises(ValueError, match="relevance"):
        rerank.limited_attention(-rel, 2, 1)


def test_intent_relevance_hand_case():
    # user 70/30 over two categories; candidate items 0 (cat 0) and 1 (cat 1), marginal 0.6, 0.3
    rel = rerank.intent_relevance(np.array([[0.6, 0.3]]), np.eye(2), np.array([[0.7, 0.3]]))
    np.testing.assert_allclose(rel, [[[0.6 / 0.7, 0.0], [0.0, 1.0]]])
    # masked candidates (-inf) and categories outside the user's mix get 0
    rel = rerank.intent_relevance(np.array([[-np.inf, 0.5]]), np.eye(2), np.array([[1.0, 0.0]]),
                                  candidates=np.array([[1, 0]], dtype=np.int64))
    np.testing.assert_allclose(rel, [[[0.0, 0.5], [0.0, 0.0]]])
    with pytest.raises(ValueError, match="scores must lie in"):
        rerank.intent_relevance(np.array([[2.0]]), np.eye(1), np.ones((1, 1)))
