"""Drop-in ``torch.nn`` embedding modules that take raw 64-bit IDs.

``CuckooEmbedding`` / ``CuckooEmbeddingBag`` give every raw ID its own row (no collisions, no
offline remapping pass) through an :class:`embtab.CuckooTable`, and grow, admit and evict IDs by
policy. ``HashedEmbedding`` / ``HashedEmbeddingBag`` are the hashing-trick baseline
(row = ``mix64(id, seed) % m``) with the same signatures, so an experiment swaps one class for
the other at equal memory. ``QREmbedding(Bag)`` (the quotient-remainder trick) and
``DoubleHashedEmbedding(Bag)`` (the sum of two hashed rows) are compressed baselines from the
literature with the same signatures; every module reports its bytes with ``memory_bytes()``.

Conventions shared by the modules
---------------------------------
* ``weight`` has shape ``[num_embeddings + 1, embedding_dim]`` (the quotient-remainder modules:
  each of their two tables, ``quotient.weight`` and ``remainder.weight``). The last row,
  ``weight[num_embeddings]``, is the *zero row*: ``padding_id``, not-yet-admitted IDs and (in
  ``eval()`` mode) unknown IDs read it; it is passed to torch as ``padding_idx``, so it stays
  zero and gets no gradient, and in bags it is left out of the reduction (as
  ``nn.EmbeddingBag(padding_idx=...)`` does).
* A new ID's initial vector is a function of ``(seed, ID)`` only (see :class:`EmbeddingInit`),
  not of batch order or of the row it lands in.
* The ID -> row remap runs on CPU in C++ with the GIL released, on NumPy views of the ID
  tensor; ``weight`` may live on another device.
* In ``eval()`` mode every module traces with no graph break (``torch.compile(...,
  fullgraph=True)``, ``torch.export``): the hashed, quotient-remainder and double-hashed
  modules through the custom operator ``embtab::hashed_rows`` (also in training mode without
  a fused optimizer), the cuckoo modules through a frozen snapshot of their ID map
  (sorted ID and row buffers, looked up with ``torch.searchsorted``) that ``.eval()`` brings up
  to date. In training mode the cuckoo modules' forward inserts IDs into the native table and
  breaks the graph. See docs/site/guide/modules.md, "Compile and export".
"""

from __future__ import annotations

import gc
import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, unique
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import embtab
from embtab import _core, _ops, _recency
from embtab._checks import check_int, check_real, check_seed, check_threads, raw_id
from embtab._checks import machine_memory as _machine_memory
from embtab._hashing import mix64
from embtab._modules import (
    ROW_STATE,
    row_state,
    U64 as _U64,
    as_id_array as _as_id_array,
    first_occurrence as _first_occurrence,
    grown_rows as _grown_rows,
    id_tensor as _id_tensor,
    check_bag_args as _check_bag_args,
    plain_int64 as _plain_int64,
    weight_of as _weight_of,
    check_bag_config as _check_bag_config,
)
from embtab.optim import (
    MAX_OPT_STEP,
    NONNEGATIVE_STATES,
    FusedOptimizer,
    fused_of,
    OpenLookups,
    step_or_queue,
    grad_rows,
)

__all__ = [
    "OnFull",
    "EmbeddingInit",
    "CuckooEmbedding",
    "CuckooEmbeddingBag",
    "HashedEmbedding",
    "HashedEmbeddingBag",
    "QREmbedding",
    "QREmbeddingBag",
    "DoubleHashedEmbedding",
    "DoubleHashedEmbeddingBag",
    "EmbeddingBagConfig",
    "KeyedJaggedIds",
    "CuckooEmbeddingBagCollection",
    "HashedEmbeddingBagCollection",
]

# Largest |z| of the polar-method normal draw: sqrt(-2 ln 2^-104) (ops.hpp's smallest s).
_MAX_ABS_Z = math.sqrt(-2.0 * math.log(2.0**-104))


# configuration ///////////////////////////////////////////////////////////////////////////////


@unique
class OnFull(str, Enum):
    """What a :class:`CuckooEmbedding` does when a batch brings more new IDs than free rows.

    GROW
        Enlarge ``weight`` (by ``growth_factor``) and keep every row and its optimizer state:
        training continues exactly as if the table had been large enough from the start.
    EVICT_LRU
        Free the rows of the least recently used IDs (ties: lowest row); the new IDs take them,
        freshly initialised from ``(seed, new ID)`` with reset optimizer state.
    EVICT_LFU
        As ``EVICT_LRU`` but the victims are the IDs looked up least often since they got
        their row (ties: lowest row).
    ERROR
        Raise :class:`embtab.TableFullError`; nothing changes.
    """

    GROW = "grow"
    EVICT_LRU = "evict_lru"
    EVICT_LFU = "evict_lfu"
    ERROR = "error"


@dataclass(frozen=True)
class EmbeddingInit:
    """Per-ID initial distribution of embedding rows.

    The vector of an ID is drawn by a counter-based generator keyed by ``mix64(id, seed)``
    (``embtab/ops.hpp``: Marsaglia's polar method on 53-bit uniforms for ``"normal"``), so it depends on
    ``(seed, id)`` only.

    Parameters
    ----------
    kind : {"normal", "uniform", "zeros"}
        ``"normal"``: N(a, b^2) (mean ``a``, std ``b``; the default N(0, 1) is
        ``nn.Embedding``'s); ``"uniform"``: U[a, b); ``"zeros"``: all zeros.
    a, b : float
        Distribution parameters, see ``kind``.

    Example::

        >>> EmbeddingInit("normal", 0.0, 0.01)
        EmbeddingInit(kind='normal', a=0.0, b=0.01)
    """

    kind: str = "normal"
    a: float = 0.0
    b: float = 1.0

    def __post_init__(self):
        if self.kind not in ("normal", "uniform", "zeros"):
            raise ValueError(f"init.kind must be 'normal', 'uniform' or 'zeros', got {self.kind!r}")
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"init.a and init.b must be finite, got a={self.a}, b={self.b}")
        if self.kind == "normal" and self.b < 0:
            raise ValueError(f"init.b (std) must be >= 0 for kind='normal', got {self.b}")
        if self.kind == "uniform" and not self.a <= self.b:
            raise ValueError(f"init needs a <= b for kind='uniform', got a={self.a}, b={self.b}")
        if not math.isfinite(self.max_abs()):
            raise ValueError(
                f"init a={self.a}, b={self.b} ({self.kind!r}) overflows float64: "
                + ("the width b - a" if self.kind == "uniform" else "|a| + 12.01 * b")
                + " must be finite"
            )

    def max_abs(self) -> float:
        """The largest magnitude a vector entry can take (normal: ``|a| + b * 12.01``, the
        largest ``|z|`` of the polar-method draw on 53-bit uniforms); ``inf`` when the computation overflows."""
        if self.kind == "zeros":
            return 0.0
        if self.kind == "uniform":
            return max(abs(self.a), abs(self.b)) if math.isfinite(self.b - self.a) else math.inf
        return abs(self.a) + self.b * _MAX_ABS_Z

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Raise ValueError when vectors drawn from this distribution overflow ``dtype``."""
        top = torch.finfo(dtype).max
        if self.max_abs() > top:
            raise ValueError(
                f"init a={self.a}, b={self.b} ({self.kind!r}) draws values up to "
                f"{self.max_abs():.4g}, beyond the largest finite {dtype} ({top:.4g})"
            )


def _check_init(init) -> EmbeddingInit:
    if init is None:
        return EmbeddingInit()
    if isinstance(init, str):
        return EmbeddingInit(init)
    if isinstance(init, EmbeddingInit):
        return init
    raise TypeError(
        f"init must be None, 'normal', 'uniform', 'zeros' or an EmbeddingInit, "
        f"got {type(init).__name__}"
    )


# The largest tensor a module allocates from its arguments, in bytes (beyond it the sizes are
# a mistake, not a machine too small: refused before anything is allocated).
_MAX_ALLOC_BYTES = 1 << 56

# Largest expire_after: steps are counted in int64.
_MAX_EXPIRE_AFTER = (1 << 63) - 1


def _check_alloc(names: str, shape: tuple, itemsize: int, host: bool = True) -> None:
    """Refuse, naming the arguments, a buffer of ``shape`` that can never be allocated: over
    2**56 bytes (``ValueError``: the sizes are a mistake), or over this machine's RAM + swap
    (``MemoryError``; torch's allocator would fail with a message naming no argument, or the
    zero-fill of an over-committed buffer would end the process). ``host=False``: the buffer
    is made on another device (a GPU, meta), whose memory is not the host's: only the first
    check."""
    total = itemsize
    for n in shape:
        total *= int(n)
    if total > _MAX_ALLOC_BYTES:
        raise ValueError(
            f"{names} ask for a buffer of shape {tuple(int(n) for n in shape)} "
            f"({total:.3g} bytes, more than 2**56)"
        )
    have = _machine_memory() if host else None
    if have is not None and total > have:
        raise MemoryError(
            f"{names} ask for a buffer of shape {tuple(int(n) for n in shape)} "
            f"({total:.3g} bytes), more than this machine's RAM + swap ({have:.3g} bytes)"
        )


def _init_common(
    m: nn.Module, num_embeddings, embedding_dim, padding_id, max_norm, norm_type,
    scale_grad_by_freq, sparse, init, seed, num_threads, dtype, alloc: bool = True,
    device=None,
) -> None:
    """Check and set the arguments every embtab.nn module shares (the nn.Embedding ones, init,
    seed, num_threads); with ``alloc``, refuse a ``[num_embeddings + 1, embedding_dim]``
    weight too large to allocate, naming the arguments."""
    m.num_embeddings = check_int(num_embeddings, "num_embeddings", min=1)
    m.embedding_dim = check_int(embedding_dim, "embedding_dim", min=1)
    m.padding_id = padding_id
    m._padding_i64 = None if padding_id is None else raw_id(padding_id, "padding_id")
    m.max_norm = None if max_norm is None else check_real(max_norm, "max_norm", min=0, min_open=True)
    m.norm_type = check_real(norm_type, "norm_type", finite=False)
    m.scale_grad_by_freq = bool(scale_grad_by_freq)
    m.sparse = bool(sparse)
    m.init = _check_init(init)
    m.seed = check_seed(seed)  # [0, 2**64), as CuckooTable's (a larger one wrapped silently)
    m.num_threads = check_threads(num_threads)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    if alloc:
        itemsize = torch.empty((), dtype=dtype).element_size()
        host = device is None or torch.device(device).type == "cpu"
        _check_alloc("num_embeddings, embedding_dim", (m.num_embeddings + 1, m.embedding_dim),
                     itemsize, host)


def _hashed_weight(
    m: int, d: int, seed: int, init: EmbeddingInit, _weight: Optional[Tensor], device, dtype,
    freeze: bool,
) -> nn.Parameter:
    """The weight of a hashed table of ``m`` rows: ``[m + 1, d]``, the last row zero; row ``r``
    starts as ``_weight[r]`` or else as the init vector of "ID" ``r`` under ``seed`` (a function
    of ``(seed, r)``). ``_weight`` may be ``[m, d]`` or ``[m + 1, d]`` (its last row ignored)."""
    if _weight is not None:
        if tuple(_weight.shape) not in ((m, d), (m + 1, d)):
            raise ValueError(
                f"_weight must have shape ({m}, {d}) or ({m + 1}, {d}), got {tuple(_weight.shape)}"
            )
        w = torch.zeros(m + 1, d, dtype=_weight.dtype, device=_weight.device)
        w[:m] = _weight.detach()[:m]
    else:
        w = torch.zeros(m + 1, d, device=device, dtype=dtype)
        _fill_hashed(w, seed, init)
    return nn.Parameter(w, requires_grad=not freeze)


@torch.no_grad()
def _fill_hashed(w: Tensor, seed: int, init: EmbeddingInit) -> None:
    """Write a hashed table's initial values into its weight ``w`` (``[m + 1, d]``) in place:
    row ``r < m`` the init vector of "ID" ``r`` under ``seed``, the last row zero. A weight on
    the meta device holds no values: nothing is drawn for it."""
    m = w.shape[0] - 1
    init.check_dtype(w.dtype)
    w[m:].zero_()
    if w.device.type != "meta":
        w[:m] = init_vectors(np.arange(m, dtype=np.int64), w.shape[1], seed, init,
                             w.dtype).to(w.device)


def _memory_bytes(module: nn.Module, index: int) -> dict:
    """Bytes of ``module``'s tensors by role (see :meth:`CuckooEmbedding.memory_bytes`)."""
    def nbytes(t: Tensor) -> int:
        return t.numel() * t.element_size()

    weights = sum(nbytes(p) for p in module.parameters())
    params = {n for n, _ in module.named_parameters()}
    opt = 0
    index = int(index)
    for name, b in module.state_dict(keep_vars=True).items():  # persistent buffers only
        if name in params:
            continue
        if name.rsplit(".", 1)[-1].startswith("opt_"):
            opt += nbytes(b)
        else:
            index += nbytes(b)
    return {"weights": weights, "index": index, "optimizer": opt, "total": weights + index + opt}


class _AtomicLoad(nn.Module):
    """Base of embtab's modules: ``load_state_dict`` all or nothing (see its docstring)."""

    _unexpected_hint = ""  # appended to the unexpected-keys message: what may differ

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's ``load_state_dict``, all or nothing: every entry is checked before any is
        copied (ValueError naming the key; the module is then unchanged). With ``strict``
        (default), a key the module does not have is refused too, before anything is loaded;
        with ``strict=False`` such keys are ignored, as torch does, while each table's own
        entries must still all be present and valid (a partial table would mix two states)."""
        if strict:
            _refuse_unknown_keys(self, state_dict, "", set(self.state_dict(keep_vars=True)),
                                 self._unexpected_hint)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _caller_strict(strict: bool) -> bool:
    """The ``strict`` of the load_state_dict call in progress: torch passes ``strict=True`` down
    to every ``_load_from_state_dict`` whatever its caller said, so it is read from torch's
    ``Module.load_state_dict`` frame up the stack (there whether the call was made on an embtab
    module or on a parent); ``strict`` when there is none."""
    code = nn.Module.load_state_dict.__code__
    f = sys._getframe(1)
    while f is not None:
        if f.f_code is code:
            return bool(f.f_locals.get("strict", strict))
        f = f.f_back
    return strict


def _refuse_unknown_keys(module: nn.Module, sd: dict, prefix: str, known, hint: str = "") -> None:
    """ValueError naming the keys of ``sd`` under ``prefix`` that ``module`` does not have
    (``known``: the names below the prefix it has), before anything is loaded."""
    extra = sorted(k for k in sd if k.startswith(prefix) and k[len(prefix):] not in known)
    opt = [k for k in extra if k.rsplit(".", 1)[-1].startswith("opt_")]
    if opt:  # fused optimizer state the module does not keep
        hint = ((hint + " and") if len(opt) < len(extra) else "") + (
            " (fused optimizer state: the state dict was saved from a module built with an "
            "embtab.optim optimizer= this one lacks; build the module with the same optimizer= "
            "to load it, or pass strict=False to leave it out)")
    if extra:
        raise ValueError(f"{type(module).__name__}.load_state_dict: unexpected keys {extra}"
                         f"{hint}; nothing was loaded")


def _check_opt_values(bad: Callable, name: str, t: Tensor) -> None:
    """A fused optimizer's state entry ``opt_<name>`` (not ``opt_step``) in a state dict: finite,
    and not negative for the accumulators of squares (``sum``, ``row_sum``, ``exp_avg_sq``), whose
    square root the step takes. ``bad(key, what)`` raises."""
    if not t.dtype.is_floating_point:
        bad(name, f"must be floating point, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        bad(name, "holds NaN or infinite values")
    if name[len("opt_"):] in NONNEGATIVE_STATES and bool((t < 0).any()):
        bad(name, "holds negative values (an accumulator of squares)")


def _check_plain_state(module: nn.Module, sd: dict, prefix: str, strict: bool) -> None:
    """Check every entry of a fixed-shape module (hashed, quotient-remainder, double-hashed; its
    tables included) in state dict ``sd`` before torch copies any, so a load is all or nothing:
    each key present, a tensor of the module's shape, floating point where the module's is
    (another float dtype is cast, as torch does) and of the same dtype otherwise, every
    ``weight``'s last row zero, and (the caller's ``strict``) no unknown key under ``prefix``.
    ValueError naming the key.
    A state dict with none of the module's keys is left to torch (it reports them missing, or
    ignores them with ``strict=False``)."""
    own = module.state_dict(keep_vars=True)
    if not any(prefix + k in sd for k in own):
        return

    def bad(key: str, what: str):
        raise ValueError(f"{type(module).__name__}.load_state_dict: {prefix}{key} {what}")

    missing = [k for k in own if prefix + k not in sd]
    if missing and all(k.rsplit(".", 1)[-1].startswith("opt_") for k in missing):
        # Only fused optimizer state is missing: strict=False starts it fresh
        # (_fresh_opt_state), as a new module's.
        if _caller_strict(strict):
            raise ValueError(
                f"{type(module).__name__}.load_state_dict: the fused optimizer's state "
                f"{[prefix + k for k in missing]} is missing (the state dict was saved from a "
                f"module without optimizer=, or with another fused optimizer); nothing was "
                f"loaded. Pass strict=False to load the rest with fresh optimizer state "
                f"(opt_step 0, as a new module's), or load a state dict saved with this "
                f"module's optimizer"
            )
        own = {k: v for k, v in own.items() if k not in missing}
    for k, cur in own.items():
        if prefix + k not in sd:
            bad(k, "is missing (a partial state dict would mix two states); nothing was loaded")
        t = sd[prefix + k]
        if not isinstance(t, Tensor):
            bad(k, f"must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type == "meta":
            bad(k, "is on the meta device (it holds no values)")
        if t.layout != torch.strided or t.is_nested:
            bad(k, f"must be a dense (strided) tensor, got layout {t.layout}"
                   + (" (nested)" if t.is_nested else "") + "; convert it with .to_dense()")
        if tuple(t.shape) != tuple(cur.shape):
            bad(k, f"must have shape {tuple(cur.shape)}, got {tuple(t.shape)}")
        if cur.dtype.is_floating_point:
            if not t.dtype.is_floating_point:
                bad(k, f"must be floating point, got {t.dtype}")
        elif t.dtype != cur.dtype:
            bad(k, f"must have dtype {cur.dtype}, got {t.dtype}")
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "weight" and torch.count_nonzero(t[-1]) != 0:
            bad(k, f"row {t.shape[0] - 1} (the zero row read by padding) must be zero")
        if leaf == "opt_step" and not 0 <= int(t) < MAX_OPT_STEP:
            bad(k, f"must be in [0, 2**62), got {int(t)}")
        elif leaf.startswith("opt_") and leaf != "opt_step":
            _check_opt_values(lambda _, what: bad(k, what), leaf, t)
    if _caller_strict(strict):
        _refuse_unknown_keys(module, sd, prefix, own)


def _fresh_opt_state(module: nn.Module, sd: dict, prefix: str) -> None:
    """After ``module``'s own entries were loaded from ``sd`` without some of its fused
    optimizer's state (``strict=False``; checked before): that state made fresh, as a new
    module's (``opt_step`` 0, every row its fill value)."""
    opt = module.__dict__.get("optimizer")
    if opt is None or "weight" not in module._parameters or prefix + "weight" not in sd:
        return
    names = ["opt_" + n for n, _, _ in opt._states()]
    if all(prefix + n in sd for n in ["opt_step", *names]):
        return
    module._buffers["opt_step"].zero_()
    for name, _, fill in opt._states():
        module._buffers["opt_" + name].fill_(float(fill))


