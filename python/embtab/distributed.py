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
updates the owner's rows. Collectives are ``all_to_all_single`` with uneven splits, which the
gloo backend supports on CPU tensors (checked with torch 2.13); with another backend (NCCL) the
messages live on the weight's device (that path is untested so far).

Since a new ID's vector depends on ``(seed, ID)`` only and every occurrence of an ID reaches its
owner in one batch, ``W`` ranks each feeding their part of a global batch compute the same
vectors, gradients and (after optimizer steps) weights per ID as one
:class:`~embtab.nn.CuckooEmbedding` fed the concatenated batch with the summed loss.

Combining with DDP: the sharded module's parameters are model-parallel; exclude them from
``DistributedDataParallel`` (wrap only the dense part, or call
``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)`` with
:func:`sharded_parameter_names`), and give them their own optimizer (or the same one: each
rank's optimizer then updates its own shard and DDP's averaged dense parameters).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from embtab import _core
from embtab._hashing import mix64
from embtab._modules import as_id_array as _as_id_array
from embtab._modules import check_bag_args as _check_bag_args
from embtab._modules import check_bag_config as _check_bag_config
from embtab._modules import row_state as _row_state
from embtab.nn import CuckooEmbedding, OnFull

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
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"


class ShardedCommError(RuntimeError):
    """A collective of a sharded module failed: a peer died, stalled past the process group's
    timeout, or the ranks disagreed on the sequence of calls. The message names the step."""


def owner_of(ids: Tensor, world_size: int, shard_seed: int) -> Tensor:
    """Owning rank of each raw ID (same shape, int64): ``mix64(id, shard_seed) % world_size``."""
    flat, shape = _as_id_array(ids, "ids")
    return torch.from_numpy(_core.hashed_rows(flat, int(world_size), int(shard_seed) % _U64, 1)).reshape(shape)


def sharded_parameter_names(model: nn.Module) -> list:
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
    def forward(ctx, x, in_splits, out_splits, group, traffic):
        ctx.in_splits, ctx.out_splits, ctx.group, ctx.traffic = in_splits, out_splits, group, traffic
        y = x.new_empty((sum(out_splits), *x.shape[1:]))
        _collective("all_to_all of vectors (forward)", group,
                    lambda: dist.all_to_all_single(y, x.contiguous(), out_splits, in_splits, group=group))
        return y

    @staticmethod
    def backward(ctx, gy):
        gx = gy.new_empty((sum(ctx.in_splits), *gy.shape[1:]))
        _collective("all_to_all of gradients (backward)", ctx.group,
                    lambda: dist.all_to_all_single(gx, gy.contiguous(), ctx.in_splits, ctx.out_splits,
                                                   group=ctx.group))
        r = dist.get_rank(ctx.group)
        row = gy[0].numel() * gy.element_size() if gy.shape[0] else 0
        ctx.traffic["grad_bytes"] += (sum(ctx.out_splits) - ctx.out_splits[r]) * row
        return gx, None, None, None, None


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _shard_name(rank: int, world_size: int, token: str) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.{token}.embtab"


def _is_shard_file(name: str) -> bool:
    return name.startswith("shard-") and name.endswith(".embtab")


