"""pairfree's kernels: one op per file (reference, Triton kernels, C++/CUDA entry, autograd, functional).

Each op is registered as ``torch.ops.pairfree.*`` and dispatched by device; :func:`backend_report` says
which implementation runs where.
"""

from pairfree.kernels.dispatch import report as backend_report
from pairfree.kernels.modulated_rms_norm import modulated_rms_norm, modulated_rms_norm_reference

__all__ = ["backend_report", "modulated_rms_norm", "modulated_rms_norm_reference"]
