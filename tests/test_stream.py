"""Online training over time windows (embtab.train.OnlineTrainer) and E2 ``stream``."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import shared_data
from embtab import cli
from embtab.data import load_dataset, power_law_stream, time_windows
from embtab.experiments import run_experiments
from embtab.experiments.stream import (
    DESIGNS,
    collision_shares,
    contrasts,
    findings,
    run_stream,
)
from embtab.nn import CuckooEmbedding, HashedEmbedding
from embtab.train import OnlineTrainer, TrainConfig

TINY = "stream:n_users=80,n_items=120,n_windows=3,interactions_per_window=6"


def tiny(**kw):
    args = dict(n_users=150, n_items=200, n_windows=4, seed=0)
    return power_law_stream(**{**args, **kw})


# online training /////////////////////////////////////////////////////////////////////////////


class _Recorder(torch.nn.Module):
    """An embedding module that records every ID it is asked for."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.embedding_dim = inner.embedding_dim
        self.seen: list = []

    def forward(self, ids):
        if self.training:
            self.seen.append(ids.numpy().copy())
        return self.inner(ids)


def test_online_training_passes_over_each_window_exactly_once():
    d = tiny(interactions_per_window=5)
    w = time_windows(d)
    users = _Recorder(CuckooEmbedding(8, 4))
    t = OnlineTrainer(users, CuckooEmbedding(8, 4), TrainConfig(dim=4, batch_size=64))
    for k in range(4):
        users.seen.clear()
        part = d.subset(w == k)
        loss = t.train_window(part, d.item_ids[np.unique(part.items)])
        assert math.isfinite(loss)
        got = np.sort(np.concatenate(users.seen))
        assert np.array_equal(got, np.sort(part.raw_users.view(np.int64)))   # each pair once
        assert not t.model.training
    assert t.pairs_per_window == np.bincount(w).tolist()


def test_online_training_learns_and_refuses_bad_input():
    d = tiny(interactions_per_window=8)
    w = time_windows(d)
    t = OnlineTrainer(CuckooEmbedding(8, 8), CuckooEmbedding(8, 8),
                      TrainConfig(dim=8, batch_size=32, lr=0.05))
    part = d.subset(w == 0)
    pool = d.item_ids[np.unique(part.items)]
    losses = [t.train_window(part, pool) for _ in range(4)]
    assert losses[-1] < losses[0]
    before = [p.detach().clone() for p in t.model.parameters()]
    with pytest.raises(ValueError, match="negatives must be a non-empty 1-D array"):
        t.train_window(part, pool[:0])
    with pytest.raises(ValueError, match="negatives must be"):
        t.train_window(part, pool.astype(np.float64))
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
    assert t.pairs_per_window == [part.n_interactions] * 4
    with pytest.raises(ValueError, match="BPR only"):
        OnlineTrainer(CuckooEmbedding(8, 8), CuckooEmbedding(8, 8),
                      TrainConfig(dim=8, loss="softmax"))
    with pytest.raises(ValueError, match="same embedding_dim"):
        OnlineTrainer(CuckooEmbedding(8, 8), CuckooEmbedding(8, 4), TrainConfig(dim=8))
    with pytest.raises(ValueError, match="single-vector model"):  # failed later, in scoring
        OnlineTrainer.empty(TrainConfig(dim=8, personas=2), 10, 10)


# collision shares ////////////////////////////////////////////////////////////////////////////


def test_collision_shares_hand_example():
    # IDs: a, b share row 4; c alone in row 1; d, e, f share row 0; g has no row.
    # lookups:  a=2, b=0, c=5, d=1, e=1, f=1, g=10  (total 20)
    r = collision_shares([4, 4, 1, 0, 0, 0, -1], [2, 0, 5, 1, 1, 1, 10])
    assert r["collision_id_share"] == pytest.approx(5 / 7)       # a, b, d, e, f
    assert r["collision_lookup_share"] == pytest.approx(5 / 20)  # 2 + 0 + 1 + 1 + 1
    assert r["no_row_id_share"] == pytest.approx(1 / 7)
    assert r["no_row_lookup_share"] == pytest.approx(10 / 20)
    assert r["rows_in_use"] == 3
    assert math.isnan(collision_shares([0, 1], [0, 0])["collision_lookup_share"])
    with pytest.raises(ValueError, match="differ in shape"):
        collision_shares([0, 1], [1])
    with pytest.raises(ValueError, match="lookups must be"):
        collision_shares([0, 1], [1, -1])


