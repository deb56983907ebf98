"""Flow-GRPO on the few-step editor, with the same frozen judge and questions as the pair-free loss as the reward
(the paper's RL comparison). Read top to bottom, one update is:

1. a batch of B (input image, instruction) items, each repeated G times (``grpo.group_size``);
2. a rollout of the K-step sampler, no gradients: step i predicts x̂0 = G(x_{t_i}) and re-noises it,
   x_{t_{i+1}} = (1 − t_{i+1})·x̂0 + t_{i+1}·ε. So each step is a Gaussian policy
   N((1 − t_{i+1})·x̂0, t_{i+1}²·I) whose log-probability is exact (our sampler's own re-noise, not Flow-GRPO's
   SDE step with a noise level η); the last step's x̂0 is the edit;
3. the reward: the judge's P(target answer), averaged over the verification and identity questions — the
   pair-free loss's questions, never the evaluator;
4. advantages: rewards normalised within each group of G, clipped to ±``adv_clip``;
5. the loss on a share of the stochastic steps: the clipped surrogate −min(r·A, clip(r, 1 ± ε)·A) with
   r = exp(log π − log π_old), log-probabilities as means over dimensions (Flow-GRPO's convention), plus
   ``kl_weight`` × KL(π ‖ π_ref) to the frozen starting policy (closed form: the two Gaussians share their std);
6. the update (clip, skip, step, EMA) as the editor's.

Stage 0 (the copy warm-up) is the editor's. Every draw is seeded by (seed, step, the sample's global index and
group member), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import copy
import math

import torch

from pairfree.models.bundle import editor_x0
from pairfree.train.losses import judge_batch
from pairfree.train.trainer import EditorTrainer, seeded
from pairfree.unroll import per_sample_randn


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over dimensions of log N(x; mean, std²); ``std`` ``(B,)``."""
    s = std.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    lp = -((x - mean) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over dimensions of KL(N(mean, std²) ‖ N(ref_mean, std²)) = (mean − ref_mean)² / 2std²."""
    s = std.view(-1, *([1] * (mean.dim() - 1))).to(mean.dtype)
    return ((mean - ref_mean) ** 2 / (2 * s**2)).flatten(1).mean(1)


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float, eps: float = 1e-4) -> torch.Tensor:
    """``(r − mean_group) / (std_group + eps)``, clipped to ±``clip``; ``rewards`` ordered group by group."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + eps)
    return adv.clamp(-clip, clip).flatten()


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """PPO's clipped objective as a loss (mean over samples): −min(r·A, clip(r, 1 − ε, 1 + ε)·A)."""
    ratio = torch.exp(log_prob - old_log_prob)
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages).mean()


@torch.no_grad()
def judge_reward(judge, inputs, outputs, questions: list[list[dict]], identity: bool = True) -> torch.Tensor:
    """Per-sample reward ``(B,)``: the judge's P(target answer) at τ = 1, averaged over the sample's
    verification (and identity) questions."""
    roles = ("verify", "identity") if identity else ("verify",)
    images, texts, targets, _, owner = judge_batch(inputs, outputs, questions, roles)
    per_q = judge.loss(images, texts, targets, logit_scale=1.0)
    p = torch.exp(-per_q.float())  # two-token CE at τ = 1 is −log P(target)
    owner = torch.tensor(owner, device=outputs.device)
    total = torch.zeros(len(questions), device=outputs.device).index_add_(0, owner, p)
    return total / torch.bincount(owner, minlength=len(questions)).clamp_min(1)


GROUP_STREAM = 7 * 10**11  # group members' noise: (item's global index · G + member), this far into the stream
STEPS_STREAM = -2 * 10**12  # which steps an update trains: below the editor's negative (random k) indices


