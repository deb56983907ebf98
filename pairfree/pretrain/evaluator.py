"""``pairfree pretrain evaluator``: train the attribute-reading CNN on rendered scenes (30% with a style), with
corruptions (Gaussian noise, blur, a colour shift) so it reads generated images, not only clean renders."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from pairfree.evaluator import HIDDEN_UNDER, Evaluator, EvaluatorConfig, accuracy, loss, targets
from pairfree.pretrain.common import Prefetch, PretrainConfig, command_line, ship, write_card
from pairfree.pretrain.loop import train
from pairfree.shipped import model_name
from pairfree.world.datasets import item_seed
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.spec import FULL, WorldSpec, get_spec

NOISE_SIGMAS = (0.0, 0.05, 0.1, 0.15, 0.2)  # the card's robustness table (images in [-1, 1]; 0.1 is ~26 dB)


def scenes_for(seed: int, split: str, start: int, n: int, style_prob: float, spec: WorldSpec = FULL):
    out = []
    for i in range(start, start + n):
        rng = random.Random(item_seed(seed, split, i))
        sc = sample_scene(rng.getrandbits(63), spec)
        if rng.random() < style_prob:
            sc = dataclasses.replace(sc, style=rng.choice(spec.styles[1:]))
        out.append(sc)
    return out


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur with a per-image ``sigma`` (pixels; 0 leaves the image as it is)."""
    x = torch.arange(-2, 3, dtype=images.dtype)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, 5)
    b, c, h, w = images.shape
    pad = F.pad(images, (2, 2, 2, 2), mode="replicate")
    rows = sum(k[:, i, None, None, None] * pad[:, :, :, i : i + w] for i in range(5))
    return sum(k[:, i, None, None, None] * rows[:, :, i : i + h, :] for i in range(5))


def corrupt(images: torch.Tensor, generator: torch.Generator, max_sigma: float = 0.2) -> torch.Tensor:
    """What generated images look like beside clean renders: per image, with probability 1/2 Gaussian noise of
    σ ~ U(0, ``max_sigma``), with probability 1/3 a blur of σ ~ U(0.3, 1) px, and a small colour shift (±0.04)."""
    b = images.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)
    blurred = blur(images, 0.3 + 0.7 * u(b))
    images = torch.where((u(b) < 1 / 3)[:, None, None, None], blurred, images)
    images = images + (u(b, 3, 1, 1) - 0.5) * 0.08
    sigma = torch.where(u(b) < 0.5, u(b) * max_sigma, torch.zeros(b))
    return images + sigma[:, None, None, None] * torch.randn(images.shape, generator=generator)


def batch_of(scenes, resolution, corrupt_seed: int | None = None):
    """Images in [-1, 1] and the evaluator's targets; with ``corrupt_seed``, corrupted by :func:`corrupt`."""
    images = render(scenes, resolution)[0] * 2 - 1
    if corrupt_seed is not None:
        images = corrupt(images, torch.Generator().manual_seed(corrupt_seed))
    return {"images": images, "targets": targets(scenes)}


@torch.no_grad()
def evaluate(
    model: Evaluator, seed: int, n: int, resolution: int, style_prob: float, noise: float = 0.0, blur_px: float = 0.0
) -> dict:
    """Held-out per-attribute accuracy and whole-scene reading (``scene``: every attribute right) on renders of
    the ``val`` stream, optionally with Gaussian noise ``noise`` (images in [-1, 1]) or a blur of ``blur_px``."""
    model.eval()
    accs, count, whole = {}, 0, 0
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, 250):
        m = min(250, n - start)
        scenes = scenes_for(seed, "val", start, m, style_prob, model.spec)
        b = batch_of(scenes, resolution)
        images = b["images"]
        if blur_px:
            images = blur(images, torch.full((m,), blur_px))
        images = images + noise * torch.randn(images.shape, generator=g)
        out = model(images)
        for k, v in accuracy(out, b["targets"]).items():
            accs[k] = accs.get(k, 0.0) + v * m
        whole += sum(scene_read_right(sc, seen) for sc, seen in zip(scenes, model.read(images)))
        count += m
    return {**{k: v / count for k, v in accs.items()}, "scene": whole / count}


