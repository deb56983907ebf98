"""What a resumable run saves besides its models: atomic checkpoint files, RNG states, and the warmed-up EMA."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a run killed mid-write leaves the previous checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_states() -> dict:
    """The global RNG states (torch, Python, CUDA) a resumed run restores."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(s: dict) -> None:
    """Restore what :func:`rng_states` saved."""
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


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """One EMA step of ``ema``'s parameters toward ``model``'s with the warmed-up decay of ``step``."""
    d = ema_decay(step, decay)
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1 - d)
