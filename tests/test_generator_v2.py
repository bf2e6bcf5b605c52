"""Generator v2: each knob changes what it claims (docs/experiments.md, "Generator v2")."""

import warnings

import numpy as np
import pytest

from embtab.data import Truth, load_dataset, power_law
from embtab.data.generator_v2 import GROUPS, MAINSTREAM_WEIGHT, LatentTruth, power_law_v2
from embtab.metrics import oracle_topk

SMALL = {"n_users": 300, "n_items": 400, "n_genres": 6, "interactions_per_user": 15}


def _spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_seeded_protocol_and_one_genre_per_item():
    d = power_law_v2(**SMALL, rank=5, seed=3)
    again = power_law_v2(**SMALL, rank=5, seed=3)
    for f in ("user_ids", "item_ids", "users", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(d, f), getattr(again, f))
    assert not np.array_equal(d.items, power_law_v2(**SMALL, rank=5, seed=4).items)
    t = d.truth
    assert isinstance(t, LatentTruth) and isinstance(t, Truth)
    p = t.prob()
    assert p.shape == (300, 400)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(t.pair_prob([3, 4], [10, 20]), [p[3, 10], p[4, 20]])
    assert np.all(d.item_genres.lengths() == 1)                     # one main genre per item
    assert np.all(np.bincount(d.item_genres.indices, minlength=6) > 0)
    key = d.users * d.n_items + d.items
    assert np.unique(key).size == key.size and np.all(p[d.users, d.items] > 0)
    n_u = np.bincount(d.users, minlength=d.n_users)
    assert np.all(n_u >= 5)
    assert np.array_equal(np.sort(d.timestamps[d.users == 0]), np.arange(n_u[0]))


@pytest.mark.parametrize("rank", [1, 2, 3, 8, 30])
def test_rank_is_the_numerical_rank_of_the_truth_whatever_the_genres(rank):
    # 6 genres; rank 30 > 6 genres: factors sharing a genre differ by their item noise
    d = power_law_v2(**SMALL, rank=rank, seed=0)
    assert d.truth.rank == rank
    assert np.linalg.matrix_rank(d.truth.prob()) == rank


def test_merit_zero_makes_within_genre_preference_independent_of_popularity():
    corr = {}
    for rho in (0.0, 1.0):
        d = power_law_v2(n_users=400, n_items=3000, n_genres=4, interactions_per_user=10,
                         rank=6, merit=rho, seed=1)
        t = d.truth
        # the total true preference of each item, within each genre, against popularity
        total = t.prob().sum(axis=0)
        g = d.item_genres.indices
        corr[rho] = np.mean([_spearman(total[g == k], t.popularity[g == k]) for k in range(4)])
    assert abs(corr[0.0]) < 0.08
    assert corr[1.0] > 0.5


def test_exposure_zero_leaves_consumption_unbiased():
    # merit independent of popularity, so any popularity in the logs comes from exposure
    big = dict(n_users=3000, n_items=2000, n_genres=5, interactions_per_user=5,
               activity_sigma=0.0, rank=6, merit=0.0)
    d0 = power_law_v2(**big, exposure=0.0, seed=2)
    t = d0.truth
    np.testing.assert_array_equal(t.exposure, 1.0)
    np.testing.assert_allclose(t.consumption_prob(np.arange(5)), t.prob(np.arange(5)))
    # the consumed share of the 5% most popular items matches what p(i|u) predicts ...
    head = np.argsort(-t.popularity)[:100]
    expected = t.prob()[:, head].sum(axis=1).mean()
    observed0 = np.isin(d0.items, head).mean()
    assert abs(observed0 - expected) < 0.15 * expected
    assert abs(_spearman(d0.item_counts(), t.popularity)) < 0.1
    # ... and exposure = 1 raises it far above that (same truth: same seed, same draws)
    d1 = power_law_v2(**big, exposure=1.0, seed=2)
    np.testing.assert_array_equal(d1.truth.prob(), t.prob())
    assert np.isin(d1.items, head).mean() > 3 * observed0
    assert _spearman(d1.item_counts(), t.popularity) > 0.3


def test_consumption_follows_its_definition_and_survives_an_extreme_exposure():
    # c(i|u) = p(i|u) popularity(i)**gamma / sum over items, against the definition computed
    # directly where nothing underflows ...
    d = power_law_v2(**SMALL, exposure=1.5, seed=8)
    t = d.truth
    ranks = np.argsort(np.argsort(-t.popularity)) + 1.0
    np.testing.assert_allclose(t.log_exposure, -1.5 * 1.1 * np.log(ranks), rtol=1e-12)
    want = t.prob() * t.popularity[None, :] ** 1.5
    np.testing.assert_allclose(t.consumption_prob(), want / want.sum(axis=1, keepdims=True),
                               rtol=1e-9, atol=1e-300)
    # ... and where popularity**gamma underflows to 0 for most items (gamma * s * ln rank >
    # 745 past rank 3): every user still consumes (a review found users silently dropped,
    # with a RuntimeWarning), what they consume is what they like, and the head dominates
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the RuntimeWarning of a 0 / 0 row
        x = power_law_v2(**SMALL, exposure=300.0, seed=8)
    tx = x.truth
    assert (tx.exposure == 0).sum() > 0.9 * tx.n_items
    assert np.isfinite(tx.log_exposure).all()
    assert np.unique(x.users).size == tx.n_users
    assert (tx.pair_prob(x.users, x.items) > 0).all()
    c = tx.consumption_prob()
    assert np.isfinite(c).all()
    np.testing.assert_allclose(c.sum(axis=1), 1.0)
    top = np.argsort(-tx.popularity)[:20]
    assert np.isin(x.items, top).mean() > np.isin(d.items, top).mean()


