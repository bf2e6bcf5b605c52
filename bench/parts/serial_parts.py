"""Where a fused step's time goes outside its native calls, by batch size, at 1 and 2 threads.

Usage (from the repository root, the package built or installed):
    python bench/parts/serial_parts.py [--threads 1 2] [--log2-batches 8 12 16] [--steps 300]

The issue-16 module of bench_optim.py (a 1,000,000 x 64 ``CuckooEmbeddingBag`` with fused
RowWiseAdagrad, Zipf(1.1) raw IDs in bags of 8; a step is forward, ``sum()``, backward and
``loss.item()``), steps back to back with warm caches, at each batch size. The native calls of
a step are timed by wrapping them in this process: the remap's table lookup
(``CuckooTable.lookup``), torch's pooling (``torch.embedding_bag``) and the C++ optimizer step
(``_core.fused_step``). Printed per thread count and batch, medians over ``--steps`` steps, in
microseconds:

- ``whole``: the step;
- ``lookup``, ``embedding_bag``, ``fused_step``: the native calls (they run on the threads);
- ``sum``: the ``sum()`` loss;
- ``fwd other``: the forward less its lookup and pooling (the module's Python, argument checks,
  the autograd Function's record);
- ``bwd other``: ``loss.backward()`` less the C++ step (the autograd engine, the Function's
  Python backward and the step's argument tuple);
- ``engine to bwd``: from the ``loss.backward()`` call to the start of the Function's Python
  backward (the autograd engine's own work before it).

What is left in ``fwd other``, ``bwd other`` and ``sum`` runs on one thread whatever the thread
count; the script shows how much of it grows with the batch (the same code run with caches the
native calls have just filled with the batch's data).
"""

import argparse
import time
import types

import numpy as np
import torch

import embtab.optim as eo
import embtab.table as et
from embtab.benchmarks._harness import machine, machine_line
from embtab.benchmarks.optim import workload
from embtab.nn import CuckooEmbeddingBag

PARTS = ("whole", "lookup", "embedding_bag", "fused_step", "sum", "fwd other", "bwd other",
         "engine to bwd")


_TIMES: dict = {}   # what the wrapped calls add up; the wrappers are installed once


def instrument(times: dict) -> None:
    """Wrap the step's native calls and the Function's backward so that each adds its time
    (or, for the backward, its start) to ``times``; once per process (a second call would
    wrap the wrappers and count twice)."""
    if getattr(instrument, "done", False):
        return
    instrument.done = True
    def wrap(name, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t
        return timed

    et.CuckooTable.lookup = wrap("lookup", et.CuckooTable.lookup)
    torch.embedding_bag = wrap("embedding_bag", torch.embedding_bag)
    core = eo._core
    proxy = types.SimpleNamespace(**{k: getattr(core, k) for k in dir(core)
                                     if not k.startswith("__")})
    proxy.fused_step = wrap("fused_step", core.fused_step)
    eo._core = proxy
    backward = eo._FusedLookup.backward

    def marked(ctx, *grads):
        times["bwd start"] = time.perf_counter()
        return backward(ctx, *grads)

    eo._FusedLookup.backward = staticmethod(marked)


def run(threads: list, log2_batches: list, steps: int) -> dict:
    times = _TIMES
    instrument(times)
    out = {}
    for th in threads:
        torch.set_num_threads(th)
        for lb in log2_batches:
            _, raw, offsets = workload(10**6, 2**lb, 8, 8, 0)
            m = CuckooEmbeddingBag(10**6, 64, mode="sum", seed=0, num_threads=th,
                                   optimizer=eo.RowWiseAdagrad(lr=0.01, eps=1e-8))
            for b in range(16):  # every batch seen: steady steps
                m(raw[b % 8], offsets).sum().backward()
            rows = []
            for b in range(steps):
                times.clear()
                t0 = time.perf_counter()
                y = m(raw[b % 8], offsets)
                t1 = time.perf_counter()
                loss = y.sum()
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
                loss.item()
                t4 = time.perf_counter()
                rows.append({
                    "whole": t4 - t0, "lookup": times["lookup"],
                    "embedding_bag": times["embedding_bag"], "fused_step": times["fused_step"],
                    "sum": t2 - t1,
                    "fwd other": (t1 - t0) - times["lookup"] - times["embedding_bag"],
                    "bwd other": (t3 - t2) - times["fused_step"],
                    "engine to bwd": times["bwd start"] - t2,
                })
            out[f"{th} threads, batch 2^{lb}"] = {
                p: float(np.median([r[p] for r in rows])) * 1e6 for p in PARTS}
            del m
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--log2-batches", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    print(machine_line(machine()))
    res = run(args.threads, args.log2_batches, args.steps)
    print("| setting | " + " | ".join(PARTS) + " |")
    print("|---|" + "---:|" * len(PARTS))
    for k, v in res.items():
        print(f"| {k} | " + " | ".join(f"{v[p]:.1f}" for p in PARTS) + " |")
