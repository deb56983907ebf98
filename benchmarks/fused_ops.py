"""Benchmark the fused training ops against eager PyTorch and torch.compile of the same reference:
SANA linear attention, the two-token judge loss (vs the full-vocabulary logits it avoids, at 32k and 152k
vocabularies), the DMD loss and the flow step. Forward+backward time and peak memory (CUDA: allocator peak;
CPU: exact live tensor bytes from pairfree.memory.LiveBytesMeter).

    python benchmarks/fused_ops.py            # sizes for this device
    python benchmarks/fused_ops.py --quick    # tiny smoke run (CI)

Prints a markdown table and writes benchmarks/results/fused_ops_<device>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench_args, markdown_table, measure_ms, peak_memory_mb, run_metadata, save  # noqa: E402
from pairfree.kernels import dispatch  # noqa: E402
from pairfree.kernels.dmd import dmd_loss, dmd_loss_reference  # noqa: E402
from pairfree.kernels.flow_step import flow_step, flow_step_reference  # noqa: E402
from pairfree.kernels.judge_loss import judge_loss, judge_loss_reference  # noqa: E402
from pairfree.kernels.linear_attention import linear_attention, linear_attention_reference  # noqa: E402
from pairfree.memory import LiveBytesMeter  # noqa: E402


def _sana_eager(q, k, v):
    """diffusers' SanaLinearAttnProcessor2_0 math, as eager PyTorch runs it."""
    q, k, v = F.relu(q).float(), F.relu(k).float(), v.float()
    vp = F.pad(v.transpose(-1, -2), (0, 0, 0, 1), value=1.0)
    out = (vp @ k) @ q.transpose(-1, -2)
    return (out[:, :, :-1] / (out[:, :, -1:] + 1e-15)).transpose(-1, -2).to(q.dtype)


def _full_vocab_logits_loss(h, w, yes, no, target, logit_scale):
    """What a plain VLM loss does: full-vocabulary logits, then the two entries."""
    logits = (h @ w.T).float()
    return F.cross_entropy(logits[:, [no, yes]] * logit_scale, target, reduction="none")


def cases(device, dtype, quick):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device, dtype)
    fused = "triton" if device.type == "cuda" else "cpp"
    out = []
    # SANA-1.6B self-attention: 70 heads x 32, 32x32 (1k) and 64x64 (4k) latent tokens
    la_sizes = [(1, 4, 256, 32)] if quick else [(2, 70, 1024, 32), (2, 70, 4096, 32)]
    for b, h, n, d in la_sizes:
        inputs = [rnd(b, h, n, d).requires_grad_() for _ in range(3)]
        provs = {
            "eager (diffusers math)": _sana_eager,
            "torch.compile": torch.compile(linear_attention_reference, dynamic=False),
        }
        if device.type == "cuda":
            provs["pairfree-triton"] = lambda q, k, v: linear_attention(q, k, v, backend="triton")
        out.append((f"linear_attention {b}x{h}x{n}x{d}", inputs, provs))
    # judge loss: batch of answer hidden states, Qwen2.5-VL-7B width, 32k / 152k vocabularies
    bsz, width = (4, 64) if quick else (16, 3584)
    for vocab in (1000,) if quick else (32_000, 152_064):
        h = rnd(bsz, width).requires_grad_()
        w = rnd(vocab, width) / width**0.5
        target = torch.randint(0, 2, (bsz,), generator=g).to(device)
        provs = {
            "full-vocab logits": lambda h, _w=w, _t=target: _full_vocab_logits_loss(h, _w, 7, 3, _t, 1.0),
            "eager two rows": lambda h, _w=w, _t=target: judge_loss_reference(h, _w, 7, 3, _t, 1.0),
        }
        if device.type == "cuda":
            provs["pairfree-triton"] = lambda h, _w=w, _t=target: judge_loss(h, _w, 7, 3, _t, 1.0, backend="triton")
        out.append((f"judge_loss B={bsz} D={width} V={vocab}", [h], provs))
    # DMD loss and flow step on latents: SANA-1.6B 32 channels at 32x32 (1024px) for batch 8
    shape = (2, 3, 16, 16) if quick else (8, 32, 32, 32)
    x, r, f = rnd(*shape).requires_grad_(), rnd(*shape), rnd(*shape)
    out.append(
        (
            f"dmd_loss {'x'.join(map(str, shape))}",
            [x],
            {
                "eager": lambda x: dmd_loss_reference(x, r, f),
                "torch.compile": torch.compile(lambda x: dmd_loss_reference(x, r, f), dynamic=False),
                f"pairfree-{fused}": lambda x: dmd_loss(x, r, f, backend=fused),
            },
        )
    )
    t, tn = torch.rand(shape[0], generator=g).to(device), torch.rand(shape[0], generator=g).to(device)
    xt, v, e = rnd(*shape).requires_grad_(), rnd(*shape).requires_grad_(), rnd(*shape)
    out.append(
        (
            f"flow_step {'x'.join(map(str, shape))}",
            [xt, v],
            {
                "eager": lambda xt, v: flow_step_reference(xt, v, e, t, tn),
                "torch.compile": torch.compile(lambda xt, v: flow_step_reference(xt, v, e, t, tn), dynamic=False),
                f"pairfree-{fused}": lambda xt, v: flow_step(xt, v, e, t, tn, backend=fused),
            },
        )
    )
    return out


def run_full(fn, inputs):
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.grad([o.float().sum() for o in outs], inputs)


def main(argv=None):
    args, device, dtype = bench_args(__doc__, argv)
    repeats = args.repeats or (2 if args.quick else 10)
    rows = []
    for name, inputs, provs in cases(device, dtype, args.quick):
        for pname, fn in provs.items():
            if args.quick and pname == "torch.compile":
                continue
            if pname.startswith("pairfree-") and dispatch.live_backends(device.type)[pname.split("-")[1]] is not None:
                continue
            try:
                t = measure_ms(lambda: run_full(fn, inputs), device=device, repeats=repeats)
                if device.type == "cuda":
                    mem = peak_memory_mb(lambda: run_full(fn, inputs), device)
                else:
                    with LiveBytesMeter() as m:
                        run_full(fn, inputs)
                    mem = m.peak / 2**20
                rows.append(
                    {
                        "op": name,
                        "provider": pname,
                        "mode": "fwd+bwd",
                        "dtype": str(dtype)[6:],
                        "median_ms": t["median"],
                        "p20_ms": t["p20"],
                        "p80_ms": t["p80"],
                        "peak_MiB": mem,
                    }
                )
            except Exception as e:  # noqa: BLE001 - a provider that cannot run this case is reported, not fatal
                rows.append({"op": name, "provider": pname, "note": f"{type(e).__name__}: {str(e)[:60]}"})
    meta = run_metadata(device)
    fname = f"fused_ops_{'quick_' if args.quick else ''}{device.type}"
    path = save(fname, rows, meta, args.out) if args.out else save(fname, rows, meta)
    print(f"# fused ops on {meta['device']} ({meta['date']}, torch {meta['torch']}, {dtype})")
    print(markdown_table(rows, ["op", "provider", "median_ms", "peak_MiB", "note"]))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
