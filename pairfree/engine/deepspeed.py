"""Every DeepSpeed call of the package: engines for trained and frozen models, and the :class:`Strategy` that
runs updates on them (ZeRO-2/3, data-parallel ranks).

``deepspeed`` is imported inside the functions: it is an optional dependency (``pip install pairfree[deepspeed]``)
that single-process training never needs. Frozen ZeRO-3 models are called through ``engine.module`` (not
``engine(...)``): that keeps ZeRO-3's parameter gathering and lets gradients flow through them into the generator.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from pairfree.engine.data_parallel import Ranks
from pairfree.engine.strategy import Optimized, Strategy


def register_mha_params(module: torch.nn.Module) -> None:
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj`` (so ZeRO-3's hooks never
    gather it): register it with the attention module that uses it."""
    import deepspeed

    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            for p in (m.out_proj.weight, m.out_proj.bias):
                if p is not None:
                    deepspeed.zero.register_external_parameter(m, p)


class EngineOptimized(Optimized):
    """A trained module on its DeepSpeed engine (same calls as :class:`Optimized`). ``module`` is what the
    trainer calls; the engine may hold only part of it (paper scale: the DiT, not the shared text encoder)."""

    def __init__(self, engine, module, betas, weight_decay: float):
        self.engine, self.module = engine, module
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.opt = None  # the engine owns the optimizer

    @property
    def optimizer(self):
        return self.engine.optimizer

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def clip_and_norm(self) -> float:
        """Global norm of the (rank-averaged) gradients after ``backward``, before the step (the engine clips)."""
        from deepspeed.utils import safe_get_full_grad, safe_get_local_grad

        if self.engine.zero_optimization_stage() == 3:  # disjoint partitions: local squares, summed over ranks
            grads = (safe_get_local_grad(p) for p in self.params)
            sq = sum((g.double().square().sum() for g in grads if g is not None), start=0.0)
            t = torch.as_tensor(sq, dtype=torch.float64, device=self.engine.device).reshape(1)
            dist.all_reduce(t)
            return float(t.sqrt())
        grads = (safe_get_full_grad(p) for p in self.params)
        return float(
            torch.as_tensor(sum((g.double().square().sum() for g in grads if g is not None), start=0.0)).sqrt()
        )

    def step(self) -> None:
        self.engine.step()

    def skip(self, after_backward: bool = True) -> None:
        """Drop an update the engine has gradients for: parameters and optimizer state untouched. DeepSpeed has
        no gradient-discarding step (the ZeRO optimizers clear their gradient partitions inside ``step``), so the
        step runs at learning rate 0 and the inner optimizer's state (Adam's moments and step count) is put back
        as it was. Before any backward there is nothing to undo."""
        if not after_backward:
            return
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        saved = {p: {k: _copy(v) for k, v in st.items()} for p, st in inner.state.items()}
        groups = self.engine.optimizer.param_groups
        kept = [{k: g[k] for k in ("lr", "step") if k in g} for g in groups]
        for g in groups:
            g["lr"] = 0.0
        self.engine.step()
        for g, k in zip(groups, kept):
            g.update(k)
        for p in list(inner.state):
            if p not in saved:
                del inner.state[p]  # the state the skipped step created
        for p, st in saved.items():
            for k, v in st.items():
                if torch.is_tensor(v) and torch.is_tensor(inner.state[p].get(k)):
                    inner.state[p][k].copy_(v)
                else:
                    inner.state[p][k] = v


def _copy(v):
    return v.detach().clone() if torch.is_tensor(v) else v


class DeepSpeedStrategy(Strategy):
    """Data-parallel ranks under the ``deepspeed`` launcher, one engine per trained model."""

    def __init__(self, engines: dict, device):
        self.engines, self._device = engines, device
        self.ranks = Ranks(dist.get_rank(), dist.get_world_size(), str(device))  # flags, logged values, leaving
        self.rank, self.world_size = self.ranks.rank, self.ranks.world
        self.gathers_parameters = any(e.zero_optimization_stage() == 3 for e in engines.values())

    @property
    def device(self):
        return self._device

    own_precision = True  # the engines' bf16 (distributed.bf16), not mixed_precision

    def optimized(self, name, module, lr, betas, weight_decay, grad_clip, scaler=None) -> Optimized:
        return EngineOptimized(self.engines[name], module, betas, weight_decay)

    def all_true(self, flag: bool) -> bool:
        return not self.ranks.any(not flag)

    def all_mean(self, value: float) -> float:
        return self.ranks.mean({"value": value})["value"]

    def whole(self, module):
        if not self.gathers_parameters:
            return super().whole(module)
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)

    def state_dicts(self, trained) -> dict:
        return {name: None for name in trained}

    def save(self, trained, out) -> None:
        for name, t in trained.items():
            t.engine.save_checkpoint(str(Path(out) / "deepspeed" / name), tag="last")

    def load(self, trained, states, out) -> None:
        for name, t in trained.items():
            path = Path(out) / "deepspeed" / name
            if not (path / "latest").exists():
                raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint to resume from")
            t.engine.load_checkpoint(str(path), tag="last")
            t.keep_config_hyperparameters()

    def close(self) -> None:
        """Leave the launcher's process group together (after a barrier). The rank then ends without the
        interpreter's teardown (``pairfree.train.run.leave_launched_rank``), where gloo's threads can abort it."""
        self.ranks.close()


def init_distributed():
    """Join the launcher's process group; returns this rank's device and whether it is a GPU."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed()
    acc = get_accelerator()
    on_gpu = acc.device_name() == "cuda"
    return (torch.device(acc.device_name(), acc.current_device()) if on_gpu else torch.device("cpu")), on_gpu


def trained_engine(module: torch.nn.Module, lr: float, betas, weight_decay: float, config: dict):
    """A DeepSpeed engine training ``module``'s trainable parameters with AdamW under ``config``."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(model=module, optimizer=opt, model_parameters=params, config=config)
    if engine.zero_optimization_stage() == 3:
        register_mha_params(engine.module)
    return engine


def frozen_engine(module: torch.nn.Module, config: dict) -> torch.nn.Module:
    """``module`` partitioned as a ZeRO-3 inference engine; returns the engine's module (call it directly)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=module, config=config)
    register_mha_params(engine.module)
    return engine.module
