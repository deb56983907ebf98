"""The pair-free editing trainer (docs/design.md), single process or one rank under the ``deepspeed`` launcher.

Read top to bottom, one generator update is:

1. a batch of (input image, instruction, edited caption, judge questions) — never a target image;
2. the generator unrolls the few-step sampler from noise (random k, gradients through every step,
   checkpointed), conditioned on the clean input's tokens and the instruction → x̂0;
3. the VLM editing loss: the frozen judge is asked the verification and identity questions about
   (input, x̂0), two-token CE toward the targets, logit temperature warmed up;
4. the DMD loss: x̂0 is re-noised, the frozen teacher (CFG on the edited caption) and the online critic
   predict x0; x̂0 moves toward the teacher and away from the critic (``loss.dmd_fake: delta``: away from the
   teacher's own pull on the input under its source caption instead — no critic);
5. "do nothing" samples pull x̂0 to the input (MSE); optional pixel identity loss;
6. clip, skip the update on a non-finite loss or a gradient norm above the threshold (counted), step, EMA;
7. N_aux critic updates: the flow loss on the generator's detached samples, edited captions (not with delta).

Stage 0 (``copy_steps``) first teaches the generator to copy its reference (identity flow loss).
Every random draw of a sample comes from a generator seeded by (seed, step, the sample's global index) and
batch ``s`` is a fixed slice of the dataset, so a resumed run repeats an uninterrupted one exactly, and N ranks
with batch B compute what one process with batch N·B computes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from pairfree.config import to_dict
from pairfree.flow import few_step_schedule
from pairfree.models.bundle import editor_x0
from pairfree.pretrain.common import Prefetch
from pairfree.pretrain.loop import ema_decay
from pairfree.progress import Progress
from pairfree.train.config import TrainConfig
from pairfree.train.losses import (
    dmd_generator_loss,
    excess_variation_loss,
    flow_loss,
    per_sample_rand,
    vlm_editing_loss,
)
from pairfree.train.models import EditorModels, ema_copy, trained_part
from pairfree.unroll import per_sample_randn, unroll
from pairfree.world.datasets import EditorDataset, item_seed
from pairfree.world.spec import get_spec, save_spec

# the world vocabulary has no "nothing": the do-nothing instruction is spelled with words it has
DO_NOTHING = "the same image as the original"


def seeded(seed: int, stream: str, index: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(item_seed(seed, stream, index) % 2**63)


def temperature(cfg: TrainConfig, edit_step: int) -> float:
    """Judge-logit temperature: linear warm-up from ``temperature_start`` to 1."""
    lc = cfg.loss
    if lc.temperature_steps <= 0:
        return 1.0
    return lc.temperature_start + (1 - lc.temperature_start) * min(1.0, edit_step / lc.temperature_steps)


class Trainable:
    """A trained model with its AdamW optimizer — or, under DeepSpeed, its engine (same four calls)."""

    def __init__(self, module, lr: float, betas, weight_decay: float, grad_clip: float, engine=None):
        self.module, self.engine, self.grad_clip = module, engine, grad_clip
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = None
        if engine is None:
            self.opt = torch.optim.AdamW(self.params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    def set_lr(self, lr: float) -> None:
        opt = self.opt if self.engine is None else self.engine.optimizer
        for g in opt.param_groups:
            g["lr"] = lr

    def keep_config_hyperparameters(self) -> None:
        """After a checkpoint's optimizer state is loaded: betas and weight decay are the config's again (torch and
        DeepSpeed restore the checkpoint's, which would silently ignore ``--set optim.betas=...`` on resume)."""
        opt = self.opt if self.engine is None else self.engine.optimizer
        for g in opt.param_groups:
            g["betas"], g["weight_decay"] = self.betas, self.weight_decay

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is None:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        else:
            self.engine.backward(loss)

    def clip_and_norm(self) -> float:
        """Global gradient norm before clipping (clips in place when single-process)."""
        if self.engine is not None:
            from pairfree.train.distributed import engine_grad_norm

            return engine_grad_norm(self.engine)
        return float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf")))

    def step(self) -> None:
        if self.engine is None:
            self.opt.step()
        else:
            self.engine.step()

    def skip(self, after_backward: bool = True) -> None:
        """Drop this update. Before any backward there is nothing to undo (an engine then skips the step too)."""
        if self.engine is None:
            self.opt.zero_grad(set_to_none=True)
        elif after_backward:
            from pairfree.train.distributed import engine_skip

            engine_skip(self.engine)


class EditorTrainer:
    """Owns the models, optimizers, EMA, data and counters of one run; ``run()`` trains to the end."""

    TRAINER = "pair-free"  # recorded in the exported model's train.json

    def __init__(
        self, cfg: TrainConfig, models: EditorModels, rank: int = 0, world_size: int = 1, engines=None, ema=None
    ):
        self.cfg, self.m, self.rank, self.world_size = cfg, models, rank, world_size
        oc = cfg.optim
        engines = engines or {}
        self.gen = Trainable(models.generator, oc.lr, oc.betas, oc.weight_decay, oc.grad_clip, engines.get("generator"))
        self.critic = None  # DMD with the delta score has no critic
        if cfg.loss.uses_critic:
            if models.critic is None:
                raise ValueError("loss.dmd_fake = 'critic' needs a critic: load_models(..., critic=True)")
            self.critic = Trainable(
                models.critic, oc.critic_lr, oc.betas, oc.weight_decay, oc.grad_clip, engines.get("critic")
            )
        self.ema = ema
        if oc.ema and ema is None:
            self.ema = ema_copy(models.generator)
        self.zero3 = "generator" in engines and engines["generator"].zero_optimization_stage() == 3
        self.spec = get_spec(cfg.world)
        self.data = EditorDataset(
            10**12, mix=cfg.mix, seed=cfg.seed, split="train", resolution=cfg.models.resolution, rank=rank,
            world_size=world_size, spec=self.spec,
        )  # fmt: skip
        self._items = Prefetch(self._build_batch, cfg.prefetch) if cfg.prefetch else self._build_batch
        self.schedule = few_step_schedule(cfg.sampler.steps, cfg.sampler.shift)
        self.device = next(models.generator.parameters()).device
        self.step, self.skipped, self.wall = 0, 0, 0.0
        self.out = Path(cfg.out)
        self.is_main = rank == 0

    # ------------------------------------------------------------------------------------------ data ---
    def batch(self, step: int) -> list[dict]:
        """This rank's items of ``step`` (built ahead on threads with ``prefetch``; the same items either way)."""
        return self._items(step)

    def _build_batch(self, step: int) -> list[dict]:
        b = self.cfg.batch
        return self.data.__getitems__(list(range(step * b, (step + 1) * b)))

    def generators(self, step: int) -> list[torch.Generator]:
        """One generator per sample of this rank's batch, seeded by (seed, step, global sample index)."""
        b = self.cfg.batch
        idx = [self.data.global_index(j) for j in range(step * b, (step + 1) * b)]
        return [seeded(self.cfg.seed, "train", i, self.device) for i in idx]

    # ---------------------------------------------------------------------------------- stage 0: copy ---
    def copy_step(self, step: int) -> dict:
        """Reference-copy warm-up: the flow loss toward x0 = the reference itself, given the instruction."""
        items, gens = self.batch(step), self.generators(step)
        ref = self.encode(torch.stack([it["image"] for it in items]))
        loss = flow_loss(self.gen.module, ref, [it["instruction"] for it in items], gens, reference=ref)
        return self.update(loss, {"copy": loss.item()})

    # ----------------------------------------------------------------------------- stage 1: editing ---
    def edit_step(self, step: int) -> dict:
        cfg, lc = self.cfg, self.cfg.loss
        items, gens = self.batch(step), self.generators(step)
        images = torch.stack([it["image"] for it in items]).to(self.device)
        ref = self.encode(images)  # latents (pixel space: the images themselves)
        nothing = per_sample_rand(gens, self.device) < lc.do_nothing_prob
        instructions = [DO_NOTHING if n else it["instruction"] for it, n in zip(items, nothing.tolist())]

        # 1. unrolled few-step sampling with gradients through every step
        shared = seeded(cfg.seed, "train", -1 - step, self.device)  # the same k on every rank
        k = int(torch.randint(1, cfg.sampler.steps + 1, (), generator=shared)) if cfg.sampler.random_k else None
        noise = per_sample_randn(gens, ref)
        text, mask = self.gen.module.text.encode(instructions)

        def step_fn(x_t, t, reference, text, mask):
            return editor_x0(self.gen.module, x_t, t, reference, text, mask)

        x0 = unroll(
            step_fn, noise, self.schedule, k, (ref, text, mask), generator=gens, checkpoint=cfg.sampler.checkpoint
        )

        logs = {"k": k or cfg.sampler.steps}
        loss = x0.new_zeros(())
        edit = (~nothing).nonzero().flatten().tolist()
        decoded = self.m.autoencoder.decode(x0)  # the judge sees pixels; its gradient flows back through decode
        if edit:
            # 2. VLM editing loss: verification + identity questions in one judge pass (weight 0: DMD alone, the
            #    paper's "only DMD" ablation — the judge is then not run at all)
            edit_gens = [gens[i] for i in edit]
            if lc.vlm_weight:
                seen = decoded[edit]
                if lc.judge_noise:  # the judge sees the output through noise (a judge trained to be robust to it)
                    seen = seen + lc.judge_noise * per_sample_randn(edit_gens, seen)
                vlm, probs = vlm_editing_loss(
                    self.m.judge,
                    images[edit],
                    seen,
                    [items[i]["questions"] for i in edit],
                    temperature(cfg, step - cfg.copy_steps),
                    identity=lc.identity_question,
                    full_vocab=lc.full_vocab,
                )
                loss = loss + lc.vlm_weight * vlm
                logs.update(vlm=vlm.item(), **probs)
            # 3. DMD: teacher (CFG on the edited caption, stronger for remove/replace/style) vs the critic
            scale = torch.tensor(
                [lc.cfg_scale_strong if items[i]["type"] in lc.strong_types else lc.cfg_scale for i in edit],
                device=self.device,
            )
            captions = [items[i]["edited_caption"] for i in edit]
            fake = {"critic": self.critic.module if self.critic else None}
            if lc.dmd_fake == "delta":  # the teacher's pull on the input (source caption) stands in for the critic
                fake.update(reference=ref[edit], source_captions=[items[i]["source_caption"] for i in edit])
            t_range = (lc.dmd_t_min, lc.dmd_t_max)
            dmd = dmd_generator_loss(x0[edit], self.m.teacher, captions=captions, cfg_scale=scale, t_range=t_range,
                                     generators=edit_gens, **fake)  # fmt: skip
            loss = loss + lc.dmd_weight * dmd
            logs["dmd"] = dmd.item()
        if nothing.any():  # 4. "do nothing": the output is the input
            keep = (x0[nothing] - ref[nothing]).square().mean()
            loss = loss + lc.do_nothing_weight * keep
            logs["nothing"] = keep.item()
        if lc.pixel_identity_weight:
            loss = loss + lc.pixel_identity_weight * (decoded - images).abs().mean()
        if lc.noise_weight:
            excess = excess_variation_loss(decoded, images)
            loss = loss + lc.noise_weight * excess
            logs["noise"] = excess.item()
        logs = self.update(loss, logs)

        # 5. N_aux critic updates on the generator's detached samples (edited captions)
        if edit and self.critic is not None:
            samples = x0[edit].detach()
            for _ in range(cfg.optim.critic_updates):
                c_loss = flow_loss(self.critic.module, samples, captions, edit_gens)
                self.critic.backward(c_loss)
                self.critic.clip_and_norm()
                self.critic.step()
            logs["critic"] = c_loss.item()
        return logs

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the latents the generator works on (the frozen autoencoder's)."""
        return self.m.autoencoder.encode(images.to(self.device))

    # --------------------------------------------------------------------------------------- update ---
    def update(self, loss: torch.Tensor, logs: dict) -> dict:
        """Backward, clip, skip on a non-finite loss or an exploding gradient (counted), step, EMA."""
        oc = self.cfg.optim
        finite = bool(torch.isfinite(loss.detach()))
        if self.world_size > 1:
            from pairfree.train.distributed import all_true

            finite = all_true(finite, self.device)
        if not finite:
            self.skipped += 1
            self.gen.skip(after_backward=False)
            return {**logs, "loss": float("nan"), "skipped": self.skipped}
        self.gen.backward(loss)
        gnorm = self.gen.clip_and_norm()
        if not math.isfinite(gnorm) or gnorm > oc.skip_grad_norm:
            self.skipped += 1
            self.gen.skip()
            return {**logs, "loss": loss.item(), "grad_norm": gnorm, "skipped": self.skipped}
        self.gen.step()
        if self.ema is not None:
            trained = trained_part(self.gen.module)
            with torch.no_grad(), self._whole(trained):
                ema = self.ema.dit if trained is self.gen.module.dit else self.ema
                decay = ema_decay(self.step, oc.ema)
                for pe, pm in zip(ema.parameters(), trained.parameters()):
                    pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)
        return {**logs, "loss": loss.item(), "grad_norm": gnorm, "skipped": self.skipped}

    # ----------------------------------------------------------------------------------- checkpoints ---
    def _whole(self, module):
        """Context in which ``module``'s parameters are whole (ZeRO-3 gathers them; a no-op otherwise)."""
        from contextlib import nullcontext

        if not self.zero3:
            return nullcontext()
        from pairfree.train.distributed import gathered

        return gathered(module, True)

    def state_dict(self) -> dict:
        single = self.world_size == 1  # under DeepSpeed the engines write their own checkpoints
        return {
            "generator": self.gen.module.state_dict() if single else None,
            "critic": self.critic.module.state_dict() if single and self.critic else None,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "gen_opt": None if self.gen.opt is None else self.gen.opt.state_dict(),
            "critic_opt": None if self.critic is None or self.critic.opt is None else self.critic.opt.state_dict(),
            "step": self.step,
            "skipped": self.skipped,
            "wall_s": self.wall,
            "config": to_dict(self.cfg),
        }

    def save(self) -> Path:
        """Atomic checkpoint (temp file + rename) of everything a resumed run needs."""
        path = self.out / "checkpoint.pt"
        if self.world_size > 1:
            from pairfree.train.distributed import save_engines

            save_engines(self)
        if self.is_main:
            tmp = path.with_name(path.name + ".tmp")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        return path

    def load(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from (run without --resume first)")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if self.world_size > 1:
            from pairfree.train.distributed import load_engines

            load_engines(self)
        else:
            self.gen.module.load_state_dict(state["generator"])
            self.gen.opt.load_state_dict(state["gen_opt"])
            if self.critic is not None:  # (a critic in the checkpoint of a run that has none is not needed)
                if state["critic"] is None:
                    raise ValueError(
                        f"{path}: the checkpoint has no critic (written with loss.dmd_fake = 'delta'); resume it "
                        "with loss.dmd_fake=delta"
                    )
                self.critic.module.load_state_dict(state["critic"])
                self.critic.opt.load_state_dict(state["critic_opt"])
        for trained in (self.gen, self.critic):
            if trained is not None:
                trained.keep_config_hyperparameters()
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.skipped, self.wall = state["step"], state["skipped"], state["wall_s"]

    # ------------------------------------------------------------------------------------------- run ---
    def run(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train to ``copy_steps + steps`` (or ``stop_after`` steps, for tests); returns the last logs."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        total = cfg.copy_steps + cfg.steps
        metrics_path = self.out / "metrics.jsonl"
        if self.is_main and resume and metrics_path.is_file():  # drop lines logged after the checkpoint
            kept = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
            metrics_path.write_text("".join(ln + "\n" for ln in kept))
        writer = self._tensorboard() if cfg.tensorboard and self.is_main else None
        bar = Progress(total, initial=self.step, desc="pairfree train", disable=not self.is_main)
        t0, wall0, logs = time.time(), self.wall, {}
        with open(metrics_path, "a") if self.is_main else open(os.devnull, "w") as log:
            while self.step < total and (stop_after is None or self.step < stop_after):
                s = self.step
                if s < cfg.copy_steps:
                    self.gen.set_lr(cfg.optim.warmup_lr)
                    logs = self.copy_step(s)
                else:
                    self.gen.set_lr(cfg.optim.lr)
                    logs = self.edit_step(s)
                if self.world_size > 1:  # loss terms averaged over ranks (= the global batch's)
                    from pairfree.train.distributed import all_mean

                    logs = {k: v if k in RANK_INVARIANT else all_mean(v, self.device) for k, v in logs.items()}
                self.step = s + 1
                self.wall = wall0 + time.time() - t0
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in SHOWN})
                if self.step % cfg.log_every == 0 or self.step == total:
                    log.write(
                        json.dumps({"step": self.step, "stage": "copy" if s < cfg.copy_steps else "edit", **logs})
                        + "\n"
                    )
                    log.flush()
                    if writer is not None:
                        for k, v in logs.items():
                            writer.add_scalar(k, v, self.step)
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.is_main and not self.zero3:
                    self.save_samples(self.out / "samples" / f"step_{self.step:06d}.png")
                if self.step % cfg.ckpt_every == 0:
                    self.save()
                if cfg.max_minutes and self.wall > cfg.max_minutes * 60:
                    break
        bar.close()
        self.save()
        with self._whole(self.gen.module) if self.ema is None else torch.no_grad():
            if self.is_main:
                self.export(self.out / "model")
        if self.is_main:
            from pairfree.pretrain.loop import plot_curve

            plot_curve(metrics_path, self.out / "loss.png", "pairfree train")
        return logs

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError(
                f"tensorboard: true needs the tensorboard package ({e}); pip install tensorboard"
            ) from None
        return SummaryWriter(self.out / "tensorboard")

    def export(self, path: Path) -> Path:
        """The (EMA) generator as an editor directory that ``EditPipeline.from_pretrained`` loads."""
        from pairfree.edit import EditPipeline

        gen = self.ema if self.ema is not None else self.gen.module
        paper = self.cfg.models.format == "diffusers"  # then only the DiT is saved; text encoder and DC-AE stay
        pipe = EditPipeline(
            gen,
            self.cfg.models.resolution,
            self.cfg.sampler.steps,
            self.cfg.sampler.shift,
            autoencoder=self.m.autoencoder if paper else None,
            source=Path(self.cfg.models.teacher).resolve() if paper else None,
        )
        pipe.save_pretrained(path)
        from pairfree.pretrain.common import command_line

        record = {  # what the model card (`pairfree eval --card`) says about training
            "trainer": self.TRAINER,
            "step": self.step,
            "copy_steps": min(self.step, self.cfg.copy_steps),
            "edit_steps": max(0, self.step - self.cfg.copy_steps),
            "skipped": self.skipped,
            "wall_min": round(self.wall / 60, 1),
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "command": command_line(),
            "config": to_dict(self.cfg),
        }
        (path / "train.json").write_text(json.dumps(record, indent=1))
        save_spec(path, self.spec)
        return path

    @torch.no_grad()
    def save_samples(self, path: Path, n: int = 8) -> Path:
        """input | instruction | output for ``n`` fixed held-out edits (one per sub-type, val seeds)."""
        from pairfree.edit import edit_images
        from pairfree.train.samples import save_edit_rows
        from pairfree.world.edits import EDIT_TYPES, sample_edit
        from pairfree.world.render import render

        edits = [
            sample_edit(item_seed(0, "val", i), kind=EDIT_TYPES[i % len(EDIT_TYPES)], spec=self.spec) for i in range(n)
        ]
        inputs = (render([e.source for e in edits], self.cfg.models.resolution)[0] * 2 - 1).to(self.device)
        gen = self.ema if self.ema is not None else self.gen.module
        outputs = edit_images(
            gen, inputs, [e.instruction for e in edits], self.schedule, seed=0, autoencoder=self.m.autoencoder
        )
        return save_edit_rows(path, inputs, [e.instruction for e in edits], outputs, labels=[e.kind for e in edits])


RANK_INVARIANT = ("k", "skipped", "grad_norm")  # the same on every rank
SHOWN = ("loss", "copy", "paired", "vlm", "dmd", "p_verify", "p_identity", "critic", "skipped")
