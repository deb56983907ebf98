"""Contact sheets a person can look at: rendered scenes with their captions, saved as PNG."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from pairfree.world.captions import caption
from pairfree.world.datasets import item_seed
from pairfree.world.edits import EDIT_TYPES, render_edits, sample_edit
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.spec import DEFAULT, WorldSpec


def save_scene_grid(
    out: str | Path,
    n: int = 16,
    resolution: int | None = None,
    seed: int = 0,
    cols: int = 4,
    tile: int = 160,
    spec: WorldSpec = DEFAULT,
):
    """Render scenes ``seed .. seed+n-1`` of world ``spec`` at ``resolution`` (default the spec's) and save a
    captioned grid to ``out`` (PNG), plus ``out`` with ``.json`` holding the spec, scenes and captions. Returns
    the PNG path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    resolution = resolution or spec.resolution
    scenes = [sample_scene(seed + i, spec) for i in range(n)]
    caps = [caption(s, seed + i) for i, s in enumerate(scenes)]
    images, _ = render(scenes, resolution)
    text_h = 64
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, caps)):
        r, c = divmod(i, cols)
        pil = Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).resize((tile, tile), Image.NEAREST)
        x0, y0 = c * tile, r * (tile + text_h)
        sheet.paste(pil, (x0, y0))
        draw.multiline_text((x0 + 3, y0 + tile + 2), "\n".join(textwrap.wrap(cap, 30)[:5]), fill="black", spacing=1)
    sheet.save(out)
    meta = {
        "world": spec.to_dict(),
        "distinct_scenes": spec.distinct_scenes(),
        "resolution": resolution,
        "seed": seed,
        "scenes": [s.to_dict() for s in scenes],
        "captions": caps,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return out


def tile_image(img, tile: int) -> Image.Image:
    """An image ``(3, H, W)`` in [0, 1] as a PIL tile of side ``tile`` (nearest-neighbour: pixels stay visible)."""
    return Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).resize((tile, tile), Image.NEAREST)


def save_edit_grid(
    out: str | Path,
    n: int = 16,
    resolution: int | None = None,
    seed: int = 0,
    templates: str = "train",
    tile: int = 128,
    spec: WorldSpec = DEFAULT,
) -> Path:
    """Save ``n`` edits (cycling through the sub-types) as rows of input | instruction | ground-truth target |
    change mask to ``out`` (PNG), plus ``out`` with ``.json`` holding the edit records. Returns the PNG path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    resolution = resolution or spec.resolution
    edits = [
        sample_edit(item_seed(seed, "val", i), kind=EDIT_TYPES[i % len(EDIT_TYPES)], templates=templates, spec=spec)
        for i in range(n)
    ]
    inputs, targets, masks = render_edits(edits, resolution)
    text_w, pad = 220, 4
    sheet = Image.new("RGB", (3 * tile + text_w + 5 * pad, n * (tile + pad) + 20), "white")
    draw = ImageDraw.Draw(sheet)
    for x, head in (
        (pad, "input"),
        (2 * pad + tile, "instruction"),
        (3 * pad + tile + text_w, "target (GT)"),
        (4 * pad + 2 * tile + text_w, "change mask"),
    ):
        draw.text((x, 4), head, fill="black")
    for i, e in enumerate(edits):
        y = 20 + i * (tile + pad)
        sheet.paste(tile_image(inputs[i], tile), (pad, y))
        label = f"[{e.form}]\n" + "\n".join(textwrap.wrap(e.instruction, 34))
        draw.multiline_text((2 * pad + tile, y + 4), label, fill="black", spacing=2)
        sheet.paste(tile_image(targets[i], tile), (3 * pad + tile + text_w, y))
        sheet.paste(tile_image(masks[i].expand(3, -1, -1), tile), (4 * pad + 2 * tile + text_w, y))
    sheet.save(out)
    meta = {
        "world": spec.to_dict(),
        "resolution": resolution,
        "seed": seed,
        "templates": templates,
        "edits": [e.to_dict() for e in edits],
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return out
