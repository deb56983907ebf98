"""Which implementation (backend) runs each op, and why.

Backends:
  ``cuda``      the CUDA kernels in ``pairfree._C`` (built when nvcc and a CUDA torch are present)
  ``triton``    Triton kernels: on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests only)
  ``cpp``       the C++ CPU kernels in ``pairfree._C``
  ``sdpa``      PyTorch's ``scaled_dot_product_attention`` (attention only; always available)
  ``reference`` plain PyTorch (always available; the ground truth the others are tested against)

``auto`` picks the first live backend in :data:`PREFERENCE` for the tensor's device. A backend named in
the call wins; otherwise the environment can choose: ``PAIRFREE_BACKEND=reference`` for every op, or
``PAIRFREE_<OP>_BACKEND=cuda`` for one op.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("cuda", "triton", "cpp", "sdpa", "reference")

# Default choice per device type. Triton before the CUDA extension on GPU until the GPU benchmark says
# otherwise (benchmarks/RESULTS.md); Triton on CPU runs only in the interpreter, so only when asked for.
PREFERENCE = {"cuda": ("triton", "cuda", "sdpa", "reference"), "cpu": ("cpp", "sdpa", "reference")}

# Backends each op implements.
OPS: dict[str, tuple[str, ...]] = {
    "modulated_norm": ("cuda", "triton", "cpp", "reference"),
    "attention": ("triton", "sdpa", "reference"),
    "judge_loss": ("triton", "reference"),
    "linear_attention": ("triton", "reference"),
    "dmd_loss": ("triton", "cpp", "reference"),
    "flow_step": ("triton", "cpp", "reference"),
}


@functools.cache
def extension():
    """The compiled ``pairfree._C`` module, or ``None`` when it was not built (see :func:`extension_error`)."""
    try:
        from pairfree import _C
    except ImportError:
        return None
    return _C


@functools.cache
def extension_error() -> str | None:
    """Why ``pairfree._C`` did not import, or ``None`` when it did."""
    try:
        from pairfree import _C  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def triton_interpreter() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def live_backends(device_type: str) -> dict[str, str | None]:
    """For each backend, ``None`` if it can run on ``device_type`` here, else the reason it cannot."""
    ext = extension()
    no_ext = f"pairfree._C not importable ({extension_error()})"
    why: dict[str, str | None] = {"reference": None, "sdpa": None}
    if device_type == "cuda":
        no_gpu = None if torch.cuda.is_available() else "no CUDA device"
        if ext is None:
            why["cuda"] = no_ext
        else:
            why["cuda"] = no_gpu if ext.with_cuda() else "pairfree._C was built without CUDA kernels"
        why["triton"] = no_gpu if triton_installed() else "triton not installed"
        why["cpp"] = "C++ kernels take CPU tensors only"
    else:
        why["cuda"] = "CUDA kernels take CUDA tensors only"
        why["triton"] = (
            None if triton_installed() and triton_interpreter() else "Triton on CPU needs TRITON_INTERPRET=1"
        )
        why["cpp"] = no_ext if ext is None else None
    return why


def select(op: str, device: torch.device, requested: str = "auto") -> str:
    """The backend that runs ``op`` on ``device``; raises with the reason when a requested one cannot run."""
    if op not in OPS:
        raise KeyError(f"unknown op {op!r}; known: {sorted(OPS)}")
    if requested == "auto":
        requested = os.environ.get(f"PAIRFREE_{op.upper()}_BACKEND", os.environ.get("PAIRFREE_BACKEND", "auto"))
    live = live_backends(device.type)
    if requested != "auto":
        if requested not in OPS[op]:
            raise ValueError(f"{op}: backend {requested!r} does not exist; choose from {OPS[op]} or 'auto'")
        if live[requested] is not None:
            raise RuntimeError(f"{op}: backend {requested!r} cannot run on {device.type}: {live[requested]}")
        return requested
    for name in PREFERENCE.get(device.type, ("reference",)):
        if name in OPS[op] and live[name] is None:
            return name
    return "reference"


def report() -> dict[str, dict[str, str]]:
    """``{op: {device_type: backend}}`` for the devices present: what ``auto`` runs here."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {op: {d: select(op, torch.device(d)) for d in devices} for op in OPS}
