"""Benchmark of the torch modules of :mod:`embtab.nn` against ``nn.Embedding(Bag)``, side by side.

Workload (issue 3): a table of 1,000,000 x 64 float32 rows, batches of 65,536 raw 64-bit IDs
drawn Zipf(1.1) over 1,000,000 distinct random IDs; one training step = forward, ``sum()``
loss, backward with sparse gradients, ``torch.optim.SGD`` step. The reference is
``nn.Embedding(sparse=True)`` fed with the same batches pre-remapped to dense indices (the
ID's Zipf rank), measured in the same process, interleaved with embtab's module pass by pass.

- ``embedding``: ``CuckooEmbedding`` vs ``nn.Embedding`` (and ``HashedEmbedding`` beside them);
- ``bag``: ``CuckooEmbeddingBag`` vs ``nn.EmbeddingBag`` (mode sum, bags of 8 IDs);
- ``remap``: the ID -> row remap alone (``CuckooTable.lookup`` of a batch, and the module's
  whole remap with its bookkeeping);
- ``growth``: one training step whose batch makes the table grow from n/2 to n rows (weight
  and SparseAdam state copied) against the same step on a pre-sized table.

The embtab modules are timed in steady state: every batch has been seen once before the timed
passes (the first sighting of an ID, with its initialisation, is the ``growth``/insert cost).
Figures are medians over ``repeats`` passes; the workload is generated outside the timed
region and every step's loss is checked to be finite.

Run it with ``embtab bench module`` or ``python bench/bench_module.py``.
"""

from __future__ import annotations

import gc
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from torch import nn

from embtab.benchmarks._harness import interleaved, machine, machine_line, time_calls, zipf_ranks

__all__ = ["run", "format_markdown"]


def _sgd_step(module: nn.Module, opt: torch.optim.Optimizer, *args) -> float:
    out = module(*args)
    loss = out.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def _finite(losses: List[float]) -> None:
    for b, loss in enumerate(losses):
        if not np.isfinite(loss):
            raise AssertionError(f"benchmark step {b} gave a non-finite loss {loss}")


def _pass(step: Callable[[int], float], n_batches: int) -> float:
    """Seconds per step of one timed pass over the batches; every step's loss must be finite."""
    return time_calls(lambda: [step(b) for b in range(n_batches)], 1, check=_finite).median / n_batches


def _interleaved(
    impls: Dict[str, Callable[[int], float]], n_batches: int, repeats: int
) -> Dict[str, float]:
    """Median seconds per step of each impl, passes interleaved (rotating order)."""
    return interleaved(impls, n_batches, repeats, check=_finite)


