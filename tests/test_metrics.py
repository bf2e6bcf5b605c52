import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embtab import metrics
from embtab.data import RowSets, power_law, train_test_split
from embtab.metrics import (
    arp_at_k,
    as_row_sets,
    coverage_at_k,
    decile_recall_at_k,
    entropy_at_k,
    evaluate,
    exposure_counts,
    gini_at_k,
    head_items,
    item_counts,
    item_popularity,
    miscalibration_at_k,
    ndcg_at_k,
    popularity_deciles,
    recall_at_k,
    tail_share_at_k,
)

# A small hand-worked world used by several tests: 3 users, 5 items, 2 genres.
#   train: u0 {0, 1}, u1 {0, 2}, u2 {0, 3}      -> counts [3, 1, 1, 1, 0]
#   test:  u0 {2, 4}, u1 {},     u2 {1}
#   top-2: u0 [2, 1], u1 [1, 3], u2 [4, 2]
#   genres: item0 {A}, item1 {B}, item2 {A, B}, item3 {A}, item4 {}
TRAIN = [np.array([0, 1]), np.array([0, 2]), np.array([0, 3])]
TEST = [np.array([2, 4]), np.array([], dtype=np.int64), np.array([1])]
TOPK = np.array([[2, 1], [1, 3], [4, 2]])
GENRES = np.array([[1, 0], [0, 1], [1, 1], [1, 0], [0, 0]], dtype=bool)
N_ITEMS = 5


def test_recall_hand_worked():
    # u0: top {2, 1} ∩ test {2, 4} = {2}: 1 / min(2, 2) = 0.5
    # u1: no test items, skipped
    # u2: top {4, 2} ∩ test {1} = {}: 0 / min(2, 1) = 0
    # mean over u0, u2 = 0.25
    assert recall_at_k(TOPK, TEST, k=2, n_items=N_ITEMS) == pytest.approx(0.25)
    per = recall_at_k(TOPK, TEST, k=2, n_items=N_ITEMS, per_user=True)
    assert per[0] == 0.5 and math.isnan(per[1]) and per[2] == 0.0
    # k=1: u0 top {2} hits: 1 / min(1, 2) = 1; u2 top {4}: 0 -> 0.5
    assert recall_at_k(TOPK, TEST, k=1, n_items=N_ITEMS) == pytest.approx(0.5)


def test_recall_denominator_is_min_k_test():
    # one user, test has 5 items, k = 2, both slots hit: 2 / min(2, 5) = 1
    assert recall_at_k([[0, 1]], [[0, 1, 2, 3, 4]], k=2, n_items=5) == 1.0
    # no user with a test item: NaN
    assert math.isnan(recall_at_k([[0, 1]], [[]], k=2, n_items=5))


def test_ndcg_hand_worked():
    # u0: hit at rank 0 -> DCG = 1/log2(2) = 1; IDCG (min(2, 2) = 2 relevant) = 1 + 1/log2(3)
    #     ndcg = 1 / 1.63093 = 0.613147
    # u2: no hit -> 0; mean = 0.306574
    expected = 0.5 * (1.0 / (1.0 + 1.0 / math.log2(3)))
    assert ndcg_at_k(TOPK, TEST, k=2, n_items=N_ITEMS) == pytest.approx(expected)
    # hit at rank 1 of a single-item test set: (1/log2 3) / 1 = 0.63093
    assert ndcg_at_k([[0, 1]], [[1]], k=2, n_items=2) == pytest.approx(1 / math.log2(3))
    # perfect ranking gives 1
    assert ndcg_at_k([[3, 1, 0]], [[1, 3]], k=3, n_items=4) == pytest.approx(1.0)


def test_popularity_and_arp_hand_worked():
    pop = item_popularity(TRAIN, n_items=N_ITEMS)
    # counts [3, 1, 1, 1, 0] over 3 training users
    np.testing.assert_allclose(pop, [1.0, 1 / 3, 1 / 3, 1 / 3, 0.0])
    # u0 [2, 1] -> (1/3 + 1/3)/2 = 1/3; u1 [1, 3] -> 1/3; u2 [4, 2] -> (0 + 1/3)/2 = 1/6
    # arp = (1/3 + 1/3 + 1/6) / 3 = 5/18
    assert arp_at_k(TOPK, pop, k=2) == pytest.approx(5 / 18)
    # n_users overrides the denominator
    np.testing.assert_allclose(item_popularity(TRAIN, n_users=6, n_items=N_ITEMS)[0], 0.5)


