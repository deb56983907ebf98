"""``pairfree pretrain evaluator``: train the attribute-reading CNN on rendered scenes (30% with a style)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch

from pairfree.evaluator import Evaluator, EvaluatorConfig, accuracy, loss, targets
from pairfree.pretrain.common import Prefetch, PretrainConfig, command_line, ship, write_card
from pairfree.pretrain.loop import train
from pairfree.world.datasets import item_seed
from pairfree.world.render import render
from pairfree.world.scene import STYLES, sample_scene

NAME = "shapes-evaluator"


def scenes_for(seed: int, split: str, start: int, n: int, style_prob: float):
    out = []
    for i in range(start, start + n):
        rng = random.Random(item_seed(seed, split, i))
        sc = sample_scene(rng.getrandbits(63))
        if rng.random() < style_prob:
            sc = dataclasses.replace(sc, style=rng.choice(STYLES[1:]))
        out.append(sc)
    return out


def batch_of(scenes, resolution):
    images, _ = render(scenes, resolution)
    return {"images": images * 2 - 1, "targets": targets(scenes)}


@torch.no_grad()
def evaluate(model: Evaluator, seed: int, n: int, resolution: int, style_prob: float) -> dict:
    model.eval()
    accs, count = {}, 0
    for start in range(0, n, 250):
        b = batch_of(scenes_for(seed, "val", start, min(250, n - start), style_prob), resolution)
        a = accuracy(model(b["images"]), b["targets"])
        m = min(250, n - start)
        for k, v in a.items():
            accs[k] = accs.get(k, 0.0) + v * m
        count += m
    return {k: v / count for k, v in accs.items()}


def run(cfg: PretrainConfig, resume: bool = False) -> dict:
    out = Path(cfg.out)
    model = Evaluator(EvaluatorConfig(**cfg.model))
    seed = cfg.loop.seed
    source = Prefetch(
        lambda step: batch_of(scenes_for(seed, "train", step * cfg.batch, cfg.batch, 0.3), cfg.resolution),
        cfg.loop.prefetch,
    )

    def step_loss(m, b):
        o = m(b["images"])
        return loss(o, b["targets"]), {}

    result = train(model, source, step_loss, cfg.loop, out, resume=resume, title=NAME)
    final = result["ema"] or model
    plain = evaluate(final, seed, cfg.eval_items, cfg.resolution, style_prob=0.0)
    styled = evaluate(final, seed + 1, cfg.eval_items, cfg.resolution, style_prob=1.0)
    metrics = {"unstyled": plain, "styled": styled}
    export = out / "model"
    final.save_pretrained(export)
    (export / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if (out / "loss.png").exists():
        (export / "loss.png").write_bytes((out / "loss.png").read_bytes())
    attrs = ["present", "shape", "color", "texture", "size", "background", "background_texture"]
    write_card(
        export / "MODEL_CARD.md",
        NAME,
        "A small CNN (independent of the judge) that reads every attribute of a shapes-world image: per grid "
        "cell presence, shape, colour, texture, size; background colour and texture; global style. The "
        "benchmark's measuring stick.",
        f"Freshly rendered scenes from the `train` seed stream ({cfg.batch} per step, 30% with a random style; "
        "attributes a style hides are not trained). Held-out: the `val` stream.",
        result,
        metrics,
        command_line(),
        [(f"unstyled {a} accuracy", plain[a], 0.99) for a in attrs]
        + [("styled style accuracy", styled["style"], 0.99)],
    )
    if cfg.ship:
        ship(out, NAME)
    return metrics
