"""The table designs of embtab.train (TrainConfig's table, rows_per_id, hash_users, on_full,
min_count): each builds the modules it names, trains, and bad configurations are refused."""

import numpy as np
import pytest
import torch

from embtab.data import power_law, train_test_split
from embtab.nn import (
    CuckooEmbedding,
    DoubleHashedEmbedding,
    HashedEmbedding,
    OnFull,
    QREmbedding,
)
from embtab.train import (
    TrainConfig,
    build_model,
    collision_share,
    fit,
    recommend,
    table_design,
)


@pytest.fixture(scope="module")
def tiny():
    data = power_law(n_users=60, n_items=90, interactions_per_user=8, seed=0)
    train, _ = train_test_split(data, seed=0)
    return train


# (config fields, user module, user rows, item module, item rows, item on_full) for 60 users
# and 90 items; rows = max(1, round(rows_per_id * n)).
DESIGNS = [
    ({}, CuckooEmbedding, 60, CuckooEmbedding, 90, OnFull.GROW),
    ({"table": "hashed", "rows_per_id": 0.25}, CuckooEmbedding, 60, HashedEmbedding, 22, None),
    ({"table": "hashed", "rows_per_id": 0.25, "hash_users": True},
     HashedEmbedding, 15, HashedEmbedding, 22, None),
    ({"on_full": "evict_lru", "rows_per_id": 0.5}, CuckooEmbedding, 60, CuckooEmbedding, 45,
     OnFull.EVICT_LRU),
    ({"on_full": "evict_lfu", "rows_per_id": 0.5, "hash_users": True},
     CuckooEmbedding, 30, CuckooEmbedding, 45, OnFull.EVICT_LFU),
    ({"min_count": 2, "admission_eps": 0.01, "admission_delta": 0.5},
     CuckooEmbedding, 60, CuckooEmbedding, 90, OnFull.GROW),
    ({"on_full": "evict_lru", "rows_per_id": 0.5, "hash_users": True, "expire_after": 3},
     CuckooEmbedding, 30, CuckooEmbedding, 45, OnFull.EVICT_LRU),
    ({"table": "double_hashed", "rows_per_id": 0.25, "hash_users": True},
     DoubleHashedEmbedding, 15, DoubleHashedEmbedding, 22, None),
    # QR: num_embeddings = the virtual rows V, num_collisions = ceil(sqrt(V))
    ({"table": "qr", "rows_per_id": 2.0}, CuckooEmbedding, 60, QREmbedding, 180, None),
]


@pytest.mark.parametrize("fields,ucls,urows,icls,irows,policy", DESIGNS,
                         ids=[table_design(TrainConfig(**d[0])) for d in DESIGNS])
def test_each_design_builds_its_modules(tiny, fields, ucls, urows, icls, irows, policy):
    cfg = TrainConfig(dim=4, epochs=1, batch_size=16, **fields)
    model = build_model(tiny, cfg)
    assert type(model.users) is ucls and type(model.items) is icls
    assert model.users.num_embeddings == urows and model.items.num_embeddings == irows
    if policy is not None:
        assert model.items.on_full == policy
        assert model.items.min_count == cfg.min_count
    # tables that hold every ID are filled up front; capped or admitting ones start empty
    if icls is CuckooEmbedding:
        assert model.items.num_ids == (90 if cfg.on_full == "grow" and cfg.min_count == 1 else 0)
    trained = fit(tiny, cfg, quiet=True)
    top = recommend(trained, tiny, 10)
    assert top.shape == (tiny.n_users, 10)
    if icls is CuckooEmbedding:
        assert trained.items.num_ids <= irows
        assert collision_share(trained, tiny)["collision_share"] == 0.0


def test_admission_gives_rows_only_from_the_min_count_th_sighting(tiny):
    # one epoch in one batch: every item is seen once as a positive or a negative at most a few
    # times; with min_count far above any item's sightings nothing is admitted and every
    # item reads the zero vector
    cfg = TrainConfig(dim=4, epochs=1, batch_size=10_000, min_count=10_000,
                      admission_eps=0.01, admission_delta=0.5)
    model = fit(tiny, cfg, quiet=True)
    assert model.items.num_ids == 0 and model.users.num_ids == tiny.n_users
    from embtab.train import item_vectors
    assert torch.count_nonzero(item_vectors(model, tiny)) == 0


