"""Flow-GRPO (``trainer: grpo``): the policy's log-probability and KL against closed forms, group advantages
against a hand computation, the clipped objective's gradient against its piecewise closed form, and the
trainer end to end on tiny models — one entry point, identical resume."""

import json

import pytest
import torch

from pairfree.cli import main as cli
from pairfree.config import load_config
from pairfree.train.config import TrainConfig
from pairfree.train.grpo import (
    GRPOTrainer,
    clipped_surrogate,
    gaussian_kl,
    gaussian_log_prob,
    group_advantages,
)
from pairfree.train.models import load_models
from pairfree.world.bench import build_bench
from pairfree.world.edits import EDIT_TYPES
from pairfree.world.spec import LITE

from .conftest import crash_then_resume, tiny_overrides


def test_log_prob_and_kl_are_the_gaussian_closed_forms():
    g = torch.Generator().manual_seed(0)
    x, mean, ref = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    std = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    s = std.view(3, 1, 1, 1).expand_as(x)
    expect = torch.distributions.Normal(mean, s).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expect)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, s), torch.distributions.Normal(ref, s))
    torch.testing.assert_close(gaussian_kl(mean, ref, std), kl.flatten(1).mean(1))


def test_group_advantages_by_hand():
    rewards = torch.tensor([0.1, 0.3, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0])  # two groups of 4; the second has no spread
    mean, std = 0.45, ((0.35**2 + 0.15**2 + 0.05**2 + 0.45**2) / 4) ** 0.5
    expect = [(r - mean) / (std + 1e-4) for r in (0.1, 0.3, 0.5, 0.9)] + [0.0] * 4
    torch.testing.assert_close(group_advantages(rewards, 4, clip=5.0), torch.tensor(expect))
    clipped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), 4, clip=1.5)
    assert clipped.max().item() == 1.5 and clipped.min().item() == pytest.approx(-1 / 3**0.5, rel=1e-3)


@pytest.mark.parametrize(
    "delta, adv, clipped",  # log π − log π_old, advantage, whether the clipped branch is the minimum
    [(0.0, 1.0, False), (0.05, 1.0, True), (0.05, -1.0, False), (-0.05, -1.0, True), (-0.05, 1.0, False)],
)
def test_clipped_objective_gradient_is_ppos(delta, adv, clipped):
    """Toy policy log π(θ) = θ·c: d/dθ of −min(r·A, clip(r)·A) is −A·r·c inside the trust region or where
    the unclipped term is the smaller, and 0 where the clipped term is."""
    c, eps = 2.0, 0.02
    theta = torch.tensor(delta / c, dtype=torch.float64, requires_grad=True)
    loss = clipped_surrogate(
        theta * c, torch.zeros((), dtype=torch.float64), torch.tensor(adv, dtype=torch.float64), eps
    )
    (grad,) = torch.autograd.grad(loss, theta)
    ratio = torch.exp(torch.tensor(delta, dtype=torch.float64))
    expect = 0.0 if clipped else -adv * ratio.item() * c
    assert grad.item() == pytest.approx(expect, abs=1e-12)


def _grpo(models, out, **more):
    sets = tiny_overrides(models, out, trainer="grpo", batch=2, **{"grpo.group_size": 3, **more})
    cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", sets)
    return GRPOTrainer(cfg, load_models(cfg.models, critic=cfg.uses_critic))


def _metrics(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_grpo_trains_through_the_one_entry_point_with_held_out_quality_in_view(tiny_models, tmp_path):
    sets = tiny_overrides(tiny_models, tmp_path, trainer="grpo", batch=2, heldout_every=3, heldout_items=8,
                          **{"grpo.group_size": 3})  # fmt: skip
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
    rows = _metrics(tmp_path)
    steps = [r for r in rows if "stage" in r]
    assert [r["stage"] for r in steps] == ["copy"] * 2 + ["edit"] * 3
    for r in steps[2:]:
        assert 0 <= r["reward"] <= 1 and r["kl"] >= 0 and "dmd" not in r and "vlm" not in r
    held = [r for r in rows if "heldout/preservation" in r]
    assert [r["step"] for r in held] == [0, 3, 5]  # the start, every 3 steps and the end
    for r in held:
        assert 0 <= r["heldout/complete edit"] <= r["heldout/preservation"] <= 1
    assert (tmp_path / "heldout.png").is_file()
    assert json.loads((tmp_path / "model" / "train.json").read_text())["trainer"] == "flow-grpo"
    # the best model so far on the validation edits is kept: the first step with the highest complete edit
    values = [r["heldout/complete edit"] for r in held]
    first_best = held[values.index(max(values))]
    picked = json.loads((tmp_path / "best" / "best.json").read_text())
    assert {k: picked[k] for k in first_best} == first_best
    assert json.loads((tmp_path / "best" / "train.json").read_text())["step"] == first_best["step"]


def test_the_held_out_monitor_never_sees_the_benchmark():
    """The monitor (and the best checkpoint it picks) reads the validation stream; the benchmark is the bench one."""
    key = lambda e: json.dumps([e.source.to_dict(), e.kind, e.params], sort_keys=True)  # noqa: E731
    monitor = {key(e) for e in build_bench(8, seed=0, spec=LITE, split="val")}
    bench = {key(e) for e in build_bench(25, seed=0, spec=LITE)}
    assert len(monitor) == 8 * len(EDIT_TYPES) and not monitor & bench


def test_grpo_resumes_identically(tiny_models, tmp_path):
    full = _grpo(tiny_models, tmp_path / "a")
    full.train()
    resumed = crash_then_resume(lambda out: _grpo(tiny_models, out), tmp_path / "b")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    for p, q in zip(full.gen.module.parameters(), resumed.gen.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_grpo_config_errors():
    with pytest.raises(ValueError, match="grpo.group_size: expected ≥ 2"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["grpo.group_size=1"])
    with pytest.raises(ValueError, match="trainer: expected 'pair-free', 'paired' or 'grpo', got 'ppo'"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["trainer=ppo"])


def test_a_run_starts_from_a_trained_editor(tiny_models, tmp_path):
    """models.generator: the supervised_grpo / supervised_npedit rows start from the yardstick's model/."""
    from pairfree.models.bundle import FlowModel
    from pairfree.models.persistence import CheckpointError

    sets = tiny_overrides(tiny_models, tmp_path / "first", steps=1, copy_steps=2)
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
    saved = FlowModel.from_pretrained(tmp_path / "first" / "model")
    trainer = _grpo(tiny_models, tmp_path / "second", **{"models.generator": str(tmp_path / "first" / "model")})
    for (name, p), q in zip(trainer.gen.module.state_dict().items(), saved.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    with pytest.raises(CheckpointError, match="is not an editor directory"):
        _grpo(tiny_models, tmp_path / "third", **{"models.generator": str(tmp_path)})


def test_the_shipped_sft_model_starts_a_run_by_name():
    """``models.generator: lite-sft``: the shipped supervised yardstick, by name (the demo's and the RL rows' start)."""
    from pairfree.shipped import pretrained
    from pairfree.train.config import ModelsConfig

    shipped = pretrained("lite-sft")
    cfg = ModelsConfig(teacher="lite-teacher", judge="lite-judge", generator="lite-sft")
    generator = load_models(cfg, critic=False, world=LITE).generator
    for (name, p), q in zip(generator.state_dict().items(), shipped.generator.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
