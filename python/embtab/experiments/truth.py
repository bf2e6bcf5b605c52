"""What an experiment needs to measure its lists against the truth (docs/experiments.md).

:class:`TruthReference` holds, for one train split, the oracle's lists (top-10 by true p(i|u),
training items masked), each item's total true relevance Σ_u p(i|u) and the users' popularity
groups, and returns :func:`embtab.metrics.truth_metrics` for any lists of that split. Data
without a planted truth (real data) gets the ΔGAP and distinct-list keys only.
"""

from __future__ import annotations

import numpy as np

from embtab import metrics
from embtab._checks import check_int, chunk_rows
from embtab._research import K
from embtab.data import Interactions

__all__ = ["TruthReference", "total_relevance"]


def total_relevance(truth, chunk: int = 1024) -> np.ndarray:
    """Σ_u p(i|u) per item, float64 [I], summed ``chunk`` (an int >= 1) users at a time."""
    chunk = chunk_rows(check_int(chunk, "chunk", min=1), truth.n_items)
    out = np.zeros(truth.n_items)
    for s in range(0, truth.n_users, chunk):
        out += truth.prob(np.arange(s, min(s + chunk, truth.n_users))).sum(axis=0)
    return out


class TruthReference:
    """The oracle, relevance and user groups of one train split.

    Parameters
    ----------
    data : Interactions
        The full data set (its ``truth`` may be None).
    train : Interactions
        The training split the lists were made from.
    relevance : ndarray [I], optional
        :func:`total_relevance` of ``data.truth`` when already computed (it does not depend on
        the split).
    """

    def __init__(self, data: Interactions, train: Interactions,
                 relevance: np.ndarray | None = None):
        self.train = train
        truth = data.truth
        self.oracle = metrics.oracle_topk(truth, train, K) if truth is not None else None
        if truth is not None and relevance is None:
            relevance = total_relevance(truth)
        self.relevance = relevance if truth is not None else None
        self.groups = metrics.user_groups(train)

    def metrics(self, top: np.ndarray) -> dict:
        """:func:`embtab.metrics.truth_metrics` of the lists ``top`` [U, >=10]."""
        return metrics.truth_metrics(top, self.train, self.oracle, self.relevance, self.groups,
                                     k=K)
