"""Fused sparse optimizers, applied inside the embedding modules' backward.

Pass one of :class:`SGD`, :class:`Adagrad`, :class:`RowWiseAdagrad` or :class:`Adam` to an
:mod:`embtab.nn` module as ``optimizer=``. In backward the module sums the gradient of each
distinct row the batch touched (in C++, without a sort: a marker array indexed by row finds
the distinct rows, and each occurrence's gradient is added into its row's sum) and applies one
optimizer step to those rows in place, with the GIL released. With several threads the rows
are split among them by owner, so every pass runs in parallel; the result is the same bits for
any thread count.

The module's ``weight`` then never gets a ``.grad``: an outer ``torch.optim`` optimizer over
``model.parameters()`` skips it (torch optimizers skip parameters whose ``grad`` is None), so
the natural loop updates every parameter exactly once::

    >>> import torch, embtab.nn, embtab.optim
    >>> opt = embtab.optim.Adagrad(lr=0.1)
    >>> emb = embtab.nn.CuckooEmbeddingBag(1000, 8, mode="sum", optimizer=opt)
    >>> head = torch.nn.Linear(8, 1)
    >>> dense = torch.optim.SGD(head.parameters(), lr=0.1)   # or over all parameters: same result
    >>> ids = torch.tensor([[2**40, 7], [7, 3]])
    >>> loss = head(emb(ids)).square().mean()
    >>> loss.backward()              # emb's touched rows are updated here
    >>> dense.step()
    >>> emb.weight.grad is None
    True

Semantics (``g`` = a touched row's summed gradient; untouched rows and their state are left
alone, the "lazy" semantics of sparse optimizers):

* :class:`SGD`: ``torch.optim.SGD`` (``dampening=0``) applied to the touched rows only: with
  ``momentum`` or ``weight_decay`` an untouched row neither moves nor decays (torch's dense SGD
  would move it by its momentum). Without either it equals ``torch.optim.SGD`` exactly.
* :class:`Adagrad`: ``torch.optim.Adagrad`` on a sparse gradient (``lr_decay`` counts this
  module's steps).
* :class:`RowWiseAdagrad`: FBGEMM's ``EXACT_ROWWISE_ADAGRAD``: one accumulator per row adds the
  mean over the row of ``g**2``; ``w -= lr * g / (sqrt(acc) + eps)``.
* :class:`Adam`: ``torch.optim.SparseAdam`` (bias correction by this module's step count).

State lives in the module as buffers (so in ``state_dict``): ``opt_step`` (int64, the number of
fused steps) and, per optimizer, ``opt_momentum_buffer``, ``opt_sum``, ``opt_row_sum`` or
``opt_exp_avg`` + ``opt_exp_avg_sq``, with the weight's dtype and one row per weight row. They
grow with the weight, and a row handed to a new ID (growth, eviction) starts from fresh state.
Hyperparameters live in the optimizer object, a ``torch.optim.Optimizer`` with one parameter
group and no parameters: set ``opt.lr = x`` between steps, or drive ``param_groups[0]["lr"]``
with a ``torch.optim.lr_scheduler`` (its ``step()`` is a no-op: the update happened in
backward; call it before the scheduler's as usual). Whatever writes ``param_groups[0]``, its
values are checked as the constructor checks its arguments before a training forward changes
anything (a negative ``lr``, ``eps = 0``, a beta of 1 raise ValueError naming the entry). One
optimizer object may serve several modules; each keeps its own state.

Notes
-----
* Every backward pass applies one step per module: a module looked up several times in one
  graph (one table for users and items, for positives and negatives) takes one step on the sum
  of those lookups' gradients, at the end of the pass, as the module with a torch optimizer
  does; a module looked up once steps in its lookup's backward. Backpropagating the same graph
  twice steps twice, and there is no gradient accumulation over several backward passes. A
  pass that raises part way has stepped the modules whose single lookup's backward ran, and
  none of those it had queued. A reentrant ``torch.utils.checkpoint`` region is a backward
  pass of its own (``use_reentrant=False`` is not). ``torch.autograd.grad`` (or
  ``backward(inputs=...)``) not asking for the weight's gradient steps nothing. A lookup made
  before the module grew cannot be backpropagated after it (``RuntimeError``, as for the
  unfused modules).
* The weight must live on the CPU (the step runs in C++ on its memory), as float32 or float64.
  A module converted afterwards by ``.half()`` or ``.bfloat16()`` still runs forwards without
  gradient (inference); a training forward then raises TypeError before it changes anything.
* ``scale_grad_by_freq=True`` divides a row's summed gradient by its number of occurrences in
  the batch, as ``nn.Embedding`` does (torch 2.13's ``nn.EmbeddingBag`` divides by other counts).
* **Loss scaling and clipping.** The step is taken inside backward, with the gradient as it
  arrives, before any code after ``backward()`` runs. So fused optimizers do not work with
  ``torch.amp.GradScaler`` (or any loss scaling): the step would apply the *scaled*
  gradient (``scale`` times too large), and write NaN or infinite values into the rows on an
  overflowing step, which ``GradScaler.step`` skips only for torch optimizers. Use bf16
  autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``), which needs no loss scaling,
  or a module without ``optimizer=`` trained by a torch optimizer (which ``GradScaler``
  covers). Likewise gradient clipping (``torch.nn.utils.clip_grad_norm_``) cannot reach a
  fused weight: it has no ``.grad``, and its step is already taken; clip the other
  parameters, or train the module unfused to clip it.
* A bag module's backward steps the bags its forward pooled (the CSR its forward's check made).
  Contiguous offsets changed in place by torch between the forward and its backward are refused
  (``RuntimeError``, no row stepped), as torch refuses the offsets it kept; a strided view, which
  torch copies, may change.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from embtab import _core
from embtab._modules import grown_rows, weight_of
from embtab._ops import is_compiling

__all__ = ["FusedOptimizer", "SGD", "Adagrad", "RowWiseAdagrad", "Adam"]

_MODE_MAX = 2  # torch.embedding_bag's code for mode="max"
_MODES = {"sum": 0, "mean": 1, "max": _MODE_MAX}


# The optimizer states that accumulate squares (the step takes their square root): a state dict
# holding a negative value for one of them is refused on load.
NONNEGATIVE_STATES = frozenset({"sum", "row_sum", "exp_avg_sq"})

# A module's fused step count (opt_step) stays below this: a state dict or checkpoint holding
# more is refused on load, so that counting on, and Adam's bias correction, cannot overflow.
MAX_OPT_STEP = 1 << 62


def _check_float(name: str, value, lo: float, lo_open: bool = False, hi: Optional[float] = None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    bad = not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v >= hi)
    if bad:
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'})"
        raise ValueError(f"{name} must be finite and in {rng}, got {value}")
    return v


class FusedOptimizer(torch.optim.Optimizer):
    """Base of the fused optimizers: hyperparameters in ``param_groups[0]``, state in the module.

    Subclasses set ``kind`` (the C++ rule) and describe their per-row state in :meth:`_states`.
    The step runs inside backward: fused optimizers do not work with ``torch.amp.GradScaler``
    (loss scaling) and ``clip_grad_norm_`` does not reach their weight (see the module's Notes,
    "Loss scaling and clipping"; use bf16 autocast, or an unfused module).
    The methods without an underscore below other than :attr:`lr` and :meth:`step` are the hooks
    the :mod:`embtab.nn` modules call; users do not call them.
    """

    kind = ""

    def __init__(self, defaults: dict):
        super().__init__([{"params": []}], defaults)

    @property
    def lr(self) -> float:
        """The learning rate of the next step (``param_groups[0]["lr"]``)."""
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value) -> None:
        self.param_groups[0]["lr"] = _check_float("lr", value, 0.0)

    @torch.no_grad()
    def step(self, closure=None):
        """No-op (the rows were updated in backward); returns ``closure()`` if given.

        Calling it keeps the usual ``optimizer.step(); scheduler.step()`` order that
        ``torch.optim.lr_scheduler`` checks for."""
        if closure is not None:
            with torch.enable_grad():
                return closure()
        return None

    def state_bytes_per_row(self, embedding_dim: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of optimizer state per weight row (the step counter aside)."""
        size = torch.empty((), dtype=dtype).element_size()
        return sum((embedding_dim if per_elem else 1) * size for _, per_elem, _ in self._states())

    def _states(self) -> list:
        """[(name, per_element, fill)]: the module buffers ``opt_<name>`` this optimizer keeps."""
        raise NotImplementedError

    # (key, lo, lo_open, hi) of each number in param_groups[0], checked as the constructor
    # checks its argument (see _check_float) by _group; _keys: every entry _group checks
    _fields: tuple = ()
    _keys: tuple = ()

    def _group(self) -> dict:
        """``param_groups[0]``, its hyperparameters checked as the constructor checks them: a
        scheduler or the user may have written any value there since (ValueError or TypeError
        naming the entry, before a step reads it). Values equal to those checked last time
        are not checked again."""
        g = self.param_groups[0]
        # each value with its type (True == 1 == 1.0, but a bool is refused where a number is
        # not), a list as a tuple of its items (changed in place, it then compares unequal)
        seen = tuple((type(v), tuple((type(x), x) for x in v) if isinstance(v, (list, tuple))
                      else v) for v in map(g.get, self._keys))
        try:
            same = seen == self.__dict__.get("_checked_values")
        except Exception:  # noqa: BLE001 - a value that does not compare (a tensor): check it
            same = False
        if not same:
            self._checked(g, "param_groups[0]")
            self.__dict__["_checked_values"] = seen
        return g

    def _checked(self, values: dict, where: str = "") -> dict:
        """``values`` (the constructor's arguments, or ``param_groups[0]``) checked: each of
        ``_fields`` a number in its range, then :meth:`_check_more`; returned with the numbers
        as floats. Errors name the entry: ``lr`` for the constructor, ``param_groups[0]['lr']``
        with ``where``."""
        def name(k: str) -> str:
            return f"{where}[{k!r}]" if where else k

        out = dict(values)
        for k, lo, lo_open, hi in self._fields:
            if k not in values:
                raise ValueError(f"{where or 'the arguments'} has no {k!r} (this optimizer "
                                 "reads it)")
            out[k] = _check_float(name(k), values[k], lo, lo_open, hi)
        self._check_more(out, name)
        return out

    def _check_more(self, values: dict, name) -> None:
        """Checks beyond ``_fields`` (subclasses), on ``values`` (which they may normalise in
        place); ``name(key)`` names an entry in a message."""

    def _resolved(self, step: int) -> dict:
        """Keyword arguments of ``_core.fused_step`` for the module's step number ``step``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        g = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return (
            f"embtab.optim.{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in g.items())})"
        )

    # module hooks ----------------------------------------------------------------------------

    def attach(self, module) -> None:
        """Register this optimizer's state buffers on ``module`` (weight on CPU, float32/64)."""
        w = module.weight
        if w.device.type != "cpu":
            raise ValueError(
                f"a fused optimizer needs the weight on the CPU, got device {w.device}"
            )
        if w.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"a fused optimizer needs a float32 or float64 weight, got {w.dtype}")
        # on the CPU whatever device context is active (torch.device(...) as a context)
        module.register_buffer("opt_step", torch.zeros((), dtype=torch.int64, device="cpu"))
        for name, per_elem, fill in self._states():
            shape = tuple(w.shape) if per_elem else (w.shape[0],)
            module.register_buffer("opt_" + name,
                                   torch.full(shape, fill, dtype=w.dtype, device="cpu"))

    def resized_state(self, module, new_rows: int) -> dict:
        """The state buffers resized to ``new_rows + 1`` rows, as new tensors (``module`` is not
        changed): ``{buffer name: tensor}``; rows past the old ID rows (the old zero row
        included) start fresh."""
        out = {}
        self._group()   # the fill values checked
        for name, _, fill in self._states():
            b = module._buffers["opt_" + name]
            keep = min(b.shape[0] - 1, new_rows)
            out["opt_" + name] = grown_rows(b, new_rows + 1, keep, float(fill))
        return out

    def reset_rows(self, module, rows: np.ndarray) -> None:
        """Give ``rows`` (handed to new IDs) fresh state."""
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self._group()   # the fill values checked
        for name, _, fill in self._states():
            module._buffers["opt_" + name].index_fill_(0, idx, float(fill))

    def check_weight(self, module, per_sample_weights: Optional[Tensor] = None) -> bool:
        """Whether a forward of ``module`` now records a fused step for its backward; raises
        first if that step could not run, so that a module's forward calls it before it changes
        anything (an ID inserted, a counter moved).

        The weight must be on the CPU (ValueError otherwise, whatever the forward). A forward
        that records a step (gradient enabled, and the weight or ``per_sample_weights``
        requiring it) also needs a float32 or float64 weight: a module converted by ``.half()``
        or ``.bfloat16()`` runs forwards without gradient (inference) and raises TypeError in
        training. Such a forward also checks the hyperparameters in ``param_groups[0]`` (as
        the constructor checks its arguments; a scheduler or the user may have written them)."""
        w = module.weight
        if w.device.type != "cpu":
            raise ValueError(
                f"a fused optimizer needs the weight on the CPU, got device {w.device}"
            )
        needs = torch.is_grad_enabled() and (
            w.requires_grad or (per_sample_weights is not None and per_sample_weights.requires_grad)
        )
        if needs and w.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"a fused optimizer steps a float32 or float64 weight, got {w.dtype} (the module "
                f"was converted after construction, e.g. by .half() or .bfloat16()): convert it "
                f"back with .float() to train, or run the forward under torch.no_grad()"
            )
        if needs:  # hyperparameters written into param_groups since: refused before any change
            self._group()
        return needs

    def lookup(
        self, module, idx: Tensor, offsets, per_sample_weights, padding_idx, bag: bool,
        rows: Optional[np.ndarray] = None, needs: Optional[bool] = None,
        csr: Optional[np.ndarray] = None,
    ) -> Tensor:
        """The forward of ``module`` on rows ``idx``: ``F.embedding_bag`` (``bag``) or
        ``F.embedding`` with the module's settings, whose backward applies the fused step
        (checked by :meth:`check_weight` first; ``needs``: its answer, when the caller has just
        asked it). ``rows``: ``idx`` flat as the int64 NumPy array the caller remapped it from
        (read by the backward; taken from ``idx`` when not given). ``csr``: the bags' CSR
        offsets that the caller's check of ``offsets`` made (``check_bag_args(want_csr=True)``);
        the backward steps those bags (and refuses ``offsets`` changed in place since)."""
        if is_compiling():
            return _eager_lookup(self, module, idx, offsets, per_sample_weights, padding_idx, bag,
                                 rows, needs, csr)
        return _lookup(self, module, idx, offsets, per_sample_weights, padding_idx, bag, rows, needs,
                       csr)


