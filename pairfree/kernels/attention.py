"""Fused softmax attention, FlashAttention-2 style, forward and backward in Triton.

The judge's LM (causal, grouped-query), its vision tower (non-causal, variable length via ``cu_seqlens``) and
the DiT's cross-attention (queries × padded text keys) all run through :func:`attention` /
:func:`varlen_attention`. The forward keeps a running max and sum per query row and stores only the
log-sum-exp; the backward recomputes the probabilities block by block in two kernels — one per key block
(dK, dV; it loops over the query heads that share a KV head, so GQA needs no repeated K/V and no atomics, which
keeps the backward deterministic) and one per query block (dQ).

Supported: causal (bottom-right aligned, as FlashAttention) or not; GQA (query heads a multiple of KV heads);
a boolean key padding mask ``(B, Nk)``; packed variable-length sequences; query and key lengths that differ;
head dims up to 128, any size (72, 80, ...); fp16, bf16 and fp32 (fp32 uses IEEE dots).

Dispatch: CUDA tensors → Triton; CPU → PyTorch's ``scaled_dot_product_attention`` (the Triton path also runs
on CPU under ``TRITON_INTERPRET=1``, which is how the tests check it without a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pairfree.kernels import dispatch
from pairfree.kernels.triton_support import next_power_of_2, tl, triton

# --------------------------------------------------------------------------------------------------------
# 1. Reference
# --------------------------------------------------------------------------------------------------------


def attention_reference(q, k, v, key_padding_mask=None, causal: bool = False, softmax_scale: float | None = None):
    """Plain softmax attention computed in fp32 (or fp64 for fp64 inputs). ``q (B, H, Nq, d)``,
    ``k, v (B, Hk, Nk, d)`` with ``H % Hk == 0``; ``key_padding_mask (B, Nk)`` bool, True = attend; ``causal``
    aligns the last query with the last key. Fully masked rows give zeros."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), k.to(acc)) * scale
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        nq, nk = scores.shape[-2:]
        allowed = allowed.tril(nk - nq)
    allowed = allowed.expand(scores.shape)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :].bool()
    p = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, v.to(acc)).to(q.dtype)


def varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=False, softmax_scale=None):
    """Packed sequences: ``q (total_q, H, d)``, ``k, v (total_k, Hk, d)``; sequence i spans
    ``cu_seqlens[i]:cu_seqlens[i+1]``."""
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe, ks, ke = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]), int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        o = attention_reference(
            q[qs:qe].transpose(0, 1)[None],
            k[ks:ke].transpose(0, 1)[None],
            v[ks:ke].transpose(0, 1)[None],
            causal=causal,
            softmax_scale=softmax_scale,
        )
        out[qs:qe] = o[0].transpose(0, 1)
    return out


