"""Review 2 of rerank and metrics: a mutable ItemDistribution that crashed calibrated(), integer
genre ids read as an indicator matrix, relevance / popularity / is_head / groups / values checked
where they were not (or blamed on another argument), evaluate() guessing the catalogue size,
and the small ones (overflow, n_users, uint64 genre ids, flat id lists, masked arrays)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import embtab
from embtab import metrics, rerank

REPO = Path(__file__).resolve().parents[1]


# 1. ItemDistribution is immutable ##############################################################


@pytest.mark.parametrize("attr", ["n_items", "n_genres", "nnz", "_n_genres", "_csr", "_max_nnz"])
def test_item_distribution_attributes_cannot_be_set_or_deleted(attr):
    items = rerank.ItemDistribution(np.eye(4))
    with pytest.raises(AttributeError, match=f"ItemDistribution is immutable: {attr} cannot be set"):
        setattr(items, attr, 2)
    with pytest.raises(AttributeError, match=f"{attr} cannot be deleted"):
        delattr(items, attr)
    assert (items.n_items, items.n_genres, items.nnz) == (4, 4, 4)


def test_an_edited_n_genres_cannot_crash_calibrated():
    # n_genres = 2 let a [4, 2] target pass, and the core (which skips its index check for an
    # ItemDistribution) read genre ids up to 999 in a 2-wide table: a segfault. In a child
    # process, so that the old behaviour fails this test instead of killing the run.
    script = """
import numpy as np
from embtab import rerank
items = rerank.ItemDistribution(np.eye(1000))
try:
    items.n_genres = 2
except AttributeError as e:
    print("refused:", e)
try:
    rerank.calibrated(np.random.rand(4, 1000), items, np.full((4, 2), .5), k=3)
