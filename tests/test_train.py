"""The training loop against planted structure, and the contracts of scoring and baselines."""

import numpy as np
import pytest
import torch

from embtab.data import power_law, train_test_split
from embtab.metrics import evaluate
from embtab.train import (
    TrainConfig,
    collision_share,
    fit,
    most_popular,
    random_topk,
    recommend,
    score_matrix,
)


@pytest.fixture(scope="module")
def easy():
    # one interest genre per user, one genre per item, popularity irrelevant (beta=0):
    # a user's genre is all there is to learn.
    data = power_law(n_users=300, n_items=400, n_genres=6, interactions_per_user=20,
                     genres_per_item=(1, 0, 0), interests_per_user=(1, 0, 0), beta=0.0,
                     zipf_s=1.0, seed=0)
    train, test = train_test_split(data, test_fraction=0.2, seed=0)
    return data, train, test


def genre_agreement(topk, data):
    """Share of recommended slots holding an item of one of the user's planted genres."""
    likes = data.truth.user_mix > 0                          # [U, G]
    member = data.item_genres.to_dense()                     # [I, G]
    hit = (likes[:, None, :] & member[topk]).any(-1)         # [U, k]
    return float(hit.mean())


def test_planted_structure_far_above_popularity(easy):
    data, train, test = easy
    model = fit(train, TrainConfig(dim=16, epochs=30, batch_size=512, lr=0.02, seed=1),
                quiet=True)
    top = recommend(model, train, k=10)
    pop = most_popular(train, k=10)
    r_mf = evaluate(top, train, test, data.item_genres)["recall@10"]
    r_pop = evaluate(pop, train, test, data.item_genres)["recall@10"]
    assert r_mf > 2 * r_pop
    assert genre_agreement(top, data) > 0.9
    assert genre_agreement(top, data) > 2 * genre_agreement(pop, data)
    assert model.history[-1] < 0.5 * model.history[0]


def test_d1_has_at_most_two_distinct_lists(easy):
    # s(u, i) = e_u * e_i with scalars: every user with e_u > 0 ranks items by e_i descending,
    # every user with e_u < 0 by e_i ascending, so over all users at most 2 lists exist.
    _, train, _ = easy
    model = fit(train, TrainConfig(dim=1, epochs=2, seed=0), quiet=True)
    top = recommend(model, train, k=10, exclude_train=False)
    assert len({tuple(row) for row in top.tolist()}) <= 2


def test_recommend_excludes_training_items_and_is_seeded(easy):
    _, train, _ = easy
    cfg = TrainConfig(dim=8, epochs=2, seed=3)
    a = recommend(fit(train, cfg, quiet=True), train, k=10)
    b = recommend(fit(train, cfg, quiet=True), train, k=10)
    np.testing.assert_array_equal(a, b)
    sets = train.user_items()
    for u in range(train.n_users):
        assert not np.intersect1d(a[u], sets[u]).size
    for base in (most_popular(train, 10), random_topk(train, 10, seed=0)):
        assert base.shape == (train.n_users, 10)
        for u in range(train.n_users):
            assert not np.intersect1d(base[u], sets[u]).size
            assert len(set(base[u].tolist())) == 10


def test_score_matrix_matches_forward(easy):
    _, train, _ = easy
    model = fit(train, TrainConfig(dim=4, epochs=1, seed=0), quiet=True)
    s = score_matrix(model, train, [0, 5], exclude_train=False)
    ids_u = torch.from_numpy(train.user_ids[[5]].view(np.int64)).repeat(3)
    ids_i = torch.from_numpy(train.item_ids[[0, 7, 9]].view(np.int64))
    with torch.no_grad():
        torch.testing.assert_close(model(ids_u, ids_i), s[1, [0, 7, 9]])


def test_most_popular_orders_by_count(easy):
    _, train, _ = easy
    counts = train.item_counts()
    top = most_popular(train, 10)
    assert np.all(np.diff(counts[top], axis=1) <= 0)


@pytest.mark.parametrize("rows_per_id", [1 / 16, 0.5, 1.0])
def test_hashed_collision_share_near_theory(easy, rows_per_id):
    _, train, _ = easy
    model = fit(train, TrainConfig(dim=4, table="hashed", rows_per_id=rows_per_id, epochs=0),
                quiet=True)
    c = collision_share(model, train)
    assert c["rows"] == max(1, round(rows_per_id * train.n_items))
    assert abs(c["collision_share"] - c["collision_theory"]) < 0.1


