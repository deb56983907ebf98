"""Flow-matching utilities against closed forms."""

import pytest
import torch

from pairfree import flow


def test_noise_velocity_x0_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g), torch.rand(4, generator=g)
    xt = flow.add_noise(x0, eps, t)
    torch.testing.assert_close(xt[1], (1 - t[1]) * x0[1] + t[1] * eps[1])
    torch.testing.assert_close(flow.x0_from_velocity(xt, flow.velocity_target(x0, eps), t), x0)


def test_schedule_matches_design():
    assert flow.few_step_schedule(4, 6.0) == pytest.approx([1.0, 0.9474, 0.8571, 0.6667], abs=1e-4)
    assert flow.few_step_schedule(1) == [1.0] and len(flow.few_step_schedule(8)) == 8
    with pytest.raises(ValueError, match="1..8"):
        flow.few_step_schedule(9)
    assert flow.shift_time(0.5, 1.0) == 0.5


def test_cfg_and_logit_normal():
    c, u = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.equal(flow.cfg_combine(c, u, 3.5), torch.full((2, 3), 3.5))
    per = flow.cfg_combine(c, u, torch.tensor([1.0, 7.5]))
    assert per[0, 0] == 1.0 and per[1, 0] == 7.5
    t = flow.logit_normal_t(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1 and abs(t.median() - 0.5) < 0.02


def test_sampler_with_an_oracle_returns_the_data():
    """A predictor that knows x0 gives v = (x_t − x0)/t; every step then recovers x0 exactly."""
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    oracle = lambda xt, t: (xt - x0) / t.view(-1, 1, 1, 1)
    for k in (1, 2, 4):
        out = flow.sample_few_step(
            oracle, torch.randn_like(x0), flow.few_step_schedule(k), generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(out, x0)


def test_sampler_with_the_fused_step_equals_the_eager_steps():
    """The sampler's fused flow_step (x̂0 and re-noise in one op) against the steps written out in eager ops."""
    w = torch.randn(3, 3)
    predict = lambda x, t: torch.einsum("bchw,cd->bdhw", x, w) * t.view(-1, 1, 1, 1)
    noise = torch.randn(2, 3, 5, 5)
    sched = flow.few_step_schedule(4)
    out = flow.sample_few_step(predict, noise, sched, generator=torch.Generator().manual_seed(1))
    g, x = torch.Generator().manual_seed(1), noise
    for i, t in enumerate(sched):
        tt = torch.full((2,), t)
        x0 = flow.x0_from_velocity(x, predict(x, tt), tt)
        if i + 1 < len(sched):
            x = flow.add_noise(x0, torch.randn(noise.shape, generator=g), torch.full((2,), sched[i + 1]))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-6)
