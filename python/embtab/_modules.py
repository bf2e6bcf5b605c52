"""Helpers shared by the embedding modules (``embtab.nn``) and their sharded form
(``embtab.distributed``): ID tensors, bag arguments, and the per-row optimizer state rules.

Core layer; imports nothing from the research or tools layers.
"""

from __future__ import annotations

import secrets
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from embtab import _core
from embtab._ops import is_compiling

# torch has loaded GNU OpenMP by now: embtab's parallel loops can run on its team
# (embtab.set_thread_pool).
_core.find_openmp()

U64 = 1 << 64

# The seed of first_occurrence's scratch tables (see there).
_SCRATCH_SEED = secrets.randbits(64)

# ID tensors //////////////////////////////////////////////////////////////////////////////////


def id_tensor(input: object, name: str = "input") -> Tensor:
    """Validate an ID tensor; return it as int64 on its device (traceable: no NumPy).

    Integer dtypes are widened (uint64 is read bitwise); float, complex and bool tensors and
    non-tensors raise ``TypeError`` naming ``name``, its dtype and shape.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer IDs, got {type(input).__name__}")
    if input.is_nested:  # its layout may say strided; its sizes cannot be read
        raise TypeError(
            f"{name} must be a dense tensor of IDs, got a nested tensor of {input.size(0)} "
            f"tensors; pass a bag module the concatenated IDs with offsets")
    if input.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense (strided) tensor of IDs, got layout {input.layout} with "
            f"shape {tuple(input.shape)}; convert it with .to_dense()")
    dt = input.dtype
    if dt.is_floating_point or dt.is_complex or dt == torch.bool:
        raise TypeError(
            f"{name} must hold integer IDs (int64; other integer dtypes are widened), "
            f"got dtype {dt} with shape {tuple(input.shape)}; IDs are never cast from {dt}"
        )
    _keep_dtype_check(input, dt)
    t = input.detach()
    if dt == torch.uint64:
        return t.view(torch.int64)
    return t if dt == torch.int64 else t.to(torch.int64)


def _keep_dtype_check(input: Tensor, dt: torch.dtype) -> None:
    """Under torch.compile/torch.export, record a check that ``input`` has dtype ``dt`` when
    the traced program runs: the check above runs only while tracing, and an exported program
    does not check its inputs' dtypes (float IDs fed to it would be matched by value, bool ones
    read as 0 and 1). Fed another dtype, the program raises RuntimeError."""
    if not is_compiling():
        return
    check = getattr(torch.ops.aten, "_assert_tensor_metadata", None)
    if check is not None:
        check(input, dtype=dt)


@torch.compiler.disable  # NumPy and a native table: eager always (dynamo cannot build the table)
def first_occurrence(ids: np.ndarray, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of the int64 array ``ids`` in order of first occurrence, and each
    entry's index into them: ``(distinct [k], inverse [n])``, ``distinct[inverse] == ids``.

    Found by inserting ``ids`` into a scratch cuckoo table (a hash pass, O(n)), whose rows are
    handed out in order of first occurrence: 4-5x faster than ``np.unique`` with
    ``return_index`` and ``return_inverse`` plus the ``argsort`` that restores the order
    (measured on 65,536 Zipf IDs in bench/README.md, "New IDs"). The scratch table's seed is
    drawn at random per process: the result does not depend on it, and IDs chosen to collide
    against a known seed (CuckooTable's docstring) cannot be chosen against it.
    """
    scratch = _core._CuckooTable(len(ids), 2.0, 0.95, 0, _SCRATCH_SEED)
    inverse = scratch.lookup_or_insert(ids, num_threads=num_threads)
    distinct, _ = scratch.items()
    return distinct.view(np.int64), inverse


def weight_of(m) -> Tensor:
    """``m.weight``, read from the parameters dict without ``nn.Module.__getattr__`` (a cost
    per table per step in a collection's loops)."""
    w = m._parameters.get("weight")
    return m.weight if w is None else w


def plain_int64(t: object) -> bool:
    """Whether ``t`` is the usual index tensor: a plain ``torch.Tensor`` (not a subclass),
    int64, on the CPU, strided and contiguous, so that its NumPy view is read in place."""
    return (type(t) is Tensor and t.dtype == torch.int64 and t.is_cpu
            and t.layout == torch.strided and not t.is_nested and t.is_contiguous())


