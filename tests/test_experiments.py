"""Experiments E1-E3 on tiny data: results schema, JSON, aggregation, plots, generated text."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import shared_data
from embtab import experiments as ex
from embtab.experiments.intervals import summary_with_intervals as summarize_with_intervals
from embtab.train import recommend

TINY = "synthetic:n_users=120,n_items=160,interactions_per_user=12,n_genres=6"
FAST = {"epochs": 3, "batch_size": 256}
METRICS = ("recall@10", "ndcg@10", "arp@10", "tail_share@10", "coverage@10", "gini@10",
           "entropy@10", "miscalibration@10", "decile_recall@10")


@pytest.fixture(scope="module")
def session():
    return ex.Session(TINY, FAST, progress=False)


@pytest.fixture(scope="module")
def dims(session):
    return ex.run_dims(TINY, seeds=2, dims=(1, 2, 8), progress=False, session=session)


@pytest.fixture(scope="module")
def collisions(session):
    return ex.run_collisions(TINY, seeds=1, rows_per_id=(1 / 16, 1.0), dim=8, progress=False,
                             session=session)


@pytest.fixture(scope="module")
def calibration(session):
    return ex.run_calibration(TINY, seeds=1, lams=(0.0, 0.5, 0.99), candidates=(20, 50),
                              dim=8, progress=False, session=session)


def test_dims_schema(dims):
    assert dims["experiment"] == "dims"
    assert set(dims["dataset"]) >= {"name", "users", "items", "interactions", "top1pct_share"}
    assert dims["dataset"]["users"] == 120
    mf = [r for r in dims["rows"] if r["model"] == "mf"]
    assert sorted((r["dim"], r["seed"]) for r in mf) == [(d, s) for d in (1, 2, 8) for s in (0, 1)]
    assert {r["model"] for r in dims["rows"]} == {"mf", "most_popular", "oracle", "random"}
    for r in dims["rows"]:
        assert set(METRICS) <= set(r)
        assert len(r["decile_recall@10"]) == 10
    for r in mf:
        assert r["table"] == "cuckoo" and r["collision_share"] == 0.0


def test_results_json_roundtrip_writes_null_for_nan(dims, tmp_path):
    res = copy.deepcopy(dims)
    res["rows"][0]["decile_recall@10"][3] = float("nan")
    path = ex.save_results(res, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text
    back = ex.load_results(path)
    assert back["rows"][0]["decile_recall@10"][3] is None
    assert back["rows"][1]["recall@10"] == pytest.approx(res["rows"][1]["recall@10"])
    json.loads(text)


def test_summarize_mean_and_sd(dims):
    summ = ex.summarize(dims)
    row = next(r for r in summ if r.get("dim") == 2)
    vals = [r["recall@10"] for r in dims["rows"] if r.get("dim") == 2]
    assert row["n"] == 2
    assert row["recall@10"] == pytest.approx(np.mean(vals))
    assert row["recall@10:sd"] == pytest.approx(np.std(vals, ddof=1))
    assert len(row["decile_recall@10"]) == 10


def test_collisions_measured_beside_theory(collisions):
    rows = {(r["table"], r["rows_per_id"]): r for r in collisions["rows"] if r["model"] == "mf"}
    assert rows[("cuckoo", 1.0)]["collision_share"] == 0.0
    for rpi in (1 / 16, 1.0):
        r = rows[("hashed", rpi)]
        assert r["table_rows"] == round(rpi * 160)
        assert r["collision_theory"] == pytest.approx(1 - math.exp(-1 / rpi))
        assert abs(r["collision_share"] - r["collision_theory"]) < 0.1


def test_calibration_lambda0_is_the_models_list_and_calibrates(session, calibration):
    rows = [r for r in calibration["rows"] if r["model"] == "mf+calibrated"]
    assert sorted({(r["lam"], r["candidates"]) for r in rows}) == [
        (lam, c) for lam in (0.0, 0.5, 0.99) for c in (20, 50)]
    by = {(r["lam"], r["candidates"]): r for r in rows}
    for c in (20, 50):
        assert by[(0.99, c)]["miscalibration@10"] < by[(0.0, c)]["miscalibration@10"]
    # lam = 0 reranks nothing: the same lists as the model's own top-10
    train, _ = session.split(0)
    model = session.model(session.config(dim=8, table="cuckoo", seed=0), "")
    from embtab.train import score_matrix

    lists = ex.calibrated_lists(score_matrix(model, train).numpy(), train,
                                ex.categories(train)[0], 50, [0.0])[0.0]
    np.testing.assert_array_equal(lists, recommend(model, train, 10))


def test_plots_and_report(dims, collisions, calibration, tmp_path):
    plots = {}
    for res in (dims, collisions, calibration):
        paths = ex.plot_results(res, tmp_path)
        assert paths
        for p in paths:
            assert p.exists() and 0 < p.stat().st_size < 200_000
        plots[res["experiment"]] = [p.name for p in paths]
    md = ex.render_report([dims, collisions, calibration], plots)
    for heading in ("## E1", "## E2", "## E3", "What it shows", "most-popular", "random"):
        assert heading in md
    assert "dims.png" in md and "calibration.png" in md


def _fake_dims(arps_by_seed):
    rows = []
    for seed, arps in enumerate(arps_by_seed):
        for d, arp in zip((2, 4, 8), arps):
            rows.append({"model": "mf", "seed": seed, "dim": d, "table": "cuckoo",
                         "recall@10": 0.1, "arp@10": arp, "delta_gap@10:diverse": arp - 0.2})
    res = {"experiment": "dims", "rows": rows, "config": {"oracle": False}}
    res["summary"] = summarize_with_intervals(rows, ex.dims.SUMMARY_KEYS)
    res["contrasts"] = ex.dims.contrasts(rows)
    return res


@pytest.mark.parametrize("arps, word", [
    ([(0.3, 0.2, 0.1), (0.31, 0.2, 0.11), (0.29, 0.21, 0.1)], "arp@10 falls"),
    ([(0.1, 0.2, 0.3), (0.11, 0.2, 0.31), (0.1, 0.21, 0.29)], "arp@10 rises"),
    ([(0.3, 0.2, 0.1), (0.1, 0.2, 0.3), (0.2, 0.2, 0.2)], "arp@10: no clear direction")])
def test_findings_follow_the_intervals(arps, word):
    text = " ".join(ex.dims.findings(_fake_dims(arps)))
    assert word in text


def _fake_collisions(recalls, arps):
    """E2 rows: per seed, (cuckoo, hashed at m/n=1/4) recall@10 and arp@10."""
    rows = []
    for seed, ((rc, rh), (ac, ah)) in enumerate(zip(recalls, arps)):
        for table, rpi, rec, arp, share in (("cuckoo", 1.0, rc, ac, 0.0),
                                            ("hashed", 0.25, rh, ah, 0.98)):
            rows.append({"model": "mf", "seed": seed, "dim": 8, "table": table,
                         "rows_per_id": rpi, "collision_share": share,
                         "collision_theory": share, "recall@10": rec, "arp@10": arp,
                         "coverage@10": 0.5, "decile_recall@10": [rec] * 10})
    return {"experiment": "collisions", "rows": rows}


@pytest.mark.parametrize("recalls, word", [
    ([(0.5, 0.3), (0.52, 0.31), (0.49, 0.3)], "recall@10 is below the cuckoo table's"),
    ([(0.3, 0.5), (0.31, 0.52), (0.3, 0.49)], "recall@10 is above the cuckoo table's"),
    ([(0.5, 0.3), (0.3, 0.5), (0.4, 0.4)], "recall@10: no clear direction")])
def test_collisions_findings_follow_paired_intervals(recalls, word):
    arps = [(0.2, 0.2 + 0.01 * (-1) ** s) for s in range(3)]  # means differ, interval holds 0
    text = " ".join(ex.collisions.findings(_fake_collisions(recalls, arps)))
    assert word in text
    assert "collisions: no clear direction (hashed − cuckoo arp@10" in text
    assert "raise arp@10" not in text and "lower arp@10" not in text


@pytest.mark.parametrize("mis, says", [
    ((0.30, 0.32, 0.28), "The smallest λ shown to halve miscalibration@10 at C=100 is λ=0.5"),
    ((0.20, 0.90, 0.30), "No λ up to 0.5 is shown to halve miscalibration@10 at C=100"),
    ((0.30,), "No λ up to 0.5 is shown to halve")])   # one seed: no interval, no claim
def test_calibration_halves_only_on_a_paired_interval(mis, says):
    base = {"model": "mf+calibrated", "candidates": 100, "recall@10": 0.1, "arp@10": 0.1,
            "coverage@10": 0.1, "decile_recall@10": [0.1] * 10}
    rows = []
    for seed, m in enumerate(mis):
        rows += [{**base, "seed": seed, "lam": 0.0, "ndcg@10": 0.2, "miscalibration@10": 1.0},
                 {**base, "seed": seed, "lam": 0.5, "ndcg@10": 0.19, "miscalibration@10": m}]
    text = " ".join(ex.calibration.findings({"rows": rows, "config": {"candidates": [100]}}))
    assert says in text
    assert " met" not in text  # the target's verdict is tradeoff_findings', on intervals
    # the means carry their 95% intervals over seeds (none from one seed, and it says so)
    x = np.array(mis)
    if len(mis) > 1:
        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        # (λ=0's value is 1.0 on every seed: no spread, so no interval, docs/experiments.md)
        assert (f"at λ=0.5 miscalibration@10 is {x.mean():.4f} [{x.mean() - half:.4f}, "
                f"{x.mean() + half:.4f}] against 1.0000 at λ=0") in text
    else:
        assert "(none from 1 seed): at λ=0.5 miscalibration@10 is 0.3000 against 1.0000" in text


def test_calibration_ndcg_change_is_not_taken_from_a_subset_of_seeds():
    """A seed whose ndcg@10 at λ=0 is 0 has no relative change: the sentence gives the paired
    absolute change over every seed and says why (it gave the other seed's relative change
    alone, which could move against the means printed beside it)."""
    base = {"model": "mf+calibrated", "candidates": 100, "recall@10": 0.1, "arp@10": 0.1,
            "coverage@10": 0.1, "decile_recall@10": [0.1] * 10}
    rows = []
    for seed, (n0, n5, m) in enumerate([(0.0, 0.004, 0.42), (0.005, 0.0043, 0.43)]):
        rows += [{**base, "seed": seed, "lam": 0.0, "ndcg@10": n0, "miscalibration@10": 1.0},
                 {**base, "seed": seed, "lam": 0.5, "ndcg@10": n5, "miscalibration@10": m}]
    text = " ".join(ex.calibration.findings({"rows": rows, "config": {"candidates": [100]}}))
    assert "The smallest λ shown to halve miscalibration@10 at C=100 is λ=0.5" in text
    assert "-14%" not in text  # seed 1's relative change (0.0043 / 0.005 - 1) alone
    diff = np.array([0.004, 0.0043 - 0.005])
    assert (f"ndcg@10 changes by {diff.mean():+.4f} [" in text
            and "in absolute terms, paired over 2 seeds (its relative change is undefined on "
                "1 of 2 seeds" in text)


@pytest.mark.parametrize("mis, ndcg, verdict", [
    ((0.30, 0.32, 0.28), (0.195, 0.196, 0.194), "met with both intervals"),
    ((0.80, 0.82, 0.78), (0.195, 0.196, 0.194), "missed"),
    ((0.20, 0.90, 0.45), (0.195, 0.196, 0.194), "not decided")])
def test_calibration_tradeoff_is_judged_on_paired_intervals(mis, ndcg, verdict):
    base = {"model": "mf+calibrated", "candidates": 100}
    rows = []
    for seed, (m, n) in enumerate(zip(mis, ndcg)):
        rows += [{**base, "seed": seed, "lam": 0.0, "ndcg@10": 0.2, "miscalibration@10": 1.0},
                 {**base, "seed": seed, "lam": 0.5, "ndcg@10": n, "miscalibration@10": m}]
    text = " ".join(ex.calibration.tradeoff_findings({"rows": rows}))
    assert verdict in text and "paired over 3 seeds" in text
    # one seed: no interval, no sentence
    assert ex.calibration.tradeoff_findings({"rows": rows[:2]}) == []


def test_run_experiments_writes_everything(tmp_path, session):
    paths = ex.run_experiments(["dims"], tmp_path / "out", dataset=session.data, seeds=1,
                               progress=False, train_overrides=FAST,
                               kwargs={"dims": {"dims": (2, 4)}})
    assert paths["report"].exists() and paths["results"].exists()
    combined = ex.load_results(paths["results"])
    assert isinstance(combined, list) and combined[0]["experiment"] == "dims"
    assert (tmp_path / "out" / "dims.json").exists()
    assert all(p.exists() for p in paths["plots"])


def test_heldout_miscalibration_is_zero_when_test_mirrors_train():
    from embtab.data import Interactions, RowSets

    # user 0: train items 0 (genre 0) and 1 (genre 1); test items 2 (genre 0) and 3 (genre 1)
    genres = RowSets.from_lists([[0], [1], [0], [1]], n_cols=2)
    full = Interactions(name="t", user_ids=np.array([1], np.uint64),
                        item_ids=np.array([10, 11, 12, 13], np.uint64),
                        users=np.zeros(4, np.int64), items=np.arange(4), item_genres=genres)
    train = full.subset(np.array([True, True, False, False]))
    test = full.subset(np.array([False, False, True, True]))
    assert ex.heldout_miscalibration(train, test) == pytest.approx(0.0, abs=1e-12)
    skew = full.subset(np.array([False, False, True, False]))
    # p = (.5, .5), q = (1, 0): q~ = (.995, .005) -> .5 ln(.5/.995) + .5 ln(.5/.005)
    expect = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    assert ex.heldout_miscalibration(train, skew) == pytest.approx(expect)


def test_minority_share(session):
    train, _ = session.split(0)
    w = train.genre_weights()
    # a list made of the user's own training items in proportion would match; a list of one
    # genre's items has minority share 0 for users whose main genre it is.
    sets = train.user_items()
    top = np.stack([np.resize(sets[u], 10) for u in range(train.n_users)])
    lst, hist = ex.minority_share(top, train)
    assert 0 <= hist < 1 and 0 <= lst < 1
    only0 = np.flatnonzero(w[:, 0] == 1.0)[:10]
    lst0, _ = ex.minority_share(np.tile(only0, (train.n_users, 1)), train)
    assert lst0 > 0.5   # most users' main genre is not genre 0 -> the list is "all minority"


def test_calibration_without_genres_uses_popularity_bins(tmp_path):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 60, 900)
    items = rng.zipf(1.3, 900) % 90
    path = tmp_path / "inter.txt"
    path.write_text("\n".join(f"{u} {i}" for u, i in zip(users, items)))
    res = ex.run_calibration(f"interactions:{path}", seeds=1, lams=(0.0, 0.9),
                             candidates=(20,), dim=4, train_overrides=FAST, progress=False,
                             chunk=25)
    assert res["config"]["categories"].startswith("popularity bins")
    rows = {r["lam"]: r for r in res["rows"] if r["model"] == "mf+calibrated"}
    assert math.isfinite(rows[0.0]["miscalibration@10"])
    assert rows[0.9]["miscalibration@10"] <= rows[0.0]["miscalibration@10"]


def test_calibration_chunking_does_not_change_lists(session):
    a = ex.run_calibration(TINY, seeds=1, lams=(0.5,), candidates=(20,), dim=8,
                           progress=False, session=session)
    b = ex.run_calibration(TINY, seeds=1, lams=(0.5,), candidates=(20,), dim=8,
                           progress=False, session=session, chunk=7)
    pick = [{k: v for k, v in r.items() if k != "decile_recall@10"} for r in a["rows"]]
    pick_b = [{k: v for k, v in r.items() if k != "decile_recall@10"} for r in b["rows"]]
    assert pick == pick_b


@pytest.mark.data
def test_movielens_smoke():
    path = shared_data("ml-100k")
    res = ex.run_dims(f"movielens:{path}", seeds=1, dims=(4,), train_overrides={"epochs": 1},
                      progress=False)
    assert res["dataset"]["users"] == 943 and res["dataset"]["items"] == 1682
    mf = next(r for r in res["rows"] if r["model"] == "mf")
    assert 0 <= mf["recall@10"] <= 1 and math.isfinite(mf["miscalibration@10"])


@pytest.mark.parametrize("scaling", sorted(ex.SCORE_SCALINGS))
def test_every_score_scaling_keeps_the_models_order_at_lambda0(session, scaling):
    from embtab.train import score_matrix

    train, _ = session.split(0)
    model = session.model(session.config(dim=8, table="cuckoo", seed=0), "")
    dist = ex.categories(train)[0]
    out = ex.calibrated_lists(score_matrix(model, train).numpy(), train, dist, 30, [0.0, 0.9],
                              score_scaling=scaling)
    np.testing.assert_array_equal(out[0.0], recommend(model, train, 10))
    assert out[0.9].shape == (train.n_users, 10)


def test_unknown_score_scaling(session):
    train, _ = session.split(0)
    with pytest.raises(ValueError, match="score_scaling"):
        ex.calibrated_lists(np.zeros((train.n_users, train.n_items)), train,
                            ex.categories(train)[0], 20, [0.0], score_scaling="softmax")


# the registry ///////////////////////////////////////////////////////////////////////////////


def test_registry_drives_the_cli_the_report_and_the_demo():
    from embtab import cli

    names = list(ex.REGISTRY)
    assert names[:7] == ["dims", "dims-grid", "posthoc", "budget", "collisions", "stream",
                         "calibration"]
    assert "feedback" in names
    assert ex.demo_names() == ["dims", "collisions", "calibration", "feedback"]
    reg = cli._registry()                         # the tools layer adds E4
    assert [e.label for e in reg.values()] == ["E1", "E1", "E1", "E2", "E2", "E2", "E3", "E4",
                                               "E5", "E6"]
    assert set(ex.EXPERIMENTS) == set(reg) and ex.EXPERIMENTS["dims"] is ex.run_dims
    with pytest.raises(ValueError, match="unknown experiment 'nope'; choose from dims"):
        ex.run_experiments(["nope"], "unused")


def test_the_documented_example_experiment_is_one_file_and_one_entry(tmp_path):
    # docs/experiments.md shows a complete new experiment; run exactly that code
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "experiments.md").read_text()
    code = re.search(r"## Adding an experiment.*?```python\n(.*?)```", doc, re.S).group(1)
    try:
        exec(compile(code, "docs/experiments.md", "exec"), {"__name__": "head_share"})
        assert ex.REGISTRY["head-share"].label == "E6"
        paths = ex.run_experiments(["head-share"], tmp_path, dataset=TINY, seeds=1,
                                   progress=False, train_overrides=FAST,
                                   kwargs={"head-share": {"dims": (4,)}})
        report = paths["report"].read_text()
        assert "## E6 — tail share per dimension" in report and "| mf | 4 |" in report
        assert ex.load_results(tmp_path / "head-share.json")["experiment"] == "head-share"
    finally:
        ex.REGISTRY.pop("head-share", None)


def test_seeds_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="seeds must name at least one seed"):
        ex.run_experiments(["dims"], tmp_path / "out", dataset=TINY, seeds=0)
    assert not (tmp_path / "out").exists()


def test_fewer_than_k_items_is_a_clear_error():
    tiny = "synthetic:n_users=20,n_items=6,n_genres=2,interactions_per_user=3"
    with pytest.raises(ValueError, match="has 6 items; .* need at least 10"):
        ex.run_dims(tiny, seeds=1, dims=(2,), progress=False)
    with pytest.raises(ValueError, match="has 6 items"):
        ex.run_feedback(tiny, seeds=1, rounds=1, arms=("random",), progress=False)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"embtab\[experiments\]"):
        ex.run_experiments(["dims"], tmp_path / "out", dataset=TINY, seeds=1, progress=False)
    assert not (tmp_path / "out").exists()                    # nothing ran


def test_save_results_replaces_the_file_and_a_refused_save_keeps_it(tmp_path):
    path = ex.save_results({"experiment": "dims", "rows": [1]}, tmp_path / "r.json")
    before = path.read_text()
    with pytest.raises(TypeError):                      # not JSON-serialisable: refused first
        ex.save_results({"experiment": "dims", "rows": [object()]}, path)
    assert path.read_text() == before
    ex.save_results({"experiment": "dims", "rows": [2]}, path)
    assert ex.load_results(path)["rows"] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]      # no temporary left


# posthoc: popularity calibration of a low-d vs a high-d model at equal exposure ////////////

POSTHOC_DATA = "synthetic:rank=4,n_users=120,n_items=160,interactions_per_user=12"


@pytest.fixture(scope="module")
def posthoc_session():
    return ex.Session(POSTHOC_DATA, FAST, progress=False)


@pytest.fixture(scope="module")
def posthoc(posthoc_session):
    from embtab.experiments.posthoc import run_posthoc

    return run_posthoc(POSTHOC_DATA, seeds=2, low_dim=2, high_dim=16, lams=(0.0, 0.5, 0.99),
                       candidates=50, progress=False, session=posthoc_session)


def test_posthoc_schema(posthoc):
    assert posthoc["experiment"] == "posthoc"
    rows = [r for r in posthoc["rows"] if r["model"] == "mf+popcal"]
    assert sorted({(r["seed"], r["dim"], r["lam"]) for r in rows}) == [
        (s, d, lam) for s in (0, 1) for d in (2, 16) for lam in (0.0, 0.5, 0.99)]
    for r in rows:
        for m in ("recall@10", "ndcg@10", "arp@10", "excess_arp@10"):
            assert math.isfinite(r[m])
    assert {r["model"] for r in posthoc["rows"]} == {"oracle", "most_popular", "random",
                                                    "mf+popcal"}
    e = next(e for e in posthoc["summary"] if e.get("dim") == 2 and e.get("lam") == 0.5)
    assert e["n"] == 2 and set(e["recall@10"]) == {"mean", "sd", "ci95_low", "ci95_high", "n"}
    c = posthoc["contrasts"]
    assert c["exposure"] == "excess_arp@10" and len(c["lam_matched"]) == 2
    for k in ("gap_before", "gap_after", "high_cost:recall@10", "high_cost:ndcg@10"):
        assert c[k]["n"] == 2
    for k in ("equal_exposure:recall@10", "equal_exposure:ndcg@10"):  # matched seeds only
        assert c[k]["n"] == c["match"].count("equal")
    # λ* puts the low-d model's exposure, linear in λ between grid points, on the high-d
    # model's (np.interp as the oracle); the accuracy there is interpolated the same way
    by = {(r["seed"], r["dim"], r["lam"]): r for r in rows}
    grid = [0.0, 0.5, 0.99]
    gaps = {m: [] for m in ("recall@10", "ndcg@10")}
    for seed, star, match in zip((0, 1), c["lam_matched"], c["match"]):
        target = by[(seed, 16, 0.0)]["excess_arp@10"]
        e = [by[(seed, 2, lam)]["excess_arp@10"] for lam in grid]
        below = [i for i, x in enumerate(e) if x <= target]
        if not below:
            assert (match, star) == ("short", 0.99)
        elif below[0] == 0 and e[0] < target:
            assert (match, star) == ("below", 0.0)
        else:
            assert match == "equal" and grid[max(below[0] - 1, 0)] <= star <= grid[below[0]]
            assert np.interp(star, grid, e) == pytest.approx(target, abs=1e-12)
            for m in gaps:
                low = np.interp(star, grid, [by[(seed, 2, lam)][m] for lam in grid])
                gaps[m].append(by[(seed, 16, 0.0)][m] - low)
    assert c["reached"] == [m != "short" for m in c["match"]]
    for m, v in gaps.items():
        assert c[f"equal_exposure:{m}"]["n"] == len(v)
        if v:
            assert c[f"equal_exposure:{m}"]["mean"] == pytest.approx(np.mean(v), abs=1e-12)


def test_posthoc_interpolates_the_match_between_grid_points():
    from embtab.experiments.posthoc import contrasts, findings

    def row(seed, dim, lam, exp, rec):
        return {"model": "mf+popcal", "seed": seed, "dim": dim, "lam": lam,
                "excess_arp@10": exp, "recall@10": rec, "ndcg@10": rec / 2}

    rows = []
    for seed, (e0, e1) in enumerate([(0.10, 0.00), (0.10, -0.02), (-0.01, -0.03)]):
        rows += [row(seed, 64, 0.0, 0.0, 0.5), row(seed, 64, 1.0, -0.1, 0.3),
                 row(seed, 4, 0.0, e0, 0.4), row(seed, 4, 1.0, e1, 0.2)]
    c = contrasts(rows, 4, 64)
    assert c["match"] == ["equal", "equal", "below"]
    # seed 1: exposure 0.10 at λ = 0 and −0.02 at λ = 1 reach 0 at λ = 0.1 / 0.12
    assert c["lam_matched"] == pytest.approx([1.0, 0.10 / 0.12, 0.0])
    assert c["gap_after"]["mean"] == pytest.approx(-0.01 / 3)
    rec = [0.5 - 0.2, 0.5 - (0.4 - 0.2 * 0.10 / 0.12)]   # high(0) − low(λ*), equal seeds only
    assert c["equal_exposure:recall@10"]["n"] == 2
    assert c["equal_exposure:recall@10"]["mean"] == pytest.approx(np.mean(rec))
    # the high-d model's cost at the same (interpolated) λ*; 0 on the seed with λ* = 0
    cost = [0.2, 0.2 * 0.10 / 0.12, 0.0]
    assert c["high_cost:recall@10"]["mean"] == pytest.approx(np.mean(cost))
    text = " ".join(findings({"config": {"low_dim": 4, "high_dim": 64}, "contrasts": c}))
    assert "On 1 seed the d = 4 lists were already less popular" in text
    assert "on the 2 matched seeds, λ* interpolated" in text
    assert "(per seed: 1, 0.833, 0; matched on 2 of 3 seeds, already less popular at λ = 0 on 1)" \
        in text


def test_posthoc_lambda0_rows_are_the_plain_models_lists(posthoc_session, posthoc):
    from embtab import rerank
    from embtab.experiments.posthoc import popcal_lists

    train, test = posthoc_session.split(1)
    for d in (2, 16):
        model = posthoc_session.model(posthoc_session.config(dim=d, table="cuckoo", seed=1), "")
        bins = rerank.popularity_bins(train.item_counts())
        lists = popcal_lists(model, train, bins, 50, [0.0, 0.99], chunk=37)
        plain = recommend(model, train, 10)
        np.testing.assert_array_equal(lists[0.0], plain)
        row = next(r for r in posthoc["rows"] if r["model"] == "mf+popcal" and r["seed"] == 1
                   and r["dim"] == d and r["lam"] == 0.0)
        assert row["recall@10"] == ex.session.evaluate_lists(plain, train, test)["recall@10"]
        assert not np.array_equal(lists[0.99], plain)


def test_posthoc_sentences_state_a_direction_only_when_the_interval_excludes_0(posthoc):
    from embtab.experiments.posthoc import findings

    res = copy.deepcopy(posthoc)
    c = res["contrasts"]
    c["match"] = ["equal"] * len(c["match"])
    for k in ("gap_before", "gap_after", "gap_matched", "equal_exposure:recall@10",
              "equal_exposure:ndcg@10", "high_cost:recall@10", "high_cost:ndcg@10"):
        c[k] = {"mean": 0.01, "sd": 0.01, "ci95_low": -0.005, "ci95_high": 0.02, "n": 5}
    text = " ".join(findings(res))
    assert text.count("no clear direction") == 6
    for claim in ("more accurate", "less accurate", "costs it", "raises its", "more popular",
                  "less popular"):
        assert claim not in text
    c["equal_exposure:ndcg@10"] = {"mean": 0.01, "sd": 0.01, "ci95_low": 0.002,
                                   "ci95_high": 0.02, "n": 5}
    text = " ".join(findings(res))
    assert text.count("no clear direction") == 5
    assert "is more accurate than the d = 2 model at λ*" in text
    assert "At equal exposure (" in text
    # a seed whose low-d lists are already less popular at λ = 0 has no exposure to match:
    # no equal-exposure comparison there (a review found the report saying there was)
    c["match"] = ["below"] * len(c["match"])
    text = " ".join(findings(res))
    assert "At equal exposure" not in text and "more accurate" not in text
    assert "were already less popular than the d = 16 lists at λ = 0" in text
    # results saved before λ* was interpolated: recomputed from the rows
    old = copy.deepcopy(posthoc)
    del old["contrasts"]["match"]
    assert findings(old) == findings(posthoc)
    del old["rows"]
    assert all("At equal exposure" not in t for t in findings(old))
    assert any(t.startswith("Before calibration") for t in findings(old))
    c["match"] = ["short"] * len(c["match"])  # no seed matched: no equal-exposure claim
    text = " ".join(findings(res))
    assert "No seed was matched to the d = 16 exposure, so ndcg@10 is not compared" in text
    assert "more accurate" not in text


def test_posthoc_checks_its_arguments():
    from embtab.experiments.posthoc import run_posthoc

    with pytest.raises(ValueError, match="low_dim must be smaller"):
        run_posthoc(POSTHOC_DATA, seeds=1, low_dim=16, high_dim=16, progress=False)
    with pytest.raises(ValueError, match="lams must"):
        run_posthoc(POSTHOC_DATA, seeds=1, lams=(0.5, 1.0), progress=False)


def test_posthoc_report_and_plot(posthoc, tmp_path):
    paths = ex.plot_results(posthoc, tmp_path)
    assert [p.name for p in paths] == ["posthoc.png"] and paths[0].stat().st_size > 0
    text = "\n".join(ex.REGISTRY["posthoc"].section(posthoc, [p.name for p in paths]))
    assert "| mf+popcal | 2 | 0.5 |" in text and "| mf+popcal | 16 | 0.99 |" in text
    assert "posthoc.png" in text and any(
        s in text for s in ("At equal exposure", "already less popular", "No seed was matched"))


def test_calibration_minority_share_against_history_with_intervals():
    from embtab.experiments.calibration import minority_contrasts, minority_findings

    rows = [{"model": "mf+calibrated", "seed": s, "lam": lam, "candidates": 50,
             "minority_share@10": m, "minority_share_history": 0.3}
            for s, (m0, m1) in enumerate([(0.10, 0.29), (0.12, 0.33), (0.08, 0.27)])
            for lam, m in ((0.0, m0), (0.9, m1))]
    ms = minority_contrasts(rows)
    assert [(m["candidates"], m["lam"]) for m in ms] == [(50, 0.0), (50, 0.9)]
    assert ms[0]["difference"]["mean"] == pytest.approx(-0.2)
    assert ms[0]["difference"]["n"] == 3
    text = minority_findings({"minority": ms})
    assert "is below their history's (crowded out)" in text[0]
    assert "no clear direction" in text[1] and "crowded out" not in text[1]


def test_calibration_results_carry_intervals(calibration):
    e = next(e for e in calibration["summary"]
             if e.get("model") == "mf+calibrated" and e["lam"] == 0.5 and e["candidates"] == 20)
    assert set(e["ndcg@10"]) == {"mean", "sd", "ci95_low", "ci95_high", "n"}
    assert {(m["candidates"], m["lam"]) for m in calibration["minority"]} == {
        (c, lam) for c in (20, 50) for lam in (0.0, 0.5, 0.99)}


def test_config_train_holds_only_the_fields_every_run_shares(session):
    res = ex.run_dims(TINY, seeds=1, dims=(2,), loss="softmax", progress=False, session=session)
    assert res["config"]["loss"] == "softmax" and "loss" not in res["config"]["train"]
    assert {r["loss"] for r in res["rows"] if r["model"] == "mf"} == {"softmax"}
    assert "lr" in res["config"]["train"]          # not tuned: lr is shared


def test_dims_grid_checks_every_cell_before_training(monkeypatch):
    """A grid cell the base data set cannot hold (rank 64 > 40 items) fails before any cell
    trains, not after the cells before it (finding: the default ranks on a small base)."""
    from embtab.experiments import dims_grid

    trained = []
    monkeypatch.setattr(dims_grid, "run_dims", lambda spec, *a, **kw: trained.append(spec))
    with pytest.raises(ValueError, match=r"rank must be <= min\(n_users, n_items\) = 40"):
        dims_grid.run_dims_grid("synthetic:n_users=50,n_items=40,n_genres=4,"
                                "interactions_per_user=6", seeds=1, ranks=(4, 64),
                                zipfs=(1.1,), dims=(2,), progress=False)
    assert trained == []


def test_dims_grid_sentence_names_its_difference():
    from embtab.experiments import dims_grid

    res = dims_grid.run_dims_grid("synthetic:n_users=40,n_items=50,n_genres=4,"
                                  "interactions_per_user=6", seeds=2, ranks=(2,), zipfs=(1.1,),
                                  dims=(2, 4), train_overrides={"epochs": 1}, progress=False)
    text = "\n".join(dims_grid.section(res))
    assert "excess_arp@10(d=2) − excess_arp@10(d=4) = " in text


@pytest.mark.parametrize("name", ["budget", "posthoc"])
def test_saved_results_plot_as_fresh_ones_do(tmp_path, name):
    # a results file stores NaN as null; budget's and posthoc's plots crashed on the None of
    # an interval that one seed cannot give (a review found it re-plotting saved results)
    spec = "synthetic:n_users=60,n_items=80,interactions_per_user=8,rank=4"
    paths = ex.run_experiments([name], tmp_path / "run", dataset=spec, seeds=1, quick=True,
                               progress=False, train_overrides={"epochs": 1})
    back = ex.load_results(tmp_path / "run" / f"{name}.json")
    assert "null" in (tmp_path / "run" / f"{name}.json").read_text()   # there is a None to read
    files = ex.plot_results(back, tmp_path / "again")
    assert files and all(Path(f).stat().st_size > 0 for f in files)
    assert paths["report"]


def test_calibration_caps_candidates_at_the_catalogue_and_says_so():
    # a catalogue of 80 items: C = 100 and C = 500 were both 80 in fact, and were reported as
    # two candidate counts with the same sentences
    spec = "synthetic:n_users=60,n_items=80,interactions_per_user=8"
    res = ex.run_calibration(spec, seeds=1, candidates=(50, 100, 500), lams=(0.0, 0.5),
                             progress=False, train_overrides={"epochs": 1})
    assert res["config"]["candidates"] == [50, 80]
    assert res["config"]["candidates_asked"] == [50, 100, 500]
    assert {r["candidates"] for r in res["rows"] if r["model"] == "mf+calibrated"} == {50, 80}
    text = " ".join(ex.calibration.findings(res))
    assert "C=500" not in text and "C=100" not in text


@pytest.mark.parametrize("seeds, error, match", [
    ("10", TypeError, "seeds must be an int .* got str"),      # was seeds [1, 0]
    ([1.7, 2.2], TypeError, r"seeds\[0\] must be an int, got float"),  # was [1, 2]
    (True, TypeError, "got bool"),                              # was [0]
    (2.5, TypeError, "got float"),
    ([0, 0], ValueError, "seeds must be distinct, got seed 0 more than once"),
    (0, ValueError, "at least one seed"),
    (-3, ValueError, "at least one seed"),
    ([], ValueError, "at least one seed"),
])
def test_seed_list_refuses_what_it_used_to_bend(seeds, error, match):
    from embtab.experiments.session import seed_list

    with pytest.raises(error, match=match):
        seed_list(seeds)


def test_seed_list_reads_counts_and_sequences():
    from embtab.experiments.session import seed_list

    assert seed_list(3) == [0, 1, 2] and seed_list(np.int64(2)) == [0, 1]
    assert seed_list([5, 7]) == [5, 7] and seed_list(range(1, 3)) == [1, 2]
    assert seed_list(np.array([4, 9])) == [4, 9] and seed_list((2**32 + 5,)) == [2**32 + 5]


STREAM3 = "stream:n_users=30,n_items=25,n_genres=3,n_windows=3"


@pytest.mark.parametrize("call, error, match", [
    (lambda: ex.run_dims(TINY, 1, dims=(2.5,)), TypeError, r"dims\[0\] must be an int, got float"),
    (lambda: ex.run_dims(TINY, 1, dims=()), ValueError, "dims must hold at least one value"),
    (lambda: ex.run_dims(TINY, 1, dims=(4, 4)), ValueError, "dims must hold distinct values"),
    (lambda: ex.run_calibration(TINY, 1, candidates=(5,)), ValueError,
     r"candidates\[0\] must be >= k = 10"),
    (lambda: ex.run_calibration(TINY, 1, candidates=(50.5,)), TypeError, r"candidates\[0\]"),
    (lambda: ex.run_calibration(TINY, 1, chunk=0), ValueError, "chunk must be >= 1"),
    (lambda: ex.run_calibration(TINY, 1, lams=()), ValueError, "lams must hold at least one"),
    (lambda: ex.run_calibration(TINY, 1, lams=(0.0, 1.5)), ValueError, r"lams\[1\] must be"),
    (lambda: ex.run_collisions(TINY, 1, rows_per_id=()), ValueError, "rows_per_id must hold"),
    (lambda: ex.run_collisions(TINY, 1, rows_per_id=(0.0,)), ValueError, "rows_per_id must be > 0"),
    (lambda: ex.personas.run_personas(TINY, 1, personas=(0,)), ValueError, r"personas\[0\] must be >= 2"),
    (lambda: ex.personas.run_personas(TINY, 1, budget=100), ValueError, "budget must be <= 10"),
    (lambda: ex.posthoc.run_posthoc(TINY, 1, candidates=9), ValueError, "candidates must be >= k = 10"),
    (lambda: ex.run_feedback(TINY, 1, arms=()), ValueError, "arms must hold at least one arm"),
    (lambda: ex.run_feedback(TINY, 1, candidates=5), ValueError, "candidates must be >= k"),
    (lambda: ex.budget.run_budget(TINY, 1, designs=()), ValueError, "designs must hold at least one"),
    (lambda: ex.stream.run_stream(STREAM3, 1, n_windows=6), ValueError,
     "n_windows must be None or the stream's own 3"),
])
def test_experiment_arguments_are_checked_by_name(call, error, match):
    """Sweeps and sizes are checked before anything trains: a float dim was truncated, an empty
    sweep wrote empty tables, a C under k failed inside with "k must be in [1, C]", chunk=0
    failed in range(), personas=(0,) with ZeroDivisionError, and a stream re-cut into other
    windows than its generator's paired a window with another window's truth."""
    with pytest.raises(error, match=match):
        call()


def test_calibration_without_lambda_zero_says_so(session):
    r = ex.run_calibration(TINY, seeds=1, lams=(0.5,), candidates=(20,), dim=8, progress=False,
                           session=session)
    text = " ".join(ex.calibration.findings(r))
    assert "no λ is compared with the model's own list, which is λ=0" in text


def test_runner_overrides_reach_experiments_that_load_their_own_data(tmp_path, monkeypatch):
    # dims-grid, feedback and personas (on "synthetic", which it resolves itself) load their
    # own data sets, so the runner's shared session is not theirs; its training overrides
    # were dropped and the defaults (10 epochs, batch 4096, lr 0.02) trained instead.
    import json

    import embtab.experiments.personas as personas

    spec = "synthetic:n_users=40,n_items=50,interactions_per_user=6"
    want = {"epochs": 1, "batch_size": 64, "lr": 0.05}
    monkeypatch.setattr(personas, "QUICK_DATASET",
                        "synthetic:crowding=1,n_users=40,n_items=60,n_genres=4,"
                        "interactions_per_user=6")
    runs = [
        ("dims-grid", spec, False, {"ranks": [2], "zipfs": [1.1], "dims": [2]}),
        ("feedback", spec + ",rank=2", False,
         {"rounds": 1, "etas": [0.0], "epochs_first": 1, "arms": ["cuckoo-d64", "oracle"],
          "candidates": 20}),
        ("personas", "synthetic", True,
         {"dim": 4, "personas": [2], "candidates": 20, "tune": False}),
    ]
    for name, dataset, quick, kw in runs:
        out = tmp_path / name
        ex.run_experiments([name], out, dataset=dataset, seeds=1, progress=False, quick=quick,
                           train_overrides=want, kwargs={name: kw})
        train = json.loads((out / f"{name}.json").read_text())["config"]["train"]
        # (feedback's epochs are its epochs_first / epochs_per_round, not a train field)
        keys = [k for k in want if not (name == "feedback" and k == "epochs")]
        assert {k: train.get(k) for k in keys} == {k: want[k] for k in keys}, name


def _fake_experiments():
    """Two registered no-data experiments for the runner's folder handling: 'zz-ok' writes a
    results object and a plot file; 'zz-fail' raises."""
    import contextlib

    from embtab.experiments import registry as reg

    def run_ok(*, quick=False, progress=False, value=1):
        return {"experiment": "zz-ok", "value": value}

    def run_fail(*, quick=False, progress=False):
        raise RuntimeError("boom")

    def plot(res, out_dir, prefix=""):
        p = Path(out_dir) / f"{prefix}zz-ok.png"
        p.write_bytes(b"png " + str(res["value"]).encode())
        return [p]

    def section(res, plots):
        return [f"zz-ok value {res['value']}", *plots]

    @contextlib.contextmanager
    def registered():
        saved = dict(reg.REGISTRY)
        reg.register(reg.Experiment("zz-ok", "E98", "test", run_ok, section, plot, needs_data=False))
        reg.register(reg.Experiment("zz-fail", "E99", "test", run_fail, section, needs_data=False))
        try:
            yield
        finally:
            reg.REGISTRY.clear()
            reg.REGISTRY.update(saved)

    return registered()


def test_a_failed_run_leaves_the_folder_as_it_was_and_a_rerun_replaces_its_own_files(tmp_path):
    # A run used to write each experiment's JSON and plots as it finished and the report at the
    # end: a failure in between left the old report beside the new run's results and plots.
    from embtab.experiments import run_experiments

    out = tmp_path / "out"
    with _fake_experiments():
        run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 1}}, progress=False)
        (out / "notes.txt").write_text("mine")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(RuntimeError, match="boom"):
            run_experiments(["zz-ok", "zz-fail"], out, kwargs={"zz-ok": {"value": 2}},
                            progress=False)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert {"zz-ok.json", "zz-ok.png", "results.json", "report.md", "embtab-run.json",
                "notes.txt"} == set(before)
        # a run of other experiments (here: none) replaces the report and results; the
        # earlier run's files of the experiment it did not rerun stay, and stay listed (a
        # review found a run of another experiment deleting them)
        run_experiments([], out, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [
            "embtab-run.json", "notes.txt", "report.md", "results.json", "zz-ok.json",
            "zz-ok.png"]
        assert json.loads((out / "results.json").read_text()) == []
        listed = json.loads((out / "embtab-run.json").read_text())
        assert listed["by_experiment"] == {"zz-ok": ["zz-ok.json", "zz-ok.png"]}
        # ... so that a later rerun of that experiment replaces them (they are not the user's)
        run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 3}}, progress=False)
        assert json.loads((out / "zz-ok.json").read_text())["value"] == 3


def test_a_run_never_replaces_a_file_no_earlier_run_wrote(tmp_path, monkeypatch):
    # review: the user's own report.md (or a plot-named file) in --out was replaced silently
    from embtab.experiments import run_experiments, runner

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("MY OWN REPORT")
    with _fake_experiments():
        ran = []
        real = runner._publish
        monkeypatch.setattr(runner, "_publish", lambda *a: ran.append(a) or real(*a))
        with pytest.raises(FileExistsError, match=r"report\.md would be replaced by this run, "
                                                  r"but no earlier embtab run"):
            run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 1}}, progress=False)
        assert ran == [] and sorted(p.name for p in out.iterdir()) == ["report.md"]
        # a plot's name is known only once plotted: refused before anything moves, the run's
        # files kept in a folder the error names
        (out / "report.md").unlink()
        (out / "zz-ok.png").write_text("MY OWN PLOT")
        with pytest.raises(FileExistsError, match=r"zz-ok\.png would be replaced .* this "
                                                  r"run's files are in .*embtab-run-unpublished-"):
            run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 1}}, progress=False)
        assert (out / "zz-ok.png").read_text() == "MY OWN PLOT"
        kept = [p for p in out.iterdir() if p.name.startswith("embtab-run-unpublished-")]
        assert len(kept) == 1 and {"report.md", "zz-ok.json", "zz-ok.png"} <= {
            p.name for p in kept[0].iterdir()}
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["zz-ok.png"]


def test_a_data_set_an_experiment_refuses_stops_the_run_before_any_work(tmp_path):
    from embtab.experiments import run_experiments

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"feedback experiment \(E5\) does not support stream"):
        run_experiments(["dims", "feedback"], out, dataset="stream:n_users=50,n_items=60",
                        seeds=1, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_an_interrupted_publish_puts_the_earlier_run_back(tmp_path, monkeypatch):
    import os

    from embtab.experiments import run_experiments

    out = tmp_path / "out"
    with _fake_experiments():
        run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 1}}, progress=False)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        real, calls = os.replace, []

        def interrupted(a, b):
            calls.append(b)
            if len(calls) == 5:   # part-way through moving the new files in
                raise KeyboardInterrupt
            return real(a, b)

        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 2}}, progress=False)
        monkeypatch.setattr(os, "replace", real)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        # a folder where a file of the run goes: refused before anything moves
        (out / "zz-ok.png").unlink()
        (out / "zz-ok.png").mkdir()
        with pytest.raises(OSError, match="zz-ok.png: is not a file"):
            run_experiments(["zz-ok"], out, kwargs={"zz-ok": {"value": 3}}, progress=False)
        assert json.loads((out / "zz-ok.json").read_text())["value"] == 1


def test_a_manifest_names_only_plain_files_of_the_folder(tmp_path):
    from embtab.experiments import run_experiments

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b", "keep.txt"):
        (out / name).write_text(name)
    (out / "sub").mkdir()
    for files in ("ab", ["..", "", ".", "sub", "../x", "a"], {"a": 1}):
        for name in ("report.md", "results.json"):   # the last run's (this manifest is not)
            (out / name).unlink(missing_ok=True)
        (out / "embtab-run.json").write_text(json.dumps({"files": files}))
        run_experiments([], out, progress=False)
    # only the list's plain file "a" went; the string "ab", the folder and ".." did nothing
    assert sorted(p.name for p in out.iterdir()) == ["b", "embtab-run.json", "keep.txt",
                                                     "report.md", "results.json", "sub"]