def test_head_items_ties_by_id():
    # counts [3, 1, 1, 1, 0]: ceil(5/5) = 1 head item -> item 0
    assert head_items(item_counts(TRAIN, N_ITEMS)).tolist() == [True, False, False, False, False]
    # 10 items -> 2 head; counts tie between items 1, 4, 7 (all 5): lowest index 1 wins
    counts = [0, 5, 1, 1, 5, 9, 0, 5, 2, 2]
    assert np.flatnonzero(head_items(counts)).tolist() == [1, 5]
    # 11 items -> ceil(11/5) = 3 head items; 15 -> exactly 3 (integer arithmetic, no 3.0000001)
    assert head_items(np.zeros(11)).sum() == 3
    assert head_items(np.zeros(15)).sum() == 3
    assert np.flatnonzero(head_items(np.zeros(15))).tolist() == [0, 1, 2]


def test_tail_share_hand_worked():
    head = head_items(item_counts(TRAIN, N_ITEMS))   # only item 0
    # slots: [2, 1], [1, 3], [4, 2] -> none is item 0: tail share = 6/6 = 1
    assert tail_share_at_k(TOPK, head, k=2) == 1.0
    # [[0, 1], [0, 2]] with head {0}: tail slots 1 and 2 -> 2 of 4
    assert tail_share_at_k([[0, 1], [0, 2]], head, k=2) == 0.5


def test_coverage_gini_entropy_hand_worked():
    # exposure over 5 items from TOPK (k=2): item0 0, item1 2, item2 2, item3 1, item4 1
    np.testing.assert_array_equal(exposure_counts(TOPK, N_ITEMS, k=2), [0, 2, 2, 1, 1])
    # coverage: {1, 2, 3, 4} of 5 = 0.8
    assert coverage_at_k(TOPK, N_ITEMS, k=2) == pytest.approx(0.8)
    # gini: sorted c = [0, 1, 1, 2, 2], Σc = 6, weights (2i - 6) = [-4, -2, 0, 2, 4]
    #   Σ = 0 - 2 + 0 + 4 + 8 = 10 -> 10 / (5 * 6) = 1/3
    assert gini_at_k(TOPK, N_ITEMS, k=2) == pytest.approx(1 / 3)
    # entropy: e = [2, 2, 1, 1]/6 -> H = -(2 * 1/3 ln 1/3 + 2 * 1/6 ln 1/6) = 1.329661
    h = -(2 * (1 / 3) * math.log(1 / 3) + 2 * (1 / 6) * math.log(1 / 6))
    assert entropy_at_k(TOPK, N_ITEMS, k=2) == pytest.approx(h / math.log(5))


def test_gini_extremes():
    # one item takes every slot among 4 items: (I - 1)/I = 0.75
    assert gini_at_k([[0], [0], [0]], 4, k=1) == pytest.approx(0.75)
    # uniform over all items: 0
    assert gini_at_k([[0, 1], [2, 3]], 4, k=2) == pytest.approx(0.0)
    # one item all slots: entropy 0
    assert entropy_at_k([[0], [0]], 4, k=1) == 0.0


