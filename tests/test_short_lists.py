"""Short top-k lists (fewer than k candidates): -1 padding from the recommenders, and every
metric against a plain per-user Python computation on the truncated lists (docs/metrics.md,
"Short lists"); the stream experiment's empty windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embtab import metrics
from embtab._research import topk_indices
from embtab.data import Interactions, load_dataset, train_test_split
from embtab.train import TrainConfig, drop_excluded, fit, most_popular, random_topk, recommend

ALPHA = 0.01


# topk_indices ///////////////////////////////////////////////////////////////////////////////


def test_topk_indices_pads_excluded_slots_with_minus_one():
    s = np.array([[0.1, -np.inf, 0.5, -np.inf], [0.3, 0.2, 0.1, 0.0],
                  [-np.inf] * 4], dtype=np.float32)
    assert topk_indices(s, 3).tolist() == [[2, 0, -1], [0, 1, 2], [-1, -1, -1]]
    # a catalogue smaller than k: the list is still k wide
    assert topk_indices(s[:, :2], 3).tolist() == [[0, -1, -1], [0, 1, -1], [-1, -1, -1]]
    import torch
    assert topk_indices(torch.from_numpy(s), 2).tolist() == [[2, 0], [0, 1], [-1, -1]]


def test_drop_excluded_compacts_a_reranked_list():
    scores = np.array([[0.5, -np.inf, 0.1, -np.inf], [1, 2, 3, 4.0]])
    assert drop_excluded([[1, 2, 3, 0], [3, 2, 1, 0]], scores).tolist() == [
        [2, 0, -1, -1], [3, 2, 1, 0]]


# validation /////////////////////////////////////////////////////////////////////////////////


def test_padding_must_follow_the_items_and_items_stay_distinct():
    with pytest.raises(ValueError, match="padding"):
        metrics.coverage_at_k([[-1, 0]], 2, k=2)
    with pytest.raises(ValueError, match="repeats"):
        metrics.coverage_at_k([[1, 1, -1]], 2, k=3)
    with pytest.raises(ValueError, match="lie in"):
        metrics.coverage_at_k([[0, -2]], 2, k=2)
    # several -1 are padding, not repeats
    assert metrics.coverage_at_k([[1, -1, -1], [-1, -1, -1]], 2, k=3) == 0.5


def test_no_users_is_nan_everywhere_and_distinct_lists_agrees():
    empty = np.zeros((0, 3), dtype=np.int64)
    assert math.isnan(metrics.distinct_lists_at_k(empty, k=3))
    assert math.isnan(metrics.arp_at_k(empty, [0.5, 0.5], k=3))
    assert math.isnan(metrics.tail_share_at_k(empty, [True, False], k=3))
    assert metrics.coverage_at_k(empty, 2, k=3) == 0.0
    assert math.isnan(metrics.gini_at_k(empty, 2, k=3))


def test_all_lists_empty():
    top = np.full((2, 3), -1)
    assert math.isnan(metrics.arp_at_k(top, [0.5, 0.5], k=3))
    assert math.isnan(metrics.tail_share_at_k(top, [True, False], k=3))
    assert metrics.coverage_at_k(top, 2, k=3) == 0.0
    assert math.isnan(metrics.gini_at_k(top, 2, k=3))
    assert math.isnan(metrics.entropy_at_k(top, 2, k=3))
    assert metrics.recall_at_k(top, [[0], [1]], k=3, n_items=2) == 0.0
    assert metrics.distinct_lists_at_k(top, k=3) == 0.5
    assert metrics.list_lengths(top, k=3).tolist() == [0, 0]


# the oracle test: every metric on padded lists vs per-user Python on the truncated lists ///


def _case(rng):
    U, I, G = int(rng.integers(1, 7)), int(rng.integers(1, 13)), int(rng.integers(1, 4))
    k = int(rng.integers(1, 6))
    lists, train, test = [], [], []
    for _ in range(U):
        perm = rng.permutation(I)
        n = int(rng.integers(0, min(k, I) + 1))
        lists.append([int(x) for x in perm[:n]])
        rest = perm[n:]
        train.append(sorted(int(x) for x in rest if rng.random() < 0.5))
        test.append(sorted(int(x) for x in perm if rng.random() < 0.3))
    genres = rng.random((I, G)) < 0.5
    top = np.full((U, k), -1, dtype=np.int64)
    for u, lst in enumerate(lists):
        top[u, :len(lst)] = lst
    return U, I, k, lists, train, test, genres, top


def _nanmean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _close(a, b):
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def _mix(items, genres):
    G = genres.shape[1]
    m = [0.0] * G
    for i in items:
        gs = [g for g in range(G) if genres[i, g]]
        for g in gs:
            m[g] += 1.0 / len(gs)
    tot = sum(m)
    return [x / tot for x in m] if tot > 0 else m


def _reference(U, I, k, lists, train, test, genres, c):
    count = [sum(i in t for t in train) for i in range(I)]
    pop = [x / U for x in count]
    rank = sorted(range(I), key=lambda i: (-count[i], i))
    n_head = (I + 4) // 5
    head = {i for r, i in enumerate(rank) if r < n_head}
    decile = {i: r * 10 // I for r, i in enumerate(rank)}
    disc = [1 / math.log2(j + 2) for j in range(k)]
    ref = {}
    rec, nd, cu1, cuk = [], [], [], []
    for L, T in zip(lists, test):
        if not T:
            rec.append(math.nan), nd.append(math.nan), cu1.append(math.nan), cuk.append(math.nan)
            continue
        hits = [j for j, i in enumerate(L) if i in T]
        rec.append(len(hits) / min(k, len(T)))
        nd.append(sum(disc[j] for j in hits) / sum(disc[:min(k, len(T))]))
        rel = [1.0 if i in T else 0.0 for i in L]
        cuk.append(sum(d * r for d, r in zip(disc, rel)))
        # budget 1: stop after the first consumption
        none, tot = 1.0, 0.0
        for d, r in zip(disc, rel):
            tot += none * d * r
            none *= 1 - d * r
        cu1.append(tot)
    ref["recall"], ref["ndcg"] = _nanmean(rec), _nanmean(nd)
    ref["cu1"], ref["cuk"] = _nanmean(cu1), _nanmean(cuk)
    ref["arp"] = _nanmean([sum(pop[i] for i in L) / len(L) if L else math.nan for L in lists])
    shown = [i for L in lists for i in L]
    ref["tail"] = sum(i not in head for i in shown) / len(shown) if shown else math.nan
    ref["coverage"] = len(set(shown)) / I
    cnt = [shown.count(i) for i in range(I)]
    tot = sum(cnt)
    ref["gini"] = (sum(abs(a - b) for a in cnt for b in cnt) / (2 * I * I * (tot / I))
                   if tot else math.nan)
    if not tot:
        ref["entropy"] = math.nan
    elif I == 1:
        ref["entropy"] = 1.0
    else:
        ref["entropy"] = -sum(x / tot * math.log(x / tot) for x in cnt if x) / math.log(I)
    kls = []
    for L, R in zip(lists, train):
        p = _mix(R, genres)
        if sum(p) == 0 or not L:
            kls.append(math.nan)
            continue
        q = _mix(L, genres)
        kls.append(sum(pg * math.log(pg / ((1 - ALPHA) * qg + ALPHA * pg))
                       for pg, qg in zip(p, q) if pg > 0))
    ref["miscal"] = _nanmean(kls)
    dec = []
    for d in range(10):
        vals = []
        for L, T in zip(lists, test):
            Td = [i for i in T if decile[i] == d]
            if Td:
                vals.append(sum(i in Td for i in L) / min(k, len(Td)))
        dec.append(sum(vals) / len(vals) if vals else math.nan)
    ref["decile"] = dec
    ref["distinct"] = len({frozenset(L) for L in lists}) / U
    ref["lengths"] = [len(L) for L in lists]
    ref["pop"], ref["count"] = pop, count
    return ref


def _delta_gap_reference(lists, train, groups, pop):
    out = {}
    for j, name in enumerate(metrics.USER_GROUPS):
        us = [u for u in range(len(lists)) if groups[u] == j and train[u] and lists[u]]
        if not us:
            out[name] = math.nan
            continue
        gp = sum(sum(pop[i] for i in train[u]) / len(train[u]) for u in us) / len(us)
        gr = sum(sum(pop[i] for i in lists[u]) / len(lists[u]) for u in us) / len(us)
        out[name] = (gr - gp) / gp if gp > 0 else math.nan
    return out


@pytest.mark.parametrize("seed", range(60))
def test_every_metric_on_padded_lists_matches_per_user_python(seed):
    rng = np.random.default_rng(seed)
    U, I, k, lists, train, test, genres, top = _case(rng)
    ref = _reference(U, I, k, lists, train, test, genres, 1)
    kw = {"n_items": I}
    assert metrics.list_lengths(top, k).tolist() == ref["lengths"]
    assert _close(metrics.recall_at_k(top, test, k, **kw), ref["recall"])
    assert _close(metrics.ndcg_at_k(top, test, k, **kw), ref["ndcg"])
    assert _close(metrics.consumed_utility_at_k(top, test, 1, k, **kw), ref["cu1"])
    assert _close(metrics.consumed_utility_at_k(top, test, k, k, **kw), ref["cuk"])
    pop = np.array(ref["pop"])
    assert _close(metrics.arp_at_k(top, pop, k), ref["arp"])
    head = metrics.head_items(np.array(ref["count"]))
    assert _close(metrics.tail_share_at_k(top, head, k), ref["tail"])
    assert _close(metrics.coverage_at_k(top, I, k), ref["coverage"])
    assert _close(metrics.gini_at_k(top, I, k), ref["gini"])
    assert _close(metrics.entropy_at_k(top, I, k), ref["entropy"])
    assert _close(metrics.miscalibration_at_k(top, train, genres, k), ref["miscal"])
    got = metrics.decile_recall_at_k(top, metrics.as_row_sets(test, I), ref["count"], k)
    assert all(_close(a, b) for a, b in zip(got, ref["decile"]))
    assert _close(metrics.distinct_lists_at_k(top, k), ref["distinct"])
    # evaluate() gives the same numbers
    r = metrics.evaluate(top, metrics.as_row_sets(train, I), metrics.as_row_sets(test, I),
                         genres, k=k)
    for key, name in (("recall", "recall"), ("ndcg", "ndcg"), ("arp", "arp"),
                      ("tail_share", "tail"), ("coverage", "coverage"), ("gini", "gini"),
                      ("entropy", "entropy"), ("miscalibration", "miscal")):
        assert _close(r[f"{key}@{k}"], ref[name]), key
    # float relevance: padding consumes nothing
    rel = rng.random((U, I))
    want = _nanmean([sum(rel[u, i] / math.log2(j + 2) for j, i in enumerate(L))
                     for u, L in enumerate(lists)])
    assert _close(metrics.consumed_utility_at_k(top, rel, k, k), want)
    # ΔGAP, merit exposure, excess arp
    groups = rng.integers(0, 3, U)
    dg = metrics.delta_gap_at_k(top, train, groups, k, n_items=I)
    for name, v in _delta_gap_reference(lists, train, groups, ref["pop"]).items():
        assert _close(dg[name], v), name
    relevance = rng.random(I)
    D = set(sorted(range(I), key=lambda i: (-relevance[i], i))[:(I + 9) // 10])
    shown = [i for L in lists for i in L]
    exp, _ = metrics.merit_exposure_at_k(top, relevance, k)
    assert _close(exp, sum(i in D for i in shown) / len(shown) if shown else math.nan)
    full = np.tile(np.arange(min(k, I)), (U, 1))
    if full.shape[1] == k:
        assert _close(metrics.excess_arp_at_k(top, full, pop, k),
                      ref["arp"] - metrics.arp_at_k(full, pop, k))


def test_oracle_pads_users_without_enough_candidates():
    class T:
        def prob(self, users):
            return np.tile([0.4, 0.3, 0.2, 0.1], (len(users), 1))[users * 0]

    top = metrics.oracle_topk(T(), [[0, 1], [0, 1, 2, 3]], k=3, n_items=4)
    assert top.tolist() == [[2, 3, -1], [-1, -1, -1]]
    cand = np.array([True, True, False, True])
    top = metrics.oracle_topk(T(), [[0], []], k=3, n_items=4, candidates=cand)
    assert top.tolist() == [[1, 3, -1], [0, 1, 3]]


# end to end: the small catalogue of the dims repro //////////////////////////////////////////

SMALL = "synthetic:n_users=30,n_items=12,n_genres=3,interactions_per_user=8"


def test_small_catalogue_lists_hold_no_training_item_and_metrics_count_real_items():
    data = load_dataset(SMALL, seed=0)
    train, test = train_test_split(data, test_fraction=0.2, seed=0)
    model = fit(train, TrainConfig(dim=4, epochs=2), quiet=True)
    sets = train.user_items()
    cand = [np.setdiff1d(np.arange(train.n_items), sets.indices[sets.indptr[u]:
                                                               sets.indptr[u + 1]])
            for u in range(train.n_users)]
    assert any(c.size < 10 for c in cand)          # the case: fewer than k candidates
    for top in (recommend(model, train, 10), most_popular(train, 10),
                random_topk(train, 10, seed=0)):
        assert top.shape == (train.n_users, 10)
        for u in range(train.n_users):
            real = top[u][top[u] >= 0]
            assert (top[u][real.size:] == -1).all()
            assert not np.isin(real, cand[u], invert=True).any()    # no training item
            assert real.size == min(10, cand[u].size)
        r = metrics.evaluate(top, train, test, data.item_genres, k=10)
        shown = np.unique(top[top >= 0])
        assert r["coverage@10"] == shown.size / train.n_items
        pop = train.item_counts() / train.n_users
        want = np.mean([pop[top[u][top[u] >= 0]].mean() for u in range(train.n_users)
                        if (top[u] >= 0).any()])
        assert r["arp@10"] == pytest.approx(want)
    # before the fix the padding held training items, so the random and most-popular lists
    # covered every item and their arp counted training items; now a list that holds every
    # candidate of its user has the oracle's arp exactly (the same items)
    from embtab.experiments.dims import run_dims
    res = run_dims(SMALL, seeds=1, dims=(2,), progress=False,
                   train_overrides={"epochs": 1})
    by = {r["model"]: r for r in res["rows"]}
    full = all(c.size <= 10 for c in cand)
    if full:
        for m in ("random", "most_popular"):
            assert by[m]["arp@10"] == pytest.approx(by["oracle"]["arp@10"])
            assert by[m]["excess_arp@10"] == pytest.approx(0.0, abs=1e-12)


def test_rerankers_list_no_excluded_item_when_candidates_run_out():
    """E3's calibrated lists, the limited-attention lists and E5's rerankers on users with
    fewer than k listable items: short lists, never a masked (training) item."""
    from embtab.experiments.attention import attention_lists, consumed_utility
    from embtab.experiments.calibration import calibrated_lists, item_distribution
    from embtab.experiments.feedback import RERANKERS
    from embtab.train import score_matrix

    data = load_dataset(SMALL, seed=0)
    train, _ = train_test_split(data, test_fraction=0.2, seed=0)
    model = fit(train, TrainConfig(dim=4, epochs=1), quiet=True)
    scores = score_matrix(model, train, exclude_train=True).numpy()
    listable = np.isfinite(scores)
    assert (listable.sum(axis=1) < 10).any()
    item_dist = item_distribution(train)
    lists = list(calibrated_lists(scores, train, item_dist, 50, [0.0, 0.5, 1.0]).values())
    lists.append(attention_lists(scores, train, item_dist, 50, 2))
    lists += [f(scores, train, 10, 50) for f in RERANKERS.values() if f is not None]
    for top in lists:
        for u in range(train.n_users):
            real = top[u][top[u] >= 0]
            assert (top[u][real.size:] == -1).all()
            assert listable[u, real].all() and real.size == min(10, listable[u].sum())
    # a -1 slot consumes nothing: padding a list changes no consumed utility
    truth = data.truth
    top = lists[0]
    full = np.where(top >= 0, top, 0)
    cut = np.where(np.arange(10) < 3, full, -1)
    assert consumed_utility(cut, 2, truth=truth) <= consumed_utility(full, 2, truth=truth)
    assert consumed_utility(np.full_like(top, -1), 2, truth=truth) == 0.0


# the stream: empty windows and a single evaluated window ////////////////////////////////////


def _stream_data(outlier=True, flat=False):
    rng = np.random.default_rng(0)
    n = 1500
    users = rng.integers(0, 60, n)
    items = rng.integers(0, 80, n)
    ts = np.zeros(n, dtype=np.int64) if flat else rng.integers(0, 1000, n)
    if outlier:
        ts[5] = 10**15
    return Interactions.from_raw(users, items, timestamps=ts, name="ts")


def test_stream_skips_empty_windows_and_names_them():
    from embtab.experiments.stream import run_stream, section

    with pytest.warns(UserWarning, match=r"window 0 holds 99\.9% of them"):   # the outlier
        res = run_stream(_stream_data(), seeds=[0, 1], designs=("hashed", "cuckoo-grow"),
                         n_windows=5, progress=False)
    cfg = res["config"]
    assert cfg["empty_windows"] == [1, 2, 3]
    assert cfg["evaluated_windows"] == [4]
    assert {r["window"] for r in res["rows"]} == {4}
    text = "\n".join(section(res))
    assert "Windows 1, 2, 3 hold no interactions" in text
    assert "From window" not in text


def test_stream_needs_two_non_empty_windows():
    from embtab.experiments.stream import run_stream

    d2 = _stream_data(outlier=False, flat=True)
    with pytest.raises(ValueError, match="non-empty window"):
        run_stream(d2, seeds=1, designs=("hashed",), n_windows=3, progress=False)


def test_stream_two_windows_report_does_not_compare_a_window_with_itself():
    from embtab.experiments.stream import findings, run_stream

    res = run_stream("stream:n_users=60,n_items=40,n_genres=4,n_windows=2", seeds=2,
                     designs=("hashed", "cuckoo-grow"), progress=False)
    text = " ".join(findings(res))
    assert text.count("At window 1, the growing cuckoo table ") + text.count(
        "At window 1, the growing cuckoo table:") == 1
    assert "From window" not in text
    assert all(m["drift"] is None for m in res["contrasts"]["metrics"].values())


# (20 items over 6 windows run dry: the stream says so)
@pytest.mark.filterwarnings("ignore:power_law_stream.*but the stream holds only:UserWarning")
def test_stream_lists_of_few_candidates_are_short_and_match_the_oracle():
    from embtab.experiments.stream import run_stream

    res = run_stream("stream:n_users=30,n_items=20,n_genres=4,n_windows=6,"
                     "item_birth_share=0.9", seeds=1, designs=("hashed", "cuckoo-grow"),
                     progress=False)
    w1 = [r for r in res["rows"] if r["window"] == 1]
    assert w1 and all(r["excess_arp@10"] == pytest.approx(0.0, abs=1e-12) for r in w1)


def test_e3_runs_when_lists_are_short():
    from embtab.experiments.calibration import run_calibration

    res = run_calibration(SMALL, seeds=1, lams=(0.0, 0.5), candidates=(100,), dim=4,
                          train_overrides={"epochs": 1}, progress=False)
    cal = [r for r in res["rows"] if r["model"] == "mf+calibrated"]
    assert len(cal) == 2 and all(0.0 <= r["minority_share@10"] <= 1.0 for r in cal)
