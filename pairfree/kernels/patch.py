"""Swap the attention of an already-built transformers Qwen2.5-VL for pairfree's fused kernel (Liger-style:
no edits to transformers, no reloading).

We register an attention implementation with transformers' ``AttentionInterface``. Its name contains
"flash", so transformers hands it what it hands FlashAttention: the vision tower passes ``cu_seqlens`` (window
and full attention run as one packed varlen call, not a Python loop over windows) and the language model
passes a 2-D padding mask (or none) with ``is_causal`` — exactly the inputs our kernel takes.
"""

from __future__ import annotations

import torch

from pairfree.kernels.attention import attention, varlen_attention

IMPLEMENTATION = "pairfree_flash_attention"


def _pairfree_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    is_causal=None,
    cu_seq_lens_q=None,
    cu_seq_lens_k=None,
    max_length_q=None,
    max_length_k=None,
    **kwargs,
):
    """transformers attention-interface entry: ``query (B, H, N, d)``, ``key/value (B, Hk, N, d)`` -> output
    ``(B, N, H, d)``. Packed varlen when ``cu_seq_lens_*`` are given (then B = 1)."""
    if dropout and module.training:
        raise NotImplementedError("pairfree attention has no dropout; the judge runs in eval mode")
    causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    if cu_seq_lens_q is not None:
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (total, H, d)
        if max_length_q is None:
            max_length_q = int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
        if max_length_k is None:
            max_length_k = int((cu_seq_lens_k[1:] - cu_seq_lens_k[:-1]).max())
        out = varlen_attention(
            q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, causal=causal, softmax_scale=scaling
        )
        return out[None], None
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"pairfree attention expects a 2-D padding mask, got shape {tuple(attention_mask.shape)}")
    causal = causal and query.shape[2] > 1
    out = attention(query, key, value, key_padding_mask=attention_mask, causal=causal, softmax_scale=scaling)
    return out.transpose(1, 2), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(IMPLEMENTATION, _pairfree_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, flash_attention_mask)


def patch_qwen2_5_vl(model: torch.nn.Module) -> torch.nn.Module:
    """Route every attention of ``model`` (a built ``Qwen2_5_VLForConditionalGeneration`` or
    ``Qwen2_5_VLModel``) — vision tower and language model — through pairfree's kernel. Returns ``model``."""
    if "Qwen2_5_VL" not in type(model).__name__:
        raise TypeError(f"patch_qwen2_5_vl: expected a Qwen2.5-VL model, got {type(model).__name__}")
    _register()
    configs = {id(model.config): model.config}
    for sub in ("text_config", "vision_config"):
        c = getattr(model.config, sub, None)
        if c is not None:
            configs[id(c)] = c
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            configs[id(c)] = c
    for c in configs.values():
        c._attn_implementation = IMPLEMENTATION
    return model
