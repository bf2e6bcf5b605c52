"""E2 at equal memory (``embtab experiment budget``): the designs fit their budgets, the
mechanism's row sharing against hand-built cases, and the run, report and CLI on tiny data."""

import json

import numpy as np
import pytest

from conftest import same_json

from embtab import cli
from embtab.data import power_law, train_test_split
from embtab.experiments import REGISTRY, render_report
from embtab.experiments import budget as bx
from embtab.experiments.runner import plot_results
from embtab.train import TrainConfig, build_model, fit, model_bytes

TINY = "synthetic:n_users=80,n_items=140,interactions_per_user=10,n_genres=5"


@pytest.fixture(scope="module")
def tiny():
    data = power_law(n_users=80, n_items=140, interactions_per_user=10, n_genres=5, seed=0)
    return data, *train_test_split(data, seed=0)


def _bytes(data, cfg):
    return bx.planned_bytes(data, cfg)


# designs at a budget ///////////////////////////////////////////////////////////////////////


def test_reference_budget_gives_the_reference_cuckoo(tiny):
    data, _, _ = tiny
    base = TrainConfig()
    ref = bx.reference_bytes(data, base)
    assert ref == _bytes(data, TrainConfig(dim=32)) == model_bytes(
        build_model(data, TrainConfig(dim=32)))["total"]
    cfg, why = bx.design_config("cuckoo", data, ref, base)
    assert why is None and cfg.dim == 32 and cfg.table == "cuckoo"


@pytest.mark.parametrize("design", list(bx.DESIGNS))
@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_each_design_is_the_largest_that_fits(tiny, design, fraction):
    data, _, _ = tiny
    base = TrainConfig()
    budget = fraction * bx.reference_bytes(data, base)
    cfg, why = bx.design_config(design, data, budget, base)
    if cfg is None:
        assert isinstance(why, str) and why
        return
    assert _bytes(data, cfg) <= budget
    if design == "cuckoo":
        bigger = TrainConfig(**{**cfg.to_dict(), "dim": cfg.dim + 1})
    else:
        assert cfg.dim == bx.REFERENCE_DIM
        m = round(cfg.rows_per_id * data.n_items)
        bigger = TrainConfig(**{**cfg.to_dict(), "rows_per_id": (m + 1) / data.n_items})
    assert _bytes(data, bigger) > budget


def test_cuckoo_does_not_fit_below_its_index(tiny):
    data, _, _ = tiny
    base = TrainConfig()
    one = _bytes(data, TrainConfig(dim=1))
    cfg, why = bx.design_config("cuckoo", data, one - 1, base)
    assert cfg is None and "index" in why
    assert bx.design_config("cuckoo", data, one, base)[0].dim == 1


def test_common_batch_per_budget():
    plans = [(0.5, "a", TrainConfig(batch_size=4096)), (0.5, "b", TrainConfig(batch_size=100)),
             (1.0, "c", TrainConfig(batch_size=4096))]
    out = bx.common_batch(plans)
    assert [c.batch_size for _, _, c in out] == [100, 100, 4096]


def test_unknown_design_and_bad_budget_are_refused():
    with pytest.raises(ValueError, match="design"):
        bx.design_config("lsh", None, 1.0, TrainConfig())
    with pytest.raises(ValueError, match="designs: unknown design 'lsh'"):
        bx.run_budget(TINY, 1, designs=("lsh",), progress=False)
    with pytest.raises(ValueError, match="budgets must be fractions > 0"):
        bx.run_budget(TINY, 1, budgets=(0.0,), progress=False)


# the mechanism against hand-built cases ////////////////////////////////////////////////////


