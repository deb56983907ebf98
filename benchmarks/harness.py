"""Shared benchmark harness: timing with warm-up and quantiles, run metadata, JSON + markdown output.

One row per (op, provider, mode, size, metric): median with p20/p80, plus the device, date, versions and
the command that produced it (Liger-Kernel's benchmark-data layout).
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def measure_ms(fn, *, device: torch.device, warmup: int = 3, repeats: int = 20) -> dict[str, float]:
    """Median / p20 / p80 wall time of ``fn()`` in milliseconds (CUDA events via do_bench on GPU)."""
    if device.type == "cuda":
        import triton.testing

        med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100)
        return {"median": med, "p20": p20, "p80": p80}
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median": statistics.median(times), "p20": q[1], "p80": q[7]}


def peak_memory_mb(fn, device: torch.device) -> float | None:
    """Peak CUDA memory allocated while running ``fn()`` beyond what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def step_peak_mib(fn, device: torch.device) -> float:
    """Peak memory of one ``fn()`` in MiB: the CUDA allocator's on GPU, the exact live tensor bytes created by it
    on CPU (``pairfree.memory.LiveBytesMeter``)."""
    if device.type == "cuda":
        return peak_memory_mb(fn, device)
    from pairfree.memory import LiveBytesMeter

    with LiveBytesMeter() as m:
        fn()
    return m.peak / 2**20


def run_metadata(device: torch.device) -> dict:
    """Where and how the numbers were made."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    import pairfree

    return {
        "device": name,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "pairfree": pairfree.__version__,
        "commit": commit,
        "command": " ".join(shlex.quote(a) for a in ["python"] + sys.argv),
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def save(name: str, rows: list[dict], meta: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<out_dir>/<name>.json`` (raw rows + metadata); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(path)
    return path


def bench_args(doc: str, argv=None, extra=None):
    """The common benchmark CLI (--device, --dtype, --quick, --repeats, --out); ``extra(parser)`` adds more.
    Returns ``(args, device, dtype)``: bf16 on GPU, fp32 on CPU unless ``--dtype`` says otherwise."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (CI smoke run)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return args, device, dtype
