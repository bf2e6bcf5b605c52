"""E5 feedback loop: controls, drift, matched-pair homogenisation, results/plots/report, CLI."""

import json

import numpy as np
import pytest
import torch

from conftest import same_json

from embtab.data import GroundTruth, power_law, power_law_v2
from embtab.feedback import (
    ARMS,
    Arm,
    DriftingTruth,
    FeedbackLoop,
    ModelTruth,
    accept_probability,
    contrasts,
    equal_bytes_rows_per_id,
    matched_pairs,
    plot_feedback,
    render_section,
    run_feedback,
)

TINY_SPEC = "synthetic:n_users=30,n_items=50,n_genres=4,interactions_per_user=5,rank=4"


@pytest.fixture(scope="module")
def tiny():
    return power_law(n_users=40, n_items=60, n_genres=4, interactions_per_user=6, seed=2)


@pytest.fixture(scope="module")
def tiny_v2():
    return power_law_v2(n_users=40, n_items=60, n_genres=4, interactions_per_user=6, rank=4,
                        seed=2)


def _loop(data, arms, **kw):
    kw = {"seed": 0, "rounds": 3, "epochs_first": 2, "epochs_per_round": 1, "candidates": 30,
          **kw}
    return FeedbackLoop(data, data.truth, arms=arms, **kw)


def test_loop_mechanics(tiny):
    loop = _loop(tiny, tuple(ARMS))
    before = {a: loop.data[a].n_interactions for a in ARMS}
    for _ in range(3):
        prev = {a: loop.consumed[a].copy() for a in ARMS}
        rows = loop.step()
        for row in rows:
            a = row["arm"]
            added = int(loop.consumed[a].sum() - prev[a].sum())
            # consumption grows by exactly the accepted items (none were consumed before)
            assert added == round(row["accepted"] * tiny.n_users)
            if ARMS[a].data == "feedback":
                assert loop.data[a].n_interactions == before[a] + added
                assert loop.consumed[a][loop.data[a].users, loop.data[a].items].all()
                assert loop.consumed[a].sum() == loop.data[a].n_interactions
            elif ARMS[a].data == "frozen":
                assert loop.data[a].n_interactions == tiny.n_interactions
            before[a] = loop.data[a].n_interactions
        byarm = {r["arm"]: r for r in rows}
        assert byarm["oracle"]["utility_ratio"] == 1.0 and byarm["oracle"]["homogenisation"] == 0
        assert byarm["oracle"]["accepted"] > 0
        for r in rows:
            assert 0 <= r["gini@10"] <= 1 and 0 < r["coverage@10"] <= 1
            assert r["drift"] >= 0 and 0 <= r["jaccard"] <= 1
            assert r["homogenisation"] == r["jaccard"] - byarm["oracle"]["jaccard"]
    org = tiny.users * tiny.n_items + tiny.items
    for a in ARMS:
        d = loop.data[a]
        assert np.isin(org, d.users * d.n_items + d.items).all()


def test_frozen_control_trains_once_with_the_feedback_arms_total_epochs(tiny):
    arms = ("cuckoo-d64", "cuckoo-d64-frozen", "oracle")
    loop = _loop(tiny, arms, rounds=4, epochs_first=3, epochs_per_round=2)
    for _ in range(4):
        loop.step()
    # the feedback arm: 3 epochs in round 1, then 2 per round -> 3 + 3 * 2 = 9 by round 4
    assert loop.models["cuckoo-d64"].trainings == [3, 2, 2, 2]
    assert loop.models["cuckoo-d64-frozen"].trainings == [9]
    assert loop.frozen_epochs == sum(loop.models["cuckoo-d64"].trainings)


