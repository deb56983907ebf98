"""Is a judge's gradient worth following? Optimise output *pixels* directly against the editor's VLM loss,
starting from the input, and let the independent evaluator say whether the requested edits happened.

This is the editor's training signal with the generator taken out: a judge whose P(correct) can be raised to
~1 while the evaluator sees no edit (an adversarial perturbation) will teach an editor the same trick; a judge
whose gradient moves pixels toward the instruction (perceptually aligned) is one an editor can learn from.

    python -m pairfree.eval.judge_gradient [--judge DIR] [--n 56] [--steps 100] [--out results/judge_gradient]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pairfree.eval.editing import attribute_checks, psnr


def optimise_pixels(
    judge, inputs: torch.Tensor, edits, steps: int, lr: float, noise: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, dict]:
    """Adam on the output pixels (clamped to [-1, 1]) from ``inputs`` (``(N, 3, R, R)`` in [-1, 1]) against
    the verification + identity CE, the judge seeing the pixels through fresh Gaussian noise of σ ``noise`` each
    step (the trainer's ``loss.judge_noise``); returns the outputs and the judge's final mean P(target) per
    question (on the noiseless outputs)."""
    from pairfree.train.losses import vlm_editing_loss

    questions = [[q.to_dict() for q in e.questions()] for e in edits]
    pixels = inputs.clone().requires_grad_(True)
    opt = torch.optim.Adam([pixels], lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        seen = pixels.clamp(-1, 1)
        if noise:
            seen = seen + noise * torch.randn(seen.shape, generator=g).to(seen.device)
        loss, _ = vlm_editing_loss(judge, inputs, seen, questions, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = pixels.detach().clamp(-1, 1)
        _, probs = vlm_editing_loss(judge, inputs, out, questions, 1.0)
    return out, probs


def judge_gradient_report(
    judge, evaluator, n: int = 56, steps: int = 100, lr: float = 0.02, seed: int = 0, noise: float = 0.0
) -> dict:
    """Edit success / preservation (the evaluator's) of pixel optimisation against ``judge`` on ``n`` held-out
    (val-seed) edits of the seven local and global kinds (style is left out: it hides attributes), overall and
    per kind, with the judge's P(target) before and after."""
    from pairfree.world.datasets import item_seed
    from pairfree.world.edits import EDIT_TYPES, render_edits, sample_edit

    kinds = [k for k in EDIT_TYPES if k != "style"]
    edits = [sample_edit(item_seed(seed, "val", i), kind=kinds[i % len(kinds)]) for i in range(n)]
    inputs, _, masks = render_edits(edits, evaluator.config.resolution)
    x = inputs * 2 - 1
    for p in judge.parameters():
        p.requires_grad_(False)
    _, before = optimise_pixels(judge, x, edits, 0, lr)
    out, after = optimise_pixels(judge, x, edits, steps, lr, noise, seed)
    success, preserved = attribute_checks(evaluator, out, edits)
    psnr_out = psnr((out + 1) / 2, inputs, ~masks.bool())
    report = {
        "n": n,
        "steps": steps,
        "lr": lr,
        "judge noise": noise,
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
    from pairfree.shipped import pretrained

    if where.endswith(".pt"):
        from pairfree.judge.world import build_world_judge
        from pairfree.pretrain.judge import JudgeTrainee, load_trainee_weights

        trainee = JudgeTrainee(build_world_judge(seed=0, image_size=84))
        trainee.load_state_dict(load_trainee_weights(where), strict=False)
        return trainee.judge.eval()
    return pretrained("shapes-judge", None if where == "shapes-judge" else where).eval()


def main(argv=None) -> int:
    import sys

    from pairfree.shipped import pretrained

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge", default="shapes-judge", help="shapes-judge, a judge directory or a checkpoint.pt")
    ap.add_argument("--n", type=int, default=56)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--noise", type=float, default=0.0, help="σ of the noise the judge sees (loss.judge_noise)")
    ap.add_argument("--out", default="results/judge_gradient")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    judge = load_judge(args.judge)
    report = judge_gradient_report(
        judge, pretrained("shapes-evaluator").eval(), args.n, args.steps, args.lr, noise=args.noise
    )
    report["judge"], report["command"] = args.judge, " ".join(["python -m pairfree.eval.judge_gradient", *sys.argv[1:]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.judge).stem if args.judge.endswith(".pt") else Path(args.judge).name
    name += f"_noise{args.noise:g}" if args.noise else ""
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "per kind"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
