"""The trainer under the ``deepspeed`` launcher: one DeepSpeed engine for the generator and one for the critic
(ZeRO-2 or 3), the frozen teacher and judge replicated or as ZeRO-3 inference engines, data sharded by rank.

Frozen ZeRO-3 models are called through ``engine.module`` (not ``engine(...)``): that keeps ZeRO-3's
parameter gathering and lets gradients flow through them into the generator (docs/design.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist

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


def register_mha_params(module: torch.nn.Module) -> None:
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj`` (so ZeRO-3's hooks never
    gather it): register it with the attention module that uses it."""
    import deepspeed

    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            for p in (m.out_proj.weight, m.out_proj.bias):
                if p is not None:
                    deepspeed.zero.register_external_parameter(m, p)


def build_distributed_trainer(cfg: TrainConfig, models: EditorModels, trainer_cls):
    """Initialise the process group and the engines; returns this rank's ``trainer_cls`` (an ``EditorTrainer``
    or a subclass) built on them."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu = get_accelerator().device_name() == "cuda"
    device = torch.device(get_accelerator().device_name(), get_accelerator().current_device()) if on_gpu else "cpu"
    ema = ema_copy(models.generator).to(device) if cfg.optim.ema else None
    engines = {}
    # paper scale: generator, critic and teacher share one frozen text encoder; the trained engines then hold
    # only their DiTs (a parameter must belong to one ZeRO-3 engine), the frozen one holds the rest
    shared_text = models.generator.text is models.teacher.text
    trained = [("generator", cfg.optim.lr)] + ([("critic", cfg.optim.critic_lr)] if cfg.loss.uses_critic else [])
    for name, lr in trained:
        module = getattr(models, name).dit if shared_text else getattr(models, name)
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        engines[name], *_ = deepspeed.initialize(
            model=module, optimizer=opt, model_parameters=params, config=ds_config(cfg, lr, True, on_gpu)
        )
        if engines[name].zero_optimization_stage() == 3:
            register_mha_params(engines[name].module)
    for name in ("teacher", "judge"):
        module = getattr(models, name)
        if cfg.distributed.frozen == "zero3":
            engine, *_ = deepspeed.initialize(model=module, config=ds_config(cfg, 0.0, False, on_gpu))
            register_mha_params(engine.module)
            setattr(models, name, engine.module)
        else:
            module.to(device)
    if not shared_text:
        models.generator = engines["generator"].module
        models.critic = engines["critic"].module if "critic" in engines else None
    trainer = trainer_cls(cfg, models, rank=rank, world_size=world, engines=engines, ema=ema)
    return trainer


def all_true(flag: bool, device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_mean(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def engine_grad_norm(engine) -> float:
    """Global norm of the (rank-averaged) gradients after ``engine.backward``, before the step."""
    from deepspeed.utils import safe_get_full_grad, safe_get_local_grad

    params = [p for p in engine.module.parameters() if p.requires_grad]
    if engine.zero_optimization_stage() == 3:  # disjoint partitions: local squares, summed over ranks
        sq = sum((g.double().square().sum() for p in params if (g := safe_get_local_grad(p)) is not None), start=0.0)
        t = torch.as_tensor(sq, dtype=torch.float64, device=engine.device).reshape(1)
        dist.all_reduce(t)
        return float(t.sqrt())
    sq = sum((g.double().square().sum() for p in params if (g := safe_get_full_grad(p)) is not None), start=0.0)
    return float(torch.as_tensor(sq).sqrt())


def engine_skip(engine) -> None:
    """Skip an update the engine has gradients for: the step runs at learning rate 0 (parameters unchanged;
    Adam's moment estimates still see the gradient — DeepSpeed has no gradient-discarding step)."""
    groups = engine.optimizer.param_groups
    lrs = [g["lr"] for g in groups]
    for g in groups:
        g["lr"] = 0.0
    engine.step()
    for g, lr in zip(groups, lrs):
        g["lr"] = lr


def gathered(module, zero3: bool):
    """Context in which a ZeRO-3 module's parameters are whole (for the EMA update and export)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def _trained(trainer) -> list[str]:
    return ["gen"] + (["critic"] if trainer.critic is not None else [])


def save_engines(trainer) -> None:
    for name in _trained(trainer):
        getattr(trainer, name).engine.save_checkpoint(str(Path(trainer.out) / "deepspeed" / name), tag="last")


def load_engines(trainer) -> None:
    for name in _trained(trainer):
        path = Path(trainer.out) / "deepspeed" / name
        if not (path / "latest").exists():
            raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint to resume from")
        getattr(trainer, name).engine.load_checkpoint(str(path), tag="last")