def _contiguous_weight(module: nn.Module, local_metadata: dict) -> None:
    """After a ``load_state_dict(assign=True)``, which keeps the given tensors: a
    non-contiguous ``weight`` (a transposed checkpoint's) is copied contiguous, as the native
    passes and the fused step read and write it as a C array."""
    w = module._parameters.get("weight")
    if local_metadata.get("assign_to_params_buffers", False) and w is not None \
            and not w.is_contiguous():
        module._parameters["weight"] = nn.Parameter(w.detach().contiguous(),
                                                    requires_grad=w.requires_grad)


def _lowest_rows(score: np.ndarray, eligible: np.ndarray, k: int, n_eligible: int) -> np.ndarray:
    """The ``k`` rows r with ``eligible[r]`` and the lowest ``(score[r], r)``, ascending.

    Exact, in passes over R bytes and int64 instead of a copy and a partition of all R
    scores: a threshold t drawn from a strided sample of the eligible scores (the exact k-th
    lowest when the sample would keep fewer than k rows, or when k is over a quarter of the
    eligible rows) splits the answer into every eligible row scored below t, and, by lowest
    row, those scored t; the rows scored t are read in chunks only until enough are found,
    so that a score shared by most rows (LFU's count of 1) costs no list of them.
    """
    R = len(score)
    t = None
    if 4 * k < n_eligible:
        stride = max(1, R // 8192)
        sample = score[::stride][eligible[::stride]]
        if sample.size >= 64:
            q = min(1.0, 2.0 * k / n_eligible + 16.0 / sample.size)
            t = np.quantile(sample, q, method="higher")
            if np.count_nonzero(eligible & (score <= t)) < k:
                t = None   # the sample misled: take the exact threshold
    if t is None:
        t = np.partition(score[eligible], k - 1)[k - 1]
    below = np.flatnonzero(eligible & (score < t))
    if len(below) >= k:   # a sampled t above the k-th score: the k lowest of those rows
        s = score[below]
        kth = np.partition(s, k - 1)[k - 1]
        low = below[s < kth]
        picked = [low, below[s == kth][: k - len(low)]]
    else:
        picked, need, chunk = [below], k - len(below), 1 << 16
        for a in range(0, R, chunk):
            at_t = np.flatnonzero(eligible[a:a + chunk] & (score[a:a + chunk] == t))[:need]
            picked.append(at_t + a)
            need -= len(at_t)
            if need == 0:
                break
    return np.sort(np.concatenate(picked)).astype(np.int64, copy=False)


def init_vectors(
    ids: np.ndarray,
    dim: int,
    seed: int,
    init: EmbeddingInit,
    dtype: torch.dtype = torch.float32,
    num_threads: int = 1,
    out: Optional[Tensor] = None,
) -> Tensor:
    """Initial vectors of raw IDs: a CPU tensor ``[len(ids), dim]`` of ``dtype``.

    Row ``i`` depends on ``(seed, ids[i])`` only, whatever ``num_threads`` (0 = all hardware
    threads). Raises ValueError when ``init`` draws values that ``dtype`` cannot hold.
    ``out``: a contiguous CPU float32/float64 tensor ``[len(ids), dim]`` of ``dtype`` to fill in
    place (and return) instead of a new one, e.g. a slice of rows of a weight.
    """
    init.check_dtype(dtype)
    n = len(ids)
    if out is not None:
        if (out.dtype != dtype or dtype not in (torch.float32, torch.float64)
                or tuple(out.shape) != (n, dim) or out.device.type != "cpu"
                or not out.is_contiguous()):
            raise ValueError(
                f"out must be a contiguous CPU float32/float64 tensor of shape ({n}, {dim}) and "
                f"dtype {dtype}, got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if init.kind == "zeros":
            return out.zero_()
    elif init.kind == "zeros":
        return torch.zeros(n, dim, dtype=dtype, device="cpu")
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if out is None:
        # on the CPU whatever device context is active (torch.device("meta") as a context)
        out = torch.empty(n, dim, dtype=work, device="cpu")
    if n:
        _core.init_vectors(
            np.ascontiguousarray(ids, dtype=np.int64) if ids.dtype != np.uint64 else ids,
            out.numpy(),
            seed % _U64,
            init.kind,
            float(init.a),
            float(init.b),
            num_threads=num_threads,
        )
    return out if work == dtype else out.to(dtype)


# optimizer state bookkeeping ////////////////////////////////////////////////////////////////
#
# A grown weight keeps its Parameter object (torch.utils.swap_tensors), so optimizers still
# hold it. Before every optimizer step, a global pre-hook lets each module with pending work
# bring that optimizer's per-row state (the keys of ``_modules.ROW_STATE`` for its class) to the
# new number of rows and give the rows handed to new IDs since the last step their fresh values.
# An optimizer whose class is not in ROW_STATE is refused when its state would have to change.
# L-BFGS runs the forward inside step() (its closure), after the pre-hook: a growing or evicting
# module is refused with it at the first step.

_PENDING: "weakref.WeakSet[_CuckooBase]" = weakref.WeakSet()
# Modules whose load_state_dict changed their number of rows: the next torch optimizer step
# over their weight checks that its per-row state was loaded to the new size too.
_LOADED_RESIZED: "weakref.WeakSet[_CuckooBase]" = weakref.WeakSet()
_MODULES: "weakref.WeakSet[_CuckooBase]" = weakref.WeakSet()


def _optimizer_step_pre_hook(optimizer, args, kwargs):
    if type(optimizer) is torch.optim.LBFGS:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for module in list(_MODULES):
            if module.on_full != OnFull.ERROR and id(module.weight) in held:
                raise ValueError(
                    f"LBFGS runs the forward inside step(), where a module with "
                    f"on_full={module.on_full.value!r} may grow or evict rows that LBFGS's "
                    f"flat state cannot follow; use on_full='error' with a large enough "
                    f"num_embeddings with LBFGS"
                )
    for module in list(_LOADED_RESIZED):
        module._check_loaded_state(optimizer)
    for module in list(_PENDING):
        module._sync_optimizer(optimizer)


register_optimizer_step_pre_hook(_optimizer_step_pre_hook)


def _attach_optimizer(module, optimizer) -> None:
    """Sets ``module.optimizer`` and registers its state buffers (see :mod:`embtab.optim`)."""
    if optimizer is not None and not isinstance(optimizer, FusedOptimizer):
        raise TypeError(
            f"optimizer must be None or an embtab.optim optimizer (SGD, Adagrad, RowWiseAdagrad, "
            f"Adam), got {type(optimizer).__name__}; torch optimizers go over model.parameters()"
        )
    module.optimizer = optimizer
    if optimizer is not None:
        optimizer.attach(module)


def _sparse_state_resized(v: Tensor, rows: int, fresh: Optional[Tensor]) -> Tensor:
    """Sparse per-row optimizer state ``v`` (torch's SGD keeps its momentum sparse for sparse
    gradients) with ``rows`` rows: the old ID rows kept (the old zero row dropped), the rows
    ``fresh`` (handed to new IDs) removed. A row absent from a sparse state is 0, the fresh
    value of every sparse state torch keeps."""
    idx, val = v._indices(), v._values()  # as stored: the kept entries keep their order
    keep = idx[0] < min(v.shape[0], rows) - 1
    if fresh is not None and fresh.numel():
        keep &= ~torch.isin(idx[0], fresh.to(idx.device))
    out = torch.sparse_coo_tensor(
        idx[:, keep], val[keep], (rows, *v.shape[1:]), check_invariants=True
    )
    return out.coalesce() if v.is_coalesced() else out


def _pad_rows(g: Tensor, shape: torch.Size) -> Tensor:
    """Gradient `g` of a smaller weight (its last row is the old zero row) as one of `shape`."""
    keep = min(g.shape[0], shape[0]) - 1
    if g.is_sparse:
        g = g.coalesce()
        idx, val = g.indices(), g.values()
        m = idx[0] < keep
        return torch.sparse_coo_tensor(idx[:, m], val[m], shape, check_invariants=True)
    out = torch.zeros(shape, dtype=g.dtype, device=g.device)
    out[:keep] = g[:keep]
    return out


# collisionless modules //////////////////////////////////////////////////////////////////////


class _CuckooBase(_AtomicLoad):
    """Shared machinery of CuckooEmbedding and CuckooEmbeddingBag (see their docstrings)."""

    _unexpected_hint = " (another on_full, min_count or expire_after?)"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_id: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        _freeze: bool = False,
        device: Union[None, str, torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        on_full: Union[str, OnFull] = "grow",
        growth_factor: float = 2.0,
        min_count: int = 1,
        admission_eps: float = 1e-5,
        admission_delta: float = 0.01,
        init: Union[None, str, EmbeddingInit] = None,
        seed: int = 0,
        num_threads: int = 0,
        optimizer: Optional[FusedOptimizer] = None,
        expire_after: Optional[int] = None,
    ) -> None:
        super().__init__()
        _init_common(
            self, num_embeddings, embedding_dim, padding_id, max_norm, norm_type,
            scale_grad_by_freq, sparse, init, seed, num_threads, dtype, device=device,
        )
        self.expire_after = (
            None if expire_after is None
            else check_int(expire_after, "expire_after", min=1, max=_MAX_EXPIRE_AFTER)
        )
        if _weight is not None:
            raise ValueError(
                "_weight is not supported: rows are handed to IDs as they are first seen; "
                "use init=... or CuckooEmbedding.from_pretrained(ids, embeddings)"
            )
        try:
            self.on_full = OnFull(on_full)
        except ValueError:
            raise ValueError(
                f"on_full must be one of {[p.value for p in OnFull]}, got {on_full!r}"
            ) from None
        self.growth_factor = check_real(growth_factor, "growth_factor", min=1.0, min_open=True)
        self.min_count = check_int(min_count, "min_count", min=1)
        check_real(admission_eps, "admission_eps", min=0, max=1, min_open=True, max_open=True)
        check_real(admission_delta, "admission_delta", min=0, max=1, min_open=True, max_open=True)
        self.admission_eps = float(admission_eps)
        self.admission_delta = float(admission_delta)

        R = self.num_embeddings
        self.weight = nn.Parameter(
            torch.zeros(R + 1, self.embedding_dim, device=device, dtype=dtype),
            requires_grad=not _freeze,
        )
        self.init.check_dtype(self.weight.dtype)
        # The ID -> row map: row r holds ID row_ids[r] (int64 bit pattern) iff row_live[r].
        # On the CPU (the remap reads them as NumPy views) whatever device context is active.
        self.register_buffer("row_ids", torch.zeros(R, dtype=torch.int64, device="cpu"))
        self.register_buffer("row_live", torch.zeros(R, dtype=torch.bool, device="cpu"))
        self.register_buffer("num_rows", torch.zeros((), dtype=torch.int64, device="cpu"))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64, device="cpu"))
        self.register_buffer("num_admissions", torch.zeros((), dtype=torch.int64, device="cpu"))
        self.register_buffer("num_evictions", torch.zeros((), dtype=torch.int64, device="cpu"))
        self.register_buffer("num_growths", torch.zeros((), dtype=torch.int64, device="cpu"))
        if self.on_full == OnFull.EVICT_LRU or self.expire_after is not None:
            # The step (num_steps) of each row's last lookup: LRU's recency, expiry's clock.
            self.register_buffer("row_last_step", torch.zeros(R, dtype=torch.int64, device="cpu"))
        if self.on_full == OnFull.EVICT_LFU:
            self.register_buffer("row_count", torch.zeros(R, dtype=torch.int64, device="cpu"))
        if self.expire_after is not None:
            self.register_buffer("num_expired", torch.zeros((), dtype=torch.int64, device="cpu"))
        if self.min_count > 1:
            width = math.ceil(math.e / self.admission_eps)
            depth = math.ceil(math.log(1.0 / self.admission_delta))
            _check_alloc("admission_eps, admission_delta", (depth, width), 8)
            self.register_buffer("admission_sketch",
                                 torch.zeros(depth, width, dtype=torch.int64, device="cpu"))
        self._pending_rows: list = []  # rows handed to new IDs since the last optimizer step
        self._pending_reused = False  # whether some of them were taken from evicted IDs
        self._pending_grown = False  # whether weight grew since the last optimizer step
        self._graph_rows: dict = {}  # rows read by graphs not yet backpropagated (eviction)
        self._freed = 0  # counts the frees of rows (eviction, expiry, loads): see _Unpin
        self._recency = _recency.RecencyIndex()  # row_last_step by step (large modules)
        self._last_eviction_step = -(1 << 62)  # num_steps at the last evicting forward
        self._table = self._new_table()
        self._refresh_snapshot()
        _attach_optimizer(self, optimizer)
        self._writer = threading.RLock()  # held by a training remap: one thread at a time
        self._owner_pid = os.getpid()  # the process whose table this is (see _check_insert)
        self._note_map()
        _MODULES.add(self)

    # table plumbing ---------------------------------------------------------------------------

    def _table_kwargs(self) -> dict:
        return dict(
            max_size=self.num_embeddings if self.on_full == OnFull.ERROR else None,
            seed=self.seed,
            num_threads=self.num_threads,
        )

    def _new_table(self):
        return embtab.CuckooTable(self.num_embeddings, **self._table_kwargs())

    def _apply(self, fn, recurse=True):
        # The ID map and counters stay on CPU (the remap reads them as NumPy views) whatever
        # .to()/.cuda()/.half() does to the weight.
        keep = {n: b for n, b in self._buffers.items() if b is not None}
        out = super()._apply(fn, recurse)
        self._buffers.update(keep)
        # The fused optimizer's per-row state (opt_<state>, on the CPU like the map) takes the
        # weight's dtype when that is one the fused step runs in (float32, float64): it must
        # be the weight's there. Another dtype (.half()) leaves it as it was, unrounded, for a
        # conversion back.
        if self.optimizer is not None and self.weight.dtype in (torch.float32, torch.float64):
            for n, b in list(self._buffers.items()):
                if n.startswith("opt_") and n != "opt_step" and b.dtype != self.weight.dtype:
                    self._buffers[n] = b.to(self.weight.dtype)
        return out

    # frozen map for torch.compile / torch.export (see _ops.sorted_rows) ----------------------
    #
    # Non-persistent buffers ``_snap_keys`` (live IDs, sorted) and ``_snap_rows`` (their rows)
    # mirror row_ids/row_live. Every change of the map calls _table_changed: in eval mode the
    # snapshot is rebuilt at once, in training mode it is marked stale and rebuilt by
    # ``train(False)``, so a traced eval-mode forward always reads a current map.

    def _refresh_snapshot(self) -> None:
        if torch.is_inference_mode_enabled() and not self.row_ids.is_inference():
            # the snapshot outlives the call: normal tensors, as the module's own (a module
            # built under inference_mode keeps inference tensors, which only it can change)
            with torch.inference_mode(False):
                return self._refresh_snapshot()
        if torch.get_default_device().type != "cpu":  # on the CPU, as the map it mirrors
            with torch.device("cpu"):
                return self._refresh_snapshot()
        keys, rows = _ops.snapshot(self.row_ids, self.row_live, self.num_embeddings)
        self.register_buffer("_snap_keys", keys, persistent=False)
        self.register_buffer("_snap_rows", rows, persistent=False)
        self._snap_dirty = False

    def _table_changed(self) -> None:
        self._snap_dirty = True
        if not self.training:
            self._refresh_snapshot()

    def train(self, mode: bool = True):
        out = super().train(mode)
        if not mode and self._snap_dirty:
            self._refresh_snapshot()
        return out

    # guards of the state the module keeps across calls ----------------------------------------

    def _note_map(self) -> None:
        """Remember the ID map buffers ``row_ids``/``row_live`` and their version counters
        (after every change the module makes to them through torch; its own NumPy writes leave
        the counters alone), so that a torch in-place write made to them from outside is
        noticed by :meth:`_remap_rows` (an O(1) check) and refused by :meth:`_check_map`."""
        ids, live = self._buffers.get("row_ids"), self._buffers.get("row_live")
        try:
            self._map_key = (ids, ids._version, live, live._version)
        except (AttributeError, RuntimeError):  # an inference tensor has no version counter
            self._map_key = None

    def _check_map(self) -> None:
        """RuntimeError if ``row_ids`` or ``row_live`` (the same tensors as noted) were changed
        in place by torch outside the module: they no longer match the native ID table."""
        ids, n_ids, live, n_live = self._map_key
        if ((ids is self._buffers.get("row_ids") and ids._version != n_ids)
                or (live is self._buffers.get("row_live") and live._version != n_live)):
            raise RuntimeError(
                f"{type(self).__name__}: row_ids/row_live were changed in place by a torch op "
                f"outside the module, so they no longer match the module's native ID table; "
                f"nothing was looked up. Such writes come from torch.optim.swa_utils."
                f"AveragedModel (it copies the model's buffers into its copy: EMA / "
                f"AveragedModel copies of a cuckoo module are not supported, keep an average "
                f"of the module's weight yourself) and from torch.nn.parallel."
                f"DistributedDataParallel (it broadcasts buffers from rank 0: a cuckoo module "
                f"cannot be replicated, as each rank's ID map would diverge; wrap only the "
                f"dense part in DDP and use embtab.distributed's sharded modules). Change the "
                f"ID map only through load_state_dict, which makes the module consistent again"
            )

    @torch.compiler.disable  # os.getpid: eager, as the insert around it is
    def _check_insert(self) -> None:
        """Before :meth:`_insert` changes anything: refuse (RuntimeError) an insert whose rows
        would not be the module's: ``weight`` substituted by another tensor
        (``torch.func.functional_call``), or a weight in shared memory written by a process
        that did not create or load this module's ID table (Hogwild-style workers each hold
        their own table, so different IDs would share rows)."""
        w = self.weight
        name = type(self).__name__
        if not isinstance(w, nn.Parameter):
            raise RuntimeError(
                f"{name}: a training forward would insert new IDs (writing their initial "
                f"vectors into weight, and growing it when full), but weight is not the "
                f"module's own nn.Parameter here (got {type(w).__name__}: torch.func."
                f"functional_call, torch.nn.utils.stateless or a parametrization substitutes "
                f"it), which would receive them; nothing changed. Call it in eval() mode, or "
                f"with IDs the module already holds (insert them first with a plain forward)"
            )
        if os.getpid() != self._owner_pid and w.device.type == "cpu" and w.is_shared():
            raise RuntimeError(
                f"{name}: inserting new IDs in process {os.getpid()}, which did not create or "
                f"load this module, while its weight is in shared memory (share_memory(), "
                f"torch.multiprocessing): each process holds its own ID table, so different "
                f"IDs would be given the same rows; nothing changed. Insert IDs in the process "
                f"that created the module (other processes may train IDs it already holds, or "
                f"read in eval() mode), or give each process its own module "
                f"(embtab.distributed shards one table over processes)"
            )

    def _traceable(self) -> bool:
        """Whether the forward has a traceable form: eval mode (training inserts IDs)."""
        return not self.training

    def _traced_rows(self, ids: Tensor) -> tuple[Tensor, Optional[int]]:
        """Rows of int64 ``ids`` in the frozen map (unknown IDs and padding_id: the zero row)
        and the padding_idx to pass torch; torch ops only (eval mode, under tracing)."""
        if self._snap_dirty:
            raise RuntimeError(
                f"{type(self).__name__}: the ID map changed while training=False was set "
                f"directly; call .eval() so the traced forward reads the current map"
            )
        R = self.num_embeddings
        return _ops.sorted_rows(ids, self._snap_keys, self._snap_rows, R), R

    # introspection ----------------------------------------------------------------------------

    @property
    def num_ids(self) -> int:
        """Number of live IDs (IDs that own a row)."""
        return len(self._table)

    def stats(self) -> dict[str, int]:
        """Counters a user needs: live IDs, rows, steps, admissions, evictions, growths and
        expirations (``num_expired``: 0 without ``expire_after``)."""
        expired = self._buffers.get("num_expired")
        return {
            "num_ids": self.num_ids,
            "num_embeddings": self.num_embeddings,
            "num_rows": int(self.num_rows),
            "num_steps": int(self.num_steps),
            "num_admissions": int(self.num_admissions),
            "num_evictions": int(self.num_evictions),
            "num_growths": int(self.num_growths),
            "num_expired": 0 if expired is None else int(expired),
        }

    def memory_bytes(self) -> dict:
        """Bytes the module holds now, by role (the budget a design is compared at).

        Returns a dict of ints: ``weights`` (the parameters: ``weight``, zero row included),
        ``index`` (what maps IDs to rows: the cuckoo table's buckets and free-row bits, its
        stats' ``memory_bytes``, plus every buffer that is not optimizer state: the ID map
        ``row_ids``/``row_live``, policy state ``row_last_step``/``row_count``, the
        admission sketch and the counters; 0 for the hashing modules, which have none; the
        eval-mode snapshot that ``torch.compile``/``torch.export`` read is scratch, rebuilt by
        ``eval()``, and not counted), ``optimizer`` (the fused optimizer's ``opt_*`` buffers; an outer
        ``torch.optim`` optimizer's state is not the module's and is not counted: Adam over
        ``weight`` adds two weights' worth) and ``total`` (their sum). Sizes are
        ``numel * element_size``.

        Example::

            >>> embtab.nn.HashedEmbedding(100, 16).memory_bytes()["weights"]    # 101 rows
            6464
        """
        return _memory_bytes(self, self._table.stats()["memory_bytes"])

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Put ``weight`` back to the module's initial values, as
        ``nn.Embedding.reset_parameters`` does, without changing the ID map: the row of each
        live ID its initial vector (a function of ``(seed, ID)``, as when the ID was inserted),
        every other row (free rows, the zero row read by ``padding_id``) 0. The counters and a
        fused optimizer's state are left as they are. Use it after ``to_empty()`` (a module
        built on the meta device), whose memory holds no values."""
        w = self.weight
        w.zero_()
        if w.device.type == "meta":
            return
        live = np.flatnonzero(self.row_live.numpy())
        if live.size:
            vecs = init_vectors(self.row_ids.numpy()[live], self.embedding_dim, self.seed,
                                self.init, w.dtype, self.num_threads)
            w.index_copy_(0, torch.from_numpy(live).to(w.device), vecs.to(w.device))

    def lookup(self, ids: Tensor) -> Tensor:
        """Rows of raw IDs (same shape, int64), ``-1`` for IDs without a row; changes nothing."""
        flat, shape = _as_id_array(ids, "ids")
        rows = self._table.lookup(flat, num_threads=self.num_threads)
        return torch.from_numpy(rows).reshape(shape)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, on_full={self.on_full.value!r}"
        if self.padding_id is not None:
            s += f", padding_id={self.padding_id}"
        if self.min_count > 1:
            s += f", min_count={self.min_count}"
        if self.expire_after is not None:
            s += f", expire_after={self.expire_after}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.sparse:
            s += ", sparse=True"
        return s

    # remap ------------------------------------------------------------------------------------

    def _remap(
        self, ids: np.ndarray, rows: Optional[np.ndarray] = None, absent: Optional[int] = None
    ) -> tuple[np.ndarray, bool]:
        """Rows for a flat int64 ID array; inserts, admits, evicts or grows in training mode.

        Returns the rows and whether any of them is the zero row (torch's ``padding_idx`` is
        passed only then: with no entry equal to it the results are the same and the sparse
        backward skips a masking pass). ``rows``: the table's lookup of ``ids`` if the caller
        did it just before (a collection's one native lookup of all its tables); it is
        completed in place; ``absent``: how many of them are -1, when that lookup counted them.
        Every argument check has happened before; on an exception nothing has changed.
        """
        # without gradient tracking (it writes the weight's new rows in place); set directly,
        # as torch.no_grad() does, without building its context object on every call
        grad = torch.is_grad_enabled()
        # _remap_rows's checks and lock, inlined here (the hot path: one call less)
        k = self._map_key
        if k is not None and (k[0]._version != k[1] or k[2]._version != k[3]):
            self._check_map()
        locked = self.training
        if locked:
            self._writer.acquire()   # another thread's training remap finishes first
        if grad:
            torch._C._set_grad_enabled(False)
        try:
            return self._map_rows(ids, rows, absent)
        finally:
            if grad:
                torch._C._set_grad_enabled(True)
            if locked:
                self._writer.release()

    def _counts_only(self) -> bool:
        """Whether :meth:`_remap_rows` of a batch whose IDs all have rows (no ``padding_id``)
        changes nothing but ``num_steps`` (training) and returns the lookup as it is: no
        recency or frequency state to update, no expiry."""
        return (self._padding_i64 is None and self.on_full != OnFull.EVICT_LFU
                and self.expire_after is None and "row_last_step" not in self._buffers)

    def _remap_rows(
        self, ids: np.ndarray, rows: Optional[np.ndarray], n_absent: Optional[int] = None
    ) -> tuple[np.ndarray, bool]:
        """_remap's work, with gradient tracking off. A training remap (it may insert, evict,
        expire and grow) holds the module's writer lock: a second thread's training remap
        waits for it (the two would otherwise corrupt the ID map); eval-mode remaps read only
        and take no lock."""
        k = self._map_key
        if k is not None and (k[0]._version != k[1] or k[2]._version != k[3]):
            self._check_map()
        if not self.training:
            return self._map_rows(ids, rows, n_absent)
        self._writer.acquire()   # another thread's training remap finishes first
        try:
            return self._map_rows(ids, rows, n_absent)
        finally:
            self._writer.release()

    def _map_rows(
        self, ids: np.ndarray, rows: Optional[np.ndarray], n_absent: Optional[int] = None
    ) -> tuple[np.ndarray, bool]:
        """:meth:`_remap_rows`'s work (checked, and locked in training)."""
        R = self.num_embeddings
        if rows is None:
            rows, n_absent = self._table.lookup(ids, self.num_threads, count_absent=True)
        pad = None if self._padding_i64 is None else ids == self._padding_i64
        # The lookup counts the IDs it did not find (else one reduction finds whether any row
        # has no ID); a steady batch (every ID known, no padding) then needs no other pass over
        # the batch.
        if pad is None and (n_absent == 0 if n_absent is not None
                            else rows.size == 0 or int(rows.min()) >= 0):
            neg = absent = None
            any_neg = False
        else:
            neg = rows < 0
            any_neg = bool(neg.any())
            absent = neg if pad is None else neg & ~pad
        if self.training:
            if any_neg and absent.any():
                cand = ids[absent]
                counted = None
                if self.min_count > 1:
                    sketch = self.admission_sketch.numpy()
                    _core.cms_add(cand, sketch, self.seed, 1)
                    counted = cand
                    est = _core.cms_query(cand, sketch, self.seed, self.num_threads)
                    ok = est >= self.min_count
                    admit_pos = np.flatnonzero(absent)[ok]
                    cand = cand[ok]
                else:
                    admit_pos = np.flatnonzero(absent)
                if cand.size:
                    try:
                        new_ids, inv = _first_occurrence(cand, self.num_threads)
                        new_rows = self._insert(new_ids, rows[rows >= 0])
                    except BaseException:
                        if counted is not None:
                            _core.cms_add(counted, self.admission_sketch.numpy(), self.seed, -1)
                        raise
                    rows[admit_pos] = new_rows[inv]
                R = self.num_embeddings
                neg = rows < 0
                any_neg = bool(neg.any())
            self._buffers["num_steps"].add_(1)  # in place (`+=` re-registers the buffer)
            lfu = self.on_full == OnFull.EVICT_LFU
            if lfu or "row_last_step" in self._buffers:
                used = rows[~neg] if any_neg else rows
                if "row_last_step" in self._buffers:
                    step = int(self.num_steps)
                    self.row_last_step.numpy()[used] = step
                    if R >= _recency.MIN_ROWS:
                        self._recency.push(self.row_last_step, self.row_live, step,
                                           used.copy() if used is rows else used)
                if lfu and used.size:
                    # each distinct row's count in the batch, by hashing (O(batch), not a
                    # bincount over all R rows)
                    distinct, inv = _first_occurrence(used, self.num_threads)
                    hits = np.bincount(inv, minlength=len(distinct))
                    keep = distinct < R
                    self.row_count.numpy()[distinct[keep]] += hits[keep]
            if self.expire_after is not None:
                self._expire()
        has_zero = any_neg or (pad is not None and bool(pad.any()))
        if has_zero:
            rows[neg if pad is None else neg | pad] = R
        return rows, has_zero

    def _insert(self, new_ids: np.ndarray, batch_rows: np.ndarray) -> np.ndarray:
        """Give each of the distinct, absent `new_ids` a row (by policy); return their rows."""
        self._check_insert()
        if torch.is_inference_mode_enabled() and not self.weight.is_inference():
            # what it allocates (a grown weight, buffers, state) outlives this call: normal
            # tensors, not inference tensors that a later training step could not change (a
            # module built under inference_mode has inference tensors: it stays as it is)
            with torch.inference_mode(False):
                return self._insert(new_ids, batch_rows)
        if self.optimizer is not None:
            # the state fill values (and the rest of param_groups[0]) checked before anything
            # changes: a growth and reset_rows read them after the table has changed, and a
            # forward that records no step (frozen weight, no_grad) has not checked them
            self.optimizer._group()
        k = len(new_ids)
        live = len(self._table)
        R = self.num_embeddings
        victims = None
        undo = {"grown": self._pending_grown, "reused": self._pending_reused}
        if self.on_full != OnFull.ERROR and live + k > R:
            if self.on_full == OnFull.GROW:
                new_R = R
                while live + k > new_R:
                    new_R = max(new_R + 1, math.ceil(new_R * self.growth_factor))
                self._grow(new_R)
                undo["grown_from"] = R
            else:
                victims = self._pick_victims(k, R - live, batch_rows)
        if victims is not None:
            undo["victims"] = (victims, self.row_ids.numpy()[victims].copy())
            self._table.erase(undo["victims"][1])
            self.row_live.numpy()[victims] = False
            self.num_evictions += len(victims)
            self._freed += 1
            self._pending_reused = True
        handed_out = self._table.num_rows
        try:
            rows = self._table.lookup_or_insert(new_ids, num_threads=self.num_threads)
        except BaseException:  # the table undid the batch; undo the room made for it
            self._undo_room(undo)
            raise
        if len(rows) and int(rows.min()) < handed_out:  # rows freed by eviction or expiry
            self._pending_reused = True
            self._clear_grad_rows(rows[rows < handed_out])
        self.row_ids.numpy()[rows] = new_ids
        self.row_live.numpy()[rows] = True
        self.num_rows.fill_(int(self._table.num_rows))
        self.num_admissions += k
        w = self.weight.data
        if (
            k
            and w.device.type == "cpu"
            and w.dtype in (torch.float32, torch.float64)
            and int(rows[-1]) - int(rows[0]) == k - 1
            and bool(np.all(np.diff(rows) == 1))
        ):
            # Consecutive rows (a table that hands out fresh rows): drawn in place, with no
            # temporary [k, dim] tensor to fault in and copy.
            r0 = int(rows[0])
            init_vectors(new_ids, self.embedding_dim, self.seed, self.init, w.dtype,
                         self.num_threads, out=w[r0 : r0 + k])
        else:
            vecs = init_vectors(
                new_ids, self.embedding_dim, self.seed, self.init, w.dtype, self.num_threads
            )
            dev = w.device
            w.index_copy_(0, torch.from_numpy(rows).to(dev), vecs.to(dev))
        if "row_last_step" in self._buffers:
            self.row_last_step.numpy()[rows] = 0
        if self.on_full == OnFull.EVICT_LFU:
            self.row_count.numpy()[rows] = 0
        if self.optimizer is not None:
            self.optimizer.reset_rows(self, rows)
        pending = self._pending_rows
        pending.append(rows)
        # Merged as a binary counter (an array of the list at most half its predecessor), so
        # the list holds O(log) arrays: summing their lengths each step costs that, not one
        # term per step since the last optimizer step.
        while len(pending) > 1 and 2 * len(pending[-1]) >= len(pending[-2]):
            pending[-2:] = [np.concatenate(pending[-2:])]
        if sum(len(r) for r in pending) > 2 * self.num_embeddings:
            # Only a torch optimizer's step clears the list (it resets those rows' state); a
            # module trained with a fused optimizer alone never takes one, so the list is kept
            # as its distinct rows: at most 2 * num_embeddings entries, however many IDs
            # arrive, and a sort of them only after num_embeddings more.
            self._pending_rows[:] = [_recency.distinct_sorted(np.concatenate(self._pending_rows))]
        _PENDING.add(self)
        self._table_changed()
        return rows

    def _clear_grad_rows(self, rows: np.ndarray) -> None:
        """Drop what ``weight.grad`` holds for ``rows``, handed to new IDs: the gradient their
        evicted or expired IDs accumulated (backward without a step yet, as in gradient
        accumulation) is not the new IDs' (dense: zeroed; sparse: its entries removed)."""
        g = self.weight.grad
        if g is None or len(rows) == 0:
            return
        idx = torch.from_numpy(rows).to(g.device)
        with torch.no_grad():
            if g.is_sparse:
                g = g.coalesce()
                keep = ~torch.isin(g.indices()[0], idx)
                self.weight.grad = torch.sparse_coo_tensor(
                    g.indices()[:, keep], g.values()[keep], g.shape, is_coalesced=True,
                    check_invariants=False,  # a subset of a valid tensor's entries
                )
            else:
                g.index_fill_(0, idx, 0)

    def _undo_room(self, undo: dict) -> None:
        """Undo what :meth:`_insert` did to make room before its insert failed: give the evicted
        IDs their rows back (the table rebuilt from its pairs: the failure path only), or
        shrink a growth back, so that the module is as it was."""
        if "victims" in undo:
            victims, ids = undo["victims"]
            keys, rows = self._table.items()
            self._table.assign(np.concatenate([keys.view(np.int64), ids]),
                               np.concatenate([rows, victims]), self._table.num_rows)
            self.row_live.numpy()[victims] = True
            self.num_evictions -= len(victims)
        if "grown_from" in undo:
            self._resize_rows(undo["grown_from"])
            self.num_growths -= 1
        self._pending_grown, self._pending_reused = undo["grown"], undo["reused"]

    def _pick_victims(self, new: int, free: int, batch_rows: np.ndarray) -> np.ndarray:
        """The ``new - free`` live rows with the lowest (score, row) that the current batch does
        not use, ascending; ValueError (nothing changed) when fewer can be evicted."""
        R = self.num_embeddings
        k = new - free
        pins = [p[p < R] for p in list(self._graph_rows.values())]
        step = int(self.num_steps)
        # LRU reads the recency index while evictions come often (it is kept current then);
        # a rare eviction scans (a rebuild would cost more), and an unqueried index drops itself
        frequent = step - self._last_eviction_step <= _recency.EVICTION_GAP
        self._last_eviction_step = step
        if (self.on_full == OnFull.EVICT_LRU and R >= _recency.MIN_ROWS
                and (frequent or self._recency.valid(self.row_last_step, self.row_live))):
            # the oldest steps' rows only (embtab/_recency.py), not a pass over all R rows
            victims, evictable = self._recency.lowest(
                self.row_last_step, self.row_live, k, [batch_rows, *pins]
            )
        else:
            score = (self.row_last_step if self.on_full == OnFull.EVICT_LRU else self.row_count).numpy()
            eligible = self.row_live.numpy().copy()   # R bytes, not a copy of R int64 scores
            eligible[batch_rows] = False
            for pinned in pins:
                eligible[pinned] = False
            evictable = int(np.count_nonzero(eligible))
            victims = None if evictable < k else _lowest_rows(score, eligible, k, evictable)
        if victims is None:
            raise ValueError(
                f"the batch brings {new} new IDs, {k} more than the {free} free rows, but only "
                f"{evictable} rows can be evicted (rows read by this batch, or by an earlier "
                f"forward not yet backpropagated, stay): raise num_embeddings (now {R}), use "
                f"smaller batches or run backward first"
            )
        return victims

    def _expire(self) -> None:
        """Free the rows of the live IDs last looked up ``expire_after`` or more steps ago
        (``num_steps - row_last_step >= expire_after``), except rows pinned by a graph not yet
        backpropagated (they expire at the first step after their release). The freed rows go
        back to the table's free list; a new ID that takes one gets a fresh vector and fresh
        optimizer state in :meth:`_insert`, exactly as after an eviction."""
        cutoff = int(self.num_steps) - self.expire_after
        if cutoff < 0:
            return
        R = self.num_embeddings
        pins = [p[p < R] for p in list(self._graph_rows.values())]
        if R >= _recency.MIN_ROWS:
            # the rows of the steps now due only (embtab/_recency.py), not a pass over all R
            rows = self._recency.due(self.row_last_step, self.row_live, cutoff, pins)
        else:
            stale = self.row_live.numpy() & (self.row_last_step.numpy() <= cutoff)
            for pinned in pins:
                stale[pinned] = False
            rows = np.flatnonzero(stale)
        if rows.size:
            self._table.erase(self.row_ids.numpy()[rows])
            self.row_live.numpy()[rows] = False
            self.num_expired += len(rows)
            self._freed += 1
            self._table_changed()

    def _resize_rows(self, new_R: int, keep_values: bool = True):
        """Resize weight (same Parameter object), its grad and per-row buffers to new_R rows."""
        if torch.is_inference_mode_enabled() and not self.weight.is_inference():
            with torch.inference_mode(False):   # they outlive the call: normal tensors
                return self._resize_rows(new_R, keep_values)
        R = self.num_embeddings
        keep = min(R, new_R)
        w = self.weight
        # Every new tensor is allocated before the module changes: a failed allocation (the
        # optimizer state is the largest part for Adam) leaves it as it was.
        new_w = _grown_rows(w.data, new_R + 1, keep if keep_values else 0)
        new_p = nn.Parameter(new_w, requires_grad=w.requires_grad)
        if w.grad is not None:
            new_p.grad = _pad_rows(w.grad, new_w.shape)
        new_buffers = {}
        for name in ("row_ids", "row_live", "row_last_step", "row_count"):
            b = self._buffers.get(name)
            if b is not None:
                nb = torch.zeros(new_R, dtype=b.dtype, device="cpu")
                nb[:keep] = b[:keep]
                new_buffers[name] = nb
        if self.optimizer is not None:
            new_buffers.update(self.optimizer.resized_state(self, new_R))
        # swap_tensors keeps the Python object (so optimizers still hold it) but gives it a fresh
        # autograd identity: `param.data = bigger` would keep a cached gradient accumulator that
        # still expects the old shape while an old graph (e.g. last step's loss) is alive.
        def swap() -> bool:
            """Swap; False if a weak reference pins the Parameter (nothing changed then)."""
            try:
                torch.utils.swap_tensors(w, new_p)
            except RuntimeError as e:
                if "use_count" in str(e):  # refused before changing anything
                    raise _GraphHoldsWeight(
                        f"{type(self).__name__}: cannot grow from {R} to {new_R} rows while a "
                        f"graph built before this forward still holds the weight for its "
                        f"backward (e.g. a lookup whose per_sample_weights require grad), or "
                        f"torch.nn.parallel.DistributedDataParallel holds it (a replicated "
                        f"cuckoo module cannot grow: each rank's ID map would diverge; wrap "
                        f"only the dense part in DDP and use embtab.distributed's sharded "
                        f"modules for the table); nothing changed. Run that backward (or drop "
                        f"the graph) first, or pre-size num_embeddings"
                    ) from e
                if "weakref" not in str(e):
                    raise
                return False
            return True

        swapped = swap()
        if not swapped:
            gc.collect()  # weak references (and old graphs) held by dead cycles go first
            swapped = swap()
        if swapped:
            # The user's hooks on the weight (register_hook, register_post_accumulate_grad_hook)
            # stay in the Parameter's dicts, but the fresh autograd identity no longer calls
            # them: registered again, the same dicts (so the user's handles still remove them).
            bh, ph = w._backward_hooks, w._post_accumulate_grad_hooks
            if bh is not None:
                w._backward_hooks = None
                w._backward_hooks = bh
            if ph is not None:
                w._post_accumulate_grad_hooks = None
                w._post_accumulate_grad_hooks = ph
        else:
            # A live weak reference pins the Parameter (torch.compile's guards hold some once a
            # compiled forward has recompiled), and swap_tensors refuses before changing
            # anything: keep the object and replace its data. The cost is the one above: while
            # a graph from before the growth is alive (the collection above freed those nothing
            # holds), its gradient accumulator keeps the old shape, and a backward through it,
            # or through a new graph sharing that accumulator, fails torch's shape check.
            grad = new_p.grad
            w.data = new_w
            w.grad = grad
        old = (self._buffers.get("row_last_step"), self.row_live)
        self._buffers.update(new_buffers)
        self.num_embeddings = new_R
        if old[0] is not None:
            self._recency.carry(*old, self.row_last_step, self.row_live)
        self._note_map()
        self._table_changed()

    def _grow(self, new_R: int):
        # The index first: if either allocation fails, the map and the weight are as they were
        # (the index keeps any room it made, and its IDs and rows).
        try:
            self._table.reserve(new_R)
            self._resize_rows(new_R)
        except _GraphHoldsWeight:
            raise
        except (MemoryError, RuntimeError, TypeError, OverflowError, ValueError) as e:
            raise MemoryError(
                f"{type(self).__name__}: growing from {self.num_embeddings} to "
                f"{new_R if new_R < 10**18 else format(float(new_R), '.3g')} rows "
                f"(growth_factor={self.growth_factor}) failed, nothing changed: {e}"
            ) from e
        self.num_growths += 1
        self._pending_grown = True
        _PENDING.add(self)

    def _sync_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Fit ``optimizer``'s per-row state of weight to its size; give the rows handed to new
        IDs since the last step their fresh values (``_modules.ROW_STATE``). Raises ValueError,
        changing nothing, for an optimizer whose per-row state embtab does not know when its
        state has to change (a growth or an eviction since its last step)."""
        p = self.weight
        holder = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
        if holder is None:
            return
        # A fused module's weight gets no .grad, so an outer optimizer over model.parameters()
        # holds no state for it: only its own state counts (another parameter's, e.g.
        # Adafactor's of a dense layer, is not this module's concern). Otherwise any state
        # counts (an optimizer of unknown layout may keep one flat state for all parameters).
        held = (bool(optimizer.state.get(p)) if self.optimizer is not None
                else any(optimizer.state.values()))
        if (self._pending_grown or self._pending_reused) and held:
            rules = row_state(optimizer, "growing or evicting rows of an embtab module")
        else:
            rules = ROW_STATE.get(type(optimizer), {})
        st = optimizer.state.get(p)
        if st:
            W = p.shape[0]
            rows = None
            if self._pending_rows:
                rows = torch.from_numpy(np.concatenate(self._pending_rows)).to(p.device)
            for key, fresh in rules.items():
                v = st.get(key)
                if not isinstance(v, Tensor) or v.dim() != p.dim() or v.shape[1:] != p.shape[1:]:
                    continue
                fill = fresh(holder)
                if v.is_sparse:  # SGD's momentum of sparse gradients (fresh value 0)
                    st[key] = _sparse_state_resized(v, W, rows)
                    continue
                if v.shape[0] != W:
                    nv = torch.full((W, *p.shape[1:]), fill, dtype=v.dtype, device=v.device)
                    keep = min(v.shape[0], W) - 1
                    nv[:keep] = v[:keep]
                    st[key] = v = nv
                if rows is not None and rows.numel():
                    v.index_fill_(0, rows.to(v.device), fill)
        self._pending_rows.clear()
        self._pending_reused = self._pending_grown = False
        _PENDING.discard(self)

    def _check_loaded_state(self, optimizer) -> None:
        """Before ``optimizer`` steps: refuse (ValueError) per-row state of this module's weight
        whose rows are not the weight's, as after a ``load_state_dict`` of another size without
        the optimizer's state dict saved with it (torch would fail inside the step with a size
        mismatch naming neither). The per-row state (``ROW_STATE``'s entries for the
        optimizer's class; others are not checked) must have the rows the load gave the weight
        (a growth since then resizes it as usual, after this check). Once an optimizer over the
        weight passes, nothing is checked."""
        w = self._parameters.get("weight")
        if w is None or not any(p is w for g in optimizer.param_groups for p in g["params"]):
            return
        rows = self.__dict__.get("_loaded_rows", w.shape[0])
        per_row = ROW_STATE.get(type(optimizer), {})  # others' state is not known per row
        for key, v in optimizer.state.get(w, {}).items():
            if key in per_row and torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] != rows:
                raise ValueError(
                    f"{type(self).__name__}.weight was loaded with {rows} rows (load_state_dict), "
                    f"but {type(optimizer).__name__}'s state {key!r} for it has {v.shape[0]}: "
                    f"load the optimizer's state dict saved with the module "
                    f"(optimizer.load_state_dict), or make a new optimizer"
                )
        _LOADED_RESIZED.discard(self)

    # state ------------------------------------------------------------------------------------

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        own = [n for n, _ in self.named_parameters(recurse=False)] + [
            n for n, b in self._buffers.items() if b is not None and n not in self._non_persistent_buffers_set
        ]
        present = [n for n in own if prefix + n in state_dict]
        if not present:  # nothing of this module here: torch reports the missing keys
            return super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                error_msgs,
            )
        # Validate everything and build the new table before changing anything.
        table = self._validated_table(state_dict, prefix, own, strict)
        # (passed with fused optimizer state missing: strict=False, that state starts fresh)
        fresh_opt = [n for n in own if n.startswith("opt_") and prefix + n not in state_dict]
        w = state_dict[prefix + "weight"]
        resized = w.shape[0] - 1 != self.num_embeddings
        if resized:
            self._resize_rows(int(w.shape[0]) - 1, keep_values=False)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if local_metadata.get("assign_to_params_buffers", False):
            # The remap writes the ID map in place: never into the caller's tensors.
            for n in list(self._buffers):
                b = self._buffers[n]
                if b is not None:
                    # optimizer state of another float dtype is cast, as copying would
                    dt = self.weight.dtype if n.startswith("opt_") and n != "opt_step" else b.dtype
                    self._buffers[n] = b.detach().cpu().to(dt).clone()
            _contiguous_weight(self, local_metadata)
        if fresh_opt:
            self._buffers["opt_step"].zero_()
            for name, _, fill in self.optimizer._states():
                self._buffers["opt_" + name].fill_(float(fill))
        if resized:
            self._loaded_rows = self.weight.shape[0]
            _LOADED_RESIZED.add(self)
        self._table = table
        self._owner_pid = os.getpid()  # the table is this process's now
        self._note_map()
        self._pending_rows.clear()
        self._pending_reused = self._pending_grown = False
        self._graph_rows.clear()
        self._freed += 1
        self._table_changed()

    def _validated_table(self, sd: dict, prefix: str, own: list, strict: bool = True):
        """The CuckooTable of state dict ``sd``, after checking every entry of this module
        (keys, types, dtypes, shapes, counters, the ID map against the weight); ValueError
        naming the key otherwise. Changes nothing."""
        def bad(key: str, what: str):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {prefix}{key} {what}")

        missing = [n for n in own if prefix + n not in sd]
        if missing and all(n.startswith("opt_") for n in missing):
            # Only fused optimizer state is missing (a state dict saved without optimizer=, or
            # with another fused optimizer): strict=False starts it fresh, as a new module's.
            if _caller_strict(strict):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: the fused optimizer's state "
                    f"{[prefix + n for n in missing]} is missing (the state dict was saved from "
                    f"a module without optimizer=, or with another fused optimizer); nothing "
                    f"was loaded. Pass strict=False to load the rest with fresh optimizer state "
                    f"(opt_step 0, as a new module's), or load a state dict saved with this "
                    f"module's optimizer"
                )
            own = [n for n in own if n not in missing]
        for n in own:
            if prefix + n not in sd:
                bad(n, "is missing (a partial state dict would leave the ID map and the weight "
                       "inconsistent)")
            if not isinstance(sd[prefix + n], Tensor):
                bad(n, f"must be a torch.Tensor, got {type(sd[prefix + n]).__name__}")
            if sd[prefix + n].device.type == "meta":
                bad(n, "is on the meta device (it holds no values)")
            if sd[prefix + n].layout != torch.strided or sd[prefix + n].is_nested:
                bad(n, f"must be a dense (strided) tensor, got layout {sd[prefix + n].layout}"
                       + (" (nested)" if sd[prefix + n].is_nested else "")
                       + "; convert it with .to_dense()")
        if _caller_strict(strict):  # keys of modules nested below this one are theirs
            _refuse_unknown_keys(self, {k: v for k, v in sd.items()
                                        if "." not in k[len(prefix):]}, prefix, own,
                                 self._unexpected_hint)
        w = sd[prefix + "weight"]
        d = self.embedding_dim
        if w.dim() != 2 or w.shape[1] != d or w.shape[0] < 2:
            bad("weight", f"must have shape (R + 1, {d}) with R >= 1, got {tuple(w.shape)}")
        if not w.dtype.is_floating_point:
            bad("weight", f"must be floating point, got {w.dtype}")
        R = int(w.shape[0]) - 1
        if torch.count_nonzero(w[R]) != 0:
            bad("weight", f"row {R} (the zero row read by padding and unknown IDs) must be zero")
        dtypes = {"row_ids": torch.int64, "row_live": torch.bool}
        for n in own:
            if n == "weight":
                continue
            t = sd[prefix + n]
            if n.startswith("opt_") and n != "opt_step":  # fused optimizer state: one row per weight row
                cur = self._buffers[n]
                if tuple(t.shape) != (R + 1, *cur.shape[1:]):
                    bad(n, f"must have shape {(R + 1, *cur.shape[1:])} to match weight "
                           f"{tuple(w.shape)}, got {tuple(t.shape)}")
                _check_opt_values(bad, n, t)  # another float dtype is cast, as weight is
                continue
            want = dtypes.get(n, torch.int64)
            if t.dtype != want:
                bad(n, f"must have dtype {want}, got {t.dtype}")
            if n in ("row_ids", "row_live", "row_last_step", "row_count"):
                if tuple(t.shape) != (R,):
                    bad(n, f"must have shape ({R},) to match weight {tuple(w.shape)}, "
                           f"got {tuple(t.shape)}")
            elif n == "admission_sketch":
                if t.shape != self.admission_sketch.shape:
                    bad(n, f"must have shape {tuple(self.admission_sketch.shape)} (admission_eps="
                           f"{self.admission_eps}, admission_delta={self.admission_delta}), got "
                           f"{tuple(t.shape)}")
            elif t.dim() != 0:
                bad(n, f"must be a 0-d tensor, got shape {tuple(t.shape)}")
            if n != "row_live" and n != "row_ids" and bool((t < 0).any()):
                bad(n, "must not be negative")
            if n == "opt_step" and int(t) >= MAX_OPT_STEP:
                bad(n, f"must be below 2**62 (a step count), got {int(t)}")
        num_rows = int(sd[prefix + "num_rows"])
        if num_rows > R:
            bad("num_rows", f"= {num_rows} exceeds the weight's {R} rows")
        live = torch.nonzero(sd[prefix + "row_live"].cpu()).reshape(-1).numpy().astype(np.int64)
        if "row_last_step" in own:
            steps = int(sd[prefix + "num_steps"])
            last = int(sd[prefix + "row_last_step"].max()) if R else 0
            if last > steps:
                bad("row_last_step", f"holds step {last}, beyond num_steps = {steps}")
        if "num_expired" in own:
            counts = {n: int(sd[prefix + n]) for n in ("num_admissions", "num_evictions", "num_expired")}
            if counts["num_admissions"] != counts["num_evictions"] + counts["num_expired"] + len(live):
                bad("num_expired", f"= {counts['num_expired']} disagrees with the other counters: "
                                   f"num_admissions ({counts['num_admissions']}) must equal "
                                   f"num_evictions ({counts['num_evictions']}) + num_expired + the "
                                   f"{len(live)} live rows")
        if len(live) and live[-1] >= num_rows:
            bad("row_live", f"marks row {int(live[-1])} live, beyond num_rows = {num_rows}")
        keys = sd[prefix + "row_ids"].cpu().numpy()[live]
        uniq, counts = np.unique(keys, return_counts=True)
        if len(uniq) != len(keys):
            dup = int(uniq[counts > 1][0])
            rows = live[keys == dup].tolist()
            bad("row_ids", f"gives ID {dup} several live rows {rows[:4]}")
        if self._padding_i64 is not None and np.any(keys == self._padding_i64):
            bad("row_ids", f"gives padding_id={self.padding_id} a row (it reads the zero row)")
        return embtab.CuckooTable.from_items(
            keys,
            live,
            num_rows=num_rows,
            capacity=R,
            **{**self._table_kwargs(), "max_size": R if self.on_full == OnFull.ERROR else None},
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_writer", None)  # a lock does not travel (a new one in __setstate__)
        state["_map_key"] = None  # noted again from the copy's own buffers
        state["_pending_rows"] = list(self._pending_rows)
        state["_graph_rows"] = {}  # graphs do not travel with the module
        state["_recency"] = _recency.RecencyIndex()  # rebuilt from the buffers when needed
        return state

    def __setstate__(self, state):
        state.setdefault("_pending_reused", False)
        state.setdefault("_pending_grown", False)
        state.setdefault("_graph_rows", {})
        state.setdefault("_freed", 0)
        state.setdefault("expire_after", None)
        state.setdefault("_recency", _recency.RecencyIndex())
        state.setdefault("_last_eviction_step", -(1 << 62))
        super().__setstate__(state)
        if "_snap_keys" not in self._buffers:
            self._refresh_snapshot()
        self._writer = threading.RLock()
        # A weight in shared memory here was shared with the process that pickled the module
        # (torch.multiprocessing): the table is still that process's. Otherwise (torch.load,
        # pickle, deepcopy) the copy is independent, and this process's own.
        w = self._parameters.get("weight")
        if not (state.get("_owner_pid") is not None and w is not None
                and w.device.type == "cpu" and w.is_shared()):
            self._owner_pid = os.getpid()
        self._note_map()
        _MODULES.add(self)
        if self._pending_rows or self.num_growths.item() > 0:
            _PENDING.add(self)

    @classmethod
    def from_pretrained(
        cls, ids: Tensor, embeddings: Tensor, freeze: bool = True, **kwargs
    ) -> "_CuckooBase":
        """A module whose IDs ``ids`` (distinct, ``[n]``) start with ``embeddings`` ``[n, d]``.

        Rows are handed out in the order of ``ids``; other keyword arguments as the
        constructor's. The given IDs own their rows at once, whatever ``min_count`` (admission
        applies to IDs seen later). ``padding_id`` must not be among ``ids``: it always reads
        the zero row, which no vector may be written into (ValueError). Example::

            >>> emb = CuckooEmbedding.from_pretrained(torch.tensor([7, 9]), torch.eye(2))
            >>> emb(torch.tensor([9])).tolist()
            [[0.0, 1.0]]
        """
        flat, _ = _as_id_array(ids, "ids")
        if not isinstance(embeddings, Tensor) or not embeddings.dtype.is_floating_point:
            raise TypeError(
                f"embeddings must be a floating-point torch.Tensor, got "
                f"{getattr(embeddings, 'dtype', type(embeddings).__name__)}"
            )
        if embeddings.dim() != 2 or embeddings.shape[0] != len(flat) or embeddings.shape[1] < 1:
            raise ValueError(
                f"embeddings must have shape ({len(flat)}, d >= 1) to match ids of shape "
                f"{tuple(ids.shape)}, got {tuple(embeddings.shape)}"
            )
        m = cls(
            max(1, len(flat)),
            embeddings.shape[1],
            _freeze=freeze,
            dtype=embeddings.dtype,
            **kwargs,
        )
        m._load_pretrained(flat, embeddings)
        return m

    @torch.no_grad()
    def _load_pretrained(self, flat: np.ndarray, embeddings: Tensor) -> None:
        """Insert the distinct IDs ``flat`` (bypassing admission) with ``embeddings``."""
        if len(np.unique(flat)) != len(flat):
            raise ValueError(f"ids must be distinct, got {len(flat) - len(np.unique(flat))} repeats")
        if self._padding_i64 is not None and np.any(flat == self._padding_i64):
            raise ValueError(
                f"ids contains padding_id={self.padding_id}: the padding ID always reads the zero "
                f"row, which from_pretrained never writes; leave it out of ids"
            )
        if len(flat):
            rows = self._insert(flat, np.empty(0, dtype=np.int64))
            self.weight[torch.from_numpy(rows).to(self.weight.device)] = embeddings.to(self.weight)
        self._pending_rows.clear()
        _PENDING.discard(self)

    # forward plumbing (see _Embedding, _Bag) --------------------------------------------------

    def _rows_for(
        self, ids: np.ndarray, rows: Optional[np.ndarray] = None, absent: Optional[int] = None
    ) -> tuple[np.ndarray, Optional[int]]:
        rows, has_zero = self._remap(ids, rows, absent)
        return rows, (self.num_embeddings if has_zero else None)

    def _track(self, out: Tensor, rows: np.ndarray) -> Tensor:
        """``out``, pinning the rows it read against eviction until a backward passes through
        it or its graph is freed (evicting or expiring tables, outputs that need a gradient,
        in eval() mode too: their backward writes the rows they read)."""
        frees = self.on_full in (OnFull.EVICT_LRU, OnFull.EVICT_LFU) or self.expire_after is not None
        if not (frees and out.requires_grad):
            return out
        pin = _Pin()
        key = id(pin)
        read = rows[(rows >= 0) & (rows < self.num_embeddings)]
        # its distinct rows, by hashing (O(batch); np.unique sorts)
        self._graph_rows[key] = _first_occurrence(read, self.num_threads)[0] if read.size else read
        weakref.finalize(pin, self._graph_rows.pop, key, None)
        # The node that produced `out` holds the pin: freed with the graph, or released by
        # the node's first backward.
        out.grad_fn.register_prehook(_Unpin(pin, self))
        return out


class _GraphHoldsWeight(RuntimeError):
    """A growth refused because a live autograd graph saved the weight (swap_tensors)."""


class _Pin:
    """One forward's claim on its rows; the claim ends when the pin object is freed."""

    __slots__ = ("__weakref__",)


