"""Flow-matching utilities (t = 1 is pure noise) and the few-step sampler of docs/design.md.

``x_t = (1 − t)·x0 + t·ε``, the model predicts ``v = ε − x0``, so ``x0 = x_t − t·v``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pairfree.kernels.flow_step import flow_step


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 − t)·x0 + t·ε`` with ``t`` ``(B,)``."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``v = ε − x0``."""
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0 = x_t − t·v``."""
    return x_t - _bcast(t, x_t) * v


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """SD3/SANA time shift ``s·t / (1 + (s − 1)·t)``: more of the schedule at high noise for ``s > 1``."""
    return shift * t / (1 + (shift - 1) * t)


def logit_normal_t(
    n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """``t = σ(u)``, ``u ~ N(mean, std²)``: the training-time distribution of t (SD3)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ``uncond + s·(cond − uncond)``; ``scale`` a float or per-sample ``(B,)``."""
    if isinstance(scale, torch.Tensor):
        scale = _bcast(scale, cond)
    return uncond + scale * (cond - uncond)


def few_step_schedule(steps: int = 4, shift: float = 6.0) -> list[float]:
    """The timesteps of the few-step sampler: ``1, (K−1)/K, …, 1/K`` after the time shift. For K = 4 and
    shift 6: ``[1.0, 0.9474, 0.8571, 0.6667]`` (docs/design.md)."""
    if not 1 <= steps <= 8:
        raise ValueError(f"few_step_schedule: steps must be in 1..8, got {steps}")
    return [float(shift_time(1 - i / steps, shift)) for i in range(steps)]


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> velocity


def sample_few_step(
    predict: Predictor, noise: torch.Tensor, schedule: list[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Few-step sampling: at each scheduled t predict x̂0, then re-noise it with *fresh* noise to the next t;
    returns the last x̂0. ``predict(x_t, t)`` returns the velocity. The x̂0 and re-noise of a step run as the
    fused ``flow_step`` op (one pass over memory)."""
    x = noise
    x0 = noise
    for i, t in enumerate(schedule):
        tt = torch.full((noise.shape[0],), t, dtype=noise.dtype, device=noise.device)
        v = predict(x, tt)
        if i + 1 < len(schedule):
            fresh = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
            x0, x = flow_step(x, v, fresh, tt, torch.full_like(tt, schedule[i + 1]))
        else:
            x0 = x0_from_velocity(x, v, tt)
    return x0