def test_exogenous_control_gets_the_feedback_arms_volume_from_the_truth():
    # user u likes only items 3u..3u+5 of 20 (a truth with holes), so every exogenous draw
    # must land there and never where p(i|u) = 0
    U, I = 3, 20
    mix = np.eye(U)
    g = np.zeros((U, I))
    for u in range(U):
        g[u, 3 * u:3 * u + 6] = 1.0
    g /= g.sum(axis=1, keepdims=True)
    base = power_law(n_users=U, n_items=I, n_genres=U, interactions_per_user=1, seed=0)
    truth = GroundTruth(user_mix=mix, genre_item_prob=g, popularity=np.ones(I), zipf_s=1.0,
                        beta=0.0)
    from embtab.data import Interactions

    data = Interactions(name="holes", user_ids=base.user_ids, item_ids=base.item_ids,
                        users=np.arange(U), items=3 * np.arange(U), item_genres=base.item_genres,
                        genre_names=base.genre_names, truth=truth)
    loop = FeedbackLoop(data, truth, arms=("cuckoo-d64", "cuckoo-d64-exo", "oracle"),
                        rounds=3, epochs_first=1, epochs_per_round=1, k=3)
    for _ in range(3):
        n_before = loop.data["cuckoo-d64-exo"].n_interactions
        loop.step()
        got = loop.exo_added["cuckoo-d64-exo"]
        # the matched arm's count per user, capped only by the items u likes at all
        assert (got <= loop.last_accepted["cuckoo-d64"]).all()
        assert loop.data["cuckoo-d64-exo"].n_interactions == n_before + got.sum()
    d = loop.data["cuckoo-d64-exo"]
    assert (truth.pair_prob(d.users, d.items) > 0).all()
    pairs = d.users * I + d.items
    assert np.unique(pairs).size == pairs.size


def test_exogenous_volume_equals_the_feedback_arms_per_user(tiny_v2):
    loop = _loop(tiny_v2, ("cuckoo-d64", "cuckoo-d64-exo", "oracle"))
    for _ in range(3):
        n_before = loop.data["cuckoo-d64-exo"].n_interactions
        loop.step()
        # plenty of unconsumed items with p > 0: the same count per user, not only in total
        assert np.array_equal(loop.exo_added["cuckoo-d64-exo"], loop.last_accepted["cuckoo-d64"])
        assert loop.data["cuckoo-d64-exo"].n_interactions == \
            n_before + loop.last_accepted["cuckoo-d64"].sum()
    # its users' accepted items are consumed, but never enter its training data
    d = loop.data["cuckoo-d64-exo"]
    in_data = np.zeros_like(loop.consumed["cuckoo-d64-exo"])
    in_data[d.users, d.items] = True
    loop_items = loop.consumed["cuckoo-d64-exo"] & ~loop.organic_dense
    assert loop_items.any() and not (loop_items & in_data).any()


def test_exogenous_arm_needs_an_earlier_match(tiny):
    with pytest.raises(ValueError, match="must be an earlier arm"):
        FeedbackLoop(tiny, tiny.truth, arms=("cuckoo-d64-exo", "cuckoo-d64"))
    with pytest.raises(ValueError, match="needs match"):
        Arm("x", data="exogenous")
    with pytest.raises(ValueError, match="unknown arm"):
        FeedbackLoop(tiny, tiny.truth, arms=("nope",))


def test_no_drift_leaves_preferences_bit_identical(tiny_v2):
    p0 = tiny_v2.truth.prob().copy()
    loop = _loop(tiny_v2, ("cuckoo-d8", "oracle"), eta=0.0)
    for _ in range(3):
        rows = loop.step()
    assert all(r["pref_shift"] == 0.0 for r in rows)
    for t in loop.truths.values():
        assert not t.moved
        assert np.array_equal(t.prob(), p0)
        assert np.array_equal(t.theta, tiny_v2.truth.user_factors)
    assert np.array_equal(tiny_v2.truth.prob(), p0)


def test_drift_moves_toward_consumed_items_and_stays_normalised(tiny_v2):
    truth = tiny_v2.truth
    t = DriftingTruth(truth)
    # user 0 accepts two items: θ_0 moves by η toward the mean factor profile of the two
    items = np.array([5, 9])
    psi = truth.factor_item_prob[:, items] / truth.factor_item_prob[:, items].sum(axis=0)
    want = 0.8 * truth.user_factors[0] + 0.2 * psi.mean(axis=1)
    t.drift([0, 0], items, 0.2)
    assert np.allclose(t.theta[0], want / want.sum())
    assert np.array_equal(t.theta[1:], truth.user_factors[1:])      # others do not move
    assert np.allclose(t.theta.sum(axis=1), 1) and (t.theta >= 0).all()
    p = t.prob()
    assert np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    assert np.allclose(t.pair_prob([0, 3], [9, 2]), [p[0, 9], p[3, 2]])
    # toward what was consumed: p_t of the consumed items rises for user 0
    assert (p[0, items] > truth.prob([0])[0, items]).all()
    # a hand case: θ = (1, 0), an item wholly of factor 1 -> θ = (1 - η, η)
    g = GroundTruth(user_mix=np.array([[1.0, 0.0]]),
                    genre_item_prob=np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
                    popularity=np.ones(3), zipf_s=1.0, beta=0.0)
    h = DriftingTruth(g)
    h.drift([0], [2], 0.25)
    assert np.allclose(h.theta, [[0.75, 0.25]])
    assert np.allclose(h.prob(), [[0.375, 0.375, 0.25]])
    with pytest.raises(ValueError, match="eta must be in"):
        h.drift([0], [2], 1.5)