def test_miscalibration_hand_worked():
    # u0 train {0: A, 1: B} -> p = (1/2, 1/2)
    #    top [2, 1]: item2 gives (1/2, 1/2), item1 (0, 1) -> q = (1/4, 3/4)
    #    q~ = .99 q + .01 p = (.2525, .7475)
    #    KL = .5 ln(.5/.2525) + .5 ln(.5/.7475) = 0.140535
    # u1 train {0: A, 2: A/B} -> p = (1.5, 0.5)/2 = (3/4, 1/4)
    #    top [1, 3]: (0, 1) + (1, 0) -> q = (1/2, 1/2)
    #    q~ = (.99 * .5 + .01 * .75, .99 * .5 + .01 * .25) = (.5025, .4975)
    #    KL = .75 ln(.75/.5025) + .25 ln(.25/.4975) = 0.128325
    # u2 train {0: A, 3: A} -> p = (1, 0)
    #    top [4, 2]: item4 no genre, item2 (1/2, 1/2) -> q = (1/2, 1/2) (normalised by genre mass)
    #    q~_A = .99 * .5 + .01 = .505; KL = ln(1/.505) = 0.683197
    kl0 = 0.5 * math.log(0.5 / 0.2525) + 0.5 * math.log(0.5 / 0.7475)
    kl1 = 0.75 * math.log(0.75 / 0.5025) + 0.25 * math.log(0.25 / 0.4975)
    kl2 = math.log(1 / 0.505)
    per = miscalibration_at_k(TOPK, TRAIN, GENRES, k=2, per_user=True)
    np.testing.assert_allclose(per, [kl0, kl1, kl2])
    assert miscalibration_at_k(TOPK, TRAIN, GENRES, k=2) == pytest.approx((kl0 + kl1 + kl2) / 3)
    # the same through a RowSets genre structure
    rs = RowSets.from_lists([[0], [1], [0, 1], [0], []], n_cols=2)
    assert miscalibration_at_k(TOPK, TRAIN, rs, k=2) == pytest.approx((kl0 + kl1 + kl2) / 3)


def test_miscalibration_edge_cases():
    genres = np.array([[1, 0], [0, 1], [0, 0]], dtype=bool)
    # a list of genre-less items: q = 0, q~ = .01 p -> KL = ln(100)
    assert miscalibration_at_k([[2]], [[0]], genres, k=1) == pytest.approx(math.log(100))
    # a perfectly calibrated list: KL = 0
    assert miscalibration_at_k([[0, 1]], [[0, 1]], genres, k=2) == pytest.approx(0.0, abs=1e-12)
    # a user without genre-bearing training items is skipped (NaN per user)
    per = miscalibration_at_k([[0], [0]], [[2], [0]], genres, k=1, per_user=True)
    assert math.isnan(per[0]) and per[1] == pytest.approx(0.0, abs=1e-12)
    # 70/30 history, all-majority list: KL = .7 ln(.7/.703) + .3 ln(.3/.003)
    train = [list(range(7)) + list(range(7, 10))]
    g = np.zeros((20, 2), bool)
    g[:7, 0] = g[7:10, 1] = g[10:, 0] = True
    expected = 0.7 * math.log(0.7 / (0.99 + 0.007)) + 0.3 * math.log(0.3 / 0.003)
    assert miscalibration_at_k([list(range(10, 20))], train, g, k=10) == pytest.approx(expected)


