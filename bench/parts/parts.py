"""The parts of the new-ID path and of the fused step that bench/README.md times on their own.

Usage (from the repository root, the package built or installed):
    python bench/parts/parts.py [--include cpp/include] [--skip-cpp]
    python bench/parts/parts.py --ab OTHER/cpp/include [--include cpp/include]

- C++ harnesses (compiled here with g++ against ``--include``, default this checkout's
  cpp/include): the fused step alone on the issue-16 batches (``fused_step.cpp``, every
  optimizer at 1 and 2 threads), the pooling of one such batch (``pool_bags.cpp``), the
  pooling of the 26-table collection's shape (``pool_collection.cpp``) and a
  10^7-key table build (``table_build.cpp``, load factor 0.9
  and 0.95, 1 and 2 threads). Point ``--include`` at another commit's cpp/include to compare.
- ``--ab OTHER``: only the fused step of two builds side by side in one process
  (``fused_ab.cpp``; A = OTHER's cpp/include, B = ``--include``), 1 and 2 threads taking turns,
  for every optimizer with one gradient row per bag and with one row for all bags.
- Python: initial vectors of 20,000 x 64 IDs (1 and 2 threads); a batch's new IDs by
  ``first_occurrence`` against ``np.unique`` + ``argsort``; the steady remap of 65,536 IDs; and the
  26-table collection step with its lookups and fused steps in one native call each against one
  call per table (an A/B in one process, 6 alternating passes of 12 steps).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import embtab
import embtab.nn as enn
import embtab.optim as eo
from embtab import _core
from embtab._modules import first_occurrence
from embtab.benchmarks import collection as C
from embtab.benchmarks._harness import machine_line, torch_threads, zipf_ranks

HERE = Path(__file__).resolve().parent


def median_ms(fn, reps):
    ts = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def issue16_rows(rng):
    """8 batches of 65,536 Zipf(1.1) ranks over 10^6 IDs, as the module's rows (first-occurrence order)."""
    n, batch = 10**6, 2**16
    ranks = [zipf_ranks(n, batch, 1.1, rng) for _ in range(8)]
    allr = np.concatenate(ranks)
    u, first = np.unique(allr, return_index=True)
    to_row = np.full(n, -1, np.int64)
    to_row[u[np.argsort(first)]] = np.arange(len(u))
    return np.concatenate([to_row[r] for r in ranks]).astype(np.int64)


def cpp_parts(include: str, rng) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = os.path.join(tmp, "rows.bin")
        issue16_rows(rng).tofile(rows_file)
        for name in ("fused_step", "table_build", "pool_bags", "pool_collection"):
            subprocess.run(["g++", "-O3", "-std=c++17", "-ffp-contract=off", "-I", include,
                            str(HERE / f"{name}.cpp"), "-o", os.path.join(tmp, name), "-lpthread"],
                           check=True)
        print("\nFused step alone (C++, min/median of 400 calls):")
        for kind in ("sgd", "rw", "adagrad", "adam"):
            for t in (1, 2):
                out = subprocess.run([os.path.join(tmp, "fused_step"), rows_file, kind, str(t)],
                                     check=True, capture_output=True, text=True).stdout
                print("  " + out.strip())
        print("\nPooling of one batch, 8,192 bags of 8 x 64 float32 (C++, min/median of 400 calls):")
        out = subprocess.run([os.path.join(tmp, "pool_bags"), rows_file], check=True, capture_output=True,
                             text=True).stdout
        print("  " + out.strip())
        out = subprocess.run([os.path.join(tmp, "pool_collection")], check=True, capture_output=True,
                             text=True).stdout
        print("  " + out.strip())
        print("\nTable build of 10^7 keys from empty (C++, three builds):")
        for lf in ("0.9", "0.95"):
            for t in (1, 2):
                out = subprocess.run([os.path.join(tmp, "table_build"), lf, str(t)],
                                     check=True, capture_output=True, text=True).stdout
                print("  " + out.strip())


