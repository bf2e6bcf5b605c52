"""The embtab command line (tiny data; the full demo is exercised through run_demo's code path)."""

import json
import sys
import types

import pytest

from embtab import cli
from embtab import experiments as ex

TINY = "synthetic:n_users=80,n_items=100,interactions_per_user=10,n_genres=5"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("embtab ")


def test_experiment_collisions_writes_report(tmp_path, capsys):
    out = tmp_path / "e2"
    rc = cli.main(["experiment", "collisions", "--dataset", TINY, "--quick", "--quiet",
                   "--out", str(out)])
    assert rc == 0
    assert (out / "report.md").exists() and (out / "collisions.json").exists()
    res = json.loads((out / "collisions.json").read_text())
    assert res["experiment"] == "collisions" and res["config"]["seeds"] == [0]
    assert {r["rows_per_id"] for r in res["rows"] if r.get("table") == "hashed"} == \
        set(ex.ROWS_PER_ID)
    assert str(out / "report.md") in capsys.readouterr().out


def test_experiment_bad_dataset(tmp_path, capsys):
    rc = cli.main(["experiment", "dims", "--dataset", "nonsense:1", "--quiet",
                   "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "unknown dataset spec" in capsys.readouterr().err


def test_demo(tmp_path, capsys, monkeypatch):
    real = ex.run_demo

    def tiny_demo(out, progress, seeds, dataset):
        # the demo's code path on tiny data: same experiments, same files
        s = ex._Session(TINY, {"epochs": 2, "batch_size": 256}, progress=False)
        return ex.run_experiments(
            ["dims", "collisions", "calibration"], out, dataset=s.data, seeds=seeds,
            progress=progress, train_overrides={"epochs": 2, "batch_size": 256},
            kwargs={"dims": {"dims": (2, 8)}, "calibration": {"candidates": (20,)}})

    assert real.__name__ == "run_demo"
    monkeypatch.setattr(ex, "run_demo", tiny_demo)
    rc = cli.main(["demo", "--out", str(tmp_path / "demo"), "--quiet", "--seeds", "1"])
    assert rc == 0
    d = tmp_path / "demo"
    for name in ("report.md", "results.json", "dims.png", "collisions.png", "calibration.png",
                 "dims_deciles.png", "collisions_deciles.png"):
        assert (d / name).exists(), name
    assert f"report: {d / 'report.md'}" in capsys.readouterr().out
    assert [r["experiment"] for r in json.loads((d / "results.json").read_text())] == \
        ["dims", "collisions", "calibration"]


def test_bench_runs_module_and_writes_json(tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("embtab.benchmarks.module")
    fake.run = lambda quick: {"quick": quick, "ratio": 2.5}
    fake.format_markdown = lambda r: f"| ratio |\n|---|\n| {r['ratio']} |"
    monkeypatch.setitem(sys.modules, "embtab.benchmarks.module", fake)
    out = tmp_path / "b.json"
    assert cli.main(["bench", "module", "--quick", "--out", str(out)]) == 0
    assert "| 2.5 |" in capsys.readouterr().out
    assert json.loads(out.read_text()) == {"quick": True, "ratio": 2.5}


def test_bench_missing_module_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "embtab.benchmarks.table", None)
    assert cli.main(["bench", "table"]) == 2
    assert "embtab.benchmarks.table is not part of this installation" in capsys.readouterr().err


def test_experiment_rerank_speed_wraps_the_benchmark(tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("embtab.benchmarks.rerank")
    raw = {"config": {"U": 100, "n_items": 50, "C": 20, "quick": True},
           "embtab": {"1": {"us_per_user": 2.0, "users_per_s": 5e5}},
           "numpy_b": {"us_per_user": 20.0, "users": 100, "identical": True},
           "numpy_a": {"us_per_user": 200.0, "users": 10, "identical": True},
           "python": {"us_per_user": 4000.0, "users": 2, "identical": True}}
    fake.run = lambda quick: raw
    fake.format_markdown = lambda r: "| embtab | 2.0 |"
    monkeypatch.setitem(sys.modules, "embtab.benchmarks.rerank", fake)
    import embtab.benchmarks

    monkeypatch.setattr(embtab.benchmarks, "rerank", fake, raising=False)
    out = tmp_path / "e4"
    assert cli.main(["experiment", "rerank-speed", "--quick", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "rerank-speed.json").read_text())
    assert res["experiment"] == "rerank-speed"
    impls = {r["impl"]: r for r in res["rows"]}
    assert impls["plain Python"]["us_per_user"] == 4000.0
    assert impls["embtab C++ (1 thread)"]["users_per_s"] == 5e5
    assert "| embtab | 2.0 |" in (out / "report.md").read_text()
