"""PyTorch custom operators of embtab (namespace ``embtab``) and the traceable ID -> row maps
used by ``embtab.nn`` modules under ``torch.compile`` and ``torch.export``.

Core layer. Importing ``embtab.nn`` registers the operators (torch >= 2.4); a program
exported with ``torch.export`` that holds a hashed module needs ``import embtab.nn`` before
``torch.export.load`` (see docs/site/guide/modules.md, "Compile and export").

Operators
---------
``embtab::hashed_rows(Tensor ids, int num_rows, int seed, int num_threads) -> Tensor``
    Row ``mix64(id, seed) % num_rows`` of each int64 ID (same shape, int64), computed by the
    C++ core; ``seed`` is the int64 bit pattern of the module's unsigned seed. No gradient
    (IDs are integers).
"""

from __future__ import annotations

import torch
from torch import Tensor

from embtab import _core

_U64 = 1 << 64


def signed_seed(seed: int) -> int:
    """The int64 bit pattern of an unsigned 64-bit ``seed`` (custom-op ints are int64)."""
    return seed - _U64 if seed >= 1 << 63 else seed


def is_compiling() -> bool:
    """Whether torch.compile or torch.export is tracing the caller (False on torch < 2.3)."""
    f = getattr(torch.compiler, "is_compiling", None)
    return bool(f is not None and f())


def hashed_rows(ids: Tensor, num_rows: int, seed: int, num_threads: int) -> Tensor:
    """Rows ``mix64(id, seed) % num_rows`` of int64 ``ids`` (any shape; same shape, int64).

    Raises TypeError for a non-int64 ``ids`` and ValueError for ``num_rows < 1`` or
    ``num_threads < 0``.
    """
    if ids.dtype != torch.int64:
        raise TypeError(f"ids must have dtype int64, got {ids.dtype} with shape {tuple(ids.shape)}")
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    flat = ids.detach().reshape(-1).cpu().contiguous().numpy()
    rows = _core.hashed_rows(flat, num_rows, seed % _U64, num_threads)
    return torch.from_numpy(rows).reshape(ids.shape).to(ids.device)


def _hashed_rows_fake(ids: Tensor, num_rows: int, seed: int, num_threads: int) -> Tensor:
    if ids.dtype != torch.int64:
        raise TypeError(f"ids must have dtype int64, got {ids.dtype} with shape {tuple(ids.shape)}")
    return torch.empty_like(ids, memory_format=torch.contiguous_format)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4; before, a plain function (graph break)
    hashed_rows = torch.library.custom_op("embtab::hashed_rows", mutates_args=())(hashed_rows)
    hashed_rows.register_fake(_hashed_rows_fake)


def sorted_rows(ids: Tensor, keys: Tensor, rows: Tensor, zero_row: int) -> Tensor:
    """Rows of int64 ``ids`` in a frozen ID map: ``rows[i]`` where ``keys[i] == id``, else
    ``zero_row``. ``keys`` is sorted, distinct and non-empty; plain torch ops (searchsorted),
    so it compiles and exports without a custom operator."""
    keys = keys.to(ids.device)
    pos = torch.searchsorted(keys, ids).clamp(max=keys.numel() - 1)
    return torch.where(keys[pos] == ids, rows.to(ids.device)[pos], zero_row)


def snapshot(row_ids: Tensor, row_live: Tensor, zero_row: int) -> tuple[Tensor, Tensor]:
    """The frozen map ``(keys, rows)`` of a module's ``row_ids``/``row_live`` buffers, for
    :func:`sorted_rows`: live IDs sorted, with their rows. An empty map becomes one entry
    ``0 -> zero_row`` (the answer every unknown ID gets), so ``keys`` is never empty."""
    live = torch.nonzero(row_live).reshape(-1)
    keys = row_ids[live]
    if keys.numel() == 0:
        return torch.zeros(1, dtype=torch.int64), torch.full((1,), zero_row, dtype=torch.int64)
    keys, order = torch.sort(keys)
    return keys.contiguous(), live[order].contiguous()
