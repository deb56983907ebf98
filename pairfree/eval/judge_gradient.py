"""Is a training signal worth following? Optimise output *pixels* directly against the editor's losses, starting
from the input, and let the independent evaluator say whether the requested edits happened.

This is the editor's training signal with the generator taken out: a judge whose P(correct) can be raised to
~1 while the evaluator sees no edit (an adversarial perturbation) will teach an editor the same trick; a judge
whose gradient moves pixels toward the instruction (perceptually aligned) is one an editor can learn from. The
same test for the other signal: score distillation toward the teacher on the edited caption (``--teacher``), the
pull DMD gives the editor. Options: an ensemble of judges (comma-separated ``--judge``), and a low-resolution
change (``--delta-res``: only smooth colour fields can be made, no pixel noise).

    python -m pairfree.eval.judge_gradient [--judge DIR[,DIR...]] [--n 56] [--steps 100] [--delta-res 8]
        [--teacher shapes-teacher --teacher-weight 1 --t-range 0.3 0.7] [--vlm-weight 1] [--out results/judge_gradient]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from pairfree.eval.editing import attribute_checks, psnr
from pairfree.flow import add_noise
from pairfree.judge.world import build_world_judge
from pairfree.kernels.dmd import dmd_loss
from pairfree.pretrain.judge import JudgeTrainee, load_trainee_weights
from pairfree.shipped import pretrained
from pairfree.train.losses import delta_real_and_fake, teacher_x0, vlm_editing_loss
from pairfree.world.captions import caption
from pairfree.world.datasets import item_seed
from pairfree.world.edits import EDIT_TYPES, render_edits, sample_edit


class JudgeEnsemble:
    """Judges answering together: each question's loss is the mean of theirs (an adversarial image must fool all)."""

    def __init__(self, judges):
        self.judges = list(judges)

    def loss(self, images, questions, target_yes, logit_scale: float = 1.0, full_vocab: bool = False):
        each = [j.loss(images, questions, target_yes, logit_scale, full_vocab) for j in self.judges]
        return torch.stack(each).mean(0)

    def parameters(self):
        return (p for j in self.judges for p in j.parameters())