def _lookup(opt, module, idx, offsets, psw, padding_idx, bag, rows, needs, csr=None):
    if needs is None:
        needs = opt.check_weight(module, psw)
    if not needs:
        return _plain(module, idx, offsets, psw, padding_idx, bag)
    return _FusedLookup.apply(module.weight, psw, module, idx, offsets, padding_idx, bag, rows, csr)


# eager always: its backward is a native step on NumPy views (torch.compile breaks the graph
# here rather than trace an autograd Function that holds a module). Called only while compiling:
# the disabled wrapper is a cost on every eager call (bench/README.md, "A step's fixed costs").
_eager_lookup = torch.compiler.disable(_lookup)


def _plain(module, idx, offsets, psw, padding_idx, bag, weight=None):
    if bag:
        if idx.dim() == 1 and module.max_norm is None and offsets is not None:
            # what F.embedding_bag runs for these arguments, without its Python checks (the
            # module checked them)
            return torch.embedding_bag(
                module.weight if weight is None else weight, idx, offsets,
                module.scale_grad_by_freq, _MODES[module.mode],
                False, psw, module.include_last_offset,
                padding_idx,
            )[0]
        return F.embedding_bag(
            idx,
            module.weight,
            offsets,
            module.max_norm,
            module.norm_type,
            module.scale_grad_by_freq,
            module.mode,
            False,
            psw,
            module.include_last_offset,
            padding_idx,
        )
    return F.embedding(
        idx,
        module.weight,
        padding_idx,
        module.max_norm,
        module.norm_type,
        module.scale_grad_by_freq,
        False,
    )


