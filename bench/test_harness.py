"""The benchmark harness and registry (plain tests; skipped under --benchmark-only)."""

import numpy as np
import pytest

from embtab.benchmarks import REGISTRY, Benchmark
from embtab.benchmarks._harness import (
    interleaved, isa_level, machine, machine_line, time_calls, zipf_ranks, zipf_stream)


def test_registry_names_every_benchmark_module():
    assert {"table", "module", "rerank", "distributed"} <= set(REGISTRY)
    for name, b in REGISTRY.items():
        assert isinstance(b, Benchmark) and b.name == name
        mod = b.load()
        assert callable(mod.run) and callable(mod.format_markdown), name


def test_registry_entry_runs_its_module(monkeypatch):
    calls = []
    mod = REGISTRY["table"].load()
    monkeypatch.setattr(mod, "run", lambda quick=False, **kw: calls.append((quick, kw)) or {"ok": 1})
    assert REGISTRY["table"](quick=True, seed=3) == {"ok": 1}
    assert calls == [(True, {"seed": 3})]


def test_zipf_ranks_follow_the_power_law():
    r = zipf_ranks(1000, 200_000, 1.1, np.random.default_rng(0))
    assert r.dtype == np.int64 and r.min() >= 0 and r.max() < 1000
    counts = np.bincount(r, minlength=1000)
    # P(rank 0) / P(rank 9) = 10 ** 1.1 ~ 12.6
    assert 10 < counts[0] / counts[9] < 15.5


def test_zipf_stream_draws_keys_by_rank():
    keys = np.arange(50, dtype=np.int64) * 3 + 1
    a = zipf_stream(keys, 1000, 1.1, np.random.default_rng(5))
    b = keys[zipf_ranks(50, 1000, 1.1, np.random.default_rng(5))]
    assert np.array_equal(a, b)


def test_time_calls_checks_every_output_and_keeps_the_last_only_when_asked():
    seen = []
    outs = iter(range(10))
    t = time_calls(lambda: next(outs), 3, warmup=2, check=seen.append)
    assert seen == [2, 3, 4] and len(t.times) == 3 and t.output is None
    assert t.median == sorted(t.times)[1]
    assert time_calls(lambda: 7, 1, keep_output=True).output == 7

    def bad(out):
        raise AssertionError("wrong result")

    with pytest.raises(AssertionError, match="wrong result"):
        time_calls(lambda: 1, 2, check=bad)
    with pytest.raises(ValueError, match="repeats"):
        time_calls(lambda: 1, 0)


def test_isa_level_follows_the_dispatch_rules():
    assert isa_level({"avx2", "avx512f", "avx512dq", "avx512vl"}, True) == "AVX-512 (F/DQ/VL)"
    assert isa_level({"avx2", "avx512f"}, True) == "AVX2"
    assert isa_level({"sse2"}, True) == "baseline"
    assert isa_level({"avx2"}, False) == "scalar build"


def test_machine_line_names_cpu_isa_and_versions():
    m = machine()
    line = machine_line(m)
    for key in ("cpu", "isa", "numpy", "python", "embtab"):
        assert str(m[key]) in line, key
    assert f"thread pool {m['thread_pool']}" in line
    assert machine_line({"cpu": "c", "cores": 2}).startswith("c, 2 cores; ISA level ?")


def test_interleaved_rotates_the_order_and_checks_each_pass():
    calls = []
    impls = {"a": lambda b: calls.append(("a", b)) or 1.0, "b": lambda b: calls.append(("b", b)) or 2.0}
    out = interleaved(impls, 2, 2, warmup=True, check=lambda losses: None)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    # warm-up a, b; repeat 0: a then b; repeat 1: b then a
    assert [name for name, b in calls if b == 0] == ["a", "b", "a", "b", "b", "a"]
    assert len(calls) == 2 * 2 * 3

    def finite(losses):
        if not all(x == 1.0 for x in losses):
            raise AssertionError("bad loss")

    with pytest.raises(AssertionError, match="bad loss"):
        interleaved({"x": lambda b: float("nan")}, 1, 1, check=finite)


