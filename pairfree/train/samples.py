"""Sample grids while training and after evaluation: rows of input | instruction | output (| GT target)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pairfree.world.grid import tile_image


def save_edit_rows(
    out: str | Path,
    inputs: torch.Tensor,
    instructions: list[str],
    outputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    labels: list[str] | None = None,
    tile: int = 96,
) -> Path:
    """One row per edit; images in [-1, 1]. ``labels`` (e.g. the sub-type) are printed above instructions."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text_w, pad, head = 200, 4, 18
    cols = 3 if targets is None else 4
    sheet = Image.new(
        "RGB", ((cols - 1) * tile + text_w + (cols + 1) * pad, head + len(inputs) * (tile + pad)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    xs = [pad, 2 * pad + tile, 3 * pad + tile + text_w, 4 * pad + 2 * tile + text_w]
    for x, name in zip(xs, ("input", "instruction", "output", "target (GT)")[:cols]):
        draw.text((x, 3), name, fill="black")
    for i in range(len(inputs)):
        y = head + i * (tile + pad)
        sheet.paste(tile_image((inputs[i].float().cpu() + 1) / 2, tile), (xs[0], y))
        text = ("" if labels is None else f"[{labels[i]}]\n") + "\n".join(textwrap.wrap(instructions[i], 30))
        draw.multiline_text((xs[1], y + 2), text, fill="black", spacing=2)
        sheet.paste(tile_image((outputs[i].float().cpu().clamp(-1, 1) + 1) / 2, tile), (xs[2], y))
        if targets is not None:
            sheet.paste(tile_image((targets[i].float().cpu() + 1) / 2, tile), (xs[3], y))
    sheet.save(out)
    return out
