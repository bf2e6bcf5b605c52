"""The time-ordered stream generator and time windows (embtab.data.stream)."""

import math
import warnings

import numpy as np
import pytest

from embtab.data import (
    Interactions,
    StreamTruth,
    load_dataset,
    load_interactions,
    power_law,
    power_law_stream,
    time_windows,
)


def tiny(**kw):
    args = dict(n_users=150, n_items=200, n_windows=4, seed=0)
    return power_law_stream(**{**args, **kw})


# the generator ///////////////////////////////////////////////////////////////////////////////


def test_item_birth_share_sets_the_late_items_and_none_is_consumed_unborn():
    for share in (0.0, 0.3, 0.6):
        d = tiny(item_birth_share=share)
        birth = d.truth.item_birth
        assert int((birth > 0).sum()) == round(share * d.n_items)
        assert birth.min() >= 0 and birth.max() <= 3
        assert np.all(d.timestamps >= birth[d.items])
    # share of the alive items born after window 0 grows over windows and ends at the knob
    d = tiny(item_birth_share=0.6, n_windows=5)
    late = [float((d.truth.item_birth[d.truth.alive(w)] > 0).mean()) for w in range(5)]
    assert late[0] == 0.0
    assert all(b > a for a, b in zip(late, late[1:]))
    assert late[-1] == pytest.approx(round(0.6 * d.n_items) / d.n_items)


def test_late_items_are_consumed_after_their_birth():
    d = tiny(item_birth_share=0.5, n_windows=4, interactions_per_window=10)
    birth = d.truth.item_birth
    late_hits = birth[d.items] > 0
    assert late_hits.any()                       # new items do get consumed
    # every window after 0 holds some item born in that very window
    for w in range(1, 4):
        assert np.any(birth[d.items[d.timestamps == w]] == w)


def test_half_life_makes_a_faded_item_lose_its_interaction_rate():
    """Interactions per active user on the items born in window 0, in the last window: with a
    half-life of 1 window they fall far below the no-fading stream (same seed, same taste)."""
    rate = {}
    for hl in (1.0, math.inf):
        d = power_law_stream(n_users=300, n_items=400, n_windows=5, item_birth_share=0.5,
                             half_life=hl, user_join_share=0.0, seed=3)
        old = d.truth.item_birth[d.items] == 0
        rate[hl] = [old[d.timestamps == w].sum() / d.n_users for w in range(5)]
    assert rate[1.0][0] == rate[math.inf][0]                 # window 0: nothing has faded
    assert rate[1.0][-1] < 0.5 * rate[math.inf][-1]
    assert all(b < a for a, b in zip(rate[1.0], rate[1.0][1:]))


def test_vitality_halves_every_half_life_and_is_zero_before_birth():
    d = tiny(item_birth_share=0.5, half_life=2.0)
    t = d.truth
    b = t.item_birth
    for w in range(4):
        v = t.vitality(w)
        np.testing.assert_allclose(v[b <= w], 2.0 ** (-(w - b[b <= w]) / 2.0))
        assert np.all(v[b > w] == 0)
    assert np.all(tiny(half_life=math.inf).truth.vitality(3)[b <= 3] == 1.0)


def test_user_join_share_and_no_user_acts_before_joining():
    for share in (0.0, 0.4):
        d = tiny(user_join_share=share)
        join = d.truth.user_join
        assert int((join > 0).sum()) == round(share * d.n_users)
        assert np.all(d.timestamps >= join[d.users])
    d = tiny(user_join_share=0.4)
    active = [np.unique(d.users[d.timestamps == w]).size for w in range(4)]
    assert active[-1] > active[0]                # users keep arriving


def test_window_truth_is_the_taste_times_vitality_over_the_given_items():
    d = tiny(item_birth_share=0.5)
    t = d.truth
    known = np.zeros(d.n_items, bool)
    known[::2] = True
    wt = t.at(2, users=[3, 7], items=known)
    p = wt.prob()
    expect = t.prob([3, 7]) * (t.vitality(2) * known)[None, :]
    np.testing.assert_allclose(p, expect / expect.sum(axis=1, keepdims=True))
    assert np.all(p[:, ~t.alive(2)] == 0)
    np.testing.assert_allclose(wt.pair_prob([1], [int(np.argmax(p[1]))]), [p[1].max()])
    with pytest.raises(ValueError, match="items must be a bool mask of shape"):
        t.at(1, items=known[:5])
    with pytest.raises(ValueError, match="window must be an integer in"):
        t.vitality(4)


