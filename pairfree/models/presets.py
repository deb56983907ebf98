"""Model presets in ``configs/``: YAML files naming an architecture, buildable on the meta device (sizes
without weights) or for real. ``dit:`` sections hold :class:`DiTConfig` fields; ``qwen2_5_vl:`` / ``gemma2:``
sections a transformers ``Qwen2_5_VLConfig`` / ``Gemma2Config``; ``dc_ae:`` diffusers ``AutoencoderDC``
arguments; ``published_parameters`` the size the checkpoint's card states."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pairfree.config import ConfigError, from_dict
from pairfree.models.dit import DiT, DiTConfig

SECTIONS = ("dit", "qwen2_5_vl", "gemma2", "dc_ae")


def read_preset(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such preset file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not (set(SECTIONS) & data.keys()):
        raise ConfigError(f"{path}: a preset needs one of the sections {list(SECTIONS)}")
    return data


def build_from_preset(path: str | Path, device: str | torch.device = "meta") -> torch.nn.Module:
    """The preset's model on ``device`` ("meta" by default: no memory, for parameter counts and planning)."""
    data = read_preset(path)
    with torch.device(device):
        if "dit" in data:
            return DiT(from_dict(DiTConfig, data["dit"], f"{path}.dit"))
        if "gemma2" in data:
            from transformers import Gemma2Config, Gemma2Model

            return Gemma2Model(Gemma2Config(**data["gemma2"]))
        if "dc_ae" in data:
            from diffusers import AutoencoderDC

            return AutoencoderDC(**data["dc_ae"])
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**data["qwen2_5_vl"]))


def tiny_dit_config(channels: int = 3, width: int = 16, text_dim: int = 8, **fields) -> DiTConfig:
    """A two-layer, two-head DiT of ``width`` for tests, quick benchmarks and examples (``fields``: any other
    :class:`DiTConfig` field)."""
    heads = 2
    return DiTConfig(
        in_channels=channels, out_channels=channels, num_layers=2, num_heads=heads, head_dim=width // heads,
        cross_heads=heads, cross_head_dim=width // heads, text_dim=text_dim, **fields,
    )  # fmt: skip


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