def test_isa_cap_lowers_dispatch_and_is_reported():
    from embtab import rerank as rr
    from embtab.benchmarks._harness import isa_cap

    assert isa_level({"avx2", "avx512f", "avx512dq", "avx512vl"}, True, "avx2") == "AVX2 (capped)"
    assert isa_level({"avx2", "avx512f", "avx512dq", "avx512vl"}, True, "baseline") == \
        "baseline (capped)"
    assert isa_level({"avx2"}, True, "avx2") == "AVX2"          # nothing to cap
    assert isa_level({"sse4_2"}, True, "avx2") == "baseline"
    rng = np.random.default_rng(0)
    scores = rng.random((50, 40))
    dist = rng.dirichlet(np.ones(5), size=40)
    target = rng.dirichlet(np.ones(5), size=50)
    ref = rr.calibrated(scores, dist, target, 10, lam=0.5)
    before = machine()["isa"]
    with isa_cap("baseline"):
        assert "capped" in machine()["isa"] or machine()["isa"] in ("baseline", "scalar build")
        capped = rr.calibrated(scores, dist, target, 10, lam=0.5)
    assert machine()["isa"] == before
    np.testing.assert_array_equal(capped, ref)        # every ISA level returns the same lists
    with pytest.raises(ValueError, match="isa must be one of"):
        isa_cap("avx512")


def test_newids_quick_run_reports_every_part():
    # The new-ID benchmark at smoke size: every measured part is a positive time and the
    # report names them (its figures come from bench_newids.py, not from here).
    bench = REGISTRY["newids"]
    r = bench(quick=True, repeats=1)
    for part in ("find_new_ids_s", "init_vectors_s", "rest_of_insert_s", "first_pass_s",
                 "steady_pass_s"):
        assert r["first"][part] > 0, part
    assert r["growth"]["growth_step_s"] > 0 and r["growth"]["resize_s"] > 0
    assert r["build"]["seconds"] > 0 and r["build"]["grows"] > 0
    cp = r["cold_pages"]
    assert cp["table_idle_s"] > 0 and cp["table_again_s"] > 0 and cp["small_pages_idle_s"] > 0
    assert cp["index_bytes"] >= 10**6 * 16  # a reserved index of at least 16 bytes per key
    md = bench.format_markdown(r)
    assert "**Build**" in md and "**First sighting**" in md and "**Growth**" in md
    assert "**Cold pages**" in md


def test_scaling_quick_run_reports_every_part():
    # The scaling benchmark at smoke size: every part is timed at both sizes, and the report
    # gives each ratio (its figures come from bench_scaling.py, not from here).
    bench = REGISTRY["scaling"]
    r = bench(quick=True, repeats=1)
    for R in r["sizes"]["lfu_rows"]:
        assert r["lfu_forward"][str(R)]["evict_lfu"] > 0 and r["lfu_forward"][str(R)]["grow"] > 0
        assert set(r["evict_forward"][str(R)]) == {
            "evict_lru", "evict_lru_known", "evict_lru_known_mean", "evict_lfu",
            "evict_lfu_known", "evict_lfu_known_mean"}
        assert all(v > 0 for v in r["evict_forward"][str(R)].values())
        x = r["expiry_forward"][str(R)]
        assert x["forward"] > 0 and x["expire_s"] > 0 and x["live_ids"] > 0
    assert all(r["reused_rows"][k] > 0 for k in ("reused", "fresh", "erase"))
    assert all(v[w]["expire_s"] > 0 for v in r["expiry_index"].values() for w in ("scan", "index"))
    assert all(r["rerank_one_user"][str(n)] > 0 for n in r["sizes"]["rerank_items"])
    for U in r["sizes"]["recommend_users"]:
        assert r["recommend"][str(U)]["recommend"] > 0 and r["recommend"][str(U)]["reference"] > 0
    md = bench.format_markdown(r)
    assert "LFU forward" in md and "rerank one user" in md and "recommend / reference" in md
    assert "LRU eviction" in md and "LFU eviction" in md and "rows just freed by erase" in md
    assert "expiring forward" in md and "of which expiry" in md and "scan / recency index" in md
