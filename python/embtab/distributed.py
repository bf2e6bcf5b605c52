"""Collisionless embedding modules sharded by ID over a ``torch.distributed`` process group.

:class:`ShardedCuckooEmbedding` / :class:`ShardedCuckooEmbeddingBag` take the constructor and
forward arguments of :class:`embtab.nn.CuckooEmbedding` / :class:`embtab.nn.CuckooEmbeddingBag`
plus a process group. Rank ``r`` of a group of ``W`` owns the IDs with
``mix64(id, shard_seed) % W == r`` (the ``hashed_rows`` hash of the C++ core, keyed by a seed
distinct from the one the tables bucket by) and keeps them in its own local
:class:`embtab.nn.CuckooEmbedding` (``module.shard``): its own :class:`embtab.CuckooTable`,
weight shard, growth, eviction and admission, exactly as the single-process module.

One forward on every rank (all ranks call it, in the same order, as with any collective)::

    ids on rank s --bucket by owner (stable)--> all_to_all(counts), all_to_all(IDs)
    owner: shard(received IDs)     (lookup, insert-on-miss in training mode; one batch per step)
    vectors --all_to_all back--> rank s, restored to the input order

and backward sends the gradients the reverse way (one ``all_to_all``), where they accumulate
into the owner's ``shard.weight``, so a plain local optimizer over ``module.parameters()``
updates the owner's rows. With ``optimizer=`` (an :mod:`embtab.optim` fused optimizer, one
object per module on each rank) the owner's shard instead sums each row's gradients and steps
in place in that backward; its state is saved and resharded by ID with the checkpoint.
Collectives are ``all_to_all_single`` with uneven splits, which the gloo backend supports on
CPU tensors (checked with torch 2.13); with another backend (NCCL) the messages live on the
weight's device (that path is untested so far).

Since a new ID's vector depends on ``(seed, ID)`` only and every occurrence of an ID reaches its
owner in one batch, ``W`` ranks each feeding their part of a global batch compute the same
vectors, gradients and (after optimizer steps) weights per ID as one
:class:`~embtab.nn.CuckooEmbedding` fed the concatenated batch with the summed loss. With
``min_count > 1`` that holds for admission only while the count-min sketch has no
collisions: each owner's sketch (same shape and hashing) counts only the IDs it owns, so
sketch cells shared with IDs of other owners count less than one process's sketch does. An
ID whose estimate one process's collisions lift to ``min_count`` is admitted later by its
owner, if at all (an owner's estimate can also come out higher, through the further sightings
of such an ID admitted later, or with eviction); such an ID gets its row, and trains, from
another step than in one process.

Combining with DDP: the sharded module's parameters are model-parallel; exclude them from
``DistributedDataParallel`` (wrap only the dense part, or call
``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)`` with
:func:`sharded_parameter_names`), and give them their own optimizer (or the same one: each
rank's optimizer then updates its own shard and DDP's averaged dense parameters).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import weakref
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from embtab import _core
from embtab._checks import check_int, check_seed
from embtab._hashing import mix64
from embtab._modules import as_id_array as _as_id_array
from embtab._modules import check_bag_args as _check_bag_args
from embtab._modules import check_bag_config as _check_bag_config
from embtab._modules import row_state as _row_state
from embtab.nn import CuckooEmbedding, OnFull
from embtab.optim import MAX_OPT_STEP, NONNEGATIVE_STATES

__all__ = [
    "ShardedCommError",
    "ShardedCuckooEmbedding",
    "ShardedCuckooEmbeddingBag",
    "owner_of",
    "sharded_parameter_names",
]

_U64 = 1 << 64
# Default shard_seed = mix64(seed, _SHARD_SALT): never the seed the tables bucket IDs by.
_SHARD_SALT = 0x5348415244  # "SHARD"
_MAGIC = b"EMBTSHD1"
_FORMAT_VERSION = 2
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")

# Every call of a sharded module that talks to its peers (forward, backward, save, load) starts
# with one all_to_all of a fixed-size int64 header: the call (phase, module index, sequence
# number), this rank's element count for the peer, and the module's configuration. Equal shapes
# on every rank, so the exchange itself cannot mismatch; each rank then compares the headers it
# received with its own and raises ShardedCommError naming the first field that differs,
# instead of running a mismatched collective (which gloo answers by aborting the process).
# An eval-mode forward sends phase 5: the owners' mode decides whether unknown IDs get rows,
# so every rank must be in the same mode (a rank left in eval() would otherwise serve zero
# vectors to the others' training IDs without any error).
_PHASES = {1: "forward", 2: "backward", 3: "save", 4: "load", 5: "forward (eval mode)"}
_HEADER = ("magic", "phase", "module_index", "seq", "count", "world_size", "embedding_dim", "dtype",
           "kind", "mode", "shard_seed", "seed", "dedup", "min_count", "on_full", "padding_id",
           "max_norm", "scale_grad_by_freq")
# The fused optimizers (embtab.optim) a shard may train with, numbered for the header: "kind"
# holds 1 for a bag module, 0 otherwise, plus 2 x the optimizer's code (0: none), so that the
# header keeps its size (a rank of an earlier embtab still exchanges headers with this one and
# sees a "kind" mismatch, not a gloo abort, when a fused optimizer is used).
_FUSED_KINDS = ("sgd", "adagrad", "rowwise_adagrad", "adam")

_HEADER_MAGIC = 0x454D4254  # "EMBT"
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Sharded modules are numbered per process group (by its members' global ranks): a module
# over a subgroup is not built on the ranks outside it, so one process-wide count would differ
# between ranks for every module built after it.
_MODULE_COUNTERS: dict = {}
_FUSED_AND_TORCH = ("this sharded module trains with a fused optimizer (optimizer= at construction), "
                    "whose state is saved and loaded with the module: pass no optimizer to save() "
                    "and load()")
# (real directory, name) -> the module that last saved there in this process.
_SAVED_BY: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _fused_name(code: int) -> str:
    """A header's fused optimizer code as words: "none", or the kind and its state count."""
    if code == 0:
        return "none"
    kind, states = (code - 1) % 8, (code - 1) // 8
    name = _FUSED_KINDS[kind] if kind < len(_FUSED_KINDS) else f"unknown kind {kind}"
    return f"{name} ({states} state buffer{'s' if states != 1 else ''})"


class ShardedCommError(RuntimeError):
    """A collective of a sharded module failed: a peer died, stalled past the process group's
    timeout, or the ranks disagreed on the sequence of calls. The message names the step."""


def owner_of(ids: Tensor, world_size: int, shard_seed: int) -> Tensor:
    """Owning rank of each raw ID (same shape, int64): ``mix64(id, shard_seed) % world_size``."""
    flat, shape = _as_id_array(ids, "ids")
    ws = check_int(world_size, "world_size", min=1)
    seed = check_int(shard_seed, "shard_seed") % _U64
    return torch.from_numpy(_core.hashed_rows(flat, ws, seed, 1)).reshape(shape)


def sharded_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of every sharded module inside ``model`` (for DDP's
    ``_set_params_and_buffers_to_ignore_for_model``)."""
    names = []
    for prefix, m in model.named_modules():
        if isinstance(m, _ShardedBase):
            for n, _ in list(m.named_parameters()) + list(m.named_buffers()):
                names.append(f"{prefix}.{n}" if prefix else n)
    return names


def _collective(what: str, group, fn):
    try:
        return fn()
    except RuntimeError as e:  # DistBackendError, gloo connection and timeout errors
        rank, ws = dist.get_rank(group), dist.get_world_size(group)
        raise ShardedCommError(
            f"embtab.distributed: {what} failed on rank {rank} of {ws}: a peer process died, stalled "
            f"past the process group's timeout (init_process_group(timeout=...)), or called the "
            f"sharded module out of step: {e}") from e


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows whose backward is the reverse ``all_to_all_single``."""

    @staticmethod
    def forward(ctx, x, in_splits, out_splits, group, traffic, module, seq):
        ctx.in_splits, ctx.out_splits, ctx.group, ctx.traffic = in_splits, out_splits, group, traffic
        # weakly: a graph kept after its backward (a loss still referenced) must not keep a
        # module the user dropped alive (its name would block a successor's save)
        ctx.module, ctx.seq = weakref.ref(module), seq
        y = x.new_empty((sum(out_splits), *x.shape[1:]))
        _collective("all_to_all of vectors (forward)", group,
                    lambda: dist.all_to_all_single(y, x.contiguous(), out_splits, in_splits, group=group))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        # The gradients go back the way the vectors came: check that every peer is in the
        # backward of the same forward, with the row counts that forward exchanged. Not
        # differentiable itself: a backward through a gradient taken with create_graph=True
        # (a gradient penalty on the weight) raises instead of silently dropping that term.
        module = ctx.module()
        if module is None:
            raise RuntimeError("embtab.distributed: the sharded module of this graph was deleted "
                               "before its backward")
        module._handshake(2, ctx.seq, list(ctx.out_splits), expect=list(ctx.in_splits))
        gx = gy.new_empty((sum(ctx.in_splits), *gy.shape[1:]))
        _collective("all_to_all of gradients (backward)", ctx.group,
                    lambda: dist.all_to_all_single(gx, gy.contiguous(), ctx.in_splits, ctx.out_splits,
                                                   group=ctx.group))
        r = dist.get_rank(ctx.group)
        row = gy[0].numel() * gy.element_size() if gy.shape[0] else 0
        ctx.traffic["grad_bytes"] += (sum(ctx.out_splits) - ctx.out_splits[r]) * row
        ctx.traffic["count_bytes"] += (len(ctx.out_splits) - 1) * 8 * len(_HEADER)
        return gx, None, None, None, None, None, None


