"""The README's quick start runs as written: each of its shell commands (outputs moved under a temporary
directory, training shortened to a few steps) and its Python snippet."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["copy_steps=1", "steps=1", "batch=2", "sample_every=0", "ckpt_every=1", "max_minutes=0"]


def quick_start() -> tuple[list[str], str]:
    """The quick start's shell commands (comments dropped) and its Python snippet."""
    section = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    bash, python = re.findall(r"```bash\n(.*?)```", section, re.S), re.findall(r"```python\n(.*?)```", section, re.S)
    lines = [ln.split("#", 1)[0].strip() for block in bash for ln in block.splitlines()]
    return [ln for ln in lines if ln], python[0]


def test_quick_start_commands_run_as_written(tmp_path):
    commands, snippet = quick_start()
    assert len(commands) >= 8 and snippet
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "in.png")
    moved = lambda s: (
        s.replace("runs/", f"{tmp_path}/runs/")
        .replace("in.png", f"{tmp_path}/in.png")
        .replace("out.png", f"{tmp_path}/out.png")
    )
    for line in commands:
        argv = shlex.split(moved(line))
        if argv[0] == "deepspeed":  # needs GPUs and SANA weights: check that what it names exists
            module, config = argv[argv.index("--module") + 1], argv[argv.index("--config") + 1]
            assert subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT).returncode == 0
            assert (ROOT / config).is_file(), line
            continue
        assert argv[0] == "pairfree", line
        if argv[1] == "train":
            argv += ["--set", f"out={tmp_path}/runs/lite/editor", *TINY_TRAIN]
        if argv[1:3] == ["world", "bench"]:
            argv += ["--n-per-type", "2"]
        proc = subprocess.run(
            [sys.executable, "-m", "pairfree.cli", *argv[1:]], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "out.png").is_file() and (tmp_path / "runs/eval").is_dir()
    proc = subprocess.run([sys.executable, "-c", moved(snippet)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_readme_is_short():
    assert len(ROOT.joinpath("README.md").read_bytes()) <= 12_000