def test_niche_share_plants_user_groups_by_popularity_propensity():
    d = power_law_v2(n_users=2000, n_items=1500, n_genres=8, interactions_per_user=20,
                     rank=10, niche_share=0.5, blockbuster_share=0.2, seed=4)
    t = d.truth
    share = np.bincount(t.user_group, minlength=3) / d.n_users
    np.testing.assert_allclose(share, [0.5, 0.3, 0.2], atol=0.04)
    for j, name in enumerate(GROUPS):     # weight on the mainstream factor (column 0)
        np.testing.assert_allclose(t.user_factors[t.user_group == j, 0],
                                   MAINSTREAM_WEIGHT[j])
    assert name == "blockbuster"
    pop = d.item_counts() / d.n_users
    prof = np.bincount(d.users, weights=pop[d.items]) / np.bincount(d.users)
    means = [prof[t.user_group == j].mean() for j in range(3)]
    assert means[0] < 0.9 * means[1] and means[1] < 0.9 * means[2]
    none = power_law_v2(**SMALL, niche_share=0.0, blockbuster_share=0.0, seed=4)
    assert np.all(none.truth.user_group == 1)


def test_niche_users_histories_touch_few_genres():
    d = power_law_v2(n_users=500, n_items=1500, n_genres=18, interactions_per_user=30,
                     seed=5)
    g = d.item_genres.indices[d.items]
    niche = np.flatnonzero(d.truth.user_group == 0)
    touched = [np.unique(g[d.users == u]).size for u in niche]
    assert np.mean(touched) <= 3.5       # 1-3 interests, one genre per item


def test_crowding_users_are_70_30_and_the_oracle_crowds_out_the_minority():
    d = power_law_v2(n_users=300, n_items=1200, n_genres=6, interactions_per_user=20,
                     crowding=True, seed=6)
    t = d.truth
    assert t.rank == 6 and np.linalg.matrix_rank(t.prob()) == 6
    w = np.sort(t.user_factors, axis=1)[:, ::-1]
    np.testing.assert_allclose(w[:, :2], np.tile([0.7, 0.3], (300, 1)))
    np.testing.assert_array_equal(w[:, 2:], 0.0)
    # the accuracy-optimal list holds far less of the minority genre than the user's 30%
    from embtab.data import train_test_split

    train, _ = train_test_split(d, seed=0)
    top = oracle_topk(t, train, k=10)
    g = d.item_genres.indices
    minority = np.argsort(t.user_factors, axis=1)[:, -2]
    share = (g[top] == minority[:, None]).mean()
    assert share < 0.1


def test_spec_strings_route_to_v2_and_leave_the_default_alone():
    d = load_dataset("synthetic:n_users=50,n_items=60,n_genres=4,rank=3,merit=0.5,exposure=1",
                     seed=2)
    ref = power_law_v2(n_users=50, n_items=60, n_genres=4, rank=3, merit=0.5, exposure=1.0,
                       seed=2)
    assert isinstance(d.truth, LatentTruth)
    np.testing.assert_array_equal(d.items, ref.items)
    with pytest.warns(UserWarning, match="asked for"):   # 50 per user of 60 items, 18 genres
        plain = load_dataset("synthetic:n_users=50,n_items=60", seed=2)
        np.testing.assert_array_equal(plain.items,
                                      power_law(n_users=50, n_items=60, seed=2).items)
    assert not isinstance(plain.truth, LatentTruth)
    with pytest.raises(ValueError, match="spec"):
        load_dataset("synthetic:rank=3,genres_per_item=1")


@pytest.mark.parametrize("kw, what", [
    ({"rank": 0}, "rank"), ({"merit": 1.5}, "merit"), ({"exposure": -1}, "exposure"),
    ({"niche_share": 0.7, "blockbuster_share": 0.5}, "niche_share"),
    ({"crowding": True, "rank": 4}, "rank"), ({"crowding": True, "niche_share": 0.1},
                                              "niche_share"),
    ({"crowding": True, "crowding_split": 0.4}, "crowding_split"),
    ({"taste_sigma": 0.0, "rank": 20}, "taste_sigma"), ({"n_items": 3}, "n_genres"),
    ({"zipf_s": 0}, "zipf_s"), ({"interests_per_user": (1, 1, 1)}, "interests_per_user"),
])
def test_argument_errors_name_the_argument(kw, what):
    args = {**SMALL, **kw}
    with pytest.raises(ValueError, match=what):
        power_law_v2(**args)


@pytest.mark.parametrize("kw, exc, what", [
    ({"n_users": 2.5}, TypeError, "n_users must be an integer"),    # was truncated to 2
    ({"interactions_per_user": 1.5}, TypeError, "interactions_per_user"),
    ({"zipf_s": float("nan")}, ValueError, "zipf_s must be a finite number"),
    ({"zipf_s": float("inf")}, ValueError, "zipf_s must be a finite number"),
])
def test_sizes_and_zipf_checked_as_in_the_v1_generator(kw, exc, what):
    with pytest.raises(exc, match=what):
        power_law_v2(**{**SMALL, **kw})
    with pytest.raises(exc, match=what):  # the same check, the same message
        power_law(**{**{"n_users": 20, "n_items": 30, "n_genres": 4}, **kw})