def test_cuckoo_has_no_collisions(easy):
    _, train, _ = easy
    model = fit(train, TrainConfig(dim=4, epochs=0), quiet=True)
    assert collision_share(model, train)["collision_share"] == 0.0


@pytest.mark.parametrize("bad", [{"dim": 0}, {"table": "dense"}, {"rows_per_id": 0.0},
                                 {"optimizer": "sgd"}, {"lr": 0.0}, {"batch_size": 0}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_adagrad_trains(easy):
    _, train, _ = easy
    model = fit(train, TrainConfig(dim=8, epochs=3, optimizer="adagrad", lr=0.1), quiet=True)
    assert model.history[-1] < model.history[0]


def test_baselines_do_not_depend_on_chunking(easy):
    _, train, _ = easy
    np.testing.assert_array_equal(most_popular(train, 10), most_popular(train, 10, chunk=7))
    np.testing.assert_array_equal(random_topk(train, 10, seed=4),
                                  random_topk(train, 10, seed=4, chunk=7))
    # the model's lists: each chunk embeds only its users (they embedded every user per
    # chunk, quadratic in U); oracle: the top 10 of the full masked score matrix
    model = fit(train, TrainConfig(dim=4, epochs=1, seed=2), quiet=True)
    full = score_matrix(model, train)
    want = torch.topk(full, 10, dim=1).indices.numpy()
    ok = torch.isfinite(full.gather(1, torch.from_numpy(want)))
    for chunk in (7, 4096):
        got = recommend(model, train, k=10, chunk=chunk)
        assert np.array_equal(np.where(ok.numpy(), got, -1), np.where(ok.numpy(), want, -1))


def test_softmax_loss_learns_the_planted_genres(easy):
    data, train, test = easy
    model = fit(train, TrainConfig(dim=16, epochs=15, batch_size=512, lr=0.02, seed=1,
                                   loss="softmax"), quiet=True)
    top = recommend(model, train, k=10)
    r_mf = evaluate(top, train, test, data.item_genres)["recall@10"]
    r_pop = evaluate(most_popular(train, k=10), train, test, data.item_genres)["recall@10"]
    assert r_mf > 2 * r_pop
    assert genre_agreement(top, data) > 0.9
    # the loss is the catalogue cross-entropy: it starts near ln(I) and falls
    assert model.history[0] == pytest.approx(np.log(data.n_items), rel=0.05)
    assert model.history[-1] < 0.9 * model.history[0]
    again = fit(train, TrainConfig(dim=16, epochs=1, batch_size=512, seed=1, loss="softmax"),
                quiet=True)
    assert again.history[0] == pytest.approx(model.history[0])      # seeded


@pytest.mark.parametrize("field,value,error", [
    ("lr", float("inf"), ValueError),        # trained to NaN vectors, silently
    ("lr", 0.0, ValueError),
    ("lr", "0.1", TypeError),
    ("l2", float("inf"), ValueError),        # trained to an inf loss, silently
    ("l2", float("nan"), ValueError),
    ("init_std", float("inf"), ValueError),
    ("epochs", 2.5, TypeError),              # failed inside fit, naming no field
    ("epochs", "3", TypeError),
    ("epochs", -1, ValueError),
    ("batch_size", 2.5, TypeError),
    ("batch_size", 0, ValueError),
    ("seed", 1.5, TypeError),
    ("seed", 2**64, ValueError),             # overflowed inside the tables
    ("seed", -1, ValueError),
    ("dim", 2.0, TypeError),
    ("dim", 0, ValueError),
    ("min_count", 0, ValueError),
    ("admission_eps", 1.0, ValueError),
    ("rows_per_id", float("nan"), ValueError),
    ("hash_users", 1, TypeError),
])
def test_config_refuses_a_bad_field_by_name(field, value, error):
    with pytest.raises(error, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_config_takes_whole_numbers_of_any_integer_type():
    cfg = TrainConfig(dim=np.int64(4), epochs=np.int32(0), seed=2**64 - 1)
    assert cfg.dim == 4 and cfg.epochs == 0


def test_unknown_loss_and_on_epoch_leaves_training_alone(easy):
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="hinge")
    _, train, _ = easy
    # scoring the model between epochs (as tuning does) does not change what is learned
    cfg = TrainConfig(dim=4, epochs=3, seed=3)
    plain = fit(train, cfg, quiet=True)
    seen = []
    hooked = fit(train, cfg, quiet=True,
                 on_epoch=lambda e, m: seen.append(recommend(m, train, k=5)))
    assert len(seen) == 3 and hooked.history == plain.history
    np.testing.assert_array_equal(recommend(hooked, train, k=10), recommend(plain, train, k=10))
