"""Memory and time of one generator training step through the unrolled few-step sampler, K ∈ {1, 2, 4}:
naive (plain autograd through every step, eager diffusers-style linear attention, eager losses) vs pairfree
(checkpointed unroll, fused linear attention on GPU, fused DMD loss). Random weights at SANA-1.6B width
(70 heads × 32 = 2240, cross-attention 20 × 112, text 300 × 2304, 32-channel 32×32 latents) with fewer layers
(``--layers``, stated in the results) so the naive baseline fits one GPU.

Peak memory: CUDA allocator peak on GPU; on CPU the exact live tensor bytes of pairfree.memory.LiveBytesMeter.

    python benchmarks/unroll_memory.py                  # GPU: SANA-1.6B width, 4 layers
    python benchmarks/unroll_memory.py --quick          # tiny CPU smoke run (CI)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench_args, markdown_table, measure_ms, run_metadata, save, step_peak_mib  # noqa: E402
from pairfree.flow import few_step_schedule, x0_from_velocity  # noqa: E402
from pairfree.kernels.dmd import dmd_loss, dmd_loss_reference  # noqa: E402
from pairfree.models import DiT, DiTConfig  # noqa: E402
from pairfree.models.presets import tiny_dit_config  # noqa: E402
from pairfree.unroll import unroll  # noqa: E402


def build(args, device, dtype):
    if args.quick:
        cfg = tiny_dit_config(channels=4, width=32, text_dim=16, patch_size=1)
        latent, text_len = (2, 4, 8, 8), 7
    else:
        cfg = DiTConfig(num_layers=args.layers)  # SANA-1.6B widths
        latent, text_len = (args.batch, 32, args.latent, args.latent), 300
    torch.manual_seed(0)
    model = DiT(cfg).to(device, dtype)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(latent[0], text_len, cfg.text_dim, generator=g).to(device, dtype)
    ref = torch.randn(*latent, generator=g).to(device, dtype)
    real, fake = (torch.randn(*latent, generator=g).to(device, dtype) for _ in range(2))
    noise = torch.randn(*latent, generator=g).to(device, dtype)
    return model, text, ref, real, fake, noise


def step_fn(model, text, ref, real, fake, noise, k, variant):
    def run():
        step = lambda x, t: x0_from_velocity(x, model(x, t, text, None, reference=ref), t)
        out = unroll(
            step,
            noise,
            few_step_schedule(4),
            k,
            generator=torch.Generator(noise.device).manual_seed(2),
            checkpoint=variant == "pairfree",
        )
        loss = (dmd_loss(out, real, fake) if variant == "pairfree" else dmd_loss_reference(out, real, fake)).mean()
        loss.backward()
        model.zero_grad(set_to_none=False)

    return run


def main(argv=None):
    def _extra(q):
        q.add_argument("--layers", type=int, default=4)
        q.add_argument("--batch", type=int, default=1)
        q.add_argument("--latent", type=int, default=32)

    args, device, dtype = bench_args(__doc__, argv, _extra)
    repeats = args.repeats or (2 if args.quick else 5)
    model, text, ref, real, fake, noise = build(args, device, dtype)
    for prm in model.parameters():
        prm.grad = torch.zeros_like(prm)  # gradients exist before the step: not part of what it costs
    rows = []
    for variant in ("naive", "pairfree"):
        # naive: diffusers-style eager linear attention; pairfree: the fused kernel (Triton on GPU)
        os.environ["PAIRFREE_LINEAR_ATTENTION_BACKEND"] = "reference" if variant == "naive" else "auto"
        for k in (1, 2, 4):
            run = step_fn(model, text, ref, real, fake, noise, k, variant)
            t = measure_ms(run, device=device, warmup=1, repeats=repeats)
            mem = step_peak_mib(run, device)
            rows.append(
                {
                    "variant": variant,
                    "K": k,
                    "median_ms": t["median"],
                    "p20_ms": t["p20"],
                    "p80_ms": t["p80"],
                    "peak_MiB": mem,
                }
            )
    os.environ.pop("PAIRFREE_LINEAR_ATTENTION_BACKEND", None)
    base = {r["K"]: r for r in rows if r["variant"] == "naive"}
    for r in rows:
        r["memory vs naive"] = r["peak_MiB"] / base[r["K"]]["peak_MiB"]
        r["time vs naive"] = r["median_ms"] / base[r["K"]]["median_ms"]
    meta = run_metadata(device)
    cfg = model.config
    meta["model"] = (
        f"DiT width {cfg.width}, {cfg.num_layers} layers, latents {tuple(noise.shape)}, "
        f"text {tuple(text.shape)}, random weights"
    )
    fname = f"unroll_memory_{'quick_' if args.quick else ''}{device.type}"
    path = save(fname, rows, meta, args.out) if args.out else save(fname, rows, meta)
    print(f"# generator step memory on {meta['device']} ({meta['model']}, {dtype})")
    print(markdown_table(rows, ["variant", "K", "median_ms", "peak_MiB", "memory vs naive", "time vs naive"]))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
