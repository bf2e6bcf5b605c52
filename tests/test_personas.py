"""Multi-persona users (embtab.train, personas=K): the attention score, K = 1 as the
single-vector model, gradients to every persona, training, scoring and configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embtab.data import power_law, train_test_split
from embtab.train import (
    TrainConfig,
    build_model,
    fit,
    item_vectors,
    persona_scores,
    recommend,
    score_matrix,
    user_vectors,
)


@pytest.fixture(scope="module")
def tiny():
    data = power_law(n_users=60, n_items=80, interactions_per_user=8, seed=0)
    return train_test_split(data, seed=0)


def test_attention_score_by_hand():
    # user: personas p1 = (1, 2), p2 = (-1, 0.5); item q = (0.5, -1); tau = 0.5
    u = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    d1, d2 = 1 * 0.5 + 2 * -1.0, -1 * 0.5 + 0.5 * -1.0          # -1.5, -1.0
    a1 = math.exp(d1 / 0.5) / (math.exp(d1 / 0.5) + math.exp(d2 / 0.5))
    want = a1 * d1 + (1 - a1) * d2
    assert float(persona_scores(u, q, 2, 0.5)[0, 0]) == pytest.approx(want, rel=1e-14)
    # the paired form gives the same number
    assert float(persona_scores(u, q[:, None, :], 2, 0.5)[0]) == pytest.approx(want, rel=1e-14)
    # a low temperature picks the best persona, a high one averages them
    assert float(persona_scores(u, q, 2, 1e-3)[0, 0]) == pytest.approx(max(d1, d2))
    assert float(persona_scores(u, q, 2, 1e6)[0, 0]) == pytest.approx((d1 + d2) / 2, rel=1e-5)


def test_one_persona_is_the_dot_product():
    g = torch.Generator().manual_seed(0)
    u, q = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    torch.testing.assert_close(persona_scores(u, q, 1), u @ q.T, rtol=1e-6, atol=1e-6)


def test_personas_1_is_the_single_vector_model(tiny):
    train, _ = tiny
    assert TrainConfig().personas == 1
    a = fit(train, TrainConfig(dim=4, epochs=2), quiet=True)
    b = fit(train, TrainConfig(dim=4, epochs=2, personas=1, persona_temperature=3.0), quiet=True)
    assert a.history == b.history                  # the temperature is unused with one persona
    assert user_vectors(a, train).shape == (train.n_users, 4)
    torch.testing.assert_close(score_matrix(a, train, exclude_train=False),
                               user_vectors(a, train) @ item_vectors(a, train).T,
                               rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_gradients_reach_every_persona(tiny, loss):
    train, _ = tiny
    cfg = TrainConfig(dim=3, personas=3, loss=loss, epochs=0, seed=1)
    model = build_model(train, cfg)
    ids = torch.from_numpy(train.raw_users.view(np.int64)[:16])
    items = torch.from_numpy(train.raw_items.view(np.int64)[:16])
    u = model.users(ids)
    assert u.shape == (16, 9)
    u.retain_grad()
    if loss == "softmax":
        out = model.score(u, model.items(torch.from_numpy(train.item_ids.view(np.int64))))
        out = torch.nn.functional.cross_entropy(out, torch.from_numpy(train.items[:16]))
    else:
        out = -model.score(u, model.items(items), pairs=True).sum()
    out.backward()
    g = u.grad.reshape(16, 3, 3).abs().sum(-1)     # [users, personas]
    assert (g > 0).all()
    # and training moves every persona block of the user table
    before = user_vectors(model, train).clone()
    trained = fit(train, TrainConfig(dim=3, personas=3, loss=loss, epochs=1, seed=1), quiet=True)
    moved = (user_vectors(trained, train) - before).abs().reshape(-1, 3, 3).sum(-1)
    assert (moved > 0).any(axis=0).all()


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_persona_model_trains_and_scores(tiny, loss):
    train, test = tiny
    model = fit(train, TrainConfig(dim=4, personas=2, loss=loss, epochs=6, lr=0.05), quiet=True)
    assert model.history[-1] < model.history[0]
    s = score_matrix(model, train, exclude_train=False)
    assert s.shape == (train.n_users, train.n_items)
    # score_matrix agrees with forward on pairs
    users = np.array([0, 3, 7])
    items = np.array([1, 5, 9])
    with torch.no_grad():
        f = model(torch.from_numpy(train.user_ids.view(np.int64)[users]),
                  torch.from_numpy(train.item_ids.view(np.int64)[items]))
    torch.testing.assert_close(f, s[users, items], rtol=1e-5, atol=1e-6)
    top = recommend(model, train, k=10)
    assert top.shape == (train.n_users, 10)
    masked = score_matrix(model, train)
    assert torch.isinf(masked[train.users, train.items]).all()


def test_persona_config_is_checked():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="personas"):
            TrainConfig(personas=bad)
    for bad in (1.5, True):
        with pytest.raises(TypeError, match="personas"):
            TrainConfig(personas=bad)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="persona_temperature"):
            TrainConfig(persona_temperature=bad)
