"""Bad or unusual input to the data layer and the experiments: exact conversion or a clear error.

Each test here failed before its fix (a crash deep inside, a NaN sentence, or silently wrong
data) and names the reviewer's finding it covers.
"""

import math
import warnings

import numpy as np
import pytest

from conftest import shared_data
from embtab._research import U64_MAX, as_u64
from embtab.data import Interactions, load_dataset, load_interactions, load_movielens
from embtab.data.generator_v2 import power_law_v2
from embtab.data.synthetic import power_law
from embtab.experiments import budget as bx
from embtab.experiments import calibration as cx
from embtab.experiments.feedback import run_feedback
from embtab.experiments.session import Session

# 1. raw IDs: Python ints of any range convert exactly //////////////////////////////////////////


@pytest.mark.parametrize("ids, expect", [
    ([2**64 - 5, 7], [2**64 - 5, 7]),                 # NumPy alone: float64
    ([-5, 2**64 - 5], [2**64 - 5, 2**64 - 5]),        # NumPy alone: float64
    ([-1, 2**63], [U64_MAX, 2**63]),
    ([2**63 + 1, 3, -(2**63)], [2**63 + 1, 3, 2**63]),
    ([[2**64 - 1, 0], [-2, 5]], [[U64_MAX, 0], [U64_MAX - 1, 5]]),
])
def test_as_u64_converts_python_ints_exactly(ids, expect):
    out = as_u64(ids, "ids")
    assert out.dtype == np.uint64
    assert out.tolist() == expect
    # negative ints read as int64, bit for bit
    neg = [v for v in np.ravel(np.asarray(ids, dtype=object)) if v < 0]
    if neg:
        assert as_u64(neg, "ids").tolist() == np.asarray(neg, np.int64).view(np.uint64).tolist()


@pytest.mark.parametrize("ids, exc, msg", [
    ([2**64, 1], ValueError, r"raw_items: ID 18446744073709551616 at position 0 is outside"),
    ([1, -(2**63) - 1], ValueError, r"raw_items: ID -9223372036854775809 at position 1"),
    ([1.5, 2**64 - 1], TypeError, r"raw_items must be integer IDs .*1\.5 \(float\)"),
    ([2**64 - 1, "7"], TypeError, r"raw_items must be integer IDs .*got dtype <U"),
    ([2**64 - 1, None], TypeError, r"raw_items must be integer IDs .*None \(NoneType\) at "
                                   r"position 1"),
    (np.array([1.0, 2.0]), TypeError, r"raw_items must be integer IDs .*float64"),
])
def test_as_u64_refuses_out_of_range_and_non_integers(ids, exc, msg):
    with pytest.raises(exc, match=msg):
        as_u64(ids, "raw_items")


def test_from_raw_with_large_and_negative_ids():
    d = Interactions.from_raw([1, 1], [2**64 - 5, 7])
    assert d.item_ids.tolist() == [7, 2**64 - 5]
    assert sorted(d.raw_items.tolist()) == [7, 2**64 - 5] and d.n_interactions == 2
    # genre keys mixing a negative ID and small ones (what the categories loader passes)
    d = Interactions.from_raw([1, 1, 2], [-5, 7, -5], item_genres={-5: [0], 7: [1]},
                              genre_names=("A", "B"))
    assert d.item_ids.tolist() == [7, 2**64 - 5]
    assert [d.item_genres[i].tolist() for i in range(2)] == [[1], [0]]
    # the same genres keyed by the uint64 pattern
    e = Interactions.from_raw([1, 1, 2], [-5, 7, -5], item_genres={2**64 - 5: [0], 7: [1]},
                              genre_names=("A", "B"))
    assert e.item_genres.indices.tolist() == d.item_genres.indices.tolist()
    with pytest.raises(ValueError, match="raw_items: ID 18446744073709551616"):
        Interactions.from_raw([1], [2**64])


@pytest.mark.parametrize("genres, exc, msg", [
    ({3: [1.5]}, ValueError, r"item_genres\[3\]: genre index 1\.5 is not an integer"),
    ({3: [-1]}, ValueError, r"item_genres\[3\]: genre index -1"),
    ({3: [2]}, ValueError, r"item_genres\[3\]: genre index 2 .*\[0, 2\)"),
    ({3: 1}, TypeError, r"item_genres\[3\] must be a list of genre indices"),
])
def test_from_raw_checks_genre_indices(genres, exc, msg):
    with pytest.raises(exc, match=msg):
        Interactions.from_raw([1, 2], [3, 4], item_genres=genres, genre_names=("a", "b"))


def test_categories_file_with_negative_and_large_item_ids(tmp_path):
    items = tmp_path / "neg_items.txt"
    items.write_text(f"1 -5\n1 7\n2 -5\n2 8\n3 {2**64 - 2}\n")
    cats = tmp_path / "neg_cats.txt"
    cats.write_text(f"-5 A\n7 B\n{2**64 - 2} A\n")
    with pytest.warns(UserWarning, match=r"1 of the 4 items of the interactions have no line"):
        d = load_interactions(items, categories=cats)
    assert d.item_ids.tolist() == [7, 8, 2**64 - 5, 2**64 - 2]
    assert d.genre_names == ("A", "B")
    assert [d.item_genres[i].tolist() for i in range(4)] == [[1], [], [0], [0]]
    with pytest.warns(UserWarning, match=r"1 of the 4 items of the interactions have no line"):
        assert load_dataset(f"interactions:{items},categories={cats}").n_items == 4


