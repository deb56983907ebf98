"""The pair-free trainer: runs end to end (tiny models), never sees a target image, resumes identically, and
refuses bad input with errors that name it."""

import json

import pytest
import torch

import pairfree.world.datasets as world_datasets
import pairfree.world.edits as world_edits
from pairfree.cli import main as cli
from pairfree.config import ConfigError, load_config
from pairfree.device import resolve_device
from pairfree.models.persistence import CheckpointError
from pairfree.train.config import TrainConfig
from pairfree.train.models import load_models
from pairfree.train.trainer import CRITIC_STREAM, EditorTrainer
from pairfree.world.datasets import EDITOR_KEYS, item_seed
from pairfree.world.edits import DEFAULT_MIX, sample_edit

from .conftest import crash_then_resume, tiny_overrides


def _trainer(models, out, **more):
    cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", tiny_overrides(models, out, **more))
    return EditorTrainer(cfg, load_models(cfg.models, critic=cfg.uses_critic))


def _metrics(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fake", ["critic", "delta"])
def test_trains_end_to_end(tiny_models, tmp_path, capsys, fake):
    sets = tiny_overrides(tiny_models, tmp_path, sample_every=5, **{"loss.dmd_fake": fake})
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
    rows = _metrics(tmp_path)
    assert [r["stage"] for r in rows] == ["copy"] * 2 + ["edit"] * 3
    edited = [r for r in rows[2:] if "vlm" in r]  # a step whose samples all drew "do nothing" has no VLM term
    assert edited and any("nothing" in r for r in rows[2:])
    for r in edited:
        for k in ("vlm", "dmd", "p_verify", "p_identity", "grad_norm") + (("critic",) if fake == "critic" else ()):
            assert torch.isfinite(torch.tensor(r[k])), (k, r)
        assert ("critic" in r) == (fake == "critic")
        assert 1 <= r["k"] <= 4
    assert (tmp_path / "model" / "editor.json").is_file() and (tmp_path / "loss.png").is_file()
    assert (tmp_path / "samples" / "step_000005.png").is_file()
    assert '"step": 5' in capsys.readouterr().out


def test_training_loop_never_receives_a_target_image(tiny_models, tmp_path, monkeypatch):
    """Every image the loop renders is an edit's source; rendering ground-truth edits is forbidden."""
    rendered = []
    real_render = world_datasets.render

    def spy(scenes, *a, **kw):
        scenes = list(scenes)
        rendered.extend(scenes)
        return real_render(scenes, *a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("the training loop rendered ground-truth edits")

    monkeypatch.setattr(world_datasets, "render", spy)
    monkeypatch.setattr(world_edits, "render_edits", forbidden)
    trainer = _trainer(tiny_models, tmp_path)
    seen_keys = set()
    real_batch = trainer.batch

    def batch(step):
        items = real_batch(step)
        for it in items:
            seen_keys.update(it)
        return items

    trainer.batch = batch
    trainer.train()
    assert seen_keys == set(EDITOR_KEYS)
    cfg, b = trainer.cfg, trainer.cfg.batch
    order = []  # each step's batch, then (editing steps) the critic's fresh batches from its own slice
    for step in range(cfg.copy_steps + cfg.steps):
        order += range(step * b, (step + 1) * b)
        if step >= cfg.copy_steps:
            for i in range(cfg.optim.critic_updates):
                j0 = CRITIC_STREAM + (step * cfg.optim.critic_updates + i) * b
                order += range(j0, j0 + b)
    edits = [sample_edit(item_seed(0, "train", i), DEFAULT_MIX, templates="train") for i in order]
    assert rendered == [e.source for e in edits]
    assert not {e.target for e in edits} & set(rendered)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("fake", ["critic", "delta"])
def test_resume_continues_identically(tiny_models, tmp_path, fake):
    full = _trainer(tiny_models, tmp_path / "a", **{"loss.dmd_fake": fake})
    full.train()
    crashed = _trainer(tiny_models, tmp_path / "b", **{"loss.dmd_fake": fake})
    real = crashed.edit_step

    def edit_step(step):
        if step == 3:
            raise _Crash  # dies during step 4, after the step-2 checkpoint
        return real(step)

    crashed.edit_step = edit_step
    with pytest.raises(_Crash):
        crashed.train()
    resumed = _trainer(tiny_models, tmp_path / "b", **{"loss.dmd_fake": fake})
    resumed.train(resume=True)
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert a == b  # every loss term, k, grad norm and judge probability of steps 3..5
    for p, q in zip(full.gen.module.parameters(), resumed.gen.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(full.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not list((tmp_path / "b").glob("*.tmp"))


def test_skips_non_finite_and_exploding_updates(tiny_models, tmp_path):
    trainer = _trainer(tiny_models, tmp_path, **{"optim.skip_grad_norm": 1e-9})
    before = [p.detach().clone() for p in trainer.gen.module.parameters()]
    logs = trainer.train()
    assert trainer.skipped == 5 and logs["skipped"] == 5
    for p, q in zip(before, trainer.gen.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # no update was applied
    trainer = _trainer(tiny_models, tmp_path / "nan")
    logs = trainer.update(torch.tensor(float("nan"), requires_grad=True), {})
    assert trainer.skipped == 1 and logs["skipped"] == 1


def test_config_errors_name_the_key(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match=r"loss.*unknown field\(s\) \['vlm_wieght'\]"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["loss.vlm_wieght=1"])
    with pytest.raises(ConfigError, match="distributed.frozen: expected 'replicate' or 'zero3', got 'zero4'"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["distributed.frozen=zero4"])
    with pytest.raises(ConfigError, match="loss.dmd_fake: expected 'critic' or 'delta', got 'teacher'"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["loss.dmd_fake=teacher"])
    with pytest.raises(ConfigError, match="device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["device=tpu"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected float"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["optim.lr=fast"])
    with pytest.raises(CheckpointError, match="models.teacher: '/no/such/dir' is neither a shipped model"):
        load_models(load_config(TrainConfig, None, ["models.teacher=/no/such/dir"]).models)
    code = cli(["train", "--config", "configs/shapes/editor.yaml", "--resume", "--set", f"out={tmp_path}/none"])
    assert code == 2


def test_judge_without_yes_no_tokens_is_refused(tiny_models, tmp_path):
    from pairfree.judge.qwen import JudgeConfig, QwenJudge
    from pairfree.shipped import pretrained
    from pairfree.train.models import check_judge_tokens

    judge = pretrained("shapes-judge", tiny_models["judge"])
    check_judge_tokens(judge)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        QwenJudge(judge.model, judge.tokenizer, JudgeConfig(image_size=84, answer_tokens=("Nope", "Yep")))
    judge.config = JudgeConfig(image_size=84, answer_tokens=("Nope", "Yep"))
    with pytest.raises(ValueError, match=r"no \['Nope', 'Yep'\] token"):
        check_judge_tokens(judge)


def test_generator_starts_as_the_teacher(tiny_models):
    """The generator adds a zero-initialised reference skip: at initialisation it computes what the teacher's
    DiT computes with the same reference tokens; once trained, the skip carries the aligned reference."""
    cfg = load_config(
        TrainConfig, None, [f"models.teacher={tiny_models['teacher']}", f"models.judge={tiny_models['judge']}"]
    )
    m = load_models(cfg.models)
    x, ref, t = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.9])
    text, mask = m.teacher.text.encode(["make the circle red", "remove the star"])
    with torch.no_grad():
        torch.testing.assert_close(
            m.generator.dit(x, t, text, mask, reference=ref), m.teacher.dit(x, t, text, mask, reference=ref)
        )
        m.generator.dit.reference_skip.weight.normal_()
        assert not torch.allclose(
            m.generator.dit(x, t, text, mask, reference=ref), m.teacher.dit(x, t, text, mask, reference=ref)
        )
    assert m.generator.dit.config.reference_skip and not m.teacher.dit.config.reference_skip


def test_judge_noise_is_what_the_judge_sees(tiny_models, tmp_path, monkeypatch):
    """``loss.judge_noise``: the judge is shown the output plus Gaussian noise of that σ (the generator's own
    output, everything else, is unchanged); 0 shows the output itself — clamped to [-1, 1], the pixels an image has
    and what the judge sees at inference."""
    import pairfree.train.trainer as trainer_module

    shown = {}
    real_loss = trainer_module.vlm_editing_loss

    def spy(judge, inputs, outputs, *a, **kw):
        shown["outputs"] = outputs.detach().clone()
        return real_loss(judge, inputs, outputs, *a, **kw)

    monkeypatch.setattr(trainer_module, "vlm_editing_loss", spy)
    real_decode = {}
    for sigma in (0.0, 0.5):
        trainer = _trainer(tiny_models, tmp_path / str(sigma), **{"loss.judge_noise": sigma, "loss.do_nothing_prob": 0})
        decode = trainer.m.autoencoder.decode
        trainer.m.autoencoder.decode = lambda x, d=decode: real_decode.__setitem__(sigma, d(x).detach()) or d(x)
        trainer.edit_step(trainer.cfg.copy_steps)
        diff = shown["outputs"] - real_decode[sigma].clamp(-1, 1)
        if sigma == 0:
            assert torch.equal(diff, torch.zeros_like(diff)) and shown["outputs"].abs().max() <= 1
        else:
            assert abs(diff.std().item() - sigma) < 0.05 and abs(diff.mean().item()) < 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_asking_for_a_missing_gpu_is_refused_not_ignored(tiny_models, tmp_path, capsys):
    sets = tiny_overrides(tiny_models, tmp_path, device="cuda")
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 2
    assert "device: 'cuda' asked for, but torch" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_single_process_trains_on_the_gpu(tiny_models, tmp_path, capsys):
    """``device: auto`` puts a one-process run on the GPU (not silently on the CPU) and it trains there."""
    sets = tiny_overrides(tiny_models, tmp_path)
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
    assert "training on cuda" in capsys.readouterr().out
    rows = _metrics(tmp_path)
    assert [r["stage"] for r in rows] == ["copy"] * 2 + ["edit"] * 3
    for r in rows:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in r.items() if isinstance(v, float)), r
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 5


def test_dmd_alone_does_not_run_the_judge(tiny_models, tmp_path):
    """``loss.vlm_weight: 0`` (the paper's "only DMD" ablation) trains on DMD without a single judge call, and its
    DMD and critic terms equal those of a run with the judge (same seeds: the judge draws no random numbers)."""
    common = {"loss.do_nothing_prob": 0.0, "loss.pixel_identity_weight": 0.0}
    with_judge = _trainer(tiny_models, tmp_path / "a", **common)
    dmd_only = _trainer(tiny_models, tmp_path / "b", **common, **{"loss.vlm_weight": 0.0})

    def no_judge(*a, **kw):
        raise AssertionError("the judge was called with loss.vlm_weight = 0")

    dmd_only.m.judge.loss = no_judge
    dmd_only.step = with_judge.step = with_judge.cfg.copy_steps
    a, b = with_judge.edit_step(with_judge.step), dmd_only.edit_step(dmd_only.step)
    assert "vlm" in a and "vlm" not in b and "p_verify" not in b
    assert b["dmd"] == pytest.approx(a["dmd"], rel=1e-6) and b["critic"] == pytest.approx(a["critic"], rel=1e-6)
    assert b["loss"] == pytest.approx(with_judge.cfg.loss.dmd_weight * b["dmd"], rel=1e-6)


def test_vlm_alone_runs_no_teacher_and_no_critic(tiny_models, tmp_path):
    """``loss.dmd_weight: 0`` (the paper's "only VLM" ablation) builds and trains no critic and never calls the
    teacher; its judge term equals that of a run with DMD (same seeds: DMD draws after the judge)."""
    common = {"loss.do_nothing_prob": 0.0, "loss.pixel_identity_weight": 0.0}
    with_dmd = _trainer(tiny_models, tmp_path / "a", **common)
    vlm_only = _trainer(tiny_models, tmp_path / "b", **common, **{"loss.dmd_weight": 0.0})
    assert with_dmd.critic is not None and vlm_only.critic is None and vlm_only.m.critic is None

    def no_teacher(*a, **kw):
        raise AssertionError("the teacher was called with loss.dmd_weight = 0")

    vlm_only.m.teacher.velocity = no_teacher
    vlm_only.step = with_dmd.step = with_dmd.cfg.copy_steps
    a, b = with_dmd.edit_step(with_dmd.step), vlm_only.edit_step(vlm_only.step)
    assert "dmd" in a and "critic" in a and "dmd" not in b and "critic" not in b
    assert b["vlm"] == pytest.approx(a["vlm"], rel=1e-6)
    assert b["loss"] == pytest.approx(vlm_only.cfg.loss.vlm_weight * b["vlm"], rel=1e-6)


def test_delta_dmd_uses_the_source_caption_and_trains_no_critic(tiny_models, tmp_path, monkeypatch):
    """``loss.dmd_fake: delta``: DMD's fake is the teacher on the input under its source caption (the batch's own
    ``source_caption``s and inputs reach the loss), and there is no critic to run, update or checkpoint."""
    import pairfree.train.trainer as trainer_module
    from pairfree.train.losses import dmd_generator_loss

    trainer = _trainer(tiny_models, tmp_path, **{"loss.do_nothing_prob": 0.0, "loss.dmd_fake": "delta"})
    seen = {}

    def spy(x0, teacher, **kw):
        seen.update(kw)
        return dmd_generator_loss(x0, teacher, **kw)

    monkeypatch.setattr(trainer_module, "dmd_generator_loss", spy)
    assert trainer.critic is None and trainer.m.critic is None
    gen_before = [p.detach().clone() for p in trainer.gen.module.parameters()]
    trainer.step = trainer.cfg.copy_steps
    items = trainer.batch(trainer.step)
    logs = trainer.edit_step(trainer.step)
    assert "critic" not in logs and logs["dmd"] > 0
    assert seen["source_captions"] == [it["source_caption"] for it in items] and seen["critic"] is None
    torch.testing.assert_close(seen["reference"], trainer.encode(torch.stack([it["image"] for it in items])))
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, trainer.gen.module.parameters()))
    state = torch.load(trainer.save(), weights_only=False)
    assert state["critic"] is None and state["critic_opt"] is None


