"""A small, resumable training loop shared by the pretraining commands.

Per step it draws batch ``step`` from an index-addressable source (so a resumed run sees exactly the data an
uninterrupted one would), takes an AdamW step, updates an EMA, and shows a progress bar with the loss and ETA
(plain periodic lines in a log). Every ``ckpt_every`` steps (and at the end) it writes ``checkpoint.pt``
atomically — model, EMA, optimizer, step, RNG states — appends metrics to ``metrics.jsonl`` and redraws
``loss.png``. ``resume=True`` continues from the last checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pairfree.device import resolve_device
from pairfree.progress import Progress


@dataclass
class LoopConfig:
    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 100
    decay: str = "cosine"  # "cosine" (to min_lr_ratio at the last step) or "constant"
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema: float = 0.0  # 0: no EMA; the decay warms up (see ema_decay), so a short run exports what it trained
    ckpt_every: int = 500
    log_every: int = 20
    seed: int = 0
    threads: int = 0  # torch threads (0: leave the default)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0: no limit
    device: str = "auto"  # where the steps run: auto (the GPU when there is one), cpu, cuda, cuda:N
    prefetch: int = 1  # batches built ahead on background threads (a GPU needs several: rendering is on the CPU)
    eval_every: int = 0  # steps between learning-curve evaluations of the raw weights and the EMA (0: none)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_states():
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_states(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def to_device(batch, device: torch.device):
    """``batch`` with every tensor in it (dicts, lists, tuples) on ``device``; anything else as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay after ``step`` updates: ``min(decay, (1 + step) / (10 + step))``. Without the warm-up a 0.999
    EMA still holds 0.999^n of the initialisation after n steps (22 % after 1,500): a short run would export
    mostly random weights."""
    return min(decay, (1 + step) / (10 + step))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """One EMA step toward ``model`` with the warmed-up decay of ``step``."""
    d = ema_decay(step, decay)
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.decay == "constant":
        return 1.0
    if cfg.decay != "cosine":
        raise ValueError(f"LoopConfig.decay: expected 'cosine' or 'constant', got {cfg.decay!r}")
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def plot_curve(metrics_path: Path, out: Path, title: str) -> None:
    """Loss curve PNG from metrics.jsonl (steps vs loss, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def train(
    model: torch.nn.Module,
    batch_fn: Callable[[int], dict],
    loss_fn: Callable,
    cfg: LoopConfig,
    out_dir: str | Path,
    resume: bool = False,
    title: str = "training",
    params=None,
    eval_fn: Callable | None = None,
) -> dict:
    """Train ``model`` for ``cfg.steps`` steps; returns ``{"step", "ema", "wall_s", "stopped_early"}``.

    ``batch_fn(step)`` returns the batch of that step (on the CPU); ``loss_fn(model, batch)`` returns ``(loss,
    metrics)``. The steps run on ``cfg.device`` (batches moved there); the model and its EMA come back on the CPU,
    so evaluation and export are the same everywhere. ``eval_fn(model) -> {name: value}``, every
    ``cfg.eval_every`` steps, is logged to ``metrics.jsonl`` for the raw weights (``raw/<name>``) and the EMA
    (``ema/<name>``) with the wall minutes: the learning curve.
    """

    device = resolve_device(cfg.device, "loop.device")
    model.to(device)
    if device.type != "cpu":
        print(f"{title}: training on {device}", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema else None
    start, wall_before = 0, 0.0
    ckpt = out / "checkpoint.pt"
    metrics_path = out / "metrics.jsonl"
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_states(state["rng"])
        start, wall_before = state["step"], state.get("wall_s", 0.0)
        # drop metrics logged after the checkpoint (they will be logged again)
        if metrics_path.is_file():
            kept = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= start]
            metrics_path.write_text("".join(ln + "\n" for ln in kept))
    elif metrics_path.exists():
        metrics_path.unlink()

    def save(step, wall):
        atomic_save(
            {
                "model": model.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_states(),
                "step": step,
                "wall_s": wall,
                "config": cfg.__dict__,
            },
            ckpt,
        )
        plot_curve(metrics_path, out / "loss.png", title)

    t0 = time.time()
    step = start
    stopped = False
    bar = Progress(cfg.steps, initial=start, desc=title)
    running = None
    with metrics_path.open("a") as log:
        for step in range(start, cfg.steps):
            model.train()
            loss, metrics = loss_fn(model, to_device(batch_fn(step), device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else torch.tensor(0.0)
            opt.step()
            sched.step()
            if ema is not None:
                ema_update(ema, model, step, cfg.ema)
            lv = loss.item()
            running = lv if running is None else 0.95 * running + 0.05 * lv
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.3f}" for k, v in metrics.items()})
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                log.write(
                    json.dumps(
                        {
                            "step": step + 1,
                            "loss": lv,
                            "grad_norm": float(gnorm),
                            "lr": sched.get_last_lr()[0],
                            **metrics,
                        }
                    )
                    + "\n"
                )
                log.flush()
            wall = wall_before + time.time() - t0
            if eval_fn is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                e0, row = time.time(), {"step": step + 1, "minutes": wall / 60}
                for tag, m in (("raw", model), ("ema", ema)):
                    if m is not None:
                        row.update({f"{tag}/{k}": v for k, v in eval_fn(m).items()})
                log.write(json.dumps(row) + "\n")
                log.flush()
                t0 += time.time() - e0  # evaluation time does not count as training time
            if (step + 1) % cfg.ckpt_every == 0:
                save(step + 1, wall)
            if cfg.max_minutes and wall > cfg.max_minutes * 60:
                stopped = True
                step += 1
                break
        else:
            step = cfg.steps
    bar.close()
    wall = wall_before + time.time() - t0
    save(step, wall)
    model.to("cpu")
    if ema is not None:
        ema.to("cpu")
    return {"step": step, "ema": ema, "wall_s": wall, "stopped_early": stopped}
