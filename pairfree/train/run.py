"""Entry point shared by ``pairfree train`` and the ``deepspeed`` launcher: config, models, trainer."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from pairfree.config import add_run_arguments, load_config
from pairfree.data.records import read_records
from pairfree.device import resolve_device
from pairfree.engine.data_parallel import DataParallelStrategy, join
from pairfree.train.config import TrainConfig
from pairfree.train.distributed import build_distributed_trainer
from pairfree.train.grpo import GRPOTrainer
from pairfree.train.models import load_models
from pairfree.train.paired import PairedTrainer
from pairfree.train.trainer import EditorTrainer
from pairfree.world.spec import get_spec

TRAINERS = {"pair-free": EditorTrainer, "paired": PairedTrainer, "grpo": GRPOTrainer}  # the config's `trainer`


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "YAML config (configs/shapes/editor.yaml)", "steps=100 loss.vlm_weight=0.05")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher


def train(args, trainer: str | None = None) -> int:
    """Run the config's trainer (``trainer``, when given, wins: ``python -m pairfree.train.paired``) from parsed
    ``args``."""
    cfg = load_config(TrainConfig, args.config, args.overrides)
    if trainer is not None:
        cfg.trainer = trainer
    what = {"pair-free": "editor", "paired": "paired (supervised) editor", "grpo": "Flow-GRPO editor"}[cfg.trainer]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = distributed and cfg.distributed.backend == "deepspeed"
    device = None if deepspeed else resolve_device(cfg.device)  # under deepspeed each rank takes its own GPU
    if cfg.data.source == "jsonl":
        read_records(cfg.data.path)  # a bad file fails here, before minutes of model loading
    trainer_cls = TRAINERS[cfg.trainer]
    models = load_models(cfg.models, critic=cfg.uses_critic, world=get_spec(cfg.world))
    if deepspeed:
        trainer = build_distributed_trainer(cfg, models, trainer_cls)
    elif distributed:  # torchrun: plain data parallelism
        ranks, device = join(device)
        trainer = trainer_cls(cfg, models.to(device), strategy=DataParallelStrategy(ranks))
    else:
        trainer = trainer_cls(cfg, models.to(device))
        if trainer.is_main:
            print(f"training on {device}")
    logs = trainer.train(resume=args.resume)
    trainer.strategy.close()
    if trainer.is_main:
        print(json.dumps({"step": trainer.step, "skipped": trainer.skipped, **logs}, indent=1, sort_keys=True))
        print(f"{what} in {cfg.out}/model; metrics.jsonl, loss.png and samples/ in {cfg.out}")
    if distributed:
        leave_launched_rank()
    return 0


def leave_launched_rank() -> None:
    """End a launched rank now that its run is saved and the process group is left: skip the interpreter's
    teardown, where gloo's threads may still release tensors after Python is gone and abort the rank
    ("terminate called without an active exception", exit -6: seen in CI on a finished 2-rank DeepSpeed run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv=None, trainer: str | None = None, prog: str = "python -m pairfree.train") -> int:
    p = argparse.ArgumentParser(prog=prog, description="editor training (pair-free, paired or grpo: `trainer`)")
    add_arguments(p)
    return train(p.parse_args(argv), trainer)
