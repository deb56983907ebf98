"""``pairfree doctor``: versions, live kernel backends, GPU, and known-bad combinations."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

import pairfree
from pairfree.kernels import dispatch

PACKAGES = ("torch", "triton", "transformers", "diffusers", "deepspeed", "flash-attn", "safetensors", "numpy")

# (package, minimum good version, why older is bad)
KNOWN_BAD = (
    ("deepspeed", "0.19.3", "frozen ZeRO-3 models crash under non-reentrant checkpointing before 0.19.3"),
    ("torch", "2.11", "pairfree's torch.library ops are tested with torch >= 2.11"),
    ("transformers", "5.0", "the judge wrappers target transformers 5"),
)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _older(version: str, minimum: str) -> bool:
    def key(v):
        parts = []
        for p in v.split("+")[0].split(".")[:3]:
            digits = "".join(ch for ch in p if ch.isdigit())
            parts.append(int(digits) if digits else 0)
        return parts + [0] * (3 - len(parts))

    return key(version) < key(minimum)


def collect() -> dict:
    """Everything the report prints, as a dict (also used by tests and ``--json``)."""
    versions = {name: _version(name) for name in PACKAGES}
    ext = dispatch.extension()
    gpu = torch.cuda.is_available()
    backends = {
        "C++ CPU (pairfree._C)": dispatch.live_backends("cpu")["cpp"],
        "CUDA ext (pairfree._C)": dispatch.live_backends("cuda")["cuda"],
        "Triton GPU": dispatch.live_backends("cuda")["triton"],
        "Triton interpreter": dispatch.live_backends("cpu")["triton"],
    }
    gpus = []
    if gpu:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                }
            )
    warnings = []
    for name, minimum, why in KNOWN_BAD:
        if versions.get(name) and _older(versions[name], minimum):
            warnings.append(f"{name} {versions[name]} < {minimum}: {why}")
    if versions["deepspeed"] is None:
        warnings.append("deepspeed not installed: distributed training (deepspeed launcher) unavailable")
    err = dispatch.extension_error()
    if err is not None:
        hint = (
            " (built against another torch? reinstall: pip install --no-build-isolation -e .)"
            if "symbol" in err
            else ""
        )
        warnings.append(f"pairfree._C not importable: {err}{hint}; ops use the PyTorch reference")
    if gpu and ext is not None and not ext.with_cuda():
        warnings.append("a GPU is present but pairfree._C has no CUDA kernels: reinstall where nvcc is on PATH")
    if gpu and dispatch.triton_interpreter():
        warnings.append("TRITON_INTERPRET=1 with a GPU present: Triton kernels run in the slow CPU interpreter")
    return {
        "pairfree": pairfree.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "torch_cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "parallel": [ln.strip() for ln in ext.parallel_info().splitlines() if "parallel backend" in ln]
        if ext is not None
        else [],
        "backends": backends,
        "ops": dispatch.report(),
        "gpus": gpus,
        "warnings": warnings,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PAIRFREE_", "TRITON_INTERPRET"))},
    }


def format_report(info: dict) -> str:
    lines = [f"pairfree {info['pairfree']}  python {info['python']}  {info['platform']}", "", "packages:"]
    for name, v in info["versions"].items():
        lines.append(f"  {name:<14} {v or 'not installed'}")
    lines.append(f"  torch CUDA     {info['torch_cuda'] or 'none (CPU build)'}")
    lines += ["", "backends:"]
    for name, why in info["backends"].items():
        lines.append(f"  {name:<24} {'live' if why is None else 'off':<5} {'' if why is None else why}")
    lines += ["", "ops (backend chosen by 'auto'):"]
    for op, by_device in info["ops"].items():
        lines.append(f"  {op:<22} " + "  ".join(f"{d}: {b}" for d, b in by_device.items()))
    lines += ["", f"CPU threads: {info['cpu_threads']}  " + " ".join(info["parallel"])]
    if info["gpus"]:
        for i, g in enumerate(info["gpus"]):
            lines.append(f"GPU {i}: {g['name']}, {g['memory_gib']} GiB, sm_{g['capability'].replace('.', '')}")
    else:
        lines.append("GPU: none")
    if info["env"]:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    lines += ["", "warnings:" if info["warnings"] else "warnings: none"]
    lines += [f"  ! {w}" for w in info["warnings"]]
    return "\n".join(lines)
