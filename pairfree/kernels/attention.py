"""Softmax attention with an optional key padding mask (the DiT's cross-attention to text, the judge).

This file holds the reference and the dispatching entry point; today every device runs PyTorch's
``scaled_dot_product_attention``. The fused Triton forward/backward lands behind the same :func:`attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_reference(q, k, v, key_padding_mask=None, causal: bool = False) -> torch.Tensor:
    """Plain softmax attention in fp32: ``q (B, H, Nq, d)``, ``k, v (B, H, Nk, d)``, ``key_padding_mask (B, Nk)``
    bool (True = attend)."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        scores = scores.masked_fill(
            torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(nk - nq + 1), float("-inf")
        )
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v.float()).to(q.dtype)


def attention(q, k, v, key_padding_mask=None, causal: bool = False) -> torch.Tensor:
    """Softmax attention over ``(B, H, N, d)`` tensors; ``key_padding_mask`` ``(B, Nk)`` bool, True = attend."""
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    mask = key_padding_mask[:, None, None, :].to(torch.bool)
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        mask = mask & torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
