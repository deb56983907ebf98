"""Benchmark fused attention: pairfree's Triton kernel vs every available SDPA backend (flash, efficient, cuDNN,
math) and flash-attn when installed; forward, backward and forward+backward; TFLOP/s and peak memory.

Shapes that matter here: the Qwen2.5-VL-7B LM (GQA 28/4, d=128, causal), its vision tower (16 heads, d=80,
windows of 64 patches packed with cu_seqlens), SANA-1.6B cross-attention (20 heads, d=112, image tokens x 300
padded text tokens), and the standard square cases (16k tokens per batch, 2048 model width) that published
FlashAttention figures use.

    python benchmarks/attention.py            # GPU: all shapes, bf16
    python benchmarks/attention.py --quick    # tiny CPU smoke run (CI)

Prints a markdown table and writes benchmarks/results/attention_<device>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench_args, markdown_table, measure_ms, peak_memory_mb, run_metadata, save  # noqa: E402
from pairfree.kernels.attention import attention, attention_flops, varlen_attention  # noqa: E402

MODES = ("forward", "backward", "full")


def shapes(quick: bool):
    """(name, kind, dict) — kind "batch" (B, H, Hk, Nq, Nk, d, causal, pad) or "varlen" (windows)."""
    if quick:
        return [
            ("gqa-causal", "batch", dict(b=1, h=4, hk=2, nq=64, nk=64, d=32, causal=True, pad=0.0)),
            ("cross-padded", "batch", dict(b=2, h=2, hk=2, nq=64, nk=20, d=40, causal=False, pad=0.3)),
            ("vision-varlen", "varlen", dict(windows=4, window=16, h=2, d=40)),
        ]
    out = []
    for n in (1024, 2048, 4096):
        out.append((f"qwen7b-lm N={n}", "batch", dict(b=1, h=28, hk=4, nq=n, nk=n, d=128, causal=True, pad=0.0)))
    for images in (1, 4):
        out.append((f"qwen-vision {images}x1024 win64", "varlen", dict(windows=16 * images, window=64, h=16, d=80)))
        out.append((f"qwen-vision {images}x1024 full", "varlen", dict(windows=images, window=1024, h=16, d=80)))
    for n in (1024, 4096):
        out.append(
            (f"sana1.6b-cross {n}x300", "batch", dict(b=2, h=20, hk=20, nq=n, nk=300, d=112, causal=False, pad=0.4))
        )
    for d in (64, 128):
        for n in (1024, 4096, 16384):
            for causal in (False, True):
                out.append(
                    (
                        f"square d={d} N={n}{' causal' if causal else ''}",
                        "batch",
                        dict(b=16384 // n, h=2048 // d, hk=2048 // d, nq=n, nk=n, d=d, causal=causal, pad=0.0),
                    )
                )
    return out


def sdpa_backends(device):
    if device.type != "cuda":
        return {"sdpa-math": None}
    from torch.nn.attention import SDPBackend

    names = {
        "sdpa-flash": "FLASH_ATTENTION",
        "sdpa-efficient": "EFFICIENT_ATTENTION",
        "sdpa-cudnn": "CUDNN_ATTENTION",
        "sdpa-math": "MATH",
    }
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def sdpa_fn(backend, mask, causal, group):
    from contextlib import nullcontext

    def run(q, k, v):
        if backend is None:
            ctx = nullcontext()
        else:
            from torch.nn.attention import sdpa_kernel

            ctx = sdpa_kernel(backend)
        with ctx:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=group > 1
            )

    return run


def flash_attn_fn(causal):
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return lambda q, k, v: flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal
    ).transpose(1, 2)


def time_modes(fn, inputs, device, repeats):
    out = {}
    for mode in MODES:
        try:
            o = fn(*inputs)
            do = torch.randn_like(o)
            if mode == "forward":
                run = lambda: fn(*inputs)
            elif mode == "backward":
                run = lambda: torch.autograd.grad(o, inputs, do, retain_graph=True)
            else:
                run = lambda: torch.autograd.grad(fn(*inputs), inputs, do)
            with torch.no_grad() if mode == "forward" else torch.enable_grad():
                t = measure_ms(run, device=device, repeats=repeats)
                out[mode] = (t, peak_memory_mb(run, device))
        except (RuntimeError, ValueError) as e:  # a backend that does not take this shape
            out[mode] = (None, str(e).splitlines()[0][:80])
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def main(argv=None):
    args, device, dtype = bench_args(__doc__, argv)
    repeats = args.repeats or (2 if args.quick else 10)
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, kind, s in shapes(args.quick):
        rnd = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()
        providers = {}
        if kind == "batch":
            q, k, v = (
                rnd(s["b"], s["h"], s["nq"], s["d"]),
                rnd(s["b"], s["hk"], s["nk"], s["d"]),
                rnd(s["b"], s["hk"], s["nk"], s["d"]),
            )
            mask = None
            if s["pad"]:
                keep = int(s["nk"] * (1 - s["pad"]))
                mask = torch.zeros(s["b"], s["nk"], dtype=torch.bool, device=device)
                mask[:, :keep] = True
            flops = {m: attention_flops(s["b"], s["h"], s["nq"], s["nk"], s["d"], s["causal"], m) for m in MODES}
            if device.type == "cuda":
                providers["pairfree-triton"] = lambda a, b, c: attention(a, b, c, mask, s["causal"], backend="triton")
            else:  # what pairfree runs on CPU (SDPA through its dispatch): a smoke check of the entry point
                providers["pairfree-auto"] = lambda a, b, c: attention(a, b, c, mask, s["causal"])
            sdpa_mask = None if mask is None else mask[:, None, None, :]
            for bname, backend in sdpa_backends(device).items():
                providers[bname] = sdpa_fn(backend, sdpa_mask, s["causal"], s["h"] // s["hk"])
            fa = flash_attn_fn(s["causal"]) if mask is None else None
            if fa is not None:
                providers["flash-attn"] = fa
            inputs = (q, k, v)
        else:  # windows packed with cu_seqlens (ours) vs the same windows as an SDPA batch (no padding needed)
            n = s["windows"] * s["window"]
            q, k, v = rnd(n, s["h"], s["d"]), rnd(n, s["h"], s["d"]), rnd(n, s["h"], s["d"])
            cu = torch.arange(0, n + 1, s["window"], device=device, dtype=torch.int32)
            flops = {
                m: attention_flops(s["windows"], s["h"], s["window"], s["window"], s["d"], False, m) for m in MODES
            }
            if device.type == "cuda":
                providers["pairfree-triton-varlen"] = lambda a, b, c: varlen_attention(
                    a, b, c, cu, cu, s["window"], s["window"], backend="triton"
                )
            as_batch = lambda t: t.view(s["windows"], s["window"], s["h"], s["d"]).transpose(1, 2)
            for bname, backend in sdpa_backends(device).items():
                f = sdpa_fn(backend, None, False, 1)
                providers[bname] = lambda a, b, c, _f=f: (
                    _f(as_batch(a), as_batch(b), as_batch(c)).transpose(1, 2).reshape(n, s["h"], s["d"])
                )
            inputs = (q, k, v)
        for pname, fn in providers.items():
            for mode, (t, mem) in time_modes(fn, inputs, device, repeats).items():
                row = {"shape": name, "provider": pname, "mode": mode, "dtype": str(dtype)[6:]}
                if t is None:
                    row["note"] = mem
                else:
                    row.update(
                        median_ms=t["median"],
                        p20_ms=t["p20"],
                        p80_ms=t["p80"],
                        TFLOPs=flops[mode] / (t["median"] * 1e-3) / 1e12,
                    )
                    if mem is not None:
                        row["peak_MiB"] = mem
                rows.append(row)
    meta = run_metadata(device)
    fname = f"attention_{'quick_' if args.quick else ''}{device.type}"
    path = save(fname, rows, meta, args.out) if args.out else save(fname, rows, meta)
    cols = ["shape", "mode", "provider", "median_ms", "TFLOPs", "peak_MiB", "note"]
    print(f"# attention on {meta['device']} ({meta['date']}, torch {meta['torch']}, {dtype})")
    print(markdown_table(rows, cols))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
