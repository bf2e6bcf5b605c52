"""embtab.rerank: the calibrated greedy against a slow reference, top-k, helpers, bad input."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import embtab
import rerank_reference as ref
from embtab import rerank
from embtab._core import _testing

sp = pytest.importorskip("scipy.sparse")


# helpers ######################################################################################


def random_instance(rng, U=4, C=30, G=6, n_items=40, k=5, max_genres=3):
    genres = [rng.choice(G, size=rng.integers(1, max_genres + 1), replace=False) for _ in range(n_items)]
    item_dist = rerank.genre_distribution([g.tolist() for g in genres], n_genres=G)
    scores = rng.normal(size=(U, C))
    cand = np.stack([rng.choice(n_items, size=C, replace=False) for _ in range(U)]).astype(np.int64)
    raw = rng.random((U, G)) * (rng.random((U, G)) < 0.7)
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    target = raw / raw.sum(axis=1, keepdims=True)
    return scores, item_dist, target, cand, k


def lexsort_topk(scores, k):
    """Top-k indices by score descending, ties to the lower index."""
    C = scores.shape[1]
    return np.stack([np.lexsort((np.arange(C), -row)) for row in scores])[:, :k]


@st.composite
def instances(draw):
    G = draw(st.integers(1, 5))
    n_items = draw(st.integers(1, 12))
    item_genres = [draw(st.lists(st.integers(0, G - 1), min_size=1, max_size=3, unique=True))
                   for _ in range(n_items)]
    U = draw(st.integers(1, 3))
    C = draw(st.integers(1, 10))
    k = draw(st.integers(1, C))
    use_cand = draw(st.booleans())
    score_el = st.floats(-5, 5, allow_nan=False, width=64)
    scores = np.array([[draw(st.one_of(score_el, st.just(-np.inf))) if draw(st.integers(0, 9)) == 0
                        else draw(score_el) for _ in range(C)] for _ in range(U)], dtype=np.float64)
    if use_cand:
        cand = np.array([[draw(st.integers(0, n_items - 1)) for _ in range(C)] for _ in range(U)], dtype=np.int64)
    else:
        assume(C <= n_items)
        cand = None
    tgt = np.array([[draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 2.0, 3.7])) for _ in range(G)]
                    for _ in range(U)])
    sums = tgt.sum(axis=1, keepdims=True)
    target = np.divide(tgt, sums, out=np.zeros_like(tgt), where=sums > 0)
    lam = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)))
    # alpha is 0 or >= 1e-12: for alpha * p_g near the smallest double (~1e-308) the literal
    # reference underflows to q~_g = 0 where the incremental form does not (documented).
    alpha = draw(st.one_of(st.sampled_from([0.0, 0.01, 0.5]), st.floats(1e-12, 0.99)))
    f32 = draw(st.booleans())
    csr = draw(st.booleans())
    item_dist = rerank.genre_distribution(item_genres, n_genres=G)
    if draw(st.booleans()):
        # uneven weights: many distinct values (exercises the per-user table compaction)
        raw = item_dist * np.array([[draw(st.integers(1, 9)) for _ in range(G)] for _ in range(n_items)])
        item_dist = raw / raw.sum(axis=1, keepdims=True)
    return {"scores": scores.astype(np.float32) if f32 else scores,
                "item_dist": item_dist, "target": target, "k": k, "lam": lam,
                "alpha": alpha, "candidates": cand, "csr": csr}


# calibrated against the reference #############################################################


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(instances())
def test_matches_reference(inst):
    scores = inst["scores"]
    lists_ref, gap = ref.greedy(scores.astype(np.float64), inst["item_dist"].tolist(), inst["target"], inst["k"],
                                inst["lam"], inst["alpha"], inst["candidates"])
    assume(gap > 1e-9)  # inputs without (near-)ties
    dist = sp.csr_matrix(inst["item_dist"]) if inst["csr"] else inst["item_dist"]
    got = rerank.calibrated(scores, dist, inst["target"], inst["k"], lam=inst["lam"], alpha=inst["alpha"],
                            candidates=inst["candidates"], num_threads=1)
    assert got.dtype == np.int64
    assert got.tolist() == lists_ref


def test_matches_reference_medium():
    rng = np.random.default_rng(7)
    for lam in (0.1, 0.5, 0.9, 0.99):
        scores, item_dist, target, cand, k = random_instance(rng, U=3, C=40, G=8, n_items=60, k=10)
        want, gap = ref.greedy(scores, item_dist.tolist(), target, k, lam, 0.01, cand)
        assert gap > 1e-9
        got = rerank.calibrated(scores, item_dist, target, k, lam=lam, candidates=cand)
        assert got.tolist() == want


def _sort_rows(scores, cand):
    order = np.argsort(-scores, axis=1, kind="stable")
    return (np.ascontiguousarray(np.take_along_axis(scores, order, axis=1)),
            np.ascontiguousarray(np.take_along_axis(cand, order, axis=1)))


def test_score_sorted_rows_match_reference():
    # Rows sorted by score take the bounded scan (C > 32): same lists as the reference.
    rng = np.random.default_rng(21)
    for lam, alpha in ((0.5, 0.01), (0.9, 0.01), (0.2, 0.3), (0.99, 0.001)):
        scores, item_dist, target, cand, k = random_instance(rng, U=2, C=70, G=8, n_items=90, k=8)
        scores, cand = _sort_rows(scores, cand)
        want, gap = ref.greedy(scores, item_dist.tolist(), target, k, lam, alpha, cand)
        assert gap > 1e-9
        got = rerank.calibrated(scores, item_dist, target, k, lam=lam, alpha=alpha, candidates=cand)
        assert got.tolist() == want


@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_score_sorted_equals_shuffled(scale):
    # The bounded scan (sorted rows) and the full scan (shuffled rows) give the same item lists,
    # whether scores or the KL term dominate.
    rng = np.random.default_rng(int(scale * 100))
    scores, item_dist, target, cand, k = random_instance(rng, U=300, C=200, G=12, n_items=400, k=15)
    scores = scores * scale
    scores[::7, -20:] = -np.inf  # -inf tails (k stays below the finite count)
    s_sorted, c_sorted = _sort_rows(scores, cand)
    perm = np.argsort(rng.random(scores.shape), axis=1)
    s_shuf = np.ascontiguousarray(np.take_along_axis(s_sorted, perm, axis=1))
    c_shuf = np.ascontiguousarray(np.take_along_axis(c_sorted, perm, axis=1))
    for lam in (0.3, 0.7):
        a = rerank.calibrated(s_sorted, item_dist, target, k, lam=lam, candidates=c_sorted)
        b = rerank.calibrated(s_shuf, item_dist, target, k, lam=lam, candidates=c_shuf)
        assert np.array_equal(a, b)


def test_objective_and_miscalibration_returned():
    rng = np.random.default_rng(3)
    scores, item_dist, target, cand, k = random_instance(rng)
    res = rerank.calibrated(scores, item_dist, target, k, lam=0.3, alpha=0.05, candidates=cand,
                            return_objective=True)
    lists, obj, mis = res
    assert lists.shape == (4, k) and obj.shape == (4,) and mis.shape == (4,)
    np.testing.assert_allclose(mis, rerank.miscalibration(lists, item_dist, target, alpha=0.05), rtol=1e-12)
    for u in range(4):
        pos = [int(np.nonzero(cand[u] == i)[0][0]) for i in lists[u]]
        want = ref.objective(lists[u].tolist(), scores[u, pos].tolist(), item_dist.tolist(), target[u].tolist(),
                             0.3, 0.05)
        assert obj[u] == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert np.array_equal(res.lists, rerank.calibrated(scores, item_dist, target, k, lam=0.3, alpha=0.05,
                                                       candidates=cand))


def test_lam0_is_topk():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 20, size=(50, 60)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    item_dist = rerank.genre_distribution([[i % 4] for i in range(60)], n_genres=4)
    target = np.full((50, 4), 0.25)
    for k in (1, 10, 60):
        got = rerank.calibrated(scores, item_dist, target, k, lam=0.0)
        assert np.array_equal(got, lexsort_topk(scores, k))
    got = rerank.calibrated(scores.astype(np.float32), item_dist, target, 7, lam=0.0)
    assert np.array_equal(got, lexsort_topk(scores, 7))


def test_steck_70_30():
    # 20 candidates: the 14 best are genre A (0), the rest genre B (1); history is 70% A.
    # Scores differ by little (0.99..0.97), as for candidates of similar predicted relevance: the
    # KL term then decides the genre mix. (With a steep score slope, e.g. 1.0..0.9, the greedy
    # stops at 8 A + 2 B: the last B would cost more score than the KL it saves; the reference
    # agrees.)
    item_dist = rerank.genre_distribution([[0]] * 14 + [[1]] * 6, n_genres=2)
    scores = np.linspace(0.99, 0.97, 20)[None, :]
    target = np.array([[0.7, 0.3]])
    plain = rerank.calibrated(scores, item_dist, target, 10, lam=0.0)
    assert (plain[0] < 14).all()  # all A
    cal = rerank.calibrated(scores, item_dist, target, 10, lam=0.5)
    n_a = int((cal[0] < 14).sum())
    assert n_a == 7, cal  # 7 A and 3 B
    want, _ = ref.greedy(scores, item_dist.tolist(), target, 10, 0.5, 0.01)
    assert cal.tolist() == want
    mis = rerank.miscalibration(cal, item_dist, target)
    assert mis[0] < rerank.miscalibration(plain, item_dist, target)[0]


def test_greedy_never_beats_brute_force():
    # The figure for the docs (how often the greedy is optimal) comes from
    # embtab.benchmarks.rerank.greedy_optimality; here only the invariant is checked.
    rng = np.random.default_rng(5)
    for _ in range(30):
        scores, item_dist, target, _, k = random_instance(rng, U=1, C=7, G=3, n_items=7, k=3)
        _, obj, _ = rerank.calibrated(scores, item_dist, target, k, lam=0.5, return_objective=True)
        best = ref.brute_force_best(scores[0].tolist(), item_dist.tolist(), target[0].tolist(), k, 0.5, 0.01)
        assert obj[0] <= best + 1e-12


def test_thread_count_invariance():
    rng = np.random.default_rng(1)
    scores, item_dist, target, cand, k = random_instance(rng, U=700, C=80, G=10, n_items=300, k=12)
    base = rerank.calibrated(scores, item_dist, target, k, candidates=cand, num_threads=1)
    for nt in (2, 3, 8, 0):
        assert np.array_equal(base, rerank.calibrated(scores, item_dist, target, k, candidates=cand,
                                                      num_threads=nt))
    v1, i1 = rerank.topk(scores, 20, num_threads=1)
    for nt in (2, 5):
        v, i = rerank.topk(scores, 20, num_threads=nt)
        assert np.array_equal(v1, v) and np.array_equal(i1, i)


def test_float32_equals_float64_of_same_values():
    rng = np.random.default_rng(2)
    scores, item_dist, target, cand, k = random_instance(rng, U=50)
    s32 = scores.astype(np.float32)
    a = rerank.calibrated(s32, item_dist, target, k, candidates=cand)
    b = rerank.calibrated(s32.astype(np.float64), item_dist, target, k, candidates=cand)
    assert np.array_equal(a, b)


def test_uneven_weights_match_reference():
    # Item weights with many distinct values: the per-user table path (more keys than C * width).
    rng = np.random.default_rng(12)
    scores, item_dist, target, cand, k = random_instance(rng, U=3, C=12, G=6, n_items=40, k=6)
    item_dist = item_dist * rng.integers(1, 50, size=item_dist.shape)
    item_dist /= item_dist.sum(axis=1, keepdims=True)
    want, gap = ref.greedy(scores, item_dist.tolist(), target, k, 0.5, 0.01, cand)
    assert gap > 1e-9
    assert rerank.calibrated(scores, item_dist, target, k, candidates=cand).tolist() == want


def test_dense_equals_csr():
    rng = np.random.default_rng(4)
    scores, item_dist, target, cand, k = random_instance(rng, U=30)
    a = rerank.calibrated(scores, item_dist, target, k, candidates=cand)
    b = rerank.calibrated(scores, sp.csr_matrix(item_dist), target, k, candidates=cand)
    assert np.array_equal(a, b)


def test_item_distribution_equals_raw_matrix():
    rng = np.random.default_rng(12)
    scores, item_dist, target, cand, k = random_instance(rng, U=30)
    want = rerank.calibrated(scores, item_dist, target, k, candidates=cand, return_objective=True)
    for raw in (item_dist, sp.csr_matrix(item_dist)):
        items = rerank.ItemDistribution(raw)
        assert (items.n_items, items.n_genres, items.nnz) == (40, 6, int((item_dist > 0).sum()))
        got = rerank.calibrated(scores, items, target, k, candidates=cand, return_objective=True)
        assert np.array_equal(got.lists, want.lists)
        assert np.array_equal(got.objective, want.objective)
        assert np.array_equal(got.miscalibration, want.miscalibration)
    assert repr(items) == f"ItemDistribution(n_items=40, n_genres=6, nnz={items.nnz})"
    assert np.array_equal(rerank.calibrated(scores, rerank.ItemDistribution(items), target, k, candidates=cand),
                          want.lists)


def test_item_distribution_csr_is_the_matrix():
    # Item i holds category[j] with weight weights[weight_class[j]] for j in indptr[i]:indptr[i+1].
    rng = np.random.default_rng(13)
    _, item_dist, _, _, _ = random_instance(rng, U=3)
    indptr, category, weight_class, weights = rerank.ItemDistribution(item_dist).csr
    rebuilt = np.zeros_like(item_dist)
    for i in range(item_dist.shape[0]):
        for j in range(indptr[i], indptr[i + 1]):
            rebuilt[i, category[j]] = weights[weight_class[j]]
    assert np.array_equal(rebuilt, item_dist)
    with pytest.raises(ValueError):
        indptr[0] = 1  # read-only: the core re-reads these arrays on every call


def test_item_distribution_in_the_helpers():
    rng = np.random.default_rng(15)
    scores, item_dist, target, cand, k = random_instance(rng, U=6)
    items = rerank.ItemDistribution(sp.csr_matrix(item_dist))
    assert np.array_equal(items.toarray(), item_dist)
    hist = [rng.integers(0, 40, 7) for _ in range(6)]
    assert np.array_equal(rerank.user_distribution(hist, items), rerank.user_distribution(hist, item_dist))
    lists = rerank.calibrated(scores, items, target, k, candidates=cand)
    assert np.array_equal(rerank.miscalibration(lists, items, target), rerank.miscalibration(lists, item_dist, target))


def test_item_distribution_keeps_its_own_copy():
    rng = np.random.default_rng(13)
    scores, item_dist, target, cand, k = random_instance(rng, U=10)
    items = rerank.ItemDistribution(item_dist)
    want = rerank.calibrated(scores, items, target, k, candidates=cand)
    item_dist[:] = np.roll(item_dist, 1, axis=1)  # the caller's matrix changes afterwards
    assert np.array_equal(rerank.calibrated(scores, items, target, k, candidates=cand), want)
    assert not any(a.flags.writeable for a in items._csr)


def test_item_distribution_and_arrays_survive_pickling():
    # Unpickled arrays carry equal but distinct dtype objects; the core must take them.
    rng = np.random.default_rng(14)
    scores, item_dist, target, cand, k = random_instance(rng, U=8)
    want = rerank.calibrated(scores, item_dist, target, k, candidates=cand)
    items = pickle.loads(pickle.dumps(rerank.ItemDistribution(item_dist)))
    assert repr(items) == repr(rerank.ItemDistribution(item_dist))
    assert not any(a.flags.writeable for a in items._csr)
    s2, c2, t2 = (pickle.loads(pickle.dumps(a)) for a in (scores, cand, target))
    assert np.array_equal(rerank.calibrated(s2, items, t2, k, candidates=c2), want)
    assert np.array_equal(rerank.topk(s2, k)[1], rerank.topk(scores, k)[1])


def test_item_distribution_bad_input():
    good = rerank.genre_distribution([[0], [1]], n_genres=2)
    with pytest.raises(TypeError, match="item_dist must be a numpy.ndarray or a scipy CSR"):
        rerank.ItemDistribution(good.tolist())
    with pytest.raises(ValueError, match=r"item_dist must be 2-D \[n_items, G\], got shape \(2,\)"):
        rerank.ItemDistribution(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="item_dist row 1"):
        rerank.ItemDistribution(np.array([[1.0, 0.0], [0.7, 0.7]]))
    items = rerank.ItemDistribution(good)
    with pytest.raises(ValueError, match=r"item_dist has G = 2 categories but target has shape \(1, 3\)"):
        rerank.calibrated(np.array([[1.0, 0.5]]), items, np.array([[0.2, 0.3, 0.5]]), k=1)
    with pytest.raises(ValueError, match="candidate"):
        rerank.calibrated(np.array([[1.0, 0.5]]), items, np.array([[0.5, 0.5]]), k=1,
                          candidates=np.array([[0, 2]]))


def test_neg_inf_picked_last():
    item_dist = np.eye(2)
    scores = np.array([[-np.inf, 0.5, -np.inf, 0.1]])
    cand = np.array([[0, 0, 1, 0]], dtype=np.int64)
    target = np.array([[0.5, 0.5]])
    # Two finite candidates come first whatever the KL says; then -inf ones by the KL alone:
    # the list holds genre 0 twice, so the genre-1 candidate (position 2) beats position 0.
    res = rerank.calibrated(scores, item_dist, target, 3, lam=0.9, candidates=cand, return_objective=True)
    assert res.lists.tolist() == [[0, 0, 1]]
    assert res.objective[0] == -np.inf
    pos = rerank.calibrated(scores, item_dist[[0, 0, 1, 0]], target, 4, lam=0.9)
    assert pos.tolist() == [[1, 3, 2, 0]]
    assert rerank.calibrated(scores, item_dist[[0, 0, 1, 0]], target, 4, lam=0.0).tolist() == [[1, 3, 0, 2]]


def test_duplicate_candidates_are_separate():
    # Duplicates are allowed: each position is its own candidate, so an item can repeat.
    item_dist = np.eye(2)
    scores = np.array([[0.9, 0.8, 0.1]])
    cand = np.array([[0, 0, 1]], dtype=np.int64)
    assert rerank.calibrated(scores, item_dist, np.array([[1.0, 0.0]]), 2, lam=0.5, candidates=cand).tolist() \
        == [[0, 0]]


def test_zero_target_row_is_topk():
    rng = np.random.default_rng(9)
    scores, item_dist, target, cand, k = random_instance(rng, U=3)
    target[1] = 0.0
    got = rerank.calibrated(scores, item_dist, target, k, lam=0.7, candidates=cand)
    assert got[1].tolist() == cand[1][lexsort_topk(scores[1:2], k)[0]].tolist()


def test_alpha0_covers_all_genres_first():
    # alpha = 0: KL is +inf until both target genres are in the list, so the 2-list must hold one of each.
    item_dist = np.eye(2)[[0, 0, 0, 1]]
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    got = rerank.calibrated(scores, item_dist, np.array([[0.9, 0.1]]), 2, lam=0.01, alpha=0.0)
    assert sorted(got[0].tolist()) == [0, 3]


# topk #########################################################################################


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,k", [(1, 1), (10, 10), (100, 7), (1682, 10), (3000, 64), (3000, 65), (5000, 500),
                                 (700, 300)])
def test_topk_matches_lexsort(dtype, N, k):
    rng = np.random.default_rng(N + k)
    scores = rng.normal(size=(20, N)).astype(dtype)
    scores[3] = np.round(scores[3])  # ties
    scores[4, ::3] = -np.inf
    scores[5] = 1.0  # all equal
    vals, idx = rerank.topk(scores, k)
    want = lexsort_topk(scores.astype(np.float64), k)
    assert vals.dtype == dtype and idx.dtype == np.int64
    assert np.array_equal(idx, want)
    assert np.array_equal(vals, np.take_along_axis(scores, want, axis=1))


def test_topk_sorted_input_large_k():
    scores = np.tile(np.arange(4000, dtype=np.float64), (3, 1))
    scores[1] = scores[1][::-1].copy()
    _, idx = rerank.topk(scores, 500)
    assert np.array_equal(idx, lexsort_topk(scores, 500))


# helpers ######################################################################################


def test_genre_distribution_forms_agree():
    lists = [[0], [1, 2], [0, 1, 2]]
    a = rerank.genre_distribution(lists, n_genres=4)
    ind = np.zeros((3, 4), dtype=bool)
    for i, g in enumerate(lists):
        ind[i, g] = True
    assert np.array_equal(a, rerank.genre_distribution(ind))
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    assert a[2, 0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no genre"):
        rerank.genre_distribution([[0], []])
    with pytest.raises(ValueError, match="outside"):
        rerank.genre_distribution([[5]], n_genres=3)


def test_user_distribution_csr_and_lists():
    item_dist = rerank.genre_distribution([[0], [1], [0, 1]], n_genres=2)
    hist = sp.csr_matrix(np.array([[1, 0, 1], [0, 2, 0], [0, 0, 0]], dtype=np.float64))
    want = np.array([[0.75, 0.25], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(rerank.user_distribution(hist, item_dist), want)
    lists = [np.array([0, 2]), np.array([1]), np.array([], dtype=np.int64)]
    np.testing.assert_allclose(rerank.user_distribution(lists, item_dist), want)


def test_popularity_bins_calibrate_tail():
    counts = np.array([100, 80, 60, 5, 4, 3, 2, 1, 1, 1])
    bins = rerank.popularity_bins(counts)
    assert bins.shape == (10, 3) and np.array_equal(bins.sum(axis=1), np.ones(10))
    assert bins[0, 0] == 1 and bins[-1, 2] == 1
    # A user whose history is half tail gets tail items into a list that scores put all in the head.
    scores = -np.arange(10, dtype=np.float64)[None, :]
    target = np.array([[0.5, 0.0, 0.5]])
    got = rerank.calibrated(scores, bins, target, 4, lam=0.5)
    assert bins[got[0]].argmax(axis=1).tolist().count(2) >= 1


def test_miscalibration_hand_worked():
    # list = one genre-0 item and one genre-1 item: q = (0.5, 0.5); p = (0.8, 0.2)
    # q~ = 0.99 q + 0.01 p = (0.503, 0.497); KL = 0.8 ln(0.8/0.503) + 0.2 ln(0.2/0.497)
    got = rerank.miscalibration(np.array([[0, 1]]), np.eye(2), np.array([[0.8, 0.2]]))
    assert got[0] == pytest.approx(0.8 * math.log(0.8 / 0.503) + 0.2 * math.log(0.2 / 0.497))


def test_helpers_refuse_ids_and_weights_they_would_misread():
    # genre ids: 1.7 was truncated to genre 1; integral floats are still ids
    with pytest.raises(ValueError, match=r"item_genres\[1\] holds a non-integer genre id 1.7"):
        rerank.genre_distribution([[0], [1.7]])
    with pytest.raises(ValueError, match="non-integer genre id nan"):
        rerank.genre_distribution([[float("nan")]], n_genres=2)
    with pytest.raises(TypeError, match=r"item_genres\[0\] must hold integer genre ids"):
        rerank.genre_distribution([["a"]])
    assert np.array_equal(rerank.genre_distribution([[1.0]], n_genres=2), [[0.0, 1.0]])
    # the indicator matrix: NaN and -1 counted as genres
    with pytest.raises(ValueError, match=r"item_genres\[0, 1\] is nan"):
        rerank.genre_distribution(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"item_genres\[1, 0\] is -1"):
        rerank.genre_distribution(np.array([[1, 0], [-1, 1]]))
    # negative sparse history weights gave a distribution with negative entries
    item_dist = np.eye(2)
    with pytest.raises(ValueError, match=r"histories row 1 holds the weight -1.0"):
        rerank.user_distribution(sp.csr_matrix(np.array([[1.0, 0.0], [-1.0, 2.0]])), item_dist)
    with pytest.raises(ValueError, match="histories row 0 holds the weight nan"):
        rerank.user_distribution(sp.csr_matrix(np.array([[np.nan, 1.0]])), item_dist)
    # list id -1 was read as the last item; an id past the end raised a bare IndexError
    target = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"lists\[0, 1\] holds item id -1, outside \[0, n_items\) with n_items = 2"):
        rerank.miscalibration(np.array([[0, -1]]), item_dist, target)
    with pytest.raises(ValueError, match=r"lists\[0, 0\] holds item id 2"):
        rerank.miscalibration(np.array([[2, 0]]), sp.csr_matrix(item_dist), target)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        rerank.miscalibration(np.array([[0, 1]]), item_dist, target, alpha=1.0)


# bad input ####################################################################################


def _ok():
    item_dist = np.eye(3)[[0, 1, 2, 0]]
    scores = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    target = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    return {"scores": scores, "item_dist": item_dist, "target": target, "k": 2}


@pytest.mark.parametrize("change,exc,match", [
    ({"scores": np.zeros(3)}, ValueError, r"scores must be 2-D \[U, C\], got shape \(3,\)"),
    ({"scores": np.zeros((2, 4), dtype=np.int64)}, TypeError, "scores must have dtype float32 or float64"),
    ({"scores": [[0.1, 0.2]]}, TypeError, "scores must be a numpy.ndarray"),
    ({"scores": np.zeros((2, 4), dtype=np.dtype(np.float64).newbyteorder())}, TypeError,
     r"scores must have dtype float32 or float64 in the machine's byte order, got [<>]f8 \(the "
     r"other byte order\)"),
    ({"k": 0}, ValueError, r"k must be in \[1, C\]"),
    ({"k": 5}, ValueError, r"k must be in \[1, C\] with C = 4"),
    ({"k": 2.0}, TypeError, "k must be an int"),
    ({"lam": 1.5}, ValueError, r"lam must be in \[0, 1\]"),
    ({"lam": -0.1}, ValueError, r"lam must be in \[0, 1\]"),
    ({"lam": float("nan")}, ValueError, r"lam must be in \[0, 1\]"),
    ({"alpha": 1.0}, ValueError, r"alpha must be in \[0, 1\)"),
    ({"alpha": -0.01}, ValueError, r"alpha must be in \[0, 1\)"),
    ({"target": np.array([[0.5, 0.5, 0.0]])}, ValueError, r"target must be 2-D \[U, G\] with U = 2.*\(1, 3\)"),
    ({"target": np.array([[0.5, 0.5, 0.0], [0.2, np.nan, 0.5]])}, ValueError, "target row 1 holds NaN"),
    ({"target": np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.5]])}, ValueError, "target row 1 sums to"),
    ({"target": np.array([[1.5, -0.5, 0.0], [0.2, 0.3, 0.5]])}, ValueError, "target row 0 holds a negative"),
    ({"target": np.array([[1, 0, 0], [0, 0, 1]])}, TypeError, "target must have a float dtype"),
    ({"item_dist": np.eye(3)[[0, 1, 2, 0]][:, :2]}, ValueError,
     r"item_dist and target disagree on the number of genres: item_dist must be \[n_items, G\] "
     r"with G = 3"),
    ({"item_dist": np.eye(3)[[0, 1, 2, 0]] * 0.5}, ValueError, "item_dist row 0 sums to 0.5"),
    ({"item_dist": np.array([[1.5, -0.5, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])}, ValueError,
     "item_dist row 0 holds a negative"),
    ({"item_dist": np.eye(3, dtype=np.int64)[[0, 1, 2, 0]]}, TypeError, "item_dist must have a float dtype"),
    ({"candidates": np.array([[0, 1, 2, 3], [0, 1, 2, 3]], dtype=np.int32)}, TypeError,
     "candidates must have dtype int64, got int32"),
    ({"candidates": np.array([[0, 1, 2, 3]], dtype=np.int64)}, ValueError,
     r"candidates must have the shape of scores \(2, 4\), got shape \(1, 4\)"),
    ({"candidates": np.array([[0, 1, 2, 3], [0, 1, 4, 3]], dtype=np.int64)}, ValueError,
     r"candidates row 1 holds item id 4 \(at candidates\[1, 2\]\)"),
    ({"candidates": np.array([[0, 1, 2, 3], [0, 1, -1, 3]], dtype=np.int64)}, ValueError,
     "candidates row 1 holds item id -1"),
    ({"scores": np.array([[0.4, 0.3, 0.2, 0.1], [0.1, np.nan, 0.3, 0.4]])}, ValueError, "scores row 1 holds NaN"),
    ({"scores": np.array([[0.4, np.inf, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])}, ValueError,
     r"scores row 0 holds \+inf"),
    ({"num_threads": -1}, ValueError, "num_threads must be >= 0"),
    ({"num_threads": 2**31}, ValueError, r"num_threads must be < 2\*\*31"),
    ({"num_threads": 1.0}, TypeError, "num_threads must be an int"),
])
def test_bad_input(change, exc, match):
    args = _ok()
    args.update(change)
    with pytest.raises(exc, match=match):
        rerank.calibrated(**args)


def test_bad_input_nan_in_lam0_path_and_first_row_reported():
    args = _ok()
    args["scores"] = np.full((300, 4), 0.5)
    args["scores"][250, 2] = np.nan
    args["scores"][120, 1] = np.nan
    args["target"] = np.tile([0.2, 0.3, 0.5], (300, 1))
    for lam in (0.0, 0.5):
        with pytest.raises(ValueError, match="scores row 120 holds NaN"):
            rerank.calibrated(**args, lam=lam, num_threads=2)


def test_bad_input_csr():
    item_dist = sp.csr_matrix(np.eye(3)[[0, 1, 2, 0]] * 0.9)
    with pytest.raises(ValueError, match="item_dist row 0 sums to"):
        rerank.calibrated(np.zeros((1, 4)), item_dist, np.array([[1.0, 0, 0]]), 2)
    with pytest.raises(TypeError, match="CSR"):
        rerank.calibrated(np.zeros((1, 4)), sp.coo_matrix(np.eye(3)[[0, 1, 2, 0]]), np.array([[1.0, 0, 0]]), 2)


@pytest.mark.parametrize("args,exc,match", [
    ((np.zeros(5), 1), ValueError, r"scores must be 2-D \[U, C\], got shape \(5,\)"),
    ((np.zeros((2, 5), dtype=np.int32), 1), TypeError, "float32 or float64"),
    ((np.zeros((2, 5)), 6), ValueError, r"k must be in \[1, N\] with N = 5"),
    ((np.zeros((2, 5)), 0), ValueError, r"k must be in \[1, N\]"),
    ((np.array([[0.0, 1.0], [np.nan, 0.0]]), 1), ValueError, "scores row 1 holds NaN"),
    ((np.zeros((2, 5)), 1, 2**31), ValueError, r"num_threads must be < 2\*\*31"),
])
def test_topk_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        rerank.topk(*args)


def test_topk_nan_large_k():
    s = np.zeros((3, 5000))
    s[2, 4000] = np.nan
    with pytest.raises(ValueError, match="scores row 2 holds NaN"):
        rerank.topk(s, 500)


@st.composite
def sorted_instances(draw):
    """Rows sorted by score with C > 32 (the bounded scan), one user, small k."""
    G = draw(st.integers(1, 6))
    n_items = draw(st.integers(33, 60))
    item_genres = [draw(st.lists(st.integers(0, G - 1), min_size=1, max_size=3, unique=True))
                   for _ in range(n_items)]
    C = draw(st.integers(33, n_items))
    k = draw(st.integers(1, 6))
    spread = draw(st.sampled_from([0.01, 0.3, 3.0]))
    scores = np.sort(np.array(draw(st.lists(st.floats(-1, 1), min_size=C, max_size=C))) * spread)[::-1][None, :]
    tgt = np.array([[draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0])) for _ in range(G)]])
    assume(tgt.sum() > 0)
    return {"scores": np.ascontiguousarray(scores), "item_dist": rerank.genre_distribution(item_genres, n_genres=G),
                "target": tgt / tgt.sum(), "k": k, "lam": draw(st.floats(0.01, 0.99)),
                "alpha": draw(st.sampled_from([0.01, 0.1]))}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(sorted_instances())
def test_sorted_rows_match_reference(inst):
    want, gap = ref.greedy(inst["scores"], inst["item_dist"].tolist(), inst["target"], inst["k"], inst["lam"],
                           inst["alpha"])
    assume(gap > 1e-9)
    got = rerank.calibrated(inst["scores"], inst["item_dist"], inst["target"], inst["k"], lam=inst["lam"],
                            alpha=inst["alpha"])
    assert got.tolist() == want


# vlog: the table's log ##########################################################################


def _ulps(got, want):
    return np.abs(got - want) / np.spacing(np.abs(want))


@pytest.mark.parametrize("name,x", [
    ("1 + [0, 1)", 1.0 + np.random.default_rng(1).random(200_000)),
    ("1 + 10^[-16, 3]", 1.0 + 10.0 ** np.random.default_rng(2).uniform(-16, 3, 200_000)),
    ("log-uniform over the normal range", np.exp(np.random.default_rng(3).uniform(-700, 709, 200_000))),
    ("around sqrt(2)/2 and sqrt(2)", np.random.default_rng(4).uniform(0.70, 1.42, 200_000)),
])
def test_vlog_within_one_ulp_of_math_log(name, x):
    # The oracle is the C library's log via math.log (itself within 1 ulp of the true value).
    got = _testing.vlog(x)
    want = np.array([math.log(v) for v in x.tolist()])
    nonzero = want != 0.0
    assert np.array_equal(got[~nonzero], want[~nonzero])
    assert _ulps(got[nonzero], want[nonzero]).max() <= 1.0, name


def test_vlog_edges_and_batch_independence():
    edges = np.array([1.0, 2.0, 0.5, math.sqrt(2.0), math.sqrt(0.5), np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0),
                      1e300, 1e-300, np.finfo(np.float64).tiny, np.finfo(np.float64).max, math.e])
    got = _testing.vlog(edges)
    assert got[0] == 0.0 and got[1] == math.log(2.0)
    assert _ulps(got[1:], np.array([math.log(v) for v in edges[1:]])).max() <= 1.0
    # the same bits from the baseline-ISA code as from the AVX2 or AVX-512 code the CPU may
    # dispatch to
    x = np.exp(np.random.default_rng(6).uniform(-700, 709, 100_003))
    best = _testing.vlog(x)
    assert np.array_equal(_testing.vlog(x, baseline=True), best)
    _testing.set_isa_limit("avx2")
    try:
        assert np.array_equal(_testing.vlog(x), best)
    finally:
        _testing.set_isa_limit("auto")
    # the same bits whatever the batch length and a value's lane
    x = 1.0 + np.random.default_rng(5).random(37)
    full = _testing.vlog(x)
    for n in range(1, 10):
        for j in range(0, x.size - n + 1, 5):
            assert np.array_equal(_testing.vlog(x[j:j + n]), full[j:j + n])


def _isa_cases():
    rng = np.random.default_rng(31)
    cases = []
    for G, sort in ((7, True), (7, False), (20, True), (3, False)):
        scores, item_dist, target, cand, k = random_instance(rng, U=150, C=90, G=G, n_items=200, k=12)
        scores[::5, -10:] = -np.inf
        if sort:
            scores, cand = _sort_rows(scores, cand)
        cases.append((scores, item_dist, target, cand, k))
    return cases


@pytest.mark.parametrize("level", ["baseline", "avx2"])
@pytest.mark.parametrize("f32", [False, True])
def test_every_isa_same_bits(level, f32):
    # The row pass, the table's ratios and logs and the bound dispatch to AVX-512 or AVX2 code
    # where the CPU has it; capped at AVX2 or at the baseline ISA the reranker must give the same
    # lists and the same objective bits. (A level the CPU lacks runs the next one down.)
    for scores, item_dist, target, cand, k in _isa_cases():
        s = scores.astype(np.float32) if f32 else scores
        for lam, alpha in ((0.5, 0.01), (0.9, 0.2)):
            kw = {"lam": lam, "alpha": alpha, "candidates": cand, "return_objective": True}
            fast = rerank.calibrated(s, item_dist, target, k, **kw)
            _testing.set_isa_limit(level)
            try:
                capped = rerank.calibrated(s, item_dist, target, k, **kw)
            finally:
                _testing.set_isa_limit("auto")
            assert np.array_equal(fast.lists, capped.lists)
            assert np.array_equal(fast.objective, capped.objective)
            assert np.array_equal(fast.miscalibration, capped.miscalibration)


def test_isa_limit_hook_checks_its_argument():
    with pytest.raises(ValueError, match="level"):
        _testing.set_isa_limit("sse9")


def test_tiny_target_mass_takes_the_overflow_form():
    # A target mass so small that r = (1 - alpha) w / (alpha p_g (t+1)) passes 1e300: the table
    # entry takes ln(cw) - ln(o) instead of ln(1 + r). Lists still match the reference.
    rng = np.random.default_rng(41)
    scores, item_dist, target, cand, k = random_instance(rng, U=40, C=60, G=6, n_items=80, k=8)
    target[:, 5] = 0.0
    target[::2, 5] = 1e-305
    target /= target.sum(axis=1, keepdims=True)
    want, gap = ref.greedy(scores, item_dist.tolist(), target, k, 0.5, 0.01, cand)
    assert gap > 1e-9
    got = rerank.calibrated(scores, item_dist, target, k, lam=0.5, alpha=0.01, candidates=cand)
    assert got.tolist() == want


@pytest.mark.parametrize("n_items", [2, 10])  # batch-wide (keyed) table; per-user table
def test_overflow_form_keeps_a_tiny_mass_gain(n_items):
    # Items 0 = {genre 1} and 1 = {genre 2}, equal scores, p_1 = 0 and p_2 = 1e-305: in the
    # incremental form item 1 gains lam p_2 ln(cw / o) ~ 1e-303 > 0 and item 0 gains nothing, so
    # item 1 is first (a literal KL sum rounds the two equal; 0 from the overflow form would tie).
    genres = [[1], [2]] + [[0]] * (n_items - 2)
    item_dist = rerank.genre_distribution(genres, n_genres=3)
    target = np.array([[1.0 - 1e-305, 0.0, 1e-305]])
    got = rerank.calibrated(np.zeros((1, 2)), item_dist, target, 1, lam=0.5, alpha=0.01,
                            candidates=np.array([[0, 1]]))
    assert got.tolist() == [[1]]


def _weighted_catalogue(rng, n_items, G, patterns):
    """Items whose category weights follow one of `patterns` (tuples of weights summing to 1)."""
    dist = np.zeros((n_items, G))
    for i in range(n_items):
        w = patterns[rng.integers(len(patterns))]
        dist[i, rng.choice(G, size=len(w), replace=False)] = w
    return dist


@pytest.mark.parametrize("kind", ["few patterns", "many patterns", "5 categories"])
def test_sorted_scan_bound_by_weight_pattern(kind):
    # Score-sorted rows stop scanning once no later candidate can win; the bound goes by the
    # catalogue's weight patterns when there are few (here mixed weights such as 0.7/0.3), and
    # by per-category maxima otherwise. Same lists as the reference and as shuffled rows.
    rng = np.random.default_rng({"few patterns": 51, "many patterns": 52, "5 categories": 53}[kind])
    G, n_items = 9, 300
    if kind == "few patterns":
        pats = [(1.0,), (0.7, 0.3), (0.5, 0.5), (0.5, 0.25, 0.25), (0.4, 0.3, 0.3)]
    elif kind == "many patterns":
        pats = [tuple(np.round(r / r.sum(), 6)) for r in rng.integers(1, 9, size=(40, 3)).astype(float)]
    else:
        pats = [(0.2,) * 5, (1.0,), (0.5, 0.5)]
    item_dist = _weighted_catalogue(rng, n_items, G, pats)
    item_dist /= item_dist.sum(axis=1, keepdims=True)
    U, C, k = 40, 120, 10
    scores = rng.normal(size=(U, C)) * 0.3
    cand = np.stack([rng.choice(n_items, size=C, replace=False) for _ in range(U)]).astype(np.int64)
    raw = rng.random((U, G)) * (rng.random((U, G)) < 0.8)
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    target = raw / raw.sum(axis=1, keepdims=True)
    s_sorted, c_sorted = _sort_rows(scores, cand)
    for lam in (0.3, 0.7):
        want, gap = ref.greedy(s_sorted, item_dist.tolist(), target, k, lam, 0.01, c_sorted)
        assert gap > 1e-9
        got = rerank.calibrated(s_sorted, item_dist, target, k, lam=lam, candidates=c_sorted)
        assert got.tolist() == want
        shuffled = rerank.calibrated(scores, item_dist, target, k, lam=lam, candidates=cand)
        assert np.array_equal(shuffled, got)


@pytest.mark.parametrize("level", ["auto", "avx2", "baseline"])
@pytest.mark.parametrize(("G4", "D"), [(28, 3), (20, 3), (4, 1), (8, 2), (12, 5), (12, 2), (96, 3), (16, 4),
                                       (4, 17)])
def test_ratio_log_block_bits(level, G4, D):
    # The keyed table block against the same formula entry by entry: o_g = oma W_g + ap_g t1
    # (1 where p_g = 0), T[d, g] = lp_g * vlog(1 + cw_d * (1 / o_g)). On AVX-512 the shapes
    # cover all logs side by side with and without a 4-genre tail (D * ceil(G4 / 8) <= 12) and
    # blocks of 8 then 4 (96 genres). AVX2 runs 4 lanes with up to 16 vectors side by side:
    # 15 (20 x 3), exactly 16 (16 x 4), 16 then 1 (4 x 17, 1 genre block), 16 then 5 (28 x 3)
    # and many sets of 16 (96 x 3); the baseline runs 4 lanes one vector at a time.
    rng = np.random.default_rng(61 + G4 + D)
    W = rng.random(G4) * rng.integers(0, 3, G4)
    p = rng.random(G4) * (rng.random(G4) < 0.8)
    ap, lp = 0.01 * p, 0.5 * p
    cw = 0.99 / np.arange(1, D + 1)
    oma, t1 = 0.99, 4.0
    o = np.where(p > 0, oma * W + ap * t1, 1.0)
    want = lp[None, :] * _testing.vlog(1.0 + cw[:, None] * (1.0 / o)[None, :]).reshape(D, G4)
    _testing.set_isa_limit(level)
    try:
        got, ok = _testing.ratio_log_block(cw, W, p, ap, oma, t1, lp)
        p2 = p.copy()
        p2[G4 - 1], ap2 = 1e-305, ap.copy()
        ap2[G4 - 1], W2 = 1e-307, W.copy()
        W2[G4 - 1] = 0.0
        _, ok2 = _testing.ratio_log_block(cw, W2, p2, ap2, oma, t1, lp)
    finally:
        _testing.set_isa_limit("auto")
    assert ok and np.array_equal(got, want)
    assert not ok2  # a ratio past 1e300 is reported (here in the last genre, a tail lane)


def test_ratio_log_block_no_classes():
    # No weight classes: nothing to write, for any number of genres (a review found the AVX-512
    # side-by-side path writing past its 12-vector buffers here).
    z = np.zeros(4000)
    got, ok = _testing.ratio_log_block(np.empty(0), z, z, z, 0.99, 1.0, z)
    assert got.shape == (0, 4000) and ok


@pytest.mark.parametrize("level", ["auto", "avx2", "baseline"])
def test_class_tops_against_sorting(level):
    # The pattern bound's per-class sums of the m largest entries in use, against np.sort;
    # duplicates, zeros and unused keys (masked out) included.
    rng = np.random.default_rng(71)
    D, G4 = 5, 24
    T1 = rng.random((D, G4)) * (rng.random((D, G4)) < 0.7)
    T1[1, :6] = 0.5  # ties
    in_use = rng.random((D, G4)) < 0.8
    in_use[4] = False  # a class with no keys in use
    class_top = np.array([1, 2, 3, 4, 2], dtype=np.int32)
    _testing.set_isa_limit(level)
    try:
        got = _testing.class_tops(T1, in_use, class_top)
    finally:
        _testing.set_isa_limit("auto")
    for d in range(D):
        vals = np.sort(np.where(in_use[d], T1[d], 0.0))[::-1]
        want = np.cumsum(vals[:4])
        m = class_top[d]
        assert np.array_equal(got[d, :m], want[:m]), (d, got[d], want)


def test_class_tops_signed_zeros_give_the_same_bits_at_every_level():
    # -0.0 is finite and >= 0: every level keeps the +0.0 it starts from on a tie (the AVX2 form
    # took the -0.0, native max returning its second operand; found by a differential fuzz)
    rng = np.random.default_rng(5)
    T1 = np.where(rng.random((6, 16)) < 0.5, -0.0, 0.0)
    T1[3, ::5] = 0.25
    in_use = rng.random((6, 16)) < 0.9
    class_top = np.array([1, 2, 3, 4, 4, 2], dtype=np.int32)
    outs = []
    try:
        for level in ("auto", "avx2", "baseline"):
            _testing.set_isa_limit(level)
            outs.append(_testing.class_tops(T1, in_use, class_top))
    finally:
        _testing.set_isa_limit("auto")
    for got in outs:
        assert np.array_equal(got.view(np.int64), outs[-1].view(np.int64))
    assert not np.signbit(outs[0]).any()


@pytest.mark.parametrize("C", [24, 80])
def test_keyed_sorted_rows_with_neg_inf_tails(C):
    # A batch large enough for the per-item key table, rows in score order (the scan copies each
    # chunk's slots as it reaches it) ending in -inf scores, some with fewer finite candidates
    # than k (then every slot is needed): the reference's lists.
    rng = np.random.default_rng(81 + C)
    G, n_items, U, k = 7, 200, 30, 12
    genres = [rng.choice(G, size=rng.integers(1, 4), replace=False).tolist() for _ in range(n_items)]
    item_dist = rerank.genre_distribution(genres, n_genres=G)
    raw = rng.random((U, G)) * (rng.random((U, G)) < 0.8)
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    target = raw / raw.sum(axis=1, keepdims=True)
    scores = -np.sort(-rng.normal(size=(U, C)), axis=1)
    n_finite = rng.integers(C - 20, C + 1, size=U)
    n_finite[:5] = rng.integers(1, k, size=5)
    for u in range(U):
        scores[u, max(n_finite[u], 0):] = -np.inf
    cand = np.stack([rng.choice(n_items, size=C, replace=False) for _ in range(U)]).astype(np.int64)
    want, _ = ref.greedy(scores, item_dist.tolist(), target, k, 0.5, 0.01, cand)
    got = rerank.calibrated(scores, item_dist, target, k, lam=0.5, candidates=cand)
    assert got.tolist() == want


# memory that does not grow with the number of distinct weights ###############################


def _dirichlet_items(rng, n_items, G, per_item=3):
    rows = np.repeat(np.arange(n_items), per_item)
    cols = np.concatenate([rng.choice(G, size=per_item, replace=False) for _ in range(n_items)])
    vals = rng.dirichlet(np.ones(per_item), size=n_items).ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_items, G))


def test_real_valued_weights_beyond_the_dense_key_map_match_reference():
    # Dirichlet weights: nearly every stored weight is its own distinct value, so G * D (300 x
    # ~1200) is above the dense key map's limit and the per-user keys go through the hash map.
    rng = np.random.default_rng(19)
    U, C, G, n_items, k = 2, 40, 300, 400, 8
    items = _dirichlet_items(rng, n_items, G)
    assert G * np.unique(items.data).size > 2**16
    dense = items.toarray()
    scores = rng.normal(size=(U, C))
    cand = np.stack([rng.choice(n_items, size=C, replace=False) for _ in range(U)]).astype(np.int64)
    target = rerank.user_distribution([rng.choice(n_items, size=30) for _ in range(U)], dense)
    for alpha in (0.01, 0.0):
        want, gap = ref.greedy(scores, dense.tolist(), target, k, 0.7, alpha, cand)
        assert gap > 1e-9
        got = rerank.calibrated(scores, items, target, k, lam=0.7, alpha=alpha, candidates=cand, num_threads=1)
        assert got.tolist() == want


def test_many_distinct_weights_take_little_memory():
    # 8,000 items x 8,000 categories with 3 Dirichlet weights each: the per-user key map was
    # dense, G x D x 8 bytes = 1.5 GB per call (MemoryError under this 1 GiB address-space limit).
    script = """
