"""Experiment E5: the feedback loop (recommend → users accept → retrain), with controls.

The model's recommendations become the next round's training data (Chaney et al., RecSys
2018; Mansoury et al., CIKM 2020). :func:`run_feedback` simulates that loop for several
**arms** (recommender systems) and **drift rates** η, per seed, and measures whether it
homogenises what users consume *relative to the ideal system* (the oracle), as Chaney et al. do.

**Round 0** is the organic data: every interaction of the data set (for synthetic data, the
generator's draws from the true preference). Every arm starts from a copy of it and of the
truth. **Each round t = 1..T**, for every arm in order:

1. *train*: an MF arm trains on its current data (warm start: ``epochs_first`` epochs from
   scratch in round 1, then ``epochs_per_round`` more per round on the grown data, same tables
   and optimizer state, BPR with Adam as :mod:`embtab.train`; ``train_overrides`` may set
   only the fields of :data:`TRAIN_OVERRIDES`, e.g. ``loss="softmax"`` or
   ``optimizer="adagrad"``, and a training that diverges raises ``ValueError``);
2. *recommend* top-k to every user, masking what the user consumed and what is in the arm's
   training data, optionally reranked (:data:`RERANKERS`);
3. *accept*: user u accepts the item at rank r (1-based) with probability

       a(u, i, r) = min(1, p_t(i|u) / p_t,u^(k)) · 1 / log2(r + 1)

   p_t the arm's *current* true preference, p_t,u^(k) the user's k-th largest p_t over the
   catalogue; common random numbers: one seeded uniform [U, k] draw per (seed, round), shared
   by every arm and η;
4. *log*: the accepted pairs join the arm's consumed set and, for a ``feedback`` arm, its
   training data (see the controls below);
5. *drift*: the arm's users' preferences move toward what they accepted (rate η, below).

**Controls that isolate the loop** (each the base arm's model with one thing changed):

* ``frozen`` (data ``"frozen"``): trained **once**, in round 1, on the organic data for
  E_T = ``epochs_first`` + (T − 1) · ``epochs_per_round`` epochs (the epochs a feedback arm has
  had by round T), then never retrained; it recommends every round with what its users consumed
  masked. Feedback arm − frozen = the loop plus retraining, with no extra-fitting advantage for
  either side at round T.
* ``exogenous`` (data ``"exogenous"``, ``match`` the base arm): trained on the feedback arm's
  schedule, but each round every user u gets n_u new training interactions, n_u = the number
  of items u accepted from the *matched* arm in the same round, drawn without replacement from
  u's current true preference p_t(·|u) (over items not yet in the arm's data or consumed;
  Gumbel top-n_u of log p_t). Its users still accept from its lists (that is what the metrics
  measure); those acceptances do not enter its data. Feedback arm − exogenous = training on
  the system's own outcomes versus on the same volume of data from the truth.

**Preference drift** (:class:`DriftingTruth`). Each arm holds its own copy of the truth; after
round t, a user u who accepted the items A_u moves toward them with rate η:

* mixture truths (the v2 generator's :class:`~embtab.data.LatentTruth`, p = θ φ, and
  :class:`~embtab.data.GroundTruth`, θ = the genre mix): θ_u ← (1 − η) θ_u + η · ψ̄_u,
  then θ_u ← θ_u / Σ_k θ_u[k], where ψ̄_u is the mean over i ∈ A_u of ψ_i = φ[:, i] / Σ_k
  φ[k, i], the factor profile of item i. θ_u stays on the simplex, so p_t(·|u) = θ_u φ stays
  a distribution and the rank of the truth does not change; a user may move toward factors they
  had no weight on;
* the fitted softmax truth of real data (:class:`~embtab.train.ModelTruth`,
  p(·|u) = softmax(e_u · E^T)): e_u ← (1 − η) e_u + η · ē_u, ē_u the mean vector of A_u
  (the softmax renormalises).

Users who accepted nothing do not move; η = 0 leaves every preference bit-identical (no update
runs). The oracle, acceptance, utility and exogenous draws all use the current p_t.

**Arms** are data (:class:`Arm`: ``dim``, ``table``, ``rerank``, ``personas``, ``data``). The
design (:data:`ARMS`) is one factor at a time around the base arm ``cuckoo-d64`` plus two
interactions (a full 2 × 2 × 3 × 2 factorial would be 24 MF arms per seed and η):
``cuckoo-d8`` (low d), ``hashed-d64`` (the item table hashed into as many bytes as the cuckoo
table at the same d: only collisions change), ``cuckoo-d64+steck`` (Steck's calibrated rerank,
λ = 0.5, as E3), ``cuckoo-d64+la`` (the limited-attention rerank; both rerankers take the
items' genres as categories, or on data without genres, as E3, head / mid / tail popularity
bins of the arm's current training counts: :data:`RERANKERS`), ``cuckoo-d64-p3`` (three AMP-CF persona
vectors per user, :mod:`embtab.train`, item dimension unchanged, so the user table has three
times the bytes), the interactions ``hashed-d8`` (low d × hashing, equal bytes at d = 8) and
``cuckoo-d8+steck`` (low d × calibration); the controls ``cuckoo-d64-frozen`` and
``cuckoo-d64-exo``; the references ``oracle`` (the ideal system: top-k of the current p_t) and
``random``.

**Metrics** per (η, arm, round, seed), k = 10:

* ``jaccard``: mean Jaccard |C_u ∩ C_v| / |C_u ∪ C_v| of the items consumed *in the loop*
  (rounds 1..t) over **matched pairs** (:func:`matched_pairs`: each user paired with the user
  whose round-0 true preference p_0(·|u) is most similar by cosine, ties by lower index;
  duplicate pairs once; the same pairs for every arm, round and η); a pair with both sets
  empty counts 0. ``homogenisation`` = jaccard − the oracle's jaccard in the same (η, round,
  seed): > 0 means the arm makes like-minded users consume more alike than the ideal system
  does (Chaney et al.'s yardstick);
* ``utility``: mean over users of Σ_{i accepted in round t} p_t(i|u); ``utility_per_item``: mean
  p_t(i|u) over the round's accepted items; ``utility_cum``: mean over users of the utility
  summed over rounds 1..t; ``utility_ratio`` and ``utility_cum_ratio``: the same divided by the
  oracle's; ``utility_gini``: :func:`embtab.metrics.gini` of the users' cumulative utility;
* ``drift``: mean over users of KL(p_0 ‖ (1 − α) p_t + α p_0), α = 0.01, from the genre mix of
  the user's organic history to that of everything consumed so far; ``drift:<group>`` the same
  over the users of each :func:`embtab.metrics.user_groups` group of the organic data
  (``niche``, ``diverse``, ``blockbuster``); ``pref_shift``: mean over users of the total
  variation ½ Σ_i |p_t(i|u) − p_0(i|u)| (0 while η = 0);
* list metrics (rounds ≥ 1): ``arp@10`` (pop(i) of the organic data), ``gini@10``,
  ``coverage@10``; ``accepted``: accepted items per user this round; ``n_interactions``: the
  arm's training data.

The results add ``summary`` (per η, arm and round, every metric's mean, sd and Student-t 95%
interval over seeds, :mod:`embtab.experiments.intervals`) and ``contrasts`` (per η, each arm
minus the base arm at round T, paired by seed, and each arm at the largest η minus at η = 0).
The report states a direction only when an interval excludes 0.

**Real data** (``movielens:PATH`` or any spec without a planted truth): the truth is a model
fitted on the full data (:class:`~embtab.train.ModelTruth`, a d = 32 cuckoo MF with BPR,
``truth_epochs`` epochs, p(i|u) = softmax of its scores). Caveat: that "truth" is itself a
popularity-biased MF model, so it favours what MF arms recommend anyway, and the oracle ranks
by the fitted model, not by real users.

Example::

    >>> from embtab.feedback import run_feedback
    >>> res = run_feedback("synthetic:n_users=40,n_items=60,interactions_per_user=6", rounds=2,
    ...                    arms=("oracle", "random"), etas=(0.0,), progress=False)
    >>> sorted({(r["round"], r["arm"]) for r in res["rows"]})[:3]
    [(0, 'oracle'), (0, 'random'), (1, 'oracle')]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from embtab import metrics, rerank
from embtab._checks import check_int, check_seed, chunk_rows
from embtab._research import ALPHA, K, category_mix, topk_indices
from embtab.data import GroundTruth, Interactions, LatentTruth, Truth, load_dataset
from embtab.experiments.calibration import calibrated_lists, categories, minmax, user_mix
from embtab.experiments.intervals import ci_text, direction_sentence, interval, summary_with_intervals
from embtab.experiments.plots import num, pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.session import (
    check_candidates,
    check_enough_items,
    overrides_of,
    real_sweep,
    seed_list,
)
from embtab.rerank import smoothed_kl
from embtab.train import (
    ModelTruth,
    TrainConfig,
    bpr_loss,
    build_model,
    drop_excluded,
    score_matrix,
    softmax_loss,
    table_bytes,
)

__all__ = ["ARMS", "BASE_ARM", "DEFAULT_DATASET", "DEFAULT_ETAS", "METRICS", "QUICK",
           "RERANKERS", "TRAIN_OVERRIDES", "Arm", "DriftingTruth", "FeedbackLoop", "ModelTruth",
           "accept_probability", "check_dataset", "check_overrides", "contrast_table", "contrasts", "equal_bytes_rows_per_id",
           "feedback_table",
           "feedback_text", "matched_pairs", "plot", "plot_feedback", "render_section",
           "run_feedback"]

DEFAULT_DATASET = "synthetic:n_users=1000,n_items=1500,interactions_per_user=20,rank=16"

#: What ``quick=True`` changes: a smaller data set (when the spec is ``"synthetic"``), rounds
#: and epochs.
QUICK = {"dataset": "synthetic:n_users=300,n_items=450,interactions_per_user=15,rank=8",
         "rounds": 5, "epochs_first": 5, "epochs_per_round": 1}

#: The drift rates of a default run: none, and a strong one.
DEFAULT_ETAS = (0.0, 0.1)

#: λ of Steck's calibrated rerank (E3's setting).
STECK_LAMBDA = 0.5

#: Consumption budget c of the limited-attention rerank.
LA_BUDGET = 3


@dataclass(frozen=True)
class Arm:
    """One recommender system of the loop, as data.

    Attributes
    ----------
    name : str
    kind : {"mf", "oracle", "random"}
        ``oracle``: top-k of the current true preference (the ideal system); ``random``:
        uniform over unconsumed items.
    dim : int
        Embedding dimension (MF arms).
    table : {"cuckoo", "hashed"}
        ``hashed``: the item table hashed into as many bytes as the cuckoo table of the same d
        (:func:`equal_bytes_rows_per_id`); users stay collisionless.
    rerank : str
        A key of :data:`RERANKERS` (``"none"``, ``"steck"``, ``"la"``).
    personas : int
        Persona vectors per user (``TrainConfig.personas``; 1 = the single-vector model).
    data : {"feedback", "frozen", "exogenous"}
        What the arm trains on (module docstring).
    match : str
        ``exogenous`` arms: the arm whose per-user acceptance counts set the volume.
    """

    name: str
    kind: str = "mf"
    dim: int = 64
    table: str = "cuckoo"
    rerank: str = "none"
    personas: int = 1
    data: str = "feedback"
    match: str = ""

    def __post_init__(self):
        if self.kind not in ("mf", "oracle", "random"):
            raise ValueError(f"Arm.kind must be 'mf', 'oracle' or 'random'; got {self.kind!r}")
        if self.data not in ("feedback", "frozen", "exogenous"):
            raise ValueError(f"Arm.data must be 'feedback', 'frozen' or 'exogenous'; got "
                             f"{self.data!r}")
        if self.rerank not in RERANKERS:
            raise ValueError(f"Arm.rerank must be one of {tuple(RERANKERS)}; got "
                             f"{self.rerank!r}")
        if self.data == "exogenous" and not self.match:
            raise ValueError(f"Arm {self.name!r}: an exogenous arm needs match=<arm name>")


def _steck(scores, data, k, candidates):
    return calibrated_lists(scores, data, categories(data)[0], candidates, [STECK_LAMBDA],
                            k)[STECK_LAMBDA]


def _limited_attention(scores, data, k, candidates):
    C = min(int(candidates), scores.shape[1])
    values, cand = rerank.topk(np.ascontiguousarray(scores, dtype=np.float32), C)
    item_dist = categories(data)[0]
    target = user_mix(data, item_dist)
    rel = rerank.intent_relevance(minmax(values.astype(np.float64)), item_dist, target, cand)
    return drop_excluded(rerank.limited_attention(rel, k, LA_BUDGET, intent_weights=target,
                                                  candidates=cand), scores)


#: reranker name -> ``f(masked scores [U, I], current data, k, candidates) -> lists [U, k]``
#: (None: the model's own top-k). Both rerank the top-``candidates`` items by score, min-max
#: scaled per user, with the user's current training genre mix as the target; on a data set
#: without genres, as E3 (:func:`embtab.experiments.calibration.categories`), the categories
#: are head / mid / tail popularity bins of the arm's current training counts
#: (:func:`embtab.rerank.popularity_bins`), never one "none" category that would leave the
#: base arm's lists unchanged. ``steck``:
#: :func:`embtab.rerank.calibrated` at λ = 0.5 (E3). ``la``: :func:`embtab.rerank.
#: limited_attention` with budget c = 3, intents = genres weighted by that mix, relevance from
#: :func:`embtab.rerank.intent_relevance` (maximises expected consumption when a user
#: consumes at most c items of the list).
RERANKERS = {"none": None, "steck": _steck, "la": _limited_attention}

BASE_ARM = "cuckoo-d64"

#: The default design: one factor at a time around BASE_ARM, two interactions, two controls,
#: two references (module docstring).
ARMS = {a.name: a for a in (
    Arm(BASE_ARM),
    Arm("cuckoo-d8", dim=8),
    Arm("hashed-d64", table="hashed"),
    Arm("cuckoo-d64+steck", rerank="steck"),
    Arm("cuckoo-d64+la", rerank="la"),
    Arm("cuckoo-d64-p3", personas=3),
    Arm("hashed-d8", dim=8, table="hashed"),
    Arm("cuckoo-d8+steck", dim=8, rerank="steck"),
    Arm("cuckoo-d64-frozen", data="frozen"),
    Arm("cuckoo-d64-exo", data="exogenous", match=BASE_ARM),
    Arm("oracle", kind="oracle"),
    Arm("random", kind="random"),
)}

#: The factor each non-base arm changes, for the report.
_CHANGES = {"cuckoo-d8": "low d (8)", "hashed-d64": "hashed items, equal bytes",
            "cuckoo-d64+steck": "Steck's calibration",
            "cuckoo-d64+la": "limited-attention reranking",
            "cuckoo-d64-p3": "three personas per user", "hashed-d8": "low d × hashed",
            "cuckoo-d8+steck": "low d × calibration", "cuckoo-d64-frozen": "frozen (no loop)",
            "cuckoo-d64-exo": "exogenous data (no loop)"}

GROUPS = metrics.USER_GROUPS
METRICS = ("jaccard", "homogenisation", "utility", "utility_per_item", "utility_cum",
           "utility_ratio", "utility_cum_ratio", "utility_gini", "drift",
           *(f"drift:{g}" for g in GROUPS), "pref_shift", "arp@10", "gini@10", "coverage@10",
           "accepted")
#: The metrics compared between arms at round T.
CONTRAST_METRICS = ("homogenisation", "jaccard", "utility_cum_ratio", "utility_gini", "drift",
                    "pref_shift", "gini@10")


# mechanics //////////////////////////////////////////////////////////////////////////////////


def accept_probability(pref: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """a(u, i, r) = min(1, p(i|u) / p_u^(k)) / log2(r + 1) for preference rows [U, k] by rank.

    ``pref[u, r-1]`` is p(i|u) of the item at rank r, ``ref[u]`` the user's k-th largest true
    preference over the catalogue.
    """
    k = pref.shape[1]
    pos = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ref = np.broadcast_to(np.asarray(ref, np.float64)[:, None], pref.shape)
    # a user who likes fewer than k items (ref = 0) accepts any item they like at all
    ratio = np.divide(pref, ref, out=(pref > 0).astype(np.float64), where=ref > 0)
    return np.minimum(1.0, ratio) * pos[None, :]


class DriftingTruth(Truth):
    """One arm's current true preference p_t(i|u), starting from a data set's truth.

    :meth:`drift` moves the users who accepted items toward them (module docstring). Until the
    first move with η > 0, ``prob`` and ``pair_prob`` return the starting truth's own values
    (bit for bit).

    Parameters
    ----------
    truth : LatentTruth, GroundTruth or ModelTruth
        Another :class:`~embtab.data.Truth` works with η = 0 only.
    """

    def __init__(self, truth: Truth):
        self.start = truth
        self.moved = False
        self.form = None
        if isinstance(truth, LatentTruth):
            self.form, theta, self.phi = "mixture", truth.user_factors, truth.factor_item_prob
        elif isinstance(truth, GroundTruth):
            self.form, theta, self.phi = "mixture", truth.user_mix, truth.genre_item_prob
        elif isinstance(truth, ModelTruth):
            self.form = "softmax"
            theta, self.phi = truth.vectors
        if self.form is not None:
            self.theta = np.array(theta, dtype=np.float64, copy=True)
        if self.form == "mixture":
            col = self.phi.sum(axis=0, keepdims=True)
            self.profile = np.divide(self.phi, col, out=np.zeros_like(self.phi), where=col > 0)

    @property
    def n_users(self) -> int:
        return self.start.n_users

    @property
    def n_items(self) -> int:
        return self.start.n_items

    def prob(self, users=None) -> np.ndarray:
        """p_t(i|u) rows, float64 [len(users), I] (all users when ``None``)."""
        if not self.moved:
            return self.start.prob(users)
        th = self.theta if users is None else self.theta[np.asarray(users, np.int64)]
        if self.form == "mixture":
            return th @ self.phi
        s = th @ self.phi.T
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def pair_prob(self, users, items) -> np.ndarray:
        """p_t(i|u) for parallel arrays of users and items, float64 [n]."""
        if not self.moved:
            return self.start.pair_prob(users, items)
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        if self.form == "mixture":
            return np.einsum("nk,kn->n", self.theta[users], self.phi[:, items])
        out = np.empty(users.size)
        for s in range(0, users.size, 4096):
            u, i = users[s:s + 4096], items[s:s + 4096]
            out[s:s + 4096] = self.prob(u)[np.arange(u.size), i]
        return out

    def drift(self, users, items, eta: float) -> None:
        """Move each user of the pairs (``users``, ``items``) toward the items they accepted.

        θ_u ← normalise((1 − η) θ_u + η · mean_{i ∈ A_u} ψ_i) for a mixture truth,
        e_u ← (1 − η) e_u + η · mean_{i ∈ A_u} e_i for a softmax one. η = 0 changes nothing.
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1]; got {eta}")
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        if eta == 0.0 or users.size == 0:
            return
        if self.form is None:
            raise ValueError(f"eta > 0 needs a mixture or softmax truth; "
                             f"got {type(self.start).__name__}")
        target = self.profile[:, items].T if self.form == "mixture" else self.phi[items]
        r = self.theta.shape[1]
        sums = np.zeros((self.n_users, r))
        np.add.at(sums, users, target)
        n = np.bincount(users, minlength=self.n_users)
        who = n > 0
        mean_t = sums[who] / n[who, None]
        th = (1.0 - eta) * self.theta[who] + eta * mean_t
        if self.form == "mixture":
            th /= th.sum(axis=1, keepdims=True)
        self.theta[who] = th
        self.moved = True