def _csr(idx: Tensor, offsets: Optional[Tensor], include_last_offset: bool) -> np.ndarray:
    """Bag boundaries of a bag input as CSR offsets (num_bags + 1 entries, int64)."""
    if idx.dim() == 2:
        B, N = idx.shape
        return np.arange(B + 1, dtype=np.int64) * N
    code, _, csr = _core.bag_csr(
        np.ascontiguousarray(offsets.numpy()), idx.shape[0], include_last_offset
    )
    if code:  # the forward checked them: edited in place since (a valid edit is not seen)
        raise RuntimeError(
            "embtab.optim: the offsets of this forward were changed in place before its "
            "backward and are no longer valid bag offsets; no row was stepped"
        )
    return csr


class _FusedLookup(torch.autograd.Function):
    """Embedding lookup whose backward applies the module's fused optimizer step in place and
    returns no gradient for the weight."""

    @staticmethod
    def forward(ctx, weight, psw, module, idx, offsets, padding_idx, bag, rows=None, csr=None):
        ctx.module, ctx.idx, ctx.offsets, ctx.padding_idx, ctx.bag, ctx.rows = (
            module,
            idx,
            offsets,
            padding_idx,
            bag,
            rows,
        )
        # the forward's CSR (the bags it pooled): the backward steps those bags. Contiguous
        # offsets, which torch's embedding_bag keeps for its backward as they are, are kept with
        # their version, and refused if changed in place since, as torch refuses them; torch
        # copies other offsets, and so accepts a change to them, as this does.
        ctx.csr = csr if bag and idx.dim() == 1 else None
        ctx.offsets_version = (
            _version(offsets) if ctx.csr is not None and offsets.is_contiguous() else None
        )
        ctx.max_indices = None
        ctx.zero_row = module.num_embeddings
        ctx.open = OpenLookups((module,))
        if bag and module.mode == "max":
            flat = idx.reshape(-1)
            if module.max_norm is not None:  # as F.embedding_bag does before pooling
                torch.embedding_renorm_(weight, flat, module.max_norm, module.norm_type)
            off = (
                offsets
                if idx.dim() == 1
                else torch.arange(0, flat.numel(), max(idx.shape[1], 1))[: idx.shape[0]]
            )
            out, _, _, ctx.max_indices = torch.embedding_bag(
                weight,
                flat,
                off,
                False,
                _MODE_MAX,
                False,
                None,
                module.include_last_offset and idx.dim() == 1,
                -1 if padding_idx is None else padding_idx,
            )
        else:
            # the weight detached: torch's embedding_bag then skips what only its own backward
            # reads (the bag of each entry), which this Function's backward does not use
            out = _plain(module, idx, offsets, psw, padding_idx, bag, weight.detach())
        # The gradient of per_sample_weights reads the rows as this forward read them: a
        # backward pass through another graph (or this one, retained) may step them before
        # this lookup's backward runs, so they are kept now when that gradient will be asked
        # for. (The lookups of one pass step only when it ends.)
        ctx.rows_read = (
            weight.detach()[idx.reshape(-1)] if psw is not None and psw.requires_grad else None
        )
        ctx.save_for_backward(psw)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        module, idx, bag = ctx.module, ctx.idx, ctx.bag
        if module.num_embeddings != ctx.zero_row:
            # The rows of this graph may now belong to other IDs (the old zero row does).
            raise RuntimeError(
                f"embtab.optim: the module grew ({ctx.zero_row} -> {module.num_embeddings} rows) "
                "between this forward and its backward; a graph built before a growth cannot be "
                "backpropagated (pre-size num_embeddings for several forwards per backward)"
            )
        (psw,) = ctx.saved_tensors
        weight = module.weight
        if grad_out.dtype != weight.dtype:
            grad_out = grad_out.to(weight.dtype)
        if not bag:
            csr = None
        elif ctx.csr is not None:
            if ctx.offsets_version is not None and _version(ctx.offsets) != ctx.offsets_version:
                raise RuntimeError(
                    "embtab.optim: the offsets of this forward were changed in place before its "
                    "backward; no row was stepped (keep the offsets of a forward as they are "
                    "until its backward has run)"
                )
            csr = ctx.csr
        else:  # a traced forward, whose check did not read the offsets
            csr = _csr(idx, ctx.offsets, module.include_last_offset)
        grad_psw = None
        if ctx.needs_input_grad[1]:
            flat = idx.reshape(-1)
            bag_of = torch.repeat_interleave(
                torch.arange(len(csr) - 1), torch.from_numpy(np.diff(csr))
            )
            live = flat != module.num_embeddings
            read = ctx.rows_read if ctx.rows_read is not None else weight.detach()[flat]
            grad_psw = (grad_out[bag_of] * read).sum(1) * live
            grad_psw = grad_psw.reshape(idx.shape).to(psw.dtype)
        alone = ctx.open.close()
        if ctx.needs_input_grad[0] and will_step(ctx):
            rows = ctx.rows if ctx.rows is not None else idx.reshape(-1).numpy()
            if ctx.max_indices is not None:
                counts = np.add.reduceat(
                    np.append(rows != module.num_embeddings, False), csr[:-1]
                ) * (np.diff(csr) > 0)
                max_rows, g = _max_row_grads(ctx.max_indices, grad_out.contiguous(), counts > 0)
                update = (module, max_rows, g, None, None, False)
            else:
                update = (
                    module,
                    rows,
                    grad_rows(grad_out, weight.shape[1]),
                    csr,
                    None if psw is None else psw.detach().reshape(-1).contiguous().numpy(),
                    bag and module.mode == "mean",
                )
            step_or_queue([update], None, alone)
        return None, grad_psw, None, None, None, None, None, None, None


