"""One full pair-free training step (``EditorTrainer.edit_step``: generator unroll with K steps, DC-AE decode,
judge loss on the verification and identity questions, DMD with the teacher (CFG) and the critic, N_aux critic
updates, optimizer steps) at paper widths with random weights — naive vs pairfree, K ∈ {1, 2, 4}.

* naive: plain PyTorch ops everywhere (``PAIRFREE_BACKEND=reference``), eager attention in the judge, no
  checkpointing in the unroll, and weight gradients on the frozen judge (what a plain ``requires_grad`` setup
  computes and throws away).
* pairfree: the dispatched kernels (Triton / CUDA on GPU), the judge's attention through pairfree's kernel,
  checkpointed unroll, input-only gradients through the frozen judge.
* pairfree+bf16: the same with ``mixed_precision: bf16`` (autocast, fp32 master weights, the frozen teacher and
  judge cast to bf16 — in place, so this variant runs last).

Sizes: SANA-1.6B DiT widths (2240, 32-channel latents, 300×2304 text) with ``--layers`` blocks; Qwen2.5-VL-7B
widths with ``--judge-layers`` language and ``--vision-layers`` vision blocks; DC-AE f32c32 at full size; 512²
images → 16×16 latents; judge images 448². The text encoder is a frozen stand-in returning fixed random
embeddings of SANA's shape (Gemma runs without gradients and identically in both variants). Stated in the
results. Peak memory: CUDA allocator peak of the step (weights and optimizer states included) on GPU; on CPU
the bytes the step itself allocates (``LiveBytesMeter``; weights and optimizer states made beforehand are not
counted).

    python benchmarks/train_step.py                 # GPU, one H100: 4 DiT layers, 4+4 judge layers
    python benchmarks/train_step.py --quick         # tiny CPU smoke run (CI)
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench_args, markdown_table, measure_ms, run_metadata, save, step_peak_mib  # noqa: E402

try:  # AutoencoderDC warns about fp32-kept modules it does not have
    from diffusers.utils import logging as _dlogging

    _dlogging.set_verbosity_error()
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[1]


class FixedTextEncoder(nn.Module):
    """Frozen stand-in for the text encoder: fixed random embeddings ``(B, length, dim)``, all tokens real."""

    def __init__(self, length: int, dim: int, device, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("table", torch.randn(length, dim, generator=g).to(device, dtype) * 0.5)

    def encode(self, texts):
        b = len(texts)
        mask = torch.ones(b, self.table.shape[0], dtype=torch.bool, device=self.table.device)
        return self.table.expand(b, -1, -1), mask


def build_judge(args, device, dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from pairfree.judge.qwen import JudgeConfig, QwenJudge
    from pairfree.judge.world import tiny_qwen_config
    from pairfree.models.tokenizer import build_world_tokenizer

    tok = build_world_tokenizer()
    if args.quick:
        config = tiny_qwen_config(tok, width=32, vision_layers=1, text_layers=1, heads=2, kv_heads=1)
        size = 56
    else:
        data = yaml.safe_load((ROOT / "configs/models/qwen2_5_vl_7b.yaml").read_text())["qwen2_5_vl"]
        ids = tok.convert_tokens_to_ids
        data.update(
            image_token_id=ids("<|image_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            video_token_id=tok.unk_token_id,
        )
        data["text_config"].update(
            num_hidden_layers=args.judge_layers, vocab_size=len(tok), pad_token_id=tok.pad_token_id
        )
        v = args.vision_layers
        data["vision_config"].update(depth=v, fullatt_block_indexes=[v - 1])
        config = Qwen2_5_VLConfig(**data)
        size = 448
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(device, dtype)
    return QwenJudge(model, tok, JudgeConfig(image_size=size, answer_tokens=("no", "yes")))


def build_models(args, device, dtype):
    from diffusers import AutoencoderDC

    from pairfree.models.bundle import FlowModel
    from pairfree.models.dit import DiT, DiTConfig
    from pairfree.train.models import EditorModels, with_reference_skip

    if args.quick:
        dit_cfg = DiTConfig(
            in_channels=4, out_channels=4, num_layers=1, num_heads=2, head_dim=16, cross_heads=2, cross_head_dim=16,
            text_dim=16, patch_size=1,
        )  # fmt: skip
        ae = AutoencoderDC(
            in_channels=3, latent_channels=4, attention_head_dim=4,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        )  # fmt: skip
        text_len = 7
    else:
        dit_cfg = DiTConfig(num_layers=args.layers)  # SANA-1.6B widths
        ae = AutoencoderDC(**yaml.safe_load((ROOT / "configs/models/dc_ae_f32c32.yaml").read_text())["dc_ae"])
        text_len = 300
    from pairfree.models.autoencoder import DCAutoencoder

    torch.manual_seed(0)
    dit = DiT(dit_cfg).to(device, dtype)
    text = FixedTextEncoder(text_len, dit_cfg.text_dim, device, dtype)
    teacher = FlowModel(dit, text).requires_grad_(False).eval()
    generator = FlowModel(with_reference_skip(dit).to(device, dtype), text)
    generator.dit.requires_grad_(True)
    critic = FlowModel(copy.deepcopy(dit), text)
    critic.dit.requires_grad_(True)
    autoencoder = DCAutoencoder(ae.to(device, dtype))
    return EditorModels(generator, critic, teacher, build_judge(args, device, dtype), autoencoder)


def trainer_for(args, models, k: int, variant: str, out: str):
    from pairfree.train.config import TrainConfig
    from pairfree.train.trainer import EditorTrainer

    cfg = TrainConfig(out=out, batch=args.batch, copy_steps=0, steps=10**6)
    cfg.mixed_precision = "bf16" if variant.endswith("+bf16") else "no"
    cfg.models.resolution = 64 if args.quick else 512
    cfg.sampler.steps, cfg.sampler.random_k, cfg.sampler.checkpoint = k, False, variant != "naive"
    cfg.loss.do_nothing_prob, cfg.loss.temperature_steps = 0.0, 0
    cfg.optim.ema, cfg.optim.critic_updates = 0.0, args.critic_updates
    cfg.optim.skip_grad_norm = float("inf")  # a random-weight step must update (never skip) to be timed
    return EditorTrainer(cfg, models)


def set_variant(models, variant: str) -> None:
    from pairfree.kernels import patch_qwen2_5_vl

    judge = models.judge.model
    if variant == "naive":
        os.environ["PAIRFREE_BACKEND"] = "reference"
        judge.set_attn_implementation("eager")
        judge.requires_grad_(True)
    else:
        os.environ.pop("PAIRFREE_BACKEND", None)
        patch_qwen2_5_vl(judge)
        judge.requires_grad_(False)
        judge.zero_grad(set_to_none=True)


def main(argv=None):
    def _extra(q):
        q.add_argument("--layers", type=int, default=4, help="DiT blocks (SANA-1.6B has 20)")
        q.add_argument("--judge-layers", type=int, default=4, help="judge language blocks (Qwen2.5-VL-7B: 28)")
        q.add_argument("--vision-layers", type=int, default=4, help="judge vision blocks (Qwen2.5-VL-7B: 32)")
        q.add_argument("--batch", type=int, default=1)
        q.add_argument("--critic-updates", type=int, default=5)
        q.add_argument("--ks", default="1,2,4")

    args, device, dtype = bench_args(__doc__, argv, _extra)
    if args.quick:
        args.critic_updates = min(args.critic_updates, 1)
    repeats = args.repeats or (1 if args.quick else 3)
    models = build_models(args, device, dtype)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("naive", "pairfree", "pairfree+bf16"):
            set_variant(models, variant)
            for k in (int(x) for x in args.ks.split(",")):
                state = {"step": 0, "trainer": trainer_for(args, models, k, variant, tmp)}

                def run():
                    logs = state["trainer"].edit_step(state["step"])
                    state["step"] += 1
                    if not torch.isfinite(torch.tensor(logs["loss"])) or logs.get("skipped", 0):
                        raise RuntimeError(f"{variant} K={k}: the step did not update ({logs})")

                run()  # optimizer states exist before anything is measured
                t = measure_ms(run, device=device, warmup=0, repeats=repeats)
                mem = step_peak_mib(run, device)
                rows.append({"variant": variant, "K": k, "median_ms": t["median"], "peak_MiB": mem})
                del state["trainer"]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    os.environ.pop("PAIRFREE_BACKEND", None)
    base = {r["K"]: r for r in rows if r["variant"] == "naive"}
    k1 = {r["variant"]: r["peak_MiB"] for r in rows if r["K"] == min(base)}
    for r in rows:
        r["memory vs naive"] = r["peak_MiB"] / base[r["K"]]["peak_MiB"]
        r["time vs naive"] = r["median_ms"] / base[r["K"]]["median_ms"]
        r[f"memory vs K={min(base)}"] = r["peak_MiB"] / k1[r["variant"]]
    meta = run_metadata(device)
    dc, jc = models.generator.dit.config, models.judge.model.config
    meta["model"] = (
        f"DiT width {dc.width}, {dc.num_layers} blocks; judge width {jc.text_config.hidden_size}, "
        f"{jc.text_config.num_hidden_layers}+{jc.vision_config.depth} blocks, {models.judge.config.image_size}² "
        f"images; batch {args.batch}; N_aux {args.critic_updates}; random weights; text encoder a fixed stand-in"
    )
    fname = f"train_step_{'quick_' if args.quick else ''}{device.type}"
    path = save(fname, rows, meta, args.out) if args.out else save(fname, rows, meta)
    print(f"# full training step on {meta['device']} ({meta['model']}, {dtype})")
    cols = ["variant", "K", "median_ms", "peak_MiB", "memory vs naive", "time vs naive", f"memory vs K={min(base)}"]
    print(markdown_table(rows, cols))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
