"""Test setup: on a machine without a GPU, Triton kernels run on CPU tensors through its interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence here, before any test module loads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
