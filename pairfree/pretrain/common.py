"""What the three pretraining commands share: the run config, a prefetching batch source, and the model card."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pairfree.config import ConfigError
from pairfree.pretrain.loop import LoopConfig
from pairfree.shipped import WEIGHTS_DIR


@dataclass
class PretrainConfig:
    """One pretraining run: where to write, the loop, the batch size and the model's own settings."""

    out: str = "runs/pretrain"
    world: str = "lite"  # the world spec: lite (the CPU default), full, or a spec .yaml file
    batch: int = 64
    resolution: int = 32
    loop: LoopConfig = field(default_factory=LoopConfig)
    model: dict = field(default_factory=dict)
    eval_items: int = 2000
    ship: bool = False  # copy the final model into pairfree/weights/<name>/
    init: str = ""  # start from this model directory's weights (a longer run of a shipped model); not with --resume


class Prefetch:
    """Builds the next ``ahead`` batches on background threads while ``step`` trains (rendering overlaps compute;
    a GPU needs several builders to be kept busy). ``fn(step)`` must depend on ``step`` alone, so prefetched and
    direct batches are the same."""

    def __init__(self, fn, ahead: int = 1):
        if ahead < 1:
            raise ConfigError(f"loop.prefetch: expected at least 1 batch built ahead, got {ahead}")
        self.fn, self.ahead = fn, ahead
        self._pool = ThreadPoolExecutor(ahead, thread_name_prefix="prefetch")
        self._pending: dict[int, Future] = {}

    def __call__(self, step):
        ready = self._pending.pop(step, None)
        for stale in [s for s in self._pending if s < step or s > step + self.ahead]:
            self._pending.pop(stale).cancel()
        got = ready.result() if ready is not None else self.fn(step)
        for s in range(step + 1, step + 1 + self.ahead):
            if s not in self._pending:
                self._pending[s] = self._pool.submit(self.fn, s)
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


CLI_ARGV: list[str] | None = None  # set by ``pairfree.cli.main(argv)`` when it is called with its arguments


def command_line() -> str:
    """The command that started this process, as a user would type it again (``pairfree ...`` or
    ``python -m pairfree.<module> ...``); a ``pairfree.cli.main(argv)`` call in Python counts as ``pairfree argv``."""
    if CLI_ARGV is not None:
        return " ".join(["pairfree", *CLI_ARGV])
    a0 = sys.argv[0] if sys.argv else ""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # started by torchrun: say so
    launcher = [f"torchrun --nproc_per_node {world} --no-python"] if world > 1 else []
    if a0.endswith("pairfree"):
        return " ".join([*launcher, "pairfree", *sys.argv[1:]])
    package = Path(__file__).resolve().parents[1]
    try:
        parts = Path(a0).resolve().relative_to(package).with_suffix("").parts
        head = "python -m " + ".".join(["pairfree", *(p for p in parts if p != "__main__")])
    except ValueError:  # not a module of the package (a script, `python -c`)
        head = f"python {a0}"
    return " ".join([head, *sys.argv[1:]])