def as_id_array(input: object, name: str = "input") -> tuple[np.ndarray, tuple]:
    """Validate an ID tensor; return (flat int64 NumPy view or copy, original shape).

    Integer dtypes are widened (uint64 is read bitwise); float, complex and bool tensors and
    non-tensors raise ``TypeError`` naming ``name``, its dtype and shape.
    """
    if torch.jit.is_tracing():
        raise RuntimeError(
            f"torch.jit.trace cannot follow embtab's ID -> row map: {name} is read through "
            "NumPy here, so the trace would record this call's rows as constants and return "
            "them for any input; trace with torch.compile or torch.export (eval mode) instead")
    if plain_int64(input) and not is_compiling():
        # the usual input, read in place with no other check to make (an integer tensor
        # cannot require a gradient)
        a = input.numpy()
        return (a if a.ndim == 1 else a.reshape(-1)), tuple(input.shape)
    t = id_tensor(input, name)
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (it holds no IDs), shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        t = t.cpu()
    flat = t.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.numpy(), tuple(input.shape)


# growth //////////////////////////////////////////////////////////////////////////////////////

def grown_rows(old: Tensor, rows: int, keep: int, fill: float = 0.0) -> Tensor:
    """A new tensor of ``rows`` rows shaped like ``old`` otherwise, on its device:
    ``old[:keep]`` copied, every other row set to ``fill``. Each row is written once (not zeroed
    first and then copied over).

    The memory is ``torch.empty``'s (4 KiB pages). Transparent huge pages (NumPy-backed memory,
    which NumPy advises to use them) made the growth of a 1,000,000 x 64 weight 3-4x faster
    when the kernel had huge pages ready, and 4-5x slower when it had to find them first,
    which on the virtual machine of bench/README.md ("New IDs") was the first growth of every
    process; so they are not used.
    """
    new = torch.empty((rows, *old.shape[1:]), dtype=old.dtype, device=old.device)
    keep = min(keep, rows, old.shape[0])
    if keep:
        new[:keep] = old[:keep]
    new[keep:] = fill
    return new


# bags ////////////////////////////////////////////////////////////////////////////////////////


def check_bag_config(mode: object, sparse: bool, scale_grad_by_freq: bool) -> str:
    """The reduction ``mode`` of a bag module, checked with the options torch refuses beside it.

    Raises ValueError for a mode other than 'sum', 'mean', 'max', for mode='max' with
    ``sparse=True`` or ``scale_grad_by_freq=True``, and for ``sparse=True`` with
    ``scale_grad_by_freq=True`` (torch raises those only at the first backward or forward;
    refusing at construction keeps a forward from inserting IDs first).
    """
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
    if mode == "max" and sparse:
        raise ValueError("mode='max' does not support sparse=True (as in torch)")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError("mode='max' does not support scale_grad_by_freq=True (as in torch)")
    if sparse and scale_grad_by_freq:
        raise ValueError(
            "sparse=True does not support scale_grad_by_freq=True in a bag module (torch's "
            "embedding_bag backward refuses it); use sparse=False (a fused optimizer needs no "
            "sparse gradient)"
        )
    return str(mode)