def test_qr_tables_are_the_smallest_for_their_virtual_rows(tiny):
    # V = 180 virtual rows: num_collisions = ceil(sqrt(180)) = 14 remainder rows and
    # ceil(180 / 14) = 13 quotient rows; weights (13 + 1 + 14 + 1) x 4 float32
    from embtab.train import model_bytes

    model = build_model(tiny, TrainConfig(dim=4, table="qr", rows_per_id=2.0))
    assert model.items.num_collisions == 14 and model.items.num_quotients == 13
    users = model_bytes(build_model(tiny, TrainConfig(dim=4)))["weights"] - 91 * 16
    assert model_bytes(model)["weights"] == users + (13 + 1 + 14 + 1) * 16


def test_expiry_gives_rows_back(tiny):
    # items are looked up twice per batch (positives, negatives): with batches of 8 pairs an
    # item unseen for 2 item steps (one batch) loses its row, so many rows expire
    cfg = TrainConfig(dim=4, epochs=2, batch_size=8, expire_after=2)
    model = fit(tiny, cfg, quiet=True)
    assert model.items.stats()["num_expired"] > 0
    assert model.items.expire_after == 2 and model.users.expire_after is None
    assert table_design(cfg) == "cuckoo expire_after=2"


def test_defaults_keep_todays_model(tiny):
    # the defaults build what E1-E3 always trained: collisionless users and items, all IDs
    # inserted up front in dense order (row r = dense index r)
    model = build_model(tiny, TrainConfig(dim=4))
    np.testing.assert_array_equal(model.items.row_ids.numpy(),
                                  tiny.item_ids.view(np.int64))
    np.testing.assert_array_equal(model.users.row_ids.numpy(),
                                  tiny.user_ids.view(np.int64))


def test_a_cap_below_one_batch_is_refused_before_training(tiny):
    # BPR reads up to 2 * batch_size distinct items per batch (positives and negatives): 45
    # rows cannot serve a batch of 32 pairs; the softmax loss reads the whole catalogue
    for cfg in (TrainConfig(on_full="evict_lru", rows_per_id=0.5, batch_size=32),
                TrainConfig(on_full="evict_lfu", rows_per_id=0.9, batch_size=8,
                            loss="softmax")):
        with pytest.raises(ValueError, match="rows_per_id.*item table at"):
            build_model(tiny, cfg)
    # a batch of 20 pairs: 40 item rows of 45 are enough
    build_model(tiny, TrainConfig(on_full="evict_lru", rows_per_id=0.5, batch_size=20))


def test_design_names():
    assert table_design(TrainConfig()) == "cuckoo"
    assert table_design(TrainConfig(hash_users=True)) == "cuckoo"
    assert table_design(TrainConfig(table="hashed", rows_per_id=0.25)) == "hashed m/n=0.25"
    assert (table_design(TrainConfig(table="hashed", rows_per_id=0.25, hash_users=True))
            == "hashed m/n=0.25 +users")
    assert (table_design(TrainConfig(on_full="evict_lfu", rows_per_id=0.5, min_count=2))
            == "cuckoo evict_lfu m/n=0.5 min_count=2")


@pytest.mark.parametrize("fields,name", [
    ({"table": "lsh"}, "table"),
    ({"on_full": "error"}, "on_full"),
    ({"on_full": "evict_lru", "table": "hashed"}, "on_full"),
    ({"min_count": 2, "table": "hashed"}, "min_count"),
    ({"min_count": 0}, "min_count"),
    ({"min_count": 2.5}, "min_count"),
    ({"admission_eps": 0.0}, "admission_eps"),
    ({"admission_delta": 1.0}, "admission_delta"),
    ({"rows_per_id": 0.5}, "rows_per_id"),          # a cap needs an eviction policy
    ({"rows_per_id": 0.0, "table": "hashed"}, "rows_per_id"),
    ({"hash_users": 1}, "hash_users"),
    ({"expire_after": 0}, "expire_after"),
    ({"expire_after": 2.0}, "expire_after"),
    ({"expire_after": 5, "table": "hashed"}, "expire_after"),
])
def test_bad_design_names_the_field(fields, name):
    # a value of the wrong type (a float count, an int flag) is a TypeError, a value out of
    # range or a setting that does not apply a ValueError; both name the field
    wrong_type = any(isinstance(v, float) and name in ("min_count", "expire_after")
                     or (k == "hash_users" and not isinstance(v, bool)) for k, v in fields.items())
    with pytest.raises(TypeError if wrong_type else ValueError, match=f"TrainConfig.{name}"):
        TrainConfig(**fields)