def test_deciles_and_decile_recall_hand_worked():
    # 20 items, counts descending by index: item 0 most popular; deciles of 2 items each
    counts = np.arange(20, 0, -1)
    assert popularity_deciles(counts).tolist() == [d for d in range(10) for _ in range(2)]
    # ties by lower index: all equal -> deciles follow the index
    assert popularity_deciles(np.zeros(20)).tolist() == [d for d in range(10) for _ in range(2)]
    # 12 items: floor(10 r / 12) = [0,0,1,2,3,4,5,5,6,7,8,9]
    assert popularity_deciles(np.zeros(12)).tolist() == [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    # u0 test {0, 1, 19}: decile 0 = {0, 1}, decile 9 = {19}; top-2 [0, 19]
    #   decile 0: 1 hit / min(2, 2) = 0.5; decile 9: 1 / min(2, 1) = 1
    # u1 test {2}: decile 1 = {2}; top-2 [5, 6] -> 0 / 1 = 0
    r = decile_recall_at_k([[0, 19], [5, 6]], [[0, 1, 19], [2]], counts, k=2)
    assert r[0] == 0.5 and r[1] == 0.0 and r[9] == 1.0
    assert all(math.isnan(x) for x in r[2:9])


def test_evaluate_keys_and_values():
    r = evaluate(TOPK, TRAIN, TEST, GENRES, k=2)
    assert list(r) == ["recall@2", "ndcg@2", "arp@2", "tail_share@2", "coverage@2", "gini@2",
                       "entropy@2", "miscalibration@2", "decile_recall@2"]
    assert r["recall@2"] == pytest.approx(0.25)
    assert r["arp@2"] == pytest.approx(5 / 18)
    assert r["coverage@2"] == pytest.approx(0.8)
    assert isinstance(r["decile_recall@2"], list) and len(r["decile_recall@2"]) == 10
    assert all(isinstance(v, float) for k, v in r.items() if k != "decile_recall@2")
    # without genres, miscalibration is left out
    assert "miscalibration@2" not in evaluate(TOPK, TRAIN, TEST, k=2, n_items=N_ITEMS)


def test_evaluate_on_generated_data_with_interactions_inputs():
    d = power_law(n_users=150, n_items=300, interactions_per_user=15, seed=4)
    train, test = train_test_split(d, seed=4)
    pop_order = np.argsort(-train.item_counts(), kind="stable")
    topk = np.tile(pop_order[:10], (d.n_users, 1))
    r = evaluate(topk, train, test, d.item_genres, k=10)
    assert r["coverage@10"] == pytest.approx(10 / 300)
    assert r["tail_share@10"] == 0.0          # all ten are head items (head = 60 items)
    assert r["gini@10"] == pytest.approx(290 / 300)  # 10 equal, 290 zero: 1 - 10/300
    # the same through the CSR tuple and list forms
    tr = train.user_items()
    te = test.user_items()
    r2 = evaluate(topk, (tr.indptr, tr.indices), [te[u] for u in range(d.n_users)],
                  d.item_genres.to_dense(), k=10)
    for key in r:
        np.testing.assert_allclose(r2[key], r[key])


def test_input_validation():
    with pytest.raises(ValueError, match="repeats an item"):
        recall_at_k([[1, 1]], [[1]], k=2, n_items=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        recall_at_k([[1, 3]], [[1]], k=2, n_items=3)
    with pytest.raises(ValueError, match="shape"):
        recall_at_k([[1, 2]], [[1]], k=3, n_items=3)
    with pytest.raises(ValueError, match="rows"):
        recall_at_k([[1, 2]], [[1], [2]], k=2, n_items=3)
    with pytest.raises(TypeError, match="integer"):
        recall_at_k([[1.0, 2.0]], [[1]], k=2, n_items=3)
    with pytest.raises(TypeError):
        as_row_sets({1: [2]})


# properties /////////////////////////////////////////////////////////////////////////////////


@st.composite
def worlds(draw):
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(2, 25))
    k = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    test = [rng.choice(n_items, size=rng.integers(0, n_items + 1), replace=False)
            for _ in range(n_users)]
    train = [rng.choice(n_items, size=rng.integers(0, n_items + 1), replace=False)
             for _ in range(n_users)]
    return topk, train, test, n_items, k


def _slow_recall(topk, test, k):
    vals = [len(set(t[:k].tolist()) & set(s.tolist())) / min(k, len(s))
            for t, s in zip(topk, test) if len(s)]
    return sum(vals) / len(vals) if vals else math.nan


def _slow_ndcg(topk, test, k):
    vals = []
    for t, s in zip(topk, test):
        if not len(s):
            continue
        s = set(s.tolist())
        dcg = sum(1 / math.log2(j + 2) for j, i in enumerate(t[:k]) if i in s)
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(s))))
        vals.append(dcg / idcg)
    return sum(vals) / len(vals) if vals else math.nan