def check_bag_args(
    input: Tensor,
    offsets: Optional[Tensor],
    per_sample_weights: Optional[Tensor],
    mode: str,
    include_last_offset: bool,
    weight: Tensor,
    check_values: bool = True,
    want_csr: bool = False,
):
    """Validate EmbeddingBag arguments before anything is remapped; return offsets on CPU or None.

    ``check_values=False`` checks types and shapes only (no read of the offsets' values), so
    it traces under ``torch.compile``/``torch.export`` without a graph break. ``want_csr``
    (with ``check_values``): return ``(offsets, csr)``, ``csr`` the bags' CSR offsets as an int64
    NumPy array (num_bags + 1 entries, the last the number of IDs), made by the same native
    pass that checks them; None for 2-D input.
    """
    if (per_sample_weights is None and check_values and plain_int64(offsets)
            and offsets.dim() == 1 and offsets.numel() and input.dim() == 1):
        # the usual call: its offsets checked and made CSR by the native pass alone (the other
        # checks hold); a refusal is worded by the full path below
        code, _, csr = _core.bag_csr(offsets.numpy(), input.shape[0], include_last_offset)
        if code == 0:
            return (offsets, csr) if want_csr else offsets
    csr = None
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(
                f"offsets must be None when input is 2-D (fixed-length bags), "
                f"got input shape {tuple(input.shape)} and offsets shape "
                f"{tuple(offsets.shape) if isinstance(offsets, Tensor) else type(offsets).__name__}"
            )
        if input.shape[1] == 0:
            raise ValueError(
                f"input of shape {tuple(input.shape)} has bags of no IDs: 2-D input needs at "
                f"least one ID per bag (torch's EmbeddingBag refuses it too); give 1-D input "
                f"with offsets for empty bags"
            )
        off = None
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError(f"offsets is required when input is 1-D (shape {tuple(input.shape)})")
        if not isinstance(offsets, Tensor):
            raise TypeError(f"offsets must be a torch.Tensor, got {type(offsets).__name__}")
        if offsets.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"offsets must have dtype int64 or int32, got {offsets.dtype}")
        if offsets.dim() != 1:
            raise ValueError(f"offsets must be 1-D, got shape {tuple(offsets.shape)}")
        if offsets.device.type == "meta":
            raise ValueError(f"offsets is on the meta device (it holds no values), shape "
                             f"{tuple(offsets.shape)}")
        off = (offsets if offsets.dtype == torch.int64 and offsets.is_cpu
               else offsets.detach().cpu().to(torch.int64))  # (an integer tensor has no grad)
        n = input.shape[0]
        if off.numel() == 0:
            csr = np.zeros(1, dtype=np.int64)
            # No bags: torch's EmbeddingBag returns (0, d), and ignores any IDs given.
            if include_last_offset:
                raise ValueError(
                    f"with include_last_offset=True, offsets must hold at least one offset "
                    f"(the last is the number of IDs), got shape {tuple(offsets.shape)}"
                )
            if n != 0:
                raise ValueError(
                    f"offsets is empty (no bags) but input holds {n} IDs (shape ({n},)); "
                    f"give offsets[0] = 0 for one bag of them"
                )
        elif check_values:
            o = np.ascontiguousarray(off.numpy())
            code, bad, csr = _core.bag_csr(o, n, include_last_offset)  # one native pass
            if code == 1:
                raise ValueError(
                    f"offsets[0] must be 0, got {int(o[0])} (offsets shape {tuple(offsets.shape)})"
                )
            if code == 2:
                raise ValueError(
                    f"offsets must be non-decreasing, got offsets[{bad}]={int(o[bad])} > "
                    f"offsets[{bad + 1}]={int(o[bad + 1])} (offsets shape {tuple(offsets.shape)})"
                )
            if code == 3:
                raise ValueError(
                    f"offsets[-1]={int(o[-1])} exceeds the number of IDs in input (shape ({n},))"
                )
            if code == 4:
                raise ValueError(
                    f"with include_last_offset=True, offsets[-1] must equal the number of IDs "
                    f"in input ({n}), got {int(o[-1])}"
                )
    else:
        raise ValueError(
            f"input must be 1-D (with offsets) or 2-D (fixed-length bags), "
            f"got shape {tuple(input.shape)}"
        )
    if per_sample_weights is not None:
        if not isinstance(per_sample_weights, Tensor):
            raise TypeError(
                f"per_sample_weights must be a torch.Tensor, got {type(per_sample_weights).__name__}"
            )
        if mode != "sum":
            raise ValueError(
                f"per_sample_weights is only supported with mode='sum', got mode={mode!r}"
            )
        if tuple(per_sample_weights.shape) != tuple(input.shape):
            raise ValueError(
                f"per_sample_weights must have the shape of input {tuple(input.shape)}, "
                f"got {tuple(per_sample_weights.shape)}"
            )
        if per_sample_weights.dtype != weight.dtype:
            raise TypeError(
                f"per_sample_weights must have the weight's dtype {weight.dtype}, "
                f"got {per_sample_weights.dtype}"
            )
        if per_sample_weights.layout != torch.strided:
            raise TypeError(
                f"per_sample_weights must be a dense (strided) tensor, got layout "
                f"{per_sample_weights.layout} (shape {tuple(per_sample_weights.shape)}); "
                f"call .to_dense() first"
            )
        if per_sample_weights.device != weight.device:
            raise ValueError(
                f"per_sample_weights must be on the weight's device {weight.device}, got "
                f"{per_sample_weights.device} (shape {tuple(per_sample_weights.shape)})"
            )
    return (off, csr) if want_csr else off