def fused_ab(include_a: str, include_b: str, rng) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = os.path.join(tmp, "rows.bin")
        issue16_rows(rng).tofile(rows_file)
        libs = []
        for tag, inc in (("A", include_a), ("B", include_b)):
            lib = os.path.join(tmp, f"{tag}.so")
            subprocess.run(["g++", "-O3", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared",
                            "-fvisibility=hidden", "-I", inc, str(HERE / "fused_ab_lib.cpp"), "-o", lib,
                            "-lpthread"], check=True)
            libs.append(lib)
        exe = os.path.join(tmp, "fused_ab")
        subprocess.run(["g++", "-O3", "-std=c++17", "-I", str(HERE), str(HERE / "fused_ab.cpp"), "-o", exe,
                        "-ldl"], check=True)
        print(f"\nFused step, A = {include_a}, B = {include_b} (median of 800 calls each):")
        for kind in ("sgd", "adagrad", "rw", "adam"):
            for grad in ("rows", "bcast"):
                out = subprocess.run([exe, rows_file, kind, grad, *libs], check=True, capture_output=True,
                                     text=True).stdout
                print("  " + out.strip())


def python_parts(rng) -> None:
    ids = rng.integers(-(2**63), 2**63 - 1, 20_000, dtype=np.int64)
    out = np.empty((20_000, 64), np.float32)
    print("\nInitial vectors, 20,000 x 64 float32 (median of 10):")
    for t in (1, 2):
        ms = median_ms(lambda i: _core.init_vectors(ids, out, 3, "normal", 0.0, 1.0, t), 10)
        print(f"  {t} thread(s): {ms:.2f} ms")

    keys = rng.integers(-(2**63), 2**63 - 1, 10**6, dtype=np.int64)
    cand = keys[zipf_ranks(10**6, 65_536, 1.1, rng)]

    def by_unique(_):
        uniq, first, _inv = np.unique(cand, return_index=True, return_inverse=True)
        return uniq[np.argsort(first, kind="stable")]

    a = median_ms(by_unique, 20)
    b = median_ms(lambda _: first_occurrence(cand), 20)
    print(f"\nNew IDs of 65,536 Zipf IDs (median of 20): np.unique + argsort {a:.2f} ms, "
          f"first_occurrence {b:.2f} ms")

    m = enn.CuckooEmbeddingBag(10**6, 64, optimizer=eo.SGD(lr=0.01), num_threads=1)
    batches = [keys[zipf_ranks(10**6, 65_536, 1.1, rng)] for _ in range(4)]
    for x in batches:
        m._remap(x.copy())
    ms = median_ms(lambda i: m._remap(batches[i % 4].copy()), 400)
    print(f"\nSteady remap of 65,536 IDs (median of 400): {ms * 1e3:.0f} us")


def collection_ab() -> None:
    w = C.make_workload(False, 0, 4, 8192)
    sizes = C.table_sizes(False)
    one_lookup = embtab.CuckooTable.lookup_many
    one_step = enn.fused_update_many

    def per_table_steps(updates, num_threads):
        for u in updates:
            eo.fused_update(*u)

    def per_table_lookups(tables, ids, num_threads=0):
        return [None] * len(tables)  # each table's remap looks up its own IDs

    arms = {
        "one native call each": (one_lookup, one_step),
        "one call per table": (per_table_lookups, per_table_steps),
    }
    print("\n26-table collection step, row-wise Adagrad (median / min ms of 6 passes of 12 steps):")
    try:
        for t in (1, 2):
            with torch_threads(t):
                coll = C.make_collection(sizes, 16, C.fused_optimizer("rowwise_adagrad"), t)
                for b in range(4):
                    C.collection_step(coll, w["raw"][b])
                res = {k: [] for k in arms}
                for _ in range(6):
                    for name, (lookup, step) in arms.items():
                        embtab.CuckooTable.lookup_many = staticmethod(lookup)
                        enn.fused_update_many = step
                        t0 = time.perf_counter()
                        for i in range(12):
                            C.collection_step(coll, w["raw"][i % 4])
                        res[name].append((time.perf_counter() - t0) / 12 * 1e3)
                for name, v in res.items():
                    print(f"  {t} thread(s), {name}: {np.median(v):.2f} / {min(v):.2f}")
                del coll
    finally:
        embtab.CuckooTable.lookup_many = staticmethod(one_lookup)
        enn.fused_update_many = one_step


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--include", default=str(HERE.parents[1] / "cpp" / "include"))
    ap.add_argument("--skip-cpp", action="store_true", help="the Python parts only")
    ap.add_argument("--ab", metavar="OTHER_INCLUDE",
                    help="only the fused step of OTHER_INCLUDE's build against --include's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    rng = np.random.default_rng(0)
    if args.ab:
        fused_ab(args.ab, args.include, rng)
        sys.exit(0)
    if not args.skip_cpp:
        cpp_parts(args.include, rng)
    python_parts(rng)
    collection_ab()
    sys.exit(0)