class _Unpin:
    """Pre-hook of a forward's output node: at its first backward, the forward's rows are free.
    A later backward through the same node (``retain_graph=True``) is refused if the module
    has freed rows since (eviction, expiry, a load): those rows may belong to other IDs now,
    which the backward would train."""

    __slots__ = ("pin", "module", "freed")

    def __init__(self, pin: _Pin, module: nn.Module):
        self.pin, self.module, self.freed = pin, module, None

    def __call__(self, grad_outputs):
        if self.pin is not None:
            self.module._graph_rows.pop(id(self.pin), None)
            self.pin = None
            self.freed = self.module._freed
        elif self.module._freed != self.freed:
            raise RuntimeError(
                f"{type(self.module).__name__}: a second backward through a graph (retain_graph)"
                " after the module freed rows (eviction, expiry or a load) since its first "
                "backward: those rows may belong to other IDs now, and nothing of this backward "
                "is applied to them; backpropagate the graph's losses together, or again before "
                "the next forward"
            )
        return None


# the torch-facing forms (shared by the collisionless and the hashed modules) ///////////////////
#
# A base (_CuckooBase, _HashedBase) supplies ``_rows_for(flat int64 IDs) -> (rows, padding_idx
# or None)`` and ``_track(output, rows)``; these mixins give it the signature and forward of
# ``nn.Embedding`` or ``nn.EmbeddingBag``.