def test_model_bytes_count_weights_index_and_adams_state(tiny):
    # hashed users+items at d = 4: weights (15 + 1 + 22 + 1) rows x 4 float32 = 624 bytes, no
    # index; Adam keeps exp_avg and exp_avg_sq of each weight plus a float32 step: 2 * 624 + 8
    from embtab.train import expected_optimizer_bytes, model_bytes

    cfg = TrainConfig(dim=4, epochs=1, table="hashed", rows_per_id=0.25, hash_users=True)
    before = model_bytes(build_model(tiny, cfg))
    assert before == {"weights": 624, "index": 0, "optimizer": 1256, "total": 1880}
    after = fit(tiny, cfg, quiet=True)
    assert after.optimizer_bytes == 1256 == expected_optimizer_bytes(after)
    assert model_bytes(after) == before
    # collisionless: the index holds the cuckoo table and the ID map (row IDs, live flags)
    cuckoo = build_model(tiny, TrainConfig(dim=4))
    got = model_bytes(cuckoo)
    assert got["weights"] == (61 + 91) * 4 * 4
    native = (cuckoo.users._table.stats()["memory_bytes"]
              + cuckoo.items._table.stats()["memory_bytes"])
    assert got["index"] >= native + (60 + 90) * (8 + 1)
    # Adagrad keeps one tensor per weight
    ada = fit(tiny, TrainConfig(dim=4, epochs=1, optimizer="adagrad"), quiet=True)
    assert ada.optimizer_bytes == got["weights"] + 8


def test_collision_share_of_two_row_tables(tiny):
    # double hashing over 2 rows: 90 items on the 4 distinct (unordered or not) pairs of rows
    # (0,0), (0,1), (1,0), (1,1): every item shares its pair with another one
    from embtab.train import collision_share

    m = build_model(tiny, TrainConfig(dim=4, table="double_hashed", rows_per_id=2 / 90))
    got = collision_share(m, tiny)
    assert got["collision_share"] == 1.0 and got["rows"] == 2
    # QR over V = 90 * 8 virtual rows: shared pairs are exactly shared virtual rows
    qr = build_model(tiny, TrainConfig(dim=4, table="qr", rows_per_id=8.0))
    pairs = qr.items.lookup(torch.from_numpy(tiny.item_ids.view(np.int64))).numpy()
    _, inv, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    expect = float((counts[inv.ravel()] > 1).mean())
    assert collision_share(qr, tiny)["collision_share"] == pytest.approx(expect)
    assert collision_share(qr, tiny)["rows"] == qr.items.num_quotients + qr.items.num_collisions


@pytest.mark.parametrize("rows_per_id", [0.05, 0.2, 0.5])
def test_double_hashed_collision_share_counts_ids_with_the_same_vector(tiny, rows_per_id):
    # Oracle: the share of item IDs whose vector (the sum of their two rows) equals another
    # item ID's, from the vectors themselves (a random init gives distinct sums to distinct
    # unordered pairs). Ordered pairs missed (a, b) vs (b, a): about half the share.
    from embtab.train import collision_share

    m = build_model(tiny, TrainConfig(dim=8, table="double_hashed", rows_per_id=rows_per_id))
    with torch.no_grad():
        vec = m.items(torch.from_numpy(tiny.item_ids.view(np.int64))).numpy()
    _, inv, counts = np.unique(vec, axis=0, return_inverse=True, return_counts=True)
    expect = float((counts[inv.ravel()] > 1).mean())
    assert collision_share(m, tiny)["collision_share"] == pytest.approx(expect)