def _read_shard(path: str, expect_sha: str) -> dict:
    """Payload of a shard file; FileNotFoundError / ValueError naming ``path``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"embtab.distributed: shard file {path} is missing (listed in {_MANIFEST})")
    with open(path, "rb") as f:
        data = f.read()
    head = len(_MAGIC) + 32
    if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"embtab.distributed: {path} is not an embtab shard file (bad magic or truncated)")
    digest, payload = data[len(_MAGIC):head], data[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"embtab.distributed: shard file {path} is corrupt (checksum mismatch)")
    if digest.hex() != expect_sha:
        raise ValueError(f"embtab.distributed: shard file {path} does not belong to this checkpoint "
                         f"(its checksum differs from the one in {_MANIFEST}; a later save was interrupted?)")
    obj = torch.load(io.BytesIO(payload), weights_only=True)
    if obj.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"embtab.distributed: {path} has format_version {obj.get('format_version')}, "
                         f"expected {_FORMAT_VERSION}")
    return obj


class _ShardedBase(nn.Module):
    _local_cls = CuckooEmbedding

    def __init__(self, num_embeddings: int, embedding_dim: int, *, process_group=None,
                 shard_seed: Optional[int] = None, local_kwargs: dict):
        super().__init__()
        if local_kwargs.get("optimizer") is not None:  # the shard checkpoints keep no fused state
            raise ValueError("optimizer= (embtab.optim) is not supported by the sharded modules "
                             "yet: train them with a torch optimizer over module.parameters()")
        if not dist.is_initialized():
            raise RuntimeError("embtab.distributed: torch.distributed is not initialised; call "
                               "torch.distributed.init_process_group(...) before building a sharded module")
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        seed = int(local_kwargs.get("seed", 0)) % _U64
        self.shard_seed = (mix64(seed, _SHARD_SALT) if shard_seed is None else int(shard_seed)) % _U64
        per_shard = max(1, -(-int(num_embeddings) // self.world_size))
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

    # introspection ----------------------------------------------------------------------------

    @property
    def weight(self) -> Tensor:
        """This rank's weight shard (``shard.weight``)."""
        return self.shard.weight

    @property
    def num_ids(self) -> int:
        """Live IDs on this rank's shard."""
        return self.shard.num_ids

    def stats(self) -> dict:
        """This shard's :meth:`embtab.nn.CuckooEmbedding.stats` plus ``rank`` and ``world_size``."""
        return {**self.shard.stats(), "rank": self.rank, "world_size": self.world_size}

    def owner_of(self, ids: Tensor) -> Tensor:
        """Owning rank of each raw ID."""
        return owner_of(ids, self.world_size, self.shard_seed)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world_size={self.world_size}, shard_seed={self.shard_seed}"

    # routing ----------------------------------------------------------------------------------

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
        send_counts = np.bincount(owner, minlength=ws).astype(np.int64)
        cdev = torch.device("cpu") if self._comm_on_cpu else self.shard.weight.device
        counts_t = torch.from_numpy(send_counts).to(cdev)
        recv_counts_t = torch.empty(ws, dtype=torch.int64, device=cdev)
        _collective("all_to_all of ID counts", g, lambda: dist.all_to_all_single(recv_counts_t, counts_t, group=g))
        send, recv = send_counts.tolist(), recv_counts_t.tolist()
        send_ids = torch.from_numpy(ids[order]).to(cdev)
        recv_ids = torch.empty(sum(recv), dtype=torch.int64, device=cdev)
        _collective("all_to_all of IDs", g,
                    lambda: dist.all_to_all_single(recv_ids, send_ids, recv, send, group=g))

        vecs = self.shard(recv_ids)
        if with_valid:
            valid = (self.shard.lookup(recv_ids) >= 0).to(vecs.dtype).to(vecs.device)
            vecs = torch.cat([vecs, valid[:, None]], dim=1)
        dev = vecs.device
        if self._comm_on_cpu:
            vecs = vecs.cpu()
        out_sorted = _AllToAll.apply(vecs, recv, send, g, self.traffic)
        inv = np.argsort(order, kind="stable")
        if expand is not None:
            inv = inv[expand]
        inv = torch.from_numpy(inv).to(out_sorted.device)
        out = out_sorted.index_select(0, inv).to(dev)

        t = self.traffic
        remote = len(ids) - send[r]
        row = vecs.shape[1] * vecs.element_size()
        t["steps"] += 1
        t["count_bytes"] += (ws - 1) * 8
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

    def save(self, directory, optimizer: Optional[torch.optim.Optimizer] = None) -> str:
        """Write this rank's shard to ``directory`` (a collective: every rank calls it).

        Each rank writes ``shard-RRRRR-of-WWWWW.TOKEN.embtab`` (TOKEN: drawn by rank 0 for this
        save; the file holds a magic number, the SHA-256 of the payload, and the payload: the
        shard's IDs with their vectors, eviction/admission state, counters and, with
        ``optimizer``, the per-row optimizer state of ``shard.weight`` by ID) to a temporary file
        that is fsynced and renamed; then rank 0 writes ``manifest.json`` (world size, shard
        seed, every shard's file and checksum) the same way, and only then deletes the shard
        files of earlier saves. A save interrupted at any point therefore leaves the previous
        checkpoint (manifest and shards) whole. ``directory`` must be visible to every rank
        (shared storage across machines). Returns the path of this rank's shard file.
        """
        directory = os.fspath(directory)
        if self.rank == 0:
            os.makedirs(directory, exist_ok=True)
        token = [os.urandom(6).hex() if self.rank == 0 else None]
        _collective("broadcast of the save token", self.process_group,
                    lambda: dist.broadcast_object_list(token, src=dist.get_global_rank(self.process_group, 0)
                                                       if self.process_group is not None else 0,
                                                       group=self.process_group))
        token = token[0]
        payload = self._shard_payload(optimizer)
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).digest()
        path = os.path.join(directory, _shard_name(self.rank, self.world_size, token))
        _atomic_write(path, _MAGIC + digest + data)
        shas = [None] * self.world_size
        _collective("all_gather of shard checksums", self.process_group,
                    lambda: dist.all_gather_object(shas, digest.hex(), group=self.process_group))
        if self.rank == 0:
            manifest = {"format_version": _FORMAT_VERSION, "world_size": self.world_size,
                        "shard_seed": str(self.shard_seed), "seed": str(self.shard.seed),
                        "embedding_dim": self.embedding_dim,
                        "shards": [{"file": _shard_name(i, self.world_size, token), "sha256": s}
                                   for i, s in enumerate(shas)]}
            _atomic_write(os.path.join(directory, _MANIFEST), json.dumps(manifest, indent=1).encode())
            keep = {e["file"] for e in manifest["shards"]}
            for name in os.listdir(directory):
                if _is_shard_file(name) and name not in keep:
                    os.unlink(os.path.join(directory, name))
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
                    per_row[k] = v[live.to(v.device)].cpu()
                else:
                    other[k] = v.cpu() if isinstance(v, Tensor) else v
            p["optimizer"] = {"per_row": per_row, "other": other}
        return p

    def load(self, directory, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Load a checkpoint written by :meth:`save` with any world size (resharding).

        Every rank reads every shard file of the checkpoint (verifying each checksum against the
        file and the manifest) and keeps the IDs it owns under the current world size, with
        their vectors, eviction state and, with ``optimizer``, per-row optimizer state (other
        optimizer state, e.g. Adam's ``step``, is taken from the first shard that has it). With
        the same world size the counters and admission sketch come back exactly; with another,
        the admission sketch is the sum of the saved ones (counts are then never
        under-estimated) and the admission/eviction/growth counters restart.

        Raises
        ------
        FileNotFoundError
            The manifest or a shard file is missing (the message names it).
        ValueError
            A file is corrupt, truncated, from another checkpoint, or the checkpoint was made
            with another ``shard_seed``/``embedding_dim``.
        """
        directory = os.fspath(directory)
        mpath = os.path.join(directory, _MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"embtab.distributed: checkpoint manifest {mpath} is missing")
        try:
            with open(mpath, "rb") as f:
                manifest = json.loads(f.read().decode())
            old_ws = int(manifest["world_size"])
            shards = manifest["shards"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"embtab.distributed: checkpoint manifest {mpath} is corrupt: {e}") from None
        if int(manifest["shard_seed"]) != self.shard_seed or int(manifest["embedding_dim"]) != self.embedding_dim:
            raise ValueError(f"embtab.distributed: checkpoint {directory} has shard_seed={manifest['shard_seed']}, "
                             f"embedding_dim={manifest['embedding_dim']}; this module has "
                             f"shard_seed={self.shard_seed}, embedding_dim={self.embedding_dim}")
        parts = []
        for entry in shards:
            parts.append(self._restrict(_read_shard(os.path.join(directory, entry["file"]), entry["sha256"])))
        self._load_parts(parts, old_ws, optimizer)

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
        return p

    @torch.no_grad()
    def _load_parts(self, parts: list, old_ws: int, optimizer) -> None:
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
        s.load_state_dict(sd)
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
            optimizer.state[s.weight] = st


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
    **kwargs
        ``on_full``, ``growth_factor``, ``min_count``, ``admission_eps``, ``admission_delta``,
        ``init``, ``seed``, ``num_threads``: as the single-process module, applied per shard.

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
    * Each rank sends each distinct ID of its batch once (and gets one vector back, and sends
      one summed gradient), unless the owner must see every occurrence: with ``min_count > 1``,
      ``on_full="evict_lfu"`` or ``scale_grad_by_freq`` every occurrence travels (``dedup``).
    * ``traffic`` counts this rank's bytes sent to other ranks (IDs, counts, vectors, gradients)
      and the minimum: distinct remote IDs plus their vectors.

    Example::

        >>> dist.init_process_group("gloo", ...)                    # doctest: +SKIP
        >>> emb = ShardedCuckooEmbedding(10**6, 32, seed=0)         # doctest: +SKIP
        >>> out = emb(torch.tensor([[2**63 + 5, 17]]))              # [1, 2, 32] on every rank
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_id: Optional[int] = None,
                 max_norm: Optional[float] = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Optional[Tensor] = None, _freeze: bool = False,
                 device=None, dtype=None, *, process_group=None, shard_seed: Optional[int] = None, **kwargs):
        local = dict(padding_id=padding_id, max_norm=max_norm, norm_type=norm_type,
                     scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight, _freeze=_freeze,
                     device=device, dtype=dtype, **kwargs)
        super().__init__(num_embeddings, embedding_dim, process_group=process_group, shard_seed=shard_seed,
                         local_kwargs=local)

    def forward(self, input: Tensor) -> Tensor:
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
    whole global batch, as in the single-process module fed the concatenated batch.

    Shape
    -----
    As :class:`embtab.nn.CuckooEmbeddingBag`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: Optional[float] = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                 sparse: bool = False, _weight: Optional[Tensor] = None, include_last_offset: bool = False,
                 padding_id: Optional[int] = None, device=None, dtype=None, *, process_group=None,
                 shard_seed: Optional[int] = None, **kwargs):
        # sparse applies to the owner's CuckooEmbedding, not to the local reduction: max is fine.
        self_mode = _check_bag_config(mode, False, bool(scale_grad_by_freq))
        local = dict(padding_id=padding_id, max_norm=max_norm, norm_type=norm_type,
                     scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=_weight,
                     _freeze=kwargs.pop("_freeze", False), device=device, dtype=dtype, **kwargs)
        super().__init__(num_embeddings, embedding_dim, process_group=process_group, shard_seed=shard_seed,
                         local_kwargs=local)
        self.mode = self_mode
        self.include_last_offset = bool(include_last_offset)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        ids, shape = _as_id_array(input, "input")
        off = _check_bag_args(input, offsets, per_sample_weights, self.mode, self.include_last_offset,
                              self.shard.weight)
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