def _version(t) -> Optional[int]:
    """``t``'s version counter (bumped by every in-place change torch makes), or None where it
    has none (an inference tensor, not a tensor)."""
    try:
        return t._version
    except (AttributeError, RuntimeError):
        return None


def fused_of(module) -> "FusedOptimizer":
    """``module.optimizer`` (not None), checked to be a fused optimizer whose state the module
    holds: the optimizer is fixed at construction, where its state buffers are registered,
    and an object assigned to the attribute later is refused here (TypeError for one that is
    not an :mod:`embtab.optim` optimizer, ValueError for one whose ``opt_*`` buffers the
    module lacks, e.g. Adagrad in place of RowWiseAdagrad) before a forward changes
    anything. Another optimizer of the same state (new hyperparameters) is taken. The answer
    is kept on the module until the attribute changes."""
    opt = module.optimizer
    if module.__dict__.get("_fused_checked") is opt:
        return opt
    name = type(module).__name__
    if not isinstance(opt, FusedOptimizer):
        raise TypeError(
            f"{name}.optimizer must be None or an embtab.optim optimizer, got "
            f"{type(opt).__name__}; torch optimizers go over model.parameters()"
        )
    missing = [n for n in ["opt_step"] + ["opt_" + s for s, _, _ in opt._states()]
               if n not in module._buffers]
    if missing:
        raise ValueError(
            f"{name}.optimizer is an embtab.optim.{type(opt).__name__}, whose state "
            f"({', '.join(missing)}) this module does not hold: a module keeps the state of the "
            f"fused optimizer it was built with (optimizer=...); to change optimizers, build "
            f"the module with the new one and load the weights"
        )
    module.__dict__["_fused_checked"] = opt
    return opt