def test_drift_on_the_fitted_truth(tiny):
    mt = ModelTruth(tiny, epochs=1)
    t = DriftingTruth(mt)
    u0, i0 = mt.vectors
    t.drift([1], [4], 0.5)
    assert np.allclose(t.theta[1], 0.5 * u0[1] + 0.5 * i0[4])
    assert np.allclose(t.prob().sum(axis=1), 1)
    assert t.prob()[1, 4] > mt.prob([1])[0, 4]


def test_eta_needs_a_driftable_truth(tiny):
    class Flat:
        n_users, n_items = tiny.n_users, tiny.n_items

        def prob(self, users=None):
            n = self.n_users if users is None else len(users)
            return np.full((n, self.n_items), 1 / self.n_items)

        def pair_prob(self, users, items):
            return np.full(len(users), 1 / self.n_items)

    with pytest.raises(ValueError, match="eta > 0 needs a mixture or softmax truth"):
        FeedbackLoop(tiny, Flat(), arms=("random",), eta=0.1)
    FeedbackLoop(tiny, Flat(), arms=("random",), eta=0.0)


def test_matched_pairs_and_jaccard_by_hand():
    # users 0, 1 like genre 0 (0.9 / 0.8); users 2, 3 genre 1; user 4 is closest to user 3
    mix = np.array([[0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    g = GroundTruth(user_mix=mix, genre_item_prob=np.eye(2), popularity=np.ones(2),
                    zipf_s=1.0, beta=0.0)
    pairs = matched_pairs(g)
    # nearest by cosine: 0->1, 1->0, 2->3, 3->4 (cos 0.999 vs 0.994 for 3->2), 4->3
    assert pairs.tolist() == [[0, 1], [2, 3], [3, 4]]
    from embtab.experiments.feedback import _jaccard

    c = np.zeros((5, 4), bool)
    c[0, [0, 1]] = c[1, [1, 2]] = True          # {0,1} vs {1,2}: 1/3
    c[2, [3]] = c[3, [3]] = True                # {3} vs {3}: 1
    # pair (3, 4): {3} vs {}: 0
    assert _jaccard(c, pairs) == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_equal_bytes_hashed_table(tiny):
    from embtab.train import TrainConfig, build_model, table_bytes

    for dim in (4, 64):
        r = equal_bytes_rows_per_id(tiny, dim)
        c = table_bytes(build_model(tiny, TrainConfig(dim=dim)).items)
        h = table_bytes(build_model(tiny, TrainConfig(dim=dim, table="hashed",
                                                      rows_per_id=r)).items)
        # the hashed weights take the cuckoo weights + ID map, to rounding and one spare row
        assert h["index"] == 0 and r > 1.0
        assert abs(h["weights"] - (c["weights"] + c["index"])) <= 4 * dim * 1.5
    loop = _loop(tiny, ("hashed-d64",))
    assert loop.models["hashed-d64"].model.items.num_embeddings == round(
        loop.rows_per_id["hashed-d64"] * tiny.n_items)


def test_acceptance_probability_and_seeding(tiny):
    pref = np.array([[0.2, 0.1, 0.05]])
    a = accept_probability(pref, np.array([0.1]))
    assert np.allclose(a, [[1.0, 1 / np.log2(3), 0.5 / 2.0]])
    kw = {"rounds": 2, "arms": ("oracle", "random", "hashed-d8"), "epochs_first": 1,
          "epochs_per_round": 1, "etas": (0.0,), "progress": False, "seeds": 1}
    r1, r2 = run_feedback(tiny, **kw), run_feedback(tiny, **kw)
    assert json.dumps(r1["rows"]) == json.dumps(r2["rows"])      # NaN-aware: same bits
    assert {(r["round"], r["arm"]) for r in r1["rows"]} == {
        (t, a) for t in range(3) for a in kw["arms"]}


def test_outputs(tiny_v2, tmp_path):
    res = run_feedback(tiny_v2, seeds=2, rounds=2, arms=(
        "cuckoo-d64", "cuckoo-d64+steck", "cuckoo-d64-frozen", "oracle", "random"),
        etas=(0.0, 0.2), epochs_first=1, epochs_per_round=1, candidates=20, progress=False)
    json.dumps(res, allow_nan=True)
    rows = res["rows"]
    assert {"arm", "round", "seed", "eta", "homogenisation", "utility_gini",
            "drift:niche"} <= set(rows[-1])
    assert len(rows) == 2 * 2 * 3 * 5
    s = next(e for e in res["summary"] if e["arm"] == "cuckoo-d64" and e["round"] == 2
             and e["eta"] == 0.2)
    assert s["n"] == 2 and {"mean", "sd", "ci95_low", "ci95_high"} <= set(s["homogenisation"])
    c = [x for x in res["contrasts"] if x["arm"] == "cuckoo-d64+steck"
         and x["metric"] == "homogenisation"]
    assert {x["eta"] for x in c} == {0.0, 0.2}
    got = next(x for x in c if x["eta"] == 0.0 and x["versus"] == "cuckoo-d64")["difference"]
    per_seed = [next(r["homogenisation"] for r in rows if r["arm"] == a and r["round"] == 2
                     and r["eta"] == 0.0 and r["seed"] == s) for a in ("cuckoo-d64+steck",
                                                                      "cuckoo-d64")
                for s in (0, 1)]
    assert got["mean"] == pytest.approx(np.mean([per_seed[0] - per_seed[2],
                                                 per_seed[1] - per_seed[3]]))
    assert same_json(contrasts(rows), res["contrasts"])
    p = plot_feedback(res, tmp_path / "e5.png")
    assert p.exists() and p.stat().st_size > 0
    text = "\n".join(render_section(res, [p.name]))
    assert "## E5" in text and "cuckoo-d64+steck" in text and "ideal" in text
    assert "η = 0.2" in text
    assert "Genre-mix drift of" in text and "Drift of the consumed genre mix" in text
    # Data whose items have no genres: every drift is undefined. A review found sentences of
    # "niche undefined, diverse undefined, ..." and a table of "–"; now one sentence says so.
    import copy

    from embtab.experiments.intervals import interval

    bare = copy.deepcopy(res)
    for e in bare["summary"]:
        for k in list(e):
            if k == "drift" or k.startswith("drift:"):
                e[k] = interval([])
    bare["contrasts"] = [{**c, "difference": interval([])} if c["metric"] == "drift" else c
                         for c in bare["contrasts"]]
    text = "\n".join(render_section(bare, []))
    assert "gives its items no genres, so the genre-mix drift" in text
    assert "Genre-mix drift of" not in text and "Drift of the consumed genre mix" not in text
    assert "| drift |" not in text and "Δ drift" not in text


def test_model_truth(tiny):
    t = ModelTruth(tiny, epochs=1)
    p = t.prob([0, 1, 2])
    assert p.shape == (3, tiny.n_items) and np.allclose(p.sum(1), 1)
    assert np.allclose(t.pair_prob([1, 2], [5, 7]), [p[1, 5], p[2, 7]])
    from embtab.data import Truth

    assert isinstance(t, Truth) and isinstance(tiny.truth, Truth)
    assert (t.n_users, t.n_items) == (tiny.truth.n_users, tiny.truth.n_items)


def test_cli_experiment_feedback_quick(tmp_path, capsys):
    from embtab.cli import main

    out = tmp_path / "e5"
    rc = main(["experiment", "feedback", "--quick", "--quiet", "--seeds", "2", "--out", str(out),
               "--dataset", TINY_SPEC])
    assert rc == 0
    capsys.readouterr()
    res = json.loads((out / "feedback.json").read_text())
    assert res["experiment"] == "feedback" and res["config"]["quick"]
    assert res["config"]["rounds"] == 5 and {"round", "arm", "eta"} <= set(res["rows"][0])
    assert {"ci95_low", "ci95_high"} <= set(res["summary"][0]["jaccard"])
    assert (out / "feedback.png").exists()
    assert "## E5" in (out / "report.md").read_text()


def test_quick_keeps_explicit_settings(tiny):
    kw = {"seeds": 1, "arms": ("oracle", "random"), "etas": (0.0,), "progress": False}
    # an explicit rounds=10 or epochs survives quick (only the unset ones take QUICK's values)
    r = run_feedback(tiny, quick=True, rounds=10, epochs_first=10, **kw)
    assert (r["config"]["rounds"], r["config"]["epochs_first"],
            r["config"]["epochs_per_round"]) == (10, 10, 1)
    assert max(x["round"] for x in r["rows"]) == 10
    r = run_feedback(tiny, rounds=3, **kw)
    assert (r["config"]["rounds"], r["config"]["epochs_first"],
            r["config"]["frozen_epochs"]) == (3, 10, 14)


def test_sentences_say_undefined_where_a_number_is_missing():
    # a table cell shows "–"; a sentence said "users get – of the oracle's utility" (a review)
    from embtab.experiments.feedback import _ci, _ci_said
    assert _ci({"mean": None}) == "–"
    assert _ci_said({"mean": None}) == "undefined"
    assert _ci_said({"mean": float("nan")}) == "undefined"
    assert _ci_said({"mean": 0.5, "ci95_low": 0.25, "ci95_high": 0.75, "n": 3}) == \
        "0.500 [0.250, 0.750]"


# review fixes: overrides, divergence, data without genres, argument checks ////////////////


@pytest.mark.parametrize("overrides", [{"loss": "softmax"}, {"optimizer": "adagrad"},
                                       {"lr": 0.05, "batch_size": 64, "init_std": 0.05}])
def test_an_arm_trains_with_the_overrides_it_records(tiny, overrides):
    # optimizer and loss were recorded in config["train"] while every arm trained BPR + Adam:
    # round 1 of an arm trains epochs_first epochs from scratch on the organic data, which is
    # fit() with the same config, bit for bit
    from embtab.train import TrainConfig, fit, item_vectors

    loop = FeedbackLoop(tiny, tiny.truth, arms=("cuckoo-d8",), rounds=1, epochs_first=2,
                        candidates=30, train_overrides=overrides)
    loop.step()
    got = item_vectors(loop.models["cuckoo-d8"].model, tiny)
    want = item_vectors(fit(tiny, TrainConfig(dim=8, epochs=2, seed=0, **overrides),
                            quiet=True), tiny)
    assert torch.equal(got, want)
    res = run_feedback(tiny, seeds=1, rounds=1, arms=("oracle",), etas=(0.0,),
                       train_overrides=overrides, progress=False)
    assert {k: res["config"]["train"][k] for k in overrides} == overrides


@pytest.mark.parametrize("key, value", [("epochs", 3), ("dim", 16), ("personas", 2),
                                        ("seed", 1), ("on_full", "evict_lru"),
                                        ("hash_users", True)])
def test_overrides_e5_does_not_use_are_refused(tiny, key, value):
    # they were recorded in config["train"] (or dropped) while the arms used their own
    with pytest.raises(ValueError, match=rf"train_overrides {key}={value!r} is not used by E5 "
                                         r"\(feedback\): .*E5 takes only \('loss', "):
        run_feedback(tiny, seeds=1, rounds=1, arms=("oracle",), etas=(0.0,),
                     train_overrides={key: value}, progress=False)
    with pytest.raises(ValueError, match=rf"train_overrides {key}={value!r} is not used"):
        _loop(tiny, ("cuckoo-d8",), train_overrides={key: value})


def test_the_runners_shared_epochs_is_left_to_the_other_experiments(tiny):
    # run_experiments passes one set of overrides to every experiment, through the session:
    # its epochs is theirs (E5's schedule is epochs_first / epochs_per_round)
    from types import SimpleNamespace

    kw = {"seeds": 1, "rounds": 1, "arms": ("oracle",), "etas": (0.0,), "progress": False}
    res = run_feedback(tiny, session=SimpleNamespace(overrides={"epochs": 1, "lr": 0.05}), **kw)
    assert res["config"]["train"]["lr"] == 0.05 and "epochs" not in res["config"]["train"]
    with pytest.raises(ValueError, match="train_overrides dim=4 is not used by E5"):
        run_feedback(tiny, session=SimpleNamespace(overrides={"epochs": 1, "dim": 4}), **kw)


def test_an_arm_that_diverges_raises_instead_of_ranking_nan_scores(tiny):
    loop = _loop(tiny, ("cuckoo-d8", "oracle"), train_overrides={"init_std": 1e19})
    loop.round0_rows()
    with pytest.raises(ValueError, match=r"training diverged: arm 'cuckoo-d8', epoch 1 of "
                                         r"training 1, mean loss nan"):
        loop.step()


def test_without_genres_the_reranked_arms_calibrate_to_popularity_bins(tiny_v2):
    # every item fell into one "none" category, so each user's target was that category and
    # +steck / +la listed exactly the base arm's items
    from embtab.data import Interactions

    bare = Interactions(name="nogenre", user_ids=tiny_v2.user_ids, item_ids=tiny_v2.item_ids,
                        users=tiny_v2.users, items=tiny_v2.items, truth=tiny_v2.truth)
    arms = ("cuckoo-d8", "cuckoo-d8+steck", "cuckoo-d64", "cuckoo-d64+la", "oracle")
    res = run_feedback(bare, seeds=1, rounds=1, arms=arms, etas=(0.0,), epochs_first=2,
                       candidates=20, progress=False)
    last = {r["arm"]: r for r in res["rows"] if r["round"] == 1}
    for arm, base in (("cuckoo-d8+steck", "cuckoo-d8"), ("cuckoo-d64+la", "cuckoo-d64")):
        assert last[arm]["arp@10"] != last[base]["arp@10"], arm
    assert res["config"]["rerank_categories"] == "popularity bins (head/mid/tail)"
    text = " ".join(render_section(res, []))
    assert ("The reranked arms (cuckoo-d8+steck, cuckoo-d64+la) calibrate each user's list to "
            "the user's mix of popularity bins (head/mid/tail)") in text
    assert "gives its items no genres: as in E3" in text
    res = run_feedback(tiny_v2, seeds=1, rounds=1, arms=arms, etas=(0.0,), epochs_first=1,
                       candidates=20, progress=False)
    assert res["config"]["rerank_categories"] == "genres"
    assert "calibrate each user's list to the user's mix of genres in" in \
        " ".join(render_section(res, []))


@pytest.mark.parametrize("kw, error, match", [
    ({"rounds": 2.5}, TypeError, "rounds must be an int, got float"),
    ({"rounds": 0}, ValueError, "rounds must be >= 1, got 0"),
    ({"k": 0}, ValueError, "k must be >= 1, got 0"),
    ({"k": 100}, ValueError, r"k must be at most the 60 items of data set .* got 100"),
    ({"candidates": 0}, ValueError, r"candidates must be >= k = 10 .* got 0"),
    ({"k": 3, "candidates": 2}, ValueError, r"candidates must be >= k = 3 .* got 2"),
    ({"candidates": 2.5}, TypeError, "candidates must be an int, got float"),
    ({"epochs_first": -1}, ValueError, "epochs_first must be >= 0, got -1"),
    ({"epochs_per_round": 1.5}, TypeError, "epochs_per_round must be an int, got float"),
    ({"seed": -1}, ValueError, "^seed must be >= 0, got -1"),
])
def test_the_loop_checks_its_arguments_when_built(tiny, kw, error, match):
    # candidates=0 failed in round 1 naming k, k=100 inside the reranker, rounds=2.5 was
    # truncated to 2
    with pytest.raises(error, match=match):
        _loop(tiny, ("cuckoo-d8+steck", "oracle"), **kw)


@pytest.mark.parametrize("truth_epochs, error, match", [
    (0, ValueError, "truth_epochs must be >= 1, got 0"),
    (-1, ValueError, "truth_epochs must be >= 1, got -1"),
    (2.5, TypeError, "truth_epochs must be an int, got float"),
])
def test_truth_epochs_is_checked_by_name(tiny, truth_epochs, error, match):
    # -1 and 2.5 blamed TrainConfig.epochs; 0 made an untrained random model the "truth"
    with pytest.raises(error, match=match):
        run_feedback(tiny, seeds=1, rounds=1, arms=("oracle",), etas=(0.0,),
                     truth_epochs=truth_epochs, progress=False)


def test_the_runner_refuses_an_override_e5_does_not_take_before_anything_runs(tmp_path,
                                                                              monkeypatch):
    # E5 refused such a field only when its turn came, after the run's earlier experiments
    from embtab.experiments import run_experiments, runner

    def no_session(*args, **kwargs):
        raise AssertionError("the run started before its overrides were checked")

    monkeypatch.setattr(runner, "Session", no_session)
    with pytest.raises(ValueError, match=r"train_overrides dim=8 is not used by E5"):
        run_experiments(["calibration", "feedback"], tmp_path, train_overrides={"dim": 8},
                        seeds=1, quick=True, progress=False)
    assert list(tmp_path.iterdir()) == []
