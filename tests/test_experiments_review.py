"""Experiment arguments a review found accepted silently: each is refused before anything trains
(or, for the calibrated lists and the intervals, now gives the defined result)."""

import numpy as np
import pytest

from embtab import experiments as ex
from embtab import metrics
from embtab.data import power_law, train_test_split
from embtab.experiments.intervals import interval

TINY = "synthetic:n_users=40,n_items=30,interactions_per_user=6,n_genres=2"
STREAM3 = "stream:n_users=30,n_items=25,n_genres=3,n_windows=3"


# calibrated lists: -inf (excluded) stays -inf under every scaling ///////////////////////////


@pytest.fixture(scope="module")
def masked():
    d = power_law(n_users=50, n_items=40, n_genres=4, interactions_per_user=10, seed=0)
    train, _ = train_test_split(d, seed=0)
    scores = np.random.default_rng(0).standard_normal((train.n_users, train.n_items))
    scores[train.users, train.items] = -np.inf
    return train, scores


@pytest.mark.parametrize("scaling", sorted(ex.SCORE_SCALINGS))
def test_every_score_scaling_keeps_excluded_items_out_of_the_lists(masked, scaling):
    # sigmoid mapped -inf to 0.0, a finite score: at λ = 0.99 the reranker picked excluded
    # items, which drop_excluded then removed (46 of 50 users got short lists)
    train, scores = masked
    dist, _ = ex.categories(train)
    values = np.array([[0.5, -np.inf, -800.0, 3.0]])
    out = ex.SCORE_SCALINGS[scaling][1](values)
    assert np.isneginf(out[0, 1]) and np.isfinite(out[0, [0, 2, 3]]).all()
    lists = ex.calibrated_lists(scores, train, dist, 40, [0.0, 0.99], score_scaling=scaling)
    listable = (~np.isneginf(scores)).sum(axis=1)
    for lam, top in lists.items():
        assert (metrics.list_lengths(top, 10) == np.minimum(10, listable)).all(), lam


def test_calibrated_lists_refuse_plus_inf_scores(masked):
    train, scores = masked
    bad = scores.copy()
    bad[3, 5] = np.inf
    dist, _ = ex.categories(train)
    for scaling in ex.SCORE_SCALINGS:   # minmax and rank read it as -inf, sigmoid as 1
        with pytest.raises(ValueError, match=r"scores row 3 holds \+inf"):
            ex.calibrated_lists(bad, train, dist, 40, [0.5], score_scaling=scaling)


# sweeps and counts refused by name /////////////////////////////////////////////////////////


@pytest.mark.parametrize("call, error, match", [
    # duplicates doubled the rows and took n = 2 × seeds for the intervals
    (lambda: ex.run_feedback(TINY, 1, etas=(0.0, 0.0), rounds=1), ValueError,
     "etas must hold distinct values"),
    (lambda: ex.stream.run_stream(STREAM3, 1, designs=("hashed", "hashed")), ValueError,
     "designs must hold distinct values"),
    (lambda: ex.budget.run_budget(TINY, 1, budgets=(1.0, 1.0)), ValueError,
     "budgets must hold distinct values"),
    (lambda: ex.budget.run_budget(TINY, 1, designs=("cuckoo", "cuckoo")), ValueError,
     "designs must hold distinct values"),
    (lambda: ex.budget.run_budget(TINY, 1, designs="cuckoo"), TypeError, "designs must be"),
    (lambda: ex.budget.run_budget(TINY, 1, budgets=(float("nan"),)), ValueError,
     r"budgets\[0\] must be finite"),
    # rounds=1.7 ran 1 round; negative epochs were accepted; a string failed confusingly
    (lambda: ex.run_feedback(TINY, 1, rounds=1.7), TypeError, "rounds must be an int"),
    (lambda: ex.run_feedback(TINY, 1, rounds=0), ValueError, "rounds must be >= 1"),
    (lambda: ex.run_feedback(TINY, 1, rounds=1, epochs_first=-1), ValueError,
     "epochs_first must be >= 0"),
    (lambda: ex.run_feedback(TINY, 1, rounds=1, epochs_per_round=-1), ValueError,
     "epochs_per_round must be >= 0"),
    (lambda: ex.run_feedback(TINY, 1, rounds=1, epochs_first=2.0), TypeError,
     "epochs_first must be an int"),
    (lambda: ex.run_feedback(TINY, 1, etas="0.5", rounds=1), TypeError, "etas must be"),
    (lambda: ex.run_feedback(TINY, 1, etas=(1.5,), rounds=1), ValueError, r"etas\[0\] must be"),
    # personas=(1,) ran the single-vector model only
    (lambda: ex.personas.run_personas(TINY, 1, personas=(1,)), ValueError,
     r"personas\[0\] must be >= 2"),
    (lambda: ex.personas.run_personas(TINY, 1, personas=(2, 1)), ValueError,
     r"personas\[1\] must be >= 2"),
])
def test_review_sweeps_are_checked_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_dims_grid_takes_numpy_sweeps():
    # `if not ranks` raised "truth value of an array is ambiguous"; the sweeps are read first,
    # so a bad dims still fails by name before any data set is generated
    with pytest.raises(TypeError, match=r"dims\[0\] must be an int"):
        ex.dims_grid.run_dims_grid("synthetic", 1, ranks=np.array([2, 4]),
                                   zipfs=np.array([1.1]), dims=(2.5,), progress=False)
    with pytest.raises(ValueError, match="ranks must hold at least one value"):
        ex.dims_grid.run_dims_grid("synthetic", 1, ranks=np.array([], np.int64), progress=False)


