"""The paper presets (configs/paper/) load through the real loaders — tiny random weights in the published
directory layouts — and train one step of each stage in DC-AE latent space."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pairfree.config import load_config
from pairfree.edit import EditPipeline, edit_images
from pairfree.flow import few_step_schedule
from pairfree.models import CheckpointError
from pairfree.train.config import TrainConfig
from pairfree.train.distributed import ds_config, read_ds_json
from pairfree.train.models import load_models
from pairfree.train.trainer import EditorTrainer

PRESETS = sorted(Path("configs/paper").glob("*.yaml"))


def tiny(preset, sana, qwen, out, *extra, data=None):
    sets = [f"data.path={data}"] if data else []
    sets += [f"models.teacher={sana}", f"models.judge={qwen}", "models.resolution=32", "models.judge_image_size=56"]
    sets += ["models.dtype=float32", "models.text_max_length=12", "batch=2", "copy_steps=1", "steps=1"]
    sets += [f"out={out}", "sample_every=0", "optim.critic_updates=1", "optim.ema=0.9", *extra]
    return load_config(TrainConfig, preset, sets)


def test_there_are_presets_for_7b_3b_and_multinode():
    names = {p.stem for p in PRESETS}
    assert {"sana1600m_qwen7b_1x8", "sana1600m_qwen3b_1x8", "sana1600m_qwen7b_multinode"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_trains_in_latent_space(preset, paper_dirs, real_records, tmp_path):
    sana, qwen = paper_dirs
    cfg = tiny(preset, sana, qwen, tmp_path / "run", data=real_records)
    assert cfg.data.source == "jsonl"  # the presets read instruction records of your images
    models = load_models(cfg.models)
    assert models.autoencoder.latent_channels == 4 and models.teacher.dit.config.in_channels == 4
    assert not any(p.requires_grad for p in models.generator.text.parameters())  # shared, frozen
    assert models.generator.text is models.teacher.text
    gen_params = {n for n, p in models.generator.named_parameters() if p.requires_grad}
    assert gen_params and all(n.startswith("dit.") for n in gen_params)
    trainer = EditorTrainer(cfg, models)
    before = {k: v.clone() for k, v in trainer.ema.dit.state_dict().items()}
    logs = trainer.train()
    assert trainer.ema.text is models.teacher.text  # the EMA shares the frozen text encoder, copies the DiT
    moved = [k for k, v in trainer.ema.dit.state_dict().items() if not torch.equal(v, before[k])]
    assert "blocks.0.self_attn.qkv.weight" in moved
    assert {"vlm", "dmd", "critic"} <= logs.keys() and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert (tmp_path / "run" / "model" / "dit" / "config.json").is_file()
    pipe = EditPipeline.from_pretrained(tmp_path / "run" / "model")  # the DiT here, text encoder + DC-AE from sana/
    with torch.no_grad():
        out = pipe(torch.zeros(3, 32, 32), "make the circle blue")
        sched = few_step_schedule(cfg.sampler.steps, cfg.sampler.shift)
        same = edit_images(
            trainer.ema, torch.zeros(1, 3, 32, 32), ["make the circle blue"], sched, 0, models.autoencoder
        )
    assert out.shape == (3, 32, 32) and pipe.source == sana.resolve()
    torch.testing.assert_close(out, same[0])  # the exported editor is the trained EMA generator
    # the DeepSpeed JSON the preset names is read and our settings go on top of it
    c = ds_config(cfg, cfg.optim.lr, True, on_gpu=True)
    base = read_ds_json(cfg.distributed.deepspeed_config)
    assert c["zero_optimization"]["stage"] == cfg.distributed.zero_stage == 3 and c["bf16"] == {"enabled": True}
    assert c["zero_optimization"]["overlap_comm"] == base["zero_optimization"]["overlap_comm"]
    assert c["train_micro_batch_size_per_gpu"] == cfg.batch


def test_missing_pieces_are_named(paper_dirs, tmp_path):
    sana, qwen = paper_dirs
    preset = PRESETS[0]
    broken = tmp_path / "sana"
    shutil.copytree(sana, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError, match=r"models.teacher: .*vae/config.json is missing"):
        load_models(tiny(preset, broken, qwen, tmp_path / "r").models)
    with pytest.raises(CheckpointError, match=r"models.teacher: .*nowhere is not a directory"):
        load_models(tiny(preset, tmp_path / "nowhere", qwen, tmp_path / "r").models)
    with pytest.raises(CheckpointError, match=r"models.judge: .*nojudge is not a directory"):
        load_models(tiny(preset, sana, tmp_path / "nojudge", tmp_path / "r").models)
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    cfg = tiny(preset, sana, qwen, tmp_path / "r", f"distributed.deepspeed_config={bad}")
    with pytest.raises(ValueError, match="ds.json is not valid JSON"):
        ds_config(cfg, 1e-5, True, on_gpu=False)


LAUNCHER = shutil.which("deepspeed", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(LAUNCHER is None, reason="deepspeed launcher not installed")
def test_preset_under_deepspeed_two_ranks(paper_dirs, real_records, tmp_path):
    """The 1x8 preset's engines (ZeRO-3 DiTs; the shared frozen text encoder inside the teacher's ZeRO-3
    inference engine) under `DS_ACCELERATOR=cpu deepspeed --num_gpus 2`, its DeepSpeed JSON included."""
    sana, qwen = paper_dirs
    sets = [f"models.teacher={sana}", f"models.judge={qwen}", "models.resolution=32", "models.judge_image_size=56"]
    sets += ["models.dtype=float32", "models.text_max_length=12", "batch=1", "copy_steps=1", "steps=2"]
    sets += [f"data.path={real_records}"]
    sets += [f"out={tmp_path}", "sample_every=0", "optim.critic_updates=1", "threads=1", "log_every=1"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("TRITON_INTERPRET", None)
    cmd = [LAUNCHER, "--num_gpus", "2", "--master_port", "29541", "--module", "pairfree.train",
           "--config", str(PRESETS[0]), "--set", *sets]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in logs] == ["copy", "edit", "edit"]
    assert all(math.isfinite(r["loss"]) for r in logs) and "vlm" in logs[-1]
    assert (tmp_path / "deepspeed" / "gen" / "last").is_dir() and (tmp_path / "model" / "dit").is_dir()