class GRPOTrainer(EditorTrainer):
    """:class:`EditorTrainer` whose stage 1 is Flow-GRPO (module docstring) instead of the pair-free loss."""

    TRAINER = "flow-grpo"  # RL with the judge as the reward: the paper's comparison, not the method

    def __init__(self, cfg, models, reference=None, **kw):
        # the starting policy, frozen (copied before any checkpoint is loaded: on resume it is still the start)
        self.reference = reference if reference is not None else self.copies_before_engines(models)["reference"]
        super().__init__(cfg, models, **kw)

    @classmethod
    def copies_before_engines(cls, models) -> dict:
        return {"reference": copy.deepcopy(models.generator).requires_grad_(False).eval()}

    def policy_step(self, model, x_t, i: int, ref, text, mask) -> torch.Tensor:
        """The mean (1 − t_{i+1})·x̂0 of sampler step i's Gaussian."""
        t, t_next = self.schedule[i], self.schedule[i + 1]
        x0 = editor_x0(model, x_t, torch.full((x_t.shape[0],), float(t), device=x_t.device), ref, text, mask)
        return (1 - t_next) * x0

    @torch.no_grad()
    def rollout(self, step: int) -> dict:
        """Steps 1–4: the group batch, the sampled trajectory, its log-probabilities, rewards and advantages."""
        cfg, g = self.cfg, self.cfg.grpo.group_size
        items = [it for it in self.batch(step) for _ in range(g)]
        b = cfg.batch
        index = [self.data.global_index(j) * g + m for j in range(step * b, (step + 1) * b) for m in range(g)]
        gens = [seeded(cfg.seed, "train", GROUP_STREAM + i, self.device) for i in index]
        ref = self.encode(torch.stack([it["image"] for it in items]))
        text, mask = self.gen.module.text.encode([it["instruction"] for it in items])
        states, old_lp, ref_means = [per_sample_randn(gens, ref)], [], []
        for i in range(len(self.schedule) - 1):
            mean = self.policy_step(self.gen.module, states[-1], i, ref, text, mask)
            std = torch.full((len(items),), float(self.schedule[i + 1]), device=ref.device)
            states.append(mean + std.view(-1, 1, 1, 1) * per_sample_randn(gens, ref))
            old_lp.append(gaussian_log_prob(states[-1], mean, std))
            ref_means.append(self.policy_step(self.reference, states[-2], i, ref, text, mask))
        t_last = torch.full((len(items),), float(self.schedule[-1]), device=ref.device)
        x0 = editor_x0(self.gen.module, states[-1], t_last, ref, text, mask)
        images = torch.stack([it["image"] for it in items]).to(self.device)
        outputs = self.m.autoencoder.decode(x0).clamp(-1, 1)
        reward = judge_reward(
            self.m.judge, images, outputs, [it["questions"] for it in items], cfg.loss.identity_question
        )
        adv = group_advantages(reward, g, cfg.grpo.adv_clip)
        return dict(states=states, old_lp=old_lp, ref_means=ref_means, reward=reward, adv=adv, ref=ref,
                    instructions=[it["instruction"] for it in items])  # fmt: skip

    def trained_steps(self, step: int) -> list[int]:
        """The stochastic steps this update trains (a seeded share of them, the same on every rank)."""
        n = len(self.schedule) - 1
        keep = max(1, round(self.cfg.grpo.train_fraction * n))
        order = torch.randperm(n, generator=seeded(self.cfg.seed, "train", STEPS_STREAM - step, "cpu"))
        return sorted(order[:keep].tolist())

    def edit_step(self, step: int) -> dict:
        cfg = self.cfg.grpo
        with self.autocast():
            r = self.rollout(step)
            # the instruction is encoded again with gradients: the generator's text encoder is part of the policy
            text, mask = self.gen.module.text.encode(r["instructions"])
            loss = 0.0
            kls = []
            chosen = self.trained_steps(step)
            for i in chosen:
                std = torch.full((r["ref"].shape[0],), float(self.schedule[i + 1]), device=r["ref"].device)
                mean = self.policy_step(self.gen.module, r["states"][i], i, r["ref"], text, mask)
                lp = gaussian_log_prob(r["states"][i + 1], mean, std)
                kl = gaussian_kl(mean, r["ref_means"][i], std).mean()
                loss = loss + clipped_surrogate(lp, r["old_lp"][i], r["adv"], cfg.clip_range) + cfg.kl_weight * kl
                kls.append(kl.item())
            loss = loss / len(chosen)
        logs = {"reward": r["reward"].mean().item(), "kl": sum(kls) / len(kls)}
        return self.update(loss, logs)
