"""Benchmark of the fused sparse optimizers (:mod:`embtab.optim`) against torch's and FBGEMM's.

Run it with ``embtab bench optim`` or ``python bench/bench_optim.py [--quick] [--threads N]``.

Workload (issue 16): a table of 1,000,000 x 64 float32 rows; batches of 65,536 IDs drawn
Zipf(1.1) over 1,000,000 distinct random 64-bit IDs, in bags of 8 (8,192 bags), sum pooling; a
step is forward, ``sum()`` loss, backward and the optimizer step. embtab's modules read the raw
64-bit IDs (the ID -> row remap is inside the timer); ``nn.EmbeddingBag`` and FBGEMM read the
same batches as dense indices (the ID's Zipf rank). For each optimizer the implementations are
timed side by side in one process, passes interleaved in rotating order; a figure is the median
over ``repeats`` passes of ``n_batches`` steps (every batch seen once before: steady state).

- SGD: ``nn.EmbeddingBag(sparse=True)`` + ``torch.optim.SGD``; ``CuckooEmbeddingBag(sparse=True)``
  + ``torch.optim.SGD``; ``CuckooEmbeddingBag(optimizer=embtab.optim.SGD)``; FBGEMM EXACT_SGD.
- Adagrad: ``nn.EmbeddingBag(sparse=True)`` + ``torch.optim.Adagrad``; fused; FBGEMM EXACT_ADAGRAD.
- RowWiseAdagrad: fused; FBGEMM EXACT_ROWWISE_ADAGRAD (torch has none).
- Adam: ``nn.EmbeddingBag(sparse=True)`` + ``torch.optim.SparseAdam``; fused (FBGEMM's CPU
  build has no Adam).
- threads: the fused RowWiseAdagrad step (whole step; and the C++ step alone, on a captured
  batch) with 1 and with 2 threads (embtab's num_threads and torch's threads both set); the
  whole step timed twice, with a full garbage collection before each pass as everywhere
  else (each pass starts with cold caches) and back to back (warm).

FBGEMM (``fbgemm-gpu-cpu``, 1.8.x for torch 2.13) is optional: when it does not import, its rows
are skipped with the reason. Tables are built one optimizer at a time (the machine has little
free memory).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import torch
from torch import nn

import embtab.optim as eo
from embtab import _core
from embtab.benchmarks._harness import interleaved, machine, machine_line, torch_threads, zipf_ranks
from embtab.nn import CuckooEmbeddingBag

__all__ = ["run", "format_markdown", "workload"]

LR = 0.01


def load_fbgemm():
    """(module namespace dict, None) or (None, reason)."""
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as e:  # ImportError, or an ABI mismatch with this torch
        return None, f"fbgemm_gpu does not import ({type(e).__name__}: {e})"
    return {
        "version": getattr(fbgemm_gpu, "__version__", "?"),
        "EmbOptimType": EmbOptimType,
        "SparseType": SparseType,
        "EmbeddingLocation": EmbeddingLocation,
        "PoolingMode": PoolingMode,
        "ComputeDevice": ComputeDevice,
        "TBE": SplitTableBatchedEmbeddingBagsCodegen,
    }, None


def fbgemm_tbe(fb: dict, n: int, dim: int, optim: str, eps: float):
    opt = {
        "sgd": fb["EmbOptimType"].EXACT_SGD,
        "adagrad": fb["EmbOptimType"].EXACT_ADAGRAD,
        "rowwise_adagrad": fb["EmbOptimType"].EXACT_ROWWISE_ADAGRAD,
    }[optim]
    spec = [(n, dim, fb["EmbeddingLocation"].HOST, fb["ComputeDevice"].CPU)]
    return fb["TBE"](
        spec,
        optimizer=opt,
        learning_rate=LR,
        eps=eps,
        pooling_mode=fb["PoolingMode"].SUM,
        weights_precision=fb["SparseType"].FP32,
        device="cpu",
    )


def _check(loss: torch.Tensor) -> float:
    v = loss.item()
    if not np.isfinite(v):
        raise AssertionError(f"a benchmark step gave a non-finite loss {v}")
    return v


def torch_step(module, opt, ids, offsets):
    opt.zero_grad()
    loss = module(ids, offsets).sum()
    loss.backward()
    opt.step()
    return _check(loss)


def fused_step(module, ids, offsets):
    loss = module(ids, offsets).sum()
    loss.backward()  # the rows are updated here
    return _check(loss)


def fbgemm_step(tbe, ids, offsets_csr):
    loss = tbe(ids, offsets_csr).sum()
    loss.backward()  # FBGEMM's fused update
    return _check(loss)


def run(quick: bool = False, seed: int = 0, repeats: int = 5, threads: int = 0) -> dict:
    """Run the benchmark; returns JSON-serialisable raw results.

    Parameters
    ----------
    quick : bool
        100,000 x 64 rows and batches of 8,192 (a smoke run, not the figures).
    seed : int
        Seed of the workload.
    repeats : int
        Timed passes per implementation (the median is reported).
    threads : int
        Threads of every implementation: torch's (``torch.set_num_threads``, which FBGEMM and
        ``nn.EmbeddingBag`` use) and embtab's ``num_threads``; 0 keeps torch's default and
        embtab's (all hardware threads). The 1-vs-2-thread comparison always runs both.
    """
    # torch's sparse optimizers (the references) warn that the invariant checks are off
    # unless told: off, explicitly, as they are by default
    with torch_threads(threads), torch.sparse.check_sparse_tensor_invariants(enable=False):
        return _run(quick, seed, repeats, threads)


def workload(n: int = 10**6, batch: int = 2**16, n_batches: int = 8, bag: int = 8,
             seed: int = 0) -> tuple:
    """Issue 16's batches: ``n`` distinct random int64 raw IDs, ``n_batches`` batches of
    ``batch`` Zipf(1.1) draws over them in bags of ``bag``. Returns ``(ranks, raw, offsets)``:
    each batch's dense indices (NumPy), the same as raw-ID tensors, and the bag offsets."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, int(n * 1.01), dtype=np.int64))[:n]
    rng.shuffle(keys)
    ranks = [zipf_ranks(n, batch, 1.1, rng) for _ in range(n_batches)]
    return ranks, [torch.from_numpy(keys[r]) for r in ranks], torch.arange(0, batch, bag)