def _slow_gini(counts):
    n = len(counts)
    mean = sum(counts) / n
    return sum(abs(a - b) for a in counts for b in counts) / (2 * n * n * mean)


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_recall_and_ndcg_match_slow_reference(world):
    topk, _, test, n_items, k = world
    np.testing.assert_allclose(recall_at_k(topk, test, k, n_items=n_items),
                               _slow_recall(topk, test, k), equal_nan=True)
    np.testing.assert_allclose(ndcg_at_k(topk, test, k, n_items=n_items),
                               _slow_ndcg(topk, test, k), equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_bias_metrics_bounds_and_references(world):
    topk, train, _, n_items, k = world
    cov = coverage_at_k(topk, n_items, k)
    assert 1 / n_items - 1e-12 <= cov <= min(1.0, topk.shape[0] * k / n_items) + 1e-12
    g = gini_at_k(topk, n_items, k)
    assert 0.0 - 1e-12 <= g <= (n_items - 1) / n_items + 1e-12
    counts = exposure_counts(topk, n_items, k).tolist()
    assert g == pytest.approx(_slow_gini(counts), abs=1e-12)
    assert 0.0 <= entropy_at_k(topk, n_items, k) <= 1.0 + 1e-12
    pop = item_popularity(train, n_items=n_items)
    assert 0.0 <= arp_at_k(topk, pop, k) <= 1.0
    slow_arp = np.mean([np.mean([pop[i] for i in row[:k]]) for row in topk])
    assert arp_at_k(topk, pop, k) == pytest.approx(slow_arp)
    head = head_items(item_counts(train, n_items))
    assert head.sum() == math.ceil(n_items / 5)
    assert 0.0 <= tail_share_at_k(topk, head, k) <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5))
def test_uniform_exposure_gini_zero_entropy_one(n_items, reps):
    # every item shown exactly `reps` times: each user's list is a rotation of all items
    topk = np.array([np.roll(np.arange(n_items), r) for r in range(reps)])
    assert gini_at_k(topk, n_items, n_items) == pytest.approx(0.0, abs=1e-12)
    assert entropy_at_k(topk, n_items, n_items) == pytest.approx(1.0)
    assert coverage_at_k(topk, n_items, n_items) == 1.0


@settings(max_examples=40, deadline=None)
@given(worlds(), st.integers(0, 2**32 - 1))
def test_miscalibration_nonnegative_and_matches_reference(world, seed):
    topk, train, _, n_items, k = world
    rng = np.random.default_rng(seed)
    genres = rng.random((n_items, 3)) < 0.4
    per = miscalibration_at_k(topk, train, genres, k, per_user=True)
    w = genres / np.maximum(genres.sum(1, keepdims=True), 1)
    for u in range(len(train)):
        p = w[train[u]].sum(0)
        if p.sum() == 0:
            assert math.isnan(per[u])
            continue
        p = p / p.sum()
        q = w[topk[u, :k]].sum(0)
        q = q / q.sum() if q.sum() > 0 else q
        qt = 0.99 * q + 0.01 * p
        kl = sum(p[g] * math.log(p[g] / qt[g]) for g in range(3) if p[g] > 0)
        assert per[u] == pytest.approx(kl, abs=1e-12)
        assert per[u] >= -1e-12


