"""Experiment E5: the feedback loop (recommend → users accept → retrain), arm by arm.

The implementation is :mod:`embtab.experiments.feedback`; this module keeps the import path
``embtab.feedback`` and re-exports its public names.

The model's recommendations become the next round's training data (Chaney et al., RecSys
2018; Mansoury et al., CIKM 2020). :func:`run_feedback` simulates that loop:

* **Round 0** is the organic data: every interaction of the data set (for synthetic data, the
  generator's draws from the true preference p(i|u)). Each arm starts from a copy of it.
* **Rounds t = 1..T**: each arm (1) trains on its own current data (MF arms warm-start: round
  1 trains ``epochs_first`` epochs from scratch, later rounds continue the same model and Adam
  state for ``epochs_per_round`` epochs over the grown data), (2) recommends top-k to every
  user, excluding the items the user has already consumed, (3) user u accepts the item at rank
  r (1-based) independently with probability

      a(u, i, r) = min(1, p(i|u) / p_u^(k)) · 1 / log2(r + 1)

  where p(i|u) is the true preference and p_u^(k) the user's k-th largest true preference over
  the whole catalogue (so an item as good as the user's own top-k is accepted for sure at rank
  1; the factor 1/log2(r+1) is the DCG position bias), and (4) the accepted pairs are appended
  to the arm's data. Acceptance uses common random numbers: one seeded uniform [U, k] draw per
  (seed, round) shared by all arms.

**Arms** (same data, same seeds): ``hashed-d8`` (item table hashed with m/n = 1/4, d = 8),
``cuckoo-d64`` (collisionless, d = 64), ``cuckoo-d64+cal`` (the d = 64 model's scores reranked
by :func:`embtab.rerank.calibrated`, λ = 0.5, α = 0.01, top-100 candidates min-max scaled, the
target being the user's *current* training genre mix, as in E3), ``oracle`` (top-k of the true
p(i|u)) and ``random`` (uniform over unconsumed items). The control ``cuckoo-d64-nofb`` is the
d = 64 model *without feedback*: it masks what its users consumed (so it sees the same depletion
of each user's best items) but keeps training on the organic data only, on the same epoch
schedule. cuckoo-d64 minus cuckoo-d64-nofb is the effect of the loop itself.

**Metrics** per (round, arm), docs/metrics.md definitions at k = 10:

* ``arp@10``, ``gini@10``, ``coverage@10``, ``tail_share@10`` of the round's lists, with pop(i)
  and the head taken from the organic (round-0) data for every arm and round, so a change is a
  shift of the lists, not of the yardstick; ``arp_current@10`` uses pop(i) of the arm's current
  training data instead (Mansoury's view: popularity as the model sees it);
* ``accepted``: accepted items per user this round; ``utility``: mean over users of the sum of
  p(i|u) over the items they accepted this round; ``utility_ratio`` = utility / the oracle arm's
  utility in the same round (the oracle's is 1 by construction);
* ``jaccard``: mean user-user Jaccard similarity |C_u ∩ C_v| / |C_u ∪ C_v| of the consumed sets
  (organic + accepted so far) after the round, estimated on a seeded sample of ``jaccard_pairs``
  distinct user pairs (the same pairs for every arm and round); ``jaccard_loop`` the same on the
  items accepted in the loop only (pairs where both are empty count as 0);
* ``drift``: mean over users of KL(p_0(·|u) ‖ (1−α) p_t(·|u) + α p_0(·|u)), α = 0.01, between the
  genre mix of the user's organic history p_0 and of everything consumed so far p_t (genre
  weights split evenly over an item's genres); ``drift_minority`` the same over the
  minority-interest users, those whose second genre holds ≥ 25% of their organic genre mix.

Round 0 rows carry only the state metrics (``jaccard``, ``drift``: the organic data); the list
metrics are ``null`` there.

**Real data** (``movielens:PATH`` or any spec without a planted truth): the ground truth is a
model fitted on the full data, a d = 32 cuckoo MF with BPR (``truth_epochs`` epochs), with
p(i|u) = softmax over items of its scores. Caveat: that "truth" is itself a popularity-biased
MF model, so it favours what MF arms recommend anyway (the loop's measured harm is a lower
bound) and the oracle ranks by the fitted model, not by real users.

Example::

    >>> from embtab.feedback import run_feedback
    >>> res = run_feedback("synthetic:n_users=40,n_items=60,interactions_per_user=6", rounds=2,
    ...                    arms=("oracle", "random"), progress=False)
    >>> sorted({(r["round"], r["arm"]) for r in res["rows"]})[:3]
    [(0, 'oracle'), (0, 'random'), (1, 'oracle')]
"""

from embtab.experiments.feedback import (
    ARMS,
    DEFAULT_DATASET,
    METRICS,
    MINORITY,
    FeedbackLoop,
    ModelTruth,
    accept_probability,
    feedback_table,
    feedback_text,
    plot_feedback,
    render_section,
    run_feedback,
)

__all__ = ["ARMS", "DEFAULT_DATASET", "METRICS", "MINORITY", "FeedbackLoop", "ModelTruth",
           "accept_probability", "feedback_table", "feedback_text", "plot_feedback",
           "render_section", "run_feedback"]
