"""Metric arguments a review found mishandled: k, chunk and n_items are checked by name; an
integer relevance matrix is refused as ambiguous."""

import numpy as np
import pytest

from embtab import metrics


class _Truth:
    def prob(self, users):
        return np.tile(np.array([0.5, 0.3, 0.2]), (len(users), 1))


@pytest.mark.parametrize("kw, error, match", [
    ({"chunk": -1}, ValueError, "chunk must be >= 1"),     # listed nothing: all -1
    ({"chunk": 0}, ValueError, "chunk must be >= 1"),      # range() arg 3 must not be zero
    ({"chunk": 1.5}, TypeError, "chunk must be an int"),
    ({"k": 2.0}, TypeError, "k must be an int"),
    ({"k": "2"}, TypeError, "k must be an int"),
    ({"k": True}, TypeError, "k must be an int"),
    ({"k": 0}, ValueError, "k must be >= 1"),
    ({"k": 4}, ValueError, r"k must be in \[1, 3\]"),
])
def test_oracle_topk_checks_k_and_chunk_by_name(kw, error, match):
    with pytest.raises(error, match=match):
        metrics.oracle_topk(_Truth(), [[0], [1]], **{"k": 2, "n_items": 3, **kw})


def test_oracle_topk_does_not_depend_on_chunk():
    a = metrics.oracle_topk(_Truth(), [[0], [1], []], k=2, n_items=3)
    assert a.tolist() == [[1, 2], [0, 2], [0, 1]]
    assert np.array_equal(metrics.oracle_topk(_Truth(), [[0], [1], []], k=2, n_items=3, chunk=1), a)


def test_coverage_needs_at_least_one_item():
    top = np.full((2, 1), -1)
    with pytest.raises(ValueError, match="n_items must be >= 1, got 0"):   # was NaN + warning
        metrics.coverage_at_k(top, 0, k=1)
    with pytest.raises(TypeError, match="n_items must be an int"):
        metrics.coverage_at_k([[0]], 2.5, k=1)
    with pytest.raises(TypeError, match="n_items must be an int"):
        metrics.gini_at_k([[0]], True, k=1)
    assert metrics.coverage_at_k(top, 3, k=1) == 0.0


def test_consumed_utility_refuses_an_integer_relevance_matrix():
    # np.array([[0, 1, 1]]) was read as the item lists {0, 1} (1.0), the same matrix as float
    # as relevance values (0.63): an integer or bool ndarray is refused as ambiguous
    for rel in (np.array([[0, 1, 1]]), np.array([[False, True, True]]),
                np.array([[0, 1, 1]], np.uint8)):
        with pytest.raises(TypeError, match="relevance: an integer or bool array .* ambiguous"):
            metrics.consumed_utility_at_k([[0, 1]], rel, c=1, k=2, n_items=3)
    as_values = metrics.consumed_utility_at_k([[0, 1]], np.array([[0.0, 1.0, 1.0]]), c=1, k=2)
    as_sets = metrics.consumed_utility_at_k([[0, 1]], [[1, 2]], c=1, k=2, n_items=3)
    assert as_values == pytest.approx(1 / np.log2(3)) and as_values == pytest.approx(as_sets)


def test_an_integer_indicator_matrix_is_refused_and_a_bool_one_is_read_as_indicators():
    # A 0/1 int matrix was read as item indices per row (the items 0 and 1): recall 0.5 where
    # the indicators give 1.0. Oracle: the same sets as index lists.
    top = np.array([[3, 1], [0, 2]])
    ind = np.array([[0, 1, 0, 1], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"test: row 0 holds an item index more than once.*"
                                         r"must be a bool array"):
        metrics.recall_at_k(top, ind, k=2, n_items=4)
    lists = [np.flatnonzero(r) for r in ind]
    assert metrics.recall_at_k(top, ind.astype(bool), k=2, n_items=4) == \
        metrics.recall_at_k(top, lists, k=2, n_items=4) == 1.0
    with pytest.raises(ValueError, match="spans 3 items; expected 4"):
        metrics.recall_at_k(top, ind[:, :3].astype(bool), k=2, n_items=4)
    # the same as nested lists; index rows (repeats allowed, as in a list of interactions),
    # and -1 padding, keep their own handling
    with pytest.raises(ValueError, match="row 0 holds an item index more than once"):
        metrics.recall_at_k(top, ind.tolist(), k=2, n_items=4)
    assert metrics.recall_at_k(top, np.array([[3, 1], [2, 0]]), k=2, n_items=4) == 1.0
    assert metrics.recall_at_k(top, [[3, 3, 1], [2, 2, 0]], k=2, n_items=4) == 1.0
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        metrics.recall_at_k(top, np.array([[3, -1, -1], [1, 2, 3]]), k=2, n_items=4)


@pytest.mark.parametrize("bad", [-1, np.nan, 0.5, 2])
def test_genre_membership_values_other_than_0_and_1_are_refused(bad):
    # -1 or NaN counted as membership
    genres = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    genres[1, 0] = bad
    with pytest.raises(ValueError, match=r"item_genres\[1, 0\] is"):
        metrics.miscalibration_at_k(np.array([[0, 1]]), [[2]], genres, k=2)
