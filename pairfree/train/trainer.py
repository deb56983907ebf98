"""The pair-free editing trainer (docs/design.md), single process or one rank under the ``deepspeed`` launcher.

Read top to bottom, one generator update is:

1. a batch of (input image, instruction, edited caption, judge questions) — never a target image;
2. the generator unrolls the few-step sampler from noise (random k, gradients through every step,
   checkpointed), conditioned on the clean input's tokens and the instruction → x̂0;
3. the VLM editing loss: the frozen judge is asked the verification and identity questions about
   (input, x̂0), two-token CE(logits · τ) toward the targets, τ warmed up 0.1 → 1 (soft answers first);
4. the DMD loss: x̂0 is re-noised, the frozen teacher (CFG on the edited caption) and the online critic
   predict x0; x̂0 moves toward the teacher and away from the critic (``loss.dmd_fake: delta``: away from the
   teacher's own pull on the input under its source caption instead — no critic);
5. "do nothing" samples pull x̂0 to the input (MSE); optional pixel identity loss;
6. clip, skip the update on a non-finite loss or a gradient norm above the threshold (counted), step, EMA;
7. N_aux critic updates, each on a fresh batch and a fresh generator sample: the flow loss on the detached edits
   under their edited captions, t ~ U[t_min, t_max] as DMD draws it (no critic with delta).

Stage 0 (``copy_steps``) first teaches the generator to copy its reference (identity flow loss).
Every random draw of a sample comes from a generator seeded by (seed, step, the sample's global index) and
batch ``s`` is a fixed slice of the dataset, so a resumed run repeats an uninterrupted one exactly, and N ranks
with batch B compute what one process with batch N·B computes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from pairfree.config import to_dict
from pairfree.data.augment import UNKNOWN, drop_words
from pairfree.data.dataset import JsonlEditorDataset
from pairfree.edit import EditPipeline, edit_images
from pairfree.engine import precision
from pairfree.engine.loop import cosine_decay, run_steps
from pairfree.engine.runlog import RunLog, plot_series
from pairfree.engine.state import atomic_save, ema_update
from pairfree.engine.strategy import Strategy
from pairfree.eval.editing import measure
from pairfree.flow import few_step_schedule
from pairfree.models.bundle import editor_x0
from pairfree.pretrain.common import Prefetch, command_line
from pairfree.shipped import model_name, pretrained
from pairfree.train.config import TrainConfig
from pairfree.train.losses import (
    dmd_generator_loss,
    excess_variation_loss,
    flow_loss,
    per_sample_rand,
    vlm_editing_loss,
)
from pairfree.train.models import EditorModels, ema_copy, trained_part
from pairfree.train.samples import save_edit_rows
from pairfree.unroll import per_sample_randn, unroll
from pairfree.world.bench import Bench, build_bench
from pairfree.world.captions import caption_words
from pairfree.world.datasets import EditorDataset, item_seed
from pairfree.world.edits import EDIT_TYPES, render_edits, sample_edit
from pairfree.world.render import render
from pairfree.world.spec import get_spec, save_spec

# the world vocabulary has no "nothing": the do-nothing instruction is spelled with words it has
CRITIC_STREAM = 5 * 10**11  # the critic's batches start this far into the (10**12-item) training stream (global index)


def editor_data(cfg: TrainConfig, rank: int, world_size: int, spec):
    """The (image, instruction, captions, questions) items of ``cfg.data``: the shapes world or a JSONL file."""
    common = dict(seed=cfg.seed, resolution=cfg.models.resolution, rank=rank, world_size=world_size)
    if cfg.data.source == "jsonl":
        return JsonlEditorDataset(cfg.data.path, cfg.data.image_root, min_side=cfg.data.min_side, **common)
    return EditorDataset(10**12, mix=cfg.mix, templates=cfg.data.templates, split="train", spec=spec, **common)


def seeded(seed: int, stream: str, index: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(item_seed(seed, stream, index) % 2**63)


def temperature(cfg: TrainConfig, edit_step: int) -> float:
    """The judge-logit scale τ of CE(logits · τ): linear warm-up from ``temperature_start`` to 1."""
    lc = cfg.loss
    if lc.temperature_steps <= 0:
        return 1.0
    return lc.temperature_start + (1 - lc.temperature_start) * min(1.0, edit_step / lc.temperature_steps)


class EditorTrainer:
    """Owns the models, optimizers, EMA, data and counters of one run: ``train()`` → ``train_step()`` →
    ``generator_loss()`` and ``critic_step()``. Updates run on a :class:`~pairfree.engine.strategy.Strategy`
    (one process by default; DeepSpeed engines under the launcher)."""

    TRAINER = "pair-free"  # recorded in the exported model's train.json

    def __init__(self, cfg: TrainConfig, models: EditorModels, strategy: Strategy | None = None, ema=None):
        self.cfg, self.m = cfg, models
        self.strategy = strategy = strategy or Strategy()
        self.rank, self.world_size, self.is_main = strategy.rank, strategy.world_size, strategy.is_main
        self.device = next(models.generator.parameters()).device
        # mixed precision (one process): autocast in the run's dtype, fp32 master weights, frozen models cast
        self.precision = "no" if strategy.own_precision else precision.resolve(cfg.mixed_precision, self.device)
        if self.precision != "no":
            models.teacher.to(precision.DTYPES[self.precision])
            models.judge.to(precision.DTYPES[self.precision])
        scaler = lambda: precision.grad_scaler(self.precision, self.device)
        oc = cfg.optim
        self.gen = strategy.optimized(
            "generator", models.generator, oc.lr, oc.betas, oc.weight_decay, oc.grad_clip, scaler()
        )
        self.critic = None  # DMD with the delta score has no critic
        if cfg.uses_critic:
            if models.critic is None:
                raise ValueError("loss.dmd_fake = 'critic' needs a critic: load_models(..., critic=True)")
            self.critic = strategy.optimized(
                "critic", models.critic, oc.critic_lr, oc.betas, oc.weight_decay, oc.grad_clip, scaler()
            )
        self.trained = {"gen": self.gen, **({"critic": self.critic} if self.critic else {})}
        self.ema = ema
        if oc.ema and ema is None:
            self.ema = ema_copy(models.generator)
        self.spec = get_spec(cfg.world)
        self.data = editor_data(cfg, self.rank, self.world_size, self.spec)
        self._items = Prefetch(self._build_batch, cfg.prefetch) if cfg.prefetch else self._build_batch
        self.schedule = few_step_schedule(cfg.sampler.steps, cfg.sampler.shift)
        self.step, self.skipped, self.wall = 0, 0, 0.0
        self.out = Path(cfg.out)

    @classmethod
    def copies_before_engines(cls, models: EditorModels) -> dict:
        """Frozen copies a subclass needs of the models as loaded (passed back to ``__init__`` as keywords);
        under DeepSpeed they are made before the engines partition the trained modules."""
        return {}

    # ------------------------------------------------------------------------------------------ data ---
    def batch(self, step: int) -> list[dict]:
        """This rank's items of ``step`` (built ahead on threads with ``prefetch``; the same items either way)."""
        return self._items(step)

    def _build_batch(self, step: int) -> list[dict]:
        b = self.cfg.batch
        return self.data.__getitems__(list(range(step * b, (step + 1) * b)))

    def autocast(self):
        """The context every forward pass and loss runs in: autocast in the run's dtype (``mixed_precision``)."""
        return precision.autocast(self.precision, self.device)

    def generators(self, step: int) -> list[torch.Generator]:
        """One generator per sample of this rank's batch, seeded by (seed, step, global sample index)."""
        b = self.cfg.batch
        idx = [self.data.global_index(j) for j in range(step * b, (step + 1) * b)]
        return [seeded(self.cfg.seed, "train", i, self.device) for i in idx]

    def conditioning(self, instructions: list[str], step: int) -> list[str]:
        """The instructions of batch ``step`` as the generator reads them in training: with ``data.word_dropout``,
        each word (or each word the captions never use: ``data.word_dropout_scope``) hidden behind the tokenizer's
        unknown token (seeded by the sample's global index)."""
        p = self.cfg.data.word_dropout
        if not p:
            return instructions
        unknown = getattr(getattr(self.gen.module.text, "tokenizer", None), "unk_token", None) or UNKNOWN
        keep = caption_words(self.spec) if self.cfg.data.word_dropout_scope == "non_caption" else frozenset()
        b = self.cfg.batch
        return [
            drop_words(text, p, f"words/{self.cfg.seed}/{self.data.global_index(step * b + j)}", unknown, keep)
            for j, text in enumerate(instructions)
        ]

    # ---------------------------------------------------------------------------------- stage 0: copy ---
    def copy_step(self, step: int) -> dict:
        """Reference-copy warm-up: the flow loss toward x0 = the reference itself, given the instruction."""
        items, gens = self.batch(step), self.generators(step)
        ref = self.encode(torch.stack([it["image"] for it in items]))
        instructions = self.conditioning([it["instruction"] for it in items], step)
        with self.autocast():
            loss = flow_loss(self.gen.module, ref, instructions, gens, reference=ref)
        return self.update(loss, {"copy": loss.item()})

    # ----------------------------------------------------------------------------- stage 1: editing ---
    def edit_step(self, step: int) -> dict:
        """One pair-free update: the generator's loss and update, then N_aux critic updates."""
        with self.autocast():
            loss, logs = self.generator_loss(step)
        logs = self.update(loss, logs)
        if self.critic is not None:
            logs.update(self.critic_step(step))
        return logs

    def sample(self, items: list[dict], instructions: list[str], gens, k: int | None, grad: bool) -> tuple:
        """The generator's few-step edit of ``items`` (``k`` steps unrolled; gradients through every step when
        ``grad``): ``(x̂0, reference latents)``."""
        ref = self.encode(torch.stack([it["image"] for it in items]))
        noise = per_sample_randn(gens, ref)
        with torch.set_grad_enabled(grad):
            text, mask = self.gen.module.text.encode(instructions)

            def step_fn(x_t, t, reference, text, mask):
                return editor_x0(self.gen.module, x_t, t, reference, text, mask)

            checkpoint = self.cfg.sampler.checkpoint and grad
            x0 = unroll(step_fn, noise, self.schedule, k, (ref, text, mask), generator=gens, checkpoint=checkpoint,
                        mode=self.cfg.sampler.unroll)  # fmt: skip
        return x0, ref

    def random_k(self, stream: str, index: int) -> int | None:
        """The number of unrolled steps, the same on every rank (None: all of them)."""
        if not self.cfg.sampler.random_k:
            return None
        shared = seeded(self.cfg.seed, stream, index, self.device)
        return int(torch.randint(1, self.cfg.sampler.steps + 1, (), generator=shared))

    def generator_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        """The generator's loss on batch ``step`` (steps 1–4 of the module docstring) and its logs."""
        cfg, lc = self.cfg, self.cfg.loss
        items, gens = self.batch(step), self.generators(step)
        images = torch.stack([it["image"] for it in items]).to(self.device)
        nothing = per_sample_rand(gens, self.device) < lc.do_nothing_prob
        instructions = [cfg.data.do_nothing if n else it["instruction"] for it, n in zip(items, nothing.tolist())]
        instructions = self.conditioning(instructions, step)

        # 1. unrolled few-step sampling with gradients through every step
        k = self.random_k("train", -1 - step)
        x0, ref = self.sample(items, instructions, gens, k, grad=True)  # ref: the input's latents

        logs = {"k": k or cfg.sampler.steps}
        loss = x0.new_zeros(())
        edit = (~nothing).nonzero().flatten().tolist()
        decoded = self.m.autoencoder.decode(x0)  # the judge sees pixels; its gradient flows back through decode
        if edit:
            # 2. VLM editing loss: verification + identity questions in one judge pass (weight 0: DMD alone, the
            #    paper's "only DMD" ablation — the judge is then not run at all)
            edit_gens = [gens[i] for i in edit]
            if lc.vlm_weight:
                seen = decoded[edit].clamp(-1, 1)  # the pixels an image has: what the judge sees at inference
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
            # 3. DMD: teacher (CFG on the edited caption, stronger for remove/replace/style) vs the critic (weight
            #    0: the judge alone, the paper's "only VLM" ablation — no teacher call, no critic)
            if lc.dmd_weight:
                scale = torch.tensor(
                    [lc.cfg_scale_strong if items[i]["type"] in lc.strong_types else lc.cfg_scale for i in edit],
                    device=self.device,
                )
                captions = [items[i]["edited_caption"] for i in edit]
                fake = {"critic": self.critic.module if self.critic else None}
                if lc.dmd_fake == "delta":  # the teacher's pull on the input (source caption) stands in for the critic
                    fake.update(reference=ref[edit], source_captions=[items[i]["source_caption"] for i in edit])
                t_range = (lc.dmd_t_min, lc.dmd_t_max)
                dmd = dmd_generator_loss(x0[edit], self.m.teacher, captions=captions, cfg_scale=scale,
                                         t_range=t_range, generators=edit_gens, negative=lc.negative_prompt,
                                         **fake)  # fmt: skip
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
        return loss, logs

    def critic_step(self, step: int) -> dict:
        """5. N_aux critic updates, each on a fresh batch and a fresh generator sample (as the paper's
        reimplementation does): the flow loss on the detached edits under their edited captions, t drawn as DMD
        draws it."""
        cfg, b = self.cfg, self.cfg.batch
        t_range = (cfg.loss.dmd_t_min, cfg.loss.dmd_t_max)
        for i in range(cfg.optim.critic_updates):
            # the critic's own slice of the data (this rank's share of it: N ranks see what one process would)
            j0 = CRITIC_STREAM // self.world_size + (step * cfg.optim.critic_updates + i) * b
            items = self.data.__getitems__(list(range(j0, j0 + b)))
            gens = [seeded(cfg.seed, "train", self.data.global_index(j), self.device) for j in range(j0, j0 + b)]
            k = self.random_k("train", -1 - CRITIC_STREAM - step * cfg.optim.critic_updates - i)  # same on every rank
            with self.autocast():
                x0, _ = self.sample(items, [it["instruction"] for it in items], gens, k, grad=False)
                captions = [it["edited_caption"] for it in items]
                c_loss = flow_loss(self.critic.module, x0.float(), captions, gens, t_range=t_range)
            self.critic.backward(c_loss)
            self.critic.clip_and_norm()
            self.critic.step()
        return {"critic": c_loss.item()} if cfg.optim.critic_updates else {}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the latents the generator works on (the frozen autoencoder's)."""
        return self.m.autoencoder.encode(images.to(self.device))

    # --------------------------------------------------------------------------------------- update ---
    def update(self, loss: torch.Tensor, logs: dict) -> dict:
        """Backward, clip, skip on a non-finite loss or an exploding gradient (counted), step, EMA."""
        oc = self.cfg.optim
        if not self.strategy.all_true(bool(torch.isfinite(loss.detach()))):
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
            with self.strategy.whole(trained):
                ema_update(self.ema.dit if trained is self.gen.module.dit else self.ema, trained, self.step, oc.ema)
        return {**logs, "loss": loss.item(), "grad_norm": gnorm, "skipped": self.skipped}

    # ----------------------------------------------------------------------------------- checkpoints ---
    def state_dict(self) -> dict:
        trained = self.strategy.state_dicts(self.trained)  # under DeepSpeed: None (the engines save their own)
        part = lambda name, key: (trained.get(name) or {}).get(key)
        return {
            "generator": part("gen", "module"),
            "critic": part("critic", "module"),
            "gen_opt": part("gen", "optimizer"),
            "critic_opt": part("critic", "optimizer"),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "step": self.step,
            "skipped": self.skipped,
            "wall_s": self.wall,
            "config": to_dict(self.cfg),
        }

    def save(self) -> Path:
        """Atomic checkpoint (temp file + rename) of everything a resumed run needs."""
        path = self.out / "checkpoint.pt"
        self.strategy.save(self.trained, self.out)
        if self.is_main:
            atomic_save(self.state_dict(), path)
        skipped = getattr(self.data, "skipped", None)
        if skipped:  # the images a JSONL dataset could not use, listed beside the checkpoint (each rank its own)
            self.skipped_images_path().write_text(json.dumps(skipped, indent=1, sort_keys=True) + "\n")
        return path

    def skipped_images_path(self) -> Path:
        return self.out / ("skipped_images.json" if self.world_size == 1 else f"skipped_images.rank{self.rank}.json")

    def load(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from (run without --resume first)")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if self.critic is not None and state["critic"] is None and state["generator"] is not None:
            written = state.get("config", {}).get("loss", {})
            how = "loss.dmd_weight=0" if written.get("dmd_weight") == 0 else "loss.dmd_fake=delta"
            raise ValueError(f"{path}: the checkpoint has no critic (written with {how}); resume it with {how}")
        # (a critic in the checkpoint of a run that has none is not needed)
        keys = {"gen": ("generator", "gen_opt"), "critic": ("critic", "critic_opt")}
        states = {n: {"module": state[keys[n][0]], "optimizer": state[keys[n][1]]} for n in self.trained}
        self.strategy.load(self.trained, states, self.out)
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.skipped, self.wall = state["step"], state["skipped"], state["wall_s"]
        if self.cfg.data.source == "jsonl" and self.skipped_images_path().is_file():
            self.data.skipped.update(json.loads(self.skipped_images_path().read_text()))

    # ------------------------------------------------------------------------------------------- run ---
    def edit_lr(self, step: int) -> float:
        """The generator's learning rate at editing step ``step`` (counted from the run's start)."""
        oc = self.cfg.optim
        if oc.decay == "constant":
            return oc.lr
        return oc.lr * cosine_decay(step - self.cfg.copy_steps, self.cfg.steps, oc.min_lr_ratio)

    def train_step(self, step: int) -> dict:
        """One generator update (stage 0: copy; stage 1: editing), logs averaged over ranks."""
        cfg = self.cfg
        if step < cfg.copy_steps:
            self.gen.set_lr(cfg.optim.warmup_lr)
            logs = {"stage": "copy", **self.copy_step(step)}
        else:
            self.gen.set_lr(self.edit_lr(step))
            logs = {"stage": "edit", **self.edit_step(step)}
        self.step = step + 1
        average = lambda k, v: v if k in RANK_INVARIANT or isinstance(v, str) else self.strategy.all_mean(v)
        logs = {k: average(k, v) for k, v in logs.items()}
        if self.cfg.data.source == "jsonl":  # images skipped so far, all ranks together
            logs["skipped_images"] = round(self.strategy.all_mean(len(self.data.skipped)) * self.world_size)
        return logs

    def train(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train to ``copy_steps + steps`` (or ``stop_after`` steps, for tests); returns the last logs."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        total = cfg.copy_steps + cfg.steps
        log = RunLog(self.out, self.step if resume else None, self.is_main, cfg.tensorboard, "pairfree train")

        def save(step, wall):
            self.wall = wall
            self.save()

        def heldout(step):
            row = {"step": step, **self.heldout_metrics()}
            log.write(row)
            keys = ["reward", "p_verify", "loss"] + [k for k in row if k.startswith("heldout/")]
            plot_series(self.out / "metrics.jsonl", self.out / "heldout.png", "training signal vs held-out", keys)
            self.keep_best(row)

        def samples(step, wall):
            if not self.is_main or self.strategy.gathers_parameters:
                return []
            if cfg.sample_every and step % cfg.sample_every == 0:
                self.save_samples(self.out / "samples" / f"step_{step:06d}.png")
            if cfg.heldout_every and cfg.data.source == "world" and (step % cfg.heldout_every == 0 or step == total):
                heldout(step)
            return []

        watch = cfg.heldout_every and cfg.data.source == "world" and self.is_main
        if watch and self.step == 0 and not self.strategy.gathers_parameters:
            heldout(0)  # where the curves start: the initial generator (an SFT model, or the teacher)

        try:
            result = run_steps(
                self.train_step, self.step, total if stop_after is None else min(total, stop_after), log, save,
                log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, max_minutes=cfg.max_minutes, wall_s=self.wall,
                desc="pairfree train", shown=SHOWN, after_step=samples, show_progress=self.is_main,
                stop_together=lambda late: not self.strategy.all_true(not late),
            )  # fmt: skip
        finally:
            log.close()
        with self.strategy.whole(self.gen.module) if self.ema is None else torch.no_grad():
            if self.is_main:
                self.export(self.out / "model")
        return {k: v for k, v in result.logs.items() if k != "stage"}

    def export(self, path: Path) -> Path:
        """The (EMA) generator as an editor directory that ``EditPipeline.from_pretrained`` loads."""
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

        record = {  # what the model card (`pairfree eval --card`) says about training
            "trainer": self.TRAINER,
            "step": self.step,
            "copy_steps": min(self.step, self.cfg.copy_steps),
            "edit_steps": max(0, self.step - self.cfg.copy_steps),
            "skipped": self.skipped,
            "wall_min": round(self.wall / 60, 1),
            "threads": torch.get_num_threads(),
            "ranks": self.world_size,
            "date": time.strftime("%Y-%m-%d"),
            "command": command_line(),
            "config": to_dict(self.cfg),
        }
        (path / "train.json").write_text(json.dumps(record, indent=1))
        save_spec(path, self.spec)
        return path

    def keep_best(self, row: dict) -> None:
        """Export the generator to ``best/`` when its held-out complete edit (``row``, from
        :meth:`heldout_metrics`) beats every earlier one of this run (ties keep the earlier): a run that reward-hacks
        late still leaves its best model, picked on the validation stream, never on the benchmark."""
        key = "heldout/complete edit"
        record = self.out / "best" / "best.json"
        if record.is_file() and json.loads(record.read_text())[key] >= row[key]:
            return
        tmp = self.out / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.export(tmp)
        (tmp / "best.json").write_text(json.dumps(row, indent=1) + "\n")
        best, old = self.out / "best", self.out / "best.old"
        if best.is_dir():  # swap by renames: a complete best/ exists at every moment but between them
            shutil.rmtree(old, ignore_errors=True)
            os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)

    @torch.no_grad()
    def heldout_metrics(self) -> dict:
        """The exported generator's (EMA's) edits of ``heldout_items`` held-out edits (held-out wording, the
        validation seed stream — disjoint from the benchmark's —, every type), read by the independent evaluator:
        overall complete edit, preservation and PSNR outside the mask — never the judge that is trained against."""
        if getattr(self, "_heldout", None) is None:
            per_type = math.ceil(self.cfg.heldout_items / len(EDIT_TYPES))
            edits = build_bench(per_type, seed=self.cfg.seed, spec=self.spec, split="val")
            inputs, targets, masks = render_edits(edits, self.cfg.models.resolution)
            bench = Bench(edits, [], inputs, targets, masks, {}, self.spec)
            self._heldout = (bench, pretrained(model_name("evaluator", self.spec)))
        bench, evaluator = self._heldout
        gen = self.ema if self.ema is not None else self.gen.module
        outputs = edit_images(gen, bench.inputs * 2 - 1, [e.instruction for e in bench.edits], self.schedule, 0)
        overall = measure(evaluator, bench, outputs.cpu())["overall"]
        keys = ("complete edit", "preservation", "PSNR outside mask")
        return {f"heldout/{k}": overall[k] for k in keys}

    @torch.no_grad()
    def save_samples(self, path: Path, n: int = 8) -> Path:
        """input | instruction | output for ``n`` fixed edits: held-out world edits (one per sub-type, val seeds),
        or the first items of a JSONL dataset."""
        if self.cfg.data.source == "world":
            edits = [
                sample_edit(item_seed(0, "val", i), kind=EDIT_TYPES[i % len(EDIT_TYPES)], spec=self.spec)
                for i in range(n)
            ]
            inputs = render([e.source for e in edits], self.cfg.models.resolution)[0] * 2 - 1
            instructions, kinds = [e.instruction for e in edits], [e.kind for e in edits]
        else:
            items = self.data.__getitems__(list(range(n)))
            inputs = torch.stack([it["image"] for it in items])
            instructions, kinds = [it["instruction"] for it in items], [it["type"] for it in items]
        inputs = inputs.to(self.device)
        gen = self.ema if self.ema is not None else self.gen.module
        outputs = edit_images(gen, inputs, instructions, self.schedule, seed=0, autoencoder=self.m.autoencoder)
        return save_edit_rows(path, inputs, instructions, outputs, labels=kinds)


RANK_INVARIANT = ("k", "skipped", "grad_norm")  # the same on every rank
SHOWN = ("loss", "copy", "paired", "vlm", "dmd", "p_verify", "p_identity", "critic", "reward", "kl", "skipped")
