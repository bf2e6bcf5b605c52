"""Experiment E5: the feedback loop (recommend → users accept → retrain), arm by arm.

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

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from embtab import metrics
from embtab._research import ALPHA, K, category_mix, fmt, mean, topk_indices
from embtab.data import Interactions, load_dataset
from embtab.experiments.calibration import calibrated_lists, item_distribution
from embtab.experiments.plots import pyplot, save_figure
from embtab.experiments.registry import Experiment, register
from embtab.experiments.session import check_enough_items, seed_list
from embtab.rerank import smoothed_kl
from embtab.train import ModelTruth, TrainConfig, build_model, score_matrix

__all__ = ["ARMS", "DEFAULT_DATASET", "FeedbackLoop", "ModelTruth", "accept_probability",
           "feedback_table", "feedback_text", "plot", "plot_feedback", "render_section",
           "run_feedback"]

MINORITY = 0.25
DEFAULT_DATASET = "synthetic:n_users=1000,n_items=1500,interactions_per_user=20"

#: arm name -> spec; ``train`` = TrainConfig overrides, ``lam`` = calibrated rerank λ
ARMS = {
    "hashed-d8": {"train": {"dim": 8, "table": "hashed", "rows_per_id": 0.25}},
    "cuckoo-d64": {"train": {"dim": 64, "table": "cuckoo"}},
    "cuckoo-d64+cal": {"train": {"dim": 64, "table": "cuckoo"}, "lam": 0.5},
    "cuckoo-d64-nofb": {"train": {"dim": 64, "table": "cuckoo"}, "feedback": False},
    "oracle": {},
    "random": {},
}
METRICS = ("arp@10", "arp_current@10", "gini@10", "coverage@10", "tail_share@10", "jaccard", "jaccard_loop",
           "utility_ratio", "drift", "drift_minority", "accepted")


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


def _dense(data: Interactions) -> np.ndarray:
    m = np.zeros((data.n_users, data.n_items), dtype=bool)
    m[data.users, data.items] = True
    return m


def _jaccard(consumed: np.ndarray, pairs: np.ndarray) -> float:
    if not len(pairs):
        return float("nan")
    a, b = consumed[pairs[:, 0]], consumed[pairs[:, 1]]
    inter = (a & b).sum(axis=1)
    union = (a | b).sum(axis=1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 0.0).mean())


def _user_pairs(n_users: int, n_pairs: int, seed: int) -> np.ndarray:
    """A seeded sample of distinct unordered user pairs (all pairs if there are fewer)."""
    total = n_users * (n_users - 1) // 2
    if total <= n_pairs:
        iu = np.triu_indices(n_users, 1)
        return np.stack(iu, axis=1)
    rng = np.random.default_rng([seed, 7])
    a = rng.integers(0, n_users, size=2 * n_pairs)
    b = rng.integers(0, n_users, size=2 * n_pairs)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo[lo != hi] * n_users + hi[lo != hi])
    key = rng.permutation(key)[:n_pairs]
    return np.stack([key // n_users, key % n_users], axis=1)


class _MFArm:
    """An MF model trained with BPR, warm-started across rounds (same tables and Adam state)."""

    def __init__(self, data: Interactions, cfg: TrainConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.model = build_model(data, cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr)

    def train(self, data: Interactions, epochs: int) -> None:
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
        n, bs = data.n_interactions, cfg.batch_size
        model.train()
        for _ in range(epochs):
            order = rng.permutation(n)
            neg = rng.integers(0, catalogue.size, size=n)
            for b in range(0, n, bs):
                idx = order[b:b + bs]
                u = model.users(torch.from_numpy(raw_u[idx]))
                p = model.items(torch.from_numpy(raw_i[idx]))
                q = model.items(torch.from_numpy(catalogue[neg[idx]]))
                loss = -torch.nn.functional.logsigmoid((u * (p - q)).sum(-1)).mean()
                if cfg.l2:
                    loss = loss + cfg.l2 * ((u * u).sum() + (p * p).sum()
                                            + (q * q).sum()) / len(idx)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        model.eval()


class FeedbackLoop:
    """The state of one seed's loop: per-arm consumed sets, models and data.

    ``step()`` runs one round for every arm and returns its rows. Attributes ``consumed[arm]``
    (bool [U, I]) and ``data[arm]`` (:class:`Interactions`) hold each arm's current data.
    """

    def __init__(self, data: Interactions, truth, *, arms: Sequence[str] = tuple(ARMS),
                 seed: int = 0, k: int = K, epochs_first: int = 10, epochs_per_round: int = 2,
                 train_overrides: dict | None = None, candidates: int = 100,
                 jaccard_pairs: int = 20000):
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {tuple(ARMS)}")
        self.organic, self.truth, self.arms = data, truth, tuple(arms)
        self.seed, self.k, self.candidates = int(seed), int(k), int(candidates)
        self.epochs_first, self.epochs_per_round = int(epochs_first), int(epochs_per_round)
        self.round = 0
        U, I = data.n_users, data.n_items
        self.w = data.genre_weights()
        organic = _dense(data)
        self.organic_dense = organic
        counts0 = metrics.item_counts(data.user_items())
        self.pop0, self.head0 = counts0 / U, metrics.head_items(counts0)
        self.p0 = category_mix(organic, self.w)
        srt = np.sort(self.p0, axis=1)
        self.minority = srt[:, -2] >= MINORITY if self.p0.shape[1] >= 2 else np.zeros(U, bool)
        # the user's k-th largest true preference (acceptance reference), in blocks
        self.ref = np.empty(U)
        for s in range(0, U, 1024):
            p = truth.prob(np.arange(s, min(s + 1024, U)))
            self.ref[s:s + len(p)] = -np.partition(-p, min(k, I) - 1, axis=1)[:, min(k, I) - 1]
        self.pairs = _user_pairs(U, jaccard_pairs, seed)
        self.consumed = {a: organic.copy() for a in self.arms}
        self.data = {a: data for a in self.arms}
        overrides = dict(train_overrides or {})
        self.models: dict = {}
        for a in self.arms:
            spec = ARMS[a]
            if "train" in spec:
                cfg = TrainConfig(**{**overrides, **spec["train"], "seed": self.seed})
                key = tuple(sorted(cfg.to_dict().items()))
                # the calibrated arm trains its own model on its own (diverging) data
                self.models[a] = (_MFArm(data, cfg), key)

    # one round -------------------------------------------------------------------------------

    def state_row(self, arm: str) -> dict:
        c = self.consumed[arm]
        loop = c & ~self.organic_dense
        drift = smoothed_kl(self.p0, category_mix(c, self.w), ALPHA)
        has = self.p0.sum(axis=1) > 0
        return {"jaccard": _jaccard(c, self.pairs), "jaccard_loop": _jaccard(loop, self.pairs),
                "drift": mean(drift[has]), "drift_minority": mean(drift[has & self.minority])}

    def _lists(self, arm: str) -> np.ndarray:
        data, k = self.data[arm], self.k
        if arm == "random":
            rng = np.random.default_rng([self.seed, self.round, 11])
            scores = rng.random((data.n_users, data.n_items))
            scores[self.consumed[arm]] = -np.inf
            return topk_indices(scores, k)
        if arm == "oracle":
            out = []
            for s in range(0, data.n_users, 1024):
                rows = np.arange(s, min(s + 1024, data.n_users))
                p = self.truth.prob(rows)
                p[self.consumed[arm][rows]] = -np.inf
                out.append(topk_indices(p, k))
            return np.concatenate(out)
        mf, _ = self.models[arm]
        mf.train(data, self.epochs_first if self.round == 1 else self.epochs_per_round)
        scores = score_matrix(mf.model, data).numpy()
        scores[self.consumed[arm]] = -np.inf        # consumed = training data unless no-feedback
        lam = ARMS[arm].get("lam")
        if lam is None:
            return topk_indices(scores, k)
        return calibrated_lists(scores, data, item_distribution(data), self.candidates, [lam], k)[
            float(lam)]

    def step(self) -> list:
        """Run round ``self.round + 1`` for every arm; returns one row per arm."""
        self.round += 1
        U = self.organic.n_users
        draws = np.random.default_rng([self.seed, self.round, 3]).random((U, self.k))
        rows, lists = [], {}
        for arm in self.arms:
            lists[arm] = self._lists(arm)
        utilities = {}
        for arm in self.arms:
            top, data = lists[arm], self.data[arm]
            kk = top.shape[1]
            users = np.repeat(np.arange(U), kk)
            pref = self.truth.pair_prob(users, top.ravel()).reshape(U, kk)
            # a slot may be padding (user consumed everything): never accept an already consumed
            fresh = ~self.consumed[arm][np.arange(U)[:, None], top]
            acc = (draws[:, :kk] < accept_probability(pref, self.ref)) & fresh
            cur_pop = metrics.item_counts(data.user_items()) / data.n_users
            row = {"round": self.round, "arm": arm, "seed": self.seed,
                   "arp@10": metrics.arp_at_k(top, self.pop0, kk),
                   "arp_current@10": metrics.arp_at_k(top, cur_pop, kk),
                   "gini@10": metrics.gini_at_k(top, data.n_items, kk),
                   "coverage@10": metrics.coverage_at_k(top, data.n_items, kk),
                   "tail_share@10": metrics.tail_share_at_k(top, self.head0, kk),
                   "accepted": float(acc.sum() / U),
                   "utility": float((pref * acc).sum() / U)}
            utilities[arm] = row["utility"]
            au, ai = np.nonzero(acc)
            new_items = top[au, ai]
            self.consumed[arm][au, new_items] = True
            if ARMS[arm].get("feedback", True):
                self.data[arm] = Interactions(
                    name=data.name, user_ids=data.user_ids, item_ids=data.item_ids,
                    users=np.concatenate([data.users, au]),
                    items=np.concatenate([data.items, new_items]),
                    item_genres=data.item_genres, genre_names=data.genre_names,
                    truth=data.truth)
            row["n_interactions"] = self.data[arm].n_interactions
            row.update(self.state_row(arm))
            rows.append(row)
        ref = utilities.get("oracle")
        for row in rows:
            row["utility_ratio"] = (row["utility"] / ref if ref else float("nan"))
        return rows

    def round0_rows(self) -> list:
        return [{"round": 0, "arm": a, "seed": self.seed, "n_interactions":
                 self.organic.n_interactions, "accepted": 0.0, **self.state_row(a)}
                for a in self.arms]


# the experiment /////////////////////////////////////////////////////////////////////////////


def _truth_of(data: Interactions, truth_epochs: int):
    if data.truth is not None:
        return data.truth, "planted (generator's p(i|u))"
    return (ModelTruth(data, epochs=truth_epochs),
            f"model-fitted: softmax of a d=32 cuckoo MF, BPR {truth_epochs} epochs, full data")


def run_feedback(dataset: str | Interactions = DEFAULT_DATASET, seeds=1, *, rounds: int = 10,
                 arms: Sequence[str] = tuple(ARMS), epochs_first: int = 10,
                 epochs_per_round: int = 2, candidates: int = 100, jaccard_pairs: int = 20000,
                 truth_epochs: int = 10, train_overrides: dict | None = None,
                 progress: bool = True, session=None) -> dict:
    """E5: run the feedback loop for ``rounds`` rounds and every arm; a results dict.

    ``dataset`` is a spec string (:func:`embtab.data.load_dataset`; ``"synthetic"`` means the
    quick default ``DEFAULT_DATASET`` = 1,000 users × 1,500 items, ~20 organic interactions each)
    or an :class:`Interactions`. ``seeds`` is a count (0..N-1) or a list. ``session`` (from
    :func:`embtab.experiments.run_experiments`) is accepted for the registry's interface; E5
    loads its own data. Rows: one per (seed, round 0..T, arm), see the module docstring.
    """
    t0 = time.perf_counter()
    if isinstance(dataset, str):
        spec = DEFAULT_DATASET if dataset == "synthetic" else dataset
        data = load_dataset(spec, seed=0)
    else:
        data, spec = dataset, dataset.name
    check_enough_items(data)
    truth, truth_kind = _truth_of(data, truth_epochs)
    seeds = seed_list(seeds)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds) * rounds, desc="E5 feedback rounds", unit="round")
    rows = []
    for seed in seeds:
        loop = FeedbackLoop(data, truth, arms=arms, seed=seed, epochs_first=epochs_first,
                            epochs_per_round=epochs_per_round, train_overrides=train_overrides,
                            candidates=candidates, jaccard_pairs=jaccard_pairs)
        rows += loop.round0_rows()
        for _ in range(rounds):
            rows += loop.step()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    base = TrainConfig(**dict(train_overrides or {})).to_dict()
    for key in ("dim", "table", "rows_per_id", "seed", "epochs"):
        base.pop(key)
    return {"experiment": "feedback", "dataset": {**data.summary(), "spec": spec},
            "config": {"rounds": rounds, "seeds": seeds, "k": K, "arms": {
                a: ARMS[a] for a in arms}, "epochs_first": epochs_first,
                "epochs_per_round": epochs_per_round, "candidates": candidates,
                "alpha": ALPHA, "minority_threshold": MINORITY, "jaccard_pairs": jaccard_pairs,
                "truth": truth_kind,
                "acceptance": "min(1, p(i|u)/p_u^(k)) / log2(rank+1)", "train": base,
                "seconds": round(time.perf_counter() - t0, 2)},
            "rows": rows}


# aggregation, plots, report /////////////////////////////////////////////////////////////////


def _curves(results: dict) -> dict:
    """{arm: {metric: (rounds [T+1], mean over seeds [T+1])}}."""
    out: dict = {}
    for arm in results["config"]["arms"]:
        rs = [r for r in results["rows"] if r["arm"] == arm]
        rounds = sorted({r["round"] for r in rs})
        out[arm] = {}
        for m in METRICS:
            vals = []
            for t in rounds:
                v = [r.get(m) for r in rs if r["round"] == t]
                v = [x for x in v if x is not None and math.isfinite(x)]
                vals.append(float(np.mean(v)) if v else float("nan"))
            out[arm][m] = (np.array(rounds), np.array(vals))
    return out


_STYLE = {"hashed-d8": "C0", "cuckoo-d64": "C1", "cuckoo-d64+cal": "C2", "cuckoo-d64-nofb": "C3",
          "oracle": "k",
          "random": "0.6"}
_PANELS = (("gini@10", "gini@10 (exposure inequality)"), ("arp@10", "arp@10"),
           ("coverage@10", "coverage@10"), ("tail_share@10", "tail_share@10"),
           ("jaccard", "user-user Jaccard (consumed)"), ("utility_ratio", "utility / oracle"),
           ("drift", "genre-mix drift KL (all users)"),
           ("drift_minority", "drift KL (minority-interest users)"))


def plot_feedback(results: dict, path):
    """One panel per metric over rounds, one line per arm; returns the path."""
    plt = pyplot()
    curves = _curves(results)
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6))
    for ax, (m, title) in zip(axes.ravel(), _PANELS):
        for arm, c in curves.items():
            x, y = c[m]
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], marker=".", color=_STYLE.get(arm), label=arm,
                    ls="--" if arm in ("oracle", "random") else "-")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"E5 feedback loop: {results['dataset']['name']} "
                 f"({results['dataset']['users']} users × {results['dataset']['items']} items)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def feedback_table(results: dict) -> list:
    """Markdown table: per arm, round 1 → round T of the headline metrics (mean over seeds)."""
    curves = _curves(results)
    cols = ("gini@10", "arp@10", "coverage@10", "tail_share@10", "jaccard", "utility_ratio",
            "drift", "drift_minority")
    lines = ["| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for arm, c in curves.items():
        cells = []
        for m in cols:
            x, y = c[m]
            first = y[x == (0 if m in ("jaccard", "drift", "drift_minority") else 1)]
            a = first[0] if first.size else float("nan")
            cells.append(f"{fmt(a, digits=3)} → {fmt(y[-1], digits=3)}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def feedback_text(results: dict) -> list:
    """"What it shows" sentences computed from the measured curves (no fixed claims)."""
    curves = _curves(results)
    T = results["config"]["rounds"]
    out = []
    mf = [a for a in curves if a in ("hashed-d8", "cuckoo-d64", "cuckoo-d64-nofb", "oracle")]

    def delta(arm, m, start=1):
        x, y = curves[arm][m]
        s = y[x == start]
        return (y[-1] - s[0]) if s.size else float("nan")

    for arm in mf:
        dg, da, dc = delta(arm, "gini@10"), delta(arm, "arp@10"), delta(arm, "coverage@10")
        ok = [n for n, good in (("gini↑", dg > 0), ("arp↑", da > 0), ("coverage↓", dc < 0))
              if good]
        verdict = ("homogenises as the loop predicts (gini↑, arp↑, coverage↓)" if len(ok) == 3
                   else "moves in the predicted direction on " + (", ".join(ok) or "none")
                   + " of gini↑, arp↑, coverage↓")
        out.append(f"From round 1 to round {T}, **{arm}** changes gini@10 by {dg:+.3f}, arp@10 "
                   f"by {da:+.4f} and coverage@10 by {dc:+.3f}: it {verdict}.")
        dj = delta(arm, "jaccard", 0)
        out.append(f"Its users' consumed sets become {'more' if dj > 0 else 'less'} alike "
                   f"(mean Jaccard {dj:+.4f} since round 0).")
    if "oracle" in curves and len(mf) > 1:
        out.append("The oracle has no model in the loop, so its trend is pure depletion: every "
                   "arm masks what its users consumed, and as users consume the popular items "
                   "of their genres the lists must reach further into the tail; the "
                   "no-feedback control separates the loop's own effect from that.")
    if "cuckoo-d64" in curves and "cuckoo-d64-nofb" in curves:
        f, n = curves["cuckoo-d64"], curves["cuckoo-d64-nofb"]
        parts = [f"{m} {f[m][1][-1]:.3f} vs {n[m][1][-1]:.3f}"
                 for m in ("gini@10", "arp@10", "coverage@10", "tail_share@10", "jaccard")]
        d = {m: f[m][1][-1] - n[m][1][-1]
             for m in ("gini@10", "arp@10", "coverage@10", "jaccard")}
        conc = [m for m, good in (("gini@10 higher", d["gini@10"] > 0),
                                  ("arp@10 higher", d["arp@10"] > 0),
                                  ("coverage@10 lower", d["coverage@10"] < 0),
                                  ("Jaccard higher", d["jaccard"] > 0)) if good]
        out.append(f"The loop's own effect at round {T} (cuckoo-d64 with feedback vs the "
                   f"no-feedback control, same depletion and schedule): " + ", ".join(parts)
                   + f"; with feedback {', '.join(conc) or 'none of gini↑, arp↑, coverage↓, '}"
                   + f" ({len(conc)} of 4 homogenisation signs).")
    drift = {a: curves[a]["drift"][1][-1] for a in curves if a != "random"}
    if drift:
        best = min(drift, key=drift.get)
        order = ", ".join(f"{a} {v:.4f}" for a, v in sorted(drift.items(), key=lambda kv: kv[1]))
        out.append(f"Genre-mix drift after round {T} (KL from the organic mix): {order}; "
                   f"the least-drifting non-random arm is **{best}**"
                   + (" as expected for calibration." if best == "cuckoo-d64+cal" else
                      " — not the calibrated arm."))
        dm = {a: curves[a]["drift_minority"][1][-1] for a in drift}
        out.append("For minority-interest users: " + ", ".join(
            f"{a} {v:.4f}" for a, v in sorted(dm.items(), key=lambda kv: kv[1])) + ".")
        acc = {a: float(np.nansum(curves[a]["accepted"][1])) for a in drift}
        out.append("Drift grows with what users accept; items accepted per user over all "
                   "rounds: " + ", ".join(f"{a} {v:.1f}" for a, v in acc.items()) + ".")
        if "cuckoo-d64+cal" in drift and "cuckoo-d64" in drift:
            c, f = drift["cuckoo-d64+cal"], drift["cuckoo-d64"]
            out.append(f"At the same model, calibration {'reduces' if c < f else 'does not reduce'}"
                       f" drift ({c:.4f} vs {f:.4f} for cuckoo-d64, "
                       f"{(c - f) / f:+.0%}).")
    if "hashed-d8" in curves and "cuckoo-d64" in curves:
        h, c = curves["hashed-d8"], curves["cuckoo-d64"]
        out.append(f"The low-d hashed arm ends at gini@10 {h['gini@10'][1][-1]:.3f} vs "
                   f"{c['gini@10'][1][-1]:.3f} for d=64 cuckoo, coverage@10 "
                   f"{h['coverage@10'][1][-1]:.3f} vs {c['coverage@10'][1][-1]:.3f}, utility "
                   f"ratio {h['utility_ratio'][1][-1]:.3f} vs {c['utility_ratio'][1][-1]:.3f}.")
    return out


def render_section(results: dict, plots: Sequence = ()) -> list:
    """The report section of E5 (Markdown lines)."""
    d, cfg = results["dataset"], results["config"]
    lines = ["## E5 — feedback loop", "",
             (f"Dataset **{d['name']}** (`{d.get('spec')}`): {d['users']:,} users, "
             f"{d['items']:,} items, {d['interactions']:,} organic interactions. Truth: "
             f"{cfg['truth']}. {cfg['rounds']} rounds, seeds {cfg['seeds']}, k = {cfg['k']}; "
             f"acceptance {cfg['acceptance']}; MF warm-started ({cfg['epochs_first']} epochs in "
             f"round 1, {cfg['epochs_per_round']} per later round). Cells: round 1 → round "
             f"{cfg['rounds']} (Jaccard and drift: round 0 → {cfg['rounds']}), mean over seeds."),
             ""]
    lines += feedback_table(results)
    lines.append("")
    for p in plots:
        lines += [f"![e5]({p})", ""]
    lines += ["**What it shows.** " + " ".join(feedback_text(results)), "",
              f"_Run time: {cfg.get('seconds', '?')} s._", ""]
    return lines


def plot(results: dict, out_dir, prefix: str = "") -> list:
    """E5's plot: one panel per metric over rounds."""
    return [plot_feedback(results, Path(out_dir) / f"{prefix}feedback.png")]


register(Experiment("feedback", "E5", "feedback loop: recommend, accept, retrain, by arm",
                    run_feedback, render_section, plot, in_demo=True))