# 2. data without test items; sentences of undefined values /////////////////////////////////////


def test_session_refuses_data_without_a_test_item(tmp_path):
    p = tmp_path / "one_each.txt"
    p.write_text("".join(f"{u} {u % 30}\n" for u in range(200)))
    with pytest.raises(ValueError, match=r"'interactions:.*one_each.txt'.* no user with 2 or "
                                         r"more interactions .*no user gets a test item"):
        Session(f"interactions:{p}", None, False)
    d = load_interactions(p)
    with pytest.raises(ValueError, match=r"data set 'one_each' has no user with 2"):
        Session(d, None, False)
    # one user with two interactions is enough
    p.write_text("".join(f"{u} {u % 30}\n" for u in range(200)) + "0 29\n")
    assert Session(f"interactions:{p}", None, False).split(0)[1].n_interactions == 1


def _cal_row(C, lam, seed, ndcg, mis):
    return {"model": "mf+calibrated", "seed": seed, "candidates": C, "lam": lam,
            "ndcg@10": ndcg, "miscalibration@10": mis, "arp@10": 0.1, "coverage@10": 0.2,
            "recall@10": ndcg}


def _cal_results(rows):
    return {"rows": rows, "config": {"candidates": [100]}}


def test_calibration_sentences_say_undefined_not_nan():
    nan = float("nan")
    rows = [_cal_row(100, 0.0, 0, nan, nan), _cal_row(100, 0.5, 0, nan, nan)]
    text = " ".join(cx.findings(_cal_results(rows)))
    assert "nan" not in text.lower()
    assert "ndcg@10 undefined → undefined" in text
    assert "No λ up to 0.5 is shown to halve miscalibration@10 at C=100" in text
    assert "at λ=0.5 it is undefined" in text


def test_calibration_relative_change_from_zero_is_undefined():
    # ndcg@10 = 0 at λ=0: the old max(·, 1e-12) gave a change of +1e+11 %
    rows = [_cal_row(100, 0.0, s, 0.0, 0.4) for s in range(3)] + \
        [_cal_row(100, 0.5, s, 0.02, 0.1 + 0.001 * s) for s in range(3)]
    text = " ".join(cx.findings(_cal_results(rows)))
    assert "The smallest λ shown to halve miscalibration@10 at C=100 is λ=0.5" in text
    # the relative change is undefined on every seed: the paired absolute change is given
    assert ("where ndcg@10 changes by +0.0200 in absolute terms, paired over 3 seeds (its "
            "relative change is undefined on 3 of 3 seeds") in text
    assert "nan" not in text.lower()
    # per seed (paired): the trade-off is not assessed when a seed's base is 0
    rows = [_cal_row(100, 0.0, s, 0.0 if s == 1 else 0.2, 0.4) for s in range(3)] + \
        [_cal_row(100, 0.5, s, 0.19, 0.1) for s in range(3)]
    out = cx.tradeoff_findings({"rows": rows})
    assert out == ["C=100: at λ=0.5 the miscalibration@10 ratio or the relative ndcg@10 change "
                   "against λ=0 is undefined on 1 of 3 seeds (λ=0's value is 0 or not finite "
                   "there), so the trade-off target is not assessed."]
    # all defined but the same on every seed: no spread, no interval, no verdict
    rows[1] = _cal_row(100, 0.0, 1, 0.2, 0.4)
    (sentence,) = cx.tradeoff_findings({"rows": rows})
    assert sentence == ("C=100, paired over 3 seeds: at λ=0.5 miscalibration@10 is 25% of "
                        "λ=0's and ndcg@10 changes by -5.0%; one of them is the same on every "
                        "seed, which gives no interval, so the trade-off target is not assessed.")
    # with a spread: the intervals and a verdict
    rows[4] = _cal_row(100, 0.5, 1, 0.18, 0.12)
    (sentence,) = cx.tradeoff_findings({"rows": rows})
    assert "paired over 3 seeds: at λ=0.5 miscalibration@10 is 27% [" in sentence
    assert "the target (≤ 50%, ≥ −10%) is" in sentence


