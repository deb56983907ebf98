"""Deterministic, batched, anti-aliased renderer of shapes-world scenes (pure torch, any square resolution).

Each pixel is supersampled ``ss × ss`` times; a shape is an inside-test in object-local coordinates
(``[-1, 1]²`` = the object's box), so anti-aliasing is exact area coverage up to the supersampling. Renders come
with per-object coverage masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pairfree.world.scene import COLORS, GRID, MAX_OBJECTS, SHAPES, SIZES, TEXTURES, Scene

_RGB = torch.tensor([COLORS[c] for c in COLORS], dtype=torch.float32) / 255.0
_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}


def _inside(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-tests of every shape at local coords ``u`` (right) and ``v`` (down), picked by ``shape`` (B,)."""
    au, av, r2 = u.abs(), v.abs(), u * u + v * v
    # star: fold the angle into one of 5 sectors; inside the edge from an outer tip (r=1) to an inner corner
    theta = torch.atan2(v, u) + math.pi / 2  # tip pointing up
    sector = 2 * math.pi / 5
    phi = (torch.remainder(theta + sector / 2, sector) - sector / 2).abs()
    r = r2.sqrt()
    px, py = r * torch.cos(phi), r * torch.sin(phi)
    bx, by = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
    star = (bx - 1) * py - by * (px - 1) >= 0
    hx, hy = u * 1.2, -v * 1.2 + 0.15  # heart: (x² + y² - 1)³ ≤ x² y³, y up
    heart = (hx * hx + hy * hy - 1) ** 3 <= hx * hx * hy**3
    tests = {
        "circle": r2 <= 1.0,
        "square": torch.maximum(au, av) <= 0.85,
        "triangle": (v <= 0.8) & (au <= (v + 0.95) * (0.95 / 1.75)),
        "diamond": au + av <= 1.0,
        "cross": ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95)),
        "ring": (r2 <= 1.0) & (r2 >= 0.36),
        "star": star,
        "heart": heart,
    }
    stacked = torch.stack([tests[s] for s in SHAPES])  # (n_shapes, B, S, S)
    return stacked[shape, torch.arange(shape.shape[0])]


def _pattern(texture: torch.Tensor, u: torch.Tensor, v: torch.Tensor, freq: float) -> torch.Tensor:
    """1 where the texture's darker tone shows, per texture index (B,): solid, stripes, dots, checker."""
    fu, fv = u * freq, v * freq
    stripes = torch.remainder(torch.floor(fu + fv), 2) == 1
    dots = (torch.frac(fu) - 0.5) ** 2 + (torch.frac(fv) - 0.5) ** 2 < 0.09
    checker = torch.remainder(torch.floor(fu) + torch.floor(fv), 2) == 1
    stacked = torch.stack([torch.zeros_like(stripes), stripes, dots, checker])
    return stacked[texture, torch.arange(texture.shape[0])].float()


def _tone(rgb: torch.Tensor) -> torch.Tensor:
    """The second tone of a texture: darker for light colours, lighter for dark ones."""
    light = (rgb.mean(-1, keepdim=True) > 0.35).float()
    return light * rgb * 0.5 + (1 - light) * (rgb * 0.5 + 0.45)


def render(scenes: list[Scene], resolution: int = 32, supersample: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``scenes`` -> ``(images, masks)``: images ``(B, 3, R, R)`` in [0, 1] (float32), masks
    ``(B, 4, R, R)`` = each object slot's pixel coverage in [0, 1] (zeros for empty slots)."""
    if resolution < 8:
        raise ValueError(f"render: resolution must be >= 8, got {resolution}")
    b, s = len(scenes), resolution * supersample
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (S, S), y down
    x, y = x.expand(b, s, s), y.expand(b, s, s)

    bg = _RGB[[_COLOR_INDEX[sc.background] for sc in scenes]]  # (B, 3)
    bg_tex = torch.tensor([TEXTURES.index(sc.background_texture) for sc in scenes])
    p = _pattern(bg_tex, x * 2 - 1, y * 2 - 1, freq=6.0)[:, None]
    bg_tone = 0.5 * (bg + _tone(bg))  # a subtler second tone than objects', so objects stand out
    image = bg[:, :, None, None] * (1 - p) + bg_tone[:, :, None, None] * p

    coverage = torch.zeros(b, MAX_OBJECTS, s, s)
    for k in range(MAX_OBJECTS):
        present = torch.tensor([k < len(sc.objects) for sc in scenes])
        if not present.any():
            break
        objs = [sc.objects[k] if k < len(sc.objects) else sc.objects[0] for sc in scenes]
        half = torch.tensor([SIZES[o.size] for o in objs])[:, None, None]
        cx = torch.tensor([(o.col + 0.5) / GRID for o in objs])[:, None, None]
        cy = torch.tensor([(o.row + 0.5) / GRID for o in objs])[:, None, None]
        u, v = (x - cx) / half, (y - cy) / half
        inside = _inside(torch.tensor([SHAPES.index(o.shape) for o in objs]), u, v) & present[:, None, None]
        rgb = _RGB[[_COLOR_INDEX[o.color] for o in objs]]
        tp = _pattern(torch.tensor([TEXTURES.index(o.texture) for o in objs]), u, v, freq=2.5)[:, None]
        color = rgb[:, :, None, None] * (1 - tp) + _tone(rgb)[:, :, None, None] * tp
        a = inside.float()[:, None]
        image = image * (1 - a) + color * a
        coverage[:, k] = inside.float()
    pool = lambda t: F.avg_pool2d(t, supersample) if supersample > 1 else t
    return pool(image).clamp_(0, 1), pool(coverage)
