"""Benchmark the Mix-FFN's 3×3 depthwise conv (``pairfree.models.dit.MixFFN``) in NCHW and channels-last memory
format, forward and forward+backward, on one CPU thread at the lite teacher's and editor's shapes. The DiT runs it
channels-last because the NCHW backward is the slower one on the CPUs measured here.

python benchmarks/depthwise_conv.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import markdown_table, measure_ms, run_metadata, save  # noqa: E402

# (batch of token grids, channels = 2 × mlp_ratio × width, grid): lite teacher batch 32 at width 128, mlp 2.5;
# the lite editor's batch 8 with its reference grid folded into the batch (16 grids)
SHAPES = [(32, 640, 8, 8), (16, 640, 8, 8)]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def same_math(conv: nn.Conv2d, x0: torch.Tensor) -> None:
    """Both memory formats compute the same output and input gradient (what makes the choice a speed one)."""
    outs = []
    for fmt in FORMATS.values():
        x = x0.contiguous(memory_format=fmt).requires_grad_(True)
        y = conv(x)
        (g,) = torch.autograd.grad((y * y).sum(), x)
        outs.append((y.contiguous(), g.contiguous()))
    (y0, g0), (y1, g1) = outs
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(g1, g0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    repeats = 3 if args.quick else args.repeats
    rows = []
    for b, c, h, w in SHAPES[:1] if args.quick else SHAPES:
        conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        x0 = torch.randn(b, c, h, w)
        same_math(conv, x0)
        for name, fmt in FORMATS.items():
            x = x0.contiguous(memory_format=fmt).requires_grad_(True)

            def fwd():
                with torch.no_grad():
                    conv(x)

            def fwd_bwd():
                conv(x).sum().backward()

            for mode, fn in (("forward", fwd), ("fwd+bwd", fwd_bwd)):
                t = measure_ms(fn, device=device, warmup=2, repeats=repeats)
                rows.append(
                    {
                        "op": "depthwise_conv3x3",
                        "provider": name,
                        "mode": mode,
                        "size": f"{b}x{c}x{h}x{w}",
                        "dtype": "float32",
                        "median_ms": t["median"],
                        "p20_ms": t["p20"],
                        "p80_ms": t["p80"],
                    }
                )
    meta = run_metadata(device)
    meta["device"] = meta["device"].rsplit(",", 1)[0] + ", 1 thread"
    name = f"depthwise_conv{'_quick' if args.quick else ''}_cpu"
    path = save(name, rows, meta, args.out) if args.out else save(name, rows, meta)
    print(markdown_table(rows, ["provider", "mode", "size", "median_ms"]))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