def grad_rows(grad: Tensor, d: int) -> np.ndarray:
    """``grad`` as the ``[rows, d]`` NumPy array the C++ step reads, copied only when its rows
    are not contiguous: a column slice of a wider gradient is read in place (its row stride),
    a gradient broadcast over the rows (row stride 0) as one row, and one value broadcast over
    rows and columns (a ``sum()`` loss's, strides (0, 0)) as one row of it (made by the step)."""
    g = grad if grad.dim() == 2 else grad.reshape(-1, d)
    s0, s1 = g.stride()
    if s0 < 0 or (g.shape[1] > 1 and s1 != 1 and (s0 != 0 or s1 != 0)):
        g = g.contiguous()
    return g.detach().numpy()


_JOB_DEFAULTS = dict(eps=0.0, momentum=0.0, nesterov=False, weight_decay=0.0, beta1=0.9,
                    beta2=0.999)


def _job(module, rows, grad, offsets, per_sample_weights, mean: bool,
         resolved: Optional[dict] = None, scale: Optional[bool] = None) -> tuple:
    """The 18 leading arguments of ``_core.fused_step`` for one step of ``module``'s optimizer.
    ``resolved``: a dict kept by the caller across the modules of one step, so that an
    optimizer shared by many modules (a collection's) resolves each step number, and lists
    its state buffers, once. ``scale``: whether the step divides a row's gradient by its
    count (default ``module.scale_grad_by_freq``)."""
    opt = module.optimizer
    bufs = module._buffers
    step = int(bufs["opt_step"]) + 1
    key = (id(opt), step)
    got = None if resolved is None else resolved.get(key)
    if got is None:
        got = ({**_JOB_DEFAULTS, **opt._resolved(step)},
               ["opt_" + n for n, _, _ in opt._states()])
        if resolved is not None:
            resolved[key] = got
    kw, names = got
    states = [bufs[n].numpy() for n in names]
    states += [None] * (2 - len(states))
    return (
        weight_of(module).detach().numpy(), rows, grad, offsets, per_sample_weights, bool(mean),
        bool(module.scale_grad_by_freq if scale is None else scale), module.num_embeddings,
        states[0], states[1], opt.kind,
        kw["lr"], kw["eps"], kw["momentum"], kw["nesterov"], kw["weight_decay"], kw["beta1"],
        kw["beta2"],
    )


def fused_update_many(updates: list, num_threads: int) -> None:
    """One step of each module's fused optimizer, all in one native call (``_core.fused_steps``):
    ``updates`` is a list of ``(module, rows, grad, offsets, per_sample_weights, mean)`` as
    :func:`fused_update` takes them, one per module (a module may appear once). The modules'
    steps run side by side on ``num_threads`` threads, each on one thread; every update is
    checked before any runs, so a bad one changes nothing. Each module's ``opt_step`` counts
    its step."""
    if not updates:
        return
    resolved: dict = {}
    jobs = [_job(*u, resolved=resolved) for u in updates]
    _core.fused_steps(jobs, num_threads=num_threads)
    torch._foreach_add_([u[0]._buffers["opt_step"] for u in updates], 1)  # one call for all


def fused_update(
    module,
    rows: np.ndarray,
    grad: np.ndarray,
    offsets: Optional[np.ndarray],
    per_sample_weights: Optional[np.ndarray],
    mean: bool,
    scale: Optional[bool] = None,
) -> None:
    """Apply one step of ``module.optimizer`` to ``module.weight`` in place and count it in
    ``module.opt_step``: the rows ``rows`` (int64 ``[n]``) with gradient ``grad`` of each bag
    (``[num_bags, d]`` with CSR ``offsets`` ``[num_bags + 1]`` over ``rows``, per entry scaled by
    ``per_sample_weights`` and, with ``mean``, by 1 / the bag's entries other than the zero row)
    or of each entry (``offsets`` None: ``[n, d]``). The zero row ``module.num_embeddings`` is
    skipped; ``scale`` overrides ``module.scale_grad_by_freq``. Raises what
    ``_core.fused_step`` raises (before anything is written)."""
    job = _job(module, rows, grad, offsets, per_sample_weights, mean, scale=scale)
    _core.fused_step(*job, num_threads=module.num_threads)
    module.opt_step.add_(1)


# One step per module per backward ///////////////////////////////////////////////////////////
#
# A module looked up several times in one graph (a table read for users and items, or for
# positives and negatives) must take one step on the sum of those lookups' gradients, as the
# module with an unfused torch optimizer does (the gradients accumulate in .grad, then one
# step). Each training lookup counts itself open on its modules (OpenLookups) until its
# backward runs or its graph is freed. A lookup node that finds no other open lookup of its
# modules, and none queued in this backward pass, steps at once, as a single lookup always
# did. Otherwise it queues its update, with a private copy of its gradient (another node of
# the pass may change that gradient in place later), and the first node of the pass to queue
# registers a final callback of the pass (autograd's queue_callback), which runs every queued
# update once the pass has computed all gradients: a module queued by several nodes takes one
# step on all their gradients. A pass that fails before its end runs none of its queued
# updates (the callback is dropped with it, and so is the queue, which the registry holds
# weakly). Known limit: a reentrant torch.utils.checkpoint region is a backward pass of its
# own, which steps its modules when it ends (use_reentrant=False has no such pass).

_task_id = getattr(torch._C, "_current_graph_task_id", None)
_will_execute = getattr(torch._C, "_will_engine_execute_node", None)
_open_lock = threading.RLock()  # re-entrant: a garbage collection inside it may free a claim


