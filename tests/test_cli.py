"""The embtab command line (tiny data; the full demo is exercised through run_demo's code path)."""

import json
import os
import sys
import types
from pathlib import Path

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
    assert not (tmp_path / "x").exists()   # the folder this call created is not left behind
    (tmp_path / "y").mkdir()               # one that was there stays
    assert cli.main(["experiment", "dims", "--dataset", "nonsense:1", "--quiet",
                     "--out", str(tmp_path / "y")]) == 2
    assert (tmp_path / "y").is_dir()


def test_demo(tmp_path, capsys, monkeypatch):
    real = ex.run_demo

    def tiny_demo(out, progress, seeds, dataset):
        # the demo's code path on tiny data: same experiments, same files
        s = ex.Session(TINY, {"epochs": 2, "batch_size": 256}, progress=False)
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


# user mistakes: one line on stderr, exit status 2, nothing half-written ////////////////////


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seeds", "0"], "embtab demo: error: argument --seeds: must be >= 1"),
    (["demo", "--seeds", "-1"], "embtab demo: error: argument --seeds: must be >= 1"),
    (["experiment", "dims", "--seeds", "x"], "expected a whole number >= 1, got 'x'"),
    (["experiment", "nosuch"], "invalid choice: 'nosuch'"),
    (["bench"], "the following arguments are required: name"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _bad_inputs(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("1 2\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\n")
    small = "synthetic:n_users=20,n_items=30,interactions_per_user=3"
    return [
        (["--dataset", f"interactions:{folder}"], f"{folder}: is a folder; expected a file"),
        (["--dataset", f"interactions:{tmp_path / 'missing'}"], "missing: no such file"),
        (["--dataset", f"interactions:{tmp_path / 'binary'}"], "not utf-8 text"),
        (["--dataset", f"interactions:{afile},categories={folder}"], "is a folder"),
        (["--dataset", f"interactions:{afile}"], "has 1 item; the experiments recommend k = 10"),
        (["--dataset", f"movielens:{folder}"], "u.data: no such file"),
        (["--dataset", "movielens:"], "unknown dataset spec 'movielens:'"),
        (["--dataset", "synthetic:n_users=abc"], "n_users must be an integer; got 'abc'"),
        (["--dataset", "synthetic:n_users=2.5"], "n_users must be an integer; got 2.5"),
        (["--dataset", "synthetic:zipf_s=nan"], "zipf_s must be a finite number; got nan"),
        (["--dataset", "synthetic:zipf_s=inf"], "zipf_s must be a finite number"),
        (["--dataset", "synthetic:foo=1"], "unknown key foo; synthetic data sets take "),
        (["--dataset", "synthetic:n_users"], "expected key=value, found 'n_users'"),
        (["--dataset", "synthetic:n_items=5,n_genres=2"], "has 5 items"),
        (["--dataset", small, "--out", str(afile)], "exists and is not a folder"),
        (["--dataset", small, "--out", str(afile / "sub")], f"{afile} is a file, not a folder"),
        # 10**18 items: refused by the generator's memory estimate before anything is allocated
        (["--dataset", "synthetic:n_items=1000000000000000000"],
         "more than this machine's RAM + swap"),
        (["--dataset", small, "--out", ""], "--out is empty; name an output folder"),
        (["--dataset", small, "--frobnicate", "3"], "unrecognized arguments: --frobnicate 3"),
    ]


@pytest.mark.parametrize("command", [["demo"], ["experiment", "dims"], ["experiment", "feedback"]])
# (synthetic:n_items=5: 50 interactions per user of 5 items, the capped-activity warning)
@pytest.mark.filterwarnings("ignore:power_law.*interactions per user on average:UserWarning")
def test_bad_inputs_are_one_line_errors(command, tmp_path, capsys):
    for extra, message in _bad_inputs(tmp_path):
        argv = command + ["--quiet"] + (extra if "--out" in extra else
                                        extra + ["--out", str(tmp_path / "out")])
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("embtab " + command[0]) and message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / "out" / "results.json").exists()


def test_bench_out_must_be_a_file(tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("embtab.benchmarks.module")
    fake.run = lambda quick: pytest.fail("ran before checking --out")
    fake.format_markdown = lambda r: ""
    monkeypatch.setitem(sys.modules, "embtab.benchmarks.module", fake)
    assert cli.main(["bench", "module", "--out", str(tmp_path)]) == 2
    assert "is a folder; expected a file name" in capsys.readouterr().err
    assert cli.main(["bench", "module", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    # a file where a folder should be, and (not as root) a folder it cannot write: refused
    # before the benchmark runs, not after
    (tmp_path / "afile").write_text("x")
    assert cli.main(["bench", "module", "--out", str(tmp_path / "afile" / "r.json")]) == 2
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    import os

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert cli.main(["bench", "module", "--out", str(ro / "r.json")]) == 2
        assert "Permission denied" in capsys.readouterr().err


def test_training_options_name_the_experiments_that_take_them(capsys):
    assert cli.main(["experiment", "collisions", "--tune"]) == 2
    err = capsys.readouterr().err
    assert "--tune does not apply to collisions (only to dims, dims-grid, budget, personas)" in err


def test_cli_and_docs_agree_on_what_demo_runs():
    import pathlib

    labels = [e.label for e in ex.REGISTRY.values() if e.in_demo]
    assert labels == ["E1", "E2", "E3", "E5"]
    said = " + ".join(labels)                                  # "E1 + E2 + E3 + E5"
    assert said in cli.__doc__ and said in ex.run_demo.__doc__
    readme = " ".join((pathlib.Path(__file__).parent.parent / "README.md").read_text().split())
    assert f"`embtab demo` runs {said}" in readme


def test_bench_names_come_from_the_benchmark_registry(tmp_path, capsys, monkeypatch):
    from embtab.benchmarks import REGISTRY

    name = "distributed"                               # in the registry, not in a fixed list
    assert name in REGISTRY
    fake = types.ModuleType(REGISTRY[name].module)
    fake.run = lambda quick: {"quick": quick}
    fake.format_markdown = lambda r: "| distributed |"
    monkeypatch.setitem(sys.modules, REGISTRY[name].module, fake)
    assert cli.main(["bench", name, "--quick"]) == 0
    assert "| distributed |" in capsys.readouterr().out


def test_experiment_dims_against_the_truth_with_intervals(tmp_path, capsys):
    # the E1 v2 command of docs/experiments.md, on tiny generator-v2 data
    out = tmp_path / "e1"
    spec = "synthetic:rank=3,n_users=60,n_items=80,n_genres=4,interactions_per_user=8"
    rc = cli.main(["experiment", "dims", "--dataset", spec, "--seeds", "2", "--quick",
                   "--quiet", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "dims.json").read_text())
    assert res["config"]["oracle"] is True and res["config"]["seeds"] == [0, 1]
    assert {r["model"] for r in res["rows"]} == {"oracle", "most_popular", "random", "mf"}
    assert all("excess_arp@10" in r and "dim" in r for r in res["rows"] if r["model"] == "mf")
    entry = next(e for e in res["summary"] if e.get("model") == "mf" and e["dim"] == 2)
    assert set(entry["excess_arp@10"]) == {"mean", "sd", "ci95_low", "ci95_high", "n"}
    assert (out / "dims_truth.png").exists() and "95% CI" in (out / "report.md").read_text()


def test_tune_and_loss_reach_the_experiment_or_are_refused(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_run(names, out, **kw):
        seen.update(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(ex, "run_experiments", fake_run)
    rc = cli.main(["experiment", "dims", "--tune", "--quick", "--loss", "softmax", "--quiet",
                   "--out", str(tmp_path / "a")])
    assert rc == 2 and seen["kwargs"] == {"dims": {"tune": True, "quick": True,
                                                   "loss": "softmax"}}
    rc = cli.main(["experiment", "collisions", "--tune", "--quiet",
                   "--out", str(tmp_path / "b")])
    assert rc == 2 and "--tune does not apply to collisions" in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_terminated_run_leaves_no_folder_and_says_so(tmp_path, sig):
    # A review found SIGTERM killed a run where it stood, leaving the new --out folder with
    # the run's hidden staging folder inside; SIGINT printed a whole traceback.
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    # the child first takes Python's usual actions for SIGINT and SIGTERM: a job a shell
    # starts in the background inherits SIGINT ignored, and so would the child
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
            "from embtab.cli import console_main; console_main()")
    # a run of a minute or more, stopped within a second of starting
    p = subprocess.Popen(
        [sys.executable, "-c", code,
         "experiment", "dims", "--dataset", "synthetic:n_users=3000,n_items=4000,"
         "interactions_per_user=40", "--seeds", "10", "--quiet", "--out", str(out)],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.glob(".embtab-run-*"))):   # the run has started
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(getattr(signal, sig))
        err = p.communicate(timeout=60)[1]
    finally:  # no process or pipe left behind for a later test to trip over
        if p.poll() is None:
            p.kill()
            p.communicate()
        p.stderr.close()
    # ended by the signal itself (a shell loop stops for it), after one line, no traceback
    assert p.returncode == -getattr(signal, sig), err
    assert f"interrupted ({sig})" in err and "Traceback" not in err
    assert not out.exists()   # the folder this run created is gone, staging folder and all


def test_a_process_forked_by_a_command_gets_the_default_sigterm_back():
    # A review: workers forked while the handler was in place (a benchmark's ranks) inherited
    # it, printed a traceback when their launcher stopped them, or outlived it.
    import os
    import signal

    import warnings

    with cli._terminate_as_interrupt(), warnings.catch_warnings():
        assert signal.getsignal(signal.SIGTERM) is cli._raise_terminated
        warnings.simplefilter("ignore", DeprecationWarning)   # (3.12: fork with threads)
        pid = os.fork()
        if pid == 0:   # the child: the default action, so SIGTERM ends it at once
            os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # restored after the command


@pytest.mark.parametrize("argv, message", [
    (["experiment", "rerank-speed", "--quick", "--dataset", "movielens:/nonexistent"],
     "--dataset does not apply to rerank-speed, which makes its own workload"),
    (["experiment", "rerank-speed", "--quick", "--seeds", "7"],
     "--seeds does not apply to rerank-speed"),
])
def test_options_an_experiment_does_not_read_are_refused(argv, message, tmp_path, capsys):
    # before, the bad path was never read and a normal report came out (exit 0)
    assert cli.main(argv + ["--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["experiment", "dims", "--seeds", "1", "--seeds", "2"], "argument --seeds: given twice"),
    (["experiment", "dims", "--dataset", "synthetic", "--dataset", "stream"],
     "argument --dataset: given twice"),
    (["demo", "--out", "a", "--out", "b"], "argument --out: given twice"),
    (["bench", "rerank", "--isa", "avx2", "--isa", "auto"], "argument --isa: given twice"),
    (["experiment", "dims", "--seeds", "1000000000000"], "argument --seeds: must be at most 10,000"),
])
def test_an_option_given_twice_or_too_many_seeds_is_refused(argv, message, capsys):
    # the last value won silently; a huge --seeds ended in a bare MemoryError
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_blocked_output_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    # found only after every model had trained (minutes to hours on a full run)
    import dataclasses

    from embtab.experiments import registry

    def no_training(*a, **k):
        raise AssertionError("trained before the output folder was checked")

    entry = registry.get("dims")
    monkeypatch.setitem(registry.REGISTRY, "dims", dataclasses.replace(entry, run=no_training))
    (tmp_path / "out" / "report.md").mkdir(parents=True)
    assert cli.main(["experiment", "dims", "--quick", "--quiet", "--out",
                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "report.md: is not a file; the run's report.md cannot replace it" in err


def test_the_stream_experiment_takes_the_default_dataset(tmp_path, monkeypatch):
    # the bare "synthetic" (the CLI's default) means the stream's own data set; the check added
    # to refuse static data refused it too
    import dataclasses

    from embtab.experiments import registry
    from embtab.experiments.stream import check_dataset

    check_dataset("synthetic")
    check_dataset("stream")
    with pytest.raises(ValueError, match="has no time line"):
        check_dataset("synthetic:n_users=10")
    seen = {}

    def fake_run(dataset, seeds, **kw):
        seen["dataset"] = dataset
        raise ValueError("stop here")

    entry = registry.get("stream")
    monkeypatch.setitem(registry.REGISTRY, "stream", dataclasses.replace(entry, run=fake_run))
    assert cli.main(["experiment", "stream", "--quick", "--quiet", "--out",
                     str(tmp_path / "o")]) == 2
    assert seen["dataset"] == "synthetic"


def test_the_stream_experiment_refuses_static_data_before_generating_it(tmp_path, capsys):
    # it generated the data set first (and printed the generator's warning), then refused it
    argv = ["experiment", "stream", "--quick", "--quiet", "--dataset",
            "synthetic:n_users=100,n_items=150", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no time line" in err


def test_warnings_are_one_line_named_by_the_command(tmp_path):
    # (the console script's display; main() called directly keeps Python's, so that a caller
    # can record the warnings)
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1]),
           "PYTHONWARNINGS": "always"}
    r = subprocess.run([sys.executable, "-m", "embtab", "experiment", "collisions", "--quick",
                        "--quiet", "--dataset", "synthetic:n_users=100,n_items=150", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln]
    assert lines and all(ln.startswith("embtab experiment collisions: warning: power_law:")
                         for ln in lines), r.stderr
    with pytest.warns(UserWarning, match="power_law: interactions_per_user"):
        assert cli.main(["experiment", "collisions", "--quick", "--quiet", "--dataset",
                         "synthetic:n_users=100,n_items=150", "--out", str(tmp_path / "p")]) == 0
