"""``pairfree pretrain judge``: train the tiny Qwen2.5-VL judge on the world's Yes/No VQA with the same fused
two-token loss it is used with, then measure it on held-out questions and on the benchmark's verification
question (does its P(Yes) separate ground-truth edits from unedited inputs?)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pairfree import evaluator as attributes
from pairfree.judge.qwen import QwenJudge, answer_positions
from pairfree.judge.world import build_world_judge
from pairfree.kernels.judge_loss import judge_loss
from pairfree.pretrain.common import Prefetch, PretrainConfig, command_line, ship, write_card
from pairfree.pretrain.loop import train
from pairfree.shipped import model_name
from pairfree.world.bench import build_bench
from pairfree.world.captions import TEXTURE_ADJ, describe_placed
from pairfree.world.datasets import JudgeVQADataset, collate_vqa, item_seed
from pairfree.world.edits import render_edits
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.spec import FULL, WorldSpec, get_spec, save_spec

TRAINING_KEYS = (
    "pair_prob",
    "difference_prob",
    "single_only_steps",
    "caption_batch",
    "caption_weight",
    "vision_steps",
    "dense_batch",
    "truth_weight",
    "align_weight",
    "diff_weight",
    "init_from",
    "adv_eps",
    "adv_steps",
    "adv_weight",
    "adv_noise",
)


class CellProbe(nn.Module):
    """Attribute heads on the judge's merged vision tokens — one token per grid cell when the image size is
    2 patches per cell (28 px per cell at patch 14, merge 2). Training only: dense per-cell targets teach a
    from-scratch vision tower to see before (and while) the language model learns to ask about what it sees."""

    def __init__(self, width: int, spec: WorldSpec = FULL):
        super().__init__()
        names, self.grid = attributes.vocab(spec), spec.grid
        self.cells = nn.ModuleDict({k: nn.Linear(width, len(names[k])) for k in attributes.CELL_HEADS})
        self.scene = nn.ModuleDict({k: nn.Linear(2 * width, len(names[k])) for k in attributes.GLOBAL_HEADS})

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if tokens.shape[1] != self.grid**2:
            raise ValueError(
                f"judge dense pretraining: {tokens.shape[1]} vision tokens per image, expected one per grid cell "
                f"({self.grid**2}); set model.image_size to {self.grid * 28}"
            )
        pooled = torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)
        out = {k: h(tokens) for k, h in self.cells.items()}
        out.update({k: h(pooled) for k, h in self.scene.items()})
        return out


class JudgeTrainee(nn.Module):
    """What the loop trains: the judge and its training-only cell probe (the probe is not exported)."""

    def __init__(self, judge: QwenJudge, spec: WorldSpec = FULL):
        super().__init__()
        width = judge.model.config.vision_config.out_hidden_size
        self.judge, self.probe, self.grid = judge, CellProbe(width, spec), spec.grid
        self.diff_probe = nn.Linear(judge.model.config.text_config.hidden_size, 1)

    def vqa_loss(self, b: dict, truth_weight: float, diff_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """The two-token Yes/No CE (``vqa``); at the same answer position, the full-vocabulary CE of the asked
        attribute's true value (``truth``: "blue" for "is the background red?") — a dense signal for the
        question-keyed look-up that the 1-bit answer alone teaches very slowly from scratch; and on two-image
        questions, whether each grid cell differs between the images (``diff``), read from the second image's
        tokens one layer below the top (what the answer position attends to): it teaches the language model to
        compare the two images cell by cell, which the long verification questions did not teach on their own."""
        j = self.judge
        pairs = [i for i, d in enumerate(b.get("diff") or []) if d is not None] if diff_weight else []
        hidden, ids, mask = j.hidden_states(b["images"], b["question"], all_layers=bool(pairs))
        h = answer_positions(hidden[-1] if pairs else hidden, mask)
        no_id, yes_id = (int(i) for i in j.answer_ids)
        out = {"vqa": judge_loss(h, j.model.lm_head.weight, yes_id, no_id, b["label"]).mean()}
        rows = [i for i, w in enumerate(b["truth"]) if w]
        if truth_weight and rows:
            truth_ids = torch.tensor(j.tokenizer.convert_tokens_to_ids([b["truth"][i] for i in rows]), device=h.device)
            out["truth"] = F.cross_entropy(j.model.lm_head(h[rows]).float(), truth_ids)
        if pairs:
            pad = j.model.config.image_token_id
            n = j.tokens_per_image
            below_top = hidden[-2]
            second = torch.stack([below_top[i][ids[i] == pad][n : 2 * n] for i in pairs])  # (P, 9, D)
            target = torch.tensor([b["diff"][i] for i in pairs], dtype=torch.float32, device=h.device)
            logits = self.diff_probe(second).squeeze(-1).float()
            out["diff"] = F.binary_cross_entropy_with_logits(logits, target)
            out["diff acc"] = ((logits > 0).float() == target).float().mean()
        return out

    def dense_loss(self, images: torch.Tensor, scenes, align_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """Per-cell attribute CE of the probe; with ``align_weight``, also pull each cell token toward the sum of
        the word embeddings that name its content (object: colour, shape, texture, size; empty: the background)
        — the image tokens then resemble the question's words, and "is it red?" becomes a similarity test."""
        tokens = self.judge.vision_tokens(images)
        out = self.probe(tokens)
        tgt = {k: v.to(tokens.device) for k, v in attributes.targets(scenes).items()}
        loss, acc = attributes.loss(out, tgt), attributes.accuracy(out, tgt)
        if align_weight:
            target = self.cell_word_embeddings(scenes).to(tokens.dtype)
            align = 1 - F.cosine_similarity(tokens, target.detach(), dim=-1).mean()
            loss = loss + align_weight * align
            acc["align"] = align.item()
        return loss, acc

    def cell_word_embeddings(self, scenes) -> torch.Tensor:
        """``(B, cells, D)``: per cell, the summed input embeddings of the words describing it (cosine-compared, so
        the background's two words are counted twice to match an object's four)."""
        tok = self.judge.tokenizer
        words = []
        for sc in scenes:
            cells = [[sc.background, TEXTURE_ADJ[sc.background_texture]] * 2 for _ in range(self.grid**2)]
            for o in sc.objects:
                cells[o.row * self.grid + o.col] = [o.color, o.shape, TEXTURE_ADJ[o.texture], o.size]
            words.append(cells)
        ids = torch.tensor([[tok.convert_tokens_to_ids(c) for c in cells] for cells in words])  # (B, 9, k)
        emb = self.judge.model.get_input_embeddings().weight
        return emb[ids.to(emb.device)].sum(-2)