def test_shares_with_head_hand_built():
    # table A: row 0 = items {0, 1, 2}, row 1 = {3}, row 2 = {4, 5}; item 6 has no row.
    # table B: row 0 = {0, 6}, row 1 = {1, 3, 4, 5, 2}.  Head items: 0 and 4.
    a = np.array([0, 0, 0, 1, 2, 2, -1])
    b = np.array([0, 1, 1, 1, 1, 1, 0])
    head = np.array([True, False, False, False, True, False, False])
    # A alone: 1 and 2 share with head 0; 5 shares with head 4; 0 and 4 share with no other head
    assert bx.shares_with_head([a], head).tolist() == [False, True, True, False, False, True,
                                                       False]
    # A or B: B adds 6 (with 0) and puts 1, 2, 3, 5 with head 4; 4 is with no other head in B
    assert bx.shares_with_head([a, b], head).tolist() == [False, True, True, True, False, True,
                                                          True]


def test_matched_difference_hand_built():
    # tail items 0..5 in two deciles; items 6, 7 are head and ignored for the tail group
    values = np.array([0.3, 0.1, 0.2, 0.9, 0.5, 0.4, 7.0, 8.0])
    sharing = np.array([True, False, False, True, True, False, True, False])
    tail = np.array([True] * 6 + [False] * 2)
    dec = np.array([5, 5, 5, 8, 8, 8, 0, 0])
    d = bx.matched_difference(values, sharing, tail, dec)
    # decile 5: 0.3 - mean(0.1, 0.2) = 0.15 (1 treated); decile 8: mean(0.9, 0.5) - 0.4 = 0.3
    # (2 treated): weighted (0.15 + 2 * 0.3) / 3 = 0.25
    assert d["difference"] == pytest.approx(0.25)
    assert (d["n_treated"], d["n_untreated"]) == (3, 3)
    empty = bx.matched_difference(values, np.ones(8, bool), tail, dec)
    assert np.isnan(empty["difference"]) and empty["n_treated"] == 0


def test_largest_partner_hand_built():
    rows = np.array([3, 3, 3, 0, 1, 1, -1])
    pop = np.array([0.1, 0.7, 0.7, 0.5, 0.2, 0.05, 0.9])
    # row 3 holds 0.1, 0.7, 0.7: each 0.7 item's largest partner is the other 0.7
    assert bx.largest_partner(rows, pop).tolist() == [0.7, 0.7, 0.7, 0.0, 0.05, 0.2, 0.0]


def test_mechanism_rows_read_the_hashed_item_rows(tiny):
    data, train, _ = tiny
    cfg = TrainConfig(dim=4, epochs=1, table="hashed", rows_per_id=0.25)
    model = fit(train, cfg, quiet=True)
    (rows,) = bx.item_row_sets(model, train)
    from embtab.metrics import head_items
    head = head_items(train.item_counts())
    brute = [any(head[j] and rows[j] == rows[i] for j in range(train.n_items) if j != i)
             for i in range(train.n_items)]
    assert bx.shares_with_head([rows], head).tolist() == brute
    from embtab.train import recommend
    out = bx.mechanism_rows(model, train, recommend(model, train, 10), {"seed": 0})
    assert [r["group"] for r in out] == ["tail", "head"]
    tail = out[0]
    assert tail["sharing_share"] == pytest.approx(np.mean(np.array(brute)[~head]))
    assert tail["n_sharing"] + tail["n_alone"] <= int((~head).sum())
    # a collisionless model has no shared rows, so no mechanism rows
    cuckoo = fit(train, TrainConfig(dim=4, epochs=1), quiet=True)
    assert bx.item_row_sets(cuckoo, train) == []


# the run, report and CLI ///////////////////////////////////////////////////////////////////


