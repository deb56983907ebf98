"""The checkpointed unroll: gradients identical to plain autograd (K = 1, 2, 4, random k, fresh noise, a
stochastic generator, per-block checkpointing, truncation), memory O(1) in K, and ZeRO-3 across 2 processes."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pairfree.flow import few_step_schedule, x0_from_velocity
from pairfree.memory import LiveBytesMeter, SavedTensorsMeter
from pairfree.models import DiT
from pairfree.models.presets import tiny_dit_config
from pairfree.unroll import unroll

SCHEDULE = few_step_schedule(4)


def _model(block_ckpt=False, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = tiny_dit_config(width=32, patch_size=2, gradient_checkpointing=block_ckpt)
    return DiT(cfg).to(dtype)


def _grads(model, k, checkpoint, truncate=None, stochastic=False, batch=2, size=16, mode="full"):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(batch, 5, 8, generator=g, dtype=torch.float64).requires_grad_()
    ref = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)
    noise = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64).requires_grad_()

    def step(x, t, text):
        v = model(x, t, text, None, reference=ref)
        if stochastic:  # e.g. dropout: the recomputation must replay the same random numbers
            v = v * (1 + 0.1 * torch.rand_like(v))
        return x0_from_velocity(x, v, t)

    model.zero_grad()
    out = unroll(
        step,
        noise,
        SCHEDULE,
        k,
        inputs=(text,),
        generator=torch.Generator().manual_seed(2),
        checkpoint=checkpoint,
        truncate=truncate,
        mode=mode,
    )
    (out.square().mean() + out.mean()).backward()
    return [noise.grad, text.grad] + [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b, tol=1e-12):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_checkpointed_gradients_equal_plain_autograd(k):
    model = _model()
    _assert_same(_grads(model, k, checkpoint=False), _grads(model, k, checkpoint=True))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_two_call_unroll_is_two_generator_calls_and_checkpoints_exactly(k):
    """``mode="two_call"`` (the paper's reimplementation): x̂0 from t = 1, fresh noise to t_k, x̂0 again — against
    that written out by hand, and checkpointed = plain autograd."""
    from pairfree.flow import add_noise

    model = _model()
    _assert_same(
        _grads(model, k, checkpoint=False, mode="two_call"), _grads(model, k, checkpoint=True, mode="two_call")
    )
    g = torch.Generator().manual_seed(1)
    noise, calls = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), []

    def step(x, t):
        calls.append(float(t[0]))
        return x * 0.5 + t[:, None, None, None]

    out = unroll(step, noise, SCHEDULE, k, generator=torch.Generator().manual_seed(2), mode="two_call")
    expected = step(noise, torch.full((2,), SCHEDULE[0], dtype=torch.float64))
    if k > 1:
        fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        t_k = torch.full((2,), SCHEDULE[k - 1], dtype=torch.float64)
        expected = step(add_noise(expected, fresh, t_k), t_k)
    torch.testing.assert_close(out, expected)
    assert calls[: min(k, 2)] == [SCHEDULE[0], SCHEDULE[k - 1]][: min(k, 2)]
    with pytest.raises(ValueError, match="mode must be 'full' or 'two_call'"):
        unroll(step, noise, SCHEDULE, k, mode="three_call")


def test_random_k_stochastic_generator_and_block_checkpointing():
    rng = random.Random(0)
    for _ in range(3):
        k = rng.randint(1, 4)  # the trainer's random-k schedule
        plain = _grads(_model(), k, checkpoint=False, stochastic=True)
        _assert_same(plain, _grads(_model(), k, checkpoint=True, stochastic=True))
        _assert_same(plain, _grads(_model(block_ckpt=True), k, checkpoint=True, stochastic=True))


def test_fp32_matches_to_1e6():
    model = _model(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    text, noise = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    res = []
    for ck in (False, True):
        model.zero_grad()
        step = lambda x, t: x0_from_velocity(x, model(x, t, text), t)
        unroll(step, noise, SCHEDULE, 4, generator=torch.Generator().manual_seed(3), checkpoint=ck).sum().backward()
        res.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
    _assert_same(*res, tol=1e-6)


def test_truncation():
    model = _model()
    full = _grads(model, 4, checkpoint=False)
    _assert_same(full, _grads(model, 4, checkpoint=True, truncate=4))
    last2 = _grads(model, 4, checkpoint=True, truncate=2)
    _assert_same(last2, _grads(model, 4, checkpoint=False, truncate=2))
    assert last2[0] is None  # no gradient reaches the initial noise through the truncated steps
    assert not torch.allclose(last2[2], full[2])
    with pytest.raises(ValueError, match=r"k must be in 1..4, got 5"):
        unroll(lambda x, t: x, torch.zeros(1, 3, 4, 4), SCHEDULE, 5)


def _peak(k, checkpoint, meter_cls, model):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(4, 5, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    step = lambda x, t: x0_from_velocity(x, model(x, t, text), t)
    model.zero_grad(set_to_none=False)  # gradients exist before: not part of what the unroll costs
    kw = {"exclude": list(model.parameters())} if meter_cls is SavedTensorsMeter else {}
    with meter_cls(**kw) as m:
        out = unroll(step, noise, SCHEDULE, k, generator=torch.Generator().manual_seed(2), checkpoint=checkpoint)
        out.square().mean().backward()
    return m.peak


def test_memory_is_constant_in_k_with_checkpointing():
    model = _model()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    plain = {k: _peak(k, False, SavedTensorsMeter, model) for k in (1, 4)}
    assert plain[4] > 3.5 * plain[1]  # plain autograd keeps every step's activations
    live_plain = {k: _peak(k, False, LiveBytesMeter, model) for k in (1, 4)}
    live_ckpt = {k: _peak(k, True, LiveBytesMeter, model) for k in (1, 4)}
    assert live_plain[4] > 3 * live_plain[1]
    assert live_ckpt[4] <= 1.15 * live_ckpt[1]  # one generator call + K latents
    assert live_ckpt[4] < 0.35 * live_plain[4]


@pytest.mark.skipif(
    shutil.which("deepspeed", path=str(Path(sys.executable).parent)) is None, reason="deepspeed launcher not installed"
)
def test_zero3_two_processes_match_single_process(tmp_path):
    """`DS_ACCELERATOR=cpu deepspeed --num_gpus 2`: a ZeRO-3-partitioned generator, checkpointed unroll (K=2),
    each rank on half the batch with its own noise stream == one process on the whole batch."""
    script = Path(__file__).parent / "distributed" / "unroll_zero3.py"
    out = tmp_path / "out.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("TRITON_INTERPRET", None)
    launcher = str(Path(sys.executable).parent / "deepspeed")
    proc = subprocess.run(
        [launcher, "--num_gpus", "2", "--master_port", "29517", str(script), "--out", str(out), "--k", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())

    sys.path.insert(0, str(script.parent))
    import unroll_zero3 as job

    torch.manual_seed(0)
    model = DiT(job.CFG)
    noise, text, ref = job.batch()
    half = job.GLOBAL_BATCH // 2
    losses = [
        job.loss_of(
            model,
            noise[r * half : (r + 1) * half],
            text[r * half : (r + 1) * half],
            ref[r * half : (r + 1) * half],
            2,
            stage_seed=r,
        )
        for r in range(2)
    ]
    torch.stack(losses).mean().backward()
    assert result["losses"] == pytest.approx([x.item() for x in losses], rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(torch.tensor(result["grads"][name]), p.grad.flatten(), rtol=1e-5, atol=1e-7)
