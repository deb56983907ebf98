"""pairfree's kernels: one op per file (reference, Triton kernels, C++/CUDA entry, autograd, functional).

Each op is registered as ``torch.ops.pairfree.*`` and dispatched by device; :func:`backend_report` says
which implementation runs where.
"""

from pairfree.kernels.attention import attention, varlen_attention
from pairfree.kernels.dispatch import report as backend_report
from pairfree.kernels.modulated_norm import (
    modulated_layer_norm,
    modulated_norm,
    modulated_norm_reference,
    modulated_rms_norm,
)
from pairfree.kernels.patch import patch_qwen2_5_vl

__all__ = [
    "attention",
    "backend_report",
    "modulated_layer_norm",
    "modulated_norm",
    "modulated_norm_reference",
    "modulated_rms_norm",
    "patch_qwen2_5_vl",
    "varlen_attention",
]
