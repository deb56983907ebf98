"""Autoencoders behind one interface: ``encode(images in [-1, 1]) -> latents``, ``decode(latents) -> images``.

Pixel space (identity) for the shapes world; diffusers ``AutoencoderDC`` (SANA's DC-AE) at paper scale.
Both are differentiable, so the judge's gradient reaches the generator through ``decode``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pairfree.models.persistence import CheckpointError


class IdentityAutoencoder(nn.Module):
    """Pixel space: latents are the images."""

    latent_channels, downsample = 3, 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class DCAutoencoder(nn.Module):
    """diffusers ``AutoencoderDC`` (frozen) with its scaling factor applied: ``z = enc(x) · s``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.scale = float(getattr(vae.config, "scaling_factor", 1.0))
        self.latent_channels = vae.config.latent_channels
        self.downsample = 2 ** (len(vae.config.encoder_block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None) -> DCAutoencoder:
        from diffusers import AutoencoderDC

        path = Path(path)
        if (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json (expected a diffusers AutoencoderDC directory)")
        return cls(AutoencoderDC.from_pretrained(path, torch_dtype=dtype))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale).sample
