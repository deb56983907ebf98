"""The training engine: the step loop's logging, checkpoint and time-limit cadence; the run log on resume; a
skipped single-process update leaves the model and the optimizer state untouched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pairfree.engine.data_parallel import Ranks
from pairfree.engine.loop import run_steps
from pairfree.engine.runlog import RunLog
from pairfree.engine.state import ema_decay, ema_update
from pairfree.engine.strategy import Optimized, Strategy


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_steps_logs_saves_and_calls_after_step_on_their_cadence(tmp_path):
    saved, after = [], []
    log = RunLog(tmp_path)
    result = run_steps(
        lambda s: {"loss": float(s)}, 0, 7, log, lambda step, wall: saved.append(step), log_every=3, ckpt_every=2,
        after_step=lambda step, wall: after.append(step) or ([{"step": step, "eval": 1.0}] if step == 4 else []),
    )  # fmt: skip
    log.close()
    assert (result.step, result.stopped_early, result.logs) == (7, False, {"loss": 6.0})
    assert saved == [2, 4, 6, 7] and after == list(range(1, 8))
    assert _rows(tmp_path / "metrics.jsonl") == [
        {"step": 3, "loss": 2.0}, {"step": 4, "eval": 1.0}, {"step": 6, "loss": 5.0}, {"step": 7, "loss": 6.0}
    ]  # fmt: skip


def test_run_steps_stops_at_the_time_limit_with_a_checkpoint(tmp_path):
    saved = []
    result = run_steps(
        lambda s: {}, 5, 100, RunLog(tmp_path), lambda step, wall: saved.append(step), log_every=10,
        ckpt_every=50, max_minutes=1.0, wall_s=61.0,
    )  # fmt: skip
    assert (result.step, result.stopped_early, saved) == (6, True, [6])


def test_run_steps_stops_when_another_rank_is_past_the_time_limit(tmp_path):
    """This rank is within its time, but ``stop_together`` reports another one past it: all stop at that step
    (a rank that stopped alone would leave the others waiting in an all-reduce)."""
    asked = []
    result = run_steps(
        lambda s: {}, 0, 100, RunLog(tmp_path), lambda step, wall: None, log_every=10, ckpt_every=50,
        max_minutes=60.0, stop_together=lambda late: asked.append(late) or len(asked) == 3,
    )  # fmt: skip
    assert (result.step, result.stopped_early) == (3, True) and asked == [False, False, False]


def test_data_parallel_shares_cut_the_batch_in_rank_order():
    batch = {"x": torch.arange(12).view(6, 2), "captions": list("abcdef"), "meta": {"t": torch.arange(6)}, "k": 3}
    parts = [Ranks(r, 3).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert sum((p["captions"] for p in parts), []) == batch["captions"]
    assert [p["meta"]["t"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]] and parts[1]["k"] == 3
    assert Ranks().shard(batch) is batch
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 ranks"):
        Ranks(0, 4).shard(batch)
    with pytest.raises(ValueError, match=r"leading sizes \[5, 6\]"):
        Ranks(0, 2).shard({"x": torch.zeros(6), "y": [0] * 5})


def test_run_log_keeps_rows_up_to_the_resumed_step(tmp_path):
    log = RunLog(tmp_path)
    for s in (10, 20, 30):
        log.write({"step": s, "loss": 1.0})
    log.close()
    RunLog(tmp_path, resume_step=20).close()
    assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [10, 20]
    RunLog(tmp_path).close()  # a new run starts a new file
    assert _rows(tmp_path / "metrics.jsonl") == []
    assert not RunLog(tmp_path / "other", enabled=False).path.parent.exists()  # another rank writes nothing


def test_skipped_update_changes_neither_the_model_nor_the_optimizer_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    trained = Strategy().optimized("m", model, 1e-2, (0.9, 0.99), 0.0, 1.0)
    assert isinstance(trained, Optimized)
    trained.backward(model(torch.randn(5, 4)).square().sum())
    trained.step()
    params = [p.detach().clone() for p in model.parameters()]
    state = [v.clone() for s in trained.opt.state.values() for v in s.values()]
    trained.backward(1e6 * model(torch.randn(5, 4)).square().sum())
    assert trained.clip_and_norm() > 1e3
    trained.skip()
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(state, (v for s in trained.opt.state.values() for v in s.values())))
    assert all(p.grad is None for p in model.parameters())


def test_ema_update_is_the_warmed_up_lerp():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, step=3, decay=0.999)
    d = ema_decay(3, 0.999)
    assert d == 4 / 13
    for e, b, m in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, d * b + (1 - d) * m)


LAUNCHER = shutil.which("deepspeed", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(LAUNCHER is None, reason="deepspeed launcher not installed")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_skip_leaves_parameters_and_adam_state_untouched(tmp_path, stage):
    """Two ranks on ZeRO-2/3: step, skip (a 50x gradient spike), step == step, step — the spike reaches neither
    the parameters nor Adam's moments."""
    script = Path(__file__).parent / "distributed" / "engine_skip.py"
    out = tmp_path / "out.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("TRITON_INTERPRET", None)
    cmd = [LAUNCHER, "--num_gpus", "2", "--master_port", str(29540 + stage), str(script), "--out", str(out),
           "--stage", str(stage)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["state_kept"]
    assert result["params_skip"] == pytest.approx(result["params_plain"], rel=1e-6, abs=1e-7)