def test_collision_shares_agree_with_the_hashed_modules_report():
    rng = np.random.default_rng(0)
    emb = HashedEmbedding(40, 4, seed=3)
    sample = rng.integers(0, 2**62, size=60)[rng.integers(0, 60, size=300)]
    uniq, counts = np.unique(sample, return_counts=True)
    rep = emb.collision_report(torch.from_numpy(sample))
    ours = collision_shares(emb.lookup(torch.from_numpy(uniq)).numpy(), counts)
    assert ours["collision_id_share"] == pytest.approx(rep["colliding_id_share"])
    assert ours["collision_lookup_share"] == pytest.approx(rep["colliding_lookup_share"])
    assert ours["rows_in_use"] == rep["rows_used"]


# the experiment //////////////////////////////////////////////////////////////////////////////


def test_stream_experiment_rows_summary_contrasts():
    res = run_stream(TINY, seeds=2, designs=DESIGNS, progress=False)
    cfg, rows = res["config"], res["rows"]
    assert cfg["n_windows"] == 3 and cfg["oracle"] is True
    mf = [r for r in rows if r["model"] == "mf"]
    assert {(r["design"], r["window"], r["seed"]) for r in mf} == {
        (d, w, s) for d in DESIGNS for w in (1, 2) for s in (0, 1)}
    for r in mf:
        for key in ("recall@10", "excess_arp@10", "delta_gap@10:all", "collision_id_share",
                    "collision_lookup_share", "rows_in_use", "bytes", "table_rows"):
            assert key in r
        assert r["bytes"] == r["bytes_weights"] + r["bytes_index"] + r["bytes_optimizer"]
        assert r["bytes_weights"] == (r["table_rows"] + 1) * cfg["dim"] * 4   # + the zero row
        assert r["bytes_optimizer"] == 2 * r["bytes_weights"] + 4            # Adam + its step
        if r["design"] == "hashed":
            assert r["table_rows"] == cfg["start_rows"]
        else:
            assert r["collision_id_share"] == 0.0 and r["collision_lookup_share"] == 0.0
        if r["design"] in ("cuckoo-lru", "cuckoo-lfu"):
            assert r["rows_in_use"] <= cfg["start_rows"]
    oracle = [r for r in rows if r["model"] == "oracle"]
    assert all(r["excess_arp@10"] == 0.0 for r in oracle)
    assert {r["model"] for r in rows} == {"mf", "oracle", "most_popular_recent", "random"}
    e = next(x for x in res["summary"] if x.get("design") == "hashed" and x["window"] == 2)
    assert e["recall@10"]["n"] == 2 and set(e["recall@10"]) >= {"mean", "ci95_low", "ci95_high"}
    c = res["contrasts"]["metrics"]
    assert set(c) == {"recall@10", "excess_arp@10"}
    # the drift is the per-seed difference of the two windows' gaps
    by = {(r["design"], r["window"], r["seed"]): r["recall@10"] for r in mf}
    gap = lambda w, s: by[("cuckoo-grow", w, s)] - by[("hashed", w, s)]  # noqa: E731
    assert c["recall@10"]["drift"]["mean"] == pytest.approx(
        np.mean([gap(2, s) - gap(1, s) for s in (0, 1)]))
    assert len(findings(res)) == 5


