"""How updates are applied: :class:`Local` (one process, AdamW) or DeepSpeed engines (:mod:`.deepspeed`), behind
one interface, so a trainer never branches on the world size.

A :class:`Strategy` makes an :class:`Optimized` (a trained module with its optimizer) per trained model, reduces
flags and logged values over ranks, gathers ZeRO-3 parameters when a whole module is needed, and saves or loads
the optimizer states.
"""

from __future__ import annotations

import contextlib

import torch


class Optimized:
    """A trained module with its AdamW optimizer: ``backward``, ``clip_and_norm``, ``step`` or ``skip``; with a
    ``scaler`` (fp16), the loss is scaled and the gradients unscaled before clipping."""

    def __init__(self, module: torch.nn.Module, lr: float, betas, weight_decay: float, grad_clip: float, scaler=None):
        self.module, self.grad_clip, self.scaler = module, grad_clip, scaler
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=self.betas, weight_decay=weight_decay)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def keep_config_hyperparameters(self) -> None:
        """After a checkpoint's optimizer state is loaded: betas and weight decay are the config's again (torch and
        DeepSpeed restore the checkpoint's, which would silently ignore ``--set optim.betas=...`` on resume)."""
        for g in self.optimizer.param_groups:
            g["betas"], g["weight_decay"] = self.betas, self.weight_decay

    def backward(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def clip_and_norm(self) -> float:
        """Global gradient norm before clipping (clipped in place to ``grad_clip``; 0: no clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        return float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf")))

    def step(self) -> None:
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()

    def skip(self, after_backward: bool = True) -> None:
        """Drop this update: gradients discarded, parameters and optimizer state untouched (an fp16 scaler
        that saw an overflow lowers its scale)."""
        if self.scaler is not None and after_backward:
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        state = {"module": self.module.state_dict(), "optimizer": self.opt.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.keep_config_hyperparameters()


class Strategy:
    """One process: nothing to reduce or gather; optimizer states travel in the run's ``checkpoint.pt``."""

    rank, world_size = 0, 1
    gathers_parameters = False  # True under ZeRO-3: a module's parameters are partitioned between ranks
    own_precision = False  # True when the engines set the precision themselves (DeepSpeed's bf16)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """Where this rank's models live (None: wherever the caller put them)."""
        return None

    def optimized(
        self, name: str, module, lr: float, betas, weight_decay: float, grad_clip: float, scaler=None
    ) -> Optimized:
        """The trained model ``name`` with its optimizer (and, for fp16, its loss scaler)."""
        return Optimized(module, lr, betas, weight_decay, grad_clip, scaler)

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        return flag

    def all_mean(self, value: float) -> float:
        """``value`` averaged over ranks."""
        return value

    def whole(self, module: torch.nn.Module):
        """Context in which ``module``'s parameters are whole (ZeRO-3 gathers them)."""
        return contextlib.nullcontext()

    def state_dicts(self, trained: dict[str, Optimized]) -> dict:
        """What ``checkpoint.pt`` holds of the trained models (under DeepSpeed: nothing, engines save their own)."""
        return {name: t.state_dict() for name, t in trained.items()}

    def save(self, trained: dict[str, Optimized], out) -> None:
        """Write what ``state_dicts`` leaves out (under DeepSpeed: the engines' checkpoints)."""

    def load(self, trained: dict[str, Optimized], states: dict, out) -> None:
        """Restore the trained models and their optimizers."""
        for name, t in trained.items():
            t.load_state_dict(states[name])

    def close(self) -> None:
        """Leave the process group this strategy joined (nothing for one process)."""