def matched_pairs(truth: Truth, chunk: int = 1024) -> np.ndarray:
    """Users paired with their most similar user by true preference, int64 [n_pairs, 2].

    Each user u is paired with v ≠ u maximising the cosine similarity of p(·|u) and p(·|v)
    (ties by lower index); the pairs are unordered (low index first), each listed once, sorted.
    ``chunk`` (an int >= 1) users are scored at a time.
    """
    U = truth.n_users
    chunk = chunk_rows(check_int(chunk, "chunk", min=1), max(U, truth.n_items))
    if U < 2:
        return np.zeros((0, 2), dtype=np.int64)
    norms = np.empty(U)
    for s in range(0, U, chunk):
        norms[s:s + chunk] = np.linalg.norm(truth.prob(np.arange(s, min(s + chunk, U))), axis=1)
    best = np.empty(U, dtype=np.int64)
    for s in range(0, U, chunk):
        rows = np.arange(s, min(s + chunk, U))
        a = truth.prob(rows) / np.maximum(norms[rows], 1e-300)[:, None]
        sim = np.empty((rows.size, U))
        for t in range(0, U, chunk):
            cols = np.arange(t, min(t + chunk, U))
            b = truth.prob(cols) / np.maximum(norms[cols], 1e-300)[:, None]
            sim[:, cols] = a @ b.T
        sim[np.arange(rows.size), rows] = -np.inf
        best[rows] = np.argmax(sim, axis=1)            # first maximum: lowest index
    u = np.arange(U)
    pairs = np.stack([np.minimum(u, best), np.maximum(u, best)], axis=1)
    return np.unique(pairs, axis=0)


