"""embtab: collisionless embedding tables, calibrated reranking and popularity-bias experiments.

The compiled core is the private module ``embtab._core``; use the names exported here and in
the submodules ``embtab.nn``, ``embtab.rerank``, ``embtab.metrics``, ``embtab.data``,
``embtab.train`` and ``embtab.experiments``.
"""

import os as _os

from embtab._core import __version__
from embtab._errors import TableFullError
from embtab.table import CuckooTable

from embtab import _core

__all__ = ["CuckooTable", "TableFullError", "__version__", "set_thread_pool", "thread_pool"]

_POOLS = ("openmp", "embtab")


def set_thread_pool(pool: str) -> str:
    """Choose what runs embtab's parallel loops; returns the previous setting.

    Every multi-threaded part of embtab (the remap, the fused optimizer step, a collection's
    pooling, the reranker, table builds) splits its work into the same chunks whatever runs
    them, so the results are the same bits with either setting.

    ``"openmp"`` (the default): when GNU OpenMP is loaded in the process (torch's CPU builds
    load it and run their parallel ops on it) and embtab's torch modules are imported
    (``embtab.nn``, ``embtab.optim``, ...; or this function is called with ``"openmp"``), a
    loop runs on the calling thread's OpenMP team, the threads torch's own ops run on. torch's workers keep spinning for a while after
    each op; with a second pool of threads beside them, the two compete for the cores (see the
    modules guide, "embtab's threads beside torch's"). embtab's own pool runs the loop instead
    when OpenMP is not loaded, in the child of a ``fork()`` made after OpenMP was found (GNU
    OpenMP is not fork-safe), inside an OpenMP parallel region, or when the loop would use
    more threads than the calling thread's OpenMP thread count (``torch.get_num_threads()``
    after ``torch.set_num_threads``; a ``DataLoader`` worker has 1). A process forked from one
    that ran torch's parallel ops before it imported embtab can hang on its first
    multi-threaded embtab call once it imports the torch modules, as torch's own parallel ops
    would there: give such a child ``torch.set_num_threads(1)`` or ``"embtab"``.

    ``"embtab"``: always embtab's own pool.

    The environment variable ``EMBTAB_THREAD_POOL`` (``openmp`` or ``embtab``) sets it when
    embtab is imported.

    >>> import embtab
    >>> previous = embtab.set_thread_pool("embtab")
    >>> embtab.thread_pool()
    'embtab'
    >>> _ = embtab.set_thread_pool(previous)
    """
    if not isinstance(pool, str):
        raise TypeError(f"pool must be a str ('openmp' or 'embtab'), got {type(pool).__name__}")
    if pool not in _POOLS:
        raise ValueError(f"pool must be 'openmp' or 'embtab', got {pool!r}")
    return _core.set_thread_pool(pool)


def thread_pool() -> str:
    """The setting of :func:`set_thread_pool`: ``"openmp"`` or ``"embtab"``."""
    return _core.thread_pool()


def _pool_from_environment() -> None:
    pool = _os.environ.get("EMBTAB_THREAD_POOL", "").strip().lower()
    if pool == "":
        return  # OpenMP is looked up when the torch modules are imported (embtab._modules)
    if pool not in _POOLS:
        raise ValueError(
            f"environment variable EMBTAB_THREAD_POOL must be 'openmp' or 'embtab', got {pool!r}"
        )
    set_thread_pool(pool)


_pool_from_environment()