def test_chunk_is_checked_wherever_an_experiment_takes_one():
    from embtab.experiments.feedback import matched_pairs
    from embtab.experiments.truth import total_relevance

    truth = power_law(n_users=10, n_items=12, n_genres=2, interactions_per_user=3, seed=0).truth
    for chunk, error in ((0, ValueError), (-1, ValueError), (2.0, TypeError)):
        with pytest.raises(error, match="chunk must"):
            total_relevance(truth, chunk=chunk)
        with pytest.raises(error, match="chunk must"):
            matched_pairs(truth, chunk=chunk)


# a shared session does not drop the data set or training overrides asked for //////////////


@pytest.fixture(scope="module")
def session():
    return ex.Session(TINY, {"epochs": 1}, progress=False)


@pytest.mark.parametrize("run", [
    lambda **kw: ex.run_dims(dims=(2,), **kw),
    lambda **kw: ex.run_collisions(rows_per_id=(1.0,), **kw),
    lambda **kw: ex.run_calibration(lams=(0.0,), candidates=(20,), **kw),
])
def test_a_session_refuses_another_dataset_or_other_overrides(session, run):
    other = "synthetic:n_users=30,n_items=40,interactions_per_user=8"
    with pytest.raises(ValueError, match="is not the data set of the shared session"):
        run(dataset=other, seeds=1, progress=False, session=session)
    with pytest.raises(ValueError, match="is not the data set of the shared session"):
        run(dataset=session.data.subset(np.ones(session.data.n_interactions, bool)), seeds=1,
            progress=False, session=session)
    with pytest.raises(ValueError, match="differ from those of the shared session"):
        run(dataset=TINY, seeds=1, train_overrides={"epochs": 3}, progress=False,
            session=session)


def test_a_session_is_used_with_its_own_dataset_and_overrides(session):
    from embtab.experiments.session import session_for

    assert session_for(TINY, None, False, session) is session
    assert session_for(TINY, {"epochs": 1}, False, session) is session
    s2 = ex.Session(session.data, None, progress=False)
    assert session_for(session.data, None, False, s2) is s2


# intervals /////////////////////////////////////////////////////////////////////////////////


def test_interval_of_values_near_the_float_limit_does_not_overflow():
    r = interval([1e308, 1e308])
    assert r["mean"] == 1e308 and r["sd"] == 0.0
    r = interval([1e308, -1e308])
    assert r["mean"] == 0.0 and r["sd"] == pytest.approx(2**0.5 * 1e308)
    assert interval([1.0, 2.0, 3.0])["mean"] == 2.0   # ordinary values: as before


def test_stream_on_real_data_refuses_more_windows_than_interactions(tmp_path):
    # time_windows listed n_windows boundaries and the run counted every window: 2**62 hung
    p = tmp_path / "clicks.csv"
    p.write_text("user,item,weight,ts\n"
                 + "".join(f"{u},{i},1,{(u * 7 + i) % 13}\n" for u in range(20) for i in range(12)))
    for n in (241, 2**62):
        with pytest.raises(ValueError, match=f"n_windows must be at most the 240 "
                                             f"interactions .*got {n}"):
            ex.stream.run_stream(f"interactions:{p}", seeds=1, n_windows=n, progress=False)