@settings(max_examples=40, deadline=None)
@given(worlds())
def test_decile_recall_matches_slow_reference(world):
    topk, train, test, n_items, k = world
    counts = item_counts(train, n_items)
    got = decile_recall_at_k(topk, test, counts, k)
    order = sorted(range(n_items), key=lambda i: (-counts[i], i))
    dec = {item: r * 10 // n_items for r, item in enumerate(order)}
    for d in range(10):
        vals = []
        for t, s in zip(topk, test):
            sd = {i for i in s.tolist() if dec[i] == d}
            if sd:
                vals.append(len(set(t[:k].tolist()) & sd) / min(k, len(sd)))
        np.testing.assert_allclose(got[d], np.mean(vals) if vals else math.nan, equal_nan=True)


def test_miscalibration_reexport_agrees_with_miscalibration_at_k():
    # 3 items with one genre each (A, A, B). The user trained on items 0 and 2, so p = (1/2, 1/2);
    # the list [0, 1] is all A, so q = (1, 0) and q~ = (0.99 + 0.005, 0.005):
    # KL = 0.5 ln(0.5 / 0.995) + 0.5 ln(0.5 / 0.005).
    genres = np.array([[1, 0], [1, 0], [0, 1]])
    expected = 0.5 * np.log(0.5 / 0.995) + 0.5 * np.log(0.5 / 0.005)
    per_user = metrics.miscalibration(np.array([[0, 1]]), genres.astype(float), np.array([[0.5, 0.5]]))
    assert per_user == pytest.approx([expected])
    assert metrics.miscalibration_at_k([[0, 1]], [[0, 2]], genres, k=2) == pytest.approx(expected)


# one definition of the calibration gap //////////////////////////////////////////////////////


def _dyadic_world(rng, U=60, I=40, G=6, k=10):
    """Every item has 1, 2 or 4 genres (weights 1, 1/2, 1/4: sums are exact), so the metric's
    renormalised list mix and the reranker's mean of k rows are the same numbers."""
    genres = np.zeros((I, G), bool)
    for i in range(I):
        genres[i, rng.choice(G, size=rng.choice([1, 2, 4]), replace=False)] = True
    train = [rng.choice(I, size=rng.integers(1, 12), replace=False) for _ in range(U)]
    topk = np.array([rng.choice(I, size=k, replace=False) for _ in range(U)])
    return genres, train, topk


def test_miscalibration_at_k_is_bit_identical_to_the_rerankers_miscalibration():
    from embtab import rerank
    from embtab._research import category_mix

    rng = np.random.default_rng(5)
    for _ in range(30):
        genres, train, topk = _dyadic_world(rng)
        sets = RowSets.from_lists(train, n_cols=genres.shape[0])
        gsets = RowSets.from_pairs(*np.nonzero(genres), *genres.shape)
        per = miscalibration_at_k(topk, sets, genres, k=10, per_user=True)
        target = category_mix((sets.row_ids(), sets.indices), gsets, sets.n_rows)
        ours = rerank.miscalibration(topk, gsets.split_weights(), target)
        np.testing.assert_array_equal(per, ours)          # the same bits, not just close
        np.testing.assert_array_equal(metrics.miscalibration(topk, gsets.split_weights(),
                                                             target), ours)


def test_category_mix_pairs_form_is_the_same_bits_for_sparse_and_dense_categories():
    from embtab._research import category_mix

    rng = np.random.default_rng(9)
    genres = rng.random((50, 7)) < 0.35                     # 1/3-weights and genre-less items
    gsets = RowSets.from_pairs(*np.nonzero(genres), *genres.shape)
    users = np.repeat(np.arange(30), 6)
    items = rng.integers(0, 50, size=users.size)
    a = category_mix((users, items), gsets, 30)
    b = category_mix((users, items), gsets.split_weights(), 30)
    np.testing.assert_array_equal(a, b)
    # a plain per-pair accumulation, row by row, in pair order
    w = gsets.split_weights()
    m = np.zeros((30, 7))
    np.add.at(m, users, w[items])
    tot = m.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(a, np.divide(m, tot, out=np.zeros_like(m), where=tot > 0))
    dense = np.zeros((30, 50), bool)
    dense[users, items] = True
    assert np.allclose(category_mix(dense, w), category_mix(
        np.nonzero(dense), w, 30), rtol=1e-14, atol=0)


def test_list_metrics_do_not_depend_on_the_order_of_a_lists_items():
    # Two orders of the same lists used to give arp@k and miscalibration@k values that differed
    # in the last bits (each list summed in its own order); excess_arp@k against an oracle with
    # the same items was then +-1e-17 on every seed, and a report stated a direction from it.
    rng = np.random.default_rng(1)
    noisy = 0
    for _ in range(60):
        pop = rng.integers(1, 200, 12) / 200.0
        top = np.array([rng.choice(12, 10, replace=False) for _ in range(50)])
        perm = np.array([rng.permutation(r) for r in top])
        genres = (rng.random((12, 3)) < 0.5).astype(int)
        train = [rng.choice(12, 3, replace=False) for _ in range(50)]
        noisy += metrics.excess_arp_at_k(top, perm, pop, k=10) != 0.0
        noisy += (metrics.miscalibration_at_k(top, train, genres, k=10)
                  != metrics.miscalibration_at_k(perm, train, genres, k=10))
        # and each is still the mean of its definition
        want = np.mean([pop[r].mean() for r in top])
        assert metrics.arp_at_k(perm, pop, k=10) == pytest.approx(want, rel=1e-12)
    assert noisy == 0