def _kth_largest(P: np.ndarray, k: int) -> np.ndarray:
    """Each row's k-th largest value (the acceptance reference p_u^(k)), [U]."""
    kth = min(k, P.shape[1]) - 1
    return -np.partition(-P, kth, axis=1)[:, kth]


def _jaccard(consumed: np.ndarray, pairs: np.ndarray) -> float:
    if not len(pairs):
        return float("nan")
    a, b = consumed[pairs[:, 0]], consumed[pairs[:, 1]]
    inter = (a & b).sum(axis=1)
    union = (a | b).sum(axis=1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 0.0).mean())


def _dense(data: Interactions) -> np.ndarray:
    m = np.zeros((data.n_users, data.n_items), dtype=bool)
    m[data.users, data.items] = True
    return m


def _with_pairs(data: Interactions, users, items) -> Interactions:
    return Interactions(name=data.name, user_ids=data.user_ids, item_ids=data.item_ids,
                        users=np.concatenate([data.users, users]),
                        items=np.concatenate([data.items, items]),
                        item_genres=data.item_genres, genre_names=data.genre_names,
                        truth=data.truth)


def equal_bytes_rows_per_id(data: Interactions, dim: int, seed: int = 0) -> float:
    """m/n of a hashed item table that takes the bytes of the cuckoo item table at ``dim``.

    The cuckoo table's bytes are its weights plus its ID map (:func:`embtab.train.table_bytes`,
    ``weights + index``); the hashed table, which has no ID map, gets m = bytes / (4 · dim)
    rows of float32.
    """
    cuckoo = build_model(data, TrainConfig(dim=dim, table="cuckoo", seed=seed))
    b = table_bytes(cuckoo.items)
    return max((b["weights"] + b["index"]) / (4.0 * dim), 1.0) / data.n_items


#: The :class:`~embtab.train.TrainConfig` fields E5 takes from ``train_overrides`` (for every MF
#: arm, and recorded in the results' ``config["train"]``).
TRAIN_OVERRIDES = ("loss", "optimizer", "lr", "l2", "batch_size", "init_std",
                   "persona_temperature")

