"""The independent evaluator: a small CNN that reads every attribute of a shapes-world image.

It is the benchmark's measuring stick and deliberately shares nothing with the judge (a convolutional
network, not a VLM; trained with per-attribute classification, not Yes/No questions), so a metric computed
with it is not the reward the editor was trained against. It predicts, for each of the 9 grid cells, whether
an object is there and its shape, colour, texture and size, plus the background's colour and texture and the
global style. Its heads follow the world spec it was trained on (``config.world``); images of any resolution are
resized to the spec's. Trained with noise, blur and colour-shift corruptions so it reads generated images (which
are never clean renders) as a person would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pairfree.models.persistence import PretrainedMixin
from pairfree.world.scene import Obj, Scene
from pairfree.world.spec import WorldSpec, get_spec

CELL_ATTRS = ("shape", "color", "texture", "size")
IGNORE = -100
# attributes a style hides (not trained or scored on such images)
HIDDEN_UNDER = {
    "none": (),
    "invert": (),
    "grayscale": ("color", "background"),
    "pixelate": ("shape", "texture", "size", "background_texture"),
    "outline": ("texture",),
}


def vocab(spec: WorldSpec) -> dict[str, tuple[str, ...]]:
    """The class names of every head in ``spec`` (cell heads: present, shape, colour, texture, size)."""
    return {
        "present": ("no", "yes"),
        "shape": spec.shapes,
        "color": spec.colors,
        "texture": spec.textures,
        "size": spec.size_names,
        "background": spec.colors,
        "background_texture": spec.textures,
        "style": spec.styles,
    }


CELL_HEADS = ("present",) + CELL_ATTRS
GLOBAL_HEADS = ("background", "background_texture", "style")


@dataclass
class EvaluatorConfig:
    width: int = 64
    resolution: int = 32
    world: dict | None = None  # the spec's fields (None: the full world, what evaluators before specs read)


class Evaluator(nn.Module, PretrainedMixin):
    """``forward(images in [-1, 1]) -> {head: logits}``: cell heads ``(B, cells, classes)``, global
    ``(B, classes)``."""

    config_class = EvaluatorConfig

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        self.spec = get_spec(config.world)
        self.vocab = vocab(self.spec)
        w, cells = config.width, self.spec.grid**2
        conv = lambda i, o, s=1: nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.GELU())
        self.body = nn.Sequential(
            conv(3, w), conv(w, w), conv(w, 2 * w, 2), conv(2 * w, 2 * w), conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w)
        )
        self.cell_pos = nn.Parameter(torch.zeros(cells, 4 * w))
        self.cell_mlp = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.GELU())
        self.cell_heads = nn.ModuleDict({k: nn.Linear(4 * w, len(self.vocab[k])) for k in CELL_HEADS})
        self.global_heads = nn.ModuleDict({k: nn.Linear(8 * w, len(self.vocab[k])) for k in GLOBAL_HEADS})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        f = self.body(images)  # (B, C, R/4, R/4)
        cells = F.adaptive_avg_pool2d(f, self.spec.grid).flatten(2).transpose(1, 2)  # (B, cells, C)
        cells = self.cell_mlp(cells + self.cell_pos)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
        out = {k: h(cells) for k, h in self.cell_heads.items()}
        out.update({k: h(pooled) for k, h in self.global_heads.items()})
        return out

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[Scene]:
        """The scenes the evaluator sees (object order: row-major cells)."""
        out = self.forward(images)
        pred = {k: v.argmax(-1).tolist() for k, v in out.items()}
        g, name = self.spec.grid, lambda k, i: self.vocab[k][i]
        scenes = []
        for b in range(images.shape[0]):
            objs = tuple(
                Obj(*(name(k, pred[k][b][c]) for k in CELL_ATTRS), c // g, c % g)
                for c in range(g * g)
                if pred["present"][b][c]
            )
            background, background_texture, style = (name(k, pred[k][b]) for k in GLOBAL_HEADS)
            scenes.append(Scene(background, background_texture, objs, style, self.spec))
        return scenes


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class targets per head; attributes of empty cells and attributes hidden by the style are IGNORE."""
    b, spec = len(scenes), scenes[0].spec
    names, cells = vocab(spec), spec.grid**2
    t = {k: torch.full((b, cells), IGNORE, dtype=torch.long) for k in CELL_HEADS}
    t.update({k: torch.full((b,), IGNORE, dtype=torch.long) for k in GLOBAL_HEADS})
    for i, sc in enumerate(scenes):
        hidden = HIDDEN_UNDER[sc.style]
        t["present"][i] = 0
        for o in sc.objects:
            c = o.row * spec.grid + o.col
            t["present"][i, c] = 1
            for k in CELL_ATTRS:
                if k not in hidden:
                    t[k][i, c] = names[k].index(getattr(o, k))
        for k in ("background", "background_texture"):
            if k not in hidden:
                t[k][i] = names[k].index(getattr(sc, k))
        t["style"][i] = names["style"].index(sc.style)
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
