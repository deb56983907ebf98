"""The supervised yardstick (``pairfree.train.paired``): its stage 1 is the flow loss toward the ground-truth edit."""

import json
import math

import pytest
import torch

from pairfree.config import load_config
from pairfree.data.augment import drop_words
from pairfree.flow import few_step_schedule
from pairfree.train.config import TrainConfig
from pairfree.train.losses import flow_loss
from pairfree.train.models import load_models
from pairfree.train.paired import PairedTrainer
from pairfree.train.run import main
from pairfree.train.trainer import editor_data
from pairfree.world.captions import caption_words
from pairfree.world.edits import instruction_choices, render_edits
from pairfree.world.spec import get_spec

from .conftest import tiny_overrides


def test_paired_step_is_the_flow_loss_toward_the_true_edit(tiny_models, tmp_path):
    sets = tiny_overrides(tiny_models, tmp_path, trainer="paired")
    cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", sets)
    trainer = PairedTrainer(cfg, load_models(cfg.models))
    assert trainer.critic is None  # supervised: no DMD, so no critic is built, trained or checkpointed
    step = cfg.copy_steps
    edits = [
        trainer.data.example(trainer.data.global_index(j))[0] for j in range(step * cfg.batch, (step + 1) * cfg.batch)
    ]
    sources, targets, masks = render_edits(edits, cfg.models.resolution)  # the world's own renderer of true edits
    assert masks.flatten(1).any(1).all()  # every target differs from its source
    sources, targets = sources * 2 - 1, targets * 2 - 1
    instructions = [e.instruction for e in edits]
    gen = trainer.gen.module
    with torch.no_grad():
        ts = few_step_schedule(cfg.sampler.steps, cfg.sampler.shift)
        expected = flow_loss(gen, targets, instructions, trainer.generators(step), sources, t_values=ts).item()
        copy = flow_loss(gen, sources, instructions, trainer.generators(step), sources, t_values=ts).item()
    logs = trainer.edit_step(step)
    assert logs["paired"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert abs(expected - copy) > 1e-6  # the target, not the source, is what it is pulled toward


def test_word_dropout_hides_words_from_the_generator_only(tiny_models, tmp_path):
    """With ``data.word_dropout`` the paired loss is the flow loss under the instructions with words hidden by the
    tokenizer's unknown token; the items (and so the judge's questions) keep the clean instruction."""
    sets = tiny_overrides(tiny_models, tmp_path, **{"data.word_dropout": 0.5, "batch": 6})
    cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", sets)
    trainer = PairedTrainer(cfg, load_models(cfg.models))
    step = cfg.copy_steps
    edits = [trainer.data.example(trainer.data.global_index(j))[0] for j in range(step * 6, (step + 1) * 6)]
    clean = [e.instruction for e in edits]
    seen = trainer.conditioning(clean, step)
    assert seen == trainer.conditioning(clean, step)  # seeded
    words = [(c, s) for a, b in zip(clean, seen) for c, s in zip(a.split(), b.split(), strict=True)]
    hidden = sum(s == "[UNK]" for _, s in words)
    assert 0 < hidden < len(words) and all(s in (c, "[UNK]") for c, s in words)
    unk = trainer.gen.module.text.tokenizer.unk_token_id
    assert (trainer.gen.module.text.tokenizer(seen[0])["input_ids"].count(unk)) == seen[0].split().count("[UNK]")
    sources, targets, _ = render_edits(edits, cfg.models.resolution)
    gen = trainer.gen.module
    with torch.no_grad():
        ts = few_step_schedule(cfg.sampler.steps, cfg.sampler.shift)
        expected = flow_loss(gen, targets * 2 - 1, seen, trainer.generators(step), sources * 2 - 1, t_values=ts)
    assert trainer.edit_step(step)["paired"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert [it["instruction"] for it in trainer.batch(step)] == [
        trainer.data.example(trainer.data.global_index(j))[0].instruction for j in range(step * 6, (step + 1) * 6)
    ]


def test_drop_words_rate_and_bounds():
    text = " ".join(f"w{i}" for i in range(4000))
    assert drop_words(text, 0.0, 1) == text
    out = drop_words(text, 0.3, 1).split()
    assert len(out) == 4000 and abs(out.count("[UNK]") / 4000 - 0.3) < 0.03  # binomial sd 0.007
    assert out == drop_words(text, 0.3, 1).split() != drop_words(text, 0.3, 2).split()
    with pytest.raises(ValueError, match="probability"):
        drop_words(text, 1.0, 0)


def test_freeze_text_trains_the_dit_and_keeps_the_teachers_text_encoder(tiny_models, tmp_path):
    cfg = load_config(
        TrainConfig,
        "configs/shapes/editor.yaml",
        tiny_overrides(tiny_models, tmp_path, **{"models.freeze_text": "true"}),
    )
    models = load_models(cfg.models)
    text0 = {k: v.clone() for k, v in models.generator.text.state_dict().items()}
    dit0 = {k: v.clone() for k, v in models.generator.dit.state_dict().items()}
    trainer = PairedTrainer(cfg, models)
    trainer.train()
    text, dit = trainer.gen.module.text.state_dict(), trainer.gen.module.dit.state_dict()
    for k, v in text0.items():
        torch.testing.assert_close(text[k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(v, models.teacher.text.state_dict()[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(dit[k], v) for k, v in dit0.items())


def test_drop_words_never_hides_kept_words():
    text = "Make the red circle, Striped. into the top left"
    keep = frozenset({"the", "red", "circle", "striped", "top", "left"})
    out = drop_words(text, 0.999, 3, keep=keep).split()
    assert out == ["[UNK]", "the", "red", "circle,", "Striped.", "[UNK]", "the", "top", "left"]


def test_non_caption_scope_hides_only_words_the_captions_never_use(tiny_models, tmp_path):
    sets = tiny_overrides(
        tiny_models, tmp_path, **{"data.word_dropout": 0.5, "data.word_dropout_scope": "non_caption", "batch": 8}
    )
    cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", sets)
    trainer = PairedTrainer(cfg, load_models(cfg.models))
    keep = caption_words(trainer.spec)
    hidden = kept = 0
    for step in range(cfg.copy_steps, cfg.copy_steps + 4):
        clean = [it["instruction"] for it in trainer.batch(step)]
        for a, b in zip(clean, trainer.conditioning(clean, step)):
            for c, s in zip(a.split(), b.split(), strict=True):
                assert s == c or (s == "[UNK]" and c.lower() not in keep), (a, b)
                hidden += s != c
                kept += s == c and c.lower() not in keep
    assert hidden > 0 and kept > 0  # a probability, not all or nothing
    with pytest.raises(ValueError, match="word_dropout_scope"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", [*sets, "data.source=jsonl", "data.path=x.jsonl"])


def test_wide_templates_word_the_same_training_edits(tiny_models, tmp_path):
    """``data.templates=wide``: the same training edits (type, parameters, images) as "train", worded from the wide
    set, some with phrasings "train" lacks; a benchmark wording or a non-world source is refused."""
    sets = tiny_overrides(tiny_models, tmp_path, batch=8)
    plain, wide = (
        editor_data(cfg := load_config(TrainConfig, "configs/shapes/editor.yaml", [*sets, *more]), 0, 1,
                    get_spec(cfg.world))
        for more in ([], ["data.templates=wide"])
    )  # fmt: skip
    new = 0
    for j in range(64):
        (a, _), (b, _) = plain.example(j), wide.example(j)
        assert (a.kind, a.params, a.source) == (b.kind, b.params, b.source)
        assert b.instruction in instruction_choices(b.source, b.kind, b.params, "wide")
        new += b.instruction not in instruction_choices(b.source, b.kind, b.params, "train")
    assert new > 0
    for bad in (["data.templates=heldout"], ["data.templates=wide", "data.source=jsonl", "data.path=x.jsonl"]):
        with pytest.raises(ValueError, match="data.templates"):
            load_config(TrainConfig, "configs/shapes/editor.yaml", [*sets, *bad])


def test_flow_loss_t_values_draws_only_the_sampler_timesteps():
    seen = []

    class Recorder(torch.nn.Module):
        def velocity(self, x, t, captions, reference=None):
            seen.append(t)
            return torch.zeros_like(x)

    ts = few_step_schedule(4, 6.0)
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    flow_loss(Recorder(), torch.zeros(400, 2, 2, 2), [""] * 400, gens, t_values=ts)
    drawn = seen[0].tolist()
    assert set(round(t, 6) for t in drawn) == set(round(t, 6) for t in ts)
    assert min(drawn.count(t) for t in set(drawn)) > 60  # each of the 4 about a quarter of the time


def test_paired_cli_trains_and_marks_its_model(tiny_models, tmp_path, capsys):
    sets = tiny_overrides(tiny_models, tmp_path)
    assert main(["--config", "configs/shapes/editor.yaml", "--set", *sets], "paired") == 0
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["copy"] * 2 + ["edit"] * 3
    assert all("paired" in r and "vlm" not in r for r in rows[2:])
    record = json.loads((tmp_path / "model" / "train.json").read_text())
    assert record["trainer"] == "paired" and record["edit_steps"] == 3
    assert "paired (supervised) editor" in capsys.readouterr().out


def test_cosine_decay_lowers_the_editing_lr_to_its_floor_over_the_editing_steps(tiny_models, tmp_path):
    """``optim.decay: cosine``: the copy stage keeps ``warmup_lr``; editing step i of n uses
    lr · (m + (1 − m) · (1 + cos(π i / n)) / 2) — read back from the optimizer during a run."""
    sets = tiny_overrides(tiny_models, tmp_path, steps=4, **{"optim.decay": "cosine", "optim.min_lr_ratio": 0.1})
    cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", sets)
    trainer = PairedTrainer(cfg, load_models(cfg.models))
    seen = []
    step_once = trainer.update
    trainer.update = lambda *a, **k: seen.append(trainer.gen.optimizer.param_groups[0]["lr"]) or step_once(*a, **k)
    trainer.train()
    lr, m = cfg.optim.lr, 0.1
    expected = [cfg.optim.warmup_lr] * 2 + [lr * (m + (1 - m) * (1 + math.cos(math.pi * i / 4)) / 2) for i in range(4)]
    assert seen == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="optim.decay: expected 'constant' or 'cosine', got 'linear'"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", [*sets, "optim.decay=linear"])