#: Why E5 refuses an override of the other fields: the arms, the seeds and the warm-start
#: schedule set them.
_NOT_OVERRIDDEN = {
    **{f: "each arm sets it (pass an Arm for another design)"
       for f in ("dim", "table", "rows_per_id", "personas")},
    **{f: "the arms' tables are grow-on-demand cuckoo tables and equal-bytes hashed item "
          "tables (Arm.table), users collisionless"
       for f in ("hash_users", "on_full", "min_count", "admission_eps", "admission_delta",
                 "expire_after")},
    "seed": "the seeds argument sets it",
    "epochs": "the warm-start schedule sets it: pass epochs_first and epochs_per_round",
}


def _train_overrides(overrides, *, shared: bool = False) -> dict:
    """``overrides`` checked for E5: a dict of the :data:`TRAIN_OVERRIDES` fields.

    A field E5 does not take (the arms', the seeds', the schedule's) raises ``ValueError``
    naming it and its value, so no setting is recorded that was not used. ``shared``: the
    overrides are the runner's session's, shared by every experiment of a run, whose
    ``epochs`` is for the others: it is dropped (E5's schedule is ``epochs_first`` /
    ``epochs_per_round``). Values are checked by :class:`~embtab.train.TrainConfig`.
    """
    out = dict(overrides or {})
    if shared:
        out.pop("epochs", None)
    for key, value in out.items():
        if key in _NOT_OVERRIDDEN:
            raise ValueError(f"train_overrides {key}={value!r} is not used by E5 (feedback): "
                             f"{_NOT_OVERRIDDEN[key]}; E5 takes only {TRAIN_OVERRIDES}")
    TrainConfig(**out)      # TypeError for an unknown field, the field's own check otherwise
    return out


class _MFArm:
    """An MF model trained with BPR (or ``cfg.loss="softmax"``, :func:`embtab.train.fit`'s
    softmax likelihood), warm-started across rounds (same tables and optimizer state:
    ``cfg.optimizer``, Adam by default, or Adagrad).

    Like :func:`embtab.train.fit`, it seeds torch's **global** random generator
    (``torch.manual_seed(cfg.seed)``) once, when built; shuffling and negatives come from a
    local ``numpy.random.Generator``. A training whose epoch has a NaN or infinite mean loss
    raises ``ValueError`` ("training diverged"), as :func:`~embtab.train.fit` does.
    """

    def __init__(self, data: Interactions, cfg: TrainConfig, name: str = "mf"):
        self.cfg, self.name = cfg, name
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.model = build_model(data, cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.Adagrad
        self.opt = cls(params, lr=cfg.lr)
        self.trainings: list = []              # epochs of each call of train()

    def train(self, data: Interactions, epochs: int) -> None:
        self.trainings.append(int(epochs))
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._train(data, epochs)
        finally:
            torch.set_num_threads(saved)

    def _train(self, data, epochs):
        model, cfg, rng = self.model, self.cfg, self.rng
        raw_u = data.raw_users.view(np.int64)
        raw_i = data.raw_items.view(np.int64)
        catalogue = data.item_ids.view(np.int64)
        softmax = cfg.loss == "softmax"
        all_items = torch.from_numpy(catalogue)
        pos_index = torch.from_numpy(data.items)
        n, bs = data.n_interactions, cfg.batch_size
        model.train()
        try:
            for epoch in range(epochs):
                order = rng.permutation(n)
                if not softmax:
                    neg = rng.integers(0, catalogue.size, size=n)
                total = 0.0
                for b in range(0, n, bs):
                    idx = order[b:b + bs]
                    u = model.users(torch.from_numpy(raw_u[idx]))
                    if softmax:
                        loss = softmax_loss(model, u, model.items(all_items),
                                            pos_index[torch.from_numpy(idx)], cfg.l2)
                    else:
                        p = model.items(torch.from_numpy(raw_i[idx]))
                        q = model.items(torch.from_numpy(catalogue[neg[idx]]))
                        loss = bpr_loss(model, u, p, q, cfg.personas, cfg.l2)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    total += float(loss.detach()) * idx.size
                mean = total / max(n, 1)
                if not math.isfinite(mean):
                    raise ValueError(
                        f"training diverged: arm {self.name!r}, epoch {epoch + 1} of training "
                        f"{len(self.trainings)}, mean loss {mean} (lr={cfg.lr}, "
                        f"init_std={cfg.init_std}, optimizer={cfg.optimizer!r}); lower lr or "
                        f"init_std")
        finally:
            model.eval()


def _resolve_arms(arms) -> tuple:
    if len(arms) == 0:
        raise ValueError(f"arms must hold at least one arm of {tuple(ARMS)} (or an Arm), got "
                         f"{arms!r}")
    out = []
    for a in arms:
        if isinstance(a, Arm):
            out.append(a)
        elif a in ARMS:
            out.append(ARMS[a])
        else:
            raise ValueError(f"unknown arm {a!r}; choose from {tuple(ARMS)} or pass an Arm")
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"arms must have distinct names; got {names}")
    for i, a in enumerate(out):
        if a.data == "exogenous" and a.match not in names[:i]:
            raise ValueError(f"arm {a.name!r} matches {a.match!r}, which must be an earlier arm "
                             f"of the run; arms: {names}")
    return tuple(out)


