import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_data
from embtab.data import (
    MOVIELENS_GENRES,
    Interactions,
    RowSets,
    load_dataset,
    load_interactions,
    load_movielens,
    power_law,
    train_test_split,
)

SMALL = {"n_users": 300, "n_items": 500, "n_genres": 8, "interactions_per_user": 20}


@pytest.fixture(scope="module")
def small():
    return power_law(**SMALL, seed=7)


# RowSets ////////////////////////////////////////////////////////////////////////////////////


def test_rowsets_from_pairs_sorts_and_dedupes():
    # pairs (1,2) (0,3) (1,2) (0,0) -> row 0 {0, 3}, row 1 {2}, row 2 {}
    s = RowSets.from_pairs([1, 0, 1, 0], [2, 3, 2, 0], n_rows=3, n_cols=4)
    assert s.indptr.tolist() == [0, 2, 3, 3]
    assert s.indices.tolist() == [0, 3, 2]
    assert s.lengths().tolist() == [2, 1, 0]
    assert s.row_ids().tolist() == [0, 0, 1]
    assert s.to_dense().tolist() == [[True, False, False, True], [False, False, True, False],
                                     [False] * 4]
    t = s.transpose()          # columns: 0 {0}, 1 {}, 2 {1}, 3 {0}
    assert t.indptr.tolist() == [0, 1, 1, 2, 3] and t.indices.tolist() == [0, 1, 0]
    sub = s.take_rows([1, 0])
    assert sub[0].tolist() == [2] and sub[1].tolist() == [0, 3]