def adversarial_images(
    m: JudgeTrainee, b: dict, eps: float, steps: int, start: torch.Tensor, noise: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """``b``'s images with the last image of every question (the editor's output: what it can change) first
    corrupted by ``noise`` (``(B, 3, R, R)``, e.g. Gaussian of a random σ per image) and then moved by an
    L∞ ≤ ``eps`` PGD attack on the Yes/No loss, from the random start ``start`` (``(B, 3, R, R)`` in [-1, 1]).
    The answers stay the clean scene's: noise and a change this small do not change what the image shows (for
    "was the instruction carried out?" a noisy copy of the input is still a No).

    Why: a judge trained on clean renders only is fooled by tiny perturbations — optimising pixels against it
    raises P(correct) to 0.96 without a single real edit (the evaluator sees none), and so does the editor.
    Adversarial training makes its gradients perceptually aligned (Santurkar et al. 2019, "Image synthesis with
    a single robust classifier"): following them changes what the image shows."""
    images = b["images"]
    last = torch.stack([x[-1] for x in images])
    if noise is not None:
        last = (last + noise).clamp(-1, 1)
    delta = start * eps
    alpha = 1.25 * eps if steps == 1 else 2.5 * eps / max(steps, 1)  # FGSM with a random start (Wong et al. 2020); PGD
    for _ in range(steps):
        delta.requires_grad_(True)
        adv = [torch.cat([x[:-1], (y + d)[None].clamp(-1, 1)]) for x, y, d in zip(images, last, delta)]
        loss = m.judge.loss(adv, b["question"], b["label"]).mean()
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps).detach()
    return [torch.cat([x[:-1], (y + d)[None].clamp(-1, 1)]) for x, y, d in zip(images, last, delta)]


