"""Mixed precision of a single-process run: autocast around the forward passes, fp32 master weights, and for
fp16 a loss scaler (bf16 needs none). Under the ``deepspeed`` launcher the engines' own precision applies
(``distributed.bf16``) and this module is not used."""

from __future__ import annotations

import contextlib

import torch

MODES = ("auto", "bf16", "fp16", "no")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mixed_precision: expected one of {', '.join(MODES)}, got {mode!r}")


def resolve(mode: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU, fp32 (``no``) on a CPU, where bf16 matmuls are rarely faster."""
    check_mode(mode)
    if mode == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return mode


def autocast(mode: str, device: torch.device):
    """The context the forward passes (and losses) run in: ``torch.autocast`` in the run's dtype, or nothing."""
    if mode == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[mode])


def grad_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's dynamic loss scaler (skips a step whose gradients overflowed and lowers the scale); None otherwise."""
    return torch.amp.GradScaler(device.type) if mode == "fp16" else None
