"""Review fixes of embtab.train: NaN scores are refused, not ranked; divergence of online
training is an error (NaN stays the empty window's value); the persona temperature keeps the
float32 attention finite; an untrained fit counts the optimizer state it will keep."""

import numpy as np
import pytest
import torch

from embtab.data import power_law
from embtab.train import (
    MIN_PERSONA_TEMPERATURE,
    OnlineTrainer,
    TrainConfig,
    expected_optimizer_bytes,
    fit,
    model_bytes,
    recommend,
    score_matrix,
)


@pytest.fixture(scope="module")
def data():
    return power_law(n_users=40, n_items=30, n_genres=4, interactions_per_user=5, seed=1)


def test_a_persona_temperature_that_underflows_float32_is_refused(data):
    # 1e-300 was accepted, rounded to 0 in float32 and gave inf / NaN scores, and fit then
    # blamed lr or init_std
    for bad in (1e-300, 1e-40, 1e-7):
        with pytest.raises(ValueError, match=r"TrainConfig\.persona_temperature must be >= "
                                             r"1e-06, got 1e-\d+: .*float32"):
            TrainConfig(personas=2, persona_temperature=bad)
    model = fit(data, TrainConfig(dim=4, epochs=2, personas=2,
                                  persona_temperature=MIN_PERSONA_TEMPERATURE), quiet=True)
    assert torch.isfinite(score_matrix(model, data, exclude_train=False)).all()


def test_recommend_refuses_nan_scores_instead_of_listing_them_first(data):
    model = fit(data, TrainConfig(dim=4, epochs=1), quiet=True)
    with torch.no_grad():
        for p in model.items.parameters():
            p.fill_(float("nan"))                      # a diverged item table
    with pytest.raises(ValueError, match=r"scores hold \d+ NaN value\(s\), the first at row 0"):
        recommend(model, data, k=5)


def test_online_training_that_diverges_raises_and_an_empty_window_is_nan(data):
    t = OnlineTrainer.empty(TrainConfig(dim=8, init_std=1e19), 40, 30)
    with pytest.raises(ValueError, match=r"training diverged: the mean loss of the window's "
                                         r"\d+ pairs is nan"):
        t.train_window(data, data.item_ids)
    ok = OnlineTrainer.empty(TrainConfig(dim=8), 40, 30)
    empty = data.subset(np.zeros(data.n_interactions, dtype=bool))
    assert np.isnan(ok.train_window(empty, data.item_ids))          # no error: nothing to train
    assert np.isfinite(ok.train_window(data, data.item_ids))
    assert ok.pairs_per_window == [0, data.n_interactions]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_an_untrained_fit_counts_the_optimizer_state_it_will_keep(data, optimizer):
    # epochs=0 reported 0 optimizer bytes, while model_bytes' docstring promises
    # expected_optimizer_bytes for an untrained model
    m0 = fit(data, TrainConfig(dim=4, epochs=0, optimizer=optimizer), quiet=True)
    m1 = fit(data, TrainConfig(dim=4, epochs=1, optimizer=optimizer), quiet=True)
    assert m0.optimizer_bytes is None
    assert model_bytes(m0)["optimizer"] == expected_optimizer_bytes(m0) > 0
    assert model_bytes(m0) == model_bytes(m1)
    assert m1.optimizer_bytes == expected_optimizer_bytes(m1)
