"""The editor's loss terms (docs/design.md): the VLM editing loss, DMD against the teacher and the online critic,
the critic's own flow loss, and the identity-flow loss of the reference-copy warm-up."""

from __future__ import annotations

import torch

from pairfree.flow import add_noise, cfg_combine, velocity_target, x0_from_velocity
from pairfree.kernels.dmd import dmd_loss
from pairfree.unroll import per_sample_randn


def per_sample_rand(generators, device) -> torch.Tensor:
    """``(B,)`` uniforms, element ``i`` from ``generators[i]``."""
    return torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).to(device)


def judge_images(question: dict, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The images a question shows: (input, output) for "pair", the output alone for "output"."""
    if question["images"] == "pair":
        return torch.stack([inputs, output])
    if question["images"] == "output":
        return output[None]
    raise ValueError(f"judge question: images must be 'pair' or 'output', got {question['images']!r}")


def judge_batch(inputs, outputs, questions: list[list[dict]], roles: tuple[str, ...]):
    """One judge batch of every question of ``roles`` about each (input, output) pair: ``(images, texts,
    targets (1 = Yes), role of each question, index of its sample)``."""
    images, texts, targets, role_of, owner = [], [], [], [], []
    for i, (x, y, qs) in enumerate(zip(inputs, outputs, questions)):
        for q in qs:
            if q["role"] in roles:
                images.append(judge_images(q, x, y))
                texts.append(q["text"])
                targets.append(1.0 if q["target"] == "Yes" else 0.0)
                role_of.append(q["role"])
                owner.append(i)
    return images, texts, torch.tensor(targets, device=outputs.device), role_of, owner


def vlm_editing_loss(
    judge,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    questions: list[list[dict]],
    temperature: float,
    identity: bool = True,
    full_vocab: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Mean over samples of mean(verification CE, identity CE), both questions in one batched judge pass.

    ``questions[i]`` = [verify, identity] dicts (``JudgeQuestion.to_dict``); the targets come from them (remove:
    "is there <object>?" → No). ``temperature`` τ scales the answer logits, CE(logits · τ), as in the paper's
    public reimplementation: τ < 1 early makes the answers soft and the judge's pull gentle. Returns the loss and
    the judge's mean P(target) per role at τ = 1 (for the progress bar).
    """
    roles = ("verify", "identity") if identity else ("verify",)
    images, texts, target, role_of, _ = judge_batch(inputs, outputs, questions, roles)
    per_q = judge.loss(images, texts, target, logit_scale=temperature, full_vocab=full_vocab)
    role_t = torch.tensor([roles.index(r) for r in role_of], device=outputs.device)
    per_role = torch.stack([per_q[role_t == i].mean() for i in range(len(roles))])
    with torch.no_grad():  # P(target answer) at τ = 1, recovered from CE_τ = softplus(−τ·Δ)
        margin = -torch.log(torch.expm1(per_q.detach().double()).clamp_min(1e-300)) / temperature
        p = torch.sigmoid(margin).float()
    stats = {f"p_{r}": p[role_t == i].mean().item() for i, r in enumerate(roles)}
    return per_role.mean(), stats


def teacher_x0(
    model, x_t: torch.Tensor, t: torch.Tensor, captions: list[str], cfg_scale: torch.Tensor | None, negative: str = ""
):
    """x0 predicted by a text-to-image model (the teacher with CFG on ``captions`` against the ``negative`` prompt,
    or the critic without)."""
    if cfg_scale is None:
        return x0_from_velocity(x_t, model.velocity(x_t, t, captions), t)
    v = model.velocity(torch.cat([x_t, x_t]), torch.cat([t, t]), list(captions) + [negative] * len(captions))
    cond, uncond = v.chunk(2)
    return x0_from_velocity(x_t, cfg_combine(cond, uncond, cfg_scale), t)


def dmd_generator_loss(
    x0: torch.Tensor,
    teacher,
    critic,
    captions: list[str],
    cfg_scale: torch.Tensor,
    t_range: tuple[float, float],
    generators: list[torch.Generator],
    reference: torch.Tensor | None = None,
    source_captions: list[str] | None = None,
    negative: str = "",
) -> torch.Tensor:
    """DMD2's generator loss: noise x̂0 to t ~ U[t_min, t_max], take the teacher's (real, CFG on the edited
    caption) and the critic's (fake) x0 predictions, and move x̂0 toward real and away from fake.
    ``generators``: one per sample (t and noise). With ``reference`` and ``source_captions`` (``critic`` unused):
    the delta score's fake (:func:`delta_real_and_fake`). ``negative``: the teacher's CFG negative prompt."""
    t = t_range[0] + (t_range[1] - t_range[0]) * per_sample_rand(generators, x0.device)
    noise = per_sample_randn(generators, x0)
    with torch.no_grad():
        x_t = add_noise(x0.detach(), noise, t)
        if reference is None:
            real = teacher_x0(teacher, x_t, t, captions, cfg_scale, negative)
            fake = teacher_x0(critic, x_t, t, captions, None)
        else:
            real, fake = delta_real_and_fake(teacher, x0.detach(), x_t, reference, noise, t, captions,
                                             source_captions, cfg_scale, negative)  # fmt: skip
    return dmd_loss(x0, real, fake).mean()


def delta_real_and_fake(teacher, x0, x_t, reference, noise, t, captions, source_captions, cfg_scale, negative=""):
    """DMD's real and fake x0 with the delta score (Delta Denoising Score, Hertz et al. 2023): real is the teacher
    on ``x_t`` (x̂0 noised) under the edited ``captions``; fake, the critic's stand-in, is x̂0 plus the teacher's
    pull on the *reference* under its own (source) caption, at the same t and noise. DMD's step then moves x̂0 by
    the teacher's pull on x̂0 minus its pull on the reference: what the teacher would redraw anyway (its blur, its
    misdrawn objects) cancels and the caption's difference remains. Both teacher calls run as one batch."""
    both = teacher_x0(
        teacher,
        torch.cat([x_t, add_noise(reference, noise, t)]),
        torch.cat([t, t]),
        list(captions) + list(source_captions),
        torch.cat([cfg_scale, cfg_scale]),
        negative,
    )
    real, ref_pred = both.chunk(2)
    return real, x0 + (ref_pred - reference)


def flow_loss(
    model, x0: torch.Tensor, captions: list[str], generators, reference=None, t_range=None, t_values=None
) -> torch.Tensor:
    """Rectified-flow loss on ``x0``: the critic's loss on the generator's detached samples (``t_range``: t ~ U[t_min,
    t_max], as DMD queries the critic), the generator's reference-copy warm-up (with ``reference``; logit-normal t),
    and the supervised yardstick (``t_values``: t drawn uniformly from the few-step sampler's timesteps).
    ``generators``: one per sample."""
    if t_values is not None:
        pick = (per_sample_rand(generators, x0.device) * len(t_values)).long().clamp_max(len(t_values) - 1)
        t = torch.tensor(t_values, dtype=x0.dtype, device=x0.device)[pick]
    elif t_range is None:
        t = torch.sigmoid(per_sample_randn(generators, x0[:, :1, 0, 0]).flatten())
    else:
        t = t_range[0] + (t_range[1] - t_range[0]) * per_sample_rand(generators, x0.device)
    noise = per_sample_randn(generators, x0)
    v = model.velocity(add_noise(x0, noise, t), t, captions, reference=reference)
    return (v - velocity_target(x0, noise)).square().mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean absolute difference between vertically and horizontally adjacent pixels of ``(B, C, H, W)``."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


def excess_variation_loss(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the total variation ``outputs`` have beyond their ``inputs``' (0 where they have no
    more): an editor that adds noise or speckle pays, one that recolours a flat region does not."""
    return (total_variation(outputs) - total_variation(inputs)).clamp_min(0).mean()
