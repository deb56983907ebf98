"""Tiny random teacher and judge saved in the shipped layout, so the trainer's loading code is the real one."""

import json

import pytest
import torch

from pairfree.judge.world import build_world_judge
from pairfree.models.bundle import FlowModel
from pairfree.models.dit import DiT, DiTConfig
from pairfree.models.text import WorldTextEncoder

TINY_DIT = dict(
    in_channels=3, out_channels=3, num_layers=2, num_heads=2, head_dim=16, cross_heads=2, cross_head_dim=16,
    patch_size=4, norm="rms",
)  # fmt: skip


def save_tiny_teacher(path, seed=0):
    torch.manual_seed(seed)
    text = WorldTextEncoder.for_world(seed=seed, width=32, num_layers=1, num_heads=2)
    teacher = FlowModel(DiT(DiTConfig(**TINY_DIT, text_dim=text.dim)), text)
    return teacher.save_pretrained(path)


def save_tiny_judge(path, seed=0):
    judge = build_world_judge(seed=seed, image_size=84, width=32, vision_layers=1, text_layers=1)
    judge.model.save_pretrained(path)
    judge.tokenizer.save_pretrained(path)
    meta = {"image_size": 84, "answer_tokens": ["no", "yes"], "question_first": True}
    (path / "judge.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {"teacher": str(save_tiny_teacher(root / "teacher")), "judge": str(save_tiny_judge(root / "judge"))}


def tiny_overrides(models, out, **more):
    sets = {
        "out": str(out),
        "models.teacher": models["teacher"],
        "models.judge": models["judge"],
        "batch": 3,
        "copy_steps": 2,
        "steps": 3,
        "log_every": 1,
        "ckpt_every": 2,
        "sample_every": 0,
        "optim.critic_updates": 2,
        "loss.dmd_fake": "critic",  # the paper's online critic (its engine and updates); tests of "delta" set it
        "loss.vlm_weight": 0.02,  # the paper's judge weight (the shapes config's is 0): the tests exercise the judge
        "optim.ema": 0.9,
        "loss.do_nothing_prob": 0.3,
        **more,
    }
    return [f"{k}={v}" for k, v in sets.items()]


class Crash(Exception):
    """Raised inside a training step to stand for a killed run."""


def crash_then_resume(make_trainer, out, crash_at: int = 3):
    """Train ``make_trainer(out)`` until it dies during step ``crash_at`` (after the last checkpoint), then resume a
    fresh trainer on the same directory to the end; returns the resumed trainer."""
    crashed = make_trainer(out)
    real = crashed.edit_step

    def edit_step(step):
        if step == crash_at:
            raise Crash
        return real(step)

    crashed.edit_step = edit_step
    with pytest.raises(Crash):
        crashed.train()
    resumed = make_trainer(out)
    resumed.train(resume=True)
    return resumed