class OpenLookups:
    """A forward's claim that its modules have a lookup whose backward has not run: counted in
    each module's ``_open_lookups`` until :meth:`close` (its backward) or until the graph that
    holds it is freed."""

    __slots__ = ("modules", "live")

    def __init__(self, modules) -> None:
        self.modules, self.live = tuple(modules), True
        with _open_lock:
            for m in self.modules:
                m.__dict__["_open_lookups"] = m.__dict__.get("_open_lookups", 0) + 1

    def close(self) -> bool:
        """Release the claim; True when it was live and no other lookup of these modules is
        open. A claim closed already (a graph backpropagated again, ``retain_graph``) answers
        False: its other lookups, closed too, may run in this pass, so it queues."""
        with _open_lock:
            if not self.live:
                return False
            self.live = False
            for m in self.modules:
                m.__dict__["_open_lookups"] -= 1
            return all(m.__dict__.get("_open_lookups", 0) == 0 for m in self.modules)

    def __del__(self) -> None:
        self.close()


def will_step(ctx) -> bool:
    """Whether this backward pass asks for the weight's gradient (input 0 of the lookup node):
    ``torch.autograd.grad`` or ``backward(inputs=...)`` for other inputs only (the
    ``per_sample_weights``) must not step the table, as an unfused module then gets no
    ``.grad``."""
    if _will_execute is None:
        return True
    node = ctx.next_functions[0][0]
    return node is not None and bool(_will_execute(node))


class _Queue(list):
    """The updates queued in one backward pass: ``(updates, num_threads)`` per lookup node,
    and the ids of the modules they step."""

    def __init__(self) -> None:
        super().__init__()
        self.modules: set = set()


_queues: "weakref.WeakValueDictionary[int, _Queue]" = weakref.WeakValueDictionary()
_queues_lock = threading.Lock()


def _queue_key() -> int:
    return _task_id() if _task_id is not None else threading.get_ident()


def step_or_queue(updates: list, num_threads: Optional[int], alone: bool) -> None:
    """One lookup node's steps (``fused_update_many``'s ``updates``; ``num_threads`` None for
    one module's :func:`fused_update`): at once when ``alone`` (no other lookup of its modules
    open) and none of its modules has an update queued in this pass, else queued to the end
    of the pass (:func:`step_after_backward`). Called from a backward node."""
    if not updates:
        return
    if alone:
        queue = _queues.get(_queue_key())
        if queue is None or not any(id(u[0]) in queue.modules for u in updates):
            _step_now(updates, num_threads)
            return
    step_after_backward([(u[0], u[1], _own_copy(u[2]), *u[3:]) for u in updates], num_threads)


def _step_now(updates: list, num_threads: Optional[int]) -> None:
    """Run one lookup node's updates: one module's :func:`fused_update` (``num_threads``
    None), or a collection's tables in one :func:`fused_update_many` call."""
    if num_threads is None:
        for u in updates:
            fused_update(*u)
    else:
        fused_update_many(updates, num_threads)


def _own_copy(grad: np.ndarray) -> np.ndarray:
    """``grad`` as an array no other node can change: a copy, except a gradient broadcast over
    its rows (row stride 0), of which one row is copied and broadcast again."""
    if grad.ndim == 2 and grad.shape[0] > 1 and grad.strides[0] == 0:
        return np.broadcast_to(grad[:1].copy(), grad.shape)
    return np.array(grad, copy=True)


def step_after_backward(updates: list, num_threads: Optional[int]) -> None:
    """Queue one lookup node's steps (as :func:`step_or_queue` takes them, gradients the
    queue's own) to run at the end of the backward pass in progress."""
    if not updates:
        return
    key = _queue_key()
    with _queues_lock:
        queue = _queues.get(key)
        fresh = queue is None
        if fresh:
            queue = _queues[key] = _Queue()
        queue.append((updates, num_threads))
        queue.modules.update(id(u[0]) for u in updates)
    if fresh:
        torch.autograd.Variable._execution_engine.queue_callback(
            lambda: _run_queue(key, queue)
        )


def _run_queue(key: int, queue: _Queue) -> None:
    """Run a backward pass's queued steps: each lookup node's as it queued them, except a
    module queued by several nodes, which takes one step on all their gradients."""
    with _queues_lock:
        if _queues.get(key) is queue:
            del _queues[key]
    if len(queue) == 1:  # one lookup node (each module in it once): its steps as they are
        _step_now(*queue[0])
        return
    seen: dict = {}
    for updates, _ in queue:
        for u in updates:
            seen.setdefault(id(u[0]), []).append(u)
    merged = {k: v for k, v in seen.items() if len(v) > 1}
    for updates, num_threads in queue:
        _step_now([u for u in updates if id(u[0]) not in merged], num_threads)
    for ups in merged.values():
        module = ups[0][0]
        joined = None if module.scale_grad_by_freq else _joined_bags(ups)
        if joined is not None:
            fused_update(module, *joined)
            continue
        parts = [_entry_grads(*u) for u in ups]
        fused_update(module, np.concatenate([r for r, _ in parts]),
                     np.concatenate([g for _, g in parts]), None, None, False, scale=False)


def _joined_bags(ups: list):
    """Several updates of one module as one of bags: ``(rows, grad, offsets,
    per_sample_weights, mean)``, each update's bags after the last one's (an update of single
    entries as bags of one), when they share ``mean`` (a bag's mean divides by its own
    entries, so joining keeps it); None otherwise. Without ``scale_grad_by_freq`` only (its
    counts are per update)."""
    if len({bool(u[5]) for u in ups}) != 1:
        return None
    rows, grads, offs, psws = [], [], [], []
    start = 0
    any_psw = any(u[4] is not None for u in ups)
    for _, r, g, o, w, _ in ups:
        r = np.asarray(r, dtype=np.int64)
        o = np.arange(r.size + 1, dtype=np.int64) if o is None else np.asarray(o, dtype=np.int64)
        rows.append(r)
        grads.append(np.asarray(g))
        offs.append(o[:-1] + start)
        start += int(o[-1])
        if any_psw:
            psws.append(np.ones(r.size, dtype=np.asarray(g).dtype) if w is None else np.asarray(w))
    offs.append(np.array([start], dtype=np.int64))
    return (np.concatenate(rows), np.ascontiguousarray(np.concatenate(grads)),
            np.concatenate(offs), np.concatenate(psws) if any_psw else None, bool(ups[0][5]))


