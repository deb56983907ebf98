"""The flow-model bundle: a DiT and its text encoder, trained and saved together. The teacher, the critic and the
generator are each one; :func:`editor_x0` is the generator's single call, used by training, inference and
evaluation alike."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pairfree.flow import x0_from_velocity
from pairfree.models.dit import DiT
from pairfree.models.text import WorldTextEncoder


class FlowModel(nn.Module):
    """A DiT and its text encoder (``dit/`` and ``text/`` on disk): text-to-image velocity, or with ``reference``
    the editor's image-conditioned velocity."""

    def __init__(self, dit: DiT, text: nn.Module):
        super().__init__()
        self.dit, self.text = dit, text

    def velocity(self, x, t, captions: list[str], reference=None):
        emb, mask = self.text.encode(captions)
        return self.dit(x, t, emb, mask, reference=reference)

    def save_pretrained(self, path):
        path = Path(path)
        self.dit.save_pretrained(path / "dit")
        self.text.save_pretrained(path / "text")
        return path

    @classmethod
    def from_pretrained(cls, path):
        path = Path(path)
        return cls(DiT.from_pretrained(path / "dit"), WorldTextEncoder.from_pretrained(path / "text"))


def editor_x0(
    generator: FlowModel, x_t: torch.Tensor, t: torch.Tensor, reference: torch.Tensor, text, text_mask
) -> torch.Tensor:
    """One generator call: x̂0 from the noisy x_t, the clean reference image and the encoded instruction."""
    return x0_from_velocity(x_t, generator.dit(x_t, t, text, text_mask, reference=reference), t)