def test_budget_sentences_without_finite_values():
    nan = float("nan")
    rows = [{"model": "mf", "budget": 1.0, "design": d, "seed": 0, "recall@10": nan,
             "ndcg@10": nan, "excess_arp@10": nan} for d in ("cuckoo", "hashed")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # was: RuntimeWarning "Mean of empty slice"
        cs = bx.contrasts(rows)
    assert [c["difference"]["n"] for c in cs] == [0, 0, 0]
    text = bx.findings({"contrasts": cs})
    assert len(text) == 3
    for t in text:
        assert "nan" not in t.lower()
        assert t.endswith("the difference is undefined (no seed has a finite value for both "
                          "designs).")
    # one design finite, the other not: the finite one ranks first, the difference undefined
    rows[0]["recall@10"] = 0.3
    c = bx.contrasts(rows)[0]
    assert (c["best"], c["runner_up"], c["difference"]["n"]) == ("cuckoo", "hashed", 0)
    # one seed still says "on one seed"
    rows[1]["recall@10"] = 0.1
    (t,) = [x for x in bx.findings({"contrasts": bx.contrasts(rows)}) if "recall" in x]
    assert t.endswith("(recall@10): +0.2000 on one seed, no interval.")


# 3. MovieLens: u.item flags must match u.genre ///////////////////////////////////////////////


def _movielens(folder, flags_per_item, genres):
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n"
                                   "2\t20\t4\t881250951\n")
    lines = [f"{i}|T{i}|01-Jan-1995||http://x|" + "|".join(f) for i, f in
             zip((10, 20), flags_per_item)]
    (folder / "u.item").write_text("\n".join(lines) + "\n")
    if genres is not None:
        (folder / "u.genre").write_text("".join(f"{g}|{n}\n" for n, g in enumerate(genres))
                                        + "\n")
    return folder


def test_movielens_flag_count_must_match_u_genre(tmp_path):
    # 4 flags, 3 genres: the loader took the last 3 flags (genre of item 10 shifted)
    f = _movielens(tmp_path / "a", [["0", "1", "0", "1"], ["1", "0", "0", "0"]],
                   ["Action", "Comedy", "Drama"])
    with pytest.raises(ValueError, match=r"u\.item, line 1: 4 genre flags after "
                                         r"'id\|title\|.*IMDb URL', but .*u\.genre lists 3 genres"):
        load_movielens(f)
    # without u.genre: the 19 MovieLens genres
    f = _movielens(tmp_path / "b", [["1", "0", "0"], ["0", "1", "0"]], None)
    with pytest.raises(ValueError, match=r"u\.item, line 1: 3 genre flags .*MovieLens-100K has "
                                         r"\(no u\.genre in .*\) 19 genres"):
        load_movielens(f)
    # matching counts load as before
    f = _movielens(tmp_path / "c", [["0", "1", "1"], ["1", "0", "0"]],
                   ["Action", "Comedy", "Drama"])
    d = load_movielens(f)
    assert d.genre_names == ("Action", "Comedy", "Drama")
    assert [d.item_genres[i].tolist() for i in range(2)] == [[1, 2], [0]]


def test_movielens_genre_indices_must_be_0_to_g(tmp_path):
    f = _movielens(tmp_path / "a", [["0", "1"], ["1", "0"]], ["A", "B"])
    (f / "u.genre").write_text("A|0\nB|2\n")
    with pytest.raises(ValueError, match=r"u\.genre: genre indices must be 0, 1, \.\.\., 1 "
                                         r"once each; found \[0, 2\]"):
        load_movielens(f)


# 4. separator and header of interaction files /////////////////////////////////////////////////


def test_comment_with_a_comma_does_not_switch_the_separator(tmp_path):
    p = tmp_path / "ws.txt"
    p.write_text("# user, item\n1 10\n1 11\n2 10\n")
    d = load_interactions(p)
    assert (d.n_users, d.n_items, d.n_interactions) == (2, 2, 3)
    c = tmp_path / "cats.txt"
    c.write_text("# item, category\n10 Science fiction\n11 Drama\n")
    d = load_interactions(p, categories=c)
    assert d.genre_names == ("Drama", "Science fiction")


def test_a_bad_first_data_line_is_reported_not_taken_as_header(tmp_path):
    p = tmp_path / "e3.txt"
    p.write_text("1e3 10\n")
    with pytest.raises(ValueError, match=r"e3\.txt, line 1: user '1e3' is not an integer ID"):
        load_interactions(p)
    p.write_text("1 x10\n2 10\n")
    with pytest.raises(ValueError, match=r"line 1: item 'x10' is not an integer ID"):
        load_interactions(p)
    # a first line without a number is a header; when the next line is bad too, say so
    p.write_text("u1 i1\nu1 i2\n")
    with pytest.raises(ValueError, match=r"line 2: user 'u1' is not an integer ID .*\(line 1, "
                                         r"'u1 i1', has no number and was read as a header\)"):
        load_interactions(p)
    p.write_text("user item\n")
    with pytest.raises(ValueError, match=r"no interactions .*line 1, 'user item', was read as "
                                         r"a header"):
        load_interactions(p)
    # real headers still work
    p.write_text("user,item,weight\n1,100,2.0\n2,100,1.0\n")
    assert load_interactions(p).weights.tolist() == [2.0, 1.0]
    c = tmp_path / "c.txt"
    c.write_text("1e2 A\n")
    with pytest.raises(ValueError, match=r"c\.txt, line 1: item '1e2' is not an integer ID"):
        load_interactions(p, categories=c)


# 5. generator arguments ///////////////////////////////////////////////////////////////////////

SMALL = dict(n_users=60, n_items=80, n_genres=4, interactions_per_user=8)


