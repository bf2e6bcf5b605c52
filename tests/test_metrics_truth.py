"""Metrics against the truth (oracle, excess ARP, ΔGAP, distinct lists, merit exposure) on
hand-worked small cases."""

import math

import numpy as np
import pytest

from embtab.metrics import (
    USER_GROUPS,
    delta_gap_at_k,
    distinct_lists_at_k,
    excess_arp_at_k,
    merit_exposure_at_k,
    oracle_topk,
    truth_metrics,
    user_groups,
)


class _Truth:
    """p(i|u) for 3 users x 5 items, given as a table."""

    P = np.array([[0.10, 0.40, 0.30, 0.15, 0.05],
                  [0.50, 0.05, 0.05, 0.20, 0.20],
                  [0.20, 0.20, 0.20, 0.20, 0.20]])
    n_users, n_items = 3, 5

    def prob(self, users=None):
        return self.P if users is None else self.P[np.asarray(users)]


def test_oracle_masks_training_items_and_breaks_ties_by_lower_index():
    train = [[1], [0, 3], []]
    # user 0: item 1 masked -> 2 (.30), 3 (.15); user 1: 0, 3 masked -> 4 (.20) then 1 (.05,
    # tie with 2: lower index); user 2: all tie -> 0, 1
    top = oracle_topk(_Truth(), train, k=2, n_items=5)
    assert top.tolist() == [[2, 3], [4, 1], [0, 1]]
    # chunking does not change the result
    assert oracle_topk(_Truth(), train, k=2, n_items=5, chunk=1).tolist() == top.tolist()
    with pytest.raises(ValueError, match="k"):
        oracle_topk(_Truth(), train, k=6, n_items=5)


def test_excess_arp_is_the_difference_of_the_two_arps():
    pop = [0.9, 0.5, 0.1, 0.0]
    # lists: mean(.9, .5) = .7 and mean(.1, .0) = .05 -> arp .375
    # oracle: mean(.5, .1) = .3 and mean(.5, .0) = .25 -> arp .275; excess .1
    got = excess_arp_at_k([[0, 1], [2, 3]], [[1, 2], [1, 3]], pop, k=2)
    assert got == pytest.approx(0.1)
    assert excess_arp_at_k([[1, 2]], [[1, 2]], pop, k=2) == 0.0


def test_user_groups_by_head_share_of_the_profile():
    # 5 items, counts: item 0: 3 users, item 1: 2, items 2-4: 1 -> head = ceil(5/5) = {0}
    train = [[0, 1], [0, 2], [0, 1], [3], [4, 2]]
    # head shares .5, .5, .5, 0, 0; with U = 5, round(.2 * 5) = 1 niche, 1 blockbuster:
    # niche = lowest share, lowest index: user 3; blockbuster = highest, highest index: user 2
    assert user_groups(train, n_items=5).tolist() == [1, 1, 2, 0, 1]
    assert USER_GROUPS == ("niche", "diverse", "blockbuster")


def test_delta_gap_per_group():
    # 2 users; pop = counts / 2: item0 .5, item1 .5, item2 1.0, item3 0
    train = [[0, 2], [1, 2]]
    groups = [0, 2]
    # user 0 (niche): profile (.5 + 1)/2 = .75, list {3}: 0 -> (0 - .75)/.75 = -1
    # user 1 (blockbuster): profile .75, list {0}: .5 -> (.5 - .75)/.75 = -1/3
    r = delta_gap_at_k([[3], [0]], train, groups, k=1, n_items=4)
    assert r["niche"] == pytest.approx(-1.0)
    assert r["blockbuster"] == pytest.approx(-1 / 3)
    assert math.isnan(r["diverse"])       # no user in the group
    with pytest.raises(ValueError, match="groups"):
        delta_gap_at_k([[3], [0]], train, [0, 1, 2], k=1, n_items=4)


def test_distinct_lists_counts_sets():
    assert distinct_lists_at_k([[0, 1], [1, 0], [0, 2], [2, 0]], k=2) == 0.5
    assert distinct_lists_at_k([[0, 1, 5], [1, 0, 6]], k=2) == 0.5   # only the first k count
    assert distinct_lists_at_k([[0, 1, 5], [1, 0, 6]], k=3) == 1.0


def test_merit_exposure_top_decile():
    # 20 items -> decile of 2: items 7 and 3 (relevance 9 and 8; total 9+8+18 = 35)
    rel = np.ones(20)
    rel[7], rel[3] = 9.0, 8.0
    # 3 lists of 2: slots on {3, 7}: 3 of 6
    exp, share = merit_exposure_at_k([[7, 0], [3, 7], [1, 2]], rel, k=2)
    assert exp == 0.5
    assert share == pytest.approx(17 / 35)
    with pytest.raises(ValueError, match="relevance"):
        merit_exposure_at_k([[0]], [-1.0, 1.0], k=1)


def test_truth_metrics_keys_with_and_without_oracle():
    t = _Truth()
    train = [[1], [0, 3], []]
    top = np.array([[0, 2], [1, 2], [3, 4]])
    oracle = oracle_topk(t, train, k=2, n_items=5)
    rel = t.prob().sum(axis=0)
    groups = user_groups(train, n_items=5)
    full = truth_metrics(top, train, oracle, rel, groups, k=2, n_items=5)
    assert set(full) == {"excess_arp@2", "delta_gap@2:niche", "delta_gap@2:diverse",
                         "delta_gap@2:blockbuster", "distinct_lists@2", "merit_exposure@2",
                         "merit_relevance"}
    assert full["distinct_lists@2"] == 1.0
    real = truth_metrics(top, train, None, None, groups, k=2, n_items=5)
    assert set(real) == {"delta_gap@2:niche", "delta_gap@2:diverse", "delta_gap@2:blockbuster",
                         "distinct_lists@2"}