def _row_tensor(rows: np.ndarray, shape: tuple, device: torch.device) -> Tensor:
    """The flat rows ``rows`` as a tensor of the IDs' ``shape`` on ``device`` (a view of
    ``rows`` on the CPU)."""
    idx = torch.from_numpy(rows)
    if len(shape) != 1:
        idx = idx.reshape(shape)
    return idx if device.type == "cpu" else idx.to(device)


class _Embedding:
    def forward(self, input: Tensor) -> Tensor:
        """Vectors of raw IDs ``input`` (any shape): ``(*input.shape, embedding_dim)``."""
        if self._traceable() and _ops.is_compiling():
            idx, padding_idx = self._traced_rows(_id_tensor(input, "input"))
            return F.embedding(
                idx.to(self.weight.device), self.weight, padding_idx, self.max_norm,
                self.norm_type, self.scale_grad_by_freq, self.sparse,
            )
        ids, shape = _as_id_array(input, "input")
        needs = None
        if self.optimizer is not None:
            needs = fused_of(self).check_weight(self)  # before the remap changes anything
        rows, padding_idx = self._rows_for(ids)
        idx = _row_tensor(rows, shape, self.weight.device)
        if self.optimizer is not None:
            return self._track(
                self.optimizer.lookup(
                    self, idx, None, None, padding_idx, bag=False, rows=rows, needs=needs
                ),
                rows,
            )
        out = F.embedding(
            idx,
            self.weight,
            padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        return self._track(out, rows)


class _Bag:
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        include_last_offset: bool = False,
        padding_id: Optional[int] = None,
        device: Union[None, str, torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs,
    ) -> None:
        mode = _check_bag_config(mode, bool(sparse), bool(scale_grad_by_freq))
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_id,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            device=device,
            dtype=dtype,
            **kwargs,
        )
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """One reduced vector per bag: ``(B, embedding_dim)`` (see the class's Shape section).

        Every argument is checked before any ID is remapped, so a bad call changes nothing.
        Traced in eval mode (``torch.compile``/``torch.export``), the offsets' values are not
        checked (reading them would break the graph).
        """
        traced = self._traceable() and _ops.is_compiling()
        if traced:
            ids_t = _id_tensor(input, "input")
        else:
            ids, shape = _as_id_array(input, "input")
        off, csr = _check_bag_args(
            input, offsets, per_sample_weights, self.mode, self.include_last_offset, self.weight,
            check_values=not traced, want_csr=True,
        )
        dev = self.weight.device
        if traced:
            idx, padding_idx = self._traced_rows(ids_t)
            idx, rows = idx.to(dev), None
        else:
            needs = None
            if self.optimizer is not None:
                needs = fused_of(self).check_weight(self, per_sample_weights)  # before the remap
            rows, padding_idx = self._rows_for(ids)
            idx = _row_tensor(rows, shape, dev)
        if self.optimizer is not None and rows is not None:
            out = self.optimizer.lookup(
                self, idx, off, per_sample_weights, padding_idx, bag=True, rows=rows, needs=needs,
                csr=csr,
            )
            return self._track(out, rows)
        out = F.embedding_bag(
            idx,
            self.weight,
            None if off is None else off.to(dev),
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            per_sample_weights,
            self.include_last_offset,
            padding_idx,
        )
        return out if rows is None else self._track(out, rows)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"