class FeedbackLoop:
    """The state of one (seed, η) loop: per-arm data, consumed sets, preferences and models.

    ``round0_rows()`` gives the round-0 rows, ``step()`` runs one round for every arm and
    returns its rows. Attributes per arm name: ``data`` (:class:`Interactions`, the training
    data), ``consumed`` (bool [U, I]: organic + accepted), ``truths``
    (:class:`DriftingTruth`), ``models`` (the MF arms' trainers), ``last_accepted`` (int [U],
    the round's acceptances per user) and ``exo_added`` (int [U], an exogenous arm's new
    training interactions of the round).

    The constructor checks its arguments (as :func:`run_feedback` does), each error naming the
    argument and its value: ``rounds`` an int >= 1; ``k`` an int in [1, items of ``data``];
    ``candidates`` an int >= ``k``; ``seed`` a 64-bit seed; ``epochs_first`` and
    ``epochs_per_round`` ints >= 0; ``eta`` in [0, 1]; ``train_overrides`` only the fields of
    :data:`TRAIN_OVERRIDES`.
    """

    def __init__(self, data: Interactions, truth: Truth, *, arms=tuple(ARMS), seed: int = 0,
                 eta: float = 0.0, rounds: int = 10, k: int = K, epochs_first: int = 10,
                 epochs_per_round: int = 2, train_overrides: dict | None = None,
                 candidates: int = 100, pairs: np.ndarray | None = None):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1]; got {eta}")
        rounds = check_int(rounds, "rounds", min=1)
        k = check_int(k, "k", min=1)
        if k > data.n_items:
            raise ValueError(f"k must be at most the {data.n_items} items of data set "
                             f"{data.name!r} (every list holds k of them), got {k}")
        candidates = check_int(candidates, "candidates")
        if candidates < k:
            raise ValueError(f"candidates must be >= k = {k} (a reranked list holds k items "
                             f"taken from its candidates), got {candidates}")
        seed = check_seed(seed, "seed")
        epochs_first = check_int(epochs_first, "epochs_first", min=0)
        epochs_per_round = check_int(epochs_per_round, "epochs_per_round", min=0)
        overrides = _train_overrides(train_overrides)
        self.arms = _resolve_arms(arms)
        self.organic, self.truth = data, truth
        self.seed, self.eta, self.k, self.rounds = seed, float(eta), k, rounds
        self.candidates = candidates
        self.epochs_first, self.epochs_per_round = epochs_first, epochs_per_round
        #: epochs a feedback arm has had by round T: what the frozen arm trains once
        self.frozen_epochs = self.epochs_first + (self.rounds - 1) * self.epochs_per_round
        self.round = 0
        U = data.n_users
        self.w = data.genre_weights()
        self.organic_dense = _dense(data)
        self.pop0 = metrics.item_counts(data.user_items()) / U
        self.p0 = category_mix(self.organic_dense, self.w)
        self.groups = metrics.user_groups(data.user_items())
        self.pairs = matched_pairs(truth) if pairs is None else pairs
        self.P0 = truth.prob()                  # p_0 [U, I], shared while a truth is unmoved
        self.ref0 = _kth_largest(self.P0, self.k)
        self.consumed = {a.name: self.organic_dense.copy() for a in self.arms}
        self.data = {a.name: data for a in self.arms}
        self.truths = {a.name: DriftingTruth(truth) for a in self.arms}
        if eta > 0 and DriftingTruth(truth).form is None:
            raise ValueError(f"eta > 0 needs a mixture or softmax truth; got "
                             f"{type(truth).__name__}")
        self.utility_cum = {a.name: np.zeros(U) for a in self.arms}
        self.last_accepted: dict = {}
        self.exo_added: dict = {}
        self.rows_per_id: dict = {}
        self.models: dict = {}
        for a in self.arms:
            if a.kind != "mf":
                continue
            kw = {**overrides, "dim": a.dim, "table": a.table, "personas": a.personas,
                  "seed": self.seed}
            if a.table == "hashed":
                kw["rows_per_id"] = equal_bytes_rows_per_id(data, a.dim, self.seed)
                self.rows_per_id[a.name] = kw["rows_per_id"]
            self.models[a.name] = _MFArm(data, TrainConfig(**kw), a.name)

    # state metrics ---------------------------------------------------------------------------

    def state_row(self, arm: str) -> dict:
        c = self.consumed[arm]
        drift = smoothed_kl(self.p0, category_mix(c, self.w), ALPHA)
        has = self.p0.sum(axis=1) > 0
        out = {"jaccard": _jaccard(c & ~self.organic_dense, self.pairs),
               "drift": float(drift[has].mean()) if has.any() else float("nan")}
        for j, g in enumerate(GROUPS):
            ok = has & (self.groups == j)
            out[f"drift:{g}"] = float(drift[ok].mean()) if ok.any() else float("nan")
        t = self.truths[arm]
        if t.moved:
            out["pref_shift"] = float(0.5 * np.abs(t.prob() - self.P0).sum(axis=1).mean())
        else:
            out["pref_shift"] = 0.0
        util = self.utility_cum[arm]
        out["utility_cum"] = float(util.mean())
        out["utility_gini"] = metrics.gini(util) if util.sum() > 0 else float("nan")
        return out

    def round0_rows(self) -> list:
        rows = []
        for a in self.arms:
            row = {"eta": self.eta, "arm": a.name, "round": 0, "seed": self.seed,
                   "n_interactions": self.organic.n_interactions, "accepted": 0.0,
                   # no round yet: the per-round utilities are undefined (null in the JSON)
                   "utility": float("nan"), "utility_per_item": float("nan"),
                   **self.state_row(a.name)}
            rows.append(row)
        self._relative(rows)
        return rows

    # one round -------------------------------------------------------------------------------

    def _lists(self, a: Arm, mask: np.ndarray, P: np.ndarray) -> np.ndarray:
        data, k = self.data[a.name], self.k
        if a.kind == "random":
            rng = np.random.default_rng([self.seed, self.round, 11])
            scores = rng.random((data.n_users, data.n_items))
            scores[mask] = -np.inf
            return topk_indices(scores, k)
        if a.kind == "oracle":
            return topk_indices(np.where(mask, -np.inf, P), k)
        mf = self.models[a.name]
        if a.data == "frozen":
            if self.round == 1:
                mf.train(data, self.frozen_epochs)
        else:
            mf.train(data, self.epochs_first if self.round == 1 else self.epochs_per_round)
        scores = score_matrix(mf.model, data, exclude_train=False).numpy()
        scores[mask] = -np.inf
        rerank = RERANKERS[a.rerank]
        if rerank is None:
            return topk_indices(scores, k)
        return rerank(scores, data, k, self.candidates)

    def _exogenous(self, a: Arm, mask: np.ndarray, P: np.ndarray) -> tuple:
        """Per user n_u draws without replacement from p_t(·|u) outside ``mask``."""
        n = self.last_accepted[a.match]
        U, I = mask.shape
        rng = np.random.default_rng([self.seed, self.round, 5, int(self.eta * 1e6)])
        with np.errstate(divide="ignore"):
            keys = np.log(np.maximum(P, 0.0)) + rng.gumbel(size=(U, I))
        keys[mask] = -np.inf
        order = np.argsort(-keys, axis=1, kind="stable")
        avail = np.isfinite(keys).sum(axis=1)
        n = np.minimum(n, avail)
        take = np.arange(I)[None, :] < n[:, None]
        users = np.repeat(np.arange(U), n)
        return users, order[take], n

    def step(self) -> list:
        """Run round ``self.round + 1`` for every arm; returns one row per arm."""
        self.round += 1
        U = self.organic.n_users
        draws = np.random.default_rng([self.seed, self.round, 3]).random((U, self.k))
        rows = []
        for a in self.arms:
            data, truth = self.data[a.name], self.truths[a.name]
            mask = self.consumed[a.name] | _dense(data) if a.data != "feedback" \
                else self.consumed[a.name]
            P = truth.prob() if truth.moved else self.P0
            ref = _kth_largest(P, self.k) if truth.moved else self.ref0
            top = self._lists(a, mask, P)
            kk = top.shape[1]
            real = top >= 0  # a list is short (-1 padding) when a user has < k candidates
            pref = np.where(real, P[np.arange(U)[:, None], top], 0.0)
            # never accept padding, nor a masked item
            fresh = real & ~mask[np.arange(U)[:, None], top]
            acc = (draws[:, :kk] < accept_probability(pref, ref)) & fresh
            util = (pref * acc).sum(axis=1)
            self.utility_cum[a.name] += util
            n_acc = int(acc.sum())
            row = {"eta": self.eta, "arm": a.name, "round": self.round, "seed": self.seed,
                   "arp@10": metrics.arp_at_k(top, self.pop0, kk),
                   "gini@10": metrics.gini_at_k(top, data.n_items, kk),
                   "coverage@10": metrics.coverage_at_k(top, data.n_items, kk),
                   "accepted": n_acc / U, "utility": float(util.mean()),
                   "utility_per_item": float((pref * acc).sum() / n_acc) if n_acc
                   else float("nan")}
            au, ai = np.nonzero(acc)
            new_items = top[au, ai]
            self.last_accepted[a.name] = acc.sum(axis=1)
            self.consumed[a.name][au, new_items] = True
            if a.data == "feedback":
                self.data[a.name] = _with_pairs(data, au, new_items)
            elif a.data == "exogenous":
                eu, ei, n = self._exogenous(a, mask | self.consumed[a.name], P)
                self.exo_added[a.name] = n
                self.data[a.name] = _with_pairs(data, eu, ei)
            truth.drift(au, new_items, self.eta)
            row["n_interactions"] = self.data[a.name].n_interactions
            row.update(self.state_row(a.name))
            rows.append(row)
        self._relative(rows)
        return rows

    @staticmethod
    def _relative(rows: list) -> None:
        """Add the oracle-relative metrics to one round's rows (NaN without an oracle arm)."""
        ref = next((r for r in rows if r["arm"] == "oracle"), None)
        for r in rows:
            if ref is None:
                r["homogenisation"] = r["utility_ratio"] = r["utility_cum_ratio"] = float("nan")
                continue
            r["homogenisation"] = r["jaccard"] - ref["jaccard"]
            for m, name in (("utility", "utility_ratio"), ("utility_cum", "utility_cum_ratio")):
                v, base = r.get(m), ref.get(m)
                r[name] = v / base if v is not None and base else float("nan")


# the experiment /////////////////////////////////////////////////////////////////////////////


def _truth_of(data: Interactions, truth_epochs: int):
    if data.truth is not None:
        return data.truth, f"planted (generator's p(i|u), {type(data.truth).__name__})"
    return (ModelTruth(data, epochs=truth_epochs),
            f"model-fitted: softmax of a d=32 cuckoo MF, BPR {truth_epochs} epochs, full data")


