"""Benchmark the shapes-world renderer: images/s on one CPU thread (or on a GPU: ``--device cuda``, batch 256) at
32², 64² and 128² (batch of 64 scenes on the CPU).

python benchmarks/world_render.py [--quick] [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import markdown_table, measure_ms, run_metadata, save  # noqa: E402
from pairfree.world import render, sample_scene  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    batch = 8 if args.quick else (256 if device.type == "cuda" else 64)
    scenes = [sample_scene(s) for s in range(batch)]
    rows = []
    for res in (32,) if args.quick else (32, 64, 128):
        t = measure_ms(
            lambda: render(scenes, res, device=device), device=device, warmup=1, repeats=3 if args.quick else 10
        )
        rows.append(
            {
                "op": "world.render",
                "provider": "torch (1 thread)" if device.type == "cpu" else "torch (GPU)",
                "mode": "forward",
                "size": f"{res}x{res}",
                "dtype": "float32",
                "batch": batch,
                "median_ms": t["median"],
                "p20_ms": t["p20"],
                "p80_ms": t["p80"],
                "images/s": batch / (t["median"] * 1e-3),
            }
        )
    meta = run_metadata(device)
    if device.type == "cpu":
        meta["device"] = meta["device"].rsplit(",", 1)[0] + ", 1 thread"
    name = f"world_render{'_quick' if args.quick else ''}_{device.type}"
    path = save(name, rows, meta, args.out) if args.out else save(name, rows, meta)
    print(markdown_table(rows, ["op", "size", "batch", "median_ms", "images/s"]))
    print(f"\nraw rows: {path}")
    return rows


if __name__ == "__main__":
    main()
