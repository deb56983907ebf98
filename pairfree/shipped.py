"""The shapes world's shipped models: ``pairfree.pretrained("shapes-teacher" | "shapes-judge" |
"shapes-evaluator" | "shapes-editor")`` loads them from the package (``pairfree/weights/``), no network."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NAMES = ("shapes-teacher", "shapes-judge", "shapes-evaluator", "shapes-editor")


def pretrained(name: str, path: str | Path | None = None):
    """Load a shipped model (or the same kind of model from ``path``, e.g. a fresh ``runs/pretrain/*/model``)."""
    if name not in NAMES:
        raise ValueError(f"pretrained: unknown model {name!r}; shipped: {', '.join(NAMES)}")
    root = Path(path) if path is not None else WEIGHTS_DIR / name
    if not root.is_dir():
        kind = name.split("-")[1]
        how = (
            "`pairfree train --config configs/shapes/editor.yaml`, then copy runs/editor/model there"
            if kind == "editor"
            else f"`pairfree pretrain {kind} --config configs/shapes/{kind}.yaml --set ship=true`"
        )
        raise FileNotFoundError(f"{root}: not found. Train it with {how}")
    if name == "shapes-editor":
        from pairfree.edit import EditPipeline

        return EditPipeline.from_pretrained(root)
    if name == "shapes-evaluator":
        from pairfree.evaluator import Evaluator

        return Evaluator.from_pretrained(root).eval()
    if name == "shapes-teacher":
        from pairfree.pretrain.teacher import Teacher

        return Teacher.from_pretrained(root).eval()
    from pairfree.judge.qwen import load_qwen_judge

    meta = json.loads((root / "judge.json").read_text())
    return load_qwen_judge(
        root,
        image_size=meta["image_size"],
        question_first=meta.get("question_first", False),
        mrope=meta.get("mrope", False),  # the world judges before this flag were trained with 1-D positions
    )