def run_feedback(dataset: str | Interactions = DEFAULT_DATASET, seeds=5, *,
                 rounds: int | None = None, arms: Sequence = tuple(ARMS),
                 etas: Sequence[float] = DEFAULT_ETAS, epochs_first: int | None = None,
                 epochs_per_round: int | None = None, candidates: int = 100,
                 truth_epochs: int = 10, train_overrides: dict | None = None,
                 quick: bool = False, progress: bool = True, session=None) -> dict:
    """E5: the feedback loop for every η, seed and arm, ``rounds`` rounds; a results dict.

    Parameters
    ----------
    dataset : str or Interactions
        A spec (:func:`embtab.data.load_dataset`; ``"synthetic"`` means
        :data:`DEFAULT_DATASET`, 1,000 users × 1,500 items from generator v2, or with
        ``quick`` the smaller ``QUICK["dataset"]``) or a data set.
    seeds : int or sequence
        A count (0..N−1) or a list.
    rounds : int >= 1, optional
        10 (5 with ``quick``).
    arms : sequence of str or Arm
        Names of :data:`ARMS` or :class:`Arm` objects; an exogenous arm after the arm it
        matches. Homogenisation and utility ratios need the ``oracle`` arm.
    etas : sequence of float in [0, 1]
        Distinct drift rates; each gets its own loops (same seeds; the same random numbers for the
        acceptance draws, while an exogenous arm's draws are seeded with η as well, so its
        η-vs-0 contrast is paired by seed but does not share those draws).
    epochs_first, epochs_per_round : int >= 0, optional
        The warm-start schedule, 10 and 2 (5 and 1 with ``quick``); the frozen arm trains once
        for their total by round T.
    candidates : int >= k
        Candidates of the reranked arms.
    truth_epochs : int >= 1
        Epochs of the fitted truth on real data (checked whatever the data set).
    train_overrides : dict
        :class:`embtab.train.TrainConfig` fields for every MF arm, only those of
        :data:`TRAIN_OVERRIDES` (loss, optimizer, lr, l2, batch_size, init_std,
        persona_temperature); any other field raises ``ValueError`` naming it (the arms set
        d, table and personas, ``seeds`` the seed, ``epochs_first`` / ``epochs_per_round``
        the epochs). Without it, the ``session``'s overrides (the runner's, shared by the
        experiments of a run), whose ``epochs`` E5 leaves to the others and does not use.
    quick : bool
        :data:`QUICK`'s rounds, epochs and (for ``"synthetic"``) data set, unless given.
    session
        For the registry's interface: E5 loads its own data and takes only the session's
        training overrides.

    Returns
    -------
    dict
        ``experiment``, ``dataset``, ``config``, ``rows`` (one per η, seed, round 0..T, arm),
        ``summary`` and ``contrasts`` (docs/results-schema.md).
    """
    t0 = time.perf_counter()
    candidates = check_candidates(candidates)
    full = {"rounds": 10, "epochs_first": 10, "epochs_per_round": 2}
    pick = QUICK if quick else full
    rounds = pick["rounds"] if rounds is None else check_int(rounds, "rounds", min=1)
    epochs_first = pick["epochs_first"] if epochs_first is None \
        else check_int(epochs_first, "epochs_first", min=0)
    epochs_per_round = pick["epochs_per_round"] if epochs_per_round is None \
        else check_int(epochs_per_round, "epochs_per_round", min=0)
    etas = real_sweep(etas, "etas", low=0.0, high=1.0)
    truth_epochs = check_int(truth_epochs, "truth_epochs", min=1)
    shared = train_overrides is None and session is not None
    train_overrides = _train_overrides(overrides_of(train_overrides, session), shared=shared)
    if isinstance(dataset, str):
        spec = (QUICK["dataset"] if quick else DEFAULT_DATASET) if dataset == "synthetic" \
            else dataset
        data = None if spec.partition(":")[0] == "stream" else load_dataset(spec, seed=0)
    else:
        data, spec = dataset, dataset.name
    from embtab.data import StreamTruth

    if data is None or isinstance(data.truth, StreamTruth):   # before any work
        raise _stream_refused(spec)
    check_enough_items(data)
    arm_list = _resolve_arms(arms)
    seeds = seed_list(seeds)
    truth, truth_kind = _truth_of(data, truth_epochs)
    pairs = matched_pairs(truth)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds) * len(etas) * rounds, desc="E5 feedback rounds",
                   unit="round")
    rows, rows_per_id = [], {}
    for eta in etas:
        for seed in seeds:
            loop = FeedbackLoop(data, truth, arms=arm_list, seed=seed, eta=eta, rounds=rounds,
                                epochs_first=epochs_first, epochs_per_round=epochs_per_round,
                                train_overrides=train_overrides, candidates=candidates,
                                pairs=pairs)
            rows_per_id.update(loop.rows_per_id)
            rows += loop.round0_rows()
            for _ in range(rounds):
                rows += loop.step()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    # what every MF arm trained with: the overrides E5 takes (_train_overrides refused the
    # others) and the defaults of the fields the arms' tables leave at their defaults
    base = TrainConfig(**train_overrides).to_dict()
    for key in ("dim", "table", "rows_per_id", "personas", "seed", "epochs"):
        base.pop(key)
    rerank_arms = [a.name for a in arm_list if a.kind == "mf" and a.rerank != "none"]
    summary = summary_with_intervals(rows, keys=("eta", "arm", "round"),
                                     skip=("seed", "n_interactions"))
    return {"experiment": "feedback", "dataset": {**data.summary(), "spec": spec},
            "config": {"rounds": rounds, "seeds": seeds, "etas": etas, "k": K,
                       "arms": {a.name: asdict(a) for a in arm_list}, "base_arm": BASE_ARM,
                       "hashed_rows_per_id": rows_per_id, "epochs_first": epochs_first,
                       "epochs_per_round": epochs_per_round,
                       "frozen_epochs": epochs_first + (rounds - 1) * epochs_per_round,
                       "candidates": candidates, "steck_lambda": STECK_LAMBDA,
                       "rerank_categories": categories(data)[1] if rerank_arms else None,
                       "alpha": ALPHA, "matched_pairs": int(len(pairs)), "truth": truth_kind,
                       "acceptance": "min(1, p_t(i|u)/p_t,u^(k)) / log2(rank+1)",
                       "drift": "theta_u <- normalise((1-eta) theta_u + eta mean psi_i)",
                       "train": base, "quick": bool(quick),
                       "seconds": round(time.perf_counter() - t0, 2)},
            "rows": rows, "summary": summary, "contrasts": contrasts(rows)}


def contrasts(rows: Sequence[dict], base: str = BASE_ARM,
              metrics_: Sequence[str] = CONTRAST_METRICS) -> list:
    """Paired per-seed differences at the last round, with their :func:`interval`.

    Entries ``{"eta", "arm", "versus", "metric", "difference"}``: per η, ``arm − base`` for
    every other arm that is not a reference (``versus`` = the base arm's name); and per arm,
    the arm at the largest η minus the same arm at η = 0 (``versus`` = ``"eta=0"``, ``eta``
    the larger value). Seeds present on both sides only.
    """
    if not rows:
        return []
    T = max(r["round"] for r in rows)
    last = {(r["eta"], r["arm"], r["seed"]): r for r in rows if r["round"] == T}
    etas = sorted({k[0] for k in last})
    arms = list(dict.fromkeys(k[1] for k in last))
    seeds = sorted({k[2] for k in last})

    def diff(e1, a1, e2, a2, m):
        vals = []
        for s in seeds:
            x, y = last.get((e1, a1, s)), last.get((e2, a2, s))
            if x is not None and y is not None:
                vals.append(num(x.get(m)) - num(y.get(m)))
        return interval(vals)

    out = []
    if base in arms:
        for eta in etas:
            for a in arms:
                if a in (base, "oracle", "random"):
                    continue
                for m in metrics_:
                    out.append({"eta": eta, "arm": a, "versus": base, "metric": m,
                                "difference": diff(eta, a, eta, base, m)})
    if len(etas) > 1 and etas[0] == 0.0:
        hi = etas[-1]
        for a in arms:
            for m in metrics_:
                out.append({"eta": hi, "arm": a, "versus": "eta=0", "metric": m,
                            "difference": diff(hi, a, 0.0, a, m)})
    return out