def test_run_writes_rows_summary_plots_and_report(tmp_path):
    res = bx.run_budget(TINY, seeds=2, budgets=(0.25, 1.0),
                        designs=("cuckoo", "hashed-items", "hashed", "cuckoo-lru"),
                        tune=False, train_overrides={"epochs": 2}, progress=False)
    mf = [r for r in res["rows"] if r["model"] == "mf"]
    assert {r["seed"] for r in mf} == {0, 1}
    assert any(r["model"] == "oracle" for r in res["rows"])
    for r in mf:
        assert r["bytes_total"] <= r["budget_bytes"]
        assert r["bytes_total"] == r["bytes_weights"] + r["bytes_index"] + r["bytes_optimizer"]
        assert r["budget_bytes"] == int(r["budget"] * res["config"]["reference_bytes"])
        for key in ("dim", "recall@10", "ndcg@10", "excess_arp@10", "tail_share@10",
                    "delta_gap@10:niche"):
            assert key in r
    # one batch size per budget
    for b in (0.25, 1.0):
        assert len({r["batch_size"] for r in mf if r["budget"] == b}) == 1
    planned = {(r["budget"], r["design"]) for r in mf}
    skipped = {(s["budget"], s["design"]) for s in res["skipped"]}
    assert planned | skipped == {(b, d) for b in (0.25, 1.0)
                                 for d in ("cuckoo", "hashed-items", "hashed", "cuckoo-lru")}
    assert not planned & skipped
    assert any(r["model"] == "mechanism" for r in res["rows"])
    s = next(e for e in res["summary"] if e.get("model") == "mf")
    assert {"mean", "sd", "ci95_low", "ci95_high", "n"} <= set(s["recall@10"])
    assert res["contrasts"] and all(c["difference"]["n"] == 2 for c in res["contrasts"])
    plots = plot_results(res, tmp_path)
    assert {p.name for p in plots} >= {"budget_0p25.png", "budget_1.png"}
    text = render_report([res], {"budget": [p.name for p in plots]})
    assert "## E2 — table designs at equal memory" in text and "**What it shows.**" in text
    for c in res["contrasts"]:
        assert f"At budget {c['budget']:g}×, {c['best']} against {c['runner_up']}" in text


def test_real_data_has_no_oracle(tmp_path):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, 600)
    items = np.minimum(rng.zipf(1.3, 600), 60)
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{u} {i}\n" for u, i in zip(users, items)))
    res = bx.run_budget(f"interactions:{path}", seeds=1, budgets=(1.0,), designs=("cuckoo",
                        "hashed"), tune=False, train_overrides={"epochs": 1}, progress=False)
    assert not any(r["model"] == "oracle" for r in res["rows"])
    mf = [r for r in res["rows"] if r["model"] == "mf"]
    assert mf and all("excess_arp@10" not in r and "delta_gap@10:diverse" in r for r in mf)
    assert all(c["metric"] != "|excess_arp@10|" for c in res["contrasts"])


def test_registered():
    assert REGISTRY["budget"].label == "E2" and not REGISTRY["budget"].in_demo


def test_cli_budget_quick(tmp_path, capsys):
    out = tmp_path / "budget"
    rc = cli.main(["experiment", "budget", "--dataset", TINY, "--quick", "--quiet",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "budget.json").read_text())
    assert res["config"]["budgets"] == list(bx.QUICK_BUDGETS)
    assert res["config"]["designs"] == list(bx.QUICK_DESIGNS)
    assert res["config"]["tuned"] and res["dataset"]["spec"] == TINY
    assert (out / "report.md").exists() and (out / "budget_1.png").exists()
    assert str(out / "report.md") in capsys.readouterr().out


def test_two_rows_per_item_in_one_table():
    # double hashing: item 0 in rows {0, 1}, item 1 in {1, 2}, item 2 in {3, 3} (one row,
    # counted once), item 3 in {2, 4}; head: item 1 only
    rows = np.array([[0, 1], [1, 2], [3, 3], [2, 4]])
    head = np.array([False, True, False, False])
    # 0 shares row 1 with head 1; 3 shares row 2 with head 1; 2 shares nothing; 1 has no other
    assert bx.shares_with_head([rows], head).tolist() == [True, False, False, True]
    pop = np.array([0.1, 0.6, 0.9, 0.3])
    # 0's partners: {1}; 1's: {0, 3}; 2 alone; 3's: {1}
    assert bx.largest_partner(rows, pop).tolist() == [0.6, 0.3, 0.0, 0.6]