class CuckooEmbedding(_Embedding, _CuckooBase):
    r"""Collisionless ``nn.Embedding`` over raw 64-bit IDs.

    Swap ``nn.Embedding(n, d)`` fed with dense indices for ``CuckooEmbedding(n, d)`` fed with
    raw IDs: every distinct ID gets its own row the first time it is seen in training mode.

    Parameters
    ----------
    num_embeddings : int
        Initial number of ID rows (``weight`` has one more: the zero row).
    embedding_dim : int
        Size of each vector ``d``.
    padding_id : int, optional
        A raw ID that always reads the zero vector and gets no gradient.
    max_norm, norm_type, scale_grad_by_freq, sparse, device, dtype
        As in ``nn.Embedding``.
    _weight : None
        Not supported (rows are assigned as IDs arrive); see :meth:`from_pretrained`.
    _freeze : bool
        ``weight.requires_grad = not _freeze``.
    on_full : {"grow", "evict_lru", "evict_lfu", "error"} or OnFull
        Capacity policy when a batch brings more new IDs than free rows (see :class:`OnFull`).
    growth_factor : float
        Row multiplier for ``on_full="grow"``.
    min_count : int
        Admission threshold: an ID gets a row from its ``min_count``-th sighting (counted by
        occurrence, all occurrences of a batch counted before the decision); before that it
        reads the zero vector and trains nothing. Sightings are counted in a count-min sketch
        of width ``ceil(e / admission_eps)`` and depth ``ceil(ln(1 / admission_delta))``
        (int64 counters, a ``[depth, width]`` buffer): a count is never under-estimated, and
        over-estimated by at most ``admission_eps * N`` (N = sightings of not-yet-admitted
        IDs so far) with probability ``>= 1 - admission_delta``; so an ID may be admitted
        early, never late. An evicted ID keeps its count and is re-admitted at once.
    admission_eps, admission_delta : float
        Sketch error parameters (defaults 1e-5 and 0.01: 271,829 x 5 counters, 10.9 MB).
    init : str or EmbeddingInit
        Distribution of a new ID's vector; default N(0, 1) like ``nn.Embedding``.
    seed : int
        Seeds per-ID initialisation, the sketch and the table's hashing.
    num_threads : int
        Threads for the remap (0 = all hardware threads, as CuckooTable; batches of up to
        16,384 IDs run on the calling thread).
    optimizer : embtab.optim.FusedOptimizer, optional
        A fused sparse optimizer (:mod:`embtab.optim`) applied in backward to the rows the
        batch touched, in place; ``weight`` then gets no ``.grad``, so an outer torch optimizer
        over ``model.parameters()`` leaves it alone. Its state lives in buffers ``opt_*``.
    expire_after : int, optional
        Time-based expiry (Monolith's feature expiry, arXiv 2209.07663): an ID not looked up
        for ``expire_after`` consecutive training steps gives its row back. A *step* is one
        training-mode forward call: the module's ``num_steps`` counter, which also dates
        LRU's recency (``eval()`` forwards are not steps, ``torch.no_grad()`` training
        forwards are). An ID looked up at step ``L`` (an occurrence that reads its row, not
        ``padding_id`` or a not-yet-admitted sighting) is expired at the end of step
        ``L + expire_after`` if not looked up again by then, so it is live during steps
        ``L .. L + expire_after`` and a lookup at step ``L + expire_after + 1`` or later starts
        a new lifetime: a fresh vector from ``(seed, ID)`` and fresh optimizer state, exactly
        as a row taken by eviction (see Notes). A row read by a graph not yet backpropagated
        expires at the end of the first step after its release. IDs given by
        :meth:`from_pretrained` count as looked up at step 0. Expiry composes with every
        ``on_full`` (the rows freed by expiry are taken before the table grows or evicts)
        and with ``min_count`` (an expired ID keeps its sketch count and is re-admitted at its
        next sighting). Counted in ``stats()["num_expired"]``; the last-seen steps are the
        buffer ``row_last_step`` (in ``state_dict``, shared with ``on_full="evict_lru"``).
        Must be an int in ``[1, 2**63 - 1]``; ``None`` (default) never expires. Not supported
        by :mod:`embtab.distributed`.

    Shape
    -----
    - input: int64 ``(*)`` raw IDs (uint64 is read bitwise, smaller integer dtypes are widened;
      floats are refused)
    - output: ``(*, embedding_dim)``

    Notes
    -----
    * In training mode the forward pass inserts new IDs; in ``eval()`` mode it changes nothing
      and unknown IDs read the zero vector.
    * The growth, eviction and expiry policies keep optimizer state consistent through a global
      ``torch.optim`` step pre-hook: before each step, an optimizer holding ``weight`` gets its
      per-row state tensors padded and the rows handed to new IDs since the last step given
      the state a never-used row of a pre-sized table has (0; Adagrad's ``sum``:
      ``initial_accumulator_value``; Rprop's ``step_size``: ``lr`` clamped to ``step_sizes``).
      This is known for SGD, Adagrad, Adam, AdamW, SparseAdam, Adamax, Adadelta, NAdam, RAdam,
      RMSprop, Rprop and ASGD (tested for each, through growth and both evictions, bit for bit
      against an ``nn.Embedding`` with one row per ID lifetime), weight decay included; scalar
      state (``step``) is shared by all rows. Adafactor and Muon couple rows (whole-matrix
      norms and factors) and another optimizer class's state is unknown: the step after a
      growth or an eviction raises ValueError and changes nothing. L-BFGS runs the forward
      inside ``step``; with ``on_full`` other than ``"error"`` its first step raises ValueError.
    * An existing ``weight.grad`` is padded on growth (gradient accumulation over several steps
      works), and its rows are cleared when they are handed to new IDs (eviction, expiry): a
      new ID never receives its row's earlier owner's gradient. A forward that must grow while
      a graph from an earlier forward holds the weight for its backward (per_sample_weights
      that require grad) raises RuntimeError, changing nothing. A graph built *before* a growth
      cannot be backpropagated after it: torch
      raises ``RuntimeError`` ("AccumulateGrad node that was poisoned by swap_tensors"); no
      gradient is lost silently. Pre-size ``num_embeddings`` for several forwards per backward.
      Hooks registered on ``weight`` are carried over to the grown weight.
    * A training forward that would insert IDs while ``weight`` is substituted
      (``torch.func.functional_call``) raises RuntimeError (the new rows would go into the
      caller's tensor): use eval mode or IDs the module holds there. The training remaps of
      several threads take turns (a lock; eval-mode reads take none and run concurrently).
      Inserting IDs in a process that did not create or load the module while its weight is
      in shared memory raises RuntimeError (each process has its own ID table). In-place torch
      writes to ``row_ids``/``row_live`` from outside (``AveragedModel``, DDP's buffer
      broadcast) are refused at the next forward of the module (a collection's tables: at the
      next one that inserts or updates recency; its pass over known IDs reads the native
      table, which such writes do not reach).
    * Eviction and expiry never take a row read by the current batch or by an earlier output
      that needs a gradient and whose graph has not been backpropagated yet (the row stays
      pinned until the first backward through that output, or until its graph is freed); when
      too few rows remain, the forward raises ValueError and changes nothing. That holds for an
      ``eval()`` output made with gradient tracking on too (its backward would still write
      the rows it read): evaluate under ``torch.no_grad()``, or drop such outputs, so that they
      pin nothing. A graph backpropagated a second time (``retain_graph=True``) after the
      module freed rows (eviction, expiry, a load) is refused with RuntimeError: its rows may
      have new owners. (A module that only grows pins nothing and is not checked: a
      ``load_state_dict`` between a forward and its backward, as with torch's modules, sends
      the gradient to the rows loaded.)
    * ``state_dict()`` holds ``weight``, the map (``row_ids``, ``row_live``, ``num_rows``), the
      counters and the eviction/admission/expiry state; ``load_state_dict`` resizes ``weight`` to the
      saved size. It first checks every entry (keys, dtypes, shapes, counters, one live row per
      ID, ``padding_id`` without a row, a zero last row) and raises ValueError naming the key,
      changing nothing, if one is wrong. Save and load the optimizer's state dict beside it: after
      a load that changed the number of rows, a torch optimizer whose state for ``weight`` has
      other rows raises ValueError at its next ``step()``, before it changes anything.
      ``assign=True`` keeps the given tensors, except a non-contiguous weight, which is copied.

    Example::

        >>> import torch, embtab.nn
        >>> emb = embtab.nn.CuckooEmbedding(1000, 16)
        >>> ids = torch.tensor([[-2**63 + 5, 17], [17, 99]])     # raw IDs, any int64 bit pattern
        >>> emb(ids).shape
        torch.Size([2, 2, 16])
        >>> emb.num_ids
        3
    """

class CuckooEmbeddingBag(_Bag, _CuckooBase):
    r"""Collisionless ``nn.EmbeddingBag`` over raw 64-bit IDs.

    Parameters
    ----------
    num_embeddings, embedding_dim, padding_id, max_norm, norm_type, scale_grad_by_freq, sparse
        As in :class:`CuckooEmbedding` (``scale_grad_by_freq`` is not supported with ``mode="max"``,
        as in torch).
    mode : {"sum", "mean", "max"}
        Reduction over each bag.
    include_last_offset : bool
        ``offsets`` has one extra element equal to the number of IDs (CSR style).
    padding_id : int, optional
        A raw ID left out of every bag's reduction (also for ``"mean"``'s count, as
        ``nn.EmbeddingBag(padding_idx=...)`` does); not-yet-admitted IDs (``min_count``) and,
        in ``eval()`` mode, unknown IDs are left out the same way.
    on_full, growth_factor, min_count, admission_eps, admission_delta, init, seed, num_threads,
    optimizer, expire_after
        As in :class:`CuckooEmbedding` (a step is one training-mode forward, whatever the
        number of bags).

    Shape
    -----
    - input: int64 ``(B, N)`` fixed-length bags (``offsets`` None) or ``(n,)`` with ``offsets``
      int64 ``(B,)`` (``(B + 1,)`` with ``include_last_offset``), non-decreasing, from 0
    - per_sample_weights: same shape as input, weight's dtype, ``mode="sum"`` only
    - output: ``(B, embedding_dim)``

    Example::

        >>> bag = embtab.nn.CuckooEmbeddingBag(1000, 8, mode="mean")
        >>> ids = torch.tensor([11, 2**40, 11, 7])
        >>> bag(ids, offsets=torch.tensor([0, 3])).shape
        torch.Size([2, 8])
    """



# hashing-trick baseline /////////////////////////////////////////////////////////////////////


class _HashedState(_AtomicLoad):
    """Base of the modules whose rows are computed by hashing (hashed, quotient-remainder,
    double-hashed): no ID index, and a ``state_dict`` of plain tensors."""

    def memory_bytes(self) -> dict:
        """Bytes held by the module; see :meth:`CuckooEmbedding.memory_bytes` (``index`` is 0:
        rows are computed by hashing)."""
        return _memory_bytes(self, 0)

    def reset_parameters(self) -> None:
        """Put the weight back to the constructor's values, as ``nn.Embedding.reset_parameters``
        does: row ``r`` the init vector of ``(seed, r)``, the zero row (read by ``padding_id``)
        0. A fused optimizer's state is left as it is. Use it after ``to_empty()`` (a module
        built on the meta device), whose memory holds no values."""
        _fill_hashed(self.weight, self.seed, self.init)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        _check_plain_state(self, state_dict, prefix, strict)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        _contiguous_weight(self, local_metadata)
        _fresh_opt_state(self, state_dict, prefix)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_id is not None:
            s += f", padding_id={self.padding_id}"
        return s