def export_judge(judge: QwenJudge, path: Path, spec: WorldSpec = FULL) -> Path:
    """The judge as a directory ``pairfree.pretrained("<world>-judge", path)`` loads (weights, tokenizer,
    ``judge.json``, ``world.json``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    judge.model.save_pretrained(path)
    judge.tokenizer.save_pretrained(path)
    meta = {
        "image_size": judge.config.image_size,
        "answer_tokens": list(judge.config.answer_tokens),
        "question_first": judge.config.question_first,
        "mrope": judge.config.mrope,
    }
    (path / "judge.json").write_text(json.dumps(meta))
    save_spec(path, spec)
    return path


def load_trainee_weights(path) -> dict:
    """The model weights of a judge pretraining checkpoint (``checkpoint.pt``), for a warm start."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: {path} is not a file (expected a judge run's checkpoint.pt)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "model" not in state:
        raise ValueError(f"model.init_from: {path} has no 'model' entry (not a pretraining checkpoint)")
    return state["model"]


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties count half."""
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


@torch.no_grad()
def evaluate(judge: QwenJudge, seed: int, n: int, resolution: int, spec: WorldSpec = FULL) -> dict:
    """Held-out accuracy on single- and two-image questions of world ``spec``, and the verification AUC on its
    benchmark edits (ground-truth edit vs unedited input)."""
    judge.eval()
    ds = JudgeVQADataset(n, seed=seed, split="val", resolution=resolution, spec=spec)
    right = {"single": [0, 0], "pair": [0, 0]}
    for start in range(0, len(ds), 32):
        b = collate_vqa(ds.__getitems__(list(range(start, min(start + 32, len(ds))))))
        pred = (judge(b["images"], b["question"]).argmax(-1) == b["label"]).tolist()
        for kind, ok in zip(b["kind"], pred):
            right[kind][0] += ok
            right[kind][1] += 1
    metrics = {f"{k} accuracy": r / max(t, 1) for k, (r, t) in right.items()}
    # the short difference questions (a training stepping stone; reported, not a bar)
    diff = JudgeVQADataset(max(32, n // 5), seed=seed, split="val", resolution=resolution, pair_prob=1.0,
                           difference_prob=1.0, spec=spec)  # fmt: skip
    ok = []
    for start in range(0, len(diff), 32):
        b = collate_vqa(diff.__getitems__(list(range(start, min(start + 32, len(diff))))))
        ok += (judge(b["images"], b["question"]).argmax(-1) == b["label"]).tolist()
    metrics["difference accuracy"] = sum(ok) / len(ok)
    # the editor's verification question on the benchmark set: GT edit (positive) vs unedited input (negative)
    edits = build_bench(max(2, min(50, n // 20)), seed=0, spec=spec)
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
    spec = get_spec(cfg.world)
    name = model_name("judge", spec)
    sizes = {k: v for k, v in cfg.model.items() if k not in TRAINING_KEYS}
    judge = build_world_judge(seed=cfg.loop.seed, **sizes)
    judge.model.requires_grad_(True)
    trainee = JudgeTrainee(judge, spec)
    mixed = JudgeVQADataset(
        10**9,
        seed=cfg.loop.seed,
        split="train",
        resolution=cfg.resolution,
        spec=spec,
        pair_prob=cfg.model.get("pair_prob", 0.5),
        difference_prob=cfg.model.get("difference_prob", 0.0),
    )
    # curriculum: (1) the vision tower alone on dense per-cell attribute targets; (2) single-image questions
    # (they break the symmetry of a from-scratch VLM); (3) the mix. Dense targets stay on as an auxiliary loss.
    single = JudgeVQADataset(
        10**9, seed=cfg.loop.seed + 1, split="train", resolution=cfg.resolution, pair_prob=0.0, spec=spec
    )
    vision_steps = cfg.model.get("vision_steps", 0)
    first = vision_steps + cfg.model.get("single_only_steps", 0)
    n_dense = cfg.model.get("dense_batch", 64)
    # captioning alongside (dense image-to-text supervision: every attribute and position, as VLMs are
    # pretrained) lets a from-scratch VLM learn to read the image; the Yes/No loss alone stays at chance for long
    n_cap, cap_weight = cfg.model.get("caption_batch", 0), cfg.model.get("caption_weight", 1.0)
    truth_weight = cfg.model.get("truth_weight", 0.0)
    align_weight = cfg.model.get("align_weight", 0.0)
    diff_weight = cfg.model.get("diff_weight", 0.0)
    init_from = cfg.model.get("init_from")
    adv_eps, adv_steps = cfg.model.get("adv_eps", 0.0), cfg.model.get("adv_steps", 1)
    adv_weight, adv_noise = cfg.model.get("adv_weight", 1.0), cfg.model.get("adv_noise", 0.0)
    if init_from and not resume:  # warm start: a previous run's weights, a fresh optimizer and schedule
        trainee.load_state_dict(load_trainee_weights(init_from), strict=False)

    def scenes_at(step, n):
        return [sample_scene(item_seed(cfg.loop.seed + 2, "train", step * n + i), spec) for i in range(n)]

    def batch(step):
        if step < vision_steps:
            scenes = scenes_at(step, n_dense)
            return {"dense_images": render(scenes, cfg.resolution)[0] * 2 - 1, "scenes": scenes}
        ds = single if step < first else mixed
        b = collate_vqa(ds.__getitems__(list(range(step * cfg.batch, (step + 1) * cfg.batch))))
        if n_cap:
            scenes = scenes_at(step, n_cap)
            b["cap_images"] = render(scenes, cfg.resolution)[0] * 2 - 1
            b["captions"] = [describe_placed(sc) for sc in scenes]
            b["scenes"] = scenes
        if adv_eps:  # the PGD random start, seeded by the step (a resumed run repeats itself)
            g = torch.Generator().manual_seed(item_seed(cfg.loop.seed + 3, "train", step) % 2**63)
            r = cfg.resolution
            n = len(b["question"])
            b["adv_start"] = torch.rand(n, 3, r, r, generator=g) * 2 - 1
            sigma = adv_noise * torch.rand(n, 1, 1, 1, generator=g)  # σ ~ U(0, adv_noise) per image
            b["adv_noise"] = sigma * torch.randn(n, 3, r, r, generator=g)
        return b

    def step_loss(m: JudgeTrainee, b):
        if "dense_images" in b:
            dense, acc = m.dense_loss(b["dense_images"], b["scenes"], align_weight)
            align = acc.pop("align", None)
            logs = {"dense": dense.item(), "cell acc": sum(acc.values()) / len(acc)}
            return dense, logs if align is None else {**logs, "align": align}
        terms = m.vqa_loss(b, truth_weight, diff_weight)
        loss = terms["vqa"] + truth_weight * terms.get("truth", 0.0) + diff_weight * terms.get("diff", 0.0)
        logs = {k: v.item() for k, v in terms.items()}
        if adv_eps:
            attacked = adversarial_images(m, b, adv_eps, adv_steps, b["adv_start"], b["adv_noise"])
            adv = m.judge.loss(attacked, b["question"], b["label"]).mean()
            loss = loss + adv_weight * adv
            logs["adv"] = adv.item()
        if n_cap:
            cap = m.judge.caption_loss(b["cap_images"], b["captions"])
            dense, _ = m.dense_loss(b["cap_images"], b["scenes"], align_weight)
            loss = loss + cap_weight * cap + dense
            logs.update(caption=cap.item(), dense=dense.item())
        return loss, logs

    result = train(trainee, Prefetch(batch, cfg.loop.prefetch), step_loss, cfg.loop, out, resume=resume, title=name)
    judge = trainee.judge
    if not result["is_main"]:  # data-parallel: rank 0 exports, evaluates and writes the card
        return {}
    final = result["ema"].judge if result["ema"] is not None else judge
    final.model.requires_grad_(False)
    metrics = evaluate(final, cfg.loop.seed, cfg.eval_items, cfg.resolution, spec)
    metrics["minutes"] = result["wall_s"] / 60
    export = export_judge(final, out / "model", spec)
    (export / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if (out / "loss.png").exists():
        (export / "loss.png").write_bytes((out / "loss.png").read_bytes())
    vc, tc = final.model.config.vision_config, final.model.config.text_config
    write_card(
        export / "MODEL_CARD.md",
        name,
        f"A tiny Qwen2.5-VL (transformers' own class; {vc.depth} vision + {tc.num_hidden_layers} language layers, "
        f"width {tc.hidden_size}, {final.config.image_size}-px images: one merged vision token per grid cell) with "
        "the world's word-level tokenizer, trained from scratch to answer Yes/No about shapes-world images. "
        "It stands in for the frozen pretrained VLM judge of the paper.",
        f"Curriculum: {vision_steps} steps of the vision tower alone on dense per-cell attribute targets "
        f"({n_dense} images/step, a linear probe per cell token), then Yes/No questions ({cfg.batch}/step; "
        f"single-image only for the first {first - vision_steps}) with captioning ({n_cap} images/step) and the "
        "dense targets and the asked attribute's true value as auxiliary losses"
        + (f"; on two-image questions, which cells differ (weight {diff_weight})" if diff_weight else "")
        + (
            f"; adversarial training: every question's last image also with Gaussian noise (σ ~ U(0, {adv_noise})) "
            f"and under an L∞ ≤ {adv_eps} PGD attack "
            f"({adv_steps} step(s), weight {adv_weight}), answers unchanged — perceptually aligned gradients"
            if adv_eps
            else ""
        )
        + (f". Warm-started from `{init_from}` (fresh optimizer and schedule)" if init_from else "")
        + f". World `{spec.name}`. `JudgeVQADataset` (train "
        "seeds): single-image attribute questions (near-miss negatives) and "
        "two-image verification / identity questions with true, unchanged, wrong and extra-change edits; exactly "
        "balanced Yes/No. Loss: the fused two-token CE. Held-out: `val` seeds; the benchmark set (held-out "
        "instruction templates) for the verification AUC.",
        result,
        metrics,
        command_line(),
        [
            ("single-image accuracy", metrics["single accuracy"], 0.97),
            ("two-image accuracy", metrics["pair accuracy"], 0.95),
            ("verification AUC (benchmark)", metrics["verification AUC (benchmark)"], 0.98),
        ],
    )
    if cfg.ship:
        ship(out, name)
    return metrics
