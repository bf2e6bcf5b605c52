"""train's list makers check k, chunk, seed and users by name (a review found raw errors and
silently empty results)."""

import numpy as np
import pytest

from embtab.data import power_law, train_test_split
from embtab.train import TrainConfig, fit, most_popular, random_topk, recommend, score_matrix


@pytest.fixture(scope="module")
def setup():
    d = power_law(n_users=30, n_items=20, n_genres=2, interactions_per_user=5, seed=0)
    train, _ = train_test_split(d, seed=0)
    return fit(train, TrainConfig(dim=4, epochs=1), quiet=True), train


@pytest.mark.parametrize("kw, error, match", [
    ({"k": -1}, ValueError, "k must be >= 1, got -1"),     # "negative dimensions"
    ({"k": 0}, ValueError, "k must be >= 1, got 0"),       # returned [U, 0]
    ({"k": 2.0}, TypeError, "k must be an int, got float"),
    ({"chunk": 0}, ValueError, "chunk must be >= 1, got 0"),   # range() arg 3
    ({"chunk": -1}, ValueError, "chunk must be >= 1, got -1"),  # returned [0, k]
    ({"chunk": 2.5}, TypeError, "chunk must be an int"),
])
def test_list_makers_check_k_and_chunk(setup, kw, error, match):
    model, train = setup
    args = {"k": 2, **kw}
    for make in (lambda: recommend(model, train, **args), lambda: most_popular(train, **args),
                 lambda: random_topk(train, **args)):
        with pytest.raises(error, match=match):
            make()


def test_random_topk_checks_seed(setup):
    _, train = setup
    with pytest.raises(ValueError, match="seed must be >= 0"):
        random_topk(train, 2, seed=-1)


def test_list_makers_do_not_depend_on_chunk(setup):
    model, train = setup
    assert np.array_equal(recommend(model, train, 3, chunk=7), recommend(model, train, 3))
    assert np.array_equal(most_popular(train, 3, chunk=1), most_popular(train, 3))


@pytest.mark.parametrize("users, error, match", [
    ([99], ValueError, r"users must lie in \[0, 30\), got values in \[99, 99\]"),  # IndexError
    ([-1], ValueError, r"users must lie in \[0, 30\)"),                   # "negative dimensions"
    ([0.5], TypeError, "users must hold integer user indices"),
    ([[0, 1]], ValueError, "users must be 1-D"),
])
def test_score_matrix_checks_users(setup, users, error, match):
    model, train = setup
    with pytest.raises(error, match=match):
        score_matrix(model, train, users=users)


def test_score_matrix_rows_are_the_users_asked_for(setup):
    model, train = setup
    full = score_matrix(model, train)
    some = score_matrix(model, train, users=np.array([5, 0], np.int32))
    np.testing.assert_allclose(some.numpy(), full.numpy()[[5, 0]], rtol=1e-5, atol=1e-7)
    assert score_matrix(model, train, users=[]).shape == (0, train.n_items)


def test_fit_refuses_what_it_cannot_train_and_a_run_that_diverges():
    # a NaN loss history came back with lists that looked ordinary; empty data trained to a
    # loss of 0; a string or a dict raised AttributeError; num_threads=0 torch's RuntimeError
    from embtab.data import load_dataset
    from embtab.train import TrainConfig, fit

    d = load_dataset("synthetic:n_users=40,n_items=50,interactions_per_user=5")
    with pytest.raises(ValueError, match=r"training diverged: the mean loss of epoch 1 is nan"):
        fit(d, TrainConfig(dim=4, epochs=1, init_std=1e30), quiet=True)
    with pytest.raises(ValueError, match="holds no interactions: nothing to fit"):
        fit(d.subset(np.zeros(d.n_interactions, dtype=bool)), TrainConfig(dim=2), quiet=True)
    with pytest.raises(TypeError, match="train must be an embtab.data.Interactions, got str"):
        fit("data")
    with pytest.raises(TypeError, match=r"config must be a TrainConfig \(TrainConfig\(\*\*d\)"):
        fit(d, {"dim": 2})
    with pytest.raises(ValueError, match="num_threads must be None or an integer >= 1, got 0"):
        fit(d, TrainConfig(dim=2), num_threads=0)
    assert len(fit(d, TrainConfig(dim=2, epochs=2), quiet=True).history) == 2


def test_tuning_goes_on_past_a_grid_point_that_diverges(monkeypatch):
    from embtab.data import load_dataset
    from embtab.experiments.tuning import tune

    d = load_dataset("synthetic:n_users=40,n_items=50,interactions_per_user=8")
    cfg, info = tune(d, TrainConfig(dim=4), grid={"lr": (0.02,), "l2": (0.0,), "epochs": (1,)})
    assert info["tuned"] is True and len(info["grid"]) == 1
    # a point that scored at epoch 1 and diverged at epoch 2 is not chosen at all (a fit
    # that diverges after its first epoch, made to order)
    import embtab.experiments.tuning as tuning_mod

    real_fit = tuning_mod.fit

    def fit_diverging_at_big_lr(train, cfg, **kw):
        if cfg.lr < 1:
            return real_fit(train, cfg, **kw)
        kw["on_epoch"](1, real_fit(train, TrainConfig(**{**cfg.to_dict(), "epochs": 1}),
                                   quiet=True))
        raise ValueError("training diverged: the mean loss of epoch 2 is nan (made to order)")

    monkeypatch.setattr(tuning_mod, "fit", fit_diverging_at_big_lr)
    cfg, info = tune(d, TrainConfig(dim=4), grid={"lr": (0.02, 5.0), "l2": (0.0,),
                                                  "epochs": (1, 2)})
    assert {g[0] for g in info["grid"]} == {0.02} and cfg.lr == 0.02


def test_tuning_refuses_a_grid_whose_every_point_diverges():
    # it returned "tuned": False, which the reports read as "no validation items"
    from embtab.data import load_dataset
    from embtab.experiments.tuning import tune

    d = load_dataset("synthetic:n_users=40,n_items=50,interactions_per_user=8")
    with pytest.raises(ValueError, match="the training diverged at every grid point"):
        tune(d, TrainConfig(dim=4, init_std=1e30),
             grid={"lr": (0.02,), "l2": (0.0,), "epochs": (1, 2)})
