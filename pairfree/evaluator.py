"""The independent evaluator: a small CNN that reads every attribute of a shapes-world image.

It is the benchmark's measuring stick and deliberately shares nothing with the judge (a convolutional
network, not a VLM; trained with per-attribute classification, not Yes/No questions), so a metric computed
with it is not the reward the editor was trained against. It predicts, for each of the 9 grid cells, whether
an object is there and its shape, colour, texture and size, plus the background's colour and texture and the
global style. Images of any resolution are resized to 32².
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pairfree.models.persistence import PretrainedMixin
from pairfree.world.scene import COLORS, GRID, SHAPES, SIZES, STYLES, TEXTURES, Obj, Scene

CELL_HEADS = {"present": 2, "shape": len(SHAPES), "color": len(COLORS), "texture": len(TEXTURES), "size": len(SIZES)}
GLOBAL_HEADS = {"background": len(COLORS), "background_texture": len(TEXTURES), "style": len(STYLES)}
IGNORE = -100
# attributes a style hides (not trained or scored on such images)
HIDDEN_UNDER = {
    "none": (),
    "invert": (),
    "grayscale": ("color", "background"),
    "pixelate": ("shape", "texture", "size", "background_texture"),
    "outline": ("texture",),
}


@dataclass
class EvaluatorConfig:
    width: int = 64
    resolution: int = 32


class Evaluator(nn.Module, PretrainedMixin):
    """``forward(images in [-1, 1]) -> {head: logits}``: cell heads ``(B, 9, classes)``, global ``(B, classes)``."""

    config_class = EvaluatorConfig

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        w = config.width
        conv = lambda i, o, s=1: nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.GELU())
        self.body = nn.Sequential(
            conv(3, w), conv(w, w), conv(w, 2 * w, 2), conv(2 * w, 2 * w), conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w)
        )
        self.cell_pos = nn.Parameter(torch.zeros(GRID * GRID, 4 * w))
        self.cell_mlp = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.GELU())
        self.cell_heads = nn.ModuleDict({k: nn.Linear(4 * w, n) for k, n in CELL_HEADS.items()})
        self.global_heads = nn.ModuleDict({k: nn.Linear(8 * w, n) for k, n in GLOBAL_HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        f = self.body(images)  # (B, C, 8, 8)
        cells = F.adaptive_avg_pool2d(f, GRID).flatten(2).transpose(1, 2)  # (B, 9, C)
        cells = self.cell_mlp(cells + self.cell_pos)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
        out = {k: h(cells) for k, h in self.cell_heads.items()}
        out.update({k: h(pooled) for k, h in self.global_heads.items()})
        return out

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[Scene]:
        """The scenes the evaluator sees (object order: row-major cells)."""
        out = self.forward(images)
        pred = {k: v.argmax(-1) for k, v in out.items()}
        scenes = []
        for b in range(images.shape[0]):
            objs = []
            for c in range(GRID * GRID):
                if pred["present"][b, c]:
                    objs.append(
                        Obj(
                            SHAPES[pred["shape"][b, c]],
                            tuple(COLORS)[pred["color"][b, c]],
                            TEXTURES[pred["texture"][b, c]],
                            tuple(SIZES)[pred["size"][b, c]],
                            c // GRID,
                            c % GRID,
                        )
                    )
            scenes.append(
                Scene(
                    tuple(COLORS)[pred["background"][b]],
                    TEXTURES[pred["background_texture"][b]],
                    tuple(objs),
                    STYLES[pred["style"][b]],
                )
            )
        return scenes


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class targets per head; attributes of empty cells and attributes hidden by the style are IGNORE."""
    b = len(scenes)
    t = {k: torch.full((b, GRID * GRID), IGNORE, dtype=torch.long) for k in CELL_HEADS}
    t.update({k: torch.full((b,), IGNORE, dtype=torch.long) for k in GLOBAL_HEADS})
    for i, sc in enumerate(scenes):
        hidden = HIDDEN_UNDER[sc.style]
        t["present"][i] = 0
        for o in sc.objects:
            c = o.row * GRID + o.col
            t["present"][i, c] = 1
            for k, values in (
                ("shape", SHAPES),
                ("color", tuple(COLORS)),
                ("texture", TEXTURES),
                ("size", tuple(SIZES)),
            ):
                if k not in hidden:
                    t[k][i, c] = values.index(getattr(o, k))
        if "background" not in hidden:
            t["background"][i] = tuple(COLORS).index(sc.background)
        if "background_texture" not in hidden:
            t["background_texture"][i] = TEXTURES.index(sc.background_texture)
        t["style"][i] = STYLES.index(sc.style)
    return t


def loss(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for k, logits in out.items():
        y = tgt[k].to(logits.device)
        if (y != IGNORE).any():
            total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
    return total


@torch.no_grad()
def accuracy(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy over the entries that have a target."""
    acc = {}
    for k, logits in out.items():
        y = tgt[k].to(logits.device)
        m = y != IGNORE
        if m.any():
            acc[k] = (logits.argmax(-1)[m] == y[m]).float().mean().item()
    return acc
