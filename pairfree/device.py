"""Which device a single-process run trains on, from its config's name for it."""

from __future__ import annotations

import re

import torch

from pairfree.config import ConfigError


def check_device_name(name: str, key: str = "device") -> str:
    """``name`` if it is a device a run can ask for ("auto", "cpu", "cuda", "cuda:N"), else a ValueError naming the
    config ``key`` and it."""
    if not (name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise ValueError(f"{key}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return name


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The single-process training device of config ``key`` (``device``; ``loop.device`` for pretraining): ``auto``
    is the GPU when there is one. Asking for a GPU that is not there is an error, not a silent fall-back to a CPU
    run."""
    try:
        check_device_name(name, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
