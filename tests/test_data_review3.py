"""Regression tests of the third data review: generator sizes beyond the machine's memory,
headers of known names without a user or item column, crowding_split without crowding,
categories files, merged weights that overflow, the stream's "nothing to measure" hint, and
the smaller items (genre triples beyond n_genres, rows_per_id's message, E3's history share)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import embtab._checks as checks
from embtab.data import Interactions, load_dataset, load_interactions, power_law, power_law_v2
from embtab.data.generator_v2 import power_law_v2_bytes
from embtab.data.stream import power_law_stream, power_law_stream_bytes
from embtab.data.synthetic import power_law_bytes

ROOT = Path(__file__).resolve().parents[1]


# 1. sizes beyond this machine's memory ////////////////////////////////////////////////////////

def test_machine_memory_is_ram_plus_swap_from_meminfo():
    have = checks.machine_memory()
    if not os.path.exists("/proc/meminfo"):
        assert have is None
        return
    text = Path("/proc/meminfo").read_text().splitlines()
    kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in text if ln.split()[1:2]}
    assert have == (kib["MemTotal"] + kib.get("SwapTotal", 0)) * 1024


def test_check_memory_refuses_more_than_the_machine_has(monkeypatch):
    monkeypatch.setattr(checks, "machine_memory", lambda: 10**6)
    with pytest.raises(MemoryError, match=r"^n_users=7, n_items=9: the generator would need "
                                          r"about 2e\+06 bytes, more than this machine's "
                                          r"RAM \+ swap \(1e\+06 bytes\)$"):
        checks.check_memory(2 * 10**6, "n_users=7, n_items=9: the generator")
    checks.check_memory(10**6, "fits")                  # not more than the machine has
    monkeypatch.setattr(checks, "machine_memory", lambda: None)
    checks.check_memory(10**30, "unknown memory")       # unknown: nothing refused


@pytest.mark.parametrize("make, names", [
    (lambda: power_law(n_users=2000, n_items=3000),
     r"n_users=2000, n_items=3000, n_genres=18, interactions_per_user=50: power_law would need"),
    (lambda: power_law_v2(n_users=2000, n_items=3000),
     r"n_users=2000, n_items=3000, rank=16, interactions_per_user=50: power_law_v2 would need"),
    (lambda: power_law_stream(n_users=2000, n_items=3000),
     r"n_users=2000, n_items=3000, n_windows=8, interactions_per_window=8\.0: "
     r"power_law_stream would need"),
])
def test_generators_refuse_sizes_beyond_memory_before_allocating(monkeypatch, make, names):
    # a machine of 1 MB: the ordinary sizes are beyond it, and each generator says so, naming
    # the sizes, before it draws anything (it ran, or was killed by the kernel for 10**9 users)
    monkeypatch.setattr(checks, "machine_memory", lambda: 10**6)
    with pytest.raises(MemoryError, match=names + r" about [\d.]+e\+0\d bytes, more than this "
                                                  r"machine's RAM \+ swap \(1e\+06 bytes\)"):
        make()


def test_a_spec_too_large_names_the_spec_and_the_sizes(monkeypatch):
    monkeypatch.setattr(checks, "machine_memory", lambda: 10**6)
    for spec, what in (("synthetic:n_users=2000", "n_users=2000, n_items=3000"),
                       ("synthetic:n_users=2000,rank=4", "rank=4"),
                       ("stream:n_users=2000", "n_windows=8")):
        with pytest.raises(MemoryError, match=rf"^dataset spec '{spec}': .*{what}.* would need"):
            load_dataset(spec)


@pytest.mark.parametrize("make, estimate", [
    (lambda: power_law(n_users=2000, n_items=3000), power_law_bytes(2000, 3000, 18, 50)),
    (lambda: power_law(n_users=3000, n_items=500, n_genres=40, interactions_per_user=10),
     power_law_bytes(3000, 500, 40, 10)),
    (lambda: power_law_v2(n_users=2000, n_items=3000), power_law_v2_bytes(2000, 3000, 16, 50)),
    (lambda: power_law_stream(n_users=1500, n_items=2000, n_windows=4),
     power_law_stream_bytes(1500, 2000, 4, 8.0, 16)),
])
def test_the_memory_estimates_are_upper_bounds_within_3x(make, estimate):
    # the peak of what NumPy allocates (tracemalloc sees its buffers) against the estimate
    tracemalloc.start()
    try:
        make()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= estimate <= 3 * peak


def _limited_run(code: str):
    """Run ``code`` in a fresh interpreter whose address space is capped at 6 GB, so that a
    generator that did allocate for 10**9 users fails there instead of filling the machine."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import embtab

    # the package this test imports (the working tree, or the installed one in CI)
    env = {**os.environ, "PYTHONPATH": str(Path(embtab.__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, preexec_fn=cap, cwd=ROOT)


@pytest.mark.parametrize("spec", ["synthetic:n_users=1000000000",
                                  "stream:n_users=1000000000"])
def test_the_cli_refuses_a_billion_users_at_once_in_one_line(spec):
    r = _limited_run("import sys; from embtab.cli import main; "
                     f"sys.exit(main(['experiment', 'dims', '--dataset', '{spec}', '--quick']))")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-2000:]
    assert "n_users=1000000000, n_items=3000" in lines[0]
    assert "more than this machine's RAM + swap" in lines[0]


# 2. a header of known names without a user or item column //////////////////////////////////

@pytest.mark.parametrize("header, body, missing", [
    ("item,rating,timestamp", "100,5,77\n101,3,78\n", "user"),
    ("user,rating", "1,5\n2,3\n", "item"),
    ("rating,timestamp", "5,77\n3,78\n", "user and no item"),
])
def test_a_header_of_known_names_without_user_or_item_is_refused(tmp_path, header, body,
                                                                 missing):
    # before: skipped and read by position, the ratings as items ('item,rating,timestamp')
    p = tmp_path / "log.csv"
    p.write_text(header + "\n" + body)
    with pytest.raises(ValueError, match=rf"log\.csv, line 1: the header .* names known "
                                         rf"columns but no {missing} column"):
        load_interactions(p)


def test_a_header_with_unknown_names_is_still_read_by_position(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("who,what\n1,100\n2,100\n")
    assert load_interactions(p).n_users == 2


# 3. crowding_split without crowding //////////////////////////////////////////////////////////

def test_crowding_split_without_crowding_is_refused():
    with pytest.raises(ValueError, match=r"crowding_split=0\.8 applies only with crowding=True"):
        power_law_v2(n_users=50, n_items=60, crowding_split=0.8)
    with pytest.raises(ValueError, match=r"crowding_split=0\.8 applies only with crowding=True"):
        power_law_v2(n_users=50, n_items=60, crowding=False, crowding_split=0.8)
    d = power_law_v2(n_users=50, n_items=60, n_genres=4, crowding=True, crowding_split=0.8)
    assert d.truth.params["crowding_split"] == 0.8
    assert sorted(np.round(d.truth.user_factors[0], 6)[d.truth.user_factors[0] > 0]) == [0.2, 0.8]
    assert power_law_v2(n_users=50, n_items=60, n_genres=4,
                        crowding=True).truth.params["crowding_split"] == 0.7


@pytest.mark.parametrize("spec", ["synthetic:n_users=50,n_items=60,crowding_split=0.9",
                                  "synthetic:n_users=50,n_items=60,crowding=0,crowding_split=0.9",
                                  "synthetic:n_users=50,n_items=60,crowding=false,"
                                  "crowding_split=0.9"])
def test_a_spec_with_crowding_split_and_no_crowding_is_refused(spec):
    # before: crowding_split switched the spec to power_law_v2 and had no effect there
    with pytest.raises(ValueError, match=r"crowding_split .*needs crowding=1"):
        load_dataset(spec)


def test_the_stream_refuses_crowding_split():
    with pytest.raises(ValueError, match=r"power_law_stream takes no crowding_split"):
        power_law_stream(n_users=40, n_items=60, crowding_split=0.9)
    with pytest.raises(ValueError, match=r"takes no crowding_split") as e:
        load_dataset("stream:n_users=40,n_items=60,crowding_split=0.9")
    assert "stream:n_users=40,n_items=60,crowding_split=0.9" in str(e.value)
    with pytest.raises(ValueError) as e:        # no longer listed among the keys it takes
        load_dataset("stream:colour=1")
    assert "crowding_split" not in str(e.value) and "half_life" in str(e.value)


# 4. categories files //////////////////////////////////////////////////////////////////////////

@pytest.fixture
def clicks(tmp_path):
    p = tmp_path / "clicks.txt"
    p.write_text("1 10\n1 11\n2 12\n2 13\n")
    return p


def test_items_without_a_category_draw_a_warning(tmp_path, clicks):
    c = tmp_path / "cats.txt"
    c.write_text("10 Drama\n11 Comedy\n")
    with pytest.warns(UserWarning, match=r"cats\.txt: 2 of the 4 items of the interactions "
                                         r"have no line there, so they have no category") as rec:
        d = load_interactions(clicks, categories=c)
    assert rec[0].filename == __file__            # points at the caller
    assert d.genre_names == ("Comedy", "Drama")
    assert [d.item_genres[i].tolist() for i in range(4)] == [[1], [0], [], []]


def test_categories_keep_the_files_genres_whichever_items_the_data_holds(tmp_path, clicks):
    # a train and a test file read with one categories file share their genre indices (as
    # MovieLens's do): a category only absent items hold is still a genre, held by no item
    c = tmp_path / "cats.txt"
    c.write_text("10 Drama\n11 Comedy\n12 Drama\n13 Drama\n999 Western\n998 Anime\n")
    d = load_interactions(clicks, categories=c)   # (every item of the data has one: no warning)
    assert d.genre_names == ("Anime", "Comedy", "Drama", "Western")
    assert [d.item_genres[i].tolist() for i in range(4)] == [[2], [1], [2], [2]]


@pytest.mark.parametrize("text", ["", "\n# nothing here\n", "item category\n"])
def test_an_empty_or_header_only_categories_file_is_refused(tmp_path, clicks, text):
    c = tmp_path / "cats.txt"
    c.write_text(text)
    with pytest.raises(ValueError, match=r"cats\.txt: no 'item category' lines .*leave out "
                                         r"categories="):
        load_interactions(clicks, categories=c)
    with pytest.raises(ValueError, match=r"cats\.txt: no 'item category' lines"):
        load_dataset(f"interactions:{clicks},categories={c}")


def test_a_categories_file_of_other_items_draws_a_clear_warning(tmp_path, clicks):
    c = tmp_path / "cats.txt"
    c.write_text("500 Drama\n501 Comedy\n")
    with pytest.warns(UserWarning, match=r"cats\.txt: none of the 2 items listed there occurs "
                                         r"in the 4 items of the interactions, so no item has "
                                         r"a category") as rec:
        d = load_interactions(clicks, categories=c)
    assert len(rec) == 1 and d.n_genres == 0 and d.genre_names == ()


# 5. merged weights that overflow //////////////////////////////////////////////////////////////

def test_repeated_pairs_whose_weights_sum_to_inf_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^weights: the 2 weights of the repeated \(user 1, "
                                         r"item 3\) pair sum to inf"):
        Interactions.from_raw([1, 1, 2], [3, 3, 3], [1e308, 1e308, 1.0])
    with pytest.raises(ValueError, match=r"sum to -inf"):
        Interactions.from_raw([1, 1], [3, 3], [-1e308, -1e308])
    d = Interactions.from_raw([1, 1, 2], [3, 3, 3], [1e308, -1e308, 1.0])   # finite sums
    assert d.weights.tolist() == [0.0, 1.0]
    p = tmp_path / "big.txt"
    p.write_text("1 3 1e308\n1 3 1e308\n")
    with pytest.raises(ValueError, match=r"big\.txt: weights: the 2 weights of the repeated "
                                         r"\(user 1, item 3\) pair sum to inf"):
        load_interactions(p)


# 6. the stream's "nothing to measure" hint ////////////////////////////////////////////////////

def _run_stream(path, n_windows):
    from embtab.experiments.stream import run_stream
    return run_stream(f"interactions:{path}", seeds=1, n_windows=n_windows,
                      designs=("hashed",), progress=False)


def test_even_windows_where_no_user_comes_back_are_not_blamed_on_a_timestamp(tmp_path):
    # 4 windows of 120 interactions each; every user's interactions lie in one window
    lines = [f"{u},{i},1,{100 * (u // 10) + i}" for u in range(40) for i in range(12)]
    p = tmp_path / "once.csv"
    p.write_text("user,item,weight,ts\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        _run_stream(p, 4)
    msg = str(e.value)
    assert "interactions per window: [120, 120, 120, 120]" in msg
    assert "No user has interactions in two windows" in msg and "outlying" not in msg
    assert "timestamp far from the others" not in msg


def test_even_windows_where_users_come_back_only_for_new_items_say_so(tmp_path):
    # users come back in the second window, but only for items no one took in the first
    lines = [f"{u},{i + 100 * w},1,{1000 * w + i}" for w in range(2) for u in range(20)
             for i in range(12)]
    p = tmp_path / "new.csv"
    p.write_text("user,item,weight,ts\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        _run_stream(p, 2)
    msg = str(e.value)
    assert "The 20 of the 20 users who come back in a later window take only items new in " \
           "that window" in msg and "outlying" not in msg


# 7. genre triples beyond n_genres, rows_per_id's message, E3's history share, beta ///////////

def test_a_genre_triple_beyond_n_genres_is_refused_the_default_is_capped():
    with pytest.raises(ValueError, match=r"genres_per_item=\(0\.0, 0\.0, 1\.0\) puts probability "
                                         r"1 on more than n_genres=2 genres"):
        power_law(n_users=30, n_items=40, n_genres=2, interactions_per_user=5,
                  genres_per_item=(0, 0, 1))
    with pytest.raises(ValueError, match=r"interests_per_user=.* on more than n_genres=1 genres"):
        power_law(n_users=30, n_items=40, n_genres=1, interactions_per_user=5,
                  interests_per_user=(0.5, 0.5, 0))
    with pytest.raises(ValueError, match=r"dataset spec .*genres_per_item=\(0\.5, 0\.0, 0\.5\)"):
        load_dataset("synthetic:n_users=30,n_items=40,n_genres=2,interactions_per_user=5,"
                     "genres_per_item=0.5/0/0.5")
    with pytest.raises(ValueError, match=r"interests_per_user=.* on more than the 1 taste factor "
                                         r"of rank=2"):
        power_law_v2(n_users=30, n_items=40, rank=2, interactions_per_user=5,
                     interests_per_user=(0, 1, 0))
    # the defaults are capped at n_genres (documented), with no message
    small = dict(n_users=30, n_items=40, interactions_per_user=5)
    assert power_law(**small, n_genres=2).item_genres.lengths().max() == 2
    assert power_law_v2(**small, rank=2).n_interactions > 0


def test_negative_beta_is_power_law_only_as_the_docs_say():
    small = dict(n_users=30, n_items=40, n_genres=3, interactions_per_user=5)
    assert power_law(**small, beta=-1.0).n_interactions > 0
    with pytest.raises(ValueError, match=r"beta must be >= 0"):
        power_law_v2(**small, beta=-1.0)
    text = (ROOT / "docs" / "experiments.md").read_text()
    assert "`beta` may be\nnegative in `power_law`" in text and "must be ≥ 0 in\n" \
           "`power_law_v2`" in text


@pytest.mark.parametrize("bad", [-1, 0.0, float("inf"), float("nan")])
def test_rows_per_id_message_states_the_range_it_checks(bad):
    import embtab.experiments as ex
    with pytest.raises(ValueError) as e:
        ex.run_collisions("synthetic:n_users=40,n_items=30", 1, rows_per_id=(0.5, bad),
                          progress=False)
    msg = str(e.value)
    assert msg.startswith("rows_per_id must be > 0 and finite") and "rows_per_id[1] is" in msg
    assert "[0, inf]" not in msg


def test_e3_history_share_has_its_interval_or_a_marker():
    from embtab.experiments.calibration import _ci_over_seeds

    def rows(values):
        return {"rows": [{"model": "mf+calibrated", "candidates": 50, "lam": 0.0, "seed": s,
                          "minority_share_history": v} for s, v in enumerate(values)]}
    # the same value on every seed: no interval, and the marker the tables use
    def text(values):
        return _ci_over_seeds(rows(values), 50, 0.0, "minority_share_history", ".1%", True)
    assert text([0.388, 0.388, 0.388]) == "38.8% (no spread)"
    assert text([0.38, 0.39, 0.40]).startswith("39.0% [")
    assert text([0.388, None]) == "38.8% (1 of 2 seeds)"
    assert text([0.388]) == "38.8%"     # one seed: the sentence says so once (below)


def test_e3_one_seed_sentence_does_not_claim_intervals():
    from embtab.experiments.calibration import findings, run_calibration
    r = run_calibration("synthetic:n_users=60,n_items=80,interactions_per_user=10", seeds=1,
                        lams=(0.0, 0.5), candidates=(20,), train_overrides={"epochs": 1},
                        progress=False)
    text = " ".join(findings(r))
    assert "Category mass outside each user's main category (means over 1 seed, no interval " \
           "from 1 seed):" in text
    assert "means over seeds, 95% intervals" not in text


def test_experiments_refuse_train_overrides_that_train_nothing():
    # TrainConfig(epochs=0) is an untrained model (the scaling benchmark's); an experiment run
    # with it reported that model as "mf" with no word
    from embtab.experiments.dims import run_dims

    with pytest.raises(ValueError, match=r"train_overrides epochs=0 trains nothing"):
        run_dims("synthetic:n_users=50,n_items=60,interactions_per_user=5", 1, dims=(4,),
                 train_overrides={"epochs": 0},
                 progress=False)


def test_a_header_whose_known_names_contradict_their_positions_is_refused(tmp_path):
    # review: 'item_id,user_id,label' (one unknown name) was skipped and read by position:
    # the items became the users, silently
    from embtab.data import load_interactions

    rows = "".join(f"{100 + i % 13},{i % 11},1\n" for i in range(300))
    bad = tmp_path / "swapped.csv"
    bad.write_text("item_id,user_id,label\n" + rows)
    with pytest.raises(ValueError, match=r"names 'item_id' as the item column, but it is the "
                                         r"user column by position.*'label' is not a known"):
        load_interactions(bad)
    # consistent with the positions: skipped as documented, the columns by position
    ok = tmp_path / "ok.csv"
    ok.write_text("user_id,item_id,label\n" + rows)
    assert load_interactions(ok).n_users == 13
    both = tmp_path / "known.csv"
    both.write_text("item_id,user_id,clicks\n" + rows)   # all known: read by name
    assert load_interactions(both).n_users == 11
