"""The pretraining commands' training loop (evaluator, judge, teacher) on the shared engine (:mod:`pairfree.engine`).

Per step it draws batch ``step`` from an index-addressable source (so a resumed run sees exactly the data an
uninterrupted one would), takes an AdamW step at the scheduled learning rate and updates the warmed-up EMA.
``checkpoint.pt`` (model, EMA, optimizer, step, RNG states) is written atomically every ``ckpt_every`` steps and at
the end; ``resume=True`` continues from it. Under a launcher (``torchrun --nproc_per_node N``) the ranks split each
step's batch and average their gradients (:mod:`pairfree.engine.data_parallel`): the same steps, N× the compute.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pairfree.device import resolve_device
from pairfree.engine.data_parallel import join
from pairfree.engine.loop import cosine_decay, run_steps
from pairfree.engine.runlog import RunLog
from pairfree.engine.state import atomic_save, ema_update, rng_states, set_rng_states, to_device
from pairfree.engine.strategy import Optimized


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


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.decay == "constant":
        return 1.0
    if cfg.decay != "cosine":
        raise ValueError(f"LoopConfig.decay: expected 'cosine' or 'constant', got {cfg.decay!r}")
    return cosine_decay(step - cfg.warmup, cfg.steps - cfg.warmup, cfg.min_lr_ratio)


def train(
    model: torch.nn.Module,
    batch_fn: Callable[[int], dict],
    loss_fn: Callable,
    cfg: LoopConfig,
    out_dir: str | Path,
    resume: bool = False,
    title: str = "training",
    eval_fn: Callable | None = None,
) -> dict:
    """Train ``model`` for ``cfg.steps`` steps; returns ``{"step", "ema", "wall_s", "stopped_early",
    "is_main"}`` (a rank other than the main one exports and evaluates nothing).

    ``batch_fn(step)`` returns the batch of that step (on the CPU); ``loss_fn(model, batch)`` returns ``(loss,
    metrics)``. The steps run on ``cfg.device`` (batches moved there); the model and its EMA come back on the CPU,
    so evaluation and export are the same everywhere. ``eval_fn(model) -> {name: value}``, every
    ``cfg.eval_every`` steps, is logged to ``metrics.jsonl`` for the raw weights (``raw/<name>``) and the EMA
    (``ema/<name>``) with the wall minutes: the learning curve.
    """

    ranks, device = join(resolve_device(cfg.device, "loop.device"))
    model.to(device)
    if device.type != "cpu" or ranks.world > 1:
        print(f"{title}: rank {ranks.rank} of {ranks.world} training on {device}", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ranks.broadcast_parameters(model)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    trained = Optimized(model, cfg.lr, cfg.betas, cfg.weight_decay, cfg.grad_clip)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema else None
    start, wall_before = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        trained.opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        set_rng_states(state["rng"])
        start, wall_before = state["step"], state.get("wall_s", 0.0)
    log = RunLog(out, resume_step=start if resume else None, enabled=ranks.is_main, title=title)

    def save(step, wall):
        if not ranks.is_main:
            return
        state = {"model": model.state_dict(), "ema": None if ema is None else ema.state_dict()}
        state.update(optimizer=trained.opt.state_dict(), rng=rng_states(), step=step, wall_s=wall, config=cfg.__dict__)
        atomic_save(state, ckpt)

    def step_fn(step):
        model.train()
        lr = cfg.lr * lr_factor(step, cfg)
        trained.set_lr(lr)
        batch = ranks.shard(batch_fn(step), f"{title}: batch of step {step}")
        loss, metrics = loss_fn(model, to_device(batch, device))
        trained.backward(loss)
        ranks.average_gradients(trained.params)
        gnorm = trained.clip_and_norm() if cfg.grad_clip else 0.0
        trained.step()
        if ema is not None:
            ema_update(ema, model, step, cfg.ema)
        logs = {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}
        return {**ranks.mean(logs), "grad_norm": gnorm, "lr": lr}

    def curve(step, wall):  # the learning curve of the raw weights and the EMA
        if eval_fn is None or not cfg.eval_every or step % cfg.eval_every or not ranks.is_main:
            return []
        row = {"step": step, "minutes": wall / 60}
        for tag, m in (("raw", model), ("ema", ema)):
            if m is not None:
                row.update({f"{tag}/{k}": v for k, v in eval_fn(m).items()})
        return [row]

    try:
        result = run_steps(
            step_fn, start, cfg.steps, log, save, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every,
            max_minutes=cfg.max_minutes, wall_s=wall_before, desc=title, shown=("loss",), after_step=curve,
            show_progress=ranks.is_main, stop_together=ranks.any,
        )  # fmt: skip
    finally:
        log.close()
    ranks.close()
    model.to("cpu")
    if ema is not None:
        ema.to("cpu")
    return {
        "step": result.step, "ema": ema, "wall_s": result.wall_s, "stopped_early": result.stopped_early,
        "is_main": ranks.is_main,
    }  # fmt: skip
