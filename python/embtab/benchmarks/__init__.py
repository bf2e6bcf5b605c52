"""embtab's performance comparisons, each against its references in the same run.

:data:`REGISTRY` maps a benchmark's name to a :class:`Benchmark`; ``embtab bench NAME`` runs one,
and the scripts in ``bench/`` wrap them. Each benchmark is a module here with ``run(quick=...)``
(raw results as a JSON-serialisable dict) and ``format_markdown(results)``; adding one is one
module and one registry entry. The shared machine description, timer and Zipf sampler are in
``embtab.benchmarks._harness``.

Example::

    from embtab.benchmarks import REGISTRY
    bench = REGISTRY["table"]
    results = bench(quick=True)          # runs embtab.benchmarks.table.run(quick=True)
    print(bench.format_markdown(results))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict

__all__ = ["Benchmark", "REGISTRY"]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: calling it runs the module's ``run``.

    The module is imported on first use, so that listing the registry imports neither torch
    nor ``torch.distributed``.

    Parameters
    ----------
    name : str
        The name ``embtab bench`` takes.
    module : str
        The module holding ``run`` and ``format_markdown``.
    summary : str
        One line for ``embtab bench --help``.
    """

    name: str
    module: str
    summary: str

    def load(self) -> ModuleType:
        """Import and return the benchmark's module."""
        return importlib.import_module(self.module)

    def __call__(self, quick: bool = False, **kwargs: Any) -> dict:
        """Run the benchmark; ``kwargs`` go to the module's ``run``. Returns its raw results."""
        return self.load().run(quick=quick, **kwargs)

    def format_markdown(self, results: dict) -> str:
        """The results as Markdown (the module's ``format_markdown``)."""
        return self.load().format_markdown(results)


#: Every benchmark by name: ``embtab bench NAME`` runs ``REGISTRY[NAME]``.
REGISTRY: Dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("table", "embtab.benchmarks.table",
                  "CuckooTable lookups and builds vs np.take, dict, np.unique + searchsorted"),
        Benchmark("module", "embtab.benchmarks.module",
                  "training steps of embtab.nn vs nn.Embedding(Bag); remap; growth"),
        Benchmark("rerank", "embtab.benchmarks.rerank",
                  "calibrated reranking vs NumPy and plain Python; top-k vs NumPy and torch"),
        Benchmark("distributed", "embtab.benchmarks.distributed",
                  "ShardedCuckooEmbedding on 2 gloo ranks vs one process"),
        Benchmark("optim", "embtab.benchmarks.optim",
                  "fused sparse optimizers vs nn.EmbeddingBag + torch optimizers and FBGEMM TBE"),
        Benchmark("collection", "embtab.benchmarks.collection",
                  "26-table embedding-bag collection vs FBGEMM TBE and a dict of nn.EmbeddingBag"),
        Benchmark("newids", "embtab.benchmarks.newids",
                  "new-ID path: table build, a module's first sighting and growth, by part"),
        Benchmark("scaling", "embtab.benchmarks.scaling",
                  "per-call costs that must not grow with the table, catalogue or user count"),
    )
}
