"""What the three pretraining commands share: the run config, a prefetching batch source, and the model card."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pairfree.pretrain.loop import LoopConfig

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass
class PretrainConfig:
    """One pretraining run: where to write, the loop, the batch size and the model's own settings."""

    out: str = "runs/pretrain"
    batch: int = 64
    resolution: int = 32
    loop: LoopConfig = field(default_factory=LoopConfig)
    model: dict = field(default_factory=dict)
    eval_items: int = 2000
    ship: bool = False  # copy the final model into pairfree/weights/<name>/


class Prefetch:
    """Builds batch ``step + 1`` on a background thread while ``step`` trains (rendering overlaps compute)."""

    def __init__(self, fn):
        self.fn, self._next, self._thread = fn, None, None

    def _run(self, step):
        self._next = (step, self.fn(step))

    def __call__(self, step):
        if self._thread is not None:
            self._thread.join()
        got = self._next[1] if self._next is not None and self._next[0] == step else self.fn(step)
        self._thread = threading.Thread(target=self._run, args=(step + 1,), daemon=True)
        self._thread.start()
        return got


def write_card(
    path: Path,
    name: str,
    summary: str,
    data: str,
    result: dict,
    metrics: dict,
    command: str,
    bars: list[tuple[str, float, float]],
    notes: str = "",
) -> None:
    """MODEL_CARD.md: what the model is, its data, steps, wall time, final metrics vs the bars, the command."""
    lines = [
        f"# {name}",
        "",
        summary,
        "",
        "## Data",
        "",
        data,
        "",
        "## Training",
        "",
        f"- steps: {result['step']} ({'stopped at the time limit' if result['stopped_early'] else 'complete'})",
        f"- wall time: {result['wall_s'] / 60:.1f} min on {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
        "## Held-out metrics",
        "",
        "| metric | measured | bar | met |",
        "|---|---|---|---|",
    ]
    for key, value, bar in bars:
        lines.append(f"| {key} | {value:.4f} | {bar} | {'yes' if value >= bar else '**no**'} |")
    lines += ["", "All measured metrics:", "", "```json", json.dumps(metrics, indent=1, sort_keys=True), "```", ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    lines += ["## Reproduce", "", "```bash", command, "```", ""]
    path.write_text("\n".join(lines))


def ship(run_dir: Path, name: str) -> Path:
    """Copy the exported model directory into the package (pairfree/weights/<name>/)."""
    dst = WEIGHTS_DIR / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(run_dir / "model", dst)
    return dst


def command_line() -> str:
    return (
        "pairfree " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("pairfree")
        else " ".join(["python -m pairfree.cli"] + sys.argv[1:])
    )