def test_resuming_a_delta_run_with_the_critic_is_a_clear_error(tiny_models, tmp_path):
    """A checkpoint written without a critic cannot silently start a fresh one; the error names the fix."""
    _trainer(tiny_models, tmp_path, **{"loss.dmd_fake": "delta"}).train()
    with pytest.raises(ValueError, match="no critic.*resume it with loss.dmd_fake=delta"):
        _trainer(tiny_models, tmp_path, **{"loss.dmd_fake": "critic"}).train(resume=True)
    with pytest.raises(ValueError, match="loss.dmd_fake = 'critic' needs a critic"):
        cfg = load_config(TrainConfig, "configs/shapes/editor.yaml", tiny_overrides(tiny_models, tmp_path))
        EditorTrainer(cfg, load_models(cfg.models, critic=False))


def test_resume_takes_the_configs_optimizer_settings(tiny_models, tmp_path):
    """torch restores an optimizer's betas and weight decay with its moments; ``--resume --set optim.betas=...``
    must still train with the config's, while the moments come back from the checkpoint."""
    first = _trainer(tiny_models, tmp_path, **{"loss.dmd_fake": "critic"})
    first.train()
    moments = [s["exp_avg_sq"].clone() for s in first.gen.opt.state.values()]
    more = {"loss.dmd_fake": "critic", "optim.betas": "[0.9,0.99]", "optim.weight_decay": "0.01"}
    resumed = _trainer(tiny_models, tmp_path, **more)
    resumed.load()
    for opt in (resumed.gen.opt, resumed.critic.opt):
        assert [(g["betas"], g["weight_decay"]) for g in opt.param_groups] == [((0.9, 0.99), 0.01)]
    for m, s in zip(moments, resumed.gen.opt.state.values()):
        torch.testing.assert_close(s["exp_avg_sq"], m, rtol=0, atol=0)


def test_noise_weight_adds_the_excess_variation_term(tiny_models, tmp_path, monkeypatch):
    """``loss.noise_weight`` adds weight × the excess total variation of the decoded outputs (logged as "noise")."""
    import pairfree.train.trainer as trainer_module
    from pairfree.train.losses import excess_variation_loss

    plain = _trainer(tiny_models, tmp_path / "a", **{"loss.do_nothing_prob": 0.0})
    noisy = _trainer(tiny_models, tmp_path / "b", **{"loss.do_nothing_prob": 0.0, "loss.noise_weight": 3.0})
    captured = {}

    def spy(outputs, inputs):
        captured["value"] = excess_variation_loss(outputs, inputs).item()
        return excess_variation_loss(outputs, inputs)

    monkeypatch.setattr(trainer_module, "excess_variation_loss", spy)
    plain.step = noisy.step = plain.cfg.copy_steps
    a, b = plain.edit_step(plain.step), noisy.edit_step(noisy.step)
    assert "noise" not in a and b["noise"] == pytest.approx(captured["value"])
    assert b["loss"] == pytest.approx(a["loss"] + 3.0 * b["noise"], rel=1e-5)


def test_prefetched_batches_train_identically(tiny_models, tmp_path):
    """``prefetch: 2`` builds batches on threads ahead of the step (for a GPU the renderer cannot keep up with)
    and changes nothing: every logged loss equals the run that builds them in the step."""
    rows = {}
    for n in (0, 2):
        sets = tiny_overrides(tiny_models, tmp_path / str(n), prefetch=n)
        assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
        rows[n] = [
            {k: v for k, v in r.items() if k not in ("time", "wall_s", "it_s")} for r in _metrics(tmp_path / str(n))
        ]
    assert len(rows[2]) == 5 and rows[2] == rows[0]
    with pytest.raises(ValueError, match="prefetch: expected ≥ 0"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", tiny_overrides(tiny_models, tmp_path, prefetch=-1))


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_matches_fp32_and_resumes_identically(tiny_models, tmp_path, mode):
    """Autocast (CPU: bf16, or fp16 with its loss scaler) gives the fp32 run's losses within the dtype's
    tolerance, keeps fp32 master weights, casts the frozen teacher and judge, and resumes bit for bit."""
    full32 = _trainer(tiny_models, tmp_path / "fp32", mixed_precision="no")
    full32.train()
    full = _trainer(tiny_models, tmp_path / "a", mixed_precision=mode)
    assert full.precision == mode and full.device.type == "cpu"
    full.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    assert next(full.m.teacher.parameters()).dtype == dtype and next(full.m.judge.parameters()).dtype == dtype
    assert all(p.dtype == torch.float32 for p in full.gen.module.parameters())
    a32, a = _metrics(tmp_path / "fp32"), _metrics(tmp_path / "a")
    for r32, r in zip(a32, a):
        for key in ("copy", "dmd", "critic", "nothing"):
            if key in r32:
                assert r[key] == pytest.approx(r32[key], rel=0.1, abs=0.02), (key, r32, r)
    assert [r["copy"] for r in a[:2]] != [r["copy"] for r in a32[:2]]  # autocast ran: not the fp32 numbers

    resumed = crash_then_resume(lambda out: _trainer(tiny_models, out, mixed_precision=mode), tmp_path / "b")
    assert _metrics(tmp_path / "b") == a
    for p, q in zip(full.gen.module.parameters(), resumed.gen.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_mixed_precision_auto_is_fp32_on_a_cpu_and_bad_values_are_refused(tiny_models, tmp_path):
    assert _trainer(tiny_models, tmp_path).precision == "no"
    with pytest.raises(ValueError, match="mixed_precision: expected one of auto, bf16, fp16, no, got 'fp8'"):
        load_config(TrainConfig, "configs/shapes/editor.yaml", ["mixed_precision=fp8"])
