"""Benchmark modulated RMSNorm and LayerNorm (and their fused residual + gate form): every live pairfree backend
vs eager PyTorch (for LayerNorm: ``F.layer_norm``, what an unfused DiT runs) and torch.compile of the same eager
code, forward / backward / forward+backward.

    python benchmarks/modulated_norm.py                 # sizes for this device
    python benchmarks/modulated_norm.py --quick         # tiny smoke run (CI)

Prints a markdown table and writes benchmarks/results/modulated_norm_<device>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import bench_args, markdown_table, measure_ms, peak_memory_mb, run_metadata, save  # noqa: E402
from pairfree.kernels import dispatch  # noqa: E402
from pairfree.kernels.modulated_norm import modulated_norm, modulated_norm_reference  # noqa: E402

# (B, N, D): SANA-600M width 1152 and SANA-1.6B width 2240 at 32x32 and 64x64 latent tokens.
SIZES = {
    "cpu": [(2, 1024, 1152), (2, 1024, 2240)],
    "cuda": [(2, 1024, 1152), (2, 4096, 2240), (8, 4096, 2240)],
    "quick": [(2, 64, 96)],
}
MODES = ("forward", "backward", "full")


def make_inputs(b, n, d, device, dtype, fused):
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    x = rnd(b, n, d).requires_grad_()
    args = dict(weight=None, shift=rnd(b, d).requires_grad_(), scale=rnd(b, d).requires_grad_())
    if fused:
        args.update(residual=rnd(b, n, d).requires_grad_(), gate=rnd(b, d).requires_grad_())
    return x, args


def eager_layer_norm(x, weight, shift, scale, eps=1e-6, residual=None, gate=None):
    """The unfused DiT's LayerNorm path: residual add, ``F.layer_norm``, modulation, in separate eager ops."""
    s = x if residual is None else residual + gate[:, None] * x
    y = F.layer_norm(s, s.shape[-1:], weight, eps=eps) * (1 + scale[:, None]) + shift[:, None]
    return y if residual is None else (y, s)


def providers(device: torch.device, skip_compile: bool, kind: str):
    eager = eager_layer_norm if kind == "layer" else modulated_norm_reference
    out = {"eager": eager}
    if not skip_compile:
        out["torch.compile"] = torch.compile(eager, dynamic=False)
    for name, why in dispatch.live_backends(device.type).items():
        if (
            why is None
            and name in dispatch.OPS["modulated_norm"]
            and name != "reference"
            and not (name == "triton" and device.type == "cpu")
        ):
            out[f"pairfree-{name}"] = lambda *a, _b=name, **k: modulated_norm(*a, kind=kind, backend=_b, **k)
    return out


def bench_one(fn, x, args, mode, device, repeats):
    inputs = [x] + [v for v in args.values() if v is not None]

    def forward():
        return fn(x, **args)

    out = forward()
    outs = out if isinstance(out, tuple) else (out,)
    cot = [torch.randn_like(o) for o in outs]
    if mode == "forward":
        run = lambda: forward()
    elif mode == "backward":
        run = lambda: torch.autograd.grad(outs, inputs, cot, retain_graph=True)
    else:

        def run():
            o = forward()
            return torch.autograd.grad(o if isinstance(o, tuple) else (o,), inputs, cot)

    with torch.no_grad() if mode == "forward" else torch.enable_grad():
        t = measure_ms(run, device=device, repeats=repeats)
        mem = peak_memory_mb(run, device)
    return t, mem


def main(argv=None):
    args, device, dtype = bench_args(__doc__, argv)
    sizes = SIZES["quick"] if args.quick else SIZES[device.type]
    repeats = args.repeats or (3 if args.quick else 10)
    rows = []
    for kind in ("rms", "layer"):
        provs = providers(device, skip_compile=args.quick, kind=kind)
        for b, n, d in sizes:
            for fused in (False, True):
                x, kw = make_inputs(b, n, d, device, dtype, fused)
                # bytes of the forward's essential traffic: read x (+ residual), write y (+ s)
                fwd_bytes = x.numel() * x.element_size() * (4 if fused else 2)
                for mode in MODES:
                    for name, fn in provs.items():
                        t, mem = bench_one(fn, x, kw, mode, device, repeats)
                        row = {
                            "op": f"modulated_{kind}_norm" + ("+residual" if fused else ""),
                            "provider": name,
                            "mode": mode,
                            "size": f"{b}x{n}x{d}",
                            "dtype": str(dtype)[6:],
                            "median_ms": t["median"],
                            "p20_ms": t["p20"],
                            "p80_ms": t["p80"],
                        }
                        if mode == "forward":
                            row["GB/s"] = fwd_bytes / (t["median"] * 1e-3) / 1e9
                        if mem is not None:
                            row["peak_MiB"] = mem
                        rows.append(row)
    meta = run_metadata(device)
    name = f"modulated_norm_{'quick_' if args.quick else ''}{device.type}"
    path = save(name, rows, meta, args.out) if args.out else save(name, rows, meta)
    cols = ["op", "size", "mode", "provider", "median_ms", "p20_ms", "p80_ms", "GB/s"]
    if device.type == "cuda":
        cols.append("peak_MiB")
    print(f"# modulated_norm on {meta['device']} ({meta['date']}, torch {meta['torch']}, {dtype})")
    print(markdown_table(rows, cols))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
