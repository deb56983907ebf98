"""The shapes-world editing benchmark: a fixed set of edits per sub-type with exact ground truth, saved once.

Cases come from the "bench" seed stream (disjoint from training seeds) and use the held-out instruction
templates (trained words in phrasings no model trained on). ``save_bench`` writes:

* ``cases.jsonl`` — one edit per line: id, type, form, instruction, source scene, params, edited scene,
  source/edited captions, judge questions;
* ``tensors.safetensors`` — ``inputs``/``targets`` uint8 ``(N, 3, R, R)`` and ``masks`` float32 ``(N, 1, R, R)``;
* ``manifest.json`` — seed, counts, resolution, the world spec, version and the command that wrote it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pairfree.world.captions import caption
from pairfree.world.datasets import item_seed
from pairfree.world.edits import EDIT_TYPES, Edit, EditError, render_edits, sample_edit
from pairfree.world.scene import SceneError
from pairfree.world.spec import DEFAULT, WorldSpec, get_spec

BENCH_VERSION = 3  # 2: the manifest names its world spec; 3: held-out wording recombines trained words


def build_bench(
    n_per_type: int = 50, seed: int = 0, templates: str = "heldout", spec: WorldSpec = DEFAULT, split: str = "bench"
) -> list[Edit]:
    """``n_per_type`` edits of every type of world ``spec`` from the ``split`` seed stream ("bench"; "val": a
    validation set disjoint from the benchmark, e.g. for picking a checkpoint), grouped by type."""
    return [
        sample_edit(item_seed(seed, split, k * 1_000_000 + i), kind=kind, templates=templates, spec=spec)
        for k, kind in enumerate(EDIT_TYPES)
        for i in range(n_per_type)
    ]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_bench(
    out: str | Path,
    n_per_type: int = 50,
    seed: int = 0,
    resolution: int | None = None,
    command: str | None = None,
    spec: WorldSpec = DEFAULT,
    templates: str = "heldout",
) -> Path:
    """Build the benchmark of world ``spec`` (at ``resolution``, default the spec's) and write it to directory
    ``out`` (each file atomically). Returns ``out``. ``templates="train"`` words the same held-out scenes and edits
    with the training phrasings: a diagnostic that separates learning an edit from reading unseen wording."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = resolution or spec.resolution
    edits = build_bench(n_per_type, seed, templates=templates, spec=spec)
    inputs, targets, masks = render_edits(edits, resolution)
    to_u8 = lambda t: (t * 255).round().to(torch.uint8).contiguous()
    lines = []
    for n, e in enumerate(edits):
        rec = {
            "id": n,
            "form": e.form,
            **e.to_dict(),
            "target": e.target.to_dict(),
            "source_caption": caption(e.source, 0),
            "edited_caption": e.edited_caption(),
            "questions": [q.to_dict() for q in e.questions()],
        }
        lines.append(json.dumps(rec, sort_keys=True))
    _atomic_write(out / "cases.jsonl", lambda p: p.write_text("\n".join(lines) + "\n"))
    tensors = {"inputs": to_u8(inputs), "targets": to_u8(targets), "masks": masks.contiguous()}
    _atomic_write(out / "tensors.safetensors", lambda p: save_file(tensors, str(p)))
    manifest = {
        "version": BENCH_VERSION,
        "seed": seed,
        "n_per_type": n_per_type,
        "resolution": resolution,
        "world": spec.to_dict(),
        "types": list(EDIT_TYPES),
        "cases": len(edits),
        "templates": templates,
        "command": command or " ".join(["pairfree"] + sys.argv[1:]),
    }
    _atomic_write(out / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))
    return out


@dataclass
class Bench:
    """A loaded benchmark: edits, their records, and ``inputs``/``targets`` in [0, 1], ``masks`` in [0, 1]."""

    edits: list[Edit]
    records: list[dict]
    inputs: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor
    manifest: dict
    spec: WorldSpec


def load_bench(path: str | Path) -> Bench:
    """Load a benchmark written by :func:`save_bench`; errors name the file and field at fault."""
    path = Path(path)
    for name in ("manifest.json", "cases.jsonl", "tensors.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name}: missing (write the benchmark with `pairfree world bench --out {path}`)"
            )
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("version") != BENCH_VERSION:
        raise SceneError(
            f"{path / 'manifest.json'}.version: expected {BENCH_VERSION}, got {manifest.get('version')!r} "
            f"(rewrite it with `pairfree world bench --out {path}`)"
        )
    spec = get_spec(manifest.get("world"))
    edits, records = [], []
    for ln, line in enumerate((path / "cases.jsonl").read_text().splitlines(), 1):
        where = f"{path / 'cases.jsonl'}:{ln}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EditError(f"{where}: not valid JSON ({e})") from None
        e = Edit.from_dict({k: rec.get(k) for k in ("source", "type", "params", "instruction")}, where, spec)
        if e.target.to_dict() != rec.get("target"):
            raise EditError(f"{where}.target: does not match the edit applied to the source")
        edits.append(e)
        records.append(rec)
    t = load_file(str(path / "tensors.safetensors"))
    r = manifest["resolution"]
    for key, shape in (
        ("inputs", (len(edits), 3, r, r)),
        ("targets", (len(edits), 3, r, r)),
        ("masks", (len(edits), 1, r, r)),
    ):
        if key not in t or tuple(t[key].shape) != shape:
            got = tuple(t[key].shape) if key in t else "nothing"
            raise SceneError(f"{path / 'tensors.safetensors'}[{key}]: expected shape {shape}, got {got}")
    return Bench(edits, records, t["inputs"].float() / 255, t["targets"].float() / 255, t["masks"], manifest, spec)
