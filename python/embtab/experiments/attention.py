"""Limited attention for the experiments: the reranked lists and the consumption measure.

:func:`attention_lists` is the limited-attention reranking of a model's candidates (the
counterpart of :func:`embtab.experiments.calibration.calibrated_lists`), and
:func:`consumed_utility` is ``consumed_utility@k`` against a truth or held-out items
(docs/metrics.md, "Consumed utility under limited attention"). E6
(:mod:`embtab.experiments.personas`) and the feedback loop use both.
"""

from __future__ import annotations

import numpy as np

from embtab import metrics, rerank
from embtab._research import K
from embtab.data import Interactions
from embtab.experiments.calibration import minmax, user_mix
from embtab.experiments.feedback import accept_probability
from embtab.train import drop_excluded

__all__ = ["attention_lists", "consumed_utility"]


def attention_lists(scores: np.ndarray, train: Interactions, item_dist: np.ndarray,
                    candidates: int, budget: int, k: int = K, *, users=None) -> np.ndarray:
    """Limited-attention reranking of the top-``candidates`` items by score, [n, k] item ids.

    ``scores`` [n, I] are the users' masked scores (rows = ``users``, default all users of
    ``train``). Candidates are the top-C by score, their scores min-max scaled per user (as
    E3) to marginal consumption probabilities s; the intents are the categories of
    ``item_dist``, weighted by the user's training category mix, and
    ``rel_g = min(1, s · w(i, g) / π_g)`` (:func:`embtab.rerank.intent_relevance`); the lists
    maximise expected consumption with budget ``budget`` greedily
    (:func:`embtab.rerank.limited_attention`). A user without a category mix gets uniform
    intent weights. Items scored ``-inf`` are never listed (short lists padded with -1).
    """
    rows = np.arange(train.n_users) if users is None else np.asarray(users, dtype=np.int64)
    C = min(int(candidates), scores.shape[1])
    values, cand = rerank.topk(np.ascontiguousarray(scores, dtype=np.float32), C)
    scaled = minmax(values.astype(np.float64))
    target = user_mix(train, item_dist)[rows]
    empty = target.sum(axis=1) == 0
    target[empty] = 1.0 / target.shape[1]
    rel = rerank.intent_relevance(scaled, item_dist, target, cand)
    return drop_excluded(rerank.limited_attention(rel, k, int(budget), intent_weights=target,
                                                  candidates=cand), scores)


def consumed_utility(top: np.ndarray, budget: int, *, truth=None,
                     test: Interactions | None = None, k: int = K) -> float:
    """``consumed_utility@k`` with budget ``budget`` of lists ``top`` [U, >=k] (docs/metrics.md).

    With a ``truth`` whose preference is a factor mix (``user_factors`` θ [U, r],
    ``factor_item_prob`` φ [r, I], generator v2), the intents are the factors, weighted by θ,
    and the per-rank consumption probability in intent z is
    :func:`embtab.experiments.feedback.accept_probability` of φ_z (reference: φ_z's k-th
    largest item probability). Another truth: one intent, ``accept_probability`` of p(i|u)
    with the user's k-th largest p as reference. Without a truth: the held-out ``test`` items
    are the relevant ones (:func:`embtab.metrics.consumed_utility_at_k`). A -1 slot (a short
    list's padding) consumes nothing.
    """
    top = np.asarray(top, dtype=np.int64)[:, :k]
    U = top.shape[0]
    if truth is not None and U != truth.n_users:
        raise ValueError(f"top has {U} rows; the truth has {truth.n_users} users (row u is "
                         "user u)")
    if truth is None:
        if test is None:
            raise ValueError("consumed_utility needs a truth or the held-out test items")
        return metrics.consumed_utility_at_k(top, test, budget, k)
    real = top >= 0  # -1 pads a short list: nothing there to consume
    if hasattr(truth, "user_factors") and hasattr(truth, "factor_item_prob"):
        phi = np.asarray(truth.factor_item_prob, dtype=np.float64)
        theta = np.asarray(truth.user_factors, dtype=np.float64)
        kk = min(k, phi.shape[1])
        ref = -np.partition(-phi, kk - 1, axis=1)[:, kk - 1]                 # [Z]
        acc = np.stack([accept_probability(phi[z][top], np.full(U, ref[z])) * real
                        for z in range(phi.shape[0])], axis=1)               # [U, Z, k]
        return float(rerank.expected_consumption(acc, budget, theta).mean())
    out = np.empty(U)
    for s in range(0, U, 1024):
        rows = np.arange(s, min(s + 1024, U))
        p = truth.prob(rows)
        kk = min(k, p.shape[1])
        ref = -np.partition(-p, kk - 1, axis=1)[:, kk - 1]
        acc = accept_probability(np.take_along_axis(p, top[rows], axis=1), ref) * real[rows]
        out[rows] = rerank.expected_consumption(acc, budget)
    return float(out.mean())