def scene_read_right(scene, seen) -> bool:
    """Whether a reading gets every attribute the scene's style leaves visible right."""
    hidden = HIDDEN_UNDER[scene.style]
    key = lambda sc: (
        sc.style,
        tuple(getattr(sc, k) for k in ("background", "background_texture") if k not in hidden),
        sorted(
            (o.row, o.col, *(getattr(o, k) for k in ("shape", "color", "texture", "size") if k not in hidden))
            for o in sc.objects
        ),
    )
    return key(scene) == key(seen)


def run(cfg: PretrainConfig, resume: bool = False) -> dict:
    out = Path(cfg.out)
    spec = get_spec(cfg.world)
    name = model_name("evaluator", spec)
    corruption = cfg.model.get("corrupt", True)
    model = Evaluator(EvaluatorConfig(**{k: v for k, v in cfg.model.items() if k != "corrupt"}, world=spec.to_dict()))
    seed = cfg.loop.seed
    source = Prefetch(
        lambda step: batch_of(
            scenes_for(seed, "train", step * cfg.batch, cfg.batch, 0.3, spec),
            cfg.resolution,
            corrupt_seed=item_seed(seed, "train", step) if corruption else None,
        ),
        cfg.loop.prefetch,
    )

    def step_loss(m, b):
        o = m(b["images"])
        return loss(o, b["targets"]), {}

    result = train(model, source, step_loss, cfg.loop, out, resume=resume, title=name)
    if not result["is_main"]:  # data-parallel: rank 0 exports, evaluates and writes the card
        return {}
    final = result["ema"] or model
    plain = evaluate(final, seed, cfg.eval_items, cfg.resolution, style_prob=0.0)
    styled = evaluate(final, seed + 1, cfg.eval_items, cfg.resolution, style_prob=1.0)
    noisy = {
        f"{s:g}": evaluate(final, seed, cfg.eval_items, cfg.resolution, 0.3, noise=s)["scene"] for s in NOISE_SIGMAS
    }
    blurred = evaluate(final, seed, cfg.eval_items, cfg.resolution, 0.3, blur_px=0.7)["scene"]
    metrics = {
        "unstyled": plain,
        "styled": styled,
        "scene_vs_noise_sigma": noisy,
        "scene_blur_0.7px": blurred,
        "min_attribute": min(v for k, v in plain.items() if k != "scene"),
    }
    export = out / "model"
    final.save_pretrained(export)
    (export / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if (out / "loss.png").exists():
        (export / "loss.png").write_bytes((out / "loss.png").read_bytes())
    attrs = ["present", "shape", "color", "texture", "size", "background", "background_texture"]
    table = "\n".join(
        ["| noise σ (images in [-1, 1]) | PSNR (dB) | whole scene read right |", "|---|---|---|"]
        + [
            f"| {s} | {'∞' if float(s) == 0 else f'{20 * math.log10(2 / float(s)):.1f}'} | {v:.3f} |"
            for s, v in noisy.items()
        ]
        + [f"| blur 0.7 px | – | {blurred:.3f} |"]
    )
    write_card(
        export / "MODEL_CARD.md",
        name,
        "A small CNN (independent of the judge) that reads every attribute of a shapes-world image: per grid "
        "cell presence, shape, colour, texture, size; background colour and texture; global style. The "
        "benchmark's measuring stick.",
        f"World `{spec.name}` ({spec.distinct_scenes():,} distinct scenes). Freshly rendered scenes from the "
        f"`train` seed stream ({cfg.batch} per step, 30% with a random style; attributes a style hides are not "
        f"trained){', corrupted by noise, blur and a colour shift' if corruption else ''}. Held-out: the `val` "
        "stream.",
        result,
        metrics,
        command_line(),
        [(f"unstyled {a} accuracy", plain[a], 0.995) for a in attrs]
        + [("styled style accuracy", styled["style"], 0.99)]
        + [("whole scene, noise σ 0.1", noisy["0.1"], 0.95), ("whole scene, blur 0.7 px", blurred, 0.95)],
        notes="Whole-scene reading against corruption (held-out renders, 30% styled):\n\n" + table,
    )
    if cfg.ship:
        ship(out, name)
    return metrics
