"""Deterministic, batched, anti-aliased renderer of shapes-world scenes (pure torch, any square resolution).

Each pixel is supersampled ``ss × ss`` times; a shape is an inside-test in object-local coordinates
(``[-1, 1]²`` = the object's box), so anti-aliasing is exact area coverage up to the supersampling. Renders come
with per-object coverage masks. A scene's global style (grayscale, invert, pixelate, outline) is applied last.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pairfree.world.scene import Scene
from pairfree.world.spec import ALL_SHAPES, PALETTE, SpecError

_RGB = torch.tensor([PALETTE[c] for c in PALETTE], dtype=torch.float32) / 255.0
_COLOR_INDEX = {c: i for i, c in enumerate(PALETTE)}


def _inside(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of ``shape`` at local coords ``u`` (right) and ``v`` (down); the object's box is [-1, 1]²."""
    au, av, r2 = u.abs(), v.abs(), u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "square":
        return torch.maximum(au, av) <= 0.85
    if shape == "triangle":
        return (v <= 0.8) & (au <= (v + 0.95) * (0.95 / 1.75))
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "star":  # fold the angle into one of 5 sectors; inside the edge from a tip (r=1) to a notch
        sector = 2 * math.pi / 5
        phi = (torch.remainder(torch.atan2(v, u) + math.pi / 2 + sector / 2, sector) - sector / 2).abs()
        r = r2.sqrt()
        px, py = r * torch.cos(phi), r * torch.sin(phi)
        bx, by = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
        return (bx - 1) * py - by * (px - 1) >= 0
    if shape == "heart":  # (x² + y² - 1)³ ≤ x² y³ with y up
        hx, hy = u * 1.2, -v * 1.2 + 0.15
        return (hx * hx + hy * hy - 1) ** 3 <= hx * hx * hy**3
    raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(ALL_SHAPES)}")


def _pattern(textures: list[str], u: torch.Tensor, v: torch.Tensor, freq: float) -> torch.Tensor:
    """1 where a texture's second tone shows (solid: nowhere), per batch entry, at local coords ``u``, ``v``."""
    out = torch.zeros_like(u)
    for texture in set(textures) - {"solid"}:
        idx = [i for i, t in enumerate(textures) if t == texture]
        fu, fv = u[idx] * freq, v[idx] * freq
        if texture == "stripes":
            on = torch.remainder(torch.floor(fu + fv), 2) == 1
        elif texture == "dots":
            on = (fu - fu.floor() - 0.5) ** 2 + (fv - fv.floor() - 0.5) ** 2 < 0.09
        else:
            on = torch.remainder(torch.floor(fu) + torch.floor(fv), 2) == 1
        out[idx] = on.float()
    return out


def _tone(rgb: torch.Tensor) -> torch.Tensor:
    """The second tone of a texture: darker for light colours, lighter for dark ones."""
    light = (rgb.mean(-1, keepdim=True) > 0.35).float()
    return light * rgb * 0.5 + (1 - light) * (rgb * 0.5 + 0.45)


def render(
    scenes: list[Scene], resolution: int = 32, supersample: int = 4, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``scenes`` (all of one spec) -> ``(images, masks)``: images ``(B, 3, R, R)`` in [0, 1] (float32),
    masks ``(B, max_objects, R, R)`` = each object slot's pixel coverage in [0, 1] (zeros for empty slots).
    ``device``: where to draw (a GPU draws a large batch far faster than the CPU)."""
    if resolution < 8:
        raise ValueError(f"render: resolution must be >= 8, got {resolution}")
    spec = scenes[0].spec if scenes else None
    if any(sc.spec != spec for sc in scenes):
        raise SpecError(f"render: one batch holds scenes of worlds {sorted({sc.spec.name for sc in scenes})}")
    grid, max_objects = (spec.grid, spec.max_objects) if spec else (1, 0)
    b, s = len(scenes), resolution * supersample
    on = dict(device=device)
    palette = _RGB.to(device)
    coords = (torch.arange(s, dtype=torch.float32, **on) + 0.5) / s
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (S, S), y down
    x, y = x.expand(b, s, s), y.expand(b, s, s)

    bg = palette[[_COLOR_INDEX[sc.background] for sc in scenes]]  # (B, 3)
    p = _pattern([sc.background_texture for sc in scenes], x * 2 - 1, y * 2 - 1, freq=6.0)[:, None]
    bg_tone = 0.5 * (bg + _tone(bg))  # a subtler second tone than objects', so objects stand out
    image = bg[:, :, None, None] * (1 - p) + bg_tone[:, :, None, None] * p

    coverage = torch.zeros(b, max_objects, s, s, **on)
    for k in range(max_objects):
        slot = [(i, sc.objects[k]) for i, sc in enumerate(scenes) if k < len(sc.objects)]
        if not slot:
            break
        for shape in sorted({o.shape for _, o in slot}):  # evaluate each shape only where it is drawn
            group = [(i, o) for i, o in slot if o.shape == shape]
            idx = torch.tensor([i for i, _ in group], **on)
            half = torch.tensor([spec.half_extent(o.size) for _, o in group], **on)[:, None, None]
            cx = torch.tensor([(o.col + 0.5) / grid for _, o in group], **on)[:, None, None]
            cy = torch.tensor([(o.row + 0.5) / grid for _, o in group], **on)[:, None, None]
            u, v = (x[: len(group)] - cx) / half, (y[: len(group)] - cy) / half
            a = _inside(shape, u, v).float()[:, None]
            rgb = palette[[_COLOR_INDEX[o.color] for _, o in group]]
            tp = _pattern([o.texture for _, o in group], u, v, freq=2.5)[:, None]
            color = rgb[:, :, None, None] * (1 - tp) + _tone(rgb)[:, :, None, None] * tp
            if any(scenes[i].style == "outline" for i, _ in group):  # keep only a band inside the edge
                band = max(1, s // 40)
                eroded = 1 - F.max_pool2d(1 - a, 2 * band + 1, stride=1, padding=band)
                outline = torch.tensor([scenes[i].style == "outline" for i, _ in group], **on)[:, None, None, None]
                a = torch.where(outline, a - eroded, a)
            image[idx] = image[idx] * (1 - a) + color * a
            coverage[idx, k] = a[:, 0]
    pool = lambda t: F.avg_pool2d(t, supersample) if supersample > 1 else t
    return _stylise(pool(image).clamp_(0, 1), scenes), pool(coverage)


def _stylise(image: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
    """The global looks that act on the finished picture: grayscale, invert, pixelate (8×8 blocks)."""
    for style in ("grayscale", "invert", "pixelate"):
        idx = [i for i, sc in enumerate(scenes) if sc.style == style]
        if not idx:
            continue
        im = image[idx]
        if style == "grayscale":
            luma = torch.tensor([0.299, 0.587, 0.114], device=im.device)[:, None, None]
            im = (im * luma).sum(1, keepdim=True).expand_as(im)
        elif style == "invert":
            im = 1 - im
        else:
            r = im.shape[-1]
            im = F.interpolate(F.adaptive_avg_pool2d(im, 8), size=(r, r), mode="nearest")
        image[idx] = im
    return image