# aggregation, plots, report /////////////////////////////////////////////////////////////////


def _summary(results: dict) -> list:
    return results.get("summary") or summary_with_intervals(
        results["rows"], keys=("eta", "arm", "round"), skip=("seed", "n_interactions"))


def _stat(results: dict, eta, arm, rnd, metric) -> dict:
    for s in _summary(results):
        if s.get("eta") == eta and s.get("arm") == arm and s.get("round") == rnd:
            v = s.get(metric)
            if isinstance(v, dict):
                return v
    return interval([])


def _contrast(results: dict, eta, arm, versus, metric) -> dict:
    for c in results.get("contrasts") or contrasts(results["rows"]):
        if (c["eta"], c["arm"], c["versus"], c["metric"]) == (eta, arm, versus, metric):
            return c["difference"]
    return interval([])


def _ci(stat: dict, digits: int = 3) -> str:
    """A table cell: ``mean [low, high]``, "–" when missing."""
    return ci_text(stat, f".{digits}f")


def _ci_said(stat: dict, digits: int = 3) -> str:
    """The same in a sentence: "undefined" when missing (as the other experiments write it)."""
    return ci_text(stat, f".{digits}f", missing="undefined")


_STYLE = {BASE_ARM: "C1", "cuckoo-d8": "C0", "hashed-d64": "C4", "cuckoo-d64+steck": "C2",
          "cuckoo-d64+la": "C6", "cuckoo-d64-p3": "C7",
          "hashed-d8": "C9", "cuckoo-d8+steck": "C8", "cuckoo-d64-frozen": "C3",
          "cuckoo-d64-exo": "C5", "oracle": "k", "random": "0.6"}
_PANELS = (("homogenisation", "Jaccard − ideal (matched pairs)"),
           ("utility_cum_ratio", "cumulative utility / ideal"),
           ("utility_gini", "Gini of utility across users"),
           ("drift", "genre-mix drift KL"), ("pref_shift", "preference shift (TV)"),
           ("gini@10", "gini@10 (exposure)"))


