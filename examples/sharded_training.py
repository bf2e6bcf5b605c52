"""A CTR-style model whose embedding table is sharded over processes (embtab.distributed).

The embedding bag is model-parallel (each rank owns the IDs that hash to it); the dense tower is
data-parallel (DDP). Launch on one machine with 2 processes:

    torchrun --nproc-per-node 2 examples/sharded_training.py --steps 50 --ckpt /tmp/embtab-ckpt

or on two machines (run on each, with node-rank 0 / 1 and the first machine's address):

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \
        --rdzv-id job42 examples/sharded_training.py --ckpt /shared/embtab-ckpt

A rerun with --ckpt on any number of processes resumes from the last checkpoint (resharded).
"""

import argparse
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from embtab.cli import int_at_least
from embtab.distributed import ShardedCuckooEmbeddingBag


class CTRModel(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # Raw 64-bit feature IDs, one bag of features per example, sharded by ID over the ranks.
        self.features = ShardedCuckooEmbeddingBag(100_000, dim, mode="sum", seed=0, name="features")
        # The dense tower is replicated and averaged by DDP (the sharded table must not be).
        self.tower = DDP(nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 1)))

    def forward(self, ids, offsets):
        return self.tower(self.features(ids, offsets)).squeeze(-1)


def batch(step: int, rank: int, size: int = 256, fields: int = 8):
    """This rank's share of a synthetic click log: `fields` hashed categorical IDs per example."""
    rng = np.random.default_rng([step, rank])
    ranks = np.minimum(rng.zipf(1.2, size=(size, fields)), 10**6).astype(np.uint64)
    # Raw 64-bit IDs scattered over the whole range, as a feature hasher makes them (multiplying
    # by an odd constant modulo 2**64 is a bijection, so distinct ranks stay distinct IDs).
    ids = (ranks * np.uint64(0x9E3779B97F4A7C15)).view(np.int64)
    label = torch.from_numpy((ids[:, 0] % 3 == 0).astype(np.float32))
    return torch.from_numpy(ids.reshape(-1)), torch.arange(0, size * fields, fields), label


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run it under torchrun, e.g. torchrun --nproc-per-node 2 "
               "examples/sharded_training.py --steps 50 --ckpt /tmp/embtab-ckpt",
    )
    ap.add_argument("--steps", type=int_at_least(0), default=50)
    ap.add_argument("--dim", type=int_at_least(1), default=16)
    ap.add_argument("--ckpt", help="checkpoint directory (shared by all ranks)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a dead peer fails the others")
    args = ap.parse_args()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        ap.error("run it under torchrun (RANK and WORLD_SIZE are not set), e.g. "
                 "torchrun --nproc-per-node 2 examples/sharded_training.py")
    if args.ckpt and os.path.exists(args.ckpt) and not os.path.isdir(args.ckpt):
        # refused before training, not after the last step
        ap.error(f"--ckpt {args.ckpt} exists and is not a directory")

    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))  # env:// from torchrun
    rank = dist.get_rank()
    torch.manual_seed(0)  # identical dense towers on every rank
    model = CTRModel(args.dim)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    start = 0
    if args.ckpt and os.path.exists(os.path.join(args.ckpt, model.features.name + ".manifest.json")):
        model.features.load(args.ckpt, opt)
        dense = torch.load(os.path.join(args.ckpt, "dense.pt"), weights_only=True)
        model.tower.module.load_state_dict(dense["tower"])
        start = dense["step"]
    loss_fn = nn.BCEWithLogitsLoss()
    for step in range(start, start + args.steps):
        ids, offsets, label = batch(step, rank)
        opt.zero_grad()
        loss = loss_fn(model(ids, offsets), label)
        loss.backward()  # every rank, every step: the gradients travel back to the owners
        opt.step()
        if rank == 0 and step % 10 == 0:
            print(f"step {step} loss {loss.item():.4f} ids on rank 0: {model.features.num_ids}")
    if args.ckpt:
        # Adagrad's dense-tower state is not saved here: keep the example short.
        model.features.save(args.ckpt, opt)
        if rank == 0:
            torch.save({"tower": model.tower.module.state_dict(), "step": start + args.steps},
                       os.path.join(args.ckpt, "dense.pt"))
    # Release DDP before the process group: DDP's reducer holds the group, and if its destructor
    # drops the last reference, gloo's teardown can deadlock on the GIL (pytorch/pytorch#56297).
    del model, opt
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
