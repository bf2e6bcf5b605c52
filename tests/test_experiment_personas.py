"""E6 personas: rows, summary, contrasts, sentences and plot on tiny data; the consumption
measure of the experiment against the metric it is built on."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from conftest import shared_data
from embtab import metrics, rerank
from embtab.data import load_dataset, power_law, train_test_split
from embtab.experiments import REGISTRY
from embtab.experiments.feedback import accept_probability
from embtab.experiments.attention import attention_lists, consumed_utility
from embtab.experiments.personas import findings, run_personas

SPEC = "synthetic:crowding=1,n_users=120,n_items=200,interactions_per_user=15"


@pytest.fixture(scope="module")
def e6():
    return run_personas(SPEC, seeds=2, dim=4, personas=(2,), tune=False,
                        train_overrides={"epochs": 3}, progress=False)


def test_rows_summary_and_contrasts(e6):
    arms = {r["arm"] for r in e6["rows"]}
    assert arms == {"oracle", "single", "single+steck", "single+attention", "personas-2",
                    "personas-2+steck", "personas-2+attention"}
    for r in e6["rows"]:
        assert r["seed"] in (0, 1)
        for m in ("recall@10", "ndcg@10", "miscalibration@10", "minority_share@10",
                  "excess_arp@10", "consumed_utility@10"):
            assert math.isfinite(r[m]), (r["arm"], m)
        assert 0 <= r["consumed_utility@10"] <= e6["config"]["budget"]
    assert {r["dim"] for r in e6["rows"] if r["arm"].startswith("personas-2")} == {2}
    assert {r["dim"] for r in e6["rows"] if r["arm"].startswith("single")} == {4}
    s = {e["arm"]: e for e in e6["summary"]}
    assert s["single"]["n"] == 2 and set(s["single"]["ndcg@10"]) >= {"mean", "ci95_low"}
    kinds = {c["kind"] for c in e6["contrasts"]}
    assert kinds == {"minority_gap", "vs_single", "vs_oracle", "attention_vs_steck"}
    # a paired contrast is the mean of the per-seed differences
    c = next(c for c in e6["contrasts"] if c["kind"] == "attention_vs_steck"
             and c["arm"] == "single" and c["metric"] == "consumed_utility@10")
    by = {(r["arm"], r["seed"]): r["consumed_utility@10"] for r in e6["rows"]}
    want = np.mean([by[("single+attention", s)] - by[("single+steck", s)] for s in (0, 1)])
    assert c["difference"]["mean"] == pytest.approx(want)
    # the oracle's lists are its own reference
    assert all(r["excess_arp@10"] == 0 for r in e6["rows"] if r["arm"] == "oracle")


def test_section_plot_and_registry(e6, tmp_path):
    entry = REGISTRY["personas"]
    assert entry.label == "E6"
    paths = entry.plot(e6, tmp_path)
    assert paths[0].exists() and paths[0].stat().st_size > 0
    text = "\n".join(entry.section(e6, [p.name for p in paths]))
    assert "## E6" in text and "| single+attention |" in text
    # the table's columns: every metric the rows have (excess_arp@10 with the oracle here)
    assert "| arm | recall@10 | ndcg@10 | miscalibration@10 | minority_share@10 | excess_arp@10 |" \
        in text
    # a sentence states a direction only where its interval excludes 0
    sentences = findings(e6)
    assert sentences and all(x in text for x in sentences)
    for x in sentences:
        lo, hi = (float(v) for v in re.search(r"95% CI \[(\S+), (\S+)\]", x).groups())
        assert ("no clear direction" in x) == (lo <= 0 <= hi), x


def test_consumed_utility_with_factors_is_the_mixture_of_accept_probability():
    data = load_dataset(SPEC, seed=0)
    truth = data.truth
    train, _ = train_test_split(data, seed=0)
    top = metrics.oracle_topk(truth, train, 10)
    phi, theta = truth.factor_item_prob, truth.user_factors
    ref = np.sort(phi, axis=1)[:, -10]
    # by hand: per user, per factor, accept_probability then the exact consumption DP
    vals = []
    for u in range(train.n_users):
        acc = np.stack([accept_probability(phi[z][top[u]][None, :], np.array([ref[z]]))[0]
                        for z in range(phi.shape[0])])
        vals.append(rerank.expected_consumption(acc[None], 2, theta[u][None])[0])
    got = consumed_utility(top, 2, truth=truth)
    assert got == pytest.approx(np.mean(vals), rel=1e-12)
    with pytest.raises(ValueError, match="rows"):
        consumed_utility(top[:5], 2, truth=truth)


def test_consumed_utility_without_factors_and_without_truth():
    data = power_law(n_users=40, n_items=60, interactions_per_user=6, seed=1)
    train, test = train_test_split(data, seed=0)
    top = metrics.oracle_topk(data.truth, train, 10)
    p = data.truth.prob()
    ref = np.sort(p, axis=1)[:, -10]
    acc = accept_probability(np.take_along_axis(p, top, axis=1), ref)
    want = rerank.expected_consumption(acc, 3).mean()
    assert consumed_utility(top, 3, truth=data.truth) == pytest.approx(want, rel=1e-12)
    # no truth: the held-out items are the relevant ones
    assert consumed_utility(top, 3, test=test) == pytest.approx(
        metrics.consumed_utility_at_k(top, test, 3, 10))
    with pytest.raises(ValueError, match="truth or the held-out"):
        consumed_utility(top, 3)


def test_attention_lists_are_candidates_and_reach_the_minority():
    data = load_dataset(SPEC, seed=0)
    train, _ = train_test_split(data, seed=0)
    from embtab.experiments.calibration import categories, minority_share

    item_dist, _ = categories(train)
    # scores = the truth itself, training items masked: its top-10 crowds the minority out
    scores = data.truth.prob()
    scores[train.users, train.items] = -np.inf
    top = attention_lists(scores, train, item_dist, 50, budget=1)
    plain = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    cand = np.argsort(-scores, axis=1, kind="stable")[:, :50]
    assert all(set(top[u]) <= set(cand[u]) for u in range(train.n_users))
    assert np.isfinite(scores[np.arange(train.n_users)[:, None], top]).all()
    assert minority_share(top, train, item_dist)[0] > minority_share(plain, train, item_dist)[0]


def test_run_checks_dim_against_personas():
    with pytest.raises(ValueError, match="divisible"):
        run_personas(SPEC, seeds=1, dim=6, personas=(4,), tune=False, progress=False)


@pytest.mark.data
def test_movielens_without_oracle():
    res = run_personas(f"movielens:{shared_data('ml-100k')}", seeds=1, dim=4, personas=(2,),
                       tune=False, train_overrides={"epochs": 1}, progress=False)
    arms = {r["arm"] for r in res["rows"]}
    assert "oracle" not in arms and "personas-2+attention" in arms
    for r in res["rows"]:
        assert "excess_arp@10" not in r
        assert 0 <= r["consumed_utility@10"] <= 2 and math.isfinite(r["minority_share@10"])
