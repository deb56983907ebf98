"""Run by tests/test_engine.py under `deepspeed --num_gpus 2` (DS_ACCELERATOR=cpu): a skipped update on a
ZeRO engine leaves parameters and Adam's state as they were, so step, skip, step == step, step.

Writes {"params_skip": [...], "params_plain": [...], "state_kept": bool} to OUT (rank 0).
"""

import argparse
import json
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from pairfree.engine.deepspeed import EngineOptimized, trained_engine

BETAS = (0.9, 0.999)


def engine(stage: int) -> EngineOptimized:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 10.0,
    }
    e = trained_engine(model, lr=0.1, betas=BETAS, weight_decay=0.01, config=config)
    return EngineOptimized(e, e.module, BETAS, 0.01)


def loss_of(opt: EngineOptimized, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * i + dist.get_rank())
    x, y = torch.randn(2, 7, generator=g), torch.randn(2, 3, generator=g) * (50.0 if i == 1 else 1.0)
    return (opt.module(x) - y).square().mean()


def inner_state(opt: EngineOptimized) -> list:
    inner = getattr(opt.optimizer, "optimizer", opt.optimizer)
    return [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in inner.state.values()]


def full_params(opt: EngineOptimized) -> list[float]:
    with deepspeed.zero.GatheredParameters(list(opt.module.parameters())):
        return torch.cat([p.detach().flatten() for p in opt.module.parameters()]).tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("--local_rank", type=int, default=0)
    args = p.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")

    skipping = engine(args.stage)
    skipping.backward(loss_of(skipping, 0))
    skipping.step()
    before, params_before = inner_state(skipping), full_params(skipping)
    skipping.backward(loss_of(skipping, 1))  # a spike: dropped
    skipping.skip()
    after, params_after = inner_state(skipping), full_params(skipping)
    kept = params_before == params_after and len(before) == len(after)
    for a, b in zip(before, after):
        kept = kept and a.keys() == b.keys()
        kept = kept and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    skipping.backward(loss_of(skipping, 2))
    skipping.step()

    plain = engine(args.stage)
    for i in (0, 2):
        plain.backward(loss_of(plain, i))
        plain.step()
    result = {"params_skip": full_params(skipping), "params_plain": full_params(plain), "state_kept": kept}
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main()