import resource, numpy as np, scipy.sparse as sp
from embtab import rerank
rng = np.random.default_rng(3)
n, G = 8000, 8000
rows = np.repeat(np.arange(n), 3)
cols = np.concatenate([rng.choice(G, size=3, replace=False) for _ in range(n)])
items = sp.csr_matrix((rng.dirichlet(np.ones(3), size=n).ravel(), (rows, cols)), shape=(n, G))
target = rerank.user_distribution([np.arange(0, 200)], items)
scores = rng.normal(size=(1, 300))
cand = rng.choice(n, size=(1, 300), replace=False).astype(np.int64)
with open("/proc/self/status") as f:
    vm = int(next(l for l in f if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
print(rerank.calibrated(scores, items, target, 10, candidates=cand, num_threads=1).shape)
"""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "(1, 10)"


def test_dense_item_dist_passed_again_reuses_its_check_and_sees_changes():
    # A serving loop passes the same dense matrix on every call: the second call reuses the
    # first check, and an in-place change is seen (the reuse compares against a private copy).
    import gc
    import weakref

    rng = np.random.default_rng(21)
    scores, item_dist, target, cand, k = random_instance(rng, U=20, G=5)
    dense = np.array(item_dist, dtype=np.float64, order="C")  # a copy: item_dist stays as it is

    def fresh(d):  # the same call on an array the reuse has never seen
        return rerank.calibrated(scores, d.copy(order="F"), target, k, lam=0.9, candidates=cand)

    first = rerank.calibrated(scores, dense, target, k, lam=0.9, candidates=cand)
    assert np.array_equal(first, fresh(dense))
    assert rerank._DENSE_REUSE.get(dense) is not None                  # kept for the next call
    assert rerank._DENSE_REUSE.get(dense.copy()) is None                # an equal other array: no
    assert np.array_equal(rerank.calibrated(scores, dense, target, k, lam=0.9, candidates=cand), first)
    # every item becomes category 0 only: the lists must follow the new matrix
    dense[:] = 0.0
    dense[:, 0] = 1.0
    assert rerank._DENSE_REUSE.get(dense) is None                       # changed: checked again
    changed = rerank.calibrated(scores, dense, target, k, lam=0.9, candidates=cand)
    assert np.array_equal(changed, fresh(dense))
    assert not np.array_equal(changed, first)
    # an in-place change that breaks the matrix is refused, as on a first call
    dense[3, 0] = np.nan
    with pytest.raises(ValueError, match="item_dist row 3"):
        rerank.calibrated(scores, dense, target, k, lam=0.9, candidates=cand)
    # -0.0 differs from 0.0 bit for bit: checked again, same lists (the values are equal)
    ok = np.array(item_dist, dtype=np.float64, order="C")
    want = rerank.calibrated(scores, ok, target, k, lam=0.9, candidates=cand)
    ok[ok == 0] = -0.0
    assert np.array_equal(rerank.calibrated(scores, ok, target, k, lam=0.9, candidates=cand), want)
    # the reuse holds no strong reference: a dropped matrix is freed
    ref_ = weakref.ref(ok)
    del ok
    gc.collect()
    assert ref_() is None


def test_miscalibration_checks_its_inputs_as_calibrated_does():
    d = np.eye(2)
    ok = np.array([[0.5, 0.5]])
    assert rerank.miscalibration(np.array([[0, 1]]), d, ok)[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="target row 0 holds a negative value"):
        rerank.miscalibration(np.array([[0, 1]]), d, np.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="target"):
        rerank.miscalibration(np.array([[0, 1]]), d, np.array([[0.7, 0.7]]))  # sums to 1.4
    with pytest.raises(ValueError, match=r"item_dist must be \[n_items, G\] with G = 3"):
        rerank.miscalibration(np.array([[0, 1]]), d, np.array([[0.5, 0.3, 0.2]]))
    with pytest.raises(ValueError, match="k >= 1"):
        rerank.miscalibration(np.zeros((1, 0), np.int64), d, ok)
    with pytest.raises(TypeError, match="integer item ids"):
        rerank.miscalibration(np.array([[0.0, 1.0]]), d, ok)


def test_a_budget_beyond_k_is_no_budget_and_allocates_nothing_more():
    rng = np.random.default_rng(0)
    accept = rng.random((4, 2, 6))
    w = rng.dirichlet(np.ones(2), size=4)
    unbounded = (w * accept.sum(axis=2)).sum(axis=1)   # c >= k: every consumption counts
    for c in (6, 7, 2**31, 2**63):
        np.testing.assert_allclose(rerank.expected_consumption(accept, c, intent_weights=w),
                                   unbounded, rtol=1e-12)
    rel = rng.random((4, 2, 9))
    small = rerank.limited_attention(rel, 3, 3, intent_weights=w)
    for c in (4, 2**31, 2**63):
        np.testing.assert_array_equal(rerank.limited_attention(rel, 3, c, intent_weights=w), small)


def test_a_forged_pickled_item_distribution_is_refused():
    # the C++ core checks indices only; a state with a NaN or zero weight gave NaN tables and
    # lists with no error (a review found it through the pickle hook)
    from embtab.rerank import _item_distribution_from_state
    items = rerank.ItemDistribution(np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    back = pickle.loads(pickle.dumps(items))
    assert np.array_equal(back.toarray(), items.toarray())
    indptr, genre, wclass, weights = (np.array(a) for a in items.csr)
    for bad in (np.nan, 0.0, -0.5, np.inf):
        w = weights.copy()
        w[0] = bad
        with pytest.raises(ValueError, match="not a valid pickled ItemDistribution"):
            _item_distribution_from_state((indptr, genre, wclass, w), 2, 3)
    w = weights * 1.5                                           # rows no longer sum to 1
    with pytest.raises(ValueError, match="not a valid pickled ItemDistribution"):
        _item_distribution_from_state((indptr, genre, wclass, w), 2, 3)
    with pytest.raises(ValueError, match="not a valid pickled ItemDistribution"):   # empty item
        _item_distribution_from_state((np.array([0, 2, 2, 3]), genre, wclass, weights), 3, 3)
    with pytest.raises(ValueError, match="not a valid pickled ItemDistribution"):   # genre >= G
        _item_distribution_from_state((indptr, genre, wclass, weights), 2, 2)


def test_minus_inf_in_a_distribution_is_named_as_such():
    with pytest.raises(ValueError, match=r"target row 0 holds -inf"):
        rerank.calibrated(np.array([[0.3, 0.2]]), np.array([[1.0, 0.0], [0.0, 1.0]]),
                          np.array([[-np.inf, 1.0]]), 1)


@pytest.mark.parametrize("threads", [(0,), (), (1, 2.0), (True,)])
def test_rerank_benchmark_refuses_bad_thread_counts_before_running(threads):
    """--threads 0 ran part of the benchmark, then failed in torch.set_num_threads."""
    from embtab.benchmarks import rerank as rb

    with pytest.raises(ValueError, match="num_threads must be a non-empty sequence of ints >= 1"):
        rb.run(quick=True, num_threads=threads)


def test_items_without_a_category_do_not_count_in_either_distribution():
    """A zero row of item_dist (an item with no category) counted in the list's mean and in the
    history's weight: q did not sum to 1 and miscalibration differed from miscalibration@k's
    (docs/metrics.md: q over the items that carry a genre); user_distribution's row summed to
    0.5."""
    from embtab import metrics
    from embtab.data import RowSets

    genres = RowSets.from_lists([[0], [1], []], n_cols=2)      # item 2 has no genre
    w = genres.split_weights()
    top, p = np.array([[0, 2]]), np.array([[0.5, 0.5]])
    want = 0.5 * np.log(0.5 / (0.99 + 0.005)) + 0.5 * np.log(0.5 / 0.005)   # q = (1, 0)
    assert rerank.miscalibration(top, w, p)[0] == pytest.approx(want, rel=1e-12)
    assert metrics.miscalibration_at_k(top, [np.array([0, 1])], genres, k=2) == \
        pytest.approx(want, rel=1e-12)
    # a list of genre-less items only: q = 0, the KL of alpha * p alone
    assert rerank.miscalibration(np.array([[2, 2]]), w, p)[0] == pytest.approx(np.log(100))
    np.testing.assert_array_equal(rerank.user_distribution([np.array([0, 2])], w), [[1.0, 0.0]])
    np.testing.assert_array_equal(rerank.user_distribution([np.array([2])], w), [[0.0, 0.0]])


@pytest.mark.parametrize("seed", range(4))
def test_miscalibration_of_an_item_distribution_reads_only_the_listed_rows(seed):
    # It densified the whole catalogue per call; now it sums the listed items' CSR rows.
    # Oracle: the same function on the dense matrix (items with one to all categories,
    # repeated items in a list, zero target rows).
    rng = np.random.default_rng(seed)
    n, G, U, k = 60, 5, 30, 7
    dense = rng.random((n, G)) * (rng.random((n, G)) < 0.5)
    dense[np.arange(n), rng.integers(0, G, n)] += 0.5
    dense /= dense.sum(1, keepdims=True)
    lists = rng.integers(0, n, (U, k))
    target = rng.random((U, G))
    target /= target.sum(1, keepdims=True)
    target[0] = 0.0
    for alpha in (0.0, 0.01, 0.3):
        want = rerank.miscalibration(lists, dense, target, alpha=alpha)
        got = rerank.miscalibration(lists, rerank.ItemDistribution(dense), target, alpha=alpha)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"lists\[0, 0\] holds item id 60"):
        rerank.miscalibration(np.full((1, 2), n), rerank.ItemDistribution(dense), target[:1])


def test_item_distribution_refuses_a_scipy_matrix_with_bad_indices():
    # scipy does not check a CSR's index arrays; calibrated() trusts an ItemDistribution's
    # (it skips the per-call check), so a column index past G segfaulted there. Oracle: the
    # raw matrix is refused by the per-call check, the ItemDistribution at construction.
    sp = pytest.importorskip("scipy.sparse")
    bad = sp.csr_matrix((np.ones(4), np.array([0, 1, 10**8, 0], np.int32), np.array([0, 1, 2, 3, 4])),
                        shape=(4, 2))
    scores, target = np.ones((1, 3)), np.full((1, 2), 0.5)
    with pytest.raises(ValueError, match=r"column index outside \[0, 2\)"):
        rerank.ItemDistribution(bad)
    with pytest.raises(ValueError):
        rerank.calibrated(scores, bad, target, k=2)
    # and zero users through the CSR path of miscalibration, as the dense one
    good = rerank.ItemDistribution(np.eye(2))
    assert rerank.miscalibration(np.zeros((0, 2), np.int64), good, np.zeros((0, 2))).shape == (0,)


def test_item_distribution_arrays_cannot_be_made_writable():
    # The core reads an ItemDistribution's arrays unchecked; .csr handed out arrays that owned
    # their memory, so setflags(write=True) worked and an edited category id crashed calibrated.
    items = rerank.ItemDistribution(np.eye(4))
    for a in items.csr + pickle.loads(pickle.dumps(items)).csr:
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="WRITEABLE"):
            a.setflags(write=True)
    s, t = np.array([[0.9, 0.8, 0.7, 0.6]]), np.full((1, 4), 0.25)
    assert rerank.calibrated(s, items, t, 2, num_threads=1).tolist() == [[0, 1]]


def test_pickled_item_distribution_with_a_category_twice_is_refused():
    items = rerank.ItemDistribution(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    fn, (csr, n_items, n_genres) = items.__reduce__()
    indptr, genre, wclass, weights = (np.array(a) for a in csr)
    genre[indptr[2]:indptr[3]] = 0     # item 2: category 0 at 0.5, twice
    with pytest.raises(ValueError, match="not a valid pickled ItemDistribution"):
        fn((indptr, genre, wclass, weights), n_items, n_genres)


def test_miscalibration_checks_item_dist_and_does_not_depend_on_list_order():
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    D = rng.random((30, 3)) * (rng.random((30, 3)) < 0.6)
    D[D.sum(axis=1) == 0, 0] = 1.0
    D /= D.sum(axis=1, keepdims=True)
    lists = np.array([rng.choice(30, 10, replace=False) for _ in range(40)])
    perm = np.array([rng.permutation(r) for r in lists])
    t = rng.dirichlet(np.ones(3), 40)
    want = rerank.miscalibration(lists, D, t)
    for form in (D, sp.csr_matrix(D), sp.coo_matrix(D), rerank.ItemDistribution(D)):
        assert rerank.miscalibration(perm, form, t).tolist() == want.tolist()
    bad = D.copy()
    bad[lists[3, 4], 1] = np.nan
    with pytest.raises(ValueError, match=rf"item_dist\[{lists[3, 4]}, 1\] is nan \(item of lists\["):
        rerank.miscalibration(lists, bad, t)
    bad[lists[3, 4], 1] = -0.5
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        rerank.miscalibration(lists, sp.csr_matrix(bad), t)
    with pytest.raises(ValueError, match="item id 18446744073709551615"):
        rerank.miscalibration(np.array([[0, 2**64 - 1]], dtype=np.uint64), D, t[:1])


def test_user_distribution_and_intent_relevance_refuse_what_they_cannot_read():
    D = rerank.genre_distribution([[0], [1], [0, 1]], n_genres=2)
    with pytest.raises(ValueError, match=r"histories\[0\] must be a 1-D array of item ids"):
        rerank.user_distribution([np.array([[0, 1]])], D)
    nan_d = D.copy()
    nan_d[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"item_dist\[0, 0\] is nan"):
        rerank.user_distribution([np.array([0, 1])], nan_d)
    with pytest.raises(ValueError, match=r"scores\[0, 1\] is NaN: mask a candidate with -inf"):
        rerank.intent_relevance(np.array([[0.5, np.nan, 0.2]]), D, np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"item_dist row 1 sums to 2.0, not 1 \(or 0 for no category\)"):
        rerank.intent_relevance(np.array([[0.5, 0.1, 0.2]]), np.array([[1.0, 0], [1, 1], [0, 1]]),
                                np.array([[0.5, 0.5]]))


def test_calibrated_without_candidates_names_the_scores_column_past_the_items():
    with pytest.raises(ValueError, match="scores has a column 3 but item_dist has fewer rows"):
        rerank.calibrated(np.array([[0.4, 0.3, 0.2, 0.1]]), np.eye(3), np.full((1, 3), 1 / 3), 2)


@pytest.mark.skipif(embtab._core._sanitized, reason="AddressSanitizer aborts on an "
                    "allocation past its maximum instead of letting malloc fail")
def test_genre_distribution_names_a_genre_id_too_large_for_a_dense_matrix():
    # 2 x 2**45 float64 is 2**50 bytes: past any x86-64 address space, refused however the
    # system overcommits memory
    with pytest.raises(MemoryError, match=rf"largest genre id in item_genres is {2**45} .*pass n_genres"):
        rerank.genre_distribution([[0], [2**45]])
    assert rerank.genre_distribution([[0], [2]], n_genres=3).tolist() == [[1, 0, 0], [0, 0, 1]]