def score_distillation_loss(
    teacher,
    x0: torch.Tensor,
    captions: list[str],
    t_range,
    cfg: float,
    generator: torch.Generator,
    reference: torch.Tensor | None = None,
    source_captions: list[str] | None = None,
) -> torch.Tensor:
    """The teacher's pull on ``x0``: noise it to t ~ U[t_range], take the teacher's x0 prediction (CFG on the edited
    ``captions``) and step toward it, normalised per sample like DMD's gradient (score distillation: DMD with the
    critic replaced by the current pixels). With ``reference`` and ``source_captions``: the delta score
    (``pairfree.train.losses.delta_real_and_fake``), the teacher's pull on the reference under its own caption taken
    off."""
    t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(len(x0), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    scale = torch.full((len(x0),), cfg, device=x0.device)
    with torch.no_grad():
        x_t = add_noise(x0.detach(), noise, t)
        if reference is None:
            real, fake = teacher_x0(teacher, x_t, t, captions, scale), x0.detach()
        else:
            real, fake = delta_real_and_fake(teacher, x0.detach(), x_t, reference, noise, t, captions,
                                             source_captions, scale)  # fmt: skip
    return dmd_loss(x0, real, fake).mean()


def optimise_pixels(
    judge,
    inputs: torch.Tensor,
    edits,
    steps: int,
    lr: float,
    noise: float = 0.0,
    seed: int = 0,
    delta_res: int | None = None,
    teacher=None,
    teacher_weight: float = 0.0,
    t_range: tuple[float, float] = (0.3, 0.7),
    cfg: float = 3.5,
    vlm_weight: float = 1.0,
    l1_weight: float = 0.0,
    delta: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Adam on the output pixels (clamped to [-1, 1]) from ``inputs`` (``(N, 3, R, R)`` in [-1, 1]) against
    ``vlm_weight`` × the verification + identity CE (the judge seeing the pixels through fresh Gaussian noise of σ
    ``noise`` each step: the trainer's ``loss.judge_noise``) + ``teacher_weight`` × score distillation toward
    ``teacher`` on each edit's edited caption + ``l1_weight`` × the mean |output − input| (the trainer's
    ``loss.pixel_identity_weight``: only changes whose pull outweighs it survive); ``delta``: the delta score (the
    teacher's pull on the input under the source caption taken off: ``loss.dmd_fake: delta``). ``delta_res``: a
    ``delta_res``² change, bilinearly upsampled, instead of every pixel. Returns the outputs and the judge's final
    mean P(target) per question (on the noiseless outputs; none without a ``judge``)."""
    questions = [[q.to_dict() for q in e.questions()] for e in edits]
    captions = [e.edited_caption() for e in edits]
    source = dict(reference=inputs, source_captions=[caption(e.source, 0) for e in edits]) if delta else {}
    r = inputs.shape[-1]
    change = torch.zeros(*inputs.shape[:2], delta_res or r, delta_res or r, requires_grad=True)

    def outputs():
        d = change if delta_res is None else F.interpolate(change, size=(r, r), mode="bilinear", align_corners=False)
        return (inputs + d).clamp(-1, 1)

    opt = torch.optim.Adam([change], lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        out = outputs()
        loss = out.new_zeros(())
        if vlm_weight:
            seen = out + noise * torch.randn(out.shape, generator=g).to(out.device) if noise else out
            loss = loss + vlm_weight * vlm_editing_loss(judge, inputs, seen, questions, 1.0)[0]
        if teacher_weight:
            loss = loss + teacher_weight * score_distillation_loss(teacher, out, captions, t_range, cfg, g, **source)
        if l1_weight:
            loss = loss + l1_weight * (out - inputs).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = outputs()
        probs = vlm_editing_loss(judge, inputs, out, questions, 1.0)[1] if judge is not None else {}
    return out, probs


def judge_gradient_report(
    judge, evaluator, n: int = 56, steps: int = 100, lr: float = 0.02, seed: int = 0, noise: float = 0.0, **signal
) -> dict:
    """Edit success / preservation (the evaluator's) of pixel optimisation against ``judge`` on ``n`` held-out
    (val-seed) edits of the seven local and global kinds (style is left out: it hides attributes), overall and
    per kind, with the judge's P(target) before and after. ``signal``: ``optimise_pixels``' other options (the
    teacher's term, ``delta_res``, ``vlm_weight``)."""
    kinds = [k for k in EDIT_TYPES if k != "style"]
    edits = [sample_edit(item_seed(seed, "val", i), kind=kinds[i % len(kinds)]) for i in range(n)]
    inputs, _, masks = render_edits(edits, evaluator.config.resolution)
    x = inputs * 2 - 1
    for p in judge.parameters():
        p.requires_grad_(False)
    _, before = optimise_pixels(judge, x, edits, 0, lr)
    out, after = optimise_pixels(judge, x, edits, steps, lr, noise, seed, **signal)
    success, preserved = attribute_checks(evaluator, out, edits)
    psnr_out = psnr((out + 1) / 2, inputs, ~masks.bool())
    report = {
        "n": n,
        "steps": steps,
        "lr": lr,
        "judge noise": noise,
        **{k: v for k, v in signal.items() if k != "teacher"},
        "p_verify before": before["p_verify"],
        "p_verify after": after["p_verify"],
        "p_identity after": after["p_identity"],
        "edit success": success.float().mean().item(),
        "preservation": preserved.float().mean().item(),
        "complete edit": (success & preserved).float().mean().item(),
        "PSNR outside mask": psnr_out.nanmean().item(),
        "per kind": {},
    }
    for k in kinds:
        idx = torch.tensor([i for i, e in enumerate(edits) if e.kind == k])
        report["per kind"][k] = {
            "edit success": success[idx].float().mean().item(),
            "preservation": preserved[idx].float().mean().item(),
        }
    return report


def load_judge(where: str):
    """A shipped name, an exported judge directory, or a judge pretraining ``checkpoint.pt`` (mid-run)."""
    if where.endswith(".pt"):
        trainee = JudgeTrainee(build_world_judge(seed=0, image_size=84))
        trainee.load_state_dict(load_trainee_weights(where), strict=False)
        return trainee.judge.eval()
    return pretrained("shapes-judge", None if where == "shapes-judge" else where).eval()


def main(argv=None) -> int:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--judge",
        default="shapes-judge",
        help="shapes-judge, judge directories or checkpoint.pt files, comma-separated (an ensemble)",
    )
    ap.add_argument("--n", type=int, default=56)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--noise", type=float, default=0.0, help="σ of the noise the judge sees (loss.judge_noise)")
    ap.add_argument("--vlm-weight", type=float, default=1.0, help="weight of the judge's loss (0: the teacher alone)")
    ap.add_argument("--l1-weight", type=float, default=0.0, help="weight of the mean |output - input| (sparse changes)")
    ap.add_argument("--delta-res", type=int, default=None, help="optimise a low-resolution change, upsampled")
    ap.add_argument(
        "--teacher", default=None, help="add score distillation toward this teacher (shapes-teacher or a directory)"
    )
    ap.add_argument("--teacher-weight", type=float, default=1.0)
    ap.add_argument("--t-range", type=float, nargs=2, default=(0.3, 0.7), metavar=("T_MIN", "T_MAX"))
    ap.add_argument(
        "--delta", action="store_true", help="delta score: take off the teacher's pull on the input (source caption)"
    )
    ap.add_argument("--cfg", type=float, default=3.5, help="the teacher's classifier-free guidance scale")
    ap.add_argument("--name", default=None, help="the JSON's name (default: from the judge and options)")
    ap.add_argument("--out", default="results/judge_gradient")
    args = ap.parse_args(argv)
    if args.vlm_weight == 0 and args.teacher is None:
        ap.error("--vlm-weight 0 needs --teacher (nothing to optimise)")
    torch.manual_seed(0)
    judges = [load_judge(j) for j in args.judge.split(",")]
    judge = judges[0] if len(judges) == 1 else JudgeEnsemble(judges)
    signal = {"vlm_weight": args.vlm_weight, "delta_res": args.delta_res, "l1_weight": args.l1_weight}
    if args.teacher:
        teacher = pretrained("shapes-teacher", None if args.teacher == "shapes-teacher" else args.teacher)
        signal.update(teacher=teacher.eval().requires_grad_(False), teacher_weight=args.teacher_weight,
                      t_range=tuple(args.t_range), cfg=args.cfg, delta=args.delta)  # fmt: skip
    report = judge_gradient_report(
        judge, pretrained("shapes-evaluator").eval(), args.n, args.steps, args.lr, noise=args.noise, **signal
    )
    report["judge"], report["teacher"] = args.judge, args.teacher
    report["command"] = " ".join(["python -m pairfree.eval.judge_gradient", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name
    if name is None:
        name = "+".join(Path(j).stem if j.endswith(".pt") else Path(j).name for j in args.judge.split(","))
        name += f"_noise{args.noise:g}" if args.noise else ""
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "per kind"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
