"""`DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module pairfree.train`: ZeRO-3 generator and critic engines,
frozen teacher and judge as ZeRO-3 inference engines, batch B per rank == one process with batch 2B."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pairfree.cli import main as cli

from .conftest import tiny_overrides

LAUNCHER = shutil.which("deepspeed", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(LAUNCHER is None, reason="deepspeed launcher not installed")
@pytest.mark.parametrize(
    "stage,frozen,fake,trainer",
    [(3, "zero3", "critic", "pair-free"), (3, "zero3", "delta", "pair-free"), (3, "zero3", "delta", "grpo")],
)
def test_deepspeed_two_ranks_match_single_process(tiny_models, tmp_path, stage, frozen, fake, trainer):
    common = {"loss.do_nothing_prob": 0.0, "distributed.zero_stage": stage, "distributed.frozen": frozen}
    common.update({"loss.dmd_fake": fake, "trainer": trainer, "grpo.group_size": 2})
    sets = tiny_overrides(tiny_models, tmp_path / "ds", batch=2, threads=1, **common)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("TRITON_INTERPRET", None)
    cmd = [LAUNCHER, "--num_gpus", "2", "--master_port", "29533", "--module", "pairfree.train",
           "--config", "configs/shapes/editor.yaml", "--set", *sets]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set",
                *tiny_overrides(tiny_models, tmp_path / "one", batch=4, **common)]) == 0  # fmt: skip
    ds = [json.loads(x) for x in (tmp_path / "ds" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(ds) == len(one) == 5
    for a, b in zip(ds, one):
        assert a.keys() == b.keys()
        for k in ("loss", "grad_norm", "copy", "vlm", "dmd", "critic", "p_verify", "p_identity", "reward", "kl"):
            if k in a:
                # GRPO's advantages normalise reward spreads of ~1e-4 within a group (the tiny random judge hardly
                # tells the samples apart), so fp32 rounding of the rewards moves them by ~1e-3: the gradient
                # norm agrees to 1e-3, and the loss (a mean of ±O(1) terms that cancel to ~1e-4) to 1e-4
                grpo = trainer == "grpo" and k in ("loss", "grad_norm")
                rel, abs_ = (1e-3, 1e-4 if k == "loss" else 1e-7) if grpo else (1e-5, 1e-7)
                assert a[k] == pytest.approx(b[k], rel=rel, abs=abs_), (k, a, b)
    assert (tmp_path / "ds" / "deepspeed" / "gen" / "last").is_dir()
    assert (tmp_path / "ds" / "model" / "editor.json").is_file()


def _launch(sets, port, resume=False):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("TRITON_INTERPRET", None)
    cmd = [LAUNCHER, "--num_gpus", "2", "--master_port", str(port), "--module", "pairfree.train",
           "--config", "configs/shapes/editor.yaml", *(["--resume"] if resume else []), "--set", *sets]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.skipif(LAUNCHER is None, reason="deepspeed launcher not installed")
def test_deepspeed_resume_continues_identically(tiny_models, tmp_path):
    """Stop a 2-rank ZeRO-3 run after step 3, resume it to step 5 from the engines' checkpoints: every logged
    value equals the uninterrupted run's."""
    common = {"batch": 2, "threads": 1, "loss.do_nothing_prob": 0.0}
    _launch(tiny_overrides(tiny_models, tmp_path / "full", **common), 29535)
    _launch(tiny_overrides(tiny_models, tmp_path / "cut", **{**common, "steps": 1}), 29535)
    _launch(tiny_overrides(tiny_models, tmp_path / "cut", **common), 29535, resume=True)
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cut] == [1, 2, 3, 4, 5] and cut == full


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


def _torchrun(sets, resume=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "--no-python",
           shutil.which("pairfree", path=str(Path(sys.executable).parent)), "train",
           "--config", "configs/shapes/editor.yaml", *(["--resume"] if resume else []), "--set", *sets]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
@pytest.mark.parametrize("trainer", ["pair-free", "paired"])
def test_torchrun_two_ranks_match_single_process_and_resume(tiny_models, tmp_path, trainer):
    """``distributed.backend: torch`` under ``torchrun``: batch B per rank, gradients averaged, == one process with
    batch 2B (copy, editing and critic updates); a run stopped after step 3 and resumed logs what the
    uninterrupted one did; rank 0 alone writes the run directory."""
    common = {"loss.do_nothing_prob": 0.0, "distributed.backend": "torch", "trainer": trainer, "threads": 1}
    proc = _torchrun(tiny_overrides(tiny_models, tmp_path / "two", batch=2, **common))
    assert proc.stdout.count("editor in ") == 1  # rank 1 says nothing
    assert json.loads((tmp_path / "two" / "model" / "train.json").read_text())["ranks"] == 2  # the card says it
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set",
                *tiny_overrides(tiny_models, tmp_path / "one", batch=4, **common)]) == 0  # fmt: skip
    rows = {
        k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()] for k in ("two", "one")
    }
    assert [r["step"] for r in rows["two"]] == [1, 2, 3, 4, 5]
    for a, b in zip(rows["two"], rows["one"]):
        assert a.keys() == b.keys()
        for k in ("loss", "grad_norm", "copy", "paired", "vlm", "dmd", "critic", "p_verify", "p_identity"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (k, a, b)
    _torchrun(tiny_overrides(tiny_models, tmp_path / "cut", batch=2, **{**common, "steps": 1}))
    _torchrun(tiny_overrides(tiny_models, tmp_path / "cut", batch=2, **common), resume=True)
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cut] == [1, 2, 3, 4, 5]
    for a, b in zip(cut, rows["two"]):
        for k in ("loss", "grad_norm", "copy", "paired", "vlm", "dmd", "critic"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-8), (k, a, b)