def _hashed_init(
    self,
    num_embeddings: int,
    embedding_dim: int,
    padding_id: Optional[int] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    _weight: Optional[Tensor] = None,
    _freeze: bool = False,
    device: Union[None, str, torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    *,
    init: Union[None, str, EmbeddingInit] = None,
    seed: int = 0,
    num_threads: int = 0,
    optimizer: Optional[FusedOptimizer] = None,
) -> None:
    """``__init__`` of the hashed and double-hashed modules (one signature, torch's
    ``nn.Embedding`` arguments plus embtab's keywords): a weight ``[num_embeddings + 1,
    embedding_dim]`` whose last row is zero, and the optional fused optimizer."""
    _HashedState.__init__(self)
    _init_common(
        self, num_embeddings, embedding_dim, padding_id, max_norm, norm_type,
        scale_grad_by_freq, sparse, init, seed, num_threads, dtype,
    )
    self.weight = _hashed_weight(self.num_embeddings, self.embedding_dim, self.seed,
                                 self.init, _weight, device, dtype, _freeze)
    _attach_optimizer(self, optimizer)


class _HashedBase(_HashedState):
    __init__ = _hashed_init

    def lookup(self, ids: Tensor) -> Tensor:
        """Row of each raw ID (same shape, int64): ``mix64(id, seed) % num_embeddings``;
        ``padding_id`` maps to the zero row ``num_embeddings``. Changes nothing (the name and
        contract of :meth:`CuckooEmbedding.lookup`, where every ID has a row)."""
        flat, shape = _as_id_array(ids, "ids")
        return torch.from_numpy(self._rows_for(flat)[0]).reshape(shape)

    def rows_of(self, ids: Tensor) -> Tensor:
        """Deprecated alias of :meth:`lookup` (warns ``DeprecationWarning``)."""
        warnings.warn(
            f"{type(self).__name__}.rows_of is deprecated; use lookup (the same rows)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.lookup(ids)

    def _track(self, out: Tensor, rows: np.ndarray) -> Tensor:
        return out

    def _traceable(self) -> bool:
        """Whether the forward has a traceable form: always, except a fused optimizer's
        training forward (its update runs in an eager backward hook)."""
        return not self.training or self.optimizer is None

    def _traced_rows(self, ids: Tensor) -> tuple[Tensor, Optional[int]]:
        """Rows of int64 ``ids`` through the ``embtab::hashed_rows`` operator (padding_id: the
        zero row) and the padding_idx to pass torch; under tracing."""
        m = self.num_embeddings
        rows = _ops.hashed_rows(ids, m, _ops.signed_seed(self.seed), self.num_threads)
        if self._padding_i64 is None:
            return rows, None
        return torch.where(ids == self._padding_i64, m, rows), m

    def _rows_for(self, flat: np.ndarray) -> tuple[np.ndarray, Optional[int]]:
        """Rows and the padding_idx to pass torch (None when no entry reads the zero row)."""
        rows = _core.hashed_rows(flat, self.num_embeddings, self.seed, self.num_threads)
        pad_idx = None
        if self._padding_i64 is not None:
            pad = flat == self._padding_i64
            if pad.any():
                rows[pad] = self.num_embeddings
                pad_idx = self.num_embeddings
        return rows, pad_idx

    def collision_report(self, ids: Tensor) -> dict:
        """How much the hashing trick collides on a sample of raw IDs.

        Returns a dict: ``distinct_ids`` (n), ``rows_used``, ``colliding_id_share`` (share of
        distinct IDs that share their row with another distinct ID of the sample),
        ``colliding_lookup_share`` (share of the lookups, duplicates counted, that hit such a
        shared row) and ``expected_colliding_id_share`` = 1 - (1 - 1/m)^(n-1) for uniform
        hashing. ``padding_id`` is left out.
        """
        flat, _ = _as_id_array(ids, "ids")
        if self._padding_i64 is not None:
            flat = flat[flat != self._padding_i64]
        uniq, counts = np.unique(flat, return_counts=True)
        n, m = len(uniq), self.num_embeddings
        if n == 0:
            return {
                "distinct_ids": 0,
                "rows_used": 0,
                "colliding_id_share": 0.0,
                "colliding_lookup_share": 0.0,
                "expected_colliding_id_share": 0.0,
            }
        rows = _core.hashed_rows(uniq, m, self.seed, self.num_threads)
        per_row = np.bincount(rows, minlength=m)
        shared = per_row[rows] > 1
        return {
            "distinct_ids": int(n),
            "rows_used": int(np.count_nonzero(per_row)),
            "colliding_id_share": float(shared.mean()),
            "colliding_lookup_share": float(counts[shared].sum() / counts.sum()),
            "expected_colliding_id_share": float(1.0 - (1.0 - 1.0 / m) ** (n - 1)),
        }


class HashedEmbedding(_Embedding, _HashedBase):
    r"""Hashing-trick ``nn.Embedding`` over raw IDs: row = ``mix64(id, seed) % num_embeddings``.

    The baseline for :class:`CuckooEmbedding`, with the same signature and the same
    ``weight`` shape ``[num_embeddings + 1, embedding_dim]`` (the last row is the zero row
    read by ``padding_id``), so the two compare at equal memory. Distinct IDs may share a row;
    :meth:`collision_report` measures how many do. ``optimizer=`` takes a fused optimizer as
    :class:`CuckooEmbedding`'s does. Row ``r`` starts as the init vector of
    ``(seed, r)`` (default N(0, 1)).

    Shape
    -----
    - input: int64 ``(*)`` raw IDs; output ``(*, embedding_dim)``

    Example::

        >>> emb = embtab.nn.HashedEmbedding(1000, 16)
        >>> emb(torch.tensor([3, 2**62])).shape
        torch.Size([2, 16])
    """



class HashedEmbeddingBag(_Bag, _HashedBase):
    r"""Hashing-trick ``nn.EmbeddingBag`` over raw IDs (see :class:`HashedEmbedding`).

    Arguments and shapes as :class:`CuckooEmbeddingBag`.

    Example::

        >>> bag = embtab.nn.HashedEmbeddingBag(1000, 8, mode="sum")
        >>> bag(torch.tensor([[1, 2], [3, 4]])).shape
        torch.Size([2, 8])
    """


# compressed embeddings: quotient-remainder and double hashing ///////////////////////////////
#
# A composed module gives each raw ID rows in one or two tables (each a weight of ``rows + 1``
# rows whose last one is zero), gathers them with ``F.embedding`` (or a fused optimizer's
# lookup, which steps each table in backward) and combines them into one vector per ID. Bags
# reduce those per-occurrence vectors with ``F.embedding_bag`` over the ``[n + 1, d]`` matrix
# of the vectors (the last one zero, read by padding), so modes, offsets, per_sample_weights
# and padding behave exactly as in ``nn.EmbeddingBag``.

# Seed of the second hash of the double-hashed modules: mix64(seed, _DOUBLE_SALT).
_DOUBLE_SALT = 0x444F55424C45  # "DOUBLE"
# Largest num_embeddings of a quotient-remainder module: its virtual rows q * m < 2**63.
_MAX_VIRTUAL_ROWS = 1 << 62
_OPERATIONS = ("mult", "add", "concat")


class _Table(nn.Module):
    """One table of a composed module: ``weight`` ``[num_embeddings + 1, embedding_dim]`` (the
    last row zero), the ``nn.Embedding`` options it is gathered with (copied from its owner at
    construction) and, with a fused optimizer, that optimizer's state (``opt_*`` buffers)."""

    def __init__(self, owner: nn.Module, rows: int, dim: int, seed: int, _freeze: bool,
                 device, dtype, optimizer: Optional[FusedOptimizer]) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = rows, dim
        for name in ("max_norm", "norm_type", "scale_grad_by_freq", "sparse", "num_threads"):
            setattr(self, name, getattr(owner, name))
        self.weight = _hashed_weight(rows, dim, seed, owner.init, None, device, dtype, _freeze)
        _attach_optimizer(self, optimizer)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # (checked with its owner's entries by _check_plain_state, before any is loaded)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        _contiguous_weight(self, local_metadata)
        _fresh_opt_state(self, state_dict, prefix)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def _gather(table: nn.Module, idx: Tensor, fused: bool, padding: bool) -> Tensor:
    """Rows ``idx`` (any shape, int64) of ``table`` as ``(*idx.shape, dim)``. ``padding``: some
    entries may read the zero row (a padding_id), which is then torch's ``padding_idx`` (no
    gradient); without one no entry reads it, and no padding_idx is passed (torch cannot trace
    a sparse gradient with one). ``fused``: through the table's fused optimizer."""
    idx = idx.to(table.weight.device)
    pad = table.num_embeddings if padding else None
    if fused:
        return fused_of(table).lookup(table, idx, None, None, pad, bag=False)
    return F.embedding(idx, table.weight, pad, table.max_norm, table.norm_type,
                       table.scale_grad_by_freq, table.sparse)


class _ComposedBase(_HashedState):
    """Shared machinery of the quotient-remainder and double-hashed modules. A subclass sets
    up its tables and supplies ``_gathers(ids) -> [(table, rows)]`` (rows of int64 ``ids``,
    the padding ID at the table's zero row) and ``_combine(parts) -> vectors``."""

    def _tables(self) -> list:
        return [m for m in self.modules() if isinstance(m, _Table)] or [self]

    def _gathers(self, ids: Tensor) -> list:
        raise NotImplementedError

    def _combine(self, parts: list) -> Tensor:
        raise NotImplementedError

    def _pad(self, ids: Tensor, rows: Tensor, zero_row: int) -> Tensor:
        if self._padding_i64 is None:
            return rows
        return torch.where(ids == self._padding_i64, zero_row, rows)

    def _vectors(self, ids: Tensor) -> Tensor:
        """One vector per int64 ID: ``(*ids.shape, embedding_dim)``."""
        fused = self.optimizer is not None and (self.training or not _ops.is_compiling())
        pad = self._padding_i64 is not None
        return self._combine([_gather(t, rows, fused, pad) for t, rows in self._gathers(ids)])

    def lookup(self, ids: Tensor) -> Tensor:
        """The two rows of each raw ID: int64 ``(*ids.shape, 2)`` (see the class docstring for
        which tables); ``padding_id`` reads the zero rows. Changes nothing."""
        t = _id_tensor(ids, "ids")
        return torch.stack([r.reshape(t.shape) for r in self._rows(t)], -1)


def _composed_ids(input: object) -> Tensor:
    """``input`` as int64 IDs (traceable), refusing a meta tensor outside tracing as the
    cuckoo and hashed modules do (its IDs cannot be read)."""
    ids = _id_tensor(input, "input")
    if ids.device.type == "meta" and not _ops.is_compiling():
        raise ValueError(f"input is on the meta device (it holds no IDs), shape "
                         f"{tuple(ids.shape)}")
    return ids


class _ComposedEmbedding:
    def forward(self, input: Tensor) -> Tensor:
        """Vectors of raw IDs ``input`` (any shape): ``(*input.shape, embedding_dim)``."""
        return self._vectors(_composed_ids(input))


class _ComposedBag(_Bag):
    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """One reduced vector per bag: ``(B, embedding_dim)`` (see the class's Shape section).

        Every argument is checked before anything is computed. Traced (``torch.compile``,
        ``torch.export``), the offsets' values are not checked."""
        ids = _composed_ids(input)
        off = _check_bag_args(
            input, offsets, per_sample_weights, self.mode, self.include_last_offset,
            self._tables()[0].weight, check_values=not _ops.is_compiling(),
        )
        flat = ids.reshape(-1)
        vecs = self._vectors(flat)
        n = flat.shape[0]
        dev = vecs.device
        table = torch.cat([vecs, vecs.new_zeros(1, vecs.shape[1])])
        idx = torch.arange(n, dtype=torch.int64, device=dev)
        if self._padding_i64 is not None:
            idx = torch.where(flat.to(dev) == self._padding_i64, n, idx)
        return F.embedding_bag(
            idx.reshape(input.shape), table, None if off is None else off.to(dev), None, 2.0,
            False, self.mode, False, per_sample_weights, self.include_last_offset, n,
        )


class _QRBase(_ComposedBase):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_id: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        _freeze: bool = False,
        device: Union[None, str, torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        num_collisions: int,
        operation: str = "mult",
        init: Union[None, str, EmbeddingInit] = None,
        seed: int = 0,
        num_threads: int = 0,
        optimizer: Optional[FusedOptimizer] = None,
    ) -> None:
        super().__init__()
        _init_common(
            self, num_embeddings, embedding_dim, padding_id, max_norm, norm_type,
            scale_grad_by_freq, sparse, init, seed, num_threads, dtype, alloc=False,
        )
        n, d = self.num_embeddings, self.embedding_dim
        if n > _MAX_VIRTUAL_ROWS:
            raise ValueError(f"num_embeddings must be <= 2**62 (the virtual rows), got {n}")
        m = check_int(num_collisions, "num_collisions", min=1)
        if m > n:
            raise ValueError(
                f"num_collisions must be <= num_embeddings ({n}), got {m}: the remainder table "
                f"has num_collisions rows and the quotient table ceil(num_embeddings / "
                f"num_collisions)"
            )
        if not isinstance(operation, str) or operation not in _OPERATIONS:
            raise ValueError(f"operation must be 'mult', 'add' or 'concat', got {operation!r}")
        if operation == "concat" and d % 2:
            raise ValueError(
                f"operation='concat' needs an even embedding_dim (each table holds half), got {d}"
            )
        if _weight is not None:
            raise ValueError(
                "_weight is not supported by the quotient-remainder modules (two tables); "
                "load a state_dict instead"
            )
        self.num_collisions, self.operation = m, operation
        self.num_quotients = -(-n // m)
        dt = d // 2 if operation == "concat" else d
        itemsize = torch.empty((), dtype=dtype).element_size()
        _check_alloc("num_embeddings, num_collisions, embedding_dim",
                     (self.num_quotients + m + 2, dt), itemsize)
        self.quotient = _Table(self, self.num_quotients, dt, self.seed, _freeze, device, dtype,
                               optimizer)
        self.remainder = _Table(self, m, dt, (self.seed + 1) % _U64, _freeze, device, dtype,
                                optimizer)
        self.optimizer = optimizer

    def reset_parameters(self) -> None:
        """Put both tables back to the constructor's values (see
        :meth:`HashedEmbedding.reset_parameters`): ``quotient`` drawn under ``seed``,
        ``remainder`` under ``seed + 1``, each zero row 0."""
        _fill_hashed(self.quotient.weight, self.seed, self.init)
        _fill_hashed(self.remainder.weight, (self.seed + 1) % _U64, self.init)

    def _rows(self, ids: Tensor) -> list:
        m, q = self.num_collisions, self.num_quotients
        v = _ops.hashed_rows(ids, q * m, _ops.signed_seed(self.seed), self.num_threads)
        return [self._pad(ids, v // m, q), self._pad(ids, v % m, m)]

    def _gathers(self, ids: Tensor) -> list:
        rq, rr = self._rows(ids)
        return [(self.quotient, rq), (self.remainder, rr)]

    def _combine(self, parts: list) -> Tensor:
        a, b = parts
        if self.operation == "mult":
            return a * b
        if self.operation == "add":
            return a + b
        return torch.cat([a, b], -1)

    def extra_repr(self) -> str:
        s = (f"{self.num_embeddings}, {self.embedding_dim}, num_collisions={self.num_collisions}, "
             f"operation={self.operation!r}")
        if self.padding_id is not None:
            s += f", padding_id={self.padding_id}"
        return s


class QREmbedding(_ComposedEmbedding, _QRBase):
    r"""Quotient-remainder ``nn.Embedding`` over raw 64-bit IDs (Shi et al., KDD 2020).

    H.-J. M. Shi, D. Mudigere, M. Naumov, J. Yang, "Compositional Embeddings Using
    Complementary Partitions for Memory-Efficient Recommendation Systems", KDD 2020
    (arXiv 1909.02107). A table of ``num_embeddings`` (virtual) rows is replaced by a quotient
    table of ``q = ceil(num_embeddings / num_collisions)`` rows and a remainder table of
    ``m = num_collisions`` rows; each ID's vector combines one row of each.

    Rows: the ID's virtual row is ``v = mix64(id, seed) % (q * m)`` (the hashing trick's row in
    a table of ``q * m`` rows); its quotient row is ``v // m`` and its remainder row ``v % m``
    (equivalently ``(mix64(id, seed) // m) % q`` and ``mix64(id, seed) % m``). Two IDs share
    both rows exactly when they share the virtual row (the complementary partitions), so the
    module is as collision-free as a hashed table of ``q * m`` rows while it stores ``q + m``.

    Parameters
    ----------
    num_embeddings : int
        Virtual rows ``n`` (at most 2**62): the hashed table this module compresses.
    embedding_dim : int
        Size ``d`` of each vector.
    padding_id, max_norm, norm_type, scale_grad_by_freq, sparse, device, dtype
        As :class:`HashedEmbedding`; ``max_norm`` renormalises each table's gathered rows, and
        ``scale_grad_by_freq`` scales each table row's gradient by the inverse of its count in
        the batch (``F.embedding``'s rules, per table).
    _weight : None
        Not supported (two tables; load a ``state_dict``).
    _freeze : bool
        ``requires_grad = not _freeze`` for both tables.
    num_collisions : int
        ``m``, keyword-only and required: the remainder table's rows, in ``[1, num_embeddings]``
        (the paper's number of collisions per quotient row). ``m = sqrt(n)`` gives the
        smallest tables.
    operation : {"mult", "add", "concat"}
        How the two rows combine: elementwise product (the paper's default), sum, or
        concatenation (each table then holds ``d / 2`` columns; ``d`` must be even).
    init : str or EmbeddingInit
        Distribution of the tables' rows: quotient row ``i`` starts as the init vector of "ID"
        ``i`` under ``seed``, remainder row ``j`` as that of "ID" ``j`` under ``seed + 1``
        (default N(0, 1) for both, as ``nn.Embedding``; so an ID's ``"mult"`` vector starts
        with entries of variance 1 and its ``"add"`` vector with variance 2).
    seed : int
        Seeds the hash and the initialisation.
    num_threads : int
        Threads for hashing (0 = all hardware threads).
    optimizer : embtab.optim.FusedOptimizer, optional
        A fused optimizer applied in backward to each table's touched rows (one step per
        table per backward; each table keeps its state, ``quotient.opt_*`` and
        ``remainder.opt_*``); the tables then get no ``.grad``.

    Attributes
    ----------
    quotient, remainder : module
        The tables; their ``weight`` has shape ``[q + 1, d']`` and ``[m + 1, d']`` (``d' = d``,
        or ``d / 2`` for concat), the last row zero (read by ``padding_id``, no gradient).
    num_quotients : int
        ``q``.

    Shape
    -----
    - input: int64 ``(*)`` raw IDs (uint64 read bitwise, smaller integer dtypes widened,
      floats refused); output ``(*, embedding_dim)``

    Example::

        >>> qr = embtab.nn.QREmbedding(10**6, 16, num_collisions=1000)
        >>> qr(torch.tensor([3, 2**62])).shape
        torch.Size([2, 16])
        >>> qr.memory_bytes()["weights"]           # (1001 + 1001) rows * 16 * 4 bytes
        128128
    """


class QREmbeddingBag(_ComposedBag, _QRBase):
    r"""Quotient-remainder ``nn.EmbeddingBag`` over raw IDs (see :class:`QREmbedding`).

    Each ID's vector is combined from its two rows, then each bag reduces its IDs' vectors by
    ``mode`` exactly as ``nn.EmbeddingBag`` reduces rows (``per_sample_weights`` with
    ``"sum"``, ``padding_id`` left out of the reduction and of ``"mean"``'s count, empty bags
    zero). Arguments and shapes as :class:`HashedEmbeddingBag` plus ``num_collisions`` and
    ``operation``.

    Example::

        >>> bag = embtab.nn.QREmbeddingBag(10**6, 8, mode="sum", num_collisions=1000)
        >>> bag(torch.tensor([[1, 2], [3, 4]])).shape
        torch.Size([2, 8])
    """


class _DoubleHashedBase(_ComposedBase):
    __init__ = _hashed_init

    @property
    def seed2(self) -> int:
        """Seed of the second hash: ``mix64(seed, 0x444F55424C45)``."""
        return mix64(self.seed, _DOUBLE_SALT)

    def _rows(self, ids: Tensor) -> list:
        m = self.num_embeddings
        return [
            self._pad(ids, _ops.hashed_rows(ids, m, _ops.signed_seed(s), self.num_threads), m)
            for s in (self.seed, self.seed2)
        ]

    def _gathers(self, ids: Tensor) -> list:
        return [(self, torch.stack(self._rows(ids), -1))]  # one gather: one fused step

    def _combine(self, parts: list) -> Tensor:
        return parts[0].sum(-2)


class DoubleHashedEmbedding(_ComposedEmbedding, _DoubleHashedBase):
    r"""Double-hashing ``nn.Embedding`` over raw IDs: each ID's vector is the sum of two rows of
    one table, chosen by two independent hashes.

    Row ``r1 = mix64(id, seed) % m`` and row ``r2 = mix64(id, seed2) % m`` with
    ``seed2 = mix64(seed, 0x444F55424C45)`` (``m = num_embeddings``); the vector is
    ``weight[r1] + weight[r2]`` (when ``r1 == r2``, probability ``1/m``, that row counts
    twice). Two IDs get the same vector only if they share both rows (probability about
    ``2/m**2``), where a hashed table of ``m`` rows makes them share with probability ``1/m``
    (Zhang et al., "Model Size Reduction Using Frequency Based Double Hashing for Recommender
    Systems", RecSys 2020; Svenstrup et al., "Hash Embeddings", NeurIPS 2017).

    The signature and ``weight`` (``[m + 1, d]``, last row zero, row ``r`` starting as the init
    vector of ``(seed, r)``) are :class:`HashedEmbedding`'s, ``_weight`` included, so the two
    compare at equal memory; an ID's initial vector is the sum of two init vectors (variance 2
    for the default N(0, 1)). ``optimizer=`` takes a fused optimizer as
    :class:`HashedEmbedding`'s does (one step per backward over both rows of every ID).

    Shape
    -----
    - input: int64 ``(*)`` raw IDs; output ``(*, embedding_dim)``

    Example::

        >>> emb = embtab.nn.DoubleHashedEmbedding(1000, 16)
        >>> emb(torch.tensor([3, 2**62])).shape
        torch.Size([2, 16])
        >>> emb.lookup(torch.tensor([3])).shape    # the two rows of each ID
        torch.Size([1, 2])
    """


class DoubleHashedEmbeddingBag(_ComposedBag, _DoubleHashedBase):
    r"""Double-hashing ``nn.EmbeddingBag`` over raw IDs (see :class:`DoubleHashedEmbedding`).

    Each ID's vector is the sum of its two rows; bags reduce those vectors by ``mode`` as
    ``nn.EmbeddingBag`` reduces rows. Arguments and shapes as :class:`HashedEmbeddingBag`.

    Example::

        >>> bag = embtab.nn.DoubleHashedEmbeddingBag(1000, 8, mode="max")
        >>> bag(torch.tensor([7, 8, 9]), offsets=torch.tensor([0, 1])).shape
        torch.Size([2, 8])
    """


# batched tables //////////////////////////////////////////////////////////////////////////////
#
# A collection holds one bag module per table (``embedding_bags[name]``, a CuckooEmbeddingBag or
# HashedEmbeddingBag built with include_last_offset=True) and routes named features to them.
# The features that share a table are concatenated into one bag lookup, so each table remaps,
# pools and (with a fused optimizer) steps once per forward/backward, whatever the number of
# features reading it.

_RESERVED_TABLE_OPTIONS = (
    "num_embeddings", "embedding_dim", "mode", "include_last_offset", "optimizer", "num_threads",
    "device", "dtype", "_weight",
)


@dataclass(frozen=True)
class EmbeddingBagConfig:
    """One table of an embedding-bag collection and the features that read it.

    The fields and their meaning follow TorchRec's ``EmbeddingBagConfig`` (``num_embeddings``,
    ``embedding_dim``, ``name``, ``feature_names``, ``pooling``), so a TorchRec table list
    translates one for one; embtab's per-table module options go in ``options``.

    Parameters
    ----------
    num_embeddings : int
        Rows of the table (initial rows for a cuckoo table, which grows by ``on_full``).
    embedding_dim : int
        Vector size ``d`` of the table; every feature that reads it is pooled to ``d``.
    name : str
        Table name: the key in ``collection.embedding_bags`` and in the state dict
        (``embedding_bags.<name>.weight``). Non-empty, without ``"."``.
    feature_names : sequence of str
        The features that read this table (at least one; each feature reads exactly one table
        of a collection). Several features sharing one table share its rows: an ID seen under
        either feature has one vector.
    pooling : {"sum", "mean", "max"}
        Reduction over each bag (case-insensitive, so TorchRec's ``PoolingType.SUM.value``
        works); the table module's ``mode``.
    options : mapping, optional
        Further keyword arguments of the table's module: for :class:`CuckooEmbeddingBag`
        ``padding_id``, ``on_full``, ``growth_factor``, ``min_count``, ``init``, ``seed``,
        ``max_norm``, ``sparse``, ...; for :class:`HashedEmbeddingBag` ``padding_id``,
        ``init``, ``seed``, ``max_norm``, ``sparse``, ... The collection sets ``mode``,
        ``include_last_offset``, ``optimizer``, ``num_threads``, ``device`` and ``dtype``
        itself (ValueError if given here). The mapping is copied: changing it later changes
        nothing. Tables with the same ``seed`` start an ID with the same vector; give tables
        distinct seeds for independent starts.

    Example::

        >>> EmbeddingBagConfig(num_embeddings=1000, embedding_dim=16, name="t_user",
        ...                    feature_names=["user"], options={"seed": 1})
        EmbeddingBagConfig(num_embeddings=1000, embedding_dim=16, name='t_user', feature_names=('user',), pooling='sum', options={'seed': 1})
    """

    num_embeddings: int
    embedding_dim: int
    name: str
    feature_names: tuple
    pooling: str = "sum"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__
        check_int(self.num_embeddings, "num_embeddings", min=1)
        check_int(self.embedding_dim, "embedding_dim", min=1)
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(f"name must be a non-empty str without '.', got {self.name!r}")
        names = self.feature_names
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise TypeError(
                f"table {self.name!r}: feature_names must be a list or tuple of str, "
                f"got {type(names).__name__}"
            )
        names = tuple(names)
        if not names or not all(isinstance(f, str) and f for f in names):
            raise ValueError(
                f"table {self.name!r}: feature_names must hold at least one non-empty str, "
                f"got {names!r}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name!r}: feature_names repeats a name: {names!r}")
        set_(self, "feature_names", names)
        pooling = getattr(self.pooling, "value", self.pooling)
        if not isinstance(pooling, str) or pooling.lower() not in ("sum", "mean", "max"):
            raise ValueError(
                f"table {self.name!r}: pooling must be 'sum', 'mean' or 'max', got {self.pooling!r}"
            )
        set_(self, "pooling", pooling.lower())
        if not isinstance(self.options, Mapping):
            raise TypeError(
                f"table {self.name!r}: options must be a mapping, got {type(self.options).__name__}"
            )
        reserved = sorted(set(self.options) & set(_RESERVED_TABLE_OPTIONS))
        if reserved:
            raise ValueError(
                f"table {self.name!r}: options {reserved} are set by the collection (pooling= "
                f"gives the mode; optimizer, num_threads, device, dtype are collection arguments)"
            )
        set_(self, "options", dict(self.options))


class KeyedJaggedIds:
    """Raw IDs of several features in one jagged buffer (TorchRec's ``KeyedJaggedTensor`` layout).

    Parameters
    ----------
    keys : sequence of str
        Feature names, ``F`` of them.
    values : Tensor
        int64 ``(n,)`` raw IDs, feature-major: all bags of ``keys[0]``, then those of
        ``keys[1]``, ...
    lengths : Tensor
        int64 or int32 ``(F * B,)``: the length of each bag, in the order of ``values``
        (``B`` bags per feature); ``lengths.sum() == n``.
    weights : Tensor, optional
        ``(n,)`` per-ID weights (``per_sample_weights`` of the ``"sum"`` tables; those of
        features of ``"mean"``/``"max"`` tables must be 1), or None.

    The accessors ``keys()``, ``values()``, ``lengths()``, ``weights_or_none()`` are those of
    TorchRec's ``KeyedJaggedTensor``; a collection's forward takes either (duck-typed).

    Example::

        >>> kj = KeyedJaggedIds(["a", "b"], torch.tensor([5, 6, 7]), torch.tensor([2, 0, 1, 0]))
        >>> ids, off = kj.to_dict()[0]["a"]
        >>> ids.tolist(), off.tolist()
        ([5, 6], [0, 2, 2])
    """

    def __init__(self, keys, values: Tensor, lengths: Tensor, weights: Optional[Tensor] = None):
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise TypeError(f"keys must be a list or tuple of str, got {type(keys).__name__}")
        self._keys = [str(k) for k in keys]
        if len(set(self._keys)) != len(self._keys):
            raise ValueError(f"keys repeats a feature name: {self._keys}")
        self._values, self._lengths, self._weights = values, lengths, weights

    def keys(self) -> list:
        """The feature names."""
        return list(self._keys)

    def values(self) -> Tensor:
        """All IDs, feature-major."""
        return self._values

    def lengths(self) -> Tensor:
        """Bag lengths ``(F * B,)``."""
        return self._lengths

    def weights_or_none(self) -> Optional[Tensor]:
        """Per-ID weights or None."""
        return self._weights

    def to_dict(self) -> tuple[dict, Optional[dict]]:
        """``({feature: (ids, offsets)}, {feature: weights} or None)``: each feature's IDs and
        CSR offsets ``(B + 1,)`` (use ``include_last_offset=True`` collections, or drop the last
        offset). Raises TypeError/ValueError naming ``values``, ``lengths`` or ``weights``."""
        return _jagged_to_dict(self._keys, self._values, self._lengths, self._weights)


def _jagged_to_dict(keys, values, lengths, weights):
    F_ = len(keys)
    _id_tensor(values, "values")
    if values.dim() != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
    if not isinstance(lengths, Tensor) or lengths.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"lengths must be an int64 or int32 torch.Tensor, got "
            f"{getattr(lengths, 'dtype', type(lengths).__name__)}"
        )
    if lengths.dim() != 1 or F_ == 0 or lengths.numel() % F_:
        raise ValueError(
            f"lengths must be 1-D with a multiple of len(keys) = {F_} entries, got shape "
            f"{tuple(lengths.shape)}"
        )
    ln = lengths.detach().cpu().to(torch.int64)
    if bool((ln < 0).any()):
        raise ValueError("lengths must not be negative")
    if int(ln.sum()) != values.numel():
        raise ValueError(
            f"lengths sum to {int(ln.sum())}, but values has {values.numel()} IDs (shape "
            f"{tuple(values.shape)})"
        )
    if weights is not None:
        if not isinstance(weights, Tensor) or tuple(weights.shape) != tuple(values.shape):
            raise ValueError(
                f"weights must be a torch.Tensor of the shape of values {tuple(values.shape)}, got "
                f"{tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}"
            )
    B = ln.numel() // F_
    per_key = ln.reshape(F_, B)
    totals = per_key.sum(1).tolist()
    vals = torch.split(values, totals)
    wts = torch.split(weights, totals) if weights is not None else None
    feats = {}
    for i, k in enumerate(keys):
        off = torch.zeros(B + 1, dtype=torch.int64)
        torch.cumsum(per_key[i], 0, out=off[1:])
        feats[k] = (vals[i], off)
    return feats, (None if wts is None else dict(zip(keys, wts)))


def _own_state_names(m: nn.Module) -> list:
    """Names of ``m``'s own parameters and persistent buffers (its state dict entries)."""
    return [n for n, _ in m.named_parameters(recurse=False)] + [
        n for n, b in m._buffers.items() if b is not None and n not in m._non_persistent_buffers_set
    ]


class _BagCollection(_AtomicLoad):
    """Shared machinery of the collections (see :class:`CuckooEmbeddingBagCollection`)."""

    _unexpected_hint = " (other tables or options?)"

    _bag_class: type = nn.Module

    def __init__(
        self,
        tables,
        optimizer: Optional[FusedOptimizer] = None,
        *,
        include_last_offset: bool = False,
        num_threads: int = 0,
        device: Union[None, str, torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if isinstance(tables, EmbeddingBagConfig) or not isinstance(tables, (list, tuple)):
            raise TypeError(
                f"tables must be a list or tuple of EmbeddingBagConfig, got {type(tables).__name__}"
            )
        if not tables:
            raise ValueError("tables must hold at least one EmbeddingBagConfig")
        for i, c in enumerate(tables):
            if not isinstance(c, EmbeddingBagConfig):
                raise TypeError(f"tables[{i}] must be an EmbeddingBagConfig, got {type(c).__name__}")
        seen_t, owner = set(), {}
        for c in tables:
            if c.name in seen_t:
                raise ValueError(f"tables: two tables are named {c.name!r}")
            seen_t.add(c.name)
            for f in c.feature_names:
                if f in owner:
                    raise ValueError(
                        f"tables: feature {f!r} is read by tables {owner[f]!r} and {c.name!r}; "
                        f"a feature reads one table (share a table by listing several features "
                        f"in its feature_names)"
                    )
                owner[f] = c.name
        if optimizer is not None and not isinstance(optimizer, FusedOptimizer):
            raise TypeError(
                f"optimizer must be None or an embtab.optim optimizer, got "
                f"{type(optimizer).__name__}; torch optimizers go over model.parameters()"
            )
        self.include_last_offset = bool(include_last_offset)
        self.num_threads = check_threads(num_threads)
        self.optimizer = optimizer
        self.tables = tuple(tables)
        bags = nn.ModuleDict()
        for c in self.tables:
            try:
                bag = self._bag_class(
                    c.num_embeddings, c.embedding_dim, mode=c.pooling, include_last_offset=True,
                    optimizer=optimizer, num_threads=self.num_threads, device=device,
                    dtype=dtype, **c.options,
                )
            except (TypeError, ValueError) as e:
                raise type(e)(f"table {c.name!r}: {e}") from None
            try:
                bags[c.name] = bag
            except KeyError:
                raise ValueError(
                    f"table name {c.name!r} is taken by an nn.ModuleDict attribute; rename it"
                ) from None
        self.embedding_bags = bags
        #: Output order: tables in the order given, each table's features in its order.
        self.feature_names = [f for c in self.tables for f in c.feature_names]
        self._table_of = owner
        self._dim_of = {f: c.embedding_dim for c in self.tables for f in c.feature_names}

    @property
    def feature_dims(self) -> list:
        """Pooled width of each feature, in :attr:`feature_names` order (the column blocks of
        ``forward(..., concat=True)``)."""
        return [self._dim_of[f] for f in self.feature_names]

    def memory_bytes(self) -> dict:
        """Bytes held by the collection: the sum over its tables of
        :meth:`CuckooEmbedding.memory_bytes` (``weights``, ``index``, ``optimizer``, ``total``);
        ``module.embedding_bags[name].memory_bytes()`` gives one table's."""
        parts = [bag.memory_bytes() for bag in self.embedding_bags.values()]
        return {k: sum(p[k] for p in parts) for k in ("weights", "index", "optimizer", "total")}

    def extra_repr(self) -> str:
        return (
            f"features={len(self.feature_names)}, tables={len(self.tables)}"
            + (f", optimizer={self.optimizer!r}" if self.optimizer is not None else "")
        )

    # input ------------------------------------------------------------------------------------

    def _sum_table_weights(self, weights: dict) -> dict:
        """A jagged input's weights of the features of "sum" tables. The layout gives every
        feature weights; a "mean" or "max" table reads none, so its features' weights must all
        be 1 (ValueError naming the feature otherwise: a weight there would be ignored)."""
        out = {}
        for f, w in weights.items():
            if f in self._table_of:
                mode = self.embedding_bags[self._table_of[f]].mode
                if mode != "sum":
                    if w.numel() and not bool((w == 1).all()):
                        raise ValueError(
                            f"features[{f!r}]: its table pools by mode={mode!r}, which reads no "
                            f"per_sample_weights, so its jagged weights must all be 1 (only "
                            f"'sum' tables are weighted)"
                        )
                    continue
            out[f] = w
        return out

    def _inputs(self, features, per_sample_weights) -> tuple[dict, dict, int]:
        """Check every feature's input; return ({feature: (flat int64 IDs, CSR offsets)} as NumPy
        arrays, {feature: flat weights}, B). Nothing is remapped here."""
        if not isinstance(features, Mapping) and all(
            callable(getattr(features, a, None)) for a in ("keys", "values", "lengths")
        ):
            w = getattr(features, "weights_or_none", None)
            jagged_weights = callable(w) and w() is not None
            if per_sample_weights is not None:
                raise ValueError(
                    "per_sample_weights must be None with a jagged input (its weights carry them)"
                )
            features, per_sample_weights = _jagged_to_dict(
                list(features.keys()), features.values(), features.lengths(),
                w() if callable(w) else None,
            )
            if per_sample_weights is not None:
                per_sample_weights = self._sum_table_weights(per_sample_weights)
            last = True
        else:
            last = self.include_last_offset
            jagged_weights = False
        if not isinstance(features, Mapping):
            raise TypeError(
                f"features must be a dict {{feature: (ids, offsets) or 2-D ids}} or a "
                f"KeyedJaggedIds, got {type(features).__name__}"
            )
        unknown = [k for k in features if k not in self._table_of]
        if unknown:
            raise ValueError(
                f"features: unknown feature(s) {unknown} (this collection reads "
                f"{self.feature_names})"
            )
        missing = [f for f in self.feature_names if f not in features]
        if missing:
            raise ValueError(f"features: missing feature(s) {missing}")
        psw = {} if per_sample_weights is None else per_sample_weights
        if not isinstance(psw, Mapping):
            raise TypeError(
                f"per_sample_weights must be None or a dict {{feature: weights}}, got "
                f"{type(psw).__name__}"
            )
        unknown = [k for k in psw if k not in self._table_of]
        if unknown:
            raise ValueError(f"per_sample_weights: unknown feature(s) {unknown}")
        out, weights, B, B_from = {}, {}, None, None
        ebs, table_of = self.embedding_bags, self._table_of
        # the usual input (1-D int64 CPU IDs and offsets, contiguous, no weights) is read in
        # place and its offsets checked by the native pass alone, as _as_id_array and
        # _check_bag_args do for it, with their tracing and compiling tests made once here
        fast = not torch.jit.is_tracing() and not _ops.is_compiling()
        memo = {} if type(features) is dict else None  # see _plain_bag_input
        for f in self.feature_names:
            x = features[f]
            got = _plain_bag_input(x, last, memo) if fast and f not in psw else None
            if got is not None:
                flat, csr = got
                n_bags = len(csr) - 1
            else:  # any other input, checked (and a refusal worded) in full
                if isinstance(x, (tuple, list)) and len(x) != 2:
                    raise ValueError(
                        f"features[{f!r}] must be ids (2-D) or a pair (ids, offsets), got a "
                        f"{type(x).__name__} of {len(x)}"
                    )
                ids, offsets = (tuple(x) if isinstance(x, (tuple, list)) else (x, None))
                bag = ebs[table_of[f]]
                try:
                    flat, shape = _as_id_array(ids, "ids")
                    off, csr = _check_bag_args(
                        ids, offsets, psw.get(f), bag.mode, last, bag.weight, want_csr=True
                    )
                except (TypeError, ValueError) as e:
                    msg = str(e)
                    if jagged_weights and msg.startswith("per_sample_weights"):
                        # they came as the jagged input's weights: named as the user gave them
                        msg = "the jagged input's weights (its per_sample_weights)" + msg[18:]
                    raise type(e)(f"features[{f!r}]: {msg}") from None
                if off is None:
                    n_bags, width = ids.shape
                    csr = np.arange(n_bags + 1, dtype=np.int64) * width
                else:  # the offsets and the end of the last bag, made by the check
                    n_bags = len(csr) - 1
            if B is None:
                B, B_from = n_bags, f
            elif n_bags != B:
                raise ValueError(
                    f"features[{f!r}] has {n_bags} bags but features[{B_from!r}] has {B}: every "
                    f"feature needs the same batch size"
                )
            out[f] = (flat, csr)
            if f in psw:
                weights[f] = psw[f].reshape(-1)
        return out, weights, B

    # forward ----------------------------------------------------------------------------------

    def forward(self, features, per_sample_weights=None, concat: bool = False):
        """Pooled vectors of every feature, looked up in one call.

        Parameters
        ----------
        features : dict or KeyedJaggedIds
            ``{feature: (ids, offsets)}`` with 1-D int64 ``ids`` and ``offsets`` as
            ``nn.EmbeddingBag`` takes them (``(B,)``, or ``(B + 1,)`` with the collection's
            ``include_last_offset=True``), or ``{feature: ids}`` with 2-D ``(B, N)`` ids
            (fixed-length bags); every feature of the collection, each with the same ``B``.
            Or one jagged input: a :class:`KeyedJaggedIds` (or TorchRec ``KeyedJaggedTensor``).
        per_sample_weights : dict, optional
            ``{feature: weights}`` shaped like that feature's ids, for features of ``"sum"``
            tables; features left out weigh 1. With a jagged input, its weights instead (one
            per value; those of features of "mean" or "max" tables must be 1, and are unread).
        concat : bool
            Return one tensor ``(B, sum(feature_dims))`` instead of a dict: the features'
            vectors side by side in :attr:`feature_names` order (feature ``i`` in columns
            ``sum(feature_dims[:i])`` to ``sum(feature_dims[:i + 1])``), TorchRec's
            ``KeyedTensor.values()`` layout.

        Returns
        -------
        dict of Tensor or Tensor
            ``{feature: (B, embedding_dim of its table)}`` in :attr:`feature_names` order, or
            the concatenation (``concat=True``).

        Every feature's input is checked before any ID is remapped: an unknown or missing
        feature, a wrong dtype or shape raises TypeError/ValueError naming the feature and the
        argument, and changes nothing.
        """
        if not isinstance(concat, (bool, np.bool_)):
            raise TypeError(f"concat must be a bool, got {type(concat).__name__}")
        inputs, weights, B = self._inputs(features, per_sample_weights)
        groups = [self._table_input(c, inputs, weights, B) for c in self.tables]
        if self._native_ok(weights):
            outs = self._native_forward(groups, B, split=not concat)
            return outs[0] if concat else dict(zip(self.feature_names, outs))
        pooled = {}
        for c, (ids, csr, psw) in zip(self.tables, groups):
            out = self.embedding_bags[c.name](torch.from_numpy(ids), torch.from_numpy(csr), psw)
            if len(c.feature_names) == 1:
                pooled[c.feature_names[0]] = out
            else:
                pooled.update(zip(c.feature_names, out.split([B] * len(c.feature_names))))
        if concat:
            return torch.cat([pooled[f] for f in self.feature_names], dim=1)
        return {f: pooled[f] for f in self.feature_names}

    def _table_input(self, c: EmbeddingBagConfig, inputs: dict, weights: dict, B: int):
        """(IDs, CSR offsets, per-sample weights or None) of table ``c``: its features' bags
        one after the other (feature order of ``c.feature_names``); IDs and offsets as NumPy
        arrays."""
        names = c.feature_names
        if len(names) == 1:
            ids, csr = inputs[names[0]]
            return ids, csr, weights.get(names[0])
        parts = [inputs[f] for f in names]
        ids = np.concatenate([p[0] for p in parts])
        starts = np.cumsum([0] + [p[0].size for p in parts[:-1]])
        csr = np.concatenate(
            [parts[0][1]] + [p[1][1:] + int(s) for p, s in zip(parts[1:], starts[1:])]
        )
        psw = None
        if any(f in weights for f in names):
            dtype = self.embedding_bags[c.name].weight.dtype
            psw = torch.cat([
                weights[f] if f in weights else torch.ones(p[0].size, dtype=dtype)
                for f, p in zip(names, parts)
            ])
        return ids, csr, psw

    # one native pooling pass ---------------------------------------------------------------
    #
    # When every table pools by sum or mean without max_norm, on CPU weights of one float dtype,
    # and a gradient (if one is needed) goes to a fused optimizer, the forward remaps each
    # table (the table module's own remap: insertion, admission, eviction, growth), then pools
    # every feature into one (B, sum of dims) output in one _core.pool_bags call; backward
    # applies each table's fused step (embtab.optim.fused_update). Other settings take the
    # per-table path (each table module's forward), with the same results.

    def _native_ok(self, weights: dict) -> bool:
        if _ops.is_compiling():
            return False
        ws = [_weight_of(b) for b in self.embedding_bags.values()]
        dtype = ws[0].dtype
        if dtype not in (torch.float32, torch.float64):
            return False
        for bag, w in zip(self.embedding_bags.values(), ws):
            if (bag.mode == "max" or bag.max_norm is not None or w.device.type != "cpu"
                    or w.dtype != dtype):
                return False
        if not torch.is_grad_enabled():
            return True
        if any(p.requires_grad for p in weights.values()):
            return False
        return all(bag.optimizer is not None or not w.requires_grad
                   for bag, w in zip(self.embedding_bags.values(), ws))

    def _native_forward(self, groups: list, B: int, split: bool) -> tuple:
        """The pooled output: ``(out,)``, or one column block per feature with ``split``."""
        plan = []
        col = 0
        ebs = self.embedding_bags
        bags = [ebs[c.name] for c in self.tables]
        # Before any table's remap changes it: each table's optimizer (one assigned after
        # construction is refused, see fused_of), and each optimizer's hyperparameters once,
        # as check_weight does for a table module that records a step (_native_ok made its
        # other checks: CPU weights of a float dtype, no weights requiring a gradient).
        checked = set()   # optimizers whose param_groups this call has checked
        recording = torch.is_grad_enabled()
        for bag in bags:
            opt = bag.optimizer
            if opt is None:
                continue
            if bag.__dict__.get("_fused_checked") is not opt:
                fused_of(bag)
            if recording and id(opt) not in checked and _weight_of(bag).requires_grad:
                checked.add(id(opt))
                opt._group()
        looked_up = [(None, None)] * len(bags)
        if all(isinstance(b, _CuckooBase) for b in bags):
            # every table's lookup in one native call, the tables side by side on the threads,
            # with each table's count of absent IDs
            looked_up = embtab.CuckooTable.lookup_many(
                [b._table for b in bags], [g[0] for g in groups], self.num_threads,
                count_absent=True,
            )
            # a table that may insert (IDs it does not hold, in training) reads param_groups
            # there (_insert): checked now, before an earlier table counts its step, also where
            # no step is recorded (no_grad, a frozen weight)
            for bag, (_, absent) in zip(bags, looked_up):
                opt = bag.optimizer
                if absent and bag.training and opt is not None and id(opt) not in checked:
                    checked.add(id(opt))
                    opt._group()
        # the remaps without gradient tracking, switched off once for all tables (as each
        # table's _remap does for itself)
        grad = torch.is_grad_enabled()
        if grad:
            torch._C._set_grad_enabled(False)
        counted = []  # the step counters of tables whose remap is only a count (one add)
        try:
            for c, (ids, csr, psw), bag, (found, absent) in zip(self.tables, groups, bags,
                                                                 looked_up):
                if found is not None and absent == 0 and bag._counts_only():
                    rows = found  # every ID known: what _remap_rows does but count the step
                    if bag.training:
                        counted.append(bag._buffers["num_steps"])
                else:
                    rows = (bag._rows_for(ids)[0] if found is None
                            else bag._remap_rows(ids, found, absent)[0])
                psw_np = None if psw is None else psw.detach().reshape(-1).contiguous().numpy()
                plan.append((c, bag, rows, np.ascontiguousarray(csr), psw_np, col))
                col += c.embedding_dim * len(c.feature_names)
        finally:
            if counted:  # those remapped so far, as each table's own remap counts its step
                torch._foreach_add_(counted, 1)
            if grad:
                torch._C._set_grad_enabled(True)
        weights = [_weight_of(bag) for _, bag, *_ in plan]
        dims = self.feature_dims if split else [col]
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            outs = _CollectionLookup.apply(self, plan, B, col, dims, *weights)
            for _, bag, rows, *_ in plan:
                bag._track(outs[0], rows)
            return outs
        return _pool(plan, B, col, self.num_threads).split(dims, dim=1)

    # state ------------------------------------------------------------------------------------

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Check every table's entries before any table changes (each table's own load then
        # checks its entries again and loads them).
        caller_strict = _caller_strict(strict)  # torch's own check below keeps `strict`
        known = set()
        for name, bag in self.embedding_bags.items():
            p = f"{prefix}embedding_bags.{name}."
            own = _own_state_names(bag)
            known.update(f"embedding_bags.{name}.{n}" for n in own)
            if not caller_strict and not any(p + n in state_dict for n in own):
                continue  # strict=False and none of this table's keys: left as it is
            self._check_table_state(bag, state_dict, p, own)
        if caller_strict:
            _refuse_unknown_keys(self, state_dict, prefix, known, self._unexpected_hint)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_table_state(self, bag, sd, prefix, own) -> None:
        raise NotImplementedError


class CuckooEmbeddingBagCollection(_BagCollection):
    r"""Several named features, each pooled from its own collisionless table (or a shared one),
    looked up in one call: TorchRec's ``EmbeddingBagCollection`` over raw 64-bit IDs.

    Each table is a :class:`CuckooEmbeddingBag` (``embedding_bags[name]``) configured by an
    :class:`EmbeddingBagConfig`; a feature reads one table, and the features that share a table
    are looked up together (one remap, one pooling call and one fused optimizer step per table).

    Parameters
    ----------
    tables : list of EmbeddingBagConfig
        The tables (distinct names) and the features each one serves (a feature in one table).
    optimizer : embtab.optim.FusedOptimizer, optional
        A fused optimizer applied to every table in backward (each table keeps its own state,
        ``embedding_bags.<name>.opt_*`` in the state dict, and its own step count). Without one,
        train with any torch optimizer over ``parameters()`` (``sparse=True`` in a table's
        options gives it sparse gradients).
    include_last_offset : bool
        Offsets of the dict input have ``B + 1`` entries, the last one the number of IDs.
    num_threads : int
        Threads of every table's remap and fused step (0 = all hardware threads).
    device, dtype
        Of every table's weight.

    Attributes
    ----------
    embedding_bags : nn.ModuleDict
        Table name -> :class:`CuckooEmbeddingBag`.
    feature_names : list of str
        The output order: tables in the order given, each table's features in its order.
    feature_dims : list of int
        The width of each feature's vector, in ``feature_names`` order.

    Notes
    -----
    * ``state_dict`` keys are ``embedding_bags.<table>.<entry>`` (TorchRec's names for the
      weights: ``embedding_bags.<table>.weight``). ``load_state_dict`` checks every table's
      entries (as :class:`CuckooEmbedding` does), and unexpected keys under ``strict=True``,
      before any table changes: one bad entry raises ValueError naming the key and loads
      nothing.
    * Each table remaps its IDs with its module's own remap; then, for ``"sum"``/``"mean"``
      tables without ``max_norm`` whose gradient goes to the fused optimizer (or when none is
      needed), every feature is pooled in one native call into the ``(B, sum of dims)`` output
      and backward applies every table's fused step from one autograd node. Otherwise each
      table module runs its own forward (the same results to float tolerance).
    * Every feature's input is checked before any ID is remapped (see :meth:`forward`). A
      failure inside one table's remap (``on_full="error"`` full, too few evictable rows) is
      raised after the tables before it in ``tables`` have inserted their new IDs.

    Example::

        >>> import torch, embtab.nn, embtab.optim
        >>> from embtab.nn import EmbeddingBagConfig
        >>> ebc = embtab.nn.CuckooEmbeddingBagCollection(
        ...     [EmbeddingBagConfig(num_embeddings=100, embedding_dim=8, name="t_item",
        ...                         feature_names=["item", "last_item"]),       # one shared table
        ...      EmbeddingBagConfig(num_embeddings=50, embedding_dim=4, name="t_user",
        ...                         feature_names=["user"], pooling="mean")],
        ...     optimizer=embtab.optim.RowWiseAdagrad(lr=0.1))
        >>> out = ebc({"item": (torch.tensor([2**40, 7, 9]), torch.tensor([0, 2])),
        ...            "last_item": torch.tensor([[7], [11]]),                  # 2-D: fixed bags
        ...            "user": (torch.tensor([-5, 3]), torch.tensor([0, 1]))})
        >>> {f: tuple(v.shape) for f, v in out.items()}
        {'item': (2, 8), 'last_item': (2, 8), 'user': (2, 4)}
        >>> sum(v.sum() for v in out.values()).backward()   # one fused step per table
        >>> ebc.embedding_bags["t_item"].num_ids, int(ebc.embedding_bags["t_item"].opt_step)
        (4, 1)
    """

    _bag_class = CuckooEmbeddingBag

    def stats(self) -> dict:
        """``{table: CuckooEmbeddingBag.stats()}``."""
        return {name: bag.stats() for name, bag in self.embedding_bags.items()}

    def _check_table_state(self, bag, sd, prefix, own) -> None:
        bag._validated_table(sd, prefix, own)


class HashedEmbeddingBagCollection(_BagCollection):
    r"""Several named features pooled from hashing-trick tables, looked up in one call.

    :class:`CuckooEmbeddingBagCollection` with :class:`HashedEmbeddingBag` tables (row =
    ``mix64(id, seed) % num_embeddings``): same arguments, input, output and state-dict layout.

    Example::

        >>> ebc = embtab.nn.HashedEmbeddingBagCollection(
        ...     [EmbeddingBagConfig(num_embeddings=64, embedding_dim=4, name="t",
        ...                         feature_names=["a", "b"])])
        >>> ebc({"a": torch.tensor([[1, 2]]), "b": torch.tensor([[3]])}, concat=True).shape
        torch.Size([1, 8])
    """

    _bag_class = HashedEmbeddingBag

    def _check_table_state(self, bag, sd, prefix, own) -> None:
        for n in own:
            key = prefix + n
            if key not in sd:
                if n.startswith("opt_"):  # fused optimizer state: _check_plain_state decides
                    continue
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key} is missing")
            t, cur = sd[key], getattr(bag, n)
            if not isinstance(t, Tensor):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key} must be a torch.Tensor, got "
                    f"{type(t).__name__}"
                )
            if tuple(t.shape) != tuple(cur.shape) or t.dtype.is_floating_point != (
                cur.dtype.is_floating_point
            ):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key} must have shape "
                    f"{tuple(cur.shape)} and a {'floating' if cur.dtype.is_floating_point else 'integer'}"
                    f" dtype, got {t.dtype} {tuple(t.shape)}"
                )
        w = sd[prefix + "weight"]
        if torch.count_nonzero(w[-1]) != 0:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: {prefix}weight row {w.shape[0] - 1} (the "
                f"zero row read by padding_id) must be zero"
            )
        # and everything the table's own load checks (dtypes, optimizer state values), so that
        # no table is copied before a later one is refused
        _check_plain_state(bag, sd, prefix, strict=False)


def _plain_bag_input(x, include_last_offset: bool, memo: Optional[dict]):
    """``(flat IDs, CSR offsets)`` as NumPy arrays for the usual feature input, a tuple of 1-D
    int64 CPU contiguous IDs and non-empty offsets that the native pass accepts, read in place
    (as ``_as_id_array`` and ``_check_bag_args`` read it, without their tracing and compiling
    tests, which the caller makes once); None for any other input. ``memo``: a dict the caller
    keeps for one call over a plain ``dict`` of features (whose values it holds, unchanged,
    meanwhile), so that an offsets tensor given to several features of as many IDs (one
    ``arange(B)`` for one ID per sample) is checked and made CSR once (the CSR is only read);
    None for any other mapping, whose values may be made, or refilled, on each read."""
    if type(x) is not tuple or len(x) != 2:
        return None
    ids, offsets = x
    if not (_plain_int64(ids) and ids.dim() == 1):
        return None
    flat = ids.numpy()
    key = (id(offsets), flat.shape[0])
    got = None if memo is None else memo.get(key)
    if got is not None and got[0] is offsets:
        csr = got[1]
    else:
        csr = None
        if _plain_int64(offsets) and offsets.dim() == 1 and offsets.numel():
            code, _, csr = _core.bag_csr(offsets.numpy(), flat.shape[0], include_last_offset)
            if code:
                csr = None
        if memo is not None:
            memo[key] = (offsets, csr)  # the tensor kept: its id is not reused meanwhile
    return None if csr is None else (flat, csr)


def _pool(plan: list, B: int, width: int, num_threads: int) -> Tensor:
    """The ``(B, width)`` pooled output of a collection's native plan (see
    ``_BagCollection._native_forward``): one ``_core.pool_bags`` call over every feature."""
    feats = []
    for c, bag, rows, csr, psw, col in plan:
        w = _weight_of(bag).detach().numpy()
        mean = bag.mode == "mean"
        for k in range(len(c.feature_names)):
            off = csr[k * B : (k + 1) * B + 1]
            feats.append((w, rows, off, psw, mean, bag.num_embeddings, col + k * c.embedding_dim))
    dtype = _weight_of(plan[0][1]).dtype
    out = torch.empty(B, width, dtype=dtype)
    _core.pool_bags(feats, out.numpy(), num_threads)
    return out


class _CollectionLookup(torch.autograd.Function):
    """A collection's pooled output ``(B, width)`` as column blocks of widths ``dims`` (one
    block, or one per feature); backward applies each table's fused optimizer step in place
    (embtab.optim.fused_update) and returns no weight gradient. A table none of whose blocks
    reached the loss takes no step (as a table module whose output is unused)."""

    @staticmethod
    def forward(ctx, coll, plan, B, width, dims, *weights):
        ctx.plan, ctx.B, ctx.dims, ctx.num_threads = plan, B, dims, coll.num_threads
        ctx.zero_rows = [bag.num_embeddings for _, bag, *_ in plan]
        ctx.set_materialize_grads(False)
        ctx.open = OpenLookups({id(bag): bag for _, bag, *_ in plan
                                if bag.optimizer is not None}.values())
        return tuple(_pool(plan, B, width, coll.num_threads).split(dims, dim=1))

    @staticmethod
    def backward(ctx, *grads):
        plan, B = ctx.plan, ctx.B
        alone = ctx.open.close()
        for (c, bag, *_), zero in zip(plan, ctx.zero_rows):
            if bag.num_embeddings != zero:
                raise RuntimeError(
                    f"table {c.name!r} grew ({zero} -> {bag.num_embeddings} rows) between this "
                    f"forward and its backward; a graph built before a growth cannot be "
                    f"backpropagated (pre-size num_embeddings); no table was stepped"
                )
        updates = []
        if len(grads) == 1:  # one block: every table's columns of it, side by side from 0
            g = grads[0]
            if g is None:
                return (None,) * (5 + len(plan))
            whole = {}  # the block as NumPy per weight dtype; each table reads its columns
            for c, bag, rows, csr, psw, col in plan:
                w = _weight_of(bag)
                if bag.optimizer is None or not w.requires_grad:
                    continue
                a = whole.get(w.dtype)
                if a is None:
                    a = whole[w.dtype] = grad_rows(g if g.dtype == w.dtype else g.to(w.dtype),
                                                   g.shape[1])
                d, nf = c.embedding_dim, len(c.feature_names)
                if nf == 1:
                    gr = a[:, col : col + d]  # read in place with the block's row stride
                else:  # the features' bags one after the other, as in csr
                    gr = np.concatenate([a[:, col + k * d : col + (k + 1) * d]
                                         for k in range(nf)])
                updates.append((bag, rows, gr, csr, psw, bag.mode == "mean"))
        else:  # one block per feature, in plan order
            it = iter(grads)
            blocks = [[next(it) for _ in c.feature_names] for c, *_ in plan]
            for (c, bag, rows, csr, psw, col), gs in zip(plan, blocks):
                if all(g is None for g in gs):
                    continue
                w = _weight_of(bag)
                if bag.optimizer is None or not w.requires_grad:
                    continue
                wd = w.dtype
                if len(gs) == 1:
                    g = gs[0]
                else:  # the features' bags one after the other, as in csr
                    g = torch.cat([torch.zeros(B, c.embedding_dim, dtype=wd) if x is None
                                   else x for x in gs])
                if g.dtype != wd:
                    g = g.to(wd)
                updates.append((bag, rows, grad_rows(g, c.embedding_dim), csr, psw,
                                bag.mode == "mean"))
        # every table's step in one native call, tables side by side on the collection's threads
        # every table's step in one native call (or, when a table has another lookup open, at
        # the end of this backward pass: embtab.optim.step_or_queue)
        step_or_queue(updates, ctx.num_threads, alone)
        return (None,) * (5 + len(plan))
