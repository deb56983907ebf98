"""Save and load models as a local directory: ``config.json`` (the dataclass config) + ``model.safetensors``.

Writes are atomic (temp file + rename). Loading checks everything a user can get wrong — the directory, the
files, the config's fields, every tensor's presence and shape — and names the culprit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A model directory that does not match the model: the message names the path, field or tensor."""


def config_from_dict(cls, d: dict, where: str):
    """Build dataclass ``cls`` from ``d``; unknown fields are refused with the allowed list."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CheckpointError(
            f"{where}: unknown field(s) {sorted(unknown)} for {cls.__name__}; allowed: {sorted(names)}"
        )
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``from_pretrained(dir)`` for an ``nn.Module`` with a dataclass ``config``."""

    config_class: type

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = path / "model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"class": type(self).__name__})
        os.replace(tmp, path / "model.safetensors")
        cfg = {"class": type(self).__name__, **dataclasses.asdict(self.config)}
        atomic_write_text(path / "config.json", json.dumps(cfg, indent=1) + "\n")
        return path

    @classmethod
    def load_config(cls, path: str | Path):
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such model directory")
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path}: missing (a model directory holds config.json and model.safetensors)")
        try:
            d = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
        found = d.pop("class", cls.__name__)
        if found != cls.__name__:
            raise CheckpointError(f"{cfg_path}.class: expected {cls.__name__}, got {found!r}")
        return config_from_dict(cls.config_class, d, str(cfg_path))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, **overrides):
        """Load a model saved by :meth:`save_pretrained`; ``overrides`` replace config fields (e.g.
        ``gradient_checkpointing=True``)."""
        path = Path(path)
        cfg = cls.load_config(path)
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing")
        model = cls(cfg)
        load_checked(model, load_file(str(weights)), str(weights))
        return model.to(dtype) if dtype is not None else model


def load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)`` with errors naming the missing, unexpected or mis-shaped tensors."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{where}[{k}]: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}")
    model.load_state_dict(state)
