"""Run by tests/test_unroll.py under `deepspeed --num_gpus 2` (DS_ACCELERATOR=cpu): the checkpointed unroll of a
ZeRO-3-partitioned generator gives the same loss and gradients as one process on the same global batch.

Writes {rank: {"loss": ..., "grads": {name: [...]}}} pieces to OUT/rank<r>.json.
"""

import argparse
import json
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from pairfree.flow import few_step_schedule, x0_from_velocity
from pairfree.models import DiT
from pairfree.models.presets import tiny_dit_config
from pairfree.unroll import unroll

CFG = tiny_dit_config(width=16, patch_size=2)
GLOBAL_BATCH = 4


def batch():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g),
        torch.randn(GLOBAL_BATCH, 5, 8, generator=g),
        torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g),
    )


def loss_of(model, noise, text, ref, k, stage_seed):
    step = lambda x, t: x0_from_velocity(x, model(x, t, text, None, reference=ref), t)
    out = unroll(step, noise, few_step_schedule(4), k, generator=torch.Generator().manual_seed(stage_seed))
    return out.square().mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--local_rank", type=int, default=0)
    args = p.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DiT(CFG)
    config = {
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
        "optimizer": {"type": "SGD", "params": {"lr": 0.0}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    noise, text, ref = batch()
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    # the fresh noise generator is seeded per rank as the trainer will: same stream per sample shard
    loss = loss_of(engine.module, noise[shard], text[shard], ref[shard], args.k, stage_seed=rank)
    engine.backward(loss)
    from deepspeed.utils import safe_get_full_grad

    grads = {n: safe_get_full_grad(p).flatten().tolist() for n, p in engine.module.named_parameters()}
    losses = [None] * world
    dist.all_gather_object(losses, loss.item())
    if rank == 0:
        Path(args.out).write_text(json.dumps({"losses": losses, "grads": grads, "world": world}))
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main()
