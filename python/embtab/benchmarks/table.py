"""Benchmark of :class:`embtab.CuckooTable` against its references, side by side in one run.

Workload (issue 2): a Zipf(1.1) stream over ``n_keys`` distinct random 64-bit IDs, in batches of
2**16 and 2**20, single thread unless said. References, measured in the same process:

- ``np.take`` gathering uniformly random positions of an int64 array with as many elements as
  the table has slots: one cache miss per element, the random-access limit;
- a Python ``dict`` (``d[k]`` per key; ``setdefault`` to build);
- ``np.unique`` + ``np.searchsorted`` over a sorted key array (what TorchRec's managed-collision
  hashing does on CPU).

Every figure is the median of ``repeats`` runs; the workload is generated outside the timed
region and each timed call's result is checked, so nothing can be skipped.

Run it with ``embtab bench table`` or ``python bench/bench_table.py``.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List

import numpy as np

from embtab import CuckooTable
from embtab.benchmarks._harness import machine, machine_line, time_calls, zipf_stream

__all__ = ["run", "format_markdown", "zipf_stream"]


def _expect_len(n: int) -> Callable[[object], None]:
    def check(out) -> None:
        if len(out) != n:
            raise AssertionError(f"benchmark result has {len(out)} entries, expected {n}")
    return check


def _median_time(fn: Callable[[], object], repeats: int, check: Callable[[object], None]) -> float:
    return time_calls(fn, repeats, check=check).median


def run(quick: bool = False, seed: int = 0, repeats: int = 5) -> dict:
    """Run the table benchmark; returns JSON-serialisable raw results.

    Parameters
    ----------
    quick : bool
        10**6 keys instead of 10**7 and fewer repeats (a smoke run, not the figures).
    seed : int
        Seed of the workload.
    repeats : int
        Runs per measurement (the median is reported).
    """
    import embtab

    n_keys = 10**6 if quick else 10**7
    repeats = 3 if quick else repeats
    batches = [2**16, 2**20]
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 2**64, int(n_keys * 1.01), dtype=np.uint64))[:n_keys]
    rng.shuffle(keys)
    keys = keys.view(np.int64)
    results: Dict[str, object] = {
        "benchmark": "table",
        "embtab": embtab.__version__,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "n_keys": n_keys,
        "zipf_s": 1.1,
        "repeats": repeats,
        "rows": [],
    }
    rows: List[dict] = results["rows"]

    def add(op, impl, batch, seconds, n, threads=1, **extra):
        rows.append(dict(op=op, impl=impl, batch=batch, threads=threads, seconds=seconds,
                         keys_per_s=n / seconds, **extra))

    # build from empty ---------------------------------------------------------------------
    for batch in batches:
        def build(batch=batch):
            t = CuckooTable(num_threads=1)
            for i in range(0, n_keys, batch):
                t.lookup_or_insert(keys[i:i + batch])
            return t

        def check_build(t):
            assert len(t) == n_keys

        secs = _median_time(build, max(1, repeats - 2), check_build)
        t = build()
        st = t.stats()
        add("build", "embtab", batch, secs, n_keys, grows=st["grows"],
            load_factor_at_last_grow=st["load_factor_at_last_grow"])
    # The same build into a table reserved up front: what growth costs, by difference.
    for max_load in (0.95, 0.9, 0.8):
        def build_reserved(max_load=max_load):
            t = CuckooTable(n_keys, max_load_factor=max_load, num_threads=1)
            for i in range(0, n_keys, 2**20):
                t.lookup_or_insert(keys[i:i + 2**20])
            return t

        secs = _median_time(build_reserved, max(1, repeats - 2), check_build)
        add("build (reserved)", "embtab", 2**20, secs, n_keys, max_load_factor=max_load)
    n_dict = min(n_keys, 10**6)
    dict_keys = keys[:n_dict].tolist()

    def build_dict():
        d = {}
        for k in dict_keys:
            d.setdefault(k, len(d))
        return d

    secs = _median_time(build_dict, 3, _expect_len(n_dict))
    add("build", "dict", n_dict, secs, n_dict, note=f"{n_dict} keys, one at a time")

    # the built table and its memory --------------------------------------------------------
    table = CuckooTable(num_threads=1)
    for i in range(0, n_keys, 2**20):
        table.lookup_or_insert(keys[i:i + 2**20])
    st = table.stats()
    lf_grow = st["load_factor_at_last_grow"]
    results["memory"] = {
        "bytes_per_slot": 16,
        "load_factor_at_growth": lf_grow,
        "bytes_per_key_at_growth": 64 / (4 * lf_grow),
        "bytes_per_key_now": st["bytes_per_key"],
        "load_factor_now": st["load_factor"],
        "capacity": st["capacity"],
    }
    expected_rows = np.empty(n_keys, dtype=np.int64)
    k_sorted_idx = np.argsort(keys)
    sorted_keys = keys[k_sorted_idx]
    sorted_rows = table.lookup(keys[k_sorted_idx])
    expected_rows[k_sorted_idx] = sorted_rows
    big_dict = dict(zip(keys[:n_dict].tolist(), expected_rows[:n_dict].tolist()))
    gather_src = np.arange(table.capacity, dtype=np.int64)

    # lookups (all hits) ---------------------------------------------------------------------
    for batch in batches:
        stream = zipf_stream(keys, batch, 1.1, rng)
        uniform = keys[rng.integers(0, n_keys, batch)]
        rand_pos = rng.integers(0, table.capacity, batch)
        dict_stream = zipf_stream(keys[:n_dict], min(batch, 2**16), 1.1, rng).tolist()
        # Expected rows from the sorted-array reference; every timed lookup is checked.
        truth_zipf = sorted_rows[np.searchsorted(sorted_keys, stream)]
        truth_uniform = sorted_rows[np.searchsorted(sorted_keys, uniform)]

        def eq(expected):
            def check(out):
                assert np.array_equal(out, expected)
            return check

        for threads in (1, 2):
            secs = _median_time(lambda: table.lookup(stream, num_threads=threads), repeats, eq(truth_zipf))
            add("lookup", "embtab", batch, secs, batch, threads=threads, stream="zipf")
            secs = _median_time(lambda: table.lookup(uniform, num_threads=threads), repeats,
                                eq(truth_uniform))
            add("lookup", "embtab", batch, secs, batch, threads=threads, stream="uniform")
        secs = _median_time(lambda: np.take(gather_src, rand_pos), repeats, eq(rand_pos))
        add("lookup", "np.take (random-access limit)", batch, secs, batch, stream="uniform positions")

        def unique_search():
            u, inv = np.unique(stream, return_inverse=True)
            return sorted_rows[np.searchsorted(sorted_keys, u)][inv.reshape(-1)]

        secs = _median_time(unique_search, repeats, eq(truth_zipf))
        add("lookup", "np.unique + np.searchsorted", batch, secs, batch, stream="zipf")

        def dict_lookup():
            return [big_dict[k] for k in dict_stream]

        secs = _median_time(dict_lookup, 3, _expect_len(len(dict_stream)))
        add("lookup", "dict", len(dict_stream), secs, len(dict_stream), stream="zipf",
            note=f"dict of {n_dict} keys; timed at batch {len(dict_stream):,} for the "
                 f"embtab batch {batch:,}", for_batch=batch)
    return results


def _rate(rows, **match) -> float:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r["keys_per_s"]
    raise KeyError(match)


def format_markdown(results: dict) -> str:
    """Render :func:`run`'s results as Markdown tables with the ratios the targets name."""
    rows = results["rows"]
    m = results["machine"]
    out = [
        f"Table benchmark: {results['n_keys']:,} distinct random 64-bit keys, Zipf({results['zipf_s']}) "
        f"streams, median of {results['repeats']}; {machine_line(m)}.",
        "",
        "| operation | implementation | batch | threads | stream / setting | M keys/s |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        stream = r.get("stream") or (f"max_load_factor {r['max_load_factor']}" if "max_load_factor" in r else "")
        if r.get("note"):
            stream += f" ({r['note']})"
        out.append(f"| {r['op']} | {r['impl']} | {r['batch']:,} | {r['threads']} | {stream} | "
                   f"{r['keys_per_s'] / 1e6:.2f} |")
    out += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for batch in sorted({r["batch"] for r in rows if r["op"] == "lookup" and r["impl"] == "embtab"}):
        gather = _rate(rows, op="lookup", impl="np.take (random-access limit)", batch=batch)
        zipf1 = _rate(rows, op="lookup", impl="embtab", batch=batch, threads=1, stream="zipf")
        uni1 = _rate(rows, op="lookup", impl="embtab", batch=batch, threads=1, stream="uniform")
        uni2 = _rate(rows, op="lookup", impl="embtab", batch=batch, threads=2, stream="uniform")
        zipf2 = _rate(rows, op="lookup", impl="embtab", batch=batch, threads=2, stream="zipf")
        try:  # the dict timed beside this batch (results saved before for_batch: the first)
            dict_rate = _rate(rows, op="lookup", impl="dict", for_batch=batch)
        except KeyError:
            dict_rate = _rate(rows, op="lookup", impl="dict")
        uniq = _rate(rows, op="lookup", impl="np.unique + np.searchsorted", batch=batch)
        for name, value, target in [
            (f"lookup (uniform hits) / np.take, batch {batch:,}", uni1 / gather, 0.5),
            (f"lookup (Zipf hits) / np.take, batch {batch:,}", zipf1 / gather, 0.5),
            (f"lookup (Zipf) / dict, batch {batch:,}", zipf1 / dict_rate, 10),
            (f"lookup (Zipf) / np.unique+searchsorted, batch {batch:,}", zipf1 / uniq, None),
            (f"2 threads / 1 thread, uniform lookups, batch {batch:,}", uni2 / uni1, 1.6),
            (f"2 threads / 1 thread, Zipf lookups, batch {batch:,}", zipf2 / zipf1, 1.6),
        ]:
            met = "" if target is None else ("yes" if value >= target else "**no**")
            tgt = "" if target is None else f" (target ≥ {target}×)"
            out.append(f"| {name}{tgt} | {value:.2f}× | {met} |")
    for batch in sorted({r["batch"] for r in rows if r["op"] == "build" and r["impl"] == "embtab"}):
        rate = _rate(rows, op="build", impl="embtab", batch=batch)
        out.append(f"| build {results['n_keys']:,} keys from empty, batch {batch:,} (target ≥ 10 M keys/s) | "
                   f"{rate / 1e6:.2f} M/s | {'yes' if rate >= 1e7 else '**no**'} |")
    mem = results["memory"]
    out.append(f"| index bytes per key at growth (load {mem['load_factor_at_growth']:.3f}; target ≤ 24) | "
               f"{mem['bytes_per_key_at_growth']:.1f} | {'yes' if mem['bytes_per_key_at_growth'] <= 24 else '**no**'} |")
    out.append("")
    out.append(f"Right after the last growth the index holds {mem['bytes_per_key_now']:.1f} bytes per key "
               f"(load {mem['load_factor_now']:.3f}); it refills to the figure above before growing again.")
    return "\n".join(out)
