"""One DiT block forward + backward at SANA-1.6B width (2240): the unfused eager block vs pairfree's block (every
norm through the fused modulated-norm op with the residual add folded in) vs torch.compile of each. Time, and
the exact bytes autograd saves for backward (``pairfree.memory.SavedTensorsMeter``: machine-independent).

The eager block is the same modules (attention, cross-attention, Mix-FFN) with the residual adds and
LayerNorms written as separate PyTorch ops — what the DiT ran before the fused op; both compute the same
function (checked before timing).

    python benchmarks/dit_block.py             # CPU: 2×256 tokens; GPU: 2×1024 and 2×4096 tokens
    python benchmarks/dit_block.py --quick     # tiny smoke run (CI)

Prints a markdown table and writes benchmarks/results/dit_block_<device>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench_args, markdown_table, measure_ms, run_metadata, save  # noqa: E402
from pairfree.memory import SavedTensorsMeter  # noqa: E402
from pairfree.models.dit import DiTBlock, DiTConfig  # noqa: E402

SIZES = {"cpu": [(2, 16, 16)], "cuda": [(2, 32, 32), (2, 64, 64)], "quick": [(2, 4, 4)]}  # (B, H, W) tokens


def eager_block(block: DiTBlock, x, temb, text, mask, grid, h_prev, gate_prev):
    """``block`` with its residual adds and norms as separate eager ops (no fused op)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (block.modulation + temb).unbind(2)
    norm = lambda t: F.layer_norm(t, t.shape[-1:], eps=block.eps)
    x = x + gate_prev * h_prev
    x = x + gate_msa * block.self_attn(norm(x) * (1 + scale_msa) + shift_msa)
    x = x + block.cross_attn(x, text, mask)
    return x, block.ffn(norm(x) * (1 + scale_mlp) + shift_mlp, grid), gate_mlp


def fused_block(block: DiTBlock, *args):
    return block(*args)


def main(argv=None):
    args, device, dtype = bench_args(__doc__, argv)
    quick = args.quick
    cfg = DiTConfig(num_layers=1) if not quick else DiTConfig(num_layers=1, num_heads=2, head_dim=16, cross_heads=2,
                                                                 cross_head_dim=16, text_dim=32)  # fmt: skip
    torch.manual_seed(0)
    block = DiTBlock(cfg).to(device, dtype)
    d, repeats = cfg.width, args.repeats or (1 if quick else 3)
    providers = {"eager": eager_block, "pairfree": fused_block}
    if not quick:
        providers["torch.compile(eager)"] = torch.compile(eager_block)
        providers["torch.compile(pairfree)"] = torch.compile(fused_block)
    rows = []
    for b, hh, ww in SIZES["quick" if quick else device.type]:
        n = hh * ww
        g = torch.Generator().manual_seed(1)
        rnd = lambda *s: (torch.randn(*s, generator=g) * 0.5).to(device, dtype)
        x, h_prev, temb, text = rnd(b, n, d), rnd(b, n, d), rnd(b, 1, 6, d), rnd(b, 32, d)  # text: projected
        gate_prev, mask = rnd(b, 1, d), torch.ones(b, 32, dtype=torch.bool, device=device)
        leaves = [x, h_prev, temb]

        def step(fn):
            inputs = [t.detach().requires_grad_(True) for t in leaves]
            xo, h, gate = fn(block, inputs[0], inputs[2], text, mask, (hh, ww), inputs[1], gate_prev)
            out = xo + gate * h
            torch.autograd.grad(out.square().mean(), inputs + [p for p in block.parameters()])
            return out.detach()

        ref = step(eager_block)
        torch.testing.assert_close(step(fused_block), ref, rtol=2e-3, atol=2e-3)  # the same function
        for name, fn in providers.items():
            t = measure_ms(lambda fn=fn: step(fn), device=device, warmup=1, repeats=repeats)
            inputs = [t_.detach().requires_grad_(True) for t_ in leaves]
            with SavedTensorsMeter(exclude=list(block.parameters())) as meter:
                xo, h, gate = fn(block, inputs[0], inputs[2], text, mask, (hh, ww), inputs[1], gate_prev)
                saved = meter.live
            del xo, h, gate
            rows.append({"provider": name, "tokens": f"{b}x{n}x{d}", "dtype": str(dtype)[6:],
                         "fwd+bwd ms": t["median"], "saved MiB": saved / 2**20})  # fmt: skip
    base = {r["tokens"]: r for r in rows if r["provider"] == "eager"}
    for r in rows:
        r["speed-up vs eager"] = base[r["tokens"]]["fwd+bwd ms"] / r["fwd+bwd ms"]
        r["saved vs eager"] = r["saved MiB"] / base[r["tokens"]]["saved MiB"]
    meta = run_metadata(device)
    meta["model"] = f"one SANA DiT block, width {d}, {cfg.self_attn} self-attention, norm {cfg.norm}"
    name = f"dit_block_{'quick_' if quick else ''}{device.type}"
    path = save(name, rows, meta, args.out) if args.out else save(name, rows, meta)
    print(f"# DiT block forward + backward on {meta['device']} ({meta['model']}, {dtype})")
    cols = ["provider", "tokens", "dtype", "fwd+bwd ms", "saved MiB", "speed-up vs eager", "saved vs eager"]
    print(markdown_table(rows, cols))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
