"""SANA's ReLU linear attention: ``out = φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1) + eps)`` with ``φ = ReLU``.

Cost is linear in the number of tokens: keys and values are first reduced to a ``(d, d)`` state per head.
This file holds the PyTorch reference (fp32 accumulation, as diffusers' ``SanaLinearAttnProcessor2_0``); the
fused Triton/C++ kernels land behind the same :func:`linear_attention` call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """``q, k, v``: ``(B, H, N, d)`` -> ``(B, H, N, d)`` in ``q``'s dtype, computed in fp32."""
    dtype = q.dtype
    q, k, v = F.relu(q).float(), F.relu(k).float(), v.float()
    state = torch.einsum("bhnd,bhne->bhde", k, v)  # φ(K)ᵀV
    norm = torch.einsum("bhnd,bhd->bhn", q, k.sum(2))  # φ(Q)(φ(K)ᵀ1)
    out = torch.einsum("bhnd,bhde->bhne", q, state) / (norm[..., None] + eps)
    return out.to(dtype)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """ReLU linear attention over ``(B, H, N, d)`` tensors (see the module docstring)."""
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise ValueError(
            f"linear_attention: q, k, v must share a (B, H, N, d) shape, got {q.shape}, {k.shape}, {v.shape}"
        )
    return linear_attention_reference(q, k, v, eps)
