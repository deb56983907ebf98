"""The shapes world's shipped models: ``pairfree.pretrained("<world>-<kind>")`` loads them from the package
(``pairfree/weights/``), no network. ``lite-*`` are the lite world's (the CPU default), ``shapes-*`` the full
world's; each directory's ``world.json`` (or the evaluator's config) names its spec."""

from __future__ import annotations

import json
from pathlib import Path

from pairfree.edit import EditPipeline
from pairfree.evaluator import Evaluator
from pairfree.judge.qwen import load_qwen_judge
from pairfree.models.bundle import FlowModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
KINDS = ("teacher", "judge", "evaluator", "editor", "sft")  # sft: the supervised yardstick (an editor told the answer)
NAMES = tuple(f"{world}-{kind}" for world in ("lite", "shapes") for kind in KINDS)


def world_prefix(spec) -> str:
    """The prefix of world ``spec``'s shipped models: ``shapes`` for the full world, else the spec's name."""
    return "shapes" if spec.name == "full" else spec.name


def model_name(kind: str, spec) -> str:
    """The shipped name of world ``spec``'s model ``kind``: ``shapes-teacher``, ``lite-judge``..."""
    return f"{world_prefix(spec)}-{kind}"


def pretrained(name: str, path: str | Path | None = None):
    """Load a shipped model (or the same kind of model from ``path``, e.g. a fresh ``runs/pretrain/*/model``)."""
    if name not in NAMES:
        raise ValueError(f"pretrained: unknown model {name!r}; shipped: {', '.join(NAMES)}")
    root = Path(path) if path is not None else WEIGHTS_DIR / name
    if not root.is_dir():
        world, kind = name.split("-")
        configs = "configs/lite" if world == "lite" else "configs/shapes"
        how = {
            "editor": f"`pairfree train --config {configs}/editor.yaml`, then copy runs/editor/model there",
            "sft": f"`pairfree train --config {configs}/editor.yaml --set trainer=paired` (lite: yardstick.yaml), "
            "then copy its model/ there",
        }.get(kind, f"`pairfree pretrain {kind} --config {configs}/{kind}.yaml --set ship=true`")
        raise FileNotFoundError(f"{root}: not found. Train it with {how}")
    kind = name.split("-")[1]
    if kind in ("editor", "sft"):
        return EditPipeline.from_pretrained(root)
    if kind == "evaluator":
        return Evaluator.from_pretrained(root).eval()
    if kind == "teacher":
        return FlowModel.from_pretrained(root).eval()

    meta = json.loads((root / "judge.json").read_text())
    return load_qwen_judge(
        root,
        image_size=meta["image_size"],
        question_first=meta.get("question_first", False),
        mrope=meta.get("mrope", False),  # the world judges before this flag were trained with 1-D positions
    )