def test_an_extreme_exposure_leaves_every_joined_user_in_the_stream():
    # popularity**gamma underflows to 0 for most items here; the stream weighs items in logs,
    # so users keep consuming what they like, none twice and none unborn
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the RuntimeWarning of a 0 / 0 row
        d = tiny(exposure=300.0, user_join_share=0.0, interactions_per_window=6)
    t = d.truth
    assert (t.base.exposure == 0).sum() > 0.9 * d.n_items
    assert np.unique(d.users).size == d.n_users
    assert (t.pair_prob(d.users, d.items) > 0).all()
    assert np.unique(d.users * d.n_items + d.items).size == d.users.size
    assert (d.timestamps >= t.item_birth[d.items]).all()


def test_v2_knobs_pass_through_and_the_spec_reaches_the_generator():
    d = load_dataset("stream:n_users=60,n_items=90,n_windows=3,rank=3,half_life=1.5")
    assert isinstance(d.truth, StreamTruth)
    assert int(np.linalg.matrix_rank(d.truth.prob())) == 3
    assert d.truth.half_life == 1.5 and d.truth.n_windows == 3
    assert np.array_equal(time_windows(d), d.timestamps)
    again = load_dataset("stream:n_users=60,n_items=90,n_windows=3,rank=3,half_life=1.5")
    assert np.array_equal(again.items, d.items)                  # seeded


@pytest.mark.parametrize("kw, what", [
    (dict(item_birth_share=1.0), "item_birth_share"),
    (dict(item_birth_share=-0.1), "item_birth_share"),
    (dict(user_join_share=1.5), "user_join_share"),
    (dict(half_life=0.0), "half_life"),
    (dict(half_life=float("nan")), "half_life"),
    (dict(n_windows=0), "n_windows"),
    (dict(n_windows=1), "n_windows >= 2"),
    (dict(interactions_per_window=0), "interactions_per_window"),
    (dict(interactions_per_user=5), "interactions_per_user"),
    (dict(crowding=True), "crowding"),
])
def test_bad_generator_arguments_are_refused_by_name(kw, what):
    with pytest.raises(ValueError, match=what):
        tiny(**kw)


# time windows ////////////////////////////////////////////////////////////////////////////////


def test_time_windows_are_equal_width_over_the_time_span():
    d = Interactions.from_raw([1, 1, 2, 2, 3], [5, 6, 5, 7, 6], timestamps=[0, 99, 50, 100, 51])
    # span 101 cut in 2: window 0 = [0, 50], window 1 = [51, 100]; pairs sorted by (user, item)
    assert d.timestamps.tolist() == [0, 99, 50, 100, 51]
    assert time_windows(d, 2).tolist() == [0, 1, 0, 1, 1]
    assert time_windows(d, 1).tolist() == [0] * 5
    big = Interactions.from_raw([1, 2, 3], [1, 1, 1], timestamps=[2**62, 2**62 + 10, 2**63 - 1])
    assert time_windows(big, 3).tolist() == [0, 0, 2]             # no int64 overflow
    top = Interactions.from_raw([1, 2], [1, 1], timestamps=[2**63 - 2, 2**63 - 1])
    assert time_windows(top, 5).tolist() == [0, 2]   # span 2 < 5 windows: starts past INT64_MAX