def _entry_grads(module, rows, grad, offsets, per_sample_weights, mean: bool):
    """One update as the gradient of each of its entries that is not the zero row: ``(rows,
    grad [n, d])``, with the bag's gradient, ``per_sample_weights``, ``mean``'s 1 / the bag's
    entries and ``scale_grad_by_freq``'s 1 / the row's count in this update applied, so that
    several updates of one module concatenate into one step (``scale=False``)."""
    rows = np.asarray(rows, dtype=np.int64)
    g = np.asarray(grad)
    if offsets is None:
        bag = np.arange(rows.size)
    else:
        bag = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    live = rows != module.num_embeddings
    ge = g[bag[live]]
    if per_sample_weights is not None:
        ge = ge * np.asarray(per_sample_weights, dtype=g.dtype)[live][:, None]
    if mean and offsets is not None:
        count = np.bincount(bag[live], minlength=len(offsets) - 1)
        ge = ge / count[bag[live]][:, None].astype(g.dtype)
    rows = rows[live]
    if module.scale_grad_by_freq and rows.size:
        _, inv, cnt = np.unique(rows, return_inverse=True, return_counts=True)
        ge = ge / cnt[inv.reshape(-1)][:, None].astype(g.dtype)
    return rows, np.ascontiguousarray(ge, dtype=g.dtype)


def _max_row_grads(max_indices: Tensor, grad_out: Tensor, live_bags: np.ndarray):
    """Summed gradient of each row that won a (bag, dimension) maximum in a bag with at least
    one entry that is not the zero row (torch reports row 0 for the others): (rows, grad [n, d])."""
    d = grad_out.shape[1]
    mi = max_indices.reshape(-1)
    ok = torch.from_numpy(np.repeat(live_bags, d))
    cols = torch.arange(d).repeat(max_indices.shape[0])[ok]
    rows, inv = torch.unique(mi[ok], return_inverse=True)
    g = torch.zeros(rows.numel(), d, dtype=grad_out.dtype)
    g.index_put_((inv, cols), grad_out.reshape(-1)[ok], accumulate=True)
    return rows.numpy(), g.numpy()


# the optimizers ////////////////////////////////////////////////////////////////////////////


class SGD(FusedOptimizer):
    r"""Fused SGD with optional momentum, Nesterov momentum and weight decay.

    Per touched row (``g`` its summed gradient): ``g' = g + weight_decay * w``; with momentum
    ``b = momentum * b + g'`` and ``g' = g' + momentum * b`` (Nesterov) or ``g' = b``; then
    ``w -= lr * g'``: ``torch.optim.SGD`` (``dampening=0``) restricted to the rows the batch
    touched. State: ``opt_momentum_buffer`` (per element) when ``momentum > 0``, else none.

    Parameters
    ----------
    lr : float
        Learning rate (>= 0).
    momentum : float
        Momentum factor in [0, 1).
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0``).
    weight_decay : float
        L2 penalty (>= 0), applied to touched rows only.

    Example::

        >>> import torch, embtab.nn, embtab.optim
        >>> opt = embtab.optim.SGD(lr=0.1, momentum=0.9)
        >>> emb = embtab.nn.CuckooEmbedding(100, 4, optimizer=opt)
        >>> emb(torch.tensor([5, 6])).sum().backward()
        >>> emb.opt_momentum_buffer.shape
        torch.Size([101, 4])

    Not with ``torch.amp.GradScaler`` (loss scaling) nor ``clip_grad_norm_``: the step is
    taken inside backward (see the module's Notes, "Loss scaling and clipping").
    """

    kind = "sgd"

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        values = self._checked(
            dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        )
        self._momentum_state = values["momentum"] > 0
        super().__init__(values)

    # torch.optim.Optimizer's pickling keeps defaults, state and param_groups only: the
    # construction-time choice of a momentum buffer travels too (deepcopy, pickle, torch.save of
    # a module), and is not reset by load_state_dict (which calls __setstate__ as well).
    def __getstate__(self):
        state = super().__getstate__()
        state["_momentum_state"] = self._momentum_state
        return state

    def __setstate__(self, state):
        if "_momentum_state" not in state and "_momentum_state" not in self.__dict__:
            state = {**state, "_momentum_state": state["param_groups"][0]["momentum"] > 0}
        super().__setstate__(state)

    def _states(self):
        # fixed at construction: the modules' buffers do not come and go with a scheduled
        # momentum
        return [("momentum_buffer", True, 0.0)] if self._momentum_state else []

    _fields = (("lr", 0.0, False, None), ("momentum", 0.0, False, 1.0),
               ("weight_decay", 0.0, False, None))
    _keys = ("lr", "momentum", "weight_decay", "nesterov")

    def _check_more(self, values: dict, name) -> None:
        nesterov = values.get("nesterov")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"{name('nesterov')} must be a bool, got {type(nesterov).__name__}")
        values["nesterov"] = bool(nesterov)
        if nesterov and values["momentum"] == 0:
            raise ValueError(f"{name('nesterov')}=True needs {name('momentum')} > 0")
        # (a buffer chosen at construction; unset while the constructor checks its arguments)
        if values["momentum"] > 0 and not self.__dict__.get("_momentum_state", True):
            raise ValueError(
                f"momentum is {values['momentum']} but this SGD was built with momentum=0, so its "
                f"modules keep no momentum buffer (a scheduler that cycles momentum, such as "
                f"OneCycleLR, sets it): build embtab.optim.SGD with momentum > 0 to change it later"
            )

    def _resolved(self, step):
        g = self._group()
        return dict(
            lr=float(g["lr"]),
            momentum=float(g["momentum"]),
            nesterov=bool(g["nesterov"]),
            weight_decay=float(g["weight_decay"]),
        )