def run(quick: bool = False, seed: int = 0, repeats: int = 5) -> dict:
    """Run the module benchmark; returns JSON-serialisable raw results.

    Parameters
    ----------
    quick : bool
        100,000 x 64 rows and batches of 8,192 (a smoke run, not the figures).
    seed : int
        Seed of the workload.
    repeats : int
        Timed passes per implementation (the median is reported).
    """
    import embtab
    from embtab.nn import CuckooEmbedding, CuckooEmbeddingBag, HashedEmbedding

    n = 10**5 if quick else 10**6
    dim = 64
    batch = 2**13 if quick else 2**16
    n_batches = 4 if quick else 8
    repeats = 3 if quick else repeats
    bag_size = 8
    lr = 0.01
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, int(n * 1.01), dtype=np.int64))[:n]
    rng.shuffle(keys)
    ranks = [zipf_ranks(n, batch, 1.1, rng) for _ in range(n_batches)]
    dense = [torch.from_numpy(r) for r in ranks]
    raw = [torch.from_numpy(keys[r]) for r in ranks]
    offsets = torch.arange(0, batch, bag_size)

    results: Dict[str, object] = {
        "benchmark": "module",
        "embtab": embtab.__version__,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "num_embeddings": n,
        "embedding_dim": dim,
        "batch": batch,
        "n_batches": n_batches,
        "bag_size": bag_size,
        "zipf_s": 1.1,
        "repeats": repeats,
        "distinct_ids_per_batch": float(np.mean([len(np.unique(r)) for r in ranks])),
    }

    # embedding ----------------------------------------------------------------------------
    torch.manual_seed(seed)
    ref = nn.Embedding(n, dim, sparse=True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr)
    cuckoo = CuckooEmbedding(n, dim, sparse=True, seed=seed)
    cuckoo_opt = torch.optim.SGD(cuckoo.parameters(), lr=lr)
    hashed = HashedEmbedding(n, dim, sparse=True, seed=seed)
    hashed_opt = torch.optim.SGD(hashed.parameters(), lr=lr)
    # first sightings: inserts + per-ID init
    first_pass = _pass(lambda b: _sgd_step(cuckoo, cuckoo_opt, raw[b]), n_batches)
    emb_times = _interleaved(
        {
            "nn.Embedding": lambda b: _sgd_step(ref, ref_opt, dense[b]),
            "CuckooEmbedding": lambda b: _sgd_step(cuckoo, cuckoo_opt, raw[b]),
            "HashedEmbedding": lambda b: _sgd_step(hashed, hashed_opt, raw[b]),
        },
        n_batches,
        repeats,
    )
    results["embedding"] = {
        "seconds_per_step": emb_times,
        "ratio_cuckoo_vs_nn": emb_times["CuckooEmbedding"] / emb_times["nn.Embedding"],
        "ratio_hashed_vs_nn": emb_times["HashedEmbedding"] / emb_times["nn.Embedding"],
        "cuckoo_first_pass_seconds_per_step": first_pass,
        "cuckoo_num_ids": cuckoo.num_ids,
    }

    # remap alone ------------------------------------------------------------------------------
    table = cuckoo._table
    ids_np = [r.numpy() for r in raw]
    remap_times = {"CuckooTable.lookup": [], "module remap": []}

    def all_found(rows_per_batch) -> None:
        if any((r < 0).any() for r in rows_per_batch):
            raise AssertionError("a warmed-up ID is missing from the table")

    for _ in range(repeats):
        t = time_calls(lambda: [table.lookup(x) for x in ids_np], 1, check=all_found)
        remap_times["CuckooTable.lookup"].append(t.median / n_batches)
        t = time_calls(lambda: [cuckoo._remap(x)[0] for x in ids_np], 1, check=all_found)
        remap_times["module remap"].append(t.median / n_batches)
    results["remap"] = {
        "seconds_per_batch": {k: float(np.median(v)) for k, v in remap_times.items()}
    }
    gc.collect()

    # bag --------------------------------------------------------------------------------------
    torch.manual_seed(seed)
    ref_bag = nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
    ref_bag_opt = torch.optim.SGD(ref_bag.parameters(), lr=lr)
    cbag = CuckooEmbeddingBag(n, dim, mode="sum", sparse=True, seed=seed)
    cbag_opt = torch.optim.SGD(cbag.parameters(), lr=lr)
    for b in range(n_batches):
        _sgd_step(cbag, cbag_opt, raw[b], offsets)
    bag_times = _interleaved(
        {
            "nn.EmbeddingBag": lambda b: _sgd_step(ref_bag, ref_bag_opt, dense[b], offsets),
            "CuckooEmbeddingBag": lambda b: _sgd_step(cbag, cbag_opt, raw[b], offsets),
        },
        n_batches,
        repeats,
    )
    results["bag"] = {
        "seconds_per_step": bag_times,
        "ratio_cuckoo_vs_nn": bag_times["CuckooEmbeddingBag"] / bag_times["nn.EmbeddingBag"],
    }
    gc.collect()

    # growth -------------------------------------------------------------------------------------
    half = n // 2
    fill = torch.from_numpy(keys[:half])
    new_batch = torch.from_numpy(
        np.concatenate([keys[half : half + batch // 2], keys[: batch - batch // 2]])
    )
    grow_t, sized_t = [], []
    for _ in range(3):
        for initial, sink in ((half, grow_t), (n, sized_t)):
            m = CuckooEmbedding(initial, dim, sparse=True, seed=seed)
            opt = torch.optim.SparseAdam(m.parameters(), lr=lr)
            for s in range(0, half, batch):
                _sgd_step(m, opt, fill[s : s + batch])  # fills n/2 rows, allocates Adam state
            sink.append(time_calls(lambda: _sgd_step(m, opt, new_batch), 1).median)
            expect_growths = 1 if initial == half else 0
            if int(m.num_growths) != expect_growths or m.num_ids != half + batch // 2:
                raise AssertionError("growth benchmark did not grow as planned")
            del m, opt
            gc.collect()
    results["growth"] = {
        "from_rows": half,
        "to_rows": n,
        "optimizer": "SparseAdam",
        "new_ids_in_batch": batch // 2,
        "seconds_growing_step": float(np.median(grow_t)),
        "seconds_same_step_presized": float(np.median(sized_t)),
        "growth_overhead_seconds": float(np.median(grow_t) - np.median(sized_t)),
    }
    return results


def format_markdown(results: dict) -> str:
    """The results as a Markdown section (tables of median seconds and ratios)."""
    m = results["machine"]
    e, bg, rm, g = results["embedding"], results["bag"], results["remap"], results["growth"]
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    lines = [
        f"Machine: {machine_line(m)}; {m.get('torch_threads')} torch threads.",
        f"Table {results['num_embeddings']:,} x {results['embedding_dim']} float32; batches of "
        f"{results['batch']:,} Zipf({results['zipf_s']}) raw IDs (~{results['distinct_ids_per_batch']:,.0f} "
        f"distinct per batch); step = forward + sum + backward (sparse) + SGD; median of "
        f"{results['repeats']} passes over {results['n_batches']} batches, interleaved.",
        "",
        "| module | ms / step | vs nn.Embedding(Bag) |",
        "|---|---:|---:|",
    ]
    for k, v in e["seconds_per_step"].items():
        lines.append(f"| {k} | {ms(v)} | {v / e['seconds_per_step']['nn.Embedding']:.2f}x |")
    for k, v in bg["seconds_per_step"].items():
        lines.append(
            f"| {k} (sum, bags of {results['bag_size']}) | {ms(v)} | "
            f"{v / bg['seconds_per_step']['nn.EmbeddingBag']:.2f}x |"
        )
    lines += [
        "",
        f"CuckooEmbedding's first pass (every ID's first sighting: insert + per-ID init): "
        f"{ms(e['cuckoo_first_pass_seconds_per_step'])} ms / step.",
        f"Remap alone per batch: CuckooTable.lookup {ms(rm['seconds_per_batch']['CuckooTable.lookup'])} ms, "
        f"module remap with bookkeeping {ms(rm['seconds_per_batch']['module remap'])} ms.",
        f"Growth {g['from_rows']:,} -> {g['to_rows']:,} rows ({g['optimizer']} state kept, "
        f"{g['new_ids_in_batch']:,} new IDs in the batch): the growing step takes "
        f"{ms(g['seconds_growing_step'])} ms against {ms(g['seconds_same_step_presized'])} ms on a "
        f"pre-sized table (+{ms(g['growth_overhead_seconds'])} ms, median of 3).",
    ]
    return "\n".join(lines)
