"""The table benchmark's code path runs and checks its own results (no timing assertions)."""

import numpy as np

from embtab.benchmarks import table as bench


def test_zipf_stream_is_skewed_and_draws_from_keys():
    rng = np.random.default_rng(0)
    keys = np.arange(1000, dtype=np.int64) * 7
    s = bench.zipf_stream(keys, 20_000, 1.1, rng)
    assert np.isin(s, keys).all()
    counts = np.bincount(s // 7, minlength=1000)
    # P(rank 1) / P(rank 10) = 10**1.1 ~ 12.6 under Zipf(1.1).
    assert 8 < counts[0] / counts[9] < 20


def test_format_markdown_reports_targets(monkeypatch):
    rows = []
    for op, impl, batch, threads, stream, rate in [
        ("build", "embtab", 65536, 1, None, 2e7),
        ("lookup", "embtab", 65536, 1, "zipf", 4e7),
        ("lookup", "embtab", 65536, 1, "uniform", 4e7),
        ("lookup", "embtab", 65536, 2, "zipf", 7e7),
        ("lookup", "embtab", 65536, 2, "uniform", 7e7),
        ("lookup", "np.take (random-access limit)", 65536, 1, "u", 6e7),
        ("lookup", "np.unique + np.searchsorted", 65536, 1, "zipf", 1e7),
        ("lookup", "dict", 65536, 1, "zipf", 3e6),
        ("lookup", "embtab", 2**20, 1, "zipf", 4e7),
        ("lookup", "embtab", 2**20, 1, "uniform", 4e7),
        ("lookup", "embtab", 2**20, 2, "zipf", 7e7),
        ("lookup", "embtab", 2**20, 2, "uniform", 7e7),
        ("lookup", "np.take (random-access limit)", 2**20, 1, "u", 6e7),
        ("lookup", "np.unique + np.searchsorted", 2**20, 1, "zipf", 1e7),
        ("lookup", "dict", 65536, 1, "zipf", 4e6),  # timed at 65,536 beside the big batch
    ]:
        rows.append(dict(op=op, impl=impl, batch=batch, threads=threads, stream=stream,
                         keys_per_s=rate, seconds=batch / rate))
        if impl == "dict":
            rows[-1]["for_batch"] = 2**20 if rate == 4e6 else 65536
    results = dict(n_keys=10, zipf_s=1.1, repeats=1, embtab="x", date="d",
                   machine=dict(cpu="c", cores=2), rows=rows,
                   memory=dict(load_factor_at_growth=0.95, bytes_per_key_at_growth=16.8,
                               bytes_per_key_now=33.6, load_factor_now=0.47))
    md = bench.format_markdown(results)
    assert "| lookup (uniform hits) / np.take, batch 65,536 (target ≥ 0.5×) | 0.67× | yes |" in md
    assert "| 2 threads / 1 thread, Zipf lookups, batch 65,536 (target ≥ 1.6×) | 1.75× | yes |" in md
    assert "| lookup (Zipf) / dict, batch 65,536 (target ≥ 10×) | 13.33× |" in md
    assert "| lookup (Zipf) / dict, batch 1,048,576 (target ≥ 10×) | 10.00× |" in md  # its own dict
    assert "20.00 M/s | yes" in md