def plot_feedback(results: dict, path):
    """Per η (rows) and metric (columns), the mean over seeds per round with its 95% band."""
    plt = pyplot()
    etas = results["config"]["etas"]
    arms = list(results["config"]["arms"])
    summ = _summary(results)
    fig, axes = plt.subplots(len(etas), len(_PANELS), figsize=(2.6 * len(_PANELS),
                                                               2.5 * len(etas) + 0.6),
                             squeeze=False)
    for r, eta in enumerate(etas):
        for c, (m, title) in enumerate(_PANELS):
            ax = axes[r, c]
            for arm in arms:
                pts = sorted((s["round"], s.get(m)) for s in summ
                             if s.get("eta") == eta and s.get("arm") == arm
                             and isinstance(s.get(m), dict))
                if not pts:
                    continue
                x = np.array([p[0] for p in pts])
                mean = np.array([num(p[1]["mean"]) for p in pts])
                lo = np.array([num(p[1]["ci95_low"]) for p in pts])
                hi = np.array([num(p[1]["ci95_high"]) for p in pts])
                ok = np.isfinite(mean)
                if not ok.any():
                    continue
                color = _STYLE.get(arm)
                ax.plot(x[ok], mean[ok], marker=".", ms=3, color=color, label=arm,
                        ls="--" if arm in ("oracle", "random") else "-", lw=1)
                band = ok & np.isfinite(lo) & np.isfinite(hi)
                if band.any():
                    ax.fill_between(x[band], lo[band], hi[band], color=color, alpha=0.15,
                                    lw=0)
            ax.set_title(f"{title}, η = {eta:g}", fontsize=8)
            ax.set_xlabel("round", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    d = results["dataset"]
    fig.suptitle(f"E5 feedback loop: {d['name']} ({d['users']} users × {d['items']} items), "
                 f"mean and 95% interval over {len(results['config']['seeds'])} seeds",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


_TABLE = ("homogenisation", "jaccard", "utility_ratio", "utility_cum_ratio", "utility_gini",
          "drift", "pref_shift", "gini@10")


def drift_measured(results: dict) -> bool:
    """Whether the genre-mix drift was measured: some arm has a finite round-T ``drift``
    (a data set whose items have no genres gives none, and the report then leaves drift out)."""
    cfg = results["config"]
    return any(math.isfinite(num(_stat(results, eta, arm, cfg["rounds"], "drift").get("mean")))
               for eta in cfg["etas"] for arm in cfg["arms"])


_NO_DRIFT = ("The data set gives its items no genres, so the genre-mix drift (`drift`, "
             "`drift:<group>`) is not measured.")


def feedback_table(results: dict) -> list:
    """Markdown table: per η and arm, round-T metrics as mean [95% CI] over seeds (without the
    drift column when it was not measured: :func:`drift_measured`)."""
    cfg = results["config"]
    T = cfg["rounds"]
    cols = [m for m in _TABLE if m != "drift" or drift_measured(results)]
    lines = ["| η | arm | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for eta in cfg["etas"]:
        for arm in cfg["arms"]:
            cells = [_ci(_stat(results, eta, arm, T, m)) for m in cols]
            lines.append(f"| {eta:g} | {arm} | " + " | ".join(cells) + " |")
    return lines


def group_table(results: dict) -> list:
    """Markdown table: round-T genre-mix drift per user group, mean [95% CI]."""
    cfg = results["config"]
    T = cfg["rounds"]
    lines = ["| η | arm | " + " | ".join(f"drift:{g}" for g in GROUPS) + " |",
             "|---|---|" + "---|" * len(GROUPS)]
    for eta in cfg["etas"]:
        for arm in cfg["arms"]:
            cells = [_ci(_stat(results, eta, arm, T, f"drift:{g}"), 4) for g in GROUPS]
            lines.append(f"| {eta:g} | {arm} | " + " | ".join(cells) + " |")
    return lines


def contrast_table(results: dict, metrics_: Sequence[str] = (
        "homogenisation", "utility_cum_ratio", "utility_gini", "drift")) -> list:
    """Markdown table: per η, each arm minus the base arm at round T (paired by seed),
    mean [95% CI]; ``*`` marks an interval that excludes 0 (its deciding bound printed with the
    decimals it needs not to read as 0)."""
    cfg = results["config"]
    base = cfg.get("base_arm", BASE_ARM)
    if not drift_measured(results):
        metrics_ = [m for m in metrics_ if m != "drift"]
    lines = ["| η | arm − " + base + " | " + " | ".join(f"Δ {m}" for m in metrics_) + " |",
             "|---|---|" + "---|" * len(metrics_)]
    for eta in cfg["etas"]:
        for arm in cfg["arms"]:
            if arm in (base, "oracle", "random"):
                continue
            cells = []
            for m in metrics_:
                d = _contrast(results, eta, arm, base, m)
                lo, hi = num(d.get("ci95_low")), num(d.get("ci95_high"))
                star = "*" if (lo > 0 or hi < 0) else ""
                cells.append(ci_text(d, ".3f", ref=0.0) + star)
            lines.append(f"| {eta:g} | {arm} | " + " | ".join(cells) + " |")
    return lines


def feedback_text(results: dict) -> list:
    """The report's sentences, each stating a direction only where its interval excludes 0."""
    cfg = results["config"]
    T, etas, arms = cfg["rounds"], cfg["etas"], list(cfg["arms"])
    base = cfg.get("base_arm", BASE_ARM)
    out = []
    if "oracle" not in arms:
        return ["Without the oracle arm there is no ideal system to measure homogenisation "
                "and utility against."]
    for eta in etas:
        for arm in [a for a in arms if a not in ("oracle", "random")]:
            if arm != base and not arm.endswith(("-frozen", "-exo")):
                continue
            out.append(direction_sentence(
                _stat(results, eta, arm, T, "homogenisation"),
                f"With η = {eta:g}, after {T} rounds, matched users of **{arm}**",
                "consume more alike than under the ideal system (homogenisation)",
                "consume less alike than under the ideal system",
                metric="Jaccard − ideal"))
        if base not in arms:
            continue
        for arm in arms:
            if arm in (base, "oracle", "random"):
                continue
            what = _CHANGES.get(arm, arm)
            d = _contrast(results, eta, arm, base, "homogenisation")
            if arm.endswith(("-frozen", "-exo")):
                out.append(direction_sentence(
                    {**d, "mean": 0.0 - num(d["mean"]), "ci95_low": 0.0 - num(d["ci95_high"]),
                     "ci95_high": 0.0 - num(d["ci95_low"])},  # (0.0 - x: no -0.0)
                    f"With η = {eta:g}, the loop itself ({base} minus the {what} control)",
                    "makes matched users consume more alike",
                    "makes matched users consume less alike",
                    metric="Δ(Jaccard − ideal)"))
            else:
                out.append(direction_sentence(
                    d, f"With η = {eta:g}, {what} (**{arm}** minus {base})",
                    "makes matched users consume more alike",
                    "makes matched users consume less alike",
                    metric="Δ(Jaccard − ideal)"))
        below = [a for a in arms if a not in ("oracle", "random")
                 and num(_stat(results, eta, a, T, "homogenisation").get("ci95_high")) < 0]
        if below and len(below) == len([a for a in arms if a not in ("oracle", "random")]):
            out.append(f"At η = {eta:g} every model arm stays below the ideal system's similarity "
                       "(each interval of Jaccard − ideal lies below 0), so \"more alike\" here "
                       "means closer to the ideal, not homogenisation beyond it.")
    e0 = etas[0]
    if base in arms:
        per = _stat(results, e0, base, T, "utility_ratio")
        cum = _stat(results, e0, base, T, "utility_cum_ratio")
        out.append(f"Utility relative to the ideal system at η = {e0:g}: {base}'s users get "
                   f"{_ci_said(per)} of the oracle's utility in round {T} alone, and {_ci_said(cum)} of "
                   f"it summed over rounds 1..{T}.")
        if per.get("ci95_low") is not None and math.isfinite(num(per.get("ci95_low"))) \
                and per["ci95_low"] > 1 and num(cum.get("ci95_high")) < 1:
            out.append(f"The round-{T} ratio lies above 1 and the cumulative one below 1 (both "
                       "intervals): the oracle's users got more earlier, and less is left for "
                       "them to accept in the last round.")
        g = _stat(results, e0, base, T, "utility_gini")
        go = _stat(results, e0, "oracle", T, "utility_gini")
        out.append(f"Utility is spread across users with Gini {_ci_said(g)} for {base} and {_ci_said(go)} "
                   f"for the oracle.")
        if len(etas) > 1:
            hi = etas[-1]
            out.append(direction_sentence(
                _contrast(results, hi, base, "eta=0", "homogenisation"),
                f"For {base}, drift η = {hi:g} against η = 0",
                "increases homogenisation", "decreases homogenisation",
                metric="Δ(Jaccard − ideal)"))
            out.append(direction_sentence(
                _contrast(results, hi, "oracle", "eta=0", "jaccard"),
                f"For the ideal system itself, drift η = {hi:g}",
                "makes matched users' consumption more alike",
                "makes matched users' consumption less alike", metric="Δ Jaccard"))
            out.append(f"By round {T} at η = {hi:g}, {base}'s users' preferences have moved by a "
                       f"total variation of {_ci_said(_stat(results, hi, base, T, 'pref_shift'))} "
                       f"(the oracle's: {_ci_said(_stat(results, hi, 'oracle', T, 'pref_shift'))}).")
        if not drift_measured(results):
            out.append(_NO_DRIFT)
            return out
        for eta in etas:
            gd = {g: _stat(results, eta, base, T, f"drift:{g}") for g in GROUPS}
            out.append(f"Genre-mix drift of {base}'s users by round {T} at η = {eta:g}: "
                       + ", ".join(f"{g} {_ci_said(s, 4)}" for g, s in gd.items()) + ".")
    return out


def _categories_said(cfg: dict) -> str:
    """The sentence naming the categories the reranked arms calibrated to ("" without such
    arms, or for results written before ``config["rerank_categories"]`` existed)."""
    cats = cfg.get("rerank_categories")
    arms = [name for name, a in (cfg.get("arms") or {}).items()
            if isinstance(a, dict) and a.get("kind") == "mf" and a.get("rerank", "none") != "none"]
    if not cats or not arms:
        return ""
    why = (" (the data set gives its items no genres: as in E3, the bins split the items by "
           "the arm's current training counts)") if cats.startswith("popularity") else ""
    return (f" The reranked arms ({', '.join(arms)}) calibrate each user's list to the user's "
            f"mix of {cats} in the arm's current training data{why}.")


def render_section(results: dict, plots: Sequence = ()) -> list:
    """The report section of E5 (Markdown lines)."""
    d, cfg = results["dataset"], results["config"]
    lines = ["## E5 — feedback loop", "",
             (f"Dataset **{d['name']}** (`{d.get('spec')}`): {d['users']:,} users, "
              f"{d['items']:,} items, {d['interactions']:,} organic interactions. Truth: "
              f"{cfg['truth']}. {cfg['rounds']} rounds, seeds {cfg['seeds']}, drift rates η ∈ "
              f"{cfg['etas']}, k = {cfg['k']}; acceptance {cfg['acceptance']}; MF warm-started "
              f"({cfg['epochs_first']} epochs in round 1, {cfg['epochs_per_round']} per later "
              f"round; the frozen control {cfg['frozen_epochs']} epochs once). Homogenisation is "
              f"the Jaccard of loop consumption over {cfg['matched_pairs']} pairs of users "
              f"matched by true-preference similarity, minus the ideal (oracle) system's. "
              f"Cells: round {cfg['rounds']}, mean [95% CI] over seeds." + _categories_said(cfg)),
             ""]
    lines += feedback_table(results)
    lines += ["", f"Each arm minus {cfg.get('base_arm', BASE_ARM)} at round {cfg['rounds']}, "
              "paired by seed (`*`: the interval excludes 0):", ""]
    lines += contrast_table(results)
    if drift_measured(results):
        lines += ["", "Drift of the consumed genre mix per user group (round "
                  f"{cfg['rounds']}):", ""]
        lines += group_table(results)
    lines.append("")
    for p in plots:
        lines += [f"![e5]({p})", ""]
    lines += ["**What it shows.** " + " ".join(feedback_text(results)), "",
              f"_Run time: {cfg.get('seconds', '?')} s._", ""]
    return lines


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E5's plot: per η and metric, mean and 95% band over rounds."""
    return [plot_feedback(results, Path(out_dir) / f"{prefix}feedback.png")]


def _stream_refused(spec) -> ValueError:
    return ValueError(f"the feedback experiment (E5) does not support stream data: {spec!r} "
                      "is a time-ordered stream (a StreamTruth, whose items are born and fade "
                      "over windows), while the loop has no time line and its drift "
                      "(eta > 0) needs a mixture or softmax truth; use a synthetic:, "
                      "movielens: or interactions: data set (the `stream` experiment runs "
                      "stream data)")


def check_dataset(spec) -> None:
    """``ValueError`` for a ``stream:`` spec (see :func:`run_feedback`), for the runner to
    call before any experiment of a run starts."""
    if isinstance(spec, str) and spec.partition(":")[0].strip() == "stream":
        raise _stream_refused(spec)


def check_overrides(overrides) -> None:
    """``ValueError`` for a field of the runner's shared ``train_overrides`` that E5 does not
    take (its ``epochs`` is for the other experiments of the run), for the runner to call
    before any experiment of a run starts."""
    _train_overrides(overrides, shared=True)


register(Experiment("feedback", "E5", "feedback loop: recommend, accept, retrain, by arm",
                    run_feedback, render_section, plot, in_demo=True, check_dataset=check_dataset,
                    check_overrides=check_overrides))
