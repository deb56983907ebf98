"""``pairfree pretrain judge``: train the tiny Qwen2.5-VL judge on the world's Yes/No VQA with the same fused
two-token loss it is used with, then measure it on held-out questions and on the benchmark's verification
question (does its P(Yes) separate ground-truth edits from unedited inputs?)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pairfree.judge.qwen import QwenJudge
from pairfree.judge.world import build_world_judge
from pairfree.pretrain.common import Prefetch, PretrainConfig, command_line, ship, write_card
from pairfree.pretrain.loop import train
from pairfree.world.bench import build_bench
from pairfree.world.captions import describe_placed
from pairfree.world.datasets import JudgeVQADataset, collate_vqa, item_seed
from pairfree.world.edits import render_edits
from pairfree.world.render import render
from pairfree.world.scene import sample_scene

NAME = "shapes-judge"


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties count half."""
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


@torch.no_grad()
def evaluate(judge: QwenJudge, seed: int, n: int, resolution: int) -> dict:
    judge.eval()
    ds = JudgeVQADataset(n, seed=seed, split="val", resolution=resolution)
    right = {"single": [0, 0], "pair": [0, 0]}
    for start in range(0, len(ds), 32):
        b = collate_vqa(ds.__getitems__(list(range(start, min(start + 32, len(ds))))))
        pred = (judge(b["images"], b["question"]).argmax(-1) == b["label"]).tolist()
        for kind, ok in zip(b["kind"], pred):
            right[kind][0] += ok
            right[kind][1] += 1
    metrics = {f"{k} accuracy": r / max(t, 1) for k, (r, t) in right.items()}
    # the editor's verification question on the benchmark set: GT edit (positive) vs unedited input (negative)
    edits = build_bench(max(2, min(50, n // 20)), seed=0)
    inputs, targets, _ = render_edits(edits, resolution)
    inputs, targets = inputs * 2 - 1, targets * 2 - 1
    pos, neg = [], []
    for start in range(0, len(edits), 32):
        es = edits[start : start + 32]
        qs, ims_pos, ims_neg = [], [], []
        for j, e in enumerate(es):
            verify, _ = e.questions()
            i, t = inputs[start + j], targets[start + j]
            qs.append(verify.text)
            if verify.images == "pair":
                ims_pos.append(torch.stack([i, t]))
                ims_neg.append(torch.stack([i, i]))
            else:  # remove: "is there <object>?" — the edit is right when the answer is No
                ims_pos.append(i[None])  # on the input the object is there: P(Yes) high...
                ims_neg.append(t[None])
        p_pos = judge.p_yes(ims_pos, qs)
        p_neg = judge.p_yes(ims_neg, qs)
        for e, a, b_ in zip(es, p_pos.tolist(), p_neg.tolist()):
            verify, _ = e.questions()
            if verify.images == "pair":
                pos.append(a)
                neg.append(b_)
            else:  # score = P(No) on the output: edited output (target) should score high
                pos.append(1 - b_)
                neg.append(1 - a)
    metrics["verification AUC (benchmark)"] = auc(torch.tensor(pos), torch.tensor(neg))
    return metrics


def run(cfg: PretrainConfig, resume: bool = False) -> dict:
    out = Path(cfg.out)
    sizes = {
        k: v
        for k, v in cfg.model.items()
        if k not in ("pair_prob", "single_only_steps", "caption_batch", "caption_weight")
    }
    judge = build_world_judge(seed=cfg.loop.seed, **sizes)
    judge.model.requires_grad_(True)
    mixed = JudgeVQADataset(
        10**9, seed=cfg.loop.seed, split="train", resolution=cfg.resolution, pair_prob=cfg.model.get("pair_prob", 0.5)
    )
    # curriculum: single-image questions first (they break the symmetry of a from-scratch VLM), then the mix
    single = JudgeVQADataset(10**9, seed=cfg.loop.seed + 1, split="train", resolution=cfg.resolution, pair_prob=0.0)
    first = cfg.model.get("single_only_steps", 0)

    # captioning alongside (dense image-to-text supervision: every attribute and position, as VLMs are
    # pretrained) lets a from-scratch VLM learn to read the image; the Yes/No loss alone stays at chance for long
    n_cap, cap_weight = cfg.model.get("caption_batch", 0), cfg.model.get("caption_weight", 1.0)

    def batch(step):
        ds = single if step < first else mixed
        b = collate_vqa(ds.__getitems__(list(range(step * cfg.batch, (step + 1) * cfg.batch))))
        if n_cap:
            scenes = [sample_scene(item_seed(cfg.loop.seed + 2, "train", step * n_cap + i)) for i in range(n_cap)]
            b["cap_images"] = render(scenes, cfg.resolution)[0] * 2 - 1
            b["captions"] = [describe_placed(sc) for sc in scenes]
        return b

    source = Prefetch(batch)

    def step_loss(j, b):
        vqa = j.loss(b["images"], b["question"], b["label"]).mean()
        if not n_cap:
            return vqa, {}
        cap = j.caption_loss(b["cap_images"], b["captions"])
        return vqa + cap_weight * cap, {"vqa": vqa.item(), "caption": cap.item()}

    result = train(
        judge, source, step_loss, cfg.loop, out, resume=resume, title=NAME, params=list(judge.model.parameters())
    )
    final = result["ema"] or judge
    final.model.requires_grad_(False)
    metrics = evaluate(final, cfg.loop.seed, cfg.eval_items, cfg.resolution)
    export = out / "model"
    export.mkdir(parents=True, exist_ok=True)
    final.model.save_pretrained(export)
    final.tokenizer.save_pretrained(export)
    (export / "judge.json").write_text(
        json.dumps({"image_size": final.config.image_size, "answer_tokens": list(final.config.answer_tokens)})
    )
    (export / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if (out / "loss.png").exists():
        (export / "loss.png").write_bytes((out / "loss.png").read_bytes())
    write_card(
        export / "MODEL_CARD.md",
        NAME,
        "A tiny Qwen2.5-VL (transformers' own class; 4 vision + 4 language layers, width 128, 112-px images) "
        "with the world's word-level tokenizer, trained from scratch to answer Yes/No about shapes-world images. "
        "It stands in for the frozen pretrained VLM judge of the paper.",
        "`JudgeVQADataset` (train seeds): half single-image attribute questions (near-miss negatives), half "
        "two-image verification / identity questions with true, unchanged, wrong and extra-change edits; exactly "
        "balanced Yes/No. Loss: the fused two-token CE. Held-out: `val` seeds; the benchmark set (held-out "
        "instruction templates) for the verification AUC.",
        result,
        metrics,
        command_line(),
        [
            ("single-image accuracy", metrics["single accuracy"], 0.95),
            ("two-image accuracy", metrics["pair accuracy"], 0.90),
            ("verification AUC (benchmark)", metrics["verification AUC (benchmark)"], 0.95),
        ],
    )
    if cfg.ship:
        ship(out, NAME)
    return metrics
