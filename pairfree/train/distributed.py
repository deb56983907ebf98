"""The editor under the ``deepspeed`` launcher: one DeepSpeed engine for the generator and one for the critic
(ZeRO-2 or 3), the frozen teacher and judge replicated or as ZeRO-3 inference engines, data sharded by rank.
The DeepSpeed calls themselves are in :mod:`pairfree.engine.deepspeed`; this module says which models go where.
"""

from __future__ import annotations

from pathlib import Path

from pairfree.engine.deepspeed import DeepSpeedStrategy, frozen_engine, init_distributed, trained_engine
from pairfree.train.config import TrainConfig
from pairfree.train.models import EditorModels, ema_copy


def ds_config(cfg: TrainConfig, lr: float, trainable: bool, on_gpu: bool) -> dict:
    """The DeepSpeed config of one engine (a frozen engine has no optimizer)."""
    stage = cfg.distributed.zero_stage if trainable else 3
    c = read_ds_json(cfg.distributed.deepspeed_config) if cfg.distributed.deepspeed_config else {}
    zero = {**c.get("zero_optimization", {}), "stage": stage}
    if not trainable:  # a frozen engine has no optimizer states to offload
        zero.pop("offload_optimizer", None)
    c = {
        **c,
        "train_micro_batch_size_per_gpu": cfg.batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if trainable:
        c["gradient_clipping"] = cfg.optim.grad_clip
    for key in ("bf16", "fp16", "communication_data_type"):  # precision follows distributed.bf16 and the device
        c.pop(key, None)
    if on_gpu and cfg.distributed.bf16:
        c["bf16"] = {"enabled": True}
        c["communication_data_type"] = "bf16"
    return c


def read_ds_json(path: str) -> dict:
    """A DeepSpeed JSON config file, with a clear error when it is missing or not JSON."""
    import json

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"distributed.deepspeed_config: {p} is not a file")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"distributed.deepspeed_config: {p} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"distributed.deepspeed_config: {p} must hold a JSON object")
    return data


def build_distributed_trainer(cfg: TrainConfig, models: EditorModels, trainer_cls):
    """Join the launcher's process group and build the engines; returns this rank's ``trainer_cls`` (an
    ``EditorTrainer`` or a subclass) on a :class:`DeepSpeedStrategy` over them."""
    device, on_gpu = init_distributed()
    ema = ema_copy(models.generator).to(device) if cfg.optim.ema else None
    extra = {k: v.to(device) for k, v in trainer_cls.copies_before_engines(models).items()}  # whole, unpartitioned
    engines = {}
    # paper scale: generator, critic and teacher share one frozen text encoder; the trained engines then hold
    # only their DiTs (a parameter must belong to one ZeRO-3 engine), the frozen one holds the rest
    shared_text = models.generator.text is models.teacher.text
    oc = cfg.optim
    trained = [("generator", oc.lr)] + ([("critic", oc.critic_lr)] if cfg.uses_critic else [])
    for name, lr in trained:
        module = getattr(models, name).dit if shared_text else getattr(models, name)
        engines[name] = trained_engine(module, lr, oc.betas, oc.weight_decay, ds_config(cfg, lr, True, on_gpu))
    for name in ("teacher", "judge"):
        module = getattr(models, name)
        if cfg.distributed.frozen == "zero3":
            setattr(models, name, frozen_engine(module, ds_config(cfg, 0.0, False, on_gpu)))
        else:
            module.to(device)
    if not shared_text:
        models.generator = engines["generator"].module
        models.critic = engines["critic"].module if "critic" in engines else None
    return trainer_cls(cfg, models, strategy=DeepSpeedStrategy(engines, device), ema=ema, **extra)