@pytest.mark.parametrize("spec, msg", [
    ("synthetic:crowding=1,n_genres=1", r"crowding=True needs n_genres >= 2"),
    ("synthetic:rank=2.5", r"rank must be an integer; got 2\.5"),
    ("synthetic:n_items=100,rank=200", r"rank must be <= min\(n_users, n_items\) = 100 "
                                       r".*rank=200"),
    ("synthetic:n_users=12,n_items=60,n_genres=18,crowding=1",
     r"rank must be <= min\(n_users, n_items\) = 12 .*crowding=True sets rank = n_genres = 18"),
    ("synthetic:seed=-1", r"seed must be an integer >= 0; got -1"),
    ("synthetic:rank=4,seed=-1", r"seed must be an integer >= 0; got -1"),
    ("stream:seed=-1", r"seed must be an integer >= 0; got -1"),
    ("synthetic:seed=1.5", r"seed must be an integer >= 0; got 1\.5"),
])
def test_generator_spec_errors_name_the_key_and_the_spec(spec, msg):
    with pytest.raises(ValueError, match=r"dataset spec '" + spec.replace(".", r"\.")
                       + "': " + msg):
        load_dataset(spec)


def test_generator_arguments_checked_in_python_too():
    with pytest.raises(TypeError, match=r"rank must be an integer; got 2\.5"):
        power_law_v2(**SMALL, rank=2.5)                 # was truncated to 2
    # the default rank (16) is capped by the matrix's size; a rank given is not
    assert power_law_v2(**{**SMALL, "n_users": 12}, merit=0.5).truth.rank == 12
    with pytest.raises(ValueError, match=r"<= min\(n_users, n_items\) = 12 .*rank=13"):
        power_law_v2(**{**SMALL, "n_users": 12}, merit=0.5, rank=13)
    with pytest.raises(ValueError, match="seed must be an integer >= 0; got -3"):
        power_law(**SMALL, seed=-3)
    with pytest.raises(ValueError, match="crowding=True needs n_genres >= 2"):
        power_law_v2(**{**SMALL, "n_genres": 1}, crowding=True)
    d = power_law_v2(**SMALL, rank=min(SMALL["n_users"], SMALL["n_items"]), seed=1)
    assert d.truth.rank == 60


# 6. the feedback experiment and stream data ///////////////////////////////////////////////////


def test_feedback_refuses_stream_data_up_front():
    with pytest.raises(ValueError, match=r"the feedback experiment \(E5\) does not support "
                                         r"stream data: 'stream:n_users=40,n_items=60'"):
        run_feedback("stream:n_users=40,n_items=60", seeds=1, rounds=1, progress=False)
    d = load_dataset("stream:n_users=40,n_items=60,n_windows=2")
    with pytest.raises(ValueError, match="does not support stream data"):
        run_feedback(d, seeds=1, rounds=1, progress=False)


def test_calibration_number_helpers():
    # what the sentences above are built with
    assert cx._num(float("nan"), ".4f") == "undefined" and cx._num(0.5, ".0%") == "50%"
    assert math.isnan(cx._ratio(1.0, 0.0)) and cx._ratio(1.0, 4.0) == 0.25


# 6. extreme generator settings: a valid data set whose truth is finite ////////////////////////


@pytest.mark.parametrize("spec", [
    "synthetic:n_users=50,n_items=50,zipf_s=500",           # popularity**beta underflowed: 0/0
    "synthetic:n_users=50,n_items=500,beta=300",
    "synthetic:n_users=50,n_items=500,beta=-300",           # overflowed: inf/inf
    "synthetic:n_users=50,n_items=50,mix_concentration=1e-9",   # Gamma draws all 0: IndexError
    "synthetic:n_users=50,n_items=50,rank=4,zipf_s=500",    # v2: NaN truth, 0 interactions
    "synthetic:n_users=50,n_items=500,rank=4,beta=500",
    "synthetic:n_users=50,n_items=50,rank=4,mix_concentration=1e-9",
    "stream:n_users=50,n_items=50,zipf_s=500",
])
# (50 interactions per user of 50-500 items in 18 genres: the capped-activity warning; the
# stream's 8 windows of 8 from 50 items: its catalogue runs dry)
@pytest.mark.filterwarnings("ignore:power_law.*interactions per user on average:UserWarning")
@pytest.mark.filterwarnings("ignore:power_law_stream.*but the stream holds only:UserWarning")
def test_extreme_generator_settings_give_finite_truth_and_data(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        d = load_dataset(spec)
    p = d.truth.prob()
    assert np.all(np.isfinite(p))
    assert np.allclose(p.sum(axis=1), 1.0)
    # every user consumed items, and only items they can like
    assert np.array_equal(np.unique(d.users), np.arange(d.n_users))
    assert np.all(d.truth.pair_prob(d.users, d.items) > 0)


def test_movielens_comma_u_data_names_the_line_taken_for_a_header(tmp_path):
    """A comma-separated u.data: its first line has no tab-separated number, so it was skipped
    as a header and the error blamed line 2 alone (finding: u.data with another separator)."""
    (tmp_path / "u.data").write_text("196,242,3,881250949\n186,302,3,891717742\n")
    with pytest.raises(ValueError, match=r"line 2: expected 4 tab-separated fields .* \(line 1, "
                                         r"'196,242,3,881250949', has no tab-separated field"):
        load_movielens(tmp_path)
    (tmp_path / "u.data").write_text("196,242,3,881250949\n")
    with pytest.raises(ValueError, match=r"no ratings \(line 1, '196,242,3,881250949', was "
                                         "read as a header\\)"):
        load_movielens(tmp_path)


def test_movielens_header_of_names_is_not_blamed_for_a_bad_line(tmp_path):
    # A ratings.csv with its header and a short line 500 (or cut short): the note blamed the
    # header, which is one; the note is for a line taken for a header that holds numbers.
    rows = "".join(f"{u},{u % 7 + 1},4.0,{1000 + u}\n" for u in range(1, 600))
    lines = ("userId,movieId,rating,timestamp\n" + rows).splitlines(keepends=True)
    lines[499] = "1,2,3\n"
    (tmp_path / "ratings.csv").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"ratings.csv, line 500: expected 4 comma-separated") as e:
        load_movielens(tmp_path)
    assert "read as a header" not in str(e.value)