class Adagrad(FusedOptimizer):
    r"""Fused Adagrad with the semantics of ``torch.optim.Adagrad`` on a sparse gradient.

    Per touched row: ``s += g**2``; ``w -= clr * g / (sqrt(s) + eps)`` with
    ``clr = lr / (1 + (t - 1) * lr_decay)``, ``t`` the module's fused step count. State:
    ``opt_sum`` (per element, starting at ``initial_accumulator_value``).

    Parameters
    ----------
    lr : float
        Learning rate (>= 0).
    lr_decay : float
        Learning-rate decay per step (>= 0).
    initial_accumulator_value : float
        Starting value of every accumulator (>= 0), also for rows handed to new IDs.
    eps : float
        Added to the denominator (> 0).

    Example::

        >>> import torch, embtab.nn, embtab.optim
        >>> opt = embtab.optim.Adagrad(lr=0.5)
        >>> emb = embtab.nn.HashedEmbeddingBag(100, 4, mode="sum", optimizer=opt)
        >>> emb(torch.tensor([[1, 2]])).sum().backward()
        >>> int((emb.opt_sum != 0).any(1).sum())      # two rows touched
        2

    Not with ``torch.amp.GradScaler`` (loss scaling) nor ``clip_grad_norm_``: the step is
    taken inside backward (see the module's Notes, "Loss scaling and clipping").
    """

    kind = "adagrad"

    def __init__(
        self,
        lr: float = 0.01,
        lr_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ):
        super().__init__(self._checked(dict(
            lr=lr, lr_decay=lr_decay, initial_accumulator_value=initial_accumulator_value,
            eps=eps)))

    _fields = (("lr", 0.0, False, None), ("lr_decay", 0.0, False, None),
               ("initial_accumulator_value", 0.0, False, None), ("eps", 0.0, True, None))
    _keys = ("lr", "lr_decay", "initial_accumulator_value", "eps")

    def _states(self):
        return [("sum", True, self.param_groups[0]["initial_accumulator_value"])]

    def _resolved(self, step):
        g = self._group()
        return dict(lr=float(g["lr"]) / (1 + (step - 1) * float(g["lr_decay"])),
                    eps=float(g["eps"]))


class RowWiseAdagrad(FusedOptimizer):
    r"""Fused row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``): one accumulator per row.

    Per touched row (``d`` = embedding_dim): ``s += sum_j g_j**2 / d``;
    ``w -= lr / (sqrt(s) + eps) * g``. State: ``opt_row_sum`` (one value per row: 4 bytes for
    a float32 weight, 8 for float64), starting at ``initial_accumulator_value``.

    Parameters
    ----------
    lr : float
        Learning rate (>= 0).
    eps : float
        Added to the denominator (> 0; FBGEMM's default 1e-8).
    initial_accumulator_value : float
        Starting value of every row's accumulator (>= 0).

    Example::

        >>> import torch, embtab.nn, embtab.optim
        >>> opt = embtab.optim.RowWiseAdagrad(lr=0.1)
        >>> emb = embtab.nn.CuckooEmbeddingBag(100, 4, mode="sum", optimizer=opt)
        >>> emb(torch.tensor([[1, 2]])).sum().backward()
        >>> emb.opt_row_sum.shape
        torch.Size([101])

    Not with ``torch.amp.GradScaler`` (loss scaling) nor ``clip_grad_norm_``: the step is
    taken inside backward (see the module's Notes, "Loss scaling and clipping").
    """

    kind = "rowwise_adagrad"

    def __init__(self, lr: float = 0.01, eps: float = 1e-8, initial_accumulator_value: float = 0.0):
        super().__init__(self._checked(dict(
            lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value)))

    _fields = (("lr", 0.0, False, None), ("eps", 0.0, True, None),
               ("initial_accumulator_value", 0.0, False, None))
    _keys = ("lr", "eps", "initial_accumulator_value")

    def _states(self):
        return [("row_sum", False, self.param_groups[0]["initial_accumulator_value"])]

    def _resolved(self, step):
        g = self._group()
        return dict(lr=float(g["lr"]), eps=float(g["eps"]))


class Adam(FusedOptimizer):
    r"""Fused lazy Adam with the semantics of ``torch.optim.SparseAdam``.

    Per touched row: ``m += (g - m)(1 - beta1)``; ``v += (g**2 - v)(1 - beta2)``;
    ``w -= lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)``, ``t`` the module's
    fused step count. State: ``opt_exp_avg`` and ``opt_exp_avg_sq`` (per element).

    Parameters
    ----------
    lr : float
        Learning rate (>= 0).
    betas : (float, float)
        Decay rates in [0, 1).
    eps : float
        Added to the denominator (> 0).

    Example::

        >>> import torch, embtab.nn, embtab.optim
        >>> emb = embtab.nn.CuckooEmbedding(100, 4, optimizer=embtab.optim.Adam(lr=1e-3))
        >>> emb(torch.tensor([7])).sum().backward()
        >>> int(emb.opt_step)
        1

    Not with ``torch.amp.GradScaler`` (loss scaling) nor ``clip_grad_norm_``: the step is
    taken inside backward (see the module's Notes, "Loss scaling and clipping").
    """

    kind = "adam"

    def __init__(self, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(self._checked(dict(lr=lr, betas=betas, eps=eps)))

    def _states(self):
        return [("exp_avg", True, 0.0), ("exp_avg_sq", True, 0.0)]

    _fields = (("lr", 0.0, False, None), ("eps", 0.0, True, None))
    _keys = ("lr", "eps", "betas")

    def _check_more(self, values: dict, name) -> None:
        betas = values.get("betas")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{name('betas')} must be a pair of floats, got {betas!r}")
        values["betas"] = tuple(_check_float(f"{name('betas')}[{i}]", b, 0.0, hi=1.0)
                                for i, b in enumerate(betas))

    def _resolved(self, step):
        g = self._group()
        b1, b2 = (float(b) for b in g["betas"])
        lr = float(g["lr"])
        alpha = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        return dict(lr=alpha, eps=float(g["eps"]), beta1=b1, beta2=b2)