def _run(quick: bool, seed: int, repeats: int, threads: int) -> dict:
    n = 10**5 if quick else 10**6
    dim, bag = 64, 8
    batch = 2**13 if quick else 2**16
    n_batches = 3 if quick else 8
    repeats = 2 if quick else repeats
    ranks, raw, offsets = workload(n, batch, n_batches, bag, seed)
    dense = [torch.from_numpy(r) for r in ranks]
    csr = torch.arange(0, batch + 1, bag)
    fb, fb_reason = load_fbgemm()
    res = {
        "benchmark": "optim",
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "num_embeddings": n,
        "embedding_dim": dim,
        "batch": batch,
        "bag_size": bag,
        "n_batches": n_batches,
        "repeats": repeats,
        "zipf_s": 1.1,
        "distinct_ids_per_batch": float(np.mean([len(np.unique(r)) for r in ranks])),
        "fbgemm": fb["version"] if fb else None,
        "fbgemm_skipped": fb_reason,
        "seconds_per_step": {},
        "state_bytes_per_row": {},
    }

    def fused(opt):
        torch.manual_seed(seed)
        return CuckooEmbeddingBag(n, dim, mode="sum", seed=seed, optimizer=opt, num_threads=threads)

    groups = {
        "sgd": (eo.SGD(lr=LR), lambda p: torch.optim.SGD(p, lr=LR), 1e-8),
        "adagrad": (
            eo.Adagrad(lr=LR, eps=1e-8),
            lambda p: torch.optim.Adagrad(p, lr=LR, eps=1e-8),
            1e-8,
        ),
        "rowwise_adagrad": (eo.RowWiseAdagrad(lr=LR, eps=1e-8), None, 1e-8),
        "adam": (eo.Adam(lr=LR), lambda p: torch.optim.SparseAdam(p, lr=LR), 1e-8),
    }
    for name, (opt, torch_opt, eps) in groups.items():
        impls = {}
        keep = []
        if torch_opt is not None:
            torch.manual_seed(seed)
            ref = nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
            ref_opt = torch_opt(ref.parameters())
            keep += [ref, ref_opt]
            impls["nn.EmbeddingBag(sparse) + torch"] = lambda b, m=ref, o=ref_opt: torch_step(
                m, o, dense[b], offsets
            )
        if name == "sgd":
            cb = CuckooEmbeddingBag(n, dim, mode="sum", sparse=True, seed=seed, num_threads=threads)
            cb_opt = torch_opt(cb.parameters())
            keep += [cb, cb_opt]
            impls["CuckooEmbeddingBag(sparse) + torch"] = lambda b, m=cb, o=cb_opt: torch_step(
                m, o, raw[b], offsets
            )
        fm = fused(opt)
        keep.append(fm)
        impls["embtab fused"] = lambda b, m=fm: fused_step(m, raw[b], offsets)
        if fb is not None and name != "adam":
            tbe = fbgemm_tbe(fb, n, dim, name, eps)
            keep.append(tbe)
            impls["FBGEMM TBE fused"] = lambda b, t=tbe: fbgemm_step(t, dense[b], csr)
        res["seconds_per_step"][name] = interleaved(impls, n_batches, repeats, warmup=True)
        res["state_bytes_per_row"][name] = opt.state_bytes_per_row(dim)
        del impls, keep
        gc.collect()

    # threads: the fused RowWiseAdagrad step with 1 and 2 threads ---------------------------------
    fm = fused(eo.RowWiseAdagrad(lr=LR, eps=1e-8))
    torch_threads = torch.get_num_threads()

    def with_threads(t):
        def step(b):
            fm.num_threads = t
            torch.set_num_threads(t)
            return fused_step(fm, raw[b], offsets)

        return step

    try:
        res["threads_step"] = interleaved(
            {1: with_threads(1), 2: with_threads(2)}, n_batches, repeats, warmup=True
        )
        # the same passes with no full garbage collection before each (warm caches, as steps
        # run back to back in a training loop; what the collection costs a step, at either
        # thread count: bench/parts/cold_passes.py, bench/README.md "Two threads, warm and cold")
        res["threads_step_warm"] = interleaved(
            {1: with_threads(1), 2: with_threads(2)}, n_batches, repeats, collect=False
        )
    finally:
        torch.set_num_threads(torch_threads)
    # the C++ step alone on one captured batch (what backward calls), 1 vs 2 threads
    rows = fm.lookup(raw[0]).numpy()
    grad = np.ones((batch // bag, dim), np.float32)
    w = fm.weight.detach().numpy()
    s1 = fm.opt_row_sum.numpy()
    kernel = {}
    for t in (1, 2, 1, 2, 1, 2):
        reps = []
        for _ in range(max(repeats, 5)):
            t0 = time.perf_counter()
            _core.fused_step(
                w,
                rows,
                grad,
                csr.numpy(),
                None,
                False,
                False,
                n,
                s1,
                None,
                "rowwise_adagrad",
                1e-6,
                1e-8,
                num_threads=t,
            )
            reps.append(time.perf_counter() - t0)
        kernel.setdefault(t, []).append(float(np.median(reps)))
    res["threads_kernel"] = {t: float(np.median(v)) for t, v in kernel.items()}
    fm.num_threads = threads
    res["breakdown"] = _breakdown(fm, raw, offsets, repeats)
    del fm
    gc.collect()
    res["small_batch"] = _small_batches(fb, seed, repeats, threads, quick)
    return res


SMALL_BATCH, SMALL_ROWS = 256, 10**5


def _small_batches(fb, seed: int, repeats: int, threads: int, quick: bool) -> dict:
    """Median seconds per Adagrad step on small batches (``SMALL_BATCH`` Zipf IDs in bags of 8
    over a ``SMALL_ROWS`` x 64 table), where a step's fixed costs (Python, autograd, the calls
    into native code) outweigh its work: fused Adagrad and row-wise Adagrad, ``nn.EmbeddingBag
    (sparse=True)`` + ``torch.optim.Adagrad`` and FBGEMM's fused Adagrad when it imports."""
    n, dim, bag = SMALL_ROWS, 64, 8
    n_batches = 8 if quick else 64
    ranks, raw, offsets = workload(n, SMALL_BATCH, n_batches, bag, seed + 1)
    dense = [torch.from_numpy(r) for r in ranks]
    csr = torch.arange(0, SMALL_BATCH + 1, bag)
    impls, keep = {}, []
    torch.manual_seed(seed)
    ref = nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
    ref_opt = torch.optim.Adagrad(ref.parameters(), lr=LR, eps=1e-8)
    keep += [ref, ref_opt]
    impls["nn.EmbeddingBag(sparse) + torch Adagrad"] = lambda b: torch_step(
        ref, ref_opt, dense[b], offsets
    )
    for name, opt in (("adagrad", eo.Adagrad(lr=LR, eps=1e-8)),
                      ("rowwise_adagrad", eo.RowWiseAdagrad(lr=LR, eps=1e-8))):
        fm = CuckooEmbeddingBag(n, dim, mode="sum", seed=seed, optimizer=opt, num_threads=threads)
        keep.append(fm)
        impls[f"embtab fused {name}"] = lambda b, m=fm: fused_step(m, raw[b], offsets)
        if fb is not None:
            tbe = fbgemm_tbe(fb, n, dim, name, 1e-8)
            keep.append(tbe)
            impls[f"FBGEMM TBE fused {name}"] = lambda b, t=tbe: fbgemm_step(t, dense[b], csr)
    out = {"batch": SMALL_BATCH, "num_embeddings": n, "n_batches": n_batches,
           "seconds_per_step": interleaved(impls, n_batches, repeats, warmup=True)}
    del impls, keep
    gc.collect()
    return out


def _breakdown(fm, raw: list, offsets, repeats: int) -> dict:
    """Median seconds of one fused step's parts over the (seen) batches: the remap alone (the
    table's lookup of the raw IDs), the forward (remap + pooling + autograd record) and the
    backward (the C++ step + its Python and autograd work)."""
    fwd, bwd, remap = [], [], []
    for i in range(max(repeats, 5) * len(raw)):
        ids = raw[i % len(raw)]
        t0 = time.perf_counter()
        fm._table.lookup(ids.numpy(), num_threads=fm.num_threads)
        t1 = time.perf_counter()
        out = fm(ids, offsets)
        t2 = time.perf_counter()
        loss = out.sum()
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        _check(loss)
        remap.append(t1 - t0)
        fwd.append(t2 - t1)
        bwd.append(t4 - t3)
    return {"remap_lookup_only": float(np.median(remap)), "forward": float(np.median(fwd)),
            "backward": float(np.median(bwd))}


def format_markdown(r: dict) -> str:
    m = r["machine"]
    out = [
        f"Machine: {machine_line(m)}; {r['threads']} threads for every implementation; "
        f"FBGEMM {r['fbgemm'] or 'skipped: ' + str(r['fbgemm_skipped'])}.",
        f"Table {r['num_embeddings']:,} x {r['embedding_dim']} float32; batches of {r['batch']:,} "
        f"Zipf({r['zipf_s']}) IDs (~{r['distinct_ids_per_batch']:,.0f} distinct) in bags of "
        f"{r['bag_size']}, sum pooling; step = forward + sum + backward + optimizer; median of "
        f"{r['repeats']} passes over {r['n_batches']} batches, interleaved.",
        "",
        "| optimizer | implementation | ms / step | state bytes / row |",
        "|---|---|---:|---:|",
    ]
    torch_state = {"sgd": 0, "adagrad": 4 * r["embedding_dim"], "adam": 8 * r["embedding_dim"]}
    fb_state = {"sgd": 0, "adagrad": 4 * r["embedding_dim"], "rowwise_adagrad": 4}
    for name, times in r["seconds_per_step"].items():
        for impl, s in times.items():
            if impl == "embtab fused":
                b = r["state_bytes_per_row"][name]
            elif impl.startswith("FBGEMM"):
                b = fb_state[name]
            else:
                b = torch_state[name]
            out.append(f"| {name} | {impl} | {s * 1e3:.1f} | {b} |")
    out.append("")
    for name, times in r["seconds_per_step"].items():
        f = times["embtab fused"]
        if "FBGEMM TBE fused" in times:
            ratio = f / times["FBGEMM TBE fused"]
            out.append(
                f"- {name}: fused / FBGEMM = {ratio:.2f}x (target <= 0.8x: "
                f"{'met' if ratio <= 0.8 else 'missed'})"
            )
        if name == "adam":
            ratio = f / times["nn.EmbeddingBag(sparse) + torch"]
            out.append(
                f"- adam: fused / nn.EmbeddingBag + SparseAdam = {ratio:.2f}x (target <= "
                f"0.5x: {'met' if ratio <= 0.5 else 'missed'})"
            )
    def speedup(key: str, label: str, digits: int) -> str:
        t = {int(k): v for k, v in r[key].items()}
        sp = t[1] / t[2]
        return (f"{label}: 1 thread {t[1] * 1e3:.{digits}f} ms, 2 threads "
                f"{t[2] * 1e3:.{digits}f} ms: {sp:.2f}x (target >= 1.6x: "
                f"{'met' if sp >= 1.6 else 'missed'})")

    tk = {int(k): v for k, v in r["threads_kernel"].items()}
    out.append(
        speedup("threads_step", "- threads, fused RowWiseAdagrad step", 1)
        + f"; the C++ step alone: {tk[1] * 1e3:.2f} ms vs {tk[2] * 1e3:.2f} ms "
        f"({tk[1] / tk[2]:.2f}x)"
    )
    if "threads_step_warm" in r:
        out.append(speedup("threads_step_warm", "- the same, passes back to back (no full "
                           "garbage collection before each, caches warm)", 2))
    if "breakdown" in r:
        b = r["breakdown"]
        out.append(
            f"- one fused RowWiseAdagrad step's parts ({r['threads']} threads): remap lookup "
            f"{b['remap_lookup_only'] * 1e3:.2f} ms, forward (remap included) "
            f"{b['forward'] * 1e3:.2f} ms, backward (the C++ step included) "
            f"{b['backward'] * 1e3:.2f} ms"
        )
    if "small_batch" in r:
        sb = r["small_batch"]
        parts = ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in sb["seconds_per_step"].items())
        out.append(
            f"- small batches ({sb['batch']} IDs in bags of {r['bag_size']}, a "
            f"{sb['num_embeddings']:,}-row table; the fixed cost of a step): {parts}"
        )
    return "\n".join(out)
