"""``pairfree world bars``: a world's calibration bars, each read from the metrics file of the model or run that
measured it (never typed by hand): the evaluator's, teacher's and judge's ``metrics.json`` and model cards, and the
supervised yardstick's benchmark evaluation. Writes ``bars.json`` (value, threshold, met, source, command)."""

from __future__ import annotations

import json
import re
from pathlib import Path

# key: (threshold, "min" (value >= threshold) or "max" (value <= threshold))
BARS = {
    "ground_truth_complete": (0.98, "min"),
    "evaluator_min_attribute": (0.995, "min"),
    "evaluator_noisy_scene": (0.95, "min"),
    "teacher_caption_match": (0.90, "min"),
    "teacher_minutes": (90.0, "max"),
    "judge_single": (0.97, "min"),
    "judge_two_image": (0.95, "min"),
    "judge_auc": (0.98, "min"),
    "yardstick_complete": (0.80, "min"),
    "yardstick_minutes": (30.0, "max"),
    "yardstick_min_subtype": (0.50, "min"),
}


def card_command(model_dir: Path) -> str:
    """The command in a model card's Reproduce block (its last line: the one that made the model)."""
    card = model_dir / "MODEL_CARD.md"
    if not card.is_file():
        return ""
    block = re.search(r"## Reproduce\s+```bash\n(.*?)```", card.read_text(), re.S)
    return block.group(1).strip().splitlines()[-1] if block else ""


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (bars are read from the runs' own metrics files)")
    return json.loads(path.read_text())


def collect(weights: Path, prefix: str, yardstick_eval: Path) -> dict:
    """Each bar's measured value with where it was read and the command that measured it. ``yardstick_eval``: the
    ``pairfree eval`` directory of the supervised yardstick (its ``metrics.json``, ``command.txt`` and the model's
    ``train.json``)."""
    values = {}
    ev = weights / f"{prefix}-evaluator"
    m = _json(ev / "metrics.json")
    for key, value in (
        ("evaluator_min_attribute", m["min_attribute"]),
        ("evaluator_noisy_scene", m["scene_vs_noise_sigma"]["0.1"]),
    ):
        values[key] = (value, ev / "metrics.json", card_command(ev))
    te = weights / f"{prefix}-teacher"
    m = _json(te / "metrics.json")
    values["teacher_caption_match"] = (m["caption attribute match"], te / "metrics.json", card_command(te))
    values["teacher_minutes"] = (m["minutes"], te / "metrics.json", card_command(te))
    ju = weights / f"{prefix}-judge"
    m = _json(ju / "metrics.json")
    for key, name in (
        ("judge_single", "single accuracy"),
        ("judge_two_image", "pair accuracy"),
        ("judge_auc", "verification AUC (benchmark)"),
    ):
        values[key] = (m[name], ju / "metrics.json", card_command(ju))
    m = _json(yardstick_eval / "metrics.json")
    command = (yardstick_eval / "command.txt").read_text().strip() if (yardstick_eval / "command.txt").is_file() else ""
    where = yardstick_eval / "metrics.json"
    values["ground_truth_complete"] = (m["ground truth (ceiling)"]["overall"]["complete edit"], where, command)
    editor = m["editor"]
    values["yardstick_complete"] = (editor["overall"]["complete edit"], where, command)
    values["yardstick_min_subtype"] = (
        min(v["complete edit"] for k, v in editor.items() if k != "overall"),
        where,
        command,
    )
    train = _json(yardstick_eval / "train.json")
    values["yardstick_minutes"] = (train["wall_min"], yardstick_eval / "train.json", train.get("command", ""))
    return values


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def write_bars(out: Path, values: dict) -> dict:
    """``bars.json``: for each bar, value, threshold, met, source file and command."""
    rows = {}
    for key, (threshold, sense) in BARS.items():
        if key not in values:
            continue
        value, source, command = values[key]
        if sense == "max":  # minutes: a time limit stops a run at the first step past it, so compare to 0.1 min
            value = round(value, 1)
        met = value >= threshold if sense == "min" else value <= threshold
        rows[key] = {
            "value": round(float(value), 4),
            "threshold": threshold,
            "sense": ">=" if sense == "min" else "<=",
            "met": bool(met),
            "source": _relative(source),
            "command": command,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows
