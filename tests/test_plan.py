"""`pairfree plan`: ZeRO arithmetic against models built on the meta device, activations counted on the meta
device equal to the same passes run for real, the judge's depth extrapolation equal to a direct count."""

import pytest
import torch
import yaml

from pairfree.cli import main as cli
from pairfree.config import ConfigError, load_config
from pairfree.models.presets import build_from_preset, parameter_count
from pairfree.plan import dit_activations, judge_activations, plan, saved_bytes
from pairfree.train.config import TrainConfig
from pairfree.train.models import with_reference_skip

TINY_QWEN = {
    "image_token_id": 20, "video_token_id": 21, "vision_start_token_id": 22, "vision_end_token_id": 23,
    "tie_word_embeddings": False,
    "text_config": {"vocab_size": 32, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
                    "num_attention_heads": 4, "num_key_value_heads": 2,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 2]}},
    "vision_config": {"depth": 3, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2, "out_hidden_size": 32,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                      "fullatt_block_indexes": [2]},
}  # fmt: skip


@pytest.fixture
def tiny_cfg(tmp_path):
    (tmp_path / "qwen.yaml").write_text(yaml.safe_dump({"qwen2_5_vl": TINY_QWEN}))
    dit = yaml.safe_load(open("configs/shapes/dit.yaml"))
    dit["dit"].update(num_layers=2, text_dim=16)
    (tmp_path / "dit.yaml").write_text(yaml.safe_dump(dit))

    def make(*sets):
        base = [f"models.teacher_arch={tmp_path / 'dit.yaml'}", f"models.judge_arch={tmp_path / 'qwen.yaml'}"]
        base += ["models.resolution=32", "models.judge_image_size=56", "models.text_max_length=7", "batch=2"]
        return load_config(TrainConfig, "configs/paper/sana1600m_qwen7b_1x8.yaml", [*base, *sets, *_no_extras()])

    return make


def _no_extras():
    return ["models.text_arch=''", "models.autoencoder_arch=''"]


@pytest.mark.parametrize("stage,frozen,gpus", [(3, "zero3", 8), (2, "replicate", 64), (3, "replicate", 512)])
def test_zero_arithmetic_matches_meta_models(tiny_cfg, stage, frozen, gpus):
    cfg = tiny_cfg(f"distributed.zero_stage={stage}", f"distributed.frozen={frozen}")
    p = plan(cfg, gpus, measure=False)
    rows = {m.name: m for m in p.models}
    teacher = build_from_preset(cfg.models.teacher_arch)
    n_gen, n_dit = parameter_count(with_reference_skip(teacher)), parameter_count(teacher)
    n_judge = parameter_count(build_from_preset(cfg.models.judge_arch))
    assert n_gen > n_dit  # the reference skip
    assert (rows["generator"].params, rows["critic"].params, rows["teacher"].params) == (n_gen, n_dit, n_dit)
    assert rows["judge"].params == n_judge
    for name, n in (("generator", n_gen), ("critic", n_dit)):
        r = rows[name]
        assert r.weights == pytest.approx(2 * n / (gpus if stage == 3 else 1))  # bf16 weights
        assert r.grads == pytest.approx(2 * n / gpus)  # bf16 gradients, sharded by ZeRO-2 and 3
        assert r.optimizer == pytest.approx(12 * n / gpus)  # fp32 master + Adam's two moments, sharded
    assert rows["generator"].ema == 4 * n_gen and rows["critic"].ema == 0
    for name, n in (("teacher", n_dit), ("judge", n_judge)):
        assert rows[name].weights == pytest.approx(2 * n / (gpus if frozen == "zero3" else 1))
        assert rows[name].grads == rows[name].optimizer == 0
    assert p.static == pytest.approx(sum(r.total for r in p.models) + p.gather)


def test_more_gpus_never_need_more_memory(tiny_cfg):
    cfg = tiny_cfg()
    totals = [plan(cfg, n, measure=False).static for n in (8, 64, 512)]
    assert totals[0] > totals[1] > totals[2]


def test_meta_activation_counts_equal_real_runs(tiny_cfg, monkeypatch):
    """The same unroll / critic passes on real CPU tensors (reference ops) save exactly the bytes counted on meta."""
    monkeypatch.setenv("PAIRFREE_BACKEND", "reference")
    cfg = tiny_cfg("distributed.bf16=false")
    teacher = build_from_preset(cfg.models.teacher_arch)
    latent = (teacher.config.in_channels, 32, 32)
    meta = dit_activations(cfg, with_reference_skip(teacher), build_from_preset(cfg.models.teacher_arch), latent)
    teacher = build_from_preset(cfg.models.teacher_arch, device="cpu")
    real = dit_activations(
        cfg, with_reference_skip(teacher), build_from_preset(cfg.models.teacher_arch, device="cpu"), latent, "cpu"
    )
    assert meta == real
    plain, ckpt, one, critic = meta
    assert plain > ckpt > one > 0 and critic > 0
    assert plain == pytest.approx(cfg.sampler.steps * one, rel=0.05)  # K calls' activations without checkpointing


def test_saved_bytes_skips_parameters_and_counts_storage_once():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    act = 4 * 8 * 4
    assert saved_bytes(lambda: torch.tanh(lin(x)).sum(), list(lin.parameters())) == 2 * act  # x (weight grad), tanh
    lin.requires_grad_(False)  # frozen: the input is not kept, the weight (for the input gradient) is not counted
    assert saved_bytes(lambda: torch.tanh(lin(x)).sum(), list(lin.parameters())) == act
    assert saved_bytes(lambda: (x * x).sum()) == act  # x saved twice, counted once


def test_judge_depth_extrapolation_is_exact(tiny_cfg):
    cfg = tiny_cfg("distributed.bf16=false")
    direct = judge_activations(cfg, questions=2, text_layers=3, vision_layers=3)
    assert judge_activations(cfg, questions=2) == direct > 0


def test_plan_command_prints_the_tables(tiny_cfg, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg = tiny_cfg()
    cfg_file.write_text(yaml.safe_dump({"models": {k: getattr(cfg.models, k) for k in ("teacher_arch", "judge_arch")}}))
    sets = ["batch=1", "models.resolution=32", "models.judge_image_size=56", "models.text_max_length=7"]
    assert cli(["plan", "--config", str(cfg_file), "--gpus", "8", "--nodes", "8", "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "per-GPU memory on 64 GPU(s)" in out and "total with checkpointing" in out
    assert [ln.split()[0] for ln in out.splitlines()[-3:]] == ["8", "64", "512"]


def test_missing_architecture_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match="models.judge_arch: the planner needs an architecture preset"):
        plan(tiny_cfg("models.judge_arch=''"), 8, measure=False)
    with pytest.raises(ConfigError, match="models.teacher_arch: nope.yaml is not a file"):
        plan(tiny_cfg("models.teacher_arch=nope.yaml"), 8, measure=False)