def test_contrasts_state_a_direction_only_when_the_interval_excludes_zero():
    rows = []
    for s, (g1, g2) in enumerate([(0.10, 0.30), (0.12, 0.33), (0.11, 0.31)]):
        for w, gap in ((1, g1), (2, g2)):
            rows.append({"model": "mf", "design": "cuckoo-grow", "window": w, "seed": s,
                         "recall@10": 0.5, "delta_gap@10:all": 0.2})
            rows.append({"model": "mf", "design": "hashed", "window": w, "seed": s,
                         "recall@10": 0.5 - gap, "delta_gap@10:all": 0.2 + 0.01 * (s - 1)})
    res = {"contrasts": contrasts(rows, ("hashed", "cuckoo-grow"))}
    assert set(res["contrasts"]["metrics"]) == {"recall@10", "delta_gap@10:all"}
    text = findings(res)
    assert "loses ground to the growing cuckoo table (cuckoo − hashed recall rises)" in text[2]
    assert "no clear direction" in text[4]
    assert contrasts(rows, ("hashed",)) == {}


def test_stream_refuses_static_synthetic_data_and_data_without_timestamps(tmp_path):
    with pytest.raises(ValueError, match="no time line"):
        run_stream("synthetic:n_users=40,n_items=60,interactions_per_user=5", seeds=1,
                   progress=False)
    p = tmp_path / "clicks.txt"
    p.write_text("".join(f"{u} {i} 1.0\n" for u in range(20) for i in range(u % 5, 15)))
    with pytest.raises(ValueError, match="has no timestamps"):
        run_stream(f"interactions:{p}", seeds=1, progress=False)
    with pytest.raises(ValueError, match="designs must be"):
        run_stream(TINY, designs=("nope",), progress=False)


def test_stream_on_an_interactions_file_with_timestamps(tmp_path):
    rng = np.random.default_rng(1)
    lines = {(int(u), int(i)): int(t) for u, i, t in zip(rng.integers(0, 40, 900),
                                                         rng.zipf(1.3, 900) % 60,
                                                         rng.integers(0, 10_000, 900))}
    p = tmp_path / "clicks.csv"
    p.write_text("user,item,weight,ts\n"
                 + "".join(f"{u},{i},1,{t}\n" for (u, i), t in lines.items()))
    res = run_stream(f"interactions:{p}", seeds=1, n_windows=3,
                     designs=("hashed", "cuckoo-grow"), progress=False)
    assert res["config"]["oracle"] is False
    mf = [r for r in res["rows"] if r["model"] == "mf"]
    assert {r["window"] for r in mf} == {1, 2}
    assert all("excess_arp@10" not in r and "delta_gap@10:all" in r for r in mf)
    assert set(res["contrasts"]["metrics"]) == {"recall@10", "delta_gap@10:all"}


def test_run_experiments_writes_rows_plot_and_report(tmp_path):
    paths = run_experiments(["stream"], tmp_path, dataset=TINY, seeds=2, quick=True,
                            progress=False)
    res = json.loads((tmp_path / "stream.json").read_text())
    assert res["experiment"] == "stream" and res["rows"] and res["summary"]
    assert (tmp_path / "stream.png").stat().st_size > 0
    report = paths["report"].read_text()
    assert "## E2 — stream" in report and "stream.png" in report
    assert "From window 1 to 2, the fixed hashed table" in report


def test_cli_experiment_stream_quick(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["experiment", "stream", "--quick", "--dataset", TINY, "--out", str(out),
                     "--quiet"]) == 0
    res = json.loads((out / "stream.json").read_text())
    assert res["config"]["seeds"] == [0]
    assert "report:" in capsys.readouterr().out


def test_stream_on_movielens_100k():
    path = shared_data("ml-100k")
    res = run_stream(f"movielens:{path}", seeds=1, n_windows=2,
                     designs=("hashed", "cuckoo-grow"), progress=False)
    assert res["dataset"]["interactions"] == 100_000
    assert res["config"]["window_interactions"] == np.bincount(
        time_windows(load_dataset(f"movielens:{path}"), 2)).tolist()
    mf = [r for r in res["rows"] if r["model"] == "mf"]
    assert {r["window"] for r in mf} == {1} and len(mf) == 2
    assert all(0.0 <= r["recall@10"] <= 1.0 for r in mf)


