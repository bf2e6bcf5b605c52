"""Slow, obvious reference for embtab.rerank.calibrated: recomputes the whole objective for every
candidate at every step, with Python floats and math.log. Also a brute force over k-subsets."""

from __future__ import annotations

import itertools
import math

NEG_INF = float("-inf")


def kl(p, qt):
    """KL(p || qt) over categories with p_g > 0; +inf when such a qt_g is 0."""
    total = 0.0
    for pg, qg in zip(p, qt):
        if pg > 0:
            if qg <= 0:
                return math.inf
            total += pg * (math.log(pg) - math.log(qg))
    return total


def list_kl(items, item_dist, p, alpha):
    """KL(p || q~) of a list (item ids into item_dist, a list of lists of floats)."""
    G = len(p)
    n = len(items)
    q = [sum(item_dist[i][g] for i in items) / n for g in range(G)]
    qt = [(1 - alpha) * q[g] + alpha * p[g] for g in range(G)]
    return kl(p, qt)


def objective(items, score_list, item_dist, p, lam, alpha):
    """F(L) = (1-lam) sum s - lam KL; the score term is dropped when lam == 1 and the KL term
    when lam == 0."""
    st = (1 - lam) * sum(score_list) if lam < 1 else 0.0
    if lam == 0:
        return st
    return st - lam * list_kl(items, item_dist, p, alpha)


def greedy_user(scores, cand, item_dist, p, k, lam, alpha):
    """One user's greedy list (candidate positions) and the smallest gap, over all steps,
    between the best and the second-best objective value (inf if never two finite ones)."""
    C = len(scores)
    chosen = []
    min_gap = math.inf
    finite = [c for c in range(C) if scores[c] != NEG_INF]
    for _ in range(k):
        pool = [c for c in finite if c not in chosen]
        drop_scores = False
        if not pool:
            # only -inf candidates remain: their score term is dropped
            pool = [c for c in range(C) if c not in chosen]
            drop_scores = True
        vals = []
        for c in pool:
            lst = chosen + [c]
            items = [cand[j] for j in lst]
            sl = [0.0 if (drop_scores and scores[j] == NEG_INF) else scores[j] for j in lst]
            vals.append(objective(items, sl, item_dist, p, lam, alpha))
        best = max(vals)
        pick = pool[vals.index(best)]  # first maximum = lower candidate index
        # The gap to the best value below the maximum; exact ties count as a gap only when the
        # tied candidates are interchangeable (same score, same item row), since any other exact
        # tie could break either way under a different (equally exact) order of operations.
        if best != NEG_INF:
            below = [v for v in vals if v < best]
            if below and max(below) != NEG_INF:
                min_gap = min(min_gap, best - max(below))
            tied = [c for c, v in zip(pool, vals) if v == best]
            if any((lam < 1 and scores[c] != scores[pick]) or item_dist[cand[c]] != item_dist[cand[pick]] for c in tied):
                min_gap = 0.0
        chosen.append(pick)
    return chosen, min_gap


def greedy(scores, item_dist, target, k, lam, alpha, candidates=None):
    """All users: (lists of candidate positions or item ids, min gap over users and steps)."""
    out = []
    gap = math.inf
    for u, row in enumerate(scores):
        row = [float(x) for x in row]
        cand = list(range(len(row))) if candidates is None else [int(c) for c in candidates[u]]
        p = [float(x) for x in target[u]]
        lst, g = greedy_user(row, cand, item_dist, p, k, lam, alpha)
        gap = min(gap, g)
        out.append([cand[c] for c in lst] if candidates is not None else lst)
    return out, gap


def brute_force_best(scores, item_dist, p, k, lam, alpha):
    """The best objective over all k-subsets of the candidates (order does not matter)."""
    best = NEG_INF
    for sub in itertools.combinations(range(len(scores)), k):
        best = max(best, objective(list(sub), [scores[c] for c in sub], item_dist, p, lam, alpha))
    return best