def test_movielens_repeated_pairs_warn_and_conflicting_genre_lines_are_refused(tmp_path):
    # Repeated rating lines were merged (ratings summed) without a word, and an item listed
    # twice in u.item with other flags took the last line's.
    src = shared_data("ml-100k")
    head = (src / "u.data").read_text().splitlines(keepends=True)[:1000]
    (tmp_path / "u.data").write_text("".join(head + head[:3]))
    items = (src / "u.item").read_text(encoding="latin-1").splitlines(keepends=True)
    (tmp_path / "u.item").write_text("".join(items + items[:1]), encoding="latin-1")
    with pytest.warns(UserWarning, match=r"u.data: 3 rating line\(s\) repeat the \(user, item\)"):
        d = load_movielens(tmp_path)
    assert d.n_interactions == 1000
    assert float(d.weights.sum()) == sum(float(ln.split()[2]) for ln in head + head[:3])
    other = items[0].rstrip("\n").split("|")
    other[-1] = "1" if other[-1] == "0" else "0"
    (tmp_path / "u.item").write_text("".join(items + ["|".join(other) + "\n"]),
                                     encoding="latin-1")
    (tmp_path / "u.data").write_text("".join(head))
    with pytest.raises(ValueError, match=rf"u.item, line {len(items) + 1}: item 1 is listed "
                                         r"again with other genres than on line 1"):
        load_movielens(tmp_path)
    # the same check on a movies.csv (MovieLens 20M and later)
    m = tmp_path / "csv"
    m.mkdir()
    (m / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n2,2,3.0,11\n")
    (m / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n2,B,Comedy\n1,A,Comedy\n")
    with pytest.raises(ValueError, match=r"movies.csv, line 4: item 1 is listed again"):
        load_movielens(m)


def test_movielens_ratings_cut_mid_line_warn(tmp_path):
    # a download cut short parsed its last line's timestamp '89' (of 891717742) silently
    text = "196\t242\t3\t881250949\n472\t568\t5\t891717742\n"
    (tmp_path / "u.data").write_text(text[:-8])
    with pytest.warns(UserWarning, match=r"u.data: the last line has no line end"):
        d = load_movielens(tmp_path)
    assert d.n_interactions == 2
    (tmp_path / "u.data").write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_movielens(tmp_path)


# 7. power_law's sampler: rare items are finished by Gumbel keys, with the same law //////////


def _successive_inclusion(p, n):
    """Exact P(item in a sample of n drawn one by one without replacement from p)."""
    from itertools import permutations
    inc = np.zeros(p.size)
    for seq in permutations(range(p.size), n):
        pr, left = 1.0, 1.0
        for i in seq:
            pr *= p[i] / left
            left -= p[i]
        inc[list(seq)] += pr
    return inc, p  # (inclusion, law of the first pick)


@pytest.mark.parametrize("max_rounds", [0, 30])   # 0: every user by Gumbel keys; 30: the stream
def test_power_law_sampler_draws_successively_without_replacement(max_rounds):
    from embtab.data import synthetic as syn
    d = power_law(n_users=4000, n_items=6, n_genres=1, interactions_per_user=3, zipf_s=1.5,
                  activity_sigma=0.0, seed=3)
    t = d.truth
    n_u = np.full(t.n_users, 3, dtype=np.int64)
    users, items = syn._sample_without_replacement(np.random.default_rng(5), t, d.item_genres,
                                                   n_u, max_rounds=max_rounds)
    assert np.array_equal(np.bincount(users, minlength=t.n_users), n_u)
    assert np.unique(users * 6 + items).size == users.size
    inc, first = _successive_inclusion(t.prob([0])[0], 3)
    got_inc = np.bincount(items, minlength=6) / t.n_users
    got_first = np.bincount(items[::3], minlength=6) / t.n_users   # consumption order kept
    np.testing.assert_allclose(got_inc, inc, atol=0.035)
    np.testing.assert_allclose(got_first, first, atol=0.035)


@pytest.mark.timeout(60)   # a hang guard (it takes well under a second), not a timing target
def test_power_law_with_a_steep_zipf_exponent_generates():
    # 30 rounds of i.i.d. draws chasing items of tiny p(i|u) took 57 s at zipf_s=3 (the
    # default size) and 58 s here; rounds that grow past the budget now go to Gumbel keys
    d = power_law(n_users=200, n_items=300, n_genres=6, interactions_per_user=200,
                  zipf_s=50.0, seed=1)
    assert np.all(d.truth.pair_prob(d.users, d.items) > 0)
    assert np.unique(d.users * d.n_items + d.items).size == d.users.size
    # each user took min(their activity, their support): the support is every item of p > 0
    support = np.count_nonzero(d.truth.prob() > 0, axis=1)
    assert np.all(np.bincount(d.users, minlength=d.n_users) <= support)
    assert np.bincount(d.users, minlength=d.n_users).min() >= min(5, support.min())


# 8. generator arguments a review found accepted and then failing ////////////////////////////


@pytest.mark.parametrize("kw, msg", [
    (dict(beta=float("inf")), r"beta must be a finite number; got inf"),
    (dict(taste_sigma=float("inf")), r"taste_sigma must be a finite number; got inf"),
    (dict(mix_concentration=float("inf")), r"mix_concentration must be a finite number"),
    (dict(activity_sigma=float("nan")), r"activity_sigma must be a finite number"),
    (dict(exposure=1e308), r"exposure=1e\+308 is too large for zipf_s=1\.1 and n_items=80"),
    (dict(exposure=1e300, zipf_s=1e10), r"exposure=1e\+300 is too large"),
    (dict(zipf_s=1e308), r"beta=1\.0 is too large for zipf_s=1e\+308"),
    (dict(beta=1e308), r"beta=1e\+308 is too large"),
    (dict(taste_sigma=1e308), r"taste_sigma=1e\+308 is too large"),
    (dict(merit="abc"), r"merit must be a finite number; got 'abc'"),
])
def test_v2_refuses_what_would_give_a_nan_truth_naming_the_argument(kw, msg):
    # each of these gave a NaN truth and an empty data set, or a raw numpy error
    with pytest.raises(ValueError, match=msg):
        power_law_v2(**SMALL, **kw)


@pytest.mark.parametrize("spec, msg", [
    ("synthetic:merit=abc", r"merit must be a finite number; got 'abc'"),
    ("synthetic:rank=4,beta=abc", r"beta must be a finite number; got 'abc'"),
    ("synthetic:exposure=abc", r"exposure must be a finite number; got 'abc'"),
    ("stream:activity_sigma=abc", r"activity_sigma must be a finite number >= 0; got 'abc'"),
])
def test_spec_values_that_are_not_numbers_are_named(spec, msg):
    with pytest.raises(ValueError, match=r"dataset spec '.*': " + msg):
        load_dataset(spec)


def test_v1_refuses_a_beta_whose_log_weights_overflow():
    for beta in (1e308, -1e308):   # a broadcasting crash, and a NaN truth with no data
        with pytest.raises(ValueError, match=r"beta=.* is too large for zipf_s=1\.1"):
            power_law(**SMALL, beta=beta)


def test_user_group_shares_summing_to_one_in_decimal_are_accepted():
    # 1 - 0.07 - 0.93 is -1.1e-16 in floats: numpy refused the group probabilities
    d = power_law_v2(**SMALL, niche_share=0.07, blockbuster_share=0.93, seed=2)
    assert set(np.unique(d.truth.user_group)) <= {0, 2}


def test_stream_takes_numpy_numbers():
    from embtab.data import power_law_stream
    a = power_law_stream(n_users=60, n_items=80, n_windows=3, interactions_per_window=4,
                         item_birth_share=0.5, half_life=2.0, seed=1)
    b = power_law_stream(n_users=60, n_items=80, n_windows=3,
                         interactions_per_window=np.int64(4), item_birth_share=np.float32(0.5),
                         half_life=np.float64(2.0), seed=1)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.timestamps, b.timestamps)


def test_stream_with_a_tiny_half_life_keeps_every_window():
    # 2**(-age / half_life) underflowed to 0: from window 2 on nobody consumed anything, and
    # at(w).prob() was all zeros although, with every item of one age, p_w = p exactly
    from embtab.data import power_law_stream
    kw = dict(n_users=80, n_items=120, n_genres=6, n_windows=4, user_join_share=0.0, seed=2)
    d = power_law_stream(**kw, item_birth_share=0.0, half_life=0.001)
    assert np.all(np.bincount(d.timestamps, minlength=4) > 0)
    np.testing.assert_allclose(d.truth.at(3).prob(), d.truth.prob(), rtol=1e-12)
    # with births, every window still has consumption, of born items the users like, and
    # every user's window truth is a distribution
    e = power_law_stream(**kw, item_birth_share=0.5, half_life=0.001)
    t = e.truth
    assert np.all(t.pair_prob(e.users, e.items) > 0)
    for w in range(4):
        sel = e.timestamps == w
        assert sel.any()
        assert np.all(t.item_birth[e.items[sel]] <= w)
        np.testing.assert_allclose(t.at(w).prob().sum(axis=1), 1.0)


def test_v2_refuses_identical_taste_factors():
    # no noise and no home genre: every taste factor was the same row, rank 4 came out as 1
    with pytest.raises(ValueError, match=r"taste_sigma=0 with genre_leak=1 makes every taste"):
        power_law_v2(**SMALL, rank=4, taste_sigma=0.0, genre_leak=1.0)
    d = power_law_v2(**SMALL, rank=1, taste_sigma=0.0, genre_leak=1.0)   # one factor: fine
    assert np.linalg.matrix_rank(d.truth.prob()) == 1


def test_split_refuses_a_test_count_that_is_not_an_integer():
    from embtab.data import train_test_split
    d = power_law(**SMALL, seed=0)
    with pytest.raises(TypeError, match=r"n_test must be an integer >= 0; got nan"):
        train_test_split(d, n_test=float("nan"))      # every user got 0 test items
    with pytest.raises(TypeError, match=r"n_test must be an integer >= 0; got 2\.7"):
        train_test_split(d, n_test=2.7)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0; got -1"):
        train_test_split(d, seed=-1)
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \[0, 1\); got nan"):
        train_test_split(d, test_fraction=float("nan"))
    # a huge count leaves each user one train item (it overflowed int64 before)
    tr, te = train_test_split(d, n_test=10**30)
    n = np.bincount(d.users, minlength=d.n_users)
    assert np.array_equal(np.bincount(tr.users, minlength=d.n_users), np.minimum(n, 1))


def test_activity_beyond_int64_or_float64_is_capped_or_refused():
    # casts of huge draws wrapped (RuntimeWarning, users clipped to 5) or raised OverflowError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.warns(UserWarning, match=r"interactions_per_user=4611686018427387904 "
                                             r"asked for 4\.61e\+18"):
            d = power_law_v2(**{**SMALL, "interactions_per_user": 2**62}, activity_sigma=0.0)
        assert np.array_equal(np.bincount(d.users, minlength=d.n_users),
                              np.count_nonzero(d.truth.prob() > 0, axis=1))   # all of support
        with pytest.warns(UserWarning, match="asked for 1e\\+30"):
            e = power_law(**{**SMALL, "interactions_per_user": 10**30}, activity_sigma=0.0)
        assert np.unique(e.users).size == e.n_users
    for gen in (power_law, power_law_v2):
        with pytest.raises(ValueError, match=r"activity_sigma=1e\+200 is too large"):
            gen(**SMALL, activity_sigma=1e200)
    from embtab.data import power_law_stream
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # each rate is capped at the 80 items, and three windows of 80 run the catalogue dry
        with pytest.warns(UserWarning, match=r"interactions_per_window=1e\+19 drew"):
            s = power_law_stream(n_users=60, n_items=80, n_windows=3,
                                 interactions_per_window=1e19)
    assert np.unique(s.users * 80 + s.items).size == s.users.size   # nothing consumed twice