def test_empty_trainer_builds_each_designs_item_table_without_ids():
    from embtab.nn import OnFull

    for fields, cls, on_full in ((dict(table="hashed"), HashedEmbedding, None),
                                 (dict(on_full="grow"), CuckooEmbedding, OnFull.GROW),
                                 (dict(on_full="evict_lru"), CuckooEmbedding, OnFull.EVICT_LRU),
                                 (dict(on_full="evict_lfu"), CuckooEmbedding, OnFull.EVICT_LFU)):
        t = OnlineTrainer.empty(TrainConfig(dim=4, **fields), 10, 30)
        items, users = t.model.items, t.model.users
        assert type(items) is cls and items.num_embeddings == 30
        assert users.num_embeddings == 10 and users.num_ids == 0
        if on_full is not None:
            assert items.on_full == on_full and items.num_ids == 0


def test_expire_design_gives_back_the_rows_of_items_no_longer_looked_up():
    from embtab.data import Interactions
    from embtab.experiments.stream import _trainer

    users = np.repeat(np.arange(1, 9), 4)
    early = Interactions.from_raw(users, 100 + np.tile(np.arange(4), 8))   # items 100..103
    late = Interactions.from_raw(users, 200 + np.tile(np.arange(4), 8))    # items 200..203
    t = _trainer("cuckoo-expire", TrainConfig(dim=4, batch_size=8), 16, 8, expire_after=2)
    t.train_window(early, early.item_ids)
    t.train_window(late, late.item_ids)          # 4 steps without a lookup of 100..103
    rows = t.model.items.lookup(torch.tensor([100, 101, 102, 103, 200, 203])).tolist()
    assert rows[:4] == [-1] * 4 and min(rows[4:]) >= 0
    grow = _trainer("cuckoo-grow", TrainConfig(dim=4, batch_size=8), 16, 8, expire_after=2)
    assert grow.model.items.init == t.model.items.init
    assert grow.model.items.seed == t.model.items.seed


def test_an_outlying_timestamp_is_refused_when_nothing_is_left_to_measure(tmp_path):
    # One interaction long before the others put all the others in the last window: the run
    # trained on one interaction, measured no user, and exited 0 with every metric undefined.
    rng = np.random.default_rng(2)
    lines = {(int(u), int(i)): int(t) for u, i, t in zip(rng.integers(0, 40, 900),
                                                         rng.zipf(1.3, 900) % 60,
                                                         rng.integers(10**8, 10**8 + 10**4, 900))}
    body = "".join(f"{u},{i},1,{t}\n" for (u, i), t in lines.items())
    p = tmp_path / "clicks.csv"
    p.write_text("user,item,weight,ts\n" + "999,1,1,5\n" + body)
    lopsided = r"window 3 holds 99\.\d% of them.*outlying timestamp"
    with pytest.warns(UserWarning, match=lopsided):
        with pytest.raises(ValueError, match=r"leaves nothing to measure.*outlying timestamps"):
            run_stream(f"interactions:{p}", seeds=1, n_windows=4, designs=("hashed",),
                       progress=False)
    # early interactions of users who come back to an item seen early: measurable, and run,
    # with the warning that nearly everything is in one window
    u0, u1 = 40, 41
    p.write_text("user,item,weight,ts\n" + f"{u0},7,1,5\n{u1},8,1,6\n"
                 + f"{u0},8,1,{10**8 + 5000}\n" + body)
    with pytest.warns(UserWarning, match=lopsided):
        res = run_stream(f"interactions:{p}", seeds=1, n_windows=4, designs=("hashed",),
                         progress=False)
    assert res["config"]["window_interactions"][:3] == [2, 0, 0]
    assert res["config"]["evaluated_windows"] == [3]


def test_a_first_window_with_one_item_runs_with_its_default_start_rows():
    # nearly every item is born late: window 0 held one item, start_rows defaulted to 1 and
    # the run was refused with advice (lower batch_size, raise start_rows) the CLI cannot take
    res = run_stream("stream:n_users=30,n_items=40,n_windows=3,item_birth_share=0.975",
                     seeds=1, quick=True, progress=False)
    assert res["config"]["start_rows"] == 2 and res["config"]["start_rows_default"]
    assert res["rows"]
