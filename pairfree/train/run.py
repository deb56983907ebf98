"""Entry point shared by ``pairfree train`` and the ``deepspeed`` launcher: config, models, trainer."""

from __future__ import annotations

import argparse
import json
import os

import torch

from pairfree.config import add_run_arguments, load_config
from pairfree.data.records import read_records
from pairfree.device import resolve_device
from pairfree.train.config import TrainConfig
from pairfree.train.distributed import build_distributed_trainer
from pairfree.train.models import load_models
from pairfree.train.trainer import EditorTrainer
from pairfree.world.spec import get_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, "YAML config (configs/shapes/editor.yaml)", "steps=100 loss.vlm_weight=0.05")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher


def train(args, trainer_cls=None, what: str = "editor") -> int:
    """Run ``trainer_cls`` (default :class:`EditorTrainer`) from parsed ``args``; ``what`` names its model."""
    cfg = load_config(TrainConfig, args.config, args.overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = None if distributed else resolve_device(cfg.device)  # under deepspeed each rank takes its own GPU
    if cfg.data.source == "jsonl":
        read_records(cfg.data.path)  # a bad file fails here, before minutes of model loading
    models = load_models(cfg.models, critic=cfg.loss.uses_critic, world=get_spec(cfg.world))
    if distributed:
        trainer = build_distributed_trainer(cfg, models, trainer_cls or EditorTrainer)
    else:
        trainer = (trainer_cls or EditorTrainer)(cfg, models.to(device))
        if trainer.is_main:
            print(f"training on {device}")
    logs = trainer.train(resume=args.resume)
    if trainer.is_main:
        print(json.dumps({"step": trainer.step, "skipped": trainer.skipped, **logs}, indent=1, sort_keys=True))
        print(f"{what} in {cfg.out}/model; metrics.jsonl, loss.png and samples/ in {cfg.out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pairfree.train", description="pair-free editor training")
    add_arguments(p)
    return train(p.parse_args(argv))