@pytest.mark.parametrize("seed", range(6))
def test_time_windows_match_the_formula_anywhere_in_int64(seed):
    # Oracle: floor((t - t0) * n / span) in Python ints, on spans short and long, at the top
    # and bottom of int64 (a span shorter than n near INT64_MAX overflowed the edges).
    rng = np.random.default_rng(seed)
    lo, hi = -(2**63), 2**63 - 1
    for _ in range(40):
        span = int(rng.choice([1, 2, 3, 7, 1000, 2**40, 2**63, 2**64 - 1]))
        t0 = int(rng.choice([lo, hi - span + 1, 0, -span // 2]))
        t0 = min(max(t0, lo), hi - span + 1)
        k = int(rng.integers(1, 30))
        ts = [t0, t0 + span - 1] + [t0 + int(x) for x in rng.integers(0, span, k, dtype=np.uint64)]
        n = int(rng.integers(1, 12))
        d = Interactions.from_raw(np.zeros(len(ts), np.int64), np.arange(len(ts)), timestamps=ts)
        got = time_windows(d, n).tolist()
        want = [(t - t0) * n // span for t in ts]
        assert got == want, (ts, n)


def test_time_windows_refuse_data_without_timestamps_naming_it(tmp_path):
    p = tmp_path / "clicks.txt"
    p.write_text("1 10 1.0\n2 10 1.0\n2 11 1.0\n")
    d = load_interactions(p)
    with pytest.raises(ValueError, match="'clicks' has no timestamps"):
        time_windows(d, 3)
    with pytest.raises(ValueError, match="n_windows is required"):
        time_windows(Interactions.from_raw([1], [2], timestamps=[5]))
    with pytest.raises(ValueError, match="n_windows must be an integer >= 1"):
        time_windows(Interactions.from_raw([1], [2], timestamps=[5]), 0)


def test_time_windows_of_a_stream_keep_its_own_indices_when_edge_windows_are_empty():
    # nearly every user joins late, so window 0 holds nothing: equal-width windows over the
    # timestamps present relabelled windows 1-3 as 0-2 and reported an empty "window 3"
    d = tiny(n_users=30, n_items=40, user_join_share=0.99, seed=0)
    assert np.bincount(d.timestamps, minlength=4)[0] == 0
    assert np.array_equal(time_windows(d), d.timestamps)
    # a subset keeps them too, and any other count still makes equal-width windows
    tr = d.subset(d.timestamps >= 2)
    assert np.array_equal(time_windows(tr), tr.timestamps)
    assert set(time_windows(d, 2).tolist()) == {0, 1}


def test_a_catalogue_that_runs_dry_warns_with_the_drawn_and_held_counts():
    # 50 users drawing ~8 items in each of 8 windows from 20 items: each user can hold at most
    # 20, so the later windows fall far short of what the rates drew
    with pytest.warns(UserWarning, match=r"power_law_stream: interactions_per_window=8\.0 "
                                         r"drew [\d,]+ interactions over 8 windows, but the "
                                         r"stream holds only ([\d,]+)") as rec:
        d = power_law_stream(n_users=50, n_items=20, n_windows=8, interactions_per_window=8.0,
                             seed=0)
    held = [w for w in rec if "power_law_stream" in str(w.message)]
    assert len(held) == 1 and held[0].filename == __file__
    assert f"holds only {d.users.size:,} " in str(held[0].message)
    assert d.users.size <= 50 * 20
    # a catalogue large enough for the windows: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        power_law_stream(n_users=50, n_items=2000, n_windows=8, interactions_per_window=8.0,
                         seed=0)


def test_load_dataset_warnings_point_at_the_callers_line():
    with pytest.warns(UserWarning, match=r"^power_law_stream: interactions_per_window") as rec:
        load_dataset("stream:n_users=50,n_items=20")
    assert [w.filename for w in rec] == [__file__]


def test_stream_argument_errors_name_the_stream_and_an_empty_stream_warns():
    # power_law_stream(bogus=1) raised power_law_v2's TypeError; a rate that draws nothing
    # gave an empty stream without a word; probabilities given as a word raised NumPy's error
    with pytest.raises(TypeError, match=r"power_law_stream\(\) got an unexpected keyword "
                                        r"argument 'bogus'"):
        power_law_stream(n_users=10, n_items=20, bogus=1)
    with pytest.warns(UserWarning, match="drew no interaction over 8 windows: the stream is "
                                         "empty"):
        d = power_law_stream(n_users=10, n_items=20, interactions_per_window=1e-9)
    assert d.n_interactions == 0
    with pytest.raises(ValueError, match="interests_per_user must be 3 probabilities"):
        power_law_stream(n_users=10, n_items=20, interests_per_user="abc")
    for key in ("interests_per_user", "genres_per_item"):
        with pytest.raises(ValueError, match=f"{key} must be 3 probabilities"):
            power_law(n_users=10, n_items=20, **{key: "abc"})