def _shard_name(name: str, rank: int, world_size: int, token: str) -> str:
    return f"{name}.shard-{rank:05d}-of-{world_size:05d}.{token}.embtab"


def _manifest_name(name: str) -> str:
    return f"{name}.manifest.json"


def _manifest_checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _refuse(path: str, what: str):
    raise ValueError(f"embtab.distributed: {path} {what}")


def _read_manifest(path: str) -> dict:
    """The manifest at ``path``, its checksum and structure verified (ValueError naming
    ``path``; FileNotFoundError when it does not exist)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"embtab.distributed: checkpoint manifest {path} is missing")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        m = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        _refuse(path, f"is not a checkpoint manifest (not JSON: {e})")
    if not isinstance(m, dict) or not isinstance(m.get("checksum"), str):
        _refuse(path, "is not a checkpoint manifest (no checksum)")
    if m["checksum"] != _manifest_checksum(m):
        _refuse(path, "is corrupt (checksum mismatch)")
    if m.get("format_version") != _FORMAT_VERSION:
        _refuse(path, f"has format_version {m.get('format_version')!r}, expected {_FORMAT_VERSION}")
    for key, typ in (("name", str), ("token", str), ("world_size", int), ("fingerprint", dict),
                     ("shards", list)):
        if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
            _refuse(path, f"lacks a valid {key!r} (got {m.get(key)!r})")
    ws = m["world_size"]
    if ws < 1 or len(m["shards"]) != ws:
        _refuse(path, f"lists {len(m['shards'])} shards for world_size {ws}")
    for i, e in enumerate(m["shards"]):
        want = _shard_name(m["name"], i, ws, m["token"])
        if (not isinstance(e, dict) or e.get("rank") != i or e.get("file") != want
                or not isinstance(e.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", e["sha256"])
                or not isinstance(e.get("num_ids"), int) or e["num_ids"] < 0):
            _refuse(path, f"has an invalid entry for shard {i} (expected rank {i}, file {want!r}, "
                          f"a sha256 and num_ids): {e!r}")
    return m


def _read_shard(path: str, entry: dict, manifest: dict, shard_seed: int, dim: int,
                padding: Optional[int]) -> dict:
    """Payload of the shard file ``path`` listed by ``entry`` of ``manifest``, cross-checked
    against it (checksum, rank, world size, name, token, ID count, ownership, shapes, values:
    see :func:`_check_payload`); ValueError naming ``path`` otherwise."""
    if not os.path.isfile(path):
        _refuse(path, "is missing (listed in the checkpoint manifest)")
    with open(path, "rb") as f:
        data = f.read()
    head = len(_MAGIC) + 32
    if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
        _refuse(path, "is not an embtab shard file (bad magic or truncated)")
    digest, payload = data[len(_MAGIC):head], data[head:]
    if hashlib.sha256(payload).digest() != digest:
        _refuse(path, "is corrupt (checksum mismatch)")
    if digest.hex() != entry["sha256"]:
        _refuse(path, "does not belong to this checkpoint (its checksum differs from the one in "
                      "the manifest; a later save was interrupted?)")
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
        _refuse(path, f"cannot be read ({type(e).__name__}: {e})")
    ws = manifest["world_size"]
    for key, want in (("format_version", _FORMAT_VERSION), ("rank", entry["rank"]), ("world_size", ws),
                      ("name", manifest["name"]), ("token", manifest["token"])):
        if not isinstance(obj, dict) or obj.get(key) != want:
            _refuse(path, f"has {key}={obj.get(key) if isinstance(obj, dict) else None!r}, the "
                          f"manifest says {want!r}")
    _check_payload(obj, path, entry["num_ids"], dim, ws, entry["rank"], shard_seed, padding)
    return obj


def _check_payload(obj: dict, path: str, n: int, dim: int, ws: int, rank: int, shard_seed: int,
                   padding: Optional[int]) -> None:
    """Check the shard payload ``obj`` of rank ``rank`` of ``ws`` (read from a file by
    :func:`_read_shard`, or about to be saved by ``save()``): ``n`` distinct int64 IDs the rank
    owns, none of them ``padding`` (the padding ID as int64, or None), vectors ``(n, dim)``,
    counters, per-ID eviction state (non-negative, not after ``num_steps``), admission sketch
    and optimizer state; ValueError naming ``path`` otherwise."""
    ids, vecs = obj.get("ids"), obj.get("vectors")
    if not (isinstance(ids, Tensor) and ids.dtype == torch.int64 and tuple(ids.shape) == (n,)):
        _refuse(path, f"must hold {n} int64 ids, got {getattr(ids, 'dtype', ids)} "
                      f"{tuple(getattr(ids, 'shape', ()))}")
    if not (isinstance(vecs, Tensor) and tuple(vecs.shape) == (n, dim) and vecs.dtype.is_floating_point):
        _refuse(path, f"must hold vectors of shape ({n}, {dim}), got {tuple(getattr(vecs, 'shape', ()))}")
    c = obj.get("counters")
    names = ("num_steps", "num_admissions", "num_evictions", "num_growths")
    if not (isinstance(c, dict) and all(isinstance(c.get(k), int) and not isinstance(c[k], bool)
                                        and 0 <= c[k] < 2**63 for k in names)):
        _refuse(path, f"lacks valid counters {names} (ints in [0, 2**63))")
    if "admission_sketch" in obj and not (isinstance(obj["admission_sketch"], Tensor)
                                          and obj["admission_sketch"].dtype == torch.int64
                                          and obj["admission_sketch"].dim() == 2):
        _refuse(path, "has an admission_sketch that is not a 2-D int64 tensor")
    if "admission_sketch" in obj and bool((obj["admission_sketch"] < 0).any()):
        _refuse(path, "has an admission_sketch with negative counts")
    for k in ("row_last_step", "row_count"):
        if k in obj and not (isinstance(obj[k], Tensor) and obj[k].dtype == torch.int64
                             and tuple(obj[k].shape) == (n,)):
            _refuse(path, f"has {k} that is not {n} int64 values (one per ID)")
        if k in obj and n and int(obj[k].min()) < 0:
            _refuse(path, f"has {k} with negative values ({int(obj[k].min())})")
    if "row_last_step" in obj and n and int(obj["row_last_step"].max()) > c["num_steps"]:
        _refuse(path, f"has row_last_step {int(obj['row_last_step'].max())}, beyond its "
                      f"num_steps = {c['num_steps']}")
    fused = obj.get("fused")
    if fused is not None:
        if not (isinstance(fused, dict) and isinstance(fused.get("type"), str)
                and isinstance(fused.get("step"), int) and not isinstance(fused.get("step"), bool)
                and 0 <= fused["step"] < MAX_OPT_STEP and isinstance(fused.get("per_row"), dict)):
            _refuse(path, "has fused optimizer state without a valid type, step and per_row")
        for k, v in fused["per_row"].items():
            if not (isinstance(k, str) and isinstance(v, Tensor) and v.dtype.is_floating_point
                    and tuple(v.shape) in ((n, dim), (n,))):
                _refuse(path, f"has fused optimizer state {k!r} of shape "
                              f"{tuple(getattr(v, 'shape', ()))}, expected ({n}, {dim}) or ({n},)")
            if not bool(torch.isfinite(v).all()):
                _refuse(path, f"has fused optimizer state {k!r} that is not finite")
            if k in NONNEGATIVE_STATES and bool((v < 0).any()):
                _refuse(path, f"has fused optimizer state {k!r} with negative values (an "
                              f"accumulator of squares)")
    opt = obj.get("optimizer")
    if opt is not None:
        if not (isinstance(opt, dict) and isinstance(opt.get("per_row"), dict)
                and isinstance(opt.get("other"), dict)):
            _refuse(path, "has torch optimizer state that is not a dict with the dicts "
                          "'per_row' and 'other'")
        for k, v in opt["per_row"].items():
            if not (isinstance(v, Tensor) and tuple(v.shape) == (n, dim)):
                _refuse(path, f"has optimizer state {k!r} of shape "
                              f"{tuple(getattr(v, 'shape', ()))}, expected ({n}, {dim})")
    if len(np.unique(ids.numpy())) != n:
        _refuse(path, "lists an ID twice")
    if padding is not None and bool((ids == padding).any()):
        _refuse(path, f"holds the padding ID {padding} (it reads the zero row and has no vector)")
    if n and np.any(_core.hashed_rows(ids.numpy(), ws, shard_seed, 1) != rank):
        _refuse(path, f"holds IDs that rank {rank} of {ws} does not own")


class _ShardedBase(nn.Module):
    _local_cls = CuckooEmbedding

    def __init__(self, num_embeddings: int, embedding_dim: int, *, process_group: Optional[dist.ProcessGroup] = None,
                 shard_seed: Optional[int] = None, name: Optional[str] = None, local_kwargs: dict):
        super().__init__()
        if local_kwargs.get("expire_after") is not None:  # the header and checkpoints omit it
            raise ValueError("expire_after is not supported by the sharded modules: use "
                             "on_full='evict_lru' with a row cap, or the single-process "
                             "embtab.nn.CuckooEmbedding(Bag)")
        if name is not None and not (isinstance(name, str) and _NAME_RE.fullmatch(name)):
            raise ValueError(f"name must be 1-100 characters from [A-Za-z0-9_.-], got {name!r}")
        if not dist.is_initialized():
            raise RuntimeError("embtab.distributed: torch.distributed is not initialised; call "
                               "torch.distributed.init_process_group(...) before building a sharded module")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or None, got "
                            f"{type(process_group).__name__}")
        num_embeddings = check_int(num_embeddings, "num_embeddings", min=1)
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        seed = check_seed(local_kwargs.get("seed", 0))
        self.shard_seed = (mix64(seed, _SHARD_SALT) if shard_seed is None
                           else check_int(shard_seed, "shard_seed")) % _U64
        per_shard = -(-num_embeddings // self.world_size)
        self.shard = CuckooEmbedding(per_shard, embedding_dim, **local_kwargs)
        self.embedding_dim = self.shard.embedding_dim
        # Send each distinct ID once per step unless the owner must see every occurrence:
        # admission counts sightings, LFU counts lookups, scale_grad_by_freq counts the batch.
        self.dedup = (self.shard.min_count == 1 and self.shard.on_full != OnFull.EVICT_LFU
                      and not self.shard.scale_grad_by_freq)
        self.traffic = {"steps": 0, "id_bytes": 0, "count_bytes": 0, "vector_bytes": 0, "grad_bytes": 0,
                        "min_id_bytes": 0, "min_vector_bytes": 0, "remote_ids": 0, "remote_distinct_ids": 0}
        backend = dist.get_backend(process_group)
        self._comm_on_cpu = backend == "gloo"
        # Sharded modules are numbered in construction order within their process group: every
        # member builds the group's modules in the same order, so the index identifies a module
        # across its ranks.
        members = tuple(dist.get_process_group_ranks(process_group or dist.group.WORLD))
        self.module_index = next(_MODULE_COUNTERS.setdefault(members, itertools.count()))
        self._seq = 0
        self._name = name

    # identity ---------------------------------------------------------------------------------

    def config(self) -> dict:
        """The settings every rank's module must share (compared at every call, recorded in
        checkpoints)."""
        s = self.shard
        return {"kind": type(self).__name__, "embedding_dim": self.embedding_dim,
                "dtype": str(s.weight.dtype).replace("torch.", ""), "mode": getattr(self, "mode", None),
                "shard_seed": str(self.shard_seed), "seed": str(s.seed), "dedup": self.dedup,
                "min_count": s.min_count, "on_full": s.on_full.value, "padding_id": s.padding_id,
                "max_norm": s.max_norm, "scale_grad_by_freq": s.scale_grad_by_freq,
                "optimizer": self._fused_signature()}

    def _fused_code(self) -> int:
        """The shard's fused optimizer as a number for the header (0: none; kind and state
        count otherwise)."""
        opt = self.shard.optimizer
        return 0 if opt is None else 1 + _FUSED_KINDS.index(opt.kind) + 8 * len(opt._states())

    def _fused_signature(self) -> Optional[str]:
        """The shard's fused optimizer (``optimizer=``) and the state it keeps, e.g.
        ``"SGD(momentum_buffer)"``; None without one. Part of :meth:`config`: ranks and
        checkpoints must agree on it (its hyperparameters, which a scheduler may change, are
        each rank's own)."""
        opt = self.shard.optimizer
        if opt is None:
            return None
        return f"{type(opt).__name__}({','.join(n for n, _, _ in opt._states())})"

    @property
    def name(self) -> str:
        """The module's checkpoint name: the ``name`` given, else one derived from
        :meth:`config` (two modules saved to one directory need distinct names)."""
        if self._name is not None:
            return self._name
        cfg = self.config()
        if cfg["optimizer"] is None:  # the names modules without one had before it was recorded
            del cfg["optimizer"]
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
        return f"{type(self).__name__}-d{self.embedding_dim}-{digest[:12]}"

    def _header(self, phase: int, seq: int) -> list:
        c, s = self.config(), self.shard
        dt = s.weight.dtype
        pad = s._padding_i64
        values = {"magic": _HEADER_MAGIC, "phase": phase, "module_index": self.module_index, "seq": seq,
                  "count": 0, "world_size": self.world_size, "embedding_dim": self.embedding_dim,
                  "dtype": _DTYPES.index(dt) if dt in _DTYPES else 99,
                  "kind": (1 if c["kind"].endswith("Bag") else 0) + 2 * self._fused_code(),
                  "mode": ("sum", "mean", "max").index(c["mode"]) + 1 if c["mode"] else 0,
                  "shard_seed": self.shard_seed - _U64 if self.shard_seed >= 1 << 63 else self.shard_seed,
                  "seed": s.seed - _U64 if s.seed >= 1 << 63 else s.seed,
                  "dedup": int(self.dedup) | (self._settings_digest() << 1),
                  "min_count": min(s.min_count, (1 << 62)), "on_full": list(OnFull).index(s.on_full),
                  "padding_id": 0 if pad is None else pad,
                  "max_norm": -1 if s.max_norm is None else int(np.float64(s.max_norm).view(np.int64)),
                  "scale_grad_by_freq": int(s.scale_grad_by_freq)}
        if pad is not None:
            values["scale_grad_by_freq"] |= 2
        if phase in (1, 5) and not (torch.is_grad_enabled() and s.weight.requires_grad):
            values["scale_grad_by_freq"] |= 4  # this forward records no graph: no backward follows
        return [values[k] for k in _HEADER]

    def _settings_digest(self) -> int:
        """52 bits of a digest of the per-shard settings the header has no field of: ``init``,
        ``admission_eps``/``admission_delta`` (with ``min_count > 1``) and ``norm_type`` (with
        ``max_norm``). Sent in the header's ``dedup`` field above its bit, so that the header
        keeps its size."""
        s = self.shard
        # alike settings give one digest: "zeros" reads no a, b; -0.0 is 0.0
        a, b = (0.0, 0.0) if s.init.kind == "zeros" else (float(s.init.a), float(s.init.b))
        parts = [s.init.kind, a + 0.0, b + 0.0]
        if s.min_count > 1:
            parts += [s.admission_eps, s.admission_delta]
        if s.max_norm is not None:
            parts.append(float(getattr(s, "norm_type", 2.0)) + 0.0)
        digest = hashlib.sha256(repr(parts).encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 12

    def _handshake(self, phase: int, seq: int, counts: Optional[list] = None,
                   expect: Optional[list] = None, refused: bool = False) -> list:
        """All-to-all of the call header (see ``_HEADER``); returns the counts the peers send
        this rank. ShardedCommError, on every rank, when a peer is in another call (phase,
        module, sequence number), has another configuration, or (``expect``) sends other counts.
        ``refused``: this rank refused its arguments for the call; it announces a count of -1
        to every peer, and each peer raises ShardedCommError naming it (the caller raises its
        own error), so that no rank goes on into the exchange of a call a peer never joins."""
        g, ws = self.process_group, self.world_size
        mine = self._header(phase, seq)
        send = torch.tensor([mine] * ws, dtype=torch.int64)
        if refused:
            send[:, _HEADER.index("count")] = -1
        elif counts is not None:
            send[:, _HEADER.index("count")] = torch.tensor(counts, dtype=torch.int64)
        cdev = torch.device("cpu") if self._comm_on_cpu else self.shard.weight.device
        send = send.to(cdev)
        recv = torch.empty_like(send)
        _collective(f"all_to_all of the {_PHASES[phase]} header", g,
                    lambda: dist.all_to_all_single(recv, send, group=g))
        recv = recv.cpu().tolist()
        di = _HEADER.index("dedup")
        for peer, theirs in enumerate(recv):
            # dedup follows from min_count, on_full and scale_grad_by_freq, and carries the
            # settings digest: a field of its own that differs is named first
            order = [i for i in range(len(_HEADER)) if i != di] + [di]
            for i in order:
                field = _HEADER[i]
                if field == "count" or theirs[i] == mine[i]:
                    continue
                if field in ("magic",):
                    what = "is not in a call of an embtab sharded module"
                elif field == "phase" and {theirs[i], mine[i]} == {1, 5}:
                    what = (f"is in {_PHASES[theirs[i]]} while this rank is in {_PHASES[phase]} "
                            f"(call .train() or .eval() on the module on every rank alike)")
                elif field == "phase":
                    what = (f"is in {_PHASES.get(theirs[i], 'an unknown call')} while this rank is in "
                            f"{_PHASES[phase]} (a rank skipped backward, or called the module out of step)")
                elif field in ("module_index", "seq"):
                    which = "sharded module #" if field == "module_index" else "call #"
                    what = (f"is in {_PHASES[phase]} of {which}{theirs[i]} while this rank is in "
                            f"#{mine[i]} (ranks call the modules, or their backwards, in another order)")
                elif field == "dedup" and (theirs[i] ^ mine[i]) & 1 == 0:
                    what = ("has another init, norm_type (with max_norm) or admission_eps/"
                            "admission_delta (with min_count > 1) than this rank (the modules are "
                            "configured differently on the two ranks)")
                elif field == "dedup":
                    what = (f"has dedup={theirs[i] & 1} where this rank has dedup={mine[i] & 1} "
                            f"(the modules are configured differently on the two ranks)")
                elif field == "scale_grad_by_freq" and (theirs[i] ^ mine[i]) == 4:
                    what = (f"{'records no' if theirs[i] & 4 else 'records a'} graph for backward "
                            f"where this rank {'does' if theirs[i] & 4 else 'does not'} (a frozen "
                            f"weight, requires_grad=False, or a forward under torch.no_grad() on "
                            f"some ranks only: the others' backward would wait for it; "
                            f"freeze the module, or run the forward without gradient, on every "
                            f"rank alike)")
                elif field == "kind" and theirs[i] >> 1 != mine[i] >> 1:
                    what = (f"has optimizer={_fused_name(theirs[i] >> 1)} where this rank has "
                            f"optimizer={_fused_name(mine[i] >> 1)} (the modules' fused optimizers "
                            f"differ on the two ranks)")
                else:
                    what = (f"has {field}={theirs[i]} where this rank has {field}={mine[i]} (the modules "
                            f"are configured differently on the two ranks)")
                raise ShardedCommError(f"embtab.distributed: rank {peer} {what}; detected by rank "
                                       f"{self.rank} of {ws} in {_PHASES[phase]} of {type(self).__name__} "
                                       f"#{self.module_index}")
        got = [row[_HEADER.index("count")] for row in recv]
        if refused:
            return got
        peers = [p for p, c in enumerate(got) if c < 0]
        if peers:
            raise ShardedCommError(
                f"embtab.distributed: rank {peers[0]} of {ws} refused its arguments for "
                f"{_PHASES[phase]} of {type(self).__name__} #{self.module_index} (its error is "
                f"raised there); no rank counts this call, and no ID or row has changed")
        if expect is not None and got != list(expect):
            raise ShardedCommError(f"embtab.distributed: in backward, rank {self.rank} expects gradient "
                                   f"rows {list(expect)} from ranks 0..{ws - 1} but they announce {got}")
        return got

    # introspection ----------------------------------------------------------------------------

    @property
    def weight(self) -> Tensor:
        """This rank's weight shard (``shard.weight``)."""
        return self.shard.weight

    @property
    def num_ids(self) -> int:
        """Live IDs on this rank's shard."""
        return self.shard.num_ids

    def stats(self) -> dict[str, int]:
        """This shard's :meth:`embtab.nn.CuckooEmbedding.stats` plus ``rank`` and ``world_size``."""
        return {**self.shard.stats(), "rank": self.rank, "world_size": self.world_size}

    def owner_of(self, ids: Tensor) -> Tensor:
        """Owning rank of each raw ID."""
        return owner_of(ids, self.world_size, self.shard_seed)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world_size={self.world_size}, shard_seed={self.shard_seed}"

    # routing ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _checked_call(self):
        """Around a forward's argument checks: when they raise, the other ranks learn of it
        in the call's header exchange (see ``_handshake(refused=True)``) and raise
        ShardedCommError, then this rank's own error is raised; no rank counts the call."""
        try:
            yield
        except Exception as e:
            try:
                self._handshake(1 if self.shard.training else 5, self._seq + 1, refused=True)
            except ShardedCommError as comm:  # peers out of step too: this rank's error first
                if hasattr(e, "add_note"):  # Python 3.11+
                    e.add_note(f"(and the ranks' header exchange failed: {comm})")
            raise

    def _exchange(self, ids: np.ndarray, with_valid: bool) -> Tensor:
        """Vectors of the flat int64 ``ids`` in input order, ``[n, d]`` (``[n, d + 1]`` with a
        last column 1.0 where the ID has a row, 0.0 where it reads the zero row)."""
        g, ws, r = self.process_group, self.world_size, self.rank
        expand = None
        if self.dedup and len(ids):
            ids, expand = np.unique(ids, return_inverse=True)
            expand = expand.reshape(-1)
        owner = _core.hashed_rows(ids, ws, self.shard_seed, 1)
        order = np.argsort(owner, kind="stable")
        send = np.bincount(owner, minlength=ws).astype(np.int64).tolist()
        seq = self._seq + 1
        recv = self._handshake(1 if self.shard.training else 5, seq, send)
        self._seq = seq  # a refused call is not counted: the ranks stay in step
        cdev = torch.device("cpu") if self._comm_on_cpu else self.shard.weight.device
        send_ids = torch.from_numpy(ids[order]).to(cdev)
        recv_ids = torch.empty(sum(recv), dtype=torch.int64, device=cdev)
        _collective("all_to_all of IDs", g,
                    lambda: dist.all_to_all_single(recv_ids, send_ids, recv, send, group=g))

        # Every rank learns whether every shard's lookup worked before the vectors move: a
        # shard that fails (a full table with on_full="error", an eviction with too few free
        # rows) raises its own error on its rank and ShardedCommError on the others, instead of
        # leaving them inside an all_to_all the failing rank never joins (gloo aborts the
        # process). The failing shard changes nothing; the others keep the rows they handed to
        # the batch's new IDs (docs/site/guide/sharding.md, "Errors").
        caught = None
        try:
            vecs = self.shard(recv_ids)
            if with_valid:
                valid = (self.shard.lookup(recv_ids) >= 0).to(vecs.dtype).to(vecs.device)
                vecs = torch.cat([vecs, valid[:, None]], dim=1)
        except Exception as e:  # noqa: BLE001 - re-raised below, once the ranks agree
            caught = e
        failed = torch.zeros(ws, dtype=torch.int32, device=cdev)  # a small all_reduce, no pickle
        failed[r] = caught is not None
        _collective("all_reduce of the shard lookups' outcome", g,
                    lambda: dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=g))
        if caught is not None:
            raise caught
        if failed.any():
            bad = int(torch.nonzero(failed)[0])
            raise ShardedCommError(
                f"embtab.distributed: the shard lookup failed on rank {bad} of {ws} (its error is "
                "raised there); this rank's shard kept the rows it handed to new IDs")
        dev = vecs.device
        if self._comm_on_cpu:
            vecs = vecs.cpu()
        out_sorted = _AllToAll.apply(vecs, recv, send, g, self.traffic, self, seq)
        inv = np.argsort(order, kind="stable")
        if expand is not None:
            inv = inv[expand]
        inv = torch.from_numpy(inv).to(out_sorted.device)
        out = out_sorted.index_select(0, inv).to(dev)

        t = self.traffic
        remote = len(ids) - send[r]
        row = vecs.shape[1] * vecs.element_size()
        t["steps"] += 1
        t["count_bytes"] += (ws - 1) * 8 * len(_HEADER)
        t["id_bytes"] += remote * 8
        t["vector_bytes"] += (sum(recv) - recv[r]) * row
        rem = ids[owner != r]
        distinct = len(np.unique(rem)) if rem.size else 0
        t["remote_ids"] += remote if expand is None else int(np.count_nonzero((owner != r)[expand]))
        t["remote_distinct_ids"] += distinct
        t["min_id_bytes"] += distinct * 8
        t["min_vector_bytes"] += distinct * self.embedding_dim * vecs.element_size()
        return out

    # checkpoint -------------------------------------------------------------------------------

    def _agree(self, what: str, error: Optional[str]) -> None:
        """Every rank's outcome of a local step (None: success); ``error`` re-raised on its own
        rank, another rank's as ShardedCommError naming it. A collective."""
        errs = [None] * self.world_size
        _collective(f"all_gather of the {what} outcome", self.process_group,
                    lambda: dist.all_gather_object(errs, error, group=self.process_group))
        bad = [(r, e) for r, e in enumerate(errs) if e is not None]
        if bad and error is None:
            r, e = bad[0]
            exc = ShardedCommError(f"embtab.distributed: {what} failed on rank {r} of {self.world_size}: {e}")
            exc.agreed = True  # every rank knows of the failure (not a lost peer)
            raise exc

    def save(self, directory: Union[str, "os.PathLike[str]"],
             optimizer: Optional[torch.optim.Optimizer] = None) -> str:
        """Write this rank's shard to ``directory`` (a collective: every rank calls it).

        Files are named after the module (:attr:`name`), so several modules share a directory.
        Each rank writes ``NAME.shard-RRRRR-of-WWWWW.TOKEN.embtab`` (TOKEN: drawn by rank 0 for
        this save; the file holds a magic number, the SHA-256 of the payload, and the payload:
        the shard's IDs with their vectors, eviction/admission state, counters and, with
        ``optimizer``, the per-row optimizer state of ``shard.weight`` by ID; a module built
        with a fused ``optimizer=`` saves its fused state by ID instead, and takes no
        ``optimizer`` here) atomically
        (``_core.atomic_write``: temporary file, fsync, rename); once every rank has written,
        rank 0 writes ``NAME.manifest.json`` (name, configuration, world size, token, every
        shard's file, SHA-256 and ID count, and the manifest's own SHA-256) the same way, and
        only then deletes the shard files of this module's earlier saves. If a rank fails
        before the manifest is in place, every rank deletes the files of this save and raises
        (the failing rank its own error, the others :class:`ShardedCommError`): the previous
        checkpoint stays whole. If a rank is lost (killed, or the process group fails) once
        the manifest may have been written, the ranks keep their new shard files and raise:
        the manifest then names either this save, whose shards are all in place, or the
        previous one, which is whole; files no manifest names are deleted by the next save.
        ``directory`` must be visible to every rank (shared storage across machines). Returns
        the path of this rank's shard file.

        Raises
        ------
        ValueError
            Another module of this process saved to ``directory`` under the same name, or
            ``optimizer`` does not hold ``shard.weight`` or keeps state embtab cannot split by ID,
            or is given to a module that trains with a fused optimizer. Also, on every rank
            (a rank whose own shard is fine raises :class:`ShardedCommError` quoting the other's
            error) before any file is written or deleted, a state :meth:`load` would refuse:
            fused optimizer state that is not finite (a step with a NaN or infinite loss), or
            ranks whose fused optimizer step counts differ (a backward that raised on some
            ranks after the others had stepped). Such a module cannot be checkpointed: restore
            it from the previous checkpoint, which is left as it was.
        """
        directory = os.fspath(directory)
        name = self.name
        key = (os.path.realpath(directory), name)
        other = _SAVED_BY.get(key)
        if other is not None and other is not self:
            raise ValueError(f"embtab.distributed: another sharded module of this process saved to "
                             f"{directory} under the name {name!r}; give each module its own name=")
        self._handshake(3, 0)
        err, payload = None, None
        undo = (f"; nothing was written, and the previous checkpoint in {directory} (if any) is "
                f"untouched: restore the module from it with load()")
        try:
            payload = self._shard_payload(optimizer)
            # What load() would refuse of this shard is refused now, before any file changes.
            _check_payload(payload, f"the shard of rank {self.rank} of {self.world_size} about to "
                           f"be saved", int(payload["ids"].numel()), self.embedding_dim,
                           self.world_size, self.rank, self.shard_seed, self.shard._padding_i64)
        except ValueError as e:
            err = e
            if payload is not None:  # the check refused it (not the arguments)
                err = ValueError(f"{e} (load() would refuse this checkpoint, so save() refused "
                                 f"to write it){undo}")
        if self.shard.optimizer is not None:  # on every rank alike (the header compared it)
            steps = [None] * self.world_size
            _collective("all_gather of the fused optimizer step counts", self.process_group,
                        lambda: dist.all_gather_object(steps, int(self.shard.opt_step),
                                                       group=self.process_group))
            if err is None and len(set(steps)) != 1:
                # load() refuses such a checkpoint: the shards' optimizer clocks would differ
                err = ValueError(
                    f"embtab.distributed: save refused: the ranks' fused optimizer step counts "
                    f"differ ({', '.join(f'rank {r}: {t}' for r, t in enumerate(steps))}): a "
                    f"backward raised on some ranks after the others had stepped, and load() "
                    f"would refuse this checkpoint{undo}")
        self._agree("save (payload)", None if err is None else str(err))
        if err is not None:
            raise err
        err = None
        if self.rank == 0:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                err = e
        self._agree("save (directory)", None if err is None else f"{type(err).__name__}: {err}")
        if err is not None:
            raise err
        token = [os.urandom(6).hex() if self.rank == 0 else None]
        _collective("broadcast of the save token", self.process_group,
                    lambda: dist.broadcast_object_list(token, src=dist.get_global_rank(self.process_group, 0)
                                                       if self.process_group is not None else 0,
                                                       group=self.process_group))
        token = token[0]
        payload.update(name=name, token=token)
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).digest()
        path = os.path.join(directory, _shard_name(name, self.rank, self.world_size, token))
        written = []
        # Whether this rank may delete its new shard on a failure: true until the manifest may
        # name it. Rank 0 writes the manifest only after every rank has joined the all_gather
        # of checksums, so a rank that fails before joining it may; after that, only a failure
        # every rank agreed on before the manifest's rename (rank 0's write failing), or rank 0
        # knowing it never renamed the manifest. A shard kept by a failed save is either in
        # the new checkpoint (the manifest names it) or named by no manifest, and then removed
        # by the module's next save.
        deletable = True
        renamed = False
        try:
            try:
                _core.atomic_write(path, _MAGIC + digest + data)
                written.append(path)
                err = None
            except OSError as e:
                err = e
            self._agree("save (shard files)", None if err is None else f"{type(err).__name__}: {err}")
            if err is not None:
                raise err
            deletable = False
            info = [None] * self.world_size
            _collective("all_gather of shard checksums", self.process_group,
                        lambda: dist.all_gather_object(info, (digest.hex(), int(payload["ids"].numel())),
                                                       group=self.process_group))
            err = None
            if self.rank == 0:
                manifest = {"format_version": _FORMAT_VERSION, "name": name, "token": token,
                            "world_size": self.world_size, "fingerprint": self.config(),
                            "shard_seed": str(self.shard_seed), "embedding_dim": self.embedding_dim,
                            "shards": [{"rank": i, "file": _shard_name(name, i, self.world_size, token),
                                        "sha256": sha, "num_ids": n} for i, (sha, n) in enumerate(info)]}
                manifest["checksum"] = _manifest_checksum(manifest)
                try:
                    _core.atomic_write(os.path.join(directory, _manifest_name(name)),
                                       json.dumps(manifest, indent=1).encode())
                    renamed = True
                except OSError as e:  # raised only before the rename: the old manifest stays
                    err = e
            try:
                self._agree("save (manifest)", None if err is None else f"{type(err).__name__}: {err}")
            except ShardedCommError as e:
                deletable = getattr(e, "agreed", False)  # rank 0 said its write failed
                raise
            if err is not None:
                deletable = True  # this is rank 0, and its manifest write failed
                raise err
        except BaseException:
            if deletable or (self.rank == 0 and not renamed):
                for f in written:  # this save's files; the previous checkpoint is untouched
                    if os.path.exists(f):
                        os.unlink(f)
            raise
        if self.rank == 0:
            prefix = name + ".shard-"
            for f in os.listdir(directory):
                if f.startswith(prefix) and f.endswith(".embtab") and f".{token}." not in f:
                    os.unlink(os.path.join(directory, f))
        _SAVED_BY[key] = self
        _collective("barrier after save", self.process_group, lambda: dist.barrier(group=self.process_group))
        return path

    @torch.no_grad()
    def _shard_payload(self, optimizer) -> dict:
        s = self.shard
        live = torch.nonzero(s.row_live).reshape(-1)
        p = {"format_version": _FORMAT_VERSION, "rank": self.rank, "world_size": self.world_size,
             "ids": s.row_ids[live].clone(), "vectors": s.weight.detach()[live.to(s.weight.device)].cpu(),
             "counters": {k: int(getattr(s, k)) for k in
                          ("num_steps", "num_admissions", "num_evictions", "num_growths")}}
        for name in ("row_last_step", "row_count"):
            if name in s._buffers:
                p[name] = s._buffers[name][live].clone()
        if "admission_sketch" in s._buffers:
            p["admission_sketch"] = s.admission_sketch.clone()
        if s.optimizer is not None:
            if optimizer is not None:
                raise ValueError(_FUSED_AND_TORCH)
            # the fused state by ID: the step count (the same on every rank: each backward
            # steps every shard once) and each state buffer's rows of the live IDs
            p["fused"] = {"type": self._fused_signature(), "step": int(s.opt_step),
                          "per_row": {n: s._buffers["opt_" + n][live].clone()
                                      for n, _, _ in s.optimizer._states()}}
        if optimizer is not None:
            for grp in optimizer.param_groups:
                if any(q is s.weight for q in grp["params"]):
                    break
            else:
                raise ValueError("optimizer does not hold this sharded module's weight (shard.weight)")
            # Bring pending growth/new rows into the optimizer state first.
            s._sync_optimizer(optimizer)
            rules = _row_state(optimizer, "saving the optimizer state of a sharded module")
            st = optimizer.state.get(s.weight, {})
            per_row, other = {}, {}
            for k, v in st.items():
                if k in rules and isinstance(v, Tensor) and v.shape == s.weight.shape:
                    if v.is_sparse:  # SGD's momentum of sparse gradients: saved by ID as rows
                        v = v.to_dense()
                    per_row[k] = v[live.to(v.device)].cpu()
                else:
                    other[k] = v.cpu() if isinstance(v, Tensor) else v
            p["optimizer"] = {"per_row": per_row, "other": other,
                              "type": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"}
        return p

    def load(self, directory: Union[str, "os.PathLike[str]"],
             optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Load this module's checkpoint (``NAME.manifest.json``, see :meth:`save`) from
        ``directory``, written with any world size (resharding). A collective.

        Every rank reads every shard file of the checkpoint and checks it against the manifest
        (checksum, rank, world size, name, save token, ID count, that the rank owned each ID)
        and the manifest against this module (name and configuration), then keeps the IDs it
        owns under the current world size, with their vectors, eviction state and, with
        ``optimizer``, per-row optimizer state (other optimizer state, e.g. Adam's ``step``, is
        taken from the first shard that has it); a module built with a fused ``optimizer=``
        gets its fused state back by ID (its step count from the shards, which must agree)
        and takes no ``optimizer`` here. Nothing changes on any rank unless every rank
        validated everything: the checks include those of the shard's own ``load_state_dict``,
        run on the state each rank assembled before the ranks agree to load. ``num_steps`` (the
        clock LRU recency is dated by) becomes the largest of the saved shards' on every rank:
        the shards' clocks are equal unless a shard's lookup failed in a call (see
        docs/site/guide/sharding.md, "Errors"), which left that shard a step behind per such
        call, and it then catches up. With the same world size the other counters
        (admissions, evictions, growths) and the admission sketch come back exactly; with
        another, the admission sketch is the sum of the saved ones (counts are then never
        under-estimated), ``num_admissions`` restarts at the number of IDs the shard received
        and ``num_evictions`` and ``num_growths`` at 0.

        Raises
        ------
        FileNotFoundError
            There is no manifest of this module in ``directory`` (the message names it).
        ValueError
            The manifest or a shard file is corrupt, truncated, inconsistent (a missing shard,
            a missing key, a wrong type, a value the shard's ``load_state_dict`` refuses such
            as a negative count or the padding ID), from another save, or the checkpoint
            belongs to another module (other name or configuration); the message names the
            file. Also ``optimizer`` of another type than the one saved, or one whose per-row
            state embtab cannot reshard; a checkpoint of another fused optimizer (or none) than this
            module's, or corrupt fused state (not finite, negative sums of squares, wrong
            shapes). Files the manifest does not list are ignored.
        ShardedCommError
            Another rank failed to load (its error is quoted); nothing was loaded.
        """
        directory = os.fspath(directory)
        self._handshake(4, 0)
        err, state = None, None
        try:
            parts, old_ws = self._read_checkpoint(directory, optimizer)
            mpath = os.path.join(directory, _manifest_name(self.name))
            state = self._state_from_parts(parts, old_ws, optimizer, mpath)
        except (ValueError, OSError) as e:
            err = e
        self._agree("load", None if err is None else f"{type(err).__name__}: {err}")
        if err is not None:
            raise err
        self._apply_state(*state, optimizer)

    def _read_checkpoint(self, directory: str, optimizer) -> tuple:
        """Validated shard payloads (cut to this rank's IDs) and the saved world size."""
        mpath = os.path.join(directory, _manifest_name(self.name))
        if not os.path.isfile(mpath) and os.path.isfile(os.path.join(directory, "manifest.json")):
            raise FileNotFoundError(f"embtab.distributed: checkpoint manifest {mpath} is missing; "
                                    f"{directory} holds a manifest.json of an earlier embtab format")
        m = _read_manifest(mpath)
        if m["name"] != self.name:
            _refuse(mpath, f"belongs to module {m['name']!r}, not {self.name!r}")
        mine = self.config()
        diff = {k: (m["fingerprint"].get(k), v) for k, v in mine.items() if m["fingerprint"].get(k) != v}
        if diff:
            _refuse(mpath, "was saved by a module configured otherwise: "
                    + ", ".join(f"{k}={a!r} (this module: {b!r})" for k, (a, b) in diff.items()))
        if optimizer is not None and self.shard.optimizer is not None:
            raise ValueError(_FUSED_AND_TORCH)
        if optimizer is not None and not any(q is self.shard.weight for g in optimizer.param_groups
                                             for q in g["params"]):
            raise ValueError("optimizer does not hold this sharded module's weight (shard.weight)")
        rules = None if optimizer is None else _row_state(
            optimizer, "loading the optimizer state of a sharded module")  # before any change
        fused = self.shard.optimizer
        parts = []
        for entry in m["shards"]:
            path = os.path.join(directory, entry["file"])
            parts.append(self._restrict(_read_shard(path, entry, m, self.shard_seed,
                                                    self.embedding_dim, self.shard._padding_i64)))
            sk = parts[-1].get("admission_sketch")
            mine_sk = self.shard._buffers.get("admission_sketch")
            if sk is not None and mine_sk is not None and tuple(sk.shape) != tuple(mine_sk.shape):
                _refuse(path, f"holds an admission sketch of shape {tuple(sk.shape)}, this module's is "
                              f"{tuple(mine_sk.shape)} (admission_eps/admission_delta differ from the "
                              f"saving module's; its counts would be lost)")
            saved = (parts[-1].get("optimizer") or {}).get("type")
            mine_type = None if optimizer is None else \
                f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
            if saved is not None and mine_type is not None and saved != mine_type:
                _refuse(path, f"holds the state of optimizer {saved}, not of the {mine_type} given "
                              "(load with the optimizer type that was saved, or without one)")
            unknown = set((parts[-1].get("optimizer") or {}).get("per_row", {})) - set(rules or ())
            if optimizer is not None and unknown:
                _refuse(path, f"holds per-row optimizer state {sorted(unknown)} that "
                              f"{type(optimizer).__name__} does not keep")
            if fused is not None:  # the fingerprint matched: the same optimizer and state names
                got = parts[-1].get("fused")
                want = {n: per_elem for n, per_elem, _ in fused._states()}
                if got is None or got["type"] != self._fused_signature() or set(got["per_row"]) != set(want):
                    _refuse(path, f"lacks the fused optimizer state of {self._fused_signature()}")
                for k, per_elem in want.items():
                    v = got["per_row"][k]
                    if (v.dim() == 2) != per_elem:
                        _refuse(path, f"has fused optimizer state {k!r} of shape {tuple(v.shape)}")
                    if v.dtype != self.shard.weight.dtype:  # checked as saved, loaded as is
                        _refuse(path, f"has fused optimizer state {k!r} of dtype {v.dtype}, not the "
                                      f"weight's {self.shard.weight.dtype}")
        if fused is not None and len({p["fused"]["step"] for p in parts}) != 1:
            _refuse(mpath, "lists shards whose fused optimizer step counts differ "
                           f"({sorted({p['fused']['step'] for p in parts})})")
        return parts, m["world_size"]

    def _restrict(self, p: dict) -> dict:
        """Shard payload ``p`` cut down to the IDs this rank owns (memory: one shard at a time)."""
        mine = torch.from_numpy(_core.hashed_rows(p["ids"].numpy(), self.world_size, self.shard_seed, 1)
                                == self.rank)
        for k in ("ids", "vectors", "row_last_step", "row_count"):
            if k in p:
                p[k] = p[k][mine]
        o = p.get("optimizer")
        if o is not None:
            o["per_row"] = {k: v[mine] for k, v in o["per_row"].items()}
        f = p.get("fused")
        if f is not None:
            f["per_row"] = {k: v[mine] for k, v in f["per_row"].items()}
        return p

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A state_dict is one rank's shard. Loaded into another rank, world size or shard_seed,
        # its IDs would sit on a rank that does not own them, where no lookup ever reaches
        # them: refused before the shard loads anything (save() and load() reshard).
        ids = state_dict.get(prefix + "shard.row_ids")
        live = state_dict.get(prefix + "shard.row_live")
        if (isinstance(ids, Tensor) and isinstance(live, Tensor) and ids.dtype == torch.int64
                and live.dtype == torch.bool and ids.dim() == 1 and ids.shape == live.shape
                and ids.device.type != "meta" and live.device.type != "meta"):
            held = ids.detach().cpu()[live.detach().cpu()].contiguous().numpy()
            owners = _core.hashed_rows(held, self.world_size, self.shard_seed, 1)
            stray = int((owners != self.rank).sum())
            if stray:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {prefix}shard holds {stray} of its "
                    f"{held.size} IDs that rank {self.rank} of {self.world_size} does not own under "
                    f"this module's shard_seed (a state_dict is one rank's shard: it loads into the "
                    f"same rank of the same world size and shard_seed). To move a model to other "
                    f"ranks or another world size, use save() and load(), which reshard; nothing "
                    f"was loaded")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @torch.no_grad()
    def _state_from_parts(self, parts: list, old_ws: int, optimizer, mpath: str) -> tuple:
        """The shard's state dict and the optimizer's state of ``shard.weight`` (None without
        ``optimizer``) built from the validated shard payloads ``parts``, checked as the shard's
        ``load_state_dict`` checks them (ValueError naming the manifest ``mpath``). Changes
        nothing."""
        s = self.shard
        ids_l, vec_l, keep_l = [], [], []
        for p in parts:
            ids = p["ids"]
            mine = torch.from_numpy(_core.hashed_rows(ids.numpy(), self.world_size, self.shard_seed, 1)) == self.rank
            keep_l.append(mine)
            ids_l.append(ids[mine])
            vec_l.append(p["vectors"][mine])
        ids = torch.cat(ids_l)
        n = ids.numel()
        R = max(s.num_embeddings, n)
        d = self.embedding_dim
        w = torch.zeros(R + 1, d, dtype=s.weight.dtype)
        w[:n] = torch.cat(vec_l).to(w.dtype)
        sd = {"weight": w, "row_ids": torch.zeros(R, dtype=torch.int64), "row_live": torch.zeros(R, dtype=torch.bool)}
        sd["row_ids"][:n] = ids
        sd["row_live"][:n] = True
        sd["num_rows"] = torch.tensor(n, dtype=torch.int64)
        same = old_ws == self.world_size
        own = parts[self.rank]["counters"] if same else None
        sd["num_steps"] = torch.tensor(max(p["counters"]["num_steps"] for p in parts), dtype=torch.int64)
        for k in ("num_admissions", "num_evictions", "num_growths"):
            sd[k] = torch.tensor(own[k] if same else (n if k == "num_admissions" else 0), dtype=torch.int64)
        for name in ("row_last_step", "row_count"):
            if name in s._buffers:
                b = torch.zeros(R, dtype=torch.int64)
                if all(name in p for p in parts):
                    b[:n] = torch.cat([p[name][m] for p, m in zip(parts, keep_l)])
                sd[name] = b
        if "admission_sketch" in s._buffers:
            sk = [p["admission_sketch"] for p in parts if "admission_sketch" in p]
            if sk and sk[0].shape == s.admission_sketch.shape:
                sd["admission_sketch"] = sk[self.rank].clone() if same else torch.stack(sk).sum(0)
            else:
                sd["admission_sketch"] = torch.zeros_like(s.admission_sketch)
        if s.optimizer is not None:  # validated in _read_checkpoint: every shard has it
            sd["opt_step"] = torch.tensor(parts[0]["fused"]["step"], dtype=torch.int64)
            for k, per_elem, fill in s.optimizer._states():
                b = torch.full((R + 1, d) if per_elem else (R + 1,), fill, dtype=s.weight.dtype)
                b[:n] = torch.cat([p["fused"]["per_row"][k][m] for p, m in zip(parts, keep_l)]).to(b.dtype)
                sd["opt_" + k] = b
        # The optimizer state is built before the module changes: a refusal (an optimizer
        # without this weight, one whose per-row state embtab does not know) changes nothing.
        st = None
        if optimizer is not None:
            grp = next((g for g in optimizer.param_groups if any(q is s.weight for q in g["params"])), None)
            if grp is None:
                raise ValueError("optimizer does not hold this sharded module's weight (shard.weight)")
            st = {}
            for p in parts:
                o = p.get("optimizer")
                if o is None:
                    continue
                for k, v in o["other"].items():
                    st.setdefault(k, v)
            keys = set()
            for p in parts:
                if p.get("optimizer") is not None:
                    keys.update(p["optimizer"]["per_row"])
            rules = _row_state(optimizer, "loading the optimizer state of a sharded module")
            for k in sorted(keys):
                fill = rules[k](grp) if k in rules else 0.0
                v = torch.full((R + 1, d), fill, dtype=s.weight.dtype)
                got = [p["optimizer"]["per_row"][k][m] if p.get("optimizer") and k in p["optimizer"]["per_row"]
                       else torch.full((int(m.sum()), d), fill, dtype=s.weight.dtype)
                       for p, m in zip(parts, keep_l)]
                v[:n] = torch.cat(got)
                st[k] = v.to(s.weight.device)
            for k, v in list(st.items()):
                if isinstance(v, Tensor) and k not in keys:
                    st[k] = v.to(s.weight.device) if v.dim() else v
        # What the shard's load_state_dict would refuse is refused here, before the ranks
        # agree to load: a dry run of its checks (they build the ID table and change nothing).
        own = [n for n, _ in s.named_parameters(recurse=False)] + [
            n for n, b in s._buffers.items()
            if b is not None and n not in s._non_persistent_buffers_set]
        try:
            s._validated_table(sd, "", own)
        except ValueError as e:
            _refuse(mpath, f"lists shards that rank {self.rank} of {self.world_size} cannot load "
                           f"together: {e}")
        return sd, st

    @torch.no_grad()
    def _apply_state(self, sd: dict, st: Optional[dict], optimizer) -> None:
        """Load what :meth:`_state_from_parts` built into the shard (and ``optimizer``)."""
        self.shard.load_state_dict(sd)
        if st is not None:
            optimizer.state[self.shard.weight] = st


class ShardedCuckooEmbedding(_ShardedBase):
    r""":class:`embtab.nn.CuckooEmbedding` sharded by ID over a process group.

    Parameters
    ----------
    num_embeddings : int
        Initial ID rows over all ranks; each rank's shard starts with
        ``ceil(num_embeddings / world_size)`` (with ``on_full="error"`` or eviction, that is
        each shard's capacity: hashing spreads IDs evenly but not exactly).
    embedding_dim, padding_id, max_norm, norm_type, scale_grad_by_freq, sparse, _freeze, device, dtype
        As :class:`embtab.nn.CuckooEmbedding`.
    process_group : ProcessGroup, optional
        Group to shard over (default: the default group).
    shard_seed : int, optional
        Seed of the owner hash; default ``mix64(seed, 0x5348415244)``. Every rank must use the
        same, and a checkpoint can only be loaded with the one it was saved with.
    name : str, optional
        The module's checkpoint name (``[A-Za-z0-9_.-]``, up to 100 characters): its files in
        a checkpoint directory are ``NAME.manifest.json`` and ``NAME.shard-*``. Default: derived
        from the configuration; give distinct names to modules that share a configuration and
        a directory.
    **kwargs
        ``on_full``, ``growth_factor``, ``min_count``, ``admission_eps``, ``admission_delta``,
        ``init``, ``seed``, ``num_threads``: as the single-process module, applied per shard.
        ``optimizer`` (an :mod:`embtab.optim` fused optimizer, a new object per module on
        every rank, the same kind everywhere): each shard steps its own rows in backward, and
        its state is saved and resharded with the checkpoint (``save``/``load`` then take no
        ``optimizer``); not with the bag module's ``mode="max"`` (ValueError).
        ``expire_after`` (time-based expiry) is refused with ValueError.

    Shape
    -----
    - input: int64 ``(*)`` raw IDs (a different number on every rank is fine)
    - output: ``(*, embedding_dim)``

    Notes
    -----
    * Forward and backward are collectives: every rank calls them the same number of times in
      the same order (a rank with no IDs passes an empty tensor), and every rank runs backward
      through each training-mode output (e.g. ``loss.backward()`` on every rank each step).
    * A dead or stalled peer makes the others raise :class:`ShardedCommError` within the
      process group's timeout (``init_process_group(timeout=...)``).
    * Every forward, backward, save and load starts with a small all-to-all of a fixed-size
      header (the call, the module's construction index in its process group and call
      number, and its configuration: ``embedding_dim``, dtype, kind and mode, ``shard_seed``,
      ``seed``, ``padding_id``, ``min_count``, ``on_full``, a digest of ``init``,
      ``admission_eps``/``admission_delta`` and ``norm_type``, ...; not ``growth_factor``,
      ``num_threads`` or a fused optimizer's hyperparameters, which are each rank's own). Ranks
      whose modules differ, or that are
      in different calls (a rank that skipped backward and went on to the next forward, or
      ran its backwards in another order), raise :class:`ShardedCommError` naming the field
      and the peer, on every rank, before any mismatched collective runs. What stays gloo's:
      a peer that calls a collective that is not a sharded module's (its own all_reduce, DDP)
      while the others are in a sharded call makes gloo's transfers mismatch, which gloo may
      answer by aborting the process (``EnforceNotMet``) or by the timeout; a peer that
      exits or stops is noticed as above. A forward's header also says whether it records a
      graph for backward (grad mode on and the weight not frozen): a rank whose shard is
      frozen (``requires_grad=False``), or that runs the forward under ``torch.no_grad()``,
      while the others do not, raises :class:`ShardedCommError` on every rank in that
      forward instead of leaving the others waiting in backward.
    * The backward is differentiable once: a gradient of the weight taken with
      ``create_graph=True`` cannot be differentiated again through the exchange (a backward
      through it raises RuntimeError, "once_differentiable"), e.g. a gradient penalty on the
      embedding weight; second-order terms through the dense part only are fine.
    * Each rank sends each distinct ID of its batch once (and gets one vector back, and sends
      one summed gradient), unless the owner must see every occurrence: with ``min_count > 1``,
      ``on_full="evict_lfu"`` or ``scale_grad_by_freq`` every occurrence travels (``dedup``).
    * ``traffic`` counts this rank's bytes sent to other ranks (IDs, counts, vectors, gradients)
      and the minimum: distinct remote IDs plus their vectors.
    * ``state_dict()`` is this rank's shard, and ``load_state_dict`` takes it back on the same
      rank, world size and ``shard_seed`` only: a state dict holding IDs this rank does not
      own raises ValueError and loads nothing. ``save()`` and ``load()`` write and read a
      checkpoint of every rank that loads on any world size (resharded). A shard that receives
      more IDs in a resharded load than its capacity (``on_full="error"`` or eviction) keeps
      them all: its capacity becomes its number of IDs.

    Example::

        >>> dist.init_process_group("gloo", ...)                    # doctest: +SKIP
        >>> emb = ShardedCuckooEmbedding(10**6, 32, seed=0)         # doctest: +SKIP
        >>> out = emb(torch.tensor([[2**63 + 5, 17]]))              # doctest: +SKIP
        >>> out.shape                                  # on every rank  # doctest: +SKIP
        torch.Size([1, 2, 32])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_id: Optional[int] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Optional[Tensor] = None, _freeze: bool = False,
                 device: Union[None, str, torch.device] = None, dtype: Optional[torch.dtype] = None, *,
                 process_group: Optional[dist.ProcessGroup] = None, shard_seed: Optional[int] = None,
                 name: Optional[str] = None, **kwargs) -> None:
        local = dict(padding_id=padding_id, max_norm=max_norm, norm_type=norm_type,
                     scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight, _freeze=_freeze,
                     device=device, dtype=dtype, **kwargs)
        super().__init__(num_embeddings, embedding_dim, process_group=process_group, shard_seed=shard_seed,
                         name=name, local_kwargs=local)

    def forward(self, input: Tensor) -> Tensor:
        with self._checked_call():
            ids, shape = _as_id_array(input, "input")
        return self._exchange(ids, with_valid=False).reshape(*shape, self.embedding_dim)


class ShardedCuckooEmbeddingBag(_ShardedBase):
    r""":class:`embtab.nn.CuckooEmbeddingBag` sharded by ID over a process group.

    Parameters as :class:`ShardedCuckooEmbedding` plus ``mode`` and ``include_last_offset`` of
    :class:`embtab.nn.CuckooEmbeddingBag`. The owners return one vector per ID occurrence
    (plus a flag saying whether the ID has a row); the requesting rank reduces its bags, so
    ``per_sample_weights``, ``"mean"``'s count and ``"max"`` behave exactly as in the
    single-process module (padding, not-yet-admitted and, in ``eval()``, unknown IDs are left
    out of the reduction). ``max_norm`` and ``scale_grad_by_freq`` act at the owner, over the
    whole global batch, as in the single-process module fed the concatenated batch, with one
    difference: ``scale_grad_by_freq`` divides each ID's summed gradient by its occurrences in
    the global batch, as ``nn.Embedding`` and embtab's fused optimizers do, while torch 2.13's
    ``nn.EmbeddingBag`` (so a single-process ``CuckooEmbeddingBag`` without ``optimizer=``)
    divides each ID's gradient by another ID's count.

    Shape
    -----
    As :class:`embtab.nn.CuckooEmbeddingBag`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: Optional[float] = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                 sparse: bool = False, _weight: Optional[Tensor] = None, include_last_offset: bool = False,
                 padding_id: Optional[int] = None, device: Union[None, str, torch.device] = None,
                 dtype: Optional[torch.dtype] = None, *, process_group: Optional[dist.ProcessGroup] = None,
                 shard_seed: Optional[int] = None, name: Optional[str] = None, **kwargs) -> None:
        # sparse applies to the owner's CuckooEmbedding, not to the local reduction: max is fine.
        self_mode = _check_bag_config(mode, False, bool(scale_grad_by_freq))
        if self_mode == "max" and kwargs.get("optimizer") is not None:
            # The owner steps every row it looked up, a zero gradient for rows that won no
            # maximum, where the single-process module steps only the winners: with momentum,
            # weight decay or Adam the losers would move.
            raise ValueError("mode='max' with a fused optimizer is not supported by "
                             "ShardedCuckooEmbeddingBag (the owners cannot tell which rows won a "
                             "maximum); use mode='sum' or 'mean', or a torch optimizer over "
                             "module.parameters()")
        local = dict(padding_id=padding_id, max_norm=max_norm, norm_type=norm_type,
                     scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight,
                     _freeze=kwargs.pop("_freeze", False), device=device, dtype=dtype, **kwargs)
        super().__init__(num_embeddings, embedding_dim, process_group=process_group, shard_seed=shard_seed,
                         name=name, local_kwargs=local)
        self.mode = self_mode
        self.include_last_offset = bool(include_last_offset)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        with self._checked_call():
            ids, shape = _as_id_array(input, "input")
            off = _check_bag_args(input, offsets, per_sample_weights, self.mode,
                                  self.include_last_offset, self.shard.weight)
        packed = self._exchange(ids, with_valid=True)
        n, d = len(ids), self.embedding_dim
        vecs = torch.cat([packed[:, :d], packed.new_zeros(1, d)])
        idx = torch.arange(n, dtype=torch.int64)
        idx[(packed[:, d] == 0).cpu()] = n
        dev = vecs.device
        return F.embedding_bag(idx.reshape(shape).to(dev), vecs, None if off is None else off.to(dev), None,
                               2.0, False, self.mode, False, per_sample_weights, self.include_last_offset, n)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"

