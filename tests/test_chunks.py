"""The loops that score users against the whole catalogue bound one chunk's array
(``embtab._checks.CHUNK_ELEMENTS``): a 400,000-item catalogue made a 1,024-user chunk of
float64 3 GiB (a review ran out of memory). The results do not depend on the chunk."""

from __future__ import annotations

import numpy as np

import embtab._checks as checks
from embtab import metrics
from embtab.experiments.feedback import matched_pairs
from embtab.experiments.truth import total_relevance


class _Truth:
    """p(i|u) of a fixed random matrix, recording how many users each call scores."""

    def __init__(self, U=40, I=30, seed=0):
        p = np.random.default_rng(seed).random((U, I))
        self.p = p / p.sum(1, keepdims=True)
        self.n_users, self.n_items = U, I
        self.calls = []

    def prob(self, users=None):
        users = np.arange(self.n_users) if users is None else np.asarray(users)
        self.calls.append(len(users))
        return self.p[users]


def test_chunks_shrink_for_wide_catalogues_and_change_no_result(monkeypatch):
    truth = _Truth()
    train = [list(range(u % 5)) for u in range(truth.n_users)]
    ref = (metrics.oracle_topk(truth, train, k=5, n_items=truth.n_items),
           total_relevance(truth), matched_pairs(truth))
    assert max(truth.calls) == truth.n_users          # one chunk of every user
    monkeypatch.setattr(checks, "CHUNK_ELEMENTS", 4 * truth.n_items)
    truth.calls.clear()
    got = (metrics.oracle_topk(truth, train, k=5, n_items=truth.n_items),
           total_relevance(truth), matched_pairs(truth))
    assert max(truth.calls) <= 4 and len(truth.calls) > 3
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12)
    np.testing.assert_array_equal(got[2], ref[2])
    assert checks.chunk_rows(1024, 10**9) == 1 and checks.chunk_rows(3, 1) == 3