# optimizer state ////////////////////////////////////////////////////////////////////////////
#
# A module that grows its weight or hands rows to new IDs must bring each optimizer's state of
# that weight along: pad the per-row state tensors to the new number of rows and give the rows
# handed to new IDs the value a never-used row of a pre-sized table holds ("fresh"). That needs
# to know, per optimizer class, which state is per row and what its fresh value is; a state
# that mixes rows (Adafactor's factored moments and whole-matrix norms, L-BFGS's curvature pairs,
# Muon's orthogonalised update) cannot be padded or reset row by row.

FreshValue = Callable[[dict], float]


def _zero(group: dict) -> float:
    return 0.0


def _adagrad_sum(group: dict) -> float:
    return float(group["initial_accumulator_value"])


def _rprop_step_size(group: dict) -> float:
    # A row whose gradient stays 0 keeps lr, clamped to step_sizes at every step.
    lo, hi = group["step_sizes"]
    return float(min(max(float(group["lr"]), lo), hi))


def _rows(*keys: str) -> dict:
    return {k: _zero for k in keys}


#: Per-row state of each optimizer class (exact type): state key -> its fresh value, a function
#: of the parameter group. Scalar state (``step``, NAdam's ``mu_product``, ASGD's ``eta``/``mu``)
#: is shared by all rows and left alone.
ROW_STATE: dict = {
    torch.optim.SGD: _rows("momentum_buffer"),
    torch.optim.Adagrad: {"sum": _adagrad_sum},
    torch.optim.Adam: _rows("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.AdamW: _rows("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.SparseAdam: _rows("exp_avg", "exp_avg_sq"),
    torch.optim.Adamax: _rows("exp_avg", "exp_inf"),
    torch.optim.Adadelta: _rows("square_avg", "acc_delta"),
    torch.optim.NAdam: _rows("exp_avg", "exp_avg_sq"),
    torch.optim.RAdam: _rows("exp_avg", "exp_avg_sq"),
    torch.optim.RMSprop: _rows("square_avg", "momentum_buffer", "grad_avg"),
    torch.optim.Rprop: {"prev": _zero, "step_size": _rprop_step_size},
    torch.optim.ASGD: _rows("ax"),
}

#: Optimizers whose state or step mixes rows, with the reason.
MIXES_ROWS: dict = {
    torch.optim.Adafactor: "its factored second moment (row_var x col_var) and its step size "
    "(the weight's RMS over all rows) couple every row, so a grown table or a row handed to "
    "a new ID changes the other rows' updates",
    torch.optim.LBFGS: "its curvature pairs span the whole flattened parameter",
}
if hasattr(torch.optim, "Muon"):
    MIXES_ROWS[torch.optim.Muon] = "its update orthogonalises the whole weight matrix"


def row_state(optimizer: object, what: str) -> dict:
    """``ROW_STATE`` entry of ``optimizer``'s class; ValueError naming the class and ``what``
    needed it when embtab does not know that optimizer's per-row state."""
    rules = ROW_STATE.get(type(optimizer))
    if rules is not None:
        return rules
    name = type(optimizer).__name__
    why = MIXES_ROWS.get(type(optimizer))
    known = ", ".join(sorted(c.__name__ for c in ROW_STATE))
    if why is not None:
        raise ValueError(f"{what} cannot be done for {name}: {why}. Use on_full='error' (or a "
                         f"pre-sized table) with {name}, or one of: {known}")
    raise ValueError(f"{what} needs the per-row optimizer state of {name}, which embtab does not "
                     f"know (only these optimizer classes, exactly: {known})")
