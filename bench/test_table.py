"""CuckooTable lookups and builds beside their references (pytest-benchmark).

Lookups: a batch of 65,536 Zipf(1.1) draws over 2**21 distinct random 64-bit keys, every one a
hit, by embtab (1 and 2 threads), ``np.unique`` + ``np.searchsorted`` on the sorted keys (what
TorchRec's managed-collision hashing does on CPU), a Python ``dict``, and ``np.take`` of as many
uniformly random positions in an int64 array as big as the table (one cache miss per element:
the random-access limit). Builds: 2**20 keys from empty, by embtab (batches of 65,536), ``dict``
and ``np.unique`` (the sorted array the searchsorted lookup needs). Every timed call's result is
checked against the truth.
"""

import numpy as np
import pytest

from embtab import CuckooTable
from embtab.benchmarks._harness import zipf_stream


def _random_keys(n, rng):
    """n distinct random 64-bit keys (int64 bit patterns), in random order."""
    keys = np.unique(rng.integers(0, 2**64, int(n * 1.01) + 16, dtype=np.uint64))[:n]
    rng.shuffle(keys)
    return keys.view(np.int64)


@pytest.fixture(scope="module")
def lookup_case(full):
    n_keys, batch = (2**21, 2**16) if full else (2**12, 2**10)
    rng = np.random.default_rng(0)
    keys = _random_keys(n_keys, rng)
    table = CuckooTable(num_threads=1)
    rows = np.concatenate([table.lookup_or_insert(keys[i:i + 2**16]) for i in range(0, n_keys, 2**16)])
    stream = zipf_stream(keys, batch, 1.1, rng)
    order = np.argsort(keys)
    sorted_keys, sorted_rows = keys[order], rows[order]
    truth = sorted_rows[np.searchsorted(sorted_keys, stream)]
    return dict(n_keys=n_keys, batch=batch, keys=keys, rows=rows, table=table, stream=stream,
                truth=truth, sorted_keys=sorted_keys, sorted_rows=sorted_rows, rng=rng)


def _lookup_group(benchmark, case):
    benchmark.group = (f"table lookup: batch of {case['batch']:,} Zipf(1.1) hits, "
                       f"{case['n_keys']:,} keys")


@pytest.mark.parametrize("threads", [1, 2])
def test_lookup_embtab(benchmark, lookup_case, threads):
    _lookup_group(benchmark, lookup_case)
    out = benchmark(lookup_case["table"].lookup, lookup_case["stream"], num_threads=threads)
    assert np.array_equal(out, lookup_case["truth"])


def test_lookup_numpy_unique_searchsorted(benchmark, lookup_case):
    _lookup_group(benchmark, lookup_case)
    sk, sr, stream = lookup_case["sorted_keys"], lookup_case["sorted_rows"], lookup_case["stream"]

    def lookup():
        u, inv = np.unique(stream, return_inverse=True)
        return sr[np.searchsorted(sk, u)][inv.reshape(-1)]

    assert np.array_equal(benchmark(lookup), lookup_case["truth"])


def test_lookup_dict(benchmark, lookup_case):
    _lookup_group(benchmark, lookup_case)
    d = dict(zip(lookup_case["keys"].tolist(), lookup_case["rows"].tolist()))
    stream = lookup_case["stream"].tolist()
    out = benchmark(lambda: [d[k] for k in stream])
    assert out == lookup_case["truth"].tolist()


def test_lookup_np_take_random_access_limit(benchmark, lookup_case):
    _lookup_group(benchmark, lookup_case)
    table = lookup_case["table"]
    src = np.arange(table.capacity, dtype=np.int64)
    pos = lookup_case["rng"].integers(0, table.capacity, lookup_case["batch"])
    assert np.array_equal(benchmark(np.take, src, pos), pos)


@pytest.fixture(scope="module")
def build_case(full):
    n_keys = 2**20 if full else 2**12
    return dict(n_keys=n_keys, keys=_random_keys(n_keys, np.random.default_rng(1)))


def _build_group(benchmark, case):
    benchmark.group = f"table build: {case['n_keys']:,} keys from empty"


def test_build_embtab(benchmark, build_case):
    _build_group(benchmark, build_case)
    keys = build_case["keys"]

    def build():
        t = CuckooTable(num_threads=1)
        for i in range(0, len(keys), 2**16):
            t.lookup_or_insert(keys[i:i + 2**16])
        return t

    t = benchmark.pedantic(build, rounds=5, warmup_rounds=1)
    assert len(t) == build_case["n_keys"]
    assert np.array_equal(np.sort(t.lookup(keys)), np.arange(len(keys)))


def test_build_dict(benchmark, build_case):
    _build_group(benchmark, build_case)
    keys = build_case["keys"].tolist()

    def build():
        d = {}
        for k in keys:
            d.setdefault(k, len(d))
        return d

    d = benchmark.pedantic(build, rounds=5, warmup_rounds=1)
    assert len(d) == build_case["n_keys"] and d[keys[-1]] == len(keys) - 1


def test_build_numpy_unique(benchmark, build_case):
    _build_group(benchmark, build_case)
    keys = build_case["keys"]
    u = benchmark.pedantic(np.unique, args=(keys,), rounds=5, warmup_rounds=1)
    assert len(u) == build_case["n_keys"] and np.all(u[1:] > u[:-1])
