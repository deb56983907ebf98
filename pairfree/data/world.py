"""Shapes-world images as a real-image dataset: rendered scenes written as PNG files with their records, so the
JSONL path (and ``pairfree data build``) can be tested end to end against the world's ground truth."""

from __future__ import annotations

from pathlib import Path

from pairfree.data.records import EditRecord, write_records
from pairfree.edit import save_image
from pairfree.world.captions import caption
from pairfree.world.datasets import item_seed
from pairfree.world.edits import Edit, refer, sample_edit
from pairfree.world.render import render
from pairfree.world.spec import WorldSpec


def edit_object(edit: Edit) -> str:
    """The object an edit names, as a noun phrase without article ("red circle"); "" when it names none."""
    i = edit.params.get("object")
    return refer(edit.source, i).removeprefix("the ") if isinstance(i, int) else ""


def record_of(edit: Edit, image: str, seed: int = 0, provenance: dict | None = None) -> EditRecord:
    """The JSONL record of a world edit whose input image is saved at ``image``."""
    return EditRecord(
        image=image,
        instruction=edit.instruction,
        type=edit.kind,
        edited_caption=edit.edited_caption(seed % 997),
        source_caption=caption(edit.source, seed % 991),
        object=edit_object(edit),
        provenance=provenance or {"proposer": "shapes-world ground truth"},
    )


def write_world_jsonl(folder: str | Path, n: int, spec: WorldSpec, resolution: int = 32, seed: int = 0) -> Path:
    """``n`` world edits: their input images as ``folder/images/NNNN.png`` and ``folder/edits.jsonl``."""
    folder = Path(folder)
    edits = [sample_edit(item_seed(seed, "val", i), templates="train", spec=spec) for i in range(n)]
    images = render([e.source for e in edits], resolution)[0] * 2 - 1
    records = []
    for i, (e, im) in enumerate(zip(edits, images)):
        save_image(im, folder / "images" / f"{i:04d}.png")
        records.append(record_of(e, f"images/{i:04d}.png", seed=i))
    return write_records(folder / "edits.jsonl", records)