except ValueError as e:
    print("calibrated:", e)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(embtab.__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "refused: ItemDistribution is immutable: n_genres cannot be set" in res.stdout
    assert "calibrated: item_dist has G = 1000 categories but target has shape (4, 2)" in res.stdout


def test_an_edited_n_items_cannot_reach_miscalibration():
    items = rerank.ItemDistribution(np.eye(3))
    with pytest.raises(AttributeError, match="n_items cannot be set"):
        items.n_items = 10
    # (an IndexError of the CSR before): the list id is refused against the real size
    with pytest.raises(ValueError, match=r"lists\[0, 0\] holds item id 5, outside \[0, n_items\) "
                                         r"with n_items = 3"):
        rerank.miscalibration(np.array([[5]]), items, np.full((1, 3), 1 / 3))


def test_item_distribution_pickles_and_copies_with_its_sizes_and_stays_immutable():
    rng = np.random.default_rng(0)
    dist = rerank.genre_distribution([rng.choice(5, rng.integers(1, 3), replace=False)
                                      for _ in range(30)], n_genres=5)
    items = rerank.ItemDistribution(dist)
    scores = rng.random((3, 30))
    target = rerank.user_distribution([np.array([0, 1]), np.array([2]), np.array([3, 4, 5])], dist)
    want = rerank.calibrated(scores, items, target, k=4)
    for other in (pickle.loads(pickle.dumps(items)), copy.copy(items), copy.deepcopy(items),
                  rerank.ItemDistribution(items)):
        assert type(other) is rerank.ItemDistribution
        assert (other.n_items, other.n_genres, other.nnz) == (items.n_items, items.n_genres, items.nnz)
        assert np.array_equal(other.toarray(), dist)
        assert np.array_equal(rerank.calibrated(scores, other, target, k=4), want)
        with pytest.raises(AttributeError, match="n_genres cannot be set"):
            other.n_genres = 1


def test_item_distribution_cannot_be_subclassed():
    # a subclass could shadow the sizes calibrated() trusts
    with pytest.raises(TypeError, match="ItemDistribution cannot be subclassed"):
        class Shadow(rerank.ItemDistribution):   # noqa: F841
            n_genres = 2


# 2. genre ids in a 2-D array ####################################################################


def test_genre_distribution_refuses_genre_ids_in_a_2d_array():
    ids = np.array([[0, 5], [2, 3]])
    with pytest.raises(ValueError, match=r"item_genres\[0, 1\] is 5; a 2-D array is read as an "
                                         r"indicator matrix .* only 0 and 1 .*list with one array "
                                         r"of ids per item"):
        rerank.genre_distribution(ids, n_genres=6)
    with pytest.raises(ValueError, match=r"item_genres\[0, 1\] is 0.5"):
        rerank.genre_distribution(np.array([[1.0, 0.5]]))
    with pytest.raises(ValueError, match=r"item_genres\[0, 0\] is 2"):
        rerank.genre_distribution(np.array([[2, 0]], dtype=np.uint8))
    # the list form the message suggests reads them as ids
    got = rerank.genre_distribution(list(ids), n_genres=6)
    assert got.tolist() == [[0.5, 0, 0, 0, 0, 0.5], [0, 0, 0.5, 0.5, 0, 0]]
    # 0/1 matrices of every numeric dtype are still indicators
    ind = np.array([[1, 0, 1], [0, 1, 0]])
    for a in (ind, ind.astype(bool), ind.astype(np.float32), ind.astype(np.uint8)):
        assert rerank.genre_distribution(a).tolist() == [[0.5, 0, 0.5], [0, 1, 0]]


def test_genre_distribution_refuses_n_genres_other_than_the_matrix_width():
    ind = np.array([[True, False], [False, True]])
    with pytest.raises(ValueError, match=r"n_genres = 6 but the indicator matrix item_genres has "
                                         r"2 columns \(shape \(2, 2\)\)"):
        rerank.genre_distribution(ind, n_genres=6)
    with pytest.raises(TypeError, match="n_genres must be an int"):
        rerank.genre_distribution(ind, n_genres=2.0)
    assert rerank.genre_distribution(ind, n_genres=2).tolist() == [[1, 0], [0, 1]]


# 3. consumed utility checks relevance whole #####################################################


def test_consumed_utility_names_the_bad_relevance_entry_not_accept():
    top = np.array([[3, 0]])
    with pytest.raises(ValueError, match=r"^relevance must hold probabilities in \[0, 1\]; "
                                         r"relevance\[0, 3\] is nan$"):
        metrics.consumed_utility_at_k(top, np.array([[.5, 0, 0, np.nan]]), c=1, k=2)
    # an item no list holds: was accepted silently
    for bad in (7.0, -0.1, np.inf):
        with pytest.raises(ValueError, match=rf"relevance\[0, 3\] is {bad!r}"):
            metrics.consumed_utility_at_k(np.array([[0, 1]]), np.array([[.5, 0, 0, bad]]),
                                          c=1, k=2)
    rel3 = np.full((1, 2, 4), 0.5)
    rel3[0, 1, 2] = 1.5
    with pytest.raises(ValueError, match=r"relevance\[0, 1, 2\] is 1.5"):
        metrics.consumed_utility_at_k(np.array([[0, 1]]), rel3, c=1, k=2,
                                      intent_weights=np.array([[0.5, 0.5]]))
    # good values are unchanged
    assert metrics.consumed_utility_at_k(np.array([[1, 0]]), np.array([[.5, 1.0, 0, 0]]),
                                         c=1, k=2) == 1.0


def test_expected_consumption_message_prints_the_value_plainly():
    with pytest.raises(ValueError, match=r"^accept must hold probabilities in \[0, 1\]; "
                                         r"accept\[0, 1\] is nan$"):
        rerank.expected_consumption(np.array([[0.5, np.nan]]), c=1)


# 4. popularity and is_head ######################################################################


@pytest.mark.parametrize("pop, msg", [
    ([np.nan, 1.0], r"popularity must be finite and >= 0; popularity\[0\] is nan"),
    ([-1.0, 1.0], r"popularity\[0\] is -1.0"),
    ([1.0, np.inf], r"popularity\[1\] is inf"),
    ([[0.5, 1.0]], r"popularity must be 1-D \[I\], one value per item; got shape \(1, 2\)"),
])
def test_arp_refuses_bad_popularity_naming_it(pop, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.arp_at_k([[0], [1]], pop, k=1)
    with pytest.raises(ValueError, match=msg):
        metrics.excess_arp_at_k([[0], [1]], [[1], [0]], pop, k=1)


def test_a_short_popularity_or_is_head_is_named_not_only_topk():
    with pytest.raises(ValueError, match=r"got \[0, 3\] \(I = 2 is the length of popularity"):
        metrics.arp_at_k([[0], [3]], [0.5, 1.0], k=1)
    with pytest.raises(ValueError, match=r"^oracle entries .* the length of popularity"):
        metrics.excess_arp_at_k([[0], [1]], [[0], [3]], [0.5, 1.0], k=1)
    with pytest.raises(ValueError, match=r"got \[0, 3\] \(I = 2 is the length of is_head"):
        metrics.tail_share_at_k([[0], [3]], [True, False], k=1)
    with pytest.raises(ValueError, match=r"I = 2 is the length of relevance"):
        metrics.merit_exposure_at_k([[0], [3]], [1.0, 2.0], k=1)
    with pytest.raises(ValueError, match=r"I = 2 is the length of train_counts"):
        metrics.decile_recall_at_k([[0], [3]], [[0], [1]], [3, 1], k=1)


def test_tail_share_refuses_is_head_that_is_not_a_mask():
    with pytest.raises(ValueError, match=r"is_head must be a bool mask \[I\] \(or 0/1\); "
                                         r"is_head\[1\] is 2"):
        metrics.tail_share_at_k([[0], [1]], [1, 2], k=1)
    with pytest.raises(ValueError, match=r"is_head must be a 1-D bool mask \[I\]; got shape \(1, 2\)"):
        metrics.tail_share_at_k([[0], [1]], [[True, False]], k=1)
    with pytest.raises(TypeError, match="is_head must be a bool mask"):
        metrics.tail_share_at_k([[0], [1]], ["yes", ""], k=1)
    assert metrics.tail_share_at_k([[0], [1]], [1, 0], k=1) == 0.5


# 5. evaluate does not guess the catalogue size ##################################################


def test_evaluate_requires_n_items_when_nothing_tells_it():
    with pytest.raises(ValueError, match=r"evaluate needs n_items, the number of items in the "
                                         r"catalogue: train is a list.*Pass n_items"):
        metrics.evaluate([[0]], [[1]], [[0]], k=1)
    with pytest.raises(ValueError, match="evaluate needs n_items"):
        metrics.evaluate([[0]], (np.array([0, 1]), np.array([1])), [[0]], k=1)
    r = metrics.evaluate([[0]], [[1]], [[0]], k=1, n_items=5)
    assert r["coverage@1"] == 0.2 and r["recall@1"] == 1.0
    # a bool indicator matrix tells I
    train = np.array([[False, True, False, False]])
    assert metrics.evaluate([[0]], train, [[0]], k=1)["coverage@1"] == 0.25
    with pytest.raises(TypeError, match="n_items must be an int"):
        metrics.evaluate([[0]], [[1]], [[0]], k=1, n_items=5.0)


def test_an_inferred_catalogue_size_is_named_in_the_topk_range_error():
    with pytest.raises(ValueError, match=r"topk entries must lie in \[0, 2\) or be -1 \(padding\); "
                                         r"got \[1, 5\] \(I = 2 was inferred from test, its "
                                         r"largest item index \+ 1.*pass n_items"):
        metrics.recall_at_k([[5, 1]], [[1]], k=2)
    with pytest.raises(ValueError, match="inferred from test"):
        metrics.ndcg_at_k([[5, 1]], [[1]], k=2)
    with pytest.raises(ValueError, match="inferred from relevance"):
        metrics.consumed_utility_at_k([[5, 1]], [[1]], c=1, k=2)
    with pytest.raises(ValueError, match="inferred from train"):
        metrics.delta_gap_at_k([[5]], [[1]], [0], k=1)
    # n_items given: the message does not say inferred; the sizes then work
    with pytest.raises(ValueError) as e:
        metrics.recall_at_k([[5, 1]], [[1]], k=2, n_items=3)
    assert "inferred" not in str(e.value)
    assert metrics.recall_at_k([[5, 1]], [[1]], k=2, n_items=6) == 1.0


# 6. gini ########################################################################################


def test_gini_refuses_negative_values_before_the_zero_sum_case():
    with pytest.raises(ValueError, match=r"values must be finite and >= 0; values\[0\] "
                                         r"\(flattened\) is -1.0"):
        metrics.gini([-1.0, 1.0])
    with pytest.raises(ValueError, match=r"values\[1\] \(flattened\) is nan"):
        metrics.gini([1.0, np.nan])
    assert np.isnan(metrics.gini([0.0, 0.0]))
    # values whose sum overflows: G does not depend on the scale
    assert metrics.gini([1e308, 1e308, 0.0]) == pytest.approx(1 / 3)


# 7. delta_gap groups ############################################################################


@pytest.mark.parametrize("groups, msg", [
    ([5, 2], r"groups\[0\] is 5"),
    ([-1, 2], r"groups\[0\] is -1"),
    ([0.7, 2.9], r"groups\[0\] is 0.7"),
    ([0, np.nan], r"groups\[1\] is nan"),
])
def test_delta_gap_refuses_groups_outside_user_groups(groups, msg):
    with pytest.raises(ValueError, match=r"groups must hold group indices in \[0, 3\) .*" + msg):
        metrics.delta_gap_at_k([[2], [0]], [[0], [0, 1]], groups, k=1, n_items=3)


def test_delta_gap_refuses_non_numeric_groups_and_accepts_integral_floats():
    for g in (["a", "b"], [True, False]):
        with pytest.raises(TypeError, match="groups must hold integer group indices"):
            metrics.delta_gap_at_k([[2], [0]], [[0], [0, 1]], g, k=1, n_items=3)
    want = metrics.delta_gap_at_k([[2], [0]], [[0], [0, 1]], [0, 2], k=1, n_items=3)
    got = metrics.delta_gap_at_k([[2], [0]], [[0], [0, 1]], np.array([0.0, 2.0]), k=1, n_items=3)
    np.testing.assert_equal(got, want)
    assert want["niche"] == -1.0


# 8. the limited-attention greedy and ties #######################################################


def test_limited_attention_tie_case_documented_in_docs_metrics():
    rel = np.array([[[.5, 0, .8], [.3, .8, 0]]])
    w = np.array([[.5, .5]])
    lists, obj = rerank.limited_attention(rel, 2, 1, intent_weights=w, return_objective=True)
    assert lists.tolist() == [[0, 1]] and round(float(obj[0]), 3) == 0.577
    e = rerank.examination_probability(2)
    best = rerank.expected_consumption(rel[:, :, [2, 1]] * e, 1, w)[0]
    assert round(float(best), 3) == 0.652
    doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert "within 5%" not in doc
    assert "[0, 1] gets 0.577, while [2, 1] gets 0.652" in doc


# 9. the small ones ##############################################################################


def test_user_distribution_survives_weights_whose_total_overflows():
    got = rerank.user_distribution(sp.csr_matrix([[1e308, 1e308, 0], [1.0, 0, 3.0]]), np.eye(3))
    np.testing.assert_allclose(got, [[0.5, 0.5, 0], [0.25, 0, 0.75]])
    got = rerank.user_distribution([np.array([0, 1]), np.array([2])], np.eye(3) * 1e308)
    np.testing.assert_allclose(got, [[0.5, 0.5, 0], [0, 0, 1]])
    # the usual case is unchanged, to the bit
    d = rerank.genre_distribution([[0], [1], [0, 1]], n_genres=2)
    h = sp.csr_matrix(np.array([[1, 0, 1], [0, 2, 3]], dtype=np.float64))
    num = np.asarray(h @ d)
    assert np.array_equal(rerank.user_distribution(h, d), num / num.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("n_users", [0.5, 1.5, 2.0, True])
def test_item_popularity_refuses_a_non_integer_n_users(n_users):
    with pytest.raises(TypeError, match="n_users must be an int"):
        metrics.item_popularity([[0]], n_users=n_users)
    with pytest.raises(ValueError, match="n_users must be >= 1, got 0"):
        metrics.item_popularity([[0]], n_users=0)


def test_genre_distribution_names_uint64_and_huge_ids_as_they_are():
    with pytest.raises(ValueError, match=r"item_genres\[0\] holds the genre id "
                                         r"9223372036854775808, beyond int64"):
        rerank.genre_distribution([np.array([2**63], np.uint64)])
    with pytest.raises(ValueError, match=r"item_genres\[1\] holds the genre id 1e\+30, beyond int64"):
        rerank.genre_distribution([[0], [1e30]])


def test_genre_distribution_refuses_a_flat_list_of_ids():
    for flat in ([0, 1, 2], np.array([0, 1, 2])):
        with pytest.raises(ValueError, match=r"item_genres\[0\] is the scalar 0, not a sequence of "
                                             r"genre ids: .*one sequence .* per item"):
            rerank.genre_distribution(flat)


def _masked(a, i=0):
    m = np.zeros(np.shape(a), dtype=bool)
    m.flat[i] = True
    return np.ma.masked_array(a, m)


@pytest.mark.parametrize("name", ["scores", "item_dist", "target"])
def test_calibrated_refuses_masked_arrays(name):
    args = {"scores": np.array([[0.9, 0.5, 0.1]]), "item_dist": np.eye(3),
            "target": np.full((1, 3), 1 / 3)}
    args[name] = _masked(args[name])
    with pytest.raises(TypeError, match=f"{name} is a numpy masked array, whose mask would be ignored"):
        rerank.calibrated(args["scores"], args["item_dist"], args["target"], k=1)


def test_other_entry_points_refuse_masked_arrays():
    rel = np.array([[0.5, 0.2, 0.9]])
    cases = [
        ("scores", lambda: rerank.topk(_masked(rel), 1)),
        ("item_dist", lambda: rerank.ItemDistribution(_masked(np.eye(3)))),
        ("relevance", lambda: rerank.limited_attention(_masked(rel), 2, 1)),
        ("accept", lambda: rerank.expected_consumption(_masked(rel), 1)),
        ("item_dist", lambda: rerank.user_distribution([np.array([0])], _masked(np.eye(3)))),
        ("target", lambda: rerank.miscalibration(np.array([[0]]), np.eye(3),
                                                 _masked(np.full((1, 3), 1 / 3)))),
        ("relevance", lambda: metrics.consumed_utility_at_k(np.array([[0, 1]]), _masked(rel),
                                                            c=1, k=2)),
        ("popularity", lambda: metrics.arp_at_k([[0]], _masked(np.array([0.5, 1.0])), k=1)),
        ("topk", lambda: metrics.recall_at_k(_masked(np.array([[0, 1]])), [[0]], k=2, n_items=3)),
    ]
    for name, call in cases:
        with pytest.raises(TypeError, match=f"^{name} is a numpy masked array"):
            call()


def test_user_groups_requires_n_items_when_nothing_tells_it():
    # the head items are the top share of the catalogue: a catalogue guessed from train's
    # largest index left out the items no training user has
    from embtab import metrics as M

    with pytest.raises(ValueError, match=r"user_groups needs n_items"):
        M.user_groups([[0], [3], [0, 1], [2, 3], [1]])
    assert M.user_groups([[0], [3], [0, 1], [2, 3], [1]], n_items=4).tolist() == [2, 0, 1, 1, 1]
    seen = M.as_row_sets([[0], [3], [0, 1], [2, 3], [1]], 4, name="train")
    assert M.user_groups(seen).tolist() == [2, 0, 1, 1, 1]


def test_a_thread_writing_the_candidates_mid_call_cannot_make_the_core_read_out_of_range():
    # The core checks each row's candidate ids and reads them again in every later pass, with
    # the GIL released; a second thread that rewrites the caller's array in between turned a
    # checked id into one far outside the catalogue (an out-of-range read: a segfault for
    # ids near 2^40). The ids are now read from a private copy (greedy.hpp, Scratch::cand).
    # A race: without the copy it may not crash on every run; with it, every run ends cleanly,
    # each call either refused (ValueError) or returning ids that are all in the catalogue. In a
    # child process, so that a crash fails this test instead of killing the run.
    script = """
import threading, time
import numpy as np
from embtab import rerank
rng = np.random.default_rng(0)
n_items, U, C = 2000, 4096, 200
g = (rng.random((n_items, 16)) < 0.2) + 0.01
items = rerank.ItemDistribution(g / g.sum(1, keepdims=True))
scores = rng.random((U, C))
target = np.full((U, 16), 1 / 16)
ok = refused = 0
for attempt in range(24):
    cand = np.ascontiguousarray(np.argsort(rng.random((U, n_items)), axis=1)[:, :C])
    far = np.full_like(cand, 1 << 40)
    def writer(cand=cand, far=far, attempt=attempt):
        time.sleep(0.0005 * attempt)
        cand[:] = far
    w = threading.Thread(target=writer)
    w.start()
    try:
        out = rerank.calibrated(scores, items, target, k=10, candidates=cand, num_threads=2)
        assert ((out >= 0) & (out < n_items)).all(), "ids outside the catalogue"
        ok += 1
    except ValueError:
        refused += 1
    w.join()
print("clean", ok + refused)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(embtab.__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "clean 24" in res.stdout


def test_popularity_bins_give_the_same_bins_for_the_same_proportions():
    # review: [0.1] * 10 summed 8 of them to 0.7999999999999999 and put one item more in the
    # mid bin than [1] * 10; NaN cut points were accepted; counts near 1e308 overflowed
    ints = rerank.popularity_bins([1] * 10).argmax(1)
    assert ints.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    for scale in (0.1, 0.3, 1e-300, 1e300, 1.7e307):
        np.testing.assert_array_equal(rerank.popularity_bins([scale] * 10).argmax(1), ints)
    for bins in [(float("nan"),), (0.2, float("nan")), (float("inf"),)]:
        with pytest.raises(ValueError, match="bins must be increasing cut points"):
            rerank.popularity_bins([3, 2, 1], bins=bins)
    assert rerank.popularity_bins([0, 0, 0]).argmax(1).tolist() == [0, 0, 0]   # documented


def test_head_items_refuse_infinite_counts():
    with pytest.raises(ValueError, match="train_counts must be non-negative finite"):
        metrics.head_items(np.array([3.0, np.inf, 1.0]))