# --------------------------------------------------------------------------------------------------------
# 2. Triton kernels
# --------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _seq_bounds(CU_Q, CU_K, b, NQ, NK, IS_VARLEN: tl.constexpr):
        if IS_VARLEN:
            q_start = tl.load(CU_Q + b)
            q_len = tl.load(CU_Q + b + 1) - q_start
            k_start = tl.load(CU_K + b)
            k_len = tl.load(CU_K + b + 1) - k_start
        else:
            q_start = 0
            q_len = NQ
            k_start = 0
            k_len = NK
        return q_start, q_len, k_start, k_len

    @triton.jit
    def _allowed(offs_m, offs_n, q_len, k_len, MASK, b, smb, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr):
        ok = (offs_n[None, :] < k_len) & (offs_m[:, None] < q_len)
        if HAS_MASK:
            keep = tl.load(MASK + b * smb + offs_n, mask=offs_n < k_len, other=0)
            ok = ok & (keep != 0)[None, :]
        if CAUSAL:
            ok = ok & (offs_m[:, None] + (k_len - q_len) >= offs_n[None, :])
        return ok

    @triton.jit
    def _fwd_kernel(
        Q,
        K,
        V,
        OUT,
        LSE,
        MASK,
        CU_Q,
        CU_K,
        sqb,
        sqh,
        sqm,
        skb,
        skh,
        skn,
        svb,
        svh,
        svn,
        sob,
        soh,
        som,
        slb,
        slh,
        smb,
        H,
        GROUP,
        NQ,
        NK,
        D,
        qk_scale,
        IS_VARLEN: tl.constexpr,
        HAS_MASK: tl.constexpr,
        CAUSAL: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        hk = h // GROUP
        q_start, q_len, k_start, k_len = _seq_bounds(CU_Q, CU_K, b, NQ, NK, IS_VARLEN)
        if pid_m * BLOCK_M >= q_len:
            return
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        q = tl.load(
            Q + b * sqb + h * sqh + (q_start + offs_m)[:, None] * sqm + offs_d[None, :],
            mask=(offs_m < q_len)[:, None] & dmask[None, :],
            other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        end_n = k_len
        if CAUSAL:
            end_n = tl.minimum(k_len, (pid_m + 1) * BLOCK_M + k_len - q_len)
        k_base = K + b * skb + hk * skh + k_start * skn
        v_base = V + b * svb + hk * svh + k_start * svn
        for start_n in range(0, end_n, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            nmask = offs_n < k_len
            k = tl.load(
                k_base + offs_n[None, :] * skn + offs_d[:, None], mask=nmask[None, :] & dmask[:, None], other=0.0
            )
            s = tl.dot(q, k, input_precision=PRECISION) * qk_scale
            ok = _allowed(offs_m, offs_n, q_len, k_len, MASK, b, smb, HAS_MASK, CAUSAL)
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + offs_n[:, None] * svn + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        acc = acc / l_safe[:, None]
        lse = tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log2(l_safe)  # base 2, in units of qk_scale
        mmask = offs_m < q_len
        tl.store(
            OUT + b * sob + h * soh + (q_start + offs_m)[:, None] * som + offs_d[None, :],
            acc.to(OUT.dtype.element_ty),
            mask=mmask[:, None] & dmask[None, :],
        )
        tl.store(LSE + b * slb + h * slh + q_start + offs_m, lse, mask=mmask)

    @triton.jit
    def _bwd_dkdv_kernel(
        Q,
        K,
        V,
        DO,
        LSE,
        DELTA,
        DK,
        DV,
        MASK,
        CU_Q,
        CU_K,
        sqb,
        sqh,
        sqm,
        skb,
        skh,
        skn,
        svb,
        svh,
        svn,
        sdob,
        sdoh,
        sdom,
        slb,
        slh,
        sdkb,
        sdkh,
        sdkn,
        sdvb,
        sdvh,
        sdvn,
        smb,
        HK,
        GROUP,
        NQ,
        NK,
        D,
        qk_scale,
        sm_scale,
        IS_VARLEN: tl.constexpr,
        HAS_MASK: tl.constexpr,
        CAUSAL: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
        b, hk = pid_bh // HK, pid_bh % HK
        q_start, q_len, k_start, k_len = _seq_bounds(CU_Q, CU_K, b, NQ, NK, IS_VARLEN)
        if pid_n * BLOCK_N >= k_len:
            return
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        nmask = offs_n < k_len
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(
            K + b * skb + hk * skh + (k_start + offs_n)[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0
        )
        v = tl.load(
            V + b * svb + hk * svh + (k_start + offs_n)[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0
        )
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        start_m = 0
        if CAUSAL:  # queries before this key block (after alignment) never see it
            start_m = tl.maximum(pid_n * BLOCK_N - (k_len - q_len), 0) // BLOCK_M * BLOCK_M
        for g in range(GROUP):
            h = hk * GROUP + g
            for m0 in range(start_m, q_len, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                mmask = offs_m < q_len
                q = tl.load(
                    Q + b * sqb + h * sqh + (q_start + offs_m)[:, None] * sqm + offs_d[None, :],
                    mask=mmask[:, None] & dmask[None, :],
                    other=0.0,
                )
                do = tl.load(
                    DO + b * sdob + h * sdoh + (q_start + offs_m)[:, None] * sdom + offs_d[None, :],
                    mask=mmask[:, None] & dmask[None, :],
                    other=0.0,
                )
                lse = tl.load(LSE + b * slb + h * slh + q_start + offs_m, mask=mmask, other=0.0)
                delta = tl.load(DELTA + b * slb + h * slh + q_start + offs_m, mask=mmask, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                ok = _allowed(offs_m, offs_n, q_len, k_len, MASK, b, smb, HAS_MASK, CAUSAL)
                p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        tl.store(
            DK + b * sdkb + hk * sdkh + (k_start + offs_n)[:, None] * sdkn + offs_d[None, :],
            (dk * sm_scale).to(DK.dtype.element_ty),
            mask=kv_mask,
        )
        tl.store(
            DV + b * sdvb + hk * sdvh + (k_start + offs_n)[:, None] * sdvn + offs_d[None, :],
            dv.to(DV.dtype.element_ty),
            mask=kv_mask,
        )

    @triton.jit
    def _bwd_dq_kernel(
        Q,
        K,
        V,
        DO,
        LSE,
        DELTA,
        DQ,
        MASK,
        CU_Q,
        CU_K,
        sqb,
        sqh,
        sqm,
        skb,
        skh,
        skn,
        svb,
        svh,
        svn,
        sdob,
        sdoh,
        sdom,
        slb,
        slh,
        sdqb,
        sdqh,
        sdqm,
        smb,
        H,
        GROUP,
        NQ,
        NK,
        D,
        qk_scale,
        sm_scale,
        IS_VARLEN: tl.constexpr,
        HAS_MASK: tl.constexpr,
        CAUSAL: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        hk = h // GROUP
        q_start, q_len, k_start, k_len = _seq_bounds(CU_Q, CU_K, b, NQ, NK, IS_VARLEN)
        if pid_m * BLOCK_M >= q_len:
            return
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        mmask = offs_m < q_len
        q_mask = mmask[:, None] & dmask[None, :]
        q = tl.load(Q + b * sqb + h * sqh + (q_start + offs_m)[:, None] * sqm + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(
            DO + b * sdob + h * sdoh + (q_start + offs_m)[:, None] * sdom + offs_d[None, :], mask=q_mask, other=0.0
        )
        lse = tl.load(LSE + b * slb + h * slh + q_start + offs_m, mask=mmask, other=0.0)
        delta = tl.load(DELTA + b * slb + h * slh + q_start + offs_m, mask=mmask, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        end_n = k_len
        if CAUSAL:
            end_n = tl.minimum(k_len, (pid_m + 1) * BLOCK_M + k_len - q_len)
        k_base = K + b * skb + hk * skh + k_start * skn
        v_base = V + b * svb + hk * svh + k_start * svn
        for start_n in range(0, end_n, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kv_mask = (offs_n < k_len)[:, None] & dmask[None, :]
            k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            ok = _allowed(offs_m, offs_n, q_len, k_len, MASK, b, smb, HAS_MASK, CAUSAL)
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        tl.store(
            DQ + b * sdqb + h * sdqh + (q_start + offs_m)[:, None] * sdqm + offs_d[None, :],
            (dq * sm_scale).to(DQ.dtype.element_ty),
            mask=q_mask,
        )


_LOG2E = 1.4426950408889634


class _Layout:
    """Strides of a (B, H, N, d) batch or a packed (total, H, d) varlen tensor, as (batch, head, token)."""

    @staticmethod
    def strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
        if varlen:
            return 0, t.stride(1), t.stride(0)
        return t.stride(0), t.stride(1), t.stride(2)


def _blocks(d: int, interpret: bool, kernel: str) -> dict:
    """Tile sizes per kernel (the Triton tutorial's FlashAttention-2 choices; retune on GPU with
    benchmarks/attention.py). The interpreter gets small tiles so CPU tests stay fast."""
    block_d = max(16, next_power_of_2(d))
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d, num_warps=1)
    small = block_d <= 64
    if kernel == "fwd":
        return dict(
            BLOCK_M=128,
            BLOCK_N=64 if small else 32 if block_d > 128 else 64,
            BLOCK_D=block_d,
            num_warps=4 if small else 8,
            num_stages=3,
        )
    if kernel == "dkdv":  # one program per key block, looping over query blocks
        return dict(
            BLOCK_M=32, BLOCK_N=128 if small else 64, BLOCK_D=block_d, num_warps=4 if small else 8, num_stages=2
        )
    return dict(
        BLOCK_M=128 if small else 64, BLOCK_N=32, BLOCK_D=block_d, num_warps=4 if small else 8, num_stages=2
    )  # dq: one program per query block, looping over key blocks


def _launch_args(q, k, causal, softmax_scale, cu_q, cu_k, max_q, max_k, mask):
    varlen = cu_q is not None
    if varlen:
        batch, nq, nk = cu_q.numel() - 1, max_q, max_k
        h, hk, d = q.shape[1], k.shape[1], q.shape[2]
    else:
        batch, h, nq, d = q.shape
        hk, nk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    dummy = q.new_empty(1, dtype=torch.int32)
    return dict(
        varlen=varlen,
        batch=batch,
        h=h,
        hk=hk,
        nq=nq,
        nk=nk,
        d=d,
        scale=scale,
        precision=precision,
        cu_q=cu_q if varlen else dummy,
        cu_k=cu_k if varlen else dummy,
        mask=mask if mask is not None else dummy,
        smb=mask.stride(0) if mask is not None else 0,
    )


def triton_forward(q, k, v, causal, softmax_scale, cu_q=None, cu_k=None, max_q=0, max_k=0, mask=None):
    a = _launch_args(q, k, causal, softmax_scale, cu_q, cu_k, max_q, max_k, mask)
    o = torch.empty_like(q)
    if a["varlen"]:
        lse = torch.empty(a["h"], q.shape[0], device=q.device, dtype=torch.float32)
        slb, slh = 0, lse.stride(0)
    else:
        lse = torch.empty(a["batch"], a["h"], a["nq"], device=q.device, dtype=torch.float32)
        slb, slh = lse.stride(0), lse.stride(1)
    tiles = _blocks(a["d"], dispatch.triton_interpreter(), "fwd")
    grid = (triton.cdiv(a["nq"], tiles["BLOCK_M"]), a["batch"] * a["h"])
    L = _Layout.strides
    _fwd_kernel[grid](
        q,
        k,
        v,
        o,
        lse,
        a["mask"],
        a["cu_q"],
        a["cu_k"],
        *L(q, a["varlen"]),
        *L(k, a["varlen"]),
        *L(v, a["varlen"]),
        *L(o, a["varlen"]),
        slb,
        slh,
        a["smb"],
        a["h"],
        a["h"] // a["hk"],
        a["nq"],
        a["nk"],
        a["d"],
        a["scale"] * _LOG2E,
        IS_VARLEN=a["varlen"],
        HAS_MASK=mask is not None,
        CAUSAL=causal,
        PRECISION=a["precision"],
        **tiles,
    )
    return o, lse


def triton_backward(do, q, k, v, o, lse, causal, softmax_scale, cu_q=None, cu_k=None, max_q=0, max_k=0, mask=None):
    a = _launch_args(q, k, causal, softmax_scale, cu_q, cu_k, max_q, max_k, mask)
    do = do.contiguous() if do.stride(-1) != 1 else do
    delta = (do.float() * o.float()).sum(-1)  # rowsum(dO ∘ O), laid out like lse
    delta = delta.transpose(0, 1).contiguous() if a["varlen"] else delta
    slb, slh = (0, lse.stride(0)) if a["varlen"] else (lse.stride(0), lse.stride(1))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    interpret = dispatch.triton_interpreter()
    dkdv_tiles, dq_tiles = _blocks(a["d"], interpret, "dkdv"), _blocks(a["d"], interpret, "dq")
    L = _Layout.strides
    vl, group = a["varlen"], a["h"] // a["hk"]
    common = dict(IS_VARLEN=vl, HAS_MASK=mask is not None, CAUSAL=causal, PRECISION=a["precision"])
    _bwd_dkdv_kernel[(triton.cdiv(a["nk"], dkdv_tiles["BLOCK_N"]), a["batch"] * a["hk"])](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        a["mask"],
        a["cu_q"],
        a["cu_k"],
        *L(q, vl),
        *L(k, vl),
        *L(v, vl),
        *L(do, vl),
        slb,
        slh,
        *L(dk, vl),
        *L(dv, vl),
        a["smb"],
        a["hk"],
        group,
        a["nq"],
        a["nk"],
        a["d"],
        a["scale"] * _LOG2E,
        a["scale"],
        **common,
        **dkdv_tiles,
    )
    _bwd_dq_kernel[(triton.cdiv(a["nq"], dq_tiles["BLOCK_M"]), a["batch"] * a["h"])](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        a["mask"],
        a["cu_q"],
        a["cu_k"],
        *L(q, vl),
        *L(k, vl),
        *L(v, vl),
        *L(do, vl),
        slb,
        slh,
        *L(dq, vl),
        a["smb"],
        a["h"],
        group,
        a["nq"],
        a["nk"],
        a["d"],
        a["scale"] * _LOG2E,
        a["scale"],
        **common,
        **dq_tiles,
    )
    return dq, dk, dv


@torch.library.custom_op("pairfree::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    softmax_scale: float | None,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    max_q: int,
    max_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward -> ``(out, log-sum-exp)`` (the only per-row state backward keeps)."""
    return triton_forward(q, k, v, causal, softmax_scale, cu_q, cu_k, max_q, max_k, mask)


@attention_fwd.register_fake
def _(q, k, v, mask, causal, softmax_scale, cu_q, cu_k, max_q, max_k):
    if cu_q is not None:  # varlen: lse (H, total_q)
        return torch.empty_like(q), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("pairfree::attention_bwd", mutates_args=())
def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    softmax_scale: float | None,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    max_q: int,
    max_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward -> ``(dq, dk, dv)``, the probabilities recomputed block by block."""
    return triton_backward(do, q, k, v, o, lse, causal, softmax_scale, cu_q, cu_k, max_q, max_k, mask)


@attention_bwd.register_fake
def _(do, q, k, v, o, lse, mask, causal, softmax_scale, cu_q, cu_k, max_q, max_k):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, causal, softmax_scale, cu_q, cu_k, max_q, max_k = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], mask, cu_q, cu_k)
    ctx.args = (causal, softmax_scale, max_q, max_k)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, mask, cu_q, cu_k = ctx.saved_tensors
    causal, softmax_scale, max_q, max_k = ctx.args
    dq, dk, dv = attention_bwd(do, q, k, v, o, lse, mask, causal, softmax_scale, cu_q, cu_k, max_q, max_k)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------
# 3. Functional API
# --------------------------------------------------------------------------------------------------------


def _check(q, k, v, batch_layout: bool):
    dims = 4 if batch_layout else 3
    layout = "(B, H, N, d)" if batch_layout else "(total, H, d)"
    if q.dim() != dims or k.dim() != dims or v.dim() != dims:
        raise ValueError(
            f"attention: q, k, v must be {layout}, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    hd = 1
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[hd] % k.shape[hd]:
        raise ValueError(
            f"attention: query heads ({q.shape[hd]}) must be a multiple of key/value heads ({k.shape[hd]})"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: head dims differ: q {q.shape[-1]} vs k {k.shape[-1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")


def _backend(q, backend: str) -> str:
    backend = dispatch.select("attention", q.device, backend)
    if backend == "triton":
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"attention: the triton kernel takes fp16, bf16 or fp32, got {q.dtype}")
        if q.shape[-1] > 128:
            raise ValueError(f"attention: the triton kernel takes head dims up to 128, got {q.shape[-1]}")
    return backend


def attention(
    q, k, v, key_padding_mask=None, causal: bool = False, softmax_scale: float | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Softmax attention over ``q (B, H, Nq, d)``, ``k, v (B, Hk, Nk, d)`` (``H`` a multiple of ``Hk``: GQA);
    ``key_padding_mask (B, Nk)`` bool or 0/1, True = attend. Returns ``(B, H, Nq, d)``."""
    _check(q, k, v, batch_layout=True)
    backend = _backend(q, backend)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (q.shape[0], k.shape[2]):
            raise ValueError(
                f"attention: key_padding_mask must be (B, Nk) = {(q.shape[0], k.shape[2])}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
    if backend == "reference":
        return attention_reference(q, k, v, key_padding_mask, causal, softmax_scale)
    if backend == "sdpa":
        group = q.shape[1] // k.shape[1]
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :].to(torch.bool)
        if causal and mask is not None:
            nq, nk = q.shape[2], k.shape[2]
            mask = mask & torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
        elif causal and q.shape[2] != k.shape[2]:
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - q.shape[2])
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=softmax_scale, enable_gqa=group > 1
        )
        return out if mask is None else out.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # fully masked rows -> 0
    mask = None if key_padding_mask is None else key_padding_mask.to(torch.uint8).contiguous()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return attention_fwd(q, k, v, mask, causal, softmax_scale, None, None, 0, 0)[0]


def varlen_attention(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention over packed sequences without padding: ``q (total_q, H, d)``, ``k, v (total_k, Hk, d)``,
    ``cu_seqlens_*`` int32 ``(num_seqs + 1,)`` offsets, ``max_seqlen_*`` the longest sequence."""
    _check(q, k, v, batch_layout=False)
    backend = _backend(q, backend)
    if backend in ("reference", "sdpa"):
        return varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    cu_q, cu_k = cu_seqlens_q.to(torch.int32).contiguous(), cu_seqlens_k.to(torch.int32).contiguous()
    return attention_fwd(q, k, v, None, causal, softmax_scale, cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k))[0]


def attention_flops(batch: int, heads: int, nq: int, nk: int, d: int, causal: bool, mode: str) -> float:
    """Matmul FLOPs (FlashAttention's convention: fwd 4·B·H·Nq·Nk·d, halved when causal; bwd 2.5× fwd)."""
    f = 4 * batch * heads * nq * nk * d * (0.5 if causal else 1.0)
    return {"forward": f, "backward": 2.5 * f, "full": 3.5 * f}[mode]


__all__ = ["attention", "attention_reference", "varlen_attention", "varlen_attention_reference", "attention_flops"]
