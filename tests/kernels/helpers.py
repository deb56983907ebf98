"""Shared parametrisation of the kernel tests: (device, dtype) cases for a Triton kernel, skipped with the
reason where this machine cannot run them."""

import pytest
import torch

from pairfree.kernels import dispatch

CUDA = torch.cuda.is_available()
TRITON_CPU = dispatch.live_backends("cpu")["triton"] is None


def triton_params(dtypes=(torch.float32, torch.float16, torch.bfloat16)):
    out = []
    for device in ["cpu"] + (["cuda"] if CUDA else []):
        for dtype in dtypes:
            marks = [pytest.mark.gpu] if device == "cuda" else []
            if device == "cpu" and not TRITON_CPU:
                marks.append(pytest.mark.skip(reason="Triton on CPU needs TRITON_INTERPRET=1"))
            if device == "cpu" and dtype == torch.bfloat16:
                marks.append(pytest.mark.skip(reason="the Triton interpreter has no bf16"))
            out.append(pytest.param(device, dtype, marks=marks, id=f"{device}-{str(dtype)[6:]}"))
    return out