def test_expiry_design_expires_after_one_epoch_of_batches():
    plans = [(1.0, "cuckoo-expire", TrainConfig(on_full="evict_lru", rows_per_id=0.5,
                                                expire_after=1, batch_size=100)),
             (1.0, "cuckoo", TrainConfig(batch_size=100))]
    out = bx.with_expiry(plans, 1001)
    assert out[0][2].expire_after == 11 and out[1][2].expire_after is None


def test_merge_runs_equals_one_run_over_both_seeds():
    kw = dict(budgets=(1.0,), designs=("cuckoo", "hashed"), tune=False,
              train_overrides={"epochs": 1}, progress=False)
    both = bx.run_budget(TINY, seeds=[0, 1], **kw)
    merged = bx.merge_runs([bx.run_budget(TINY, seeds=[0], **kw),
                            bx.run_budget(TINY, seeds=[1], **kw)])
    assert merged["config"]["seeds"] == [0, 1]
    assert merged["rows"] == both["rows"]
    assert same_json(merged["summary"], both["summary"])
    assert same_json(merged["contrasts"], both["contrasts"])
    with pytest.raises(ValueError, match="share seeds"):
        bx.merge_runs([both, both])
    other = bx.run_budget(TINY, seeds=[2], **{**kw, "budgets": (0.5,)})
    with pytest.raises(ValueError, match="differ in more than their seeds"):
        bx.merge_runs([both, other])


def test_capped_designs_stay_within_budget_after_training():
    # a capped table trains nearly full, where evictions may grow its native index: the
    # bytes measured after training must still fit (the design budgets that room)
    # (on this data the LRU table's native index grew during one epoch; sized by its
    # untrained bytes alone, the model ended 370 bytes over the budget)
    res = bx.run_budget("synthetic:n_users=300,n_items=600,interactions_per_user=10", seeds=1,
                        budgets=(0.25,), designs=("cuckoo-lru",), tune=False,
                        train_overrides={"epochs": 1}, progress=False)
    mf = [r for r in res["rows"] if r["model"] == "mf"]
    assert mf
    for r in mf:
        assert r["bytes_total"] <= r["budget_bytes"], r["design"]


def test_budget_winner_follows_the_sign_of_the_paired_interval():
    from embtab.experiments import budget as bx

    # A's unpaired mean is the higher (one huge value on a seed B lacks), yet B beats A on
    # every seed both have: B wins, whatever the means of unpaired seeds
    vals = {"A": [0.5, 0.5, 0.5, 2.0], "B": [0.55, 0.56, 0.55, float("nan")]}
    rows = [{"model": "mf", "budget": 1.0, "design": d, "seed": s, "recall@10": v,
             "ndcg@10": v, "excess_arp@10": 0.0} for d, vs in vals.items()
            for s, v in enumerate(vs)]
    (c,) = [c for c in bx.contrasts(rows) if c["metric"] == "recall@10"]
    assert (c["best"], c["runner_up"]) == ("B", "A") and c["difference"]["ci95_low"] > 0
    (t,) = [t for t in bx.findings({"contrasts": [c]})]
    assert t.endswith("so B wins on recall@10.")
    # and were the pair reversed, the sentence would name the runner-up, never a loser
    flipped = {**c, "best": "A", "runner_up": "B",
               "difference": {k: (-v if k in ("mean",) else v) for k, v in c["difference"].items()}}
    d = c["difference"]
    flipped["difference"].update(ci95_low=-d["ci95_high"], ci95_high=-d["ci95_low"])
    assert bx.findings({"contrasts": [flipped]})[0].endswith("so B wins on recall@10.")