# --- loaders on files no test named (a review of other layouts, 2026-12-03) -----------------

def _write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_a_header_of_known_names_picks_the_columns_by_name(tmp_path):
    # before: a header was skipped and the columns taken by position, so 'rating,item,user'
    # read ratings as users
    d = load_interactions(_write(tmp_path, "a.csv", "rating,item_id,userId,timestamp\n"
                                 "5,100,1,77\n3,101,2,78\n4,100,2,79\n"))
    assert as_u64(d.user_ids, "u").tolist() == [1, 2] and as_u64(d.item_ids, "i").tolist() == [100, 101]
    assert sorted(zip(d.users.tolist(), d.items.tolist(), d.weights.tolist())) == [
        (0, 0, 5.0), (1, 0, 4.0), (1, 1, 3.0)]
    assert sorted(d.timestamps.tolist()) == [77, 78, 79]
    # a timestamp without a weight, by name
    d = load_interactions(_write(tmp_path, "b.csv", "Item,User,Time\n100,1,5\n100,2,6\n"))
    assert d.weights is None and sorted(d.timestamps.tolist()) == [5, 6] and d.n_users == 2
    # names it does not know: by position, as before
    d = load_interactions(_write(tmp_path, "c.csv", "who,what,how much\n1,100,2\n"))
    assert d.weights.tolist() == [2.0] and as_u64(d.item_ids, "i").tolist() == [100]


