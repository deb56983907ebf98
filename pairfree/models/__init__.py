"""Models: the SANA-architecture DiT (teacher, critic, generator), text encoders, autoencoders."""

from pairfree.models.dit import DiT, DiTConfig
from pairfree.models.persistence import CheckpointError

__all__ = ["CheckpointError", "DiT", "DiTConfig"]