def test_rowsets_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        RowSets(np.array([0, 2]), np.array([3, 1]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        RowSets(np.array([0, 1]), np.array([4]), 4)
    with pytest.raises(ValueError, match="end at"):
        RowSets(np.array([0, 3]), np.array([1]), 4)


# Interactions ///////////////////////////////////////////////////////////////////////////////


def test_from_raw_dense_order_merge_and_lookup():
    big = 2**64 - 1
    d = Interactions.from_raw(np.array([big, 5, 5, 0, 5], dtype=np.uint64),
                              np.array([9, 1, 9, 1, 1], dtype=np.uint64),
                              weights=[1.0, 2.0, 3.0, 4.0, 0.5], timestamps=[7, 1, 2, 3, 9],
                              name="toy", item_genres={9: [1], 1: [0, 1], 77: [0]},
                              genre_names=["a", "b"])
    # users sorted by raw ID: 0 -> 0, 5 -> 1, 2^64-1 -> 2; items 1 -> 0, 9 -> 1
    assert d.user_ids.tolist() == [0, 5, big] and d.item_ids.tolist() == [1, 9]
    # (5, 1) appears twice: weights 2 + 0.5, latest timestamp 9
    assert d.users.tolist() == [0, 1, 1, 2] and d.items.tolist() == [0, 0, 1, 1]
    assert d.weights.tolist() == [4.0, 2.5, 3.0, 1.0]
    assert d.timestamps.tolist() == [3, 9, 2, 7]
    assert d.item_genres[0].tolist() == [0, 1] and d.item_genres[1].tolist() == [1]
    assert d.genre_names == ("a", "b")
    assert d.user_index(np.array([big, 0], dtype=np.uint64)).tolist() == [2, 0]
    assert d.item_index([9]).tolist() == [1]
    np.testing.assert_array_equal(d.raw_users, d.user_ids[d.users])
    with pytest.raises(KeyError, match="unknown user ID 6"):
        d.user_index([6])
    np.testing.assert_allclose(d.genre_weights(), [[0.5, 0.5], [0.0, 1.0]])
    assert d.summary() == {"name": "toy", "users": 3, "items": 2, "interactions": 4,
                           "top1pct_share": 0.5}


def test_interactions_validation():
    with pytest.raises(ValueError, match="duplicate interaction"):
        Interactions("x", np.array([1], np.uint64), np.array([2], np.uint64), [0, 0], [0, 0])
    with pytest.raises(TypeError, match="uint64 or int64"):
        Interactions("x", np.array([1.0]), np.array([2], np.uint64), [0], [0])
    with pytest.raises(ValueError, match="duplicate raw IDs"):
        Interactions("x", np.array([1, 1], np.uint64), np.array([2], np.uint64), [0], [0])
    with pytest.raises(ValueError, match="items must lie"):
        Interactions("x", np.array([1], np.uint64), np.array([2], np.uint64), [0], [1])


# generator //////////////////////////////////////////////////////////////////////////////////


def test_power_law_is_seeded(small):
    again = power_law(**SMALL, seed=7)
    other = power_law(**SMALL, seed=8)
    for f in ("user_ids", "item_ids", "users", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(small, f), getattr(again, f))
    np.testing.assert_array_equal(small.truth.user_mix, again.truth.user_mix)
    assert not np.array_equal(small.item_ids, other.item_ids)


def test_power_law_shapes_and_ids(small):
    d = small
    assert (d.n_users, d.n_items, d.n_genres) == (300, 500, 8)
    assert d.user_ids.dtype == np.uint64 and d.item_ids.dtype == np.uint64
    assert np.unique(d.user_ids).size == 300 and np.unique(d.item_ids).size == 500
    # random 64-bit IDs, not 0..n-1: most have the top bit region populated
    assert d.item_ids.max() > 2**60
    assert d.genre_names == tuple(f"g{g:02d}" for g in range(8))
    assert d.weights is None and d.timestamps is not None
    s = d.summary()
    assert set(s) == {"name", "users", "items", "interactions", "top1pct_share"}
    assert s["interactions"] == d.n_interactions and 0 < s["top1pct_share"] < 1


def test_power_law_planted_structure(small):
    d, t = small, small.truth
    # 1-3 genres per item, every genre used; 1-3 interest genres per user; mixes sum to 1
    assert set(np.unique(d.item_genres.lengths())) <= {1, 2, 3}
    assert np.all(np.bincount(d.item_genres.indices, minlength=8) > 0)
    n_interests = (t.user_mix > 0).sum(axis=1)
    assert set(np.unique(n_interests)) == {1, 2, 3}
    np.testing.assert_allclose(t.user_mix.sum(axis=1), 1.0)
    p = t.prob()
    assert p.shape == (300, 500)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(t.pair_prob([3, 4], [10, 20]), [p[3, 10], p[4, 20]])
    # every interaction has positive true preference; per-user items distinct
    assert np.all(p[d.users, d.items] > 0)
    key = d.users * d.n_items + d.items
    assert np.unique(key).size == key.size
    # timestamps are the consumption order 0..n_u-1 within each user
    n_u = np.bincount(d.users, minlength=d.n_users)
    assert np.all(n_u >= 5)
    assert np.array_equal(np.sort(d.timestamps[d.users == 0]), np.arange(n_u[0]))


def test_power_law_popularity_and_genre_mix_show_up():
    d = power_law(n_users=1000, n_items=1000, n_genres=6, interactions_per_user=20, seed=1)
    t = d.truth
    counts = d.item_counts()
    # Zipf: the 10% most popular items by planted popularity collect far more than 10%
    top = np.argsort(-t.popularity)[:100]
    assert counts[top].sum() / counts.sum() > 0.3
    assert d.summary()["top1pct_share"] > 0.05
    # consumed genre mix tracks the planted mix: mean total-variation distance is small
    w = d.genre_weights()
    consumed = np.zeros((d.n_users, d.n_genres))
    np.add.at(consumed, d.users, w[d.items])
    consumed /= consumed.sum(axis=1, keepdims=True)
    tv = 0.5 * np.abs(consumed - t.user_mix).sum(axis=1)
    assert tv.mean() < 0.3


def test_power_law_fixed_activity_and_capped_support():
    d = power_law(n_users=50, n_items=60, n_genres=3, interactions_per_user=7,
                  activity_sigma=0.0, seed=2)
    assert np.all(np.bincount(d.users, minlength=50) == 7)
    # a user cannot consume more items than their genres hold, and a warning says so
    with pytest.warns(UserWarning, match=r"interactions_per_user=50 asked for .* but the data "
                                         r"holds only"):
        tiny = power_law(n_users=20, n_items=12, n_genres=4, interactions_per_user=50, seed=3)
    p = tiny.truth.prob()
    n_u = np.bincount(tiny.users, minlength=20)
    assert np.all(n_u == (p > 0).sum(axis=1))


def test_power_law_argument_errors():
    with pytest.raises(ValueError, match="n_genres"):
        power_law(n_items=3, n_genres=5)
    with pytest.raises(ValueError, match="genres_per_item"):
        power_law(genres_per_item=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="zipf_s"):
        power_law(zipf_s=0)


# loaders ////////////////////////////////////////////////////////////////////////////////////


def test_load_interactions_whitespace_weights_and_comments(tmp_path):
    p = tmp_path / "clicks.txt"
    p.write_text("# a comment\n10 100 1.5\n\n10\t200   2\n-1 100 1\n18446744073709551615 7 1\n")
    d = load_interactions(p)
    assert d.name == "clicks"
    # -1 is stored as its uint64 bit pattern 2^64 - 1 and so is the same user as the last line
    assert d.user_ids.tolist() == [10, 2**64 - 1]
    assert d.item_ids.tolist() == [7, 100, 200]
    assert d.n_interactions == 4
    assert d.weights.tolist() == [1.5, 2.0, 1.0, 1.0]
    assert d.timestamps is None and d.n_genres == 0


def test_load_interactions_csv_header_timestamps_duplicates_categories(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,weight,time\n1,5,1,100\n1,5,2,300\n2,6,1,200\n2,5,1,50\n")
    c = tmp_path / "cats.tsv"
    c.write_text("item\tcategory\n5\tScience Fiction\n5\tDrama\n6\tDrama\n999\tWestern\n")
    d = load_interactions(p, categories=c)
    # (1, 5) merged: weight 1 + 2, latest time 300
    assert d.users.tolist() == [0, 1, 1] and d.items.tolist() == [0, 0, 1]
    assert d.weights.tolist() == [3.0, 1.0, 1.0] and d.timestamps.tolist() == [300, 50, 200]
    # genre indices follow sorted names; item 999 is not in the data and is ignored
    assert d.genre_names == ("Drama", "Science Fiction", "Western")
    assert d.item_genres[0].tolist() == [0, 1] and d.item_genres[1].tolist() == [0]


@pytest.mark.parametrize("text, line, what", [
    ("1 2\n3 x\n", 2, "item 'x'"),
    ("1 2\n3 4 5\n", 2, "expected 2 fields"),
    ("1 2 1.0\n3 4 nan\n", 2, "weight 'nan'"),
    ("user item\n1 2\n\n7\n", 4, "expected 2 fields"),
    ("1,2\n3,,4\n", 2, "expected 2 fields"),
    ("1,2\n3,\n", 2, "item ''"),
    ("1 2 3 4 5\n", 1, "2 to 4 fields"),
    ("1 2\n18446744073709551616 3\n", 2, "user '18446744073709551616'"),
    ("1 2 1 5\n1 3 1 4.5\n", 2, "timestamp '4.5'"),
    # line 1 is data in another separator, not a header that the error then blamed
    ("1;2\n3;4\n", 1, "'1;2' is separated by ';': fields are separated by whitespace"),
])
def test_load_interactions_malformed_names_file_and_line(tmp_path, text, line, what):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(ValueError) as e:
        load_interactions(p)
    assert f"bad.txt, line {line}:" in str(e.value)
    assert what in str(e.value)


def test_load_categories_malformed(tmp_path):
    p = tmp_path / "ok.txt"
    p.write_text("1 2\n")
    c = tmp_path / "cats.txt"
    for bad in ("2\n", "2 ,\n", "2,,\n"):
        c.write_text("2 Drama\n" + bad)
        with pytest.raises(ValueError, match=r"cats.txt, line 2: expected 'item category'"):
            load_interactions(p, categories=c)
    c.write_text("2 Drama\nabc Comedy\n")
    with pytest.raises(ValueError, match=r"cats.txt, line 2: item 'abc'"):
        load_interactions(p, categories=c)


def test_categories_lines_split_at_the_first_separator_of_each_line(tmp_path):
    # A whitespace file whose category has a comma was taken for a CSV (its separator guessed
    # from any line), and a correct line was then refused; each line now splits on its own.
    p = tmp_path / "log.txt"
    p.write_text("1 10\n1 11\n2 12\n")
    c = tmp_path / "cats.txt"
    c.write_text("10 Children's, Family\n11 Drama\n12,Film Noir\n")
    with pytest.warns(UserWarning, match=r"1 category names hold ',' or '\|' .*Children's, Family"):
        d = load_interactions(p, categories=c)
    assert d.genre_names == ("Children's, Family", "Drama", "Film Noir")
    assert [d.item_genres[i].tolist() for i in range(3)] == [[0], [1], [2]]
    # several labels on one line are one composite category, and the warning says so
    c.write_text("10,Action,Comedy\n11,Drama\n12,Drama\n")
    with pytest.warns(UserWarning, match="'Action,Comedy'.*a line per category"):
        assert load_interactions(p, categories=c).genre_names == ("Action,Comedy", "Drama")


def test_weights_at_or_below_zero_warn_that_every_line_is_a_positive(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("user,item,label\n1,10,1\n1,11,0\n2,10,-1\n")
    with pytest.warns(UserWarning, match=r"2 of 3 lines \(first: line 3\) have a weight <= 0"):
        d = load_interactions(p)
    assert d.n_interactions == 3   # kept: the warning tells the user, the loader does not guess
    p.write_text("user,item,label\n1,10,1\n1,11,0.5\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_interactions(p)


def test_load_interactions_errors_for_empty_and_missing(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no interactions"):
        load_interactions(p)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_interactions(tmp_path / "nope.txt")


def _write_fake_movielens(folder):
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n"
                                   "2\t20\t4\t881250951\n")
    flags10 = ["0"] * 19
    flags10[1] = flags10[8] = "1"
    flags20 = ["0"] * 19
    flags20[5] = "1"
    flags30 = ["1"] + ["0"] * 18
    (folder / "u.item").write_bytes(
        ("10|Caf\xe9 (1995)|01-Jan-1995||http://x|" + "|".join(flags10) + "\n"
         "20|B (1996)|||http://y|" + "|".join(flags20) + "\n"
         "30|C|||http://z|" + "|".join(flags30) + "\n").encode("latin-1"))


def test_load_movielens_format_without_the_real_data(tmp_path):
    folder = tmp_path / "ml"
    _write_fake_movielens(folder)
    d = load_movielens(folder)
    assert (d.n_users, d.n_items, d.n_interactions, d.n_genres) == (2, 2, 3, 19)
    assert d.genre_names == MOVIELENS_GENRES   # no u.genre: built-in names
    assert d.weights.tolist() == [5.0, 3.0, 4.0]
    assert d.timestamps.tolist() == [881250949, 881250950, 881250951]
    assert d.item_genres[0].tolist() == [1, 8] and d.item_genres[1].tolist() == [5]
    # the u.data path itself works too
    assert load_movielens(folder / "u.data").n_interactions == 3
    (folder / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: expected 4 tab-separated"):
        load_movielens(folder)


@pytest.mark.data
def test_load_real_movielens_100k():
    path = shared_data("ml-100k")
    d = load_movielens(path)
    assert (d.n_users, d.n_items, d.n_interactions, d.n_genres) == (943, 1682, 100_000, 19)
    assert d.genre_names[0] == "unknown" and d.genre_names[-1] == "Western"
    assert np.all(d.item_genres.lengths() >= 1)           # every movie has a genre flag
    assert set(np.unique(d.weights)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # ratings per user >= 20 in ml-100k
    assert np.bincount(d.users).min() >= 20
    # Toy Story (item 1) is Animation, Children's, Comedy
    toy = d.item_index([1])[0]
    assert [d.genre_names[g] for g in d.item_genres[toy]] == ["Animation", "Children's",
                                                              "Comedy"]
    s = d.summary()
    assert s["name"] == "ml-100k" and 0 < s["top1pct_share"] < 0.2
    assert load_dataset(f"movielens:{path}").n_interactions == 100_000


def test_load_dataset_specs(tmp_path):
    d = load_dataset("synthetic:n_users=40,n_items=50,n_genres=4,interactions_per_user=5",
                     seed=3)
    ref = power_law(n_users=40, n_items=50, n_genres=4, interactions_per_user=5, seed=3)
    np.testing.assert_array_equal(d.items, ref.items)
    with pytest.warns(UserWarning, match="asked for"):   # 50 per user of 50 items, 18 genres
        assert load_dataset("synthetic:n_users=40,n_items=50,seed=9").summary() == \
            power_law(n_users=40, n_items=50, seed=9).summary()
    p = tmp_path / "x.csv"
    p.write_text("1,2\n3,4\n")
    c = tmp_path / "c.txt"
    c.write_text("2 A\n4 B\n")
    d = load_dataset(f"interactions:{p},categories={c}")
    assert d.n_interactions == 2 and d.genre_names == ("A", "B")
    assert load_dataset(f"interactions:{p}").n_genres == 0
    for bad in ("nope", "movielens:", "synthetic:n_users", "synthetic:colour=3"):
        with pytest.raises(ValueError, match="spec"):
            load_dataset(bad)
    # interactions: names an unknown key and a repeated or empty categories= (they were read
    # as part of a file name, or ignored)
    with pytest.raises(ValueError, match="unknown key 'foo'"):
        load_dataset(f"interactions:{p},foo=1")
    with pytest.raises(FileNotFoundError):   # a comma in a file name is not a key
        load_dataset(f"interactions:{tmp_path}/missing,v2.csv")
    for bad in (f"interactions:{p},categories={c},categories={c}", f"interactions:{p},categories="):
        with pytest.raises(ValueError, match="categories= must be given once, with a path"):
            load_dataset(bad)
    # stream: lists only the keys it takes; a power_law_v2 key it refuses says why
    with pytest.raises(ValueError, match="unknown key foo") as e:
        load_dataset("stream:foo=1")
    assert "interactions_per_user" not in str(e.value) and "interactions_per_window" in str(e.value)
    with pytest.raises(ValueError, match="takes no interactions_per_user .*use interactions_per_window"):
        load_dataset("stream:interactions_per_user=3")


# split //////////////////////////////////////////////////////////////////////////////////////


def _check_split(d, train, test):
    assert train.n_interactions + test.n_interactions == d.n_interactions
    for part in (train, test):
        assert part.user_ids is d.user_ids and part.item_ids is d.item_ids
        assert part.item_genres is d.item_genres and part.truth is d.truth
    k_all = set((d.users * d.n_items + d.items).tolist())
    k_tr = set((train.users * d.n_items + train.items).tolist())
    k_te = set((test.users * d.n_items + test.items).tolist())
    assert not (k_tr & k_te) and (k_tr | k_te) == k_all
    n = np.bincount(d.users, minlength=d.n_users)
    n_tr = np.bincount(train.users, minlength=d.n_users)
    n_te = np.bincount(test.users, minlength=d.n_users)
    assert np.all(n_tr[n >= 1] >= 1)
    return n, n_tr, n_te


def test_random_split_fraction_and_seed(small):
    train, test = train_test_split(small, test_fraction=0.2, seed=1)
    n, _n_tr, n_te = _check_split(small, train, test)
    np.testing.assert_array_equal(n_te, np.clip(np.floor(0.2 * n + 0.5), 1, n - 1))
    again = train_test_split(small, test_fraction=0.2, seed=1)[1]
    other = train_test_split(small, test_fraction=0.2, seed=2)[1]
    np.testing.assert_array_equal(test.items, again.items)
    assert not np.array_equal(test.items, other.items)


def test_leave_last_out(small):
    train, test = train_test_split(small, n_test=1, by_time=True)
    _check_split(small, train, test)
    # each user's test item is their latest interaction
    last = np.full(small.n_users, -1)
    np.maximum.at(last, small.users, small.timestamps)
    np.testing.assert_array_equal(test.timestamps, last[test.users])
    assert test.n_interactions == small.n_users
    # by fraction: every test timestamp is later than every train timestamp of that user
    train, test = train_test_split(small, test_fraction=0.3, by_time=True)
    max_tr = np.full(small.n_users, -1)
    np.maximum.at(max_tr, train.users, train.timestamps)
    assert np.all(test.timestamps > max_tr[test.users])


def test_split_errors():
    d = Interactions.from_raw([1, 2], [3, 4])
    with pytest.raises(ValueError, match="needs timestamps"):
        train_test_split(d, by_time=True)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(d, test_fraction=1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=15), st.floats(0.0, 0.95),
       st.integers(0, 2**32 - 1))
def test_split_keeps_a_train_item_for_every_user(sizes, fraction, seed):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(sizes)), sizes)
    items = np.concatenate([rng.choice(20, size=s, replace=False) for s in sizes])
    d = Interactions.from_raw(users, items, timestamps=rng.integers(0, 5, users.size))
    for by_time in (False, True):
        train, test = train_test_split(d, test_fraction=fraction, seed=seed, by_time=by_time)
        n, _n_tr, n_te = _check_split(d, train, test)
        if fraction > 0:
            assert np.all(n_te[n >= 2] >= 1)
        assert np.all(n_te[n == 1] == 0)


# the truth protocol /////////////////////////////////////////////////////////////////////////


def test_ground_truth_implements_the_truth_protocol(small):
    from embtab.data import GroundTruth, Truth

    t = small.truth
    assert isinstance(t, GroundTruth) and isinstance(t, Truth)
    p = t.prob([0, 3])
    assert p.shape == (2, small.n_items) and np.allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(t.pair_prob([0, 3], [5, 9]), [p[0, 5], p[1, 9]])
    # an object without pair_prob is not a Truth
    assert not isinstance(object(), Truth)


def test_rowsets_split_weights():
    # row 0 {0, 2}: 1/2 each; row 1 {}: zeros; row 2 {1}: 1
    w = RowSets.from_lists([[2, 0], [], [1]], n_cols=3).split_weights()
    np.testing.assert_array_equal(w, [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_data_package_keeps_its_import_paths():
    import embtab.data as d
    from embtab.data import containers, loaders, split, synthetic, truth

    assert d.power_law is synthetic.power_law and d.Interactions is containers.Interactions
    assert d.load_dataset is loaders.load_dataset and d.train_test_split is split.train_test_split
    assert d.GroundTruth is truth.GroundTruth
    assert sorted(d.__all__) == sorted(n for n in d.__all__ if hasattr(d, n))


def _write_ml1m(folder):
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n"
                                        "2::10::4::978301968\n2::30::4.5::978300275\n")
    (folder / "movies.dat").write_bytes(
        ("10::Toy Story (1995)::Animation|Children's|Comedy\n"
         "20::Jumanji (1995)::Adventure|Children's|Fantasy\n"
         "30::Caf\xe9 (1995)::(no genres listed)\n40::Never rated::Drama\n").encode("latin-1"))


def test_load_movielens_1m_layout(tmp_path):
    folder = tmp_path / "ml-1m"
    _write_ml1m(folder)
    for p in (folder, folder / "ratings.dat"):
        d = load_movielens(p)
        assert (d.name, d.n_users, d.n_items, d.n_interactions) == ("ml-1m", 2, 3, 4)
        assert d.genre_names == ("Adventure", "Animation", "Children's", "Comedy", "Drama",
                                 "Fantasy")
        assert [[d.genre_names[g] for g in d.item_genres[i]] for i in range(3)] == [
            ["Animation", "Children's", "Comedy"], ["Adventure", "Children's", "Fantasy"], []]
        assert d.weights.tolist() == [5.0, 3.0, 4.0, 4.5]
        assert d.timestamps.tolist() == [978300760, 978302109, 978301968, 978300275]
    assert load_dataset(f"movielens:{folder}").n_interactions == 4
    (folder / "movies.dat").unlink()  # no genre file: no genres
    assert load_movielens(folder).n_genres == 0
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3\n")
    with pytest.raises(ValueError, match=r"ratings.dat, line 2: expected 4 '::'-separated"):
        load_movielens(folder)


def test_load_movielens_csv_layout(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
                                        "1,3,4.0,964981247\n2,1,3.5,964982224\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Comedy\n"
        '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n', encoding="utf-8")
    d = load_movielens(folder)
    assert (d.name, d.n_users, d.n_items, d.n_interactions) == ("ml-latest-small", 2, 2, 3)
    assert d.genre_names == ("Adventure", "Animation", "Comedy", "Romance")
    assert [d.item_genres[i].tolist() for i in range(2)] == [[0, 1, 2], [2, 3]]
    assert d.weights.tolist() == [4.0, 4.0, 3.5]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,x,4.0,9\n")
    with pytest.raises(ValueError, match=r"ratings.csv, line 3: item 'x' is not"):
        load_movielens(folder)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"movies.csv, line 2: expected 4 comma-separated"):
        load_movielens(folder / "movies.csv")  # read as ratings: its layout, by its first line


def test_load_movielens_reads_in_chunks(tmp_path, monkeypatch):
    import embtab.data.loaders as L

    monkeypatch.setattr(L, "_CHUNK_LINES", 3)  # 10 lines: 4 chunks, one blank line
    folder = tmp_path / "ml"
    folder.mkdir()
    lines = [f"{u}::{u * 7 % 5}::{u % 5 + 1}::{1000 + u}" for u in range(9)]
    lines.insert(4, "")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    d = load_movielens(folder)
    assert d.n_interactions == 9 and sorted(d.timestamps.tolist()) == list(range(1000, 1009))
    lines[8] = "8::3::oops::1008"  # line 9, in the third chunk
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"ratings.dat, line 9: rating 'oops'"):
        load_movielens(folder)


def test_load_movielens_other_ratings_files_bom_and_comments(tmp_path):
    folder = tmp_path / "ml"
    _write_fake_movielens(folder)
    (folder / "u1.base").write_text("# a split\n1\t10\t5\t881250949\n2\t20\t3\t881250950\n")
    d = load_movielens(folder / "u1.base")
    # a folder in the 100K layout that is not the published data is named by its folder, and
    # a split of it by the folder and the file
    assert d.n_interactions == 2 and d.n_genres == 19 and d.name == "ml/u1.base"
    csv = tmp_path / "latest"
    csv.mkdir()
    (csv / "ratings.csv").write_bytes("\ufeff1,1,4.0,9\n2,1,3.5,10\n".encode("utf-8"))  # BOM
    (csv / "movies.csv").write_bytes("\ufeff1,Toy Story (1995),Comedy\n".encode("utf-8"))
    d = load_movielens(csv)
    assert d.n_interactions == 2 and d.genre_names == ("Comedy",)
    assert d.item_genres[0].tolist() == [0]