@pytest.mark.parametrize("text,match", [
    (",user,item,rating\n0,196,242,3\n1,186,302,3\n", r"a.csv, line 1: header field 1 has no name.*index=False"),
    ("user,user,item\n1,2,3\n", r"a.csv, line 1: the header names two user columns"),
    ("user,item,rating\n1,100\n", r"a.csv, line 2: expected 3 fields like the header, found 2"),
])
def test_a_header_that_would_shift_the_columns_is_refused(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_interactions(_write(tmp_path, "a.csv", text))


def test_an_empty_field_between_tabs_is_refused_not_shifted(tmp_path):
    # before: '1<TAB>100<TAB><TAB>881250949' became 3 fields, the timestamp read as the weight
    with pytest.raises(ValueError, match=r"a.tsv, line 1: field 3 is empty \(two tabs"):
        load_interactions(_write(tmp_path, "a.tsv", "1\t100\t\t881250949\n2\t100\t3\t881250950\n"))
    folder = tmp_path / "ml"
    folder.mkdir()
    _write(folder, "u.data", "1\t10\t5\t881250949\n2\t10\t\t881250950\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: field 3 is empty"):
        load_movielens(folder)
    # tabs with spaces around them, and a trailing tab, are whitespace as before
    d = load_interactions(_write(tmp_path, "b.tsv", "1 \t 100\t\n2\t100\n"))
    assert d.n_users == 2 and d.n_items == 1


def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    d = load_interactions(_write(tmp_path, "a.csv", "\ufeffuser,item\n1,100\n2,100\n"))
    assert d.n_users == 2 and d.n_interactions == 2
    d = load_interactions(_write(tmp_path, "b.csv", "\ufeff1,100\n2,100\n"))
    assert as_u64(d.user_ids, "u").tolist() == [1, 2]
    folder = tmp_path / "ml"
    folder.mkdir()
    _write(folder, "u.data", "\ufeff196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    d = load_movielens(folder)
    assert as_u64(d.user_ids, "u").tolist() == [186, 196] and d.n_interactions == 2


def test_movielens_100k_item_file_whitespace_and_missing(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    _write(folder, "u.data", "1\t10\t5\t881250949\n2\t20\t3\t881250950\n")
    # no u.item: no genres and no genre names, as in the other layouts
    d = load_movielens(folder)
    assert d.n_genres == 0 and d.n_interactions == 2
    flags = ["0"] * 19
    flags[3] = "1"
    _write(folder, "u.item", "10|A|||u|" + "|".join(flags) + " \r\n20|B|||u|" + "|".join(flags) + "\n",
           "latin-1")
    d = load_movielens(folder)   # trailing whitespace after the last flag
    assert d.n_genres == 19 and [g.tolist() for g in d.item_genres] == [[3], [3]]
    flags[5] = "x"
    _write(folder, "u.item", "10|A|||u|" + "|".join(flags) + "\n", "latin-1")
    with pytest.raises(ValueError, match=r"u.item, line 1: genre flags must be 0 or 1; flag 6 "
                                         r"\(Comedy\) is 'x'"):
        load_movielens(folder)


def test_rated_items_missing_from_the_genre_file_are_warned_about(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    _write(folder, "u.data", "1\t10\t5\t881250949\n2\t20\t3\t881250950\n2\t30\t3\t881250951\n")
    _write(folder, "u.item", "10|A|||u|" + "|".join(["0"] * 18 + ["1"]) + "\n", "latin-1")
    with pytest.warns(UserWarning, match=r"u.item: 2 of the 3 rated items have no line there"):
        d = load_movielens(folder)
    assert [g.tolist() for g in d.item_genres] == [[18], [], []]
    csv = tmp_path / "latest"
    csv.mkdir()
    _write(csv, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n2,2,3.5,10\n")
    _write(csv, "movies.csv", "movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    with pytest.warns(UserWarning, match=r"movies.csv: 1 of the 2 rated items have no line"):
        load_movielens(csv)


@pytest.mark.parametrize("spec, match", [
    ("synthetic:n_users=50,n_items=20,n_users=7", "key 'n_users' is given more than once"),
    ("stream:n_users=30,n_items=25,n_windows=3,n_windows=4", "key 'n_windows' is given more"),
    ("synthetic:n_user=5", "unknown key n_user; synthetic data sets take .*n_users"),
    ("stream:n_users=30,n_items=20,foo=1", "unknown key foo; stream data sets take .*rank"),
    ("synthetic:n_users=30,n_items=20,name=", "name must be a non-empty string"),
    ("synthetic:n_users=30,n_items=20,rank=4,name=", "name must be a non-empty string"),
    ("stream:n_users=30,n_items=25,n_windows=3,name=", "name must be a non-empty string"),
])
def test_dataset_spec_refuses_repeats_unknown_keys_and_empty_names(spec, match):
    """A repeated key took its last value silently (7 users where 50 were asked first), an
    unknown key failed as "power_law() got an unexpected keyword argument" without the valid
    keys, and an empty name titled the report "Dataset ****"."""
    with pytest.raises(ValueError, match=match):
        load_dataset(spec)
    # a stream passes the keys it does not own on to power_law_v2: those are known
    assert load_dataset("stream:n_users=30,n_items=25,n_windows=3,rank=4").n_users == 30


def test_generator_names_are_strings():
    from embtab.data import power_law, power_law_v2

    with pytest.raises(TypeError, match="name must be a string; got int"):
        power_law(n_users=20, n_items=20, name=5)
    with pytest.raises(TypeError, match="name must be a string; got NoneType"):
        power_law_v2(n_users=20, n_items=20, name=None)


def test_split_by_time_orders_the_extreme_timestamps():
    """by_time sorted on -timestamps: -INT64_MIN overflows to INT64_MIN, so the earliest possible
    stamp went to the test set as the latest."""
    from embtab.data import train_test_split

    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    for ts, latest in (([lo, 5, 10], 10), ([lo, hi, 0], hi), ([5, lo, lo + 1], 5)):
        d = Interactions(name="t", user_ids=np.arange(1, dtype=np.int64),
                         item_ids=np.arange(3, dtype=np.int64), users=np.zeros(3, np.int64),
                         items=np.arange(3), timestamps=np.array(ts, dtype=np.int64))
        _, te = train_test_split(d, n_test=1, by_time=True)
        assert te.timestamps.tolist() == [latest]
