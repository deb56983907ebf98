"""SANA's ReLU linear attention: ``out = φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1) + eps)`` with ``φ = ReLU``.

Cost is linear in the number of tokens: keys and values reduce to a ``(d, d)`` state ``S`` and a ``(d,)``
normaliser ``z`` per head. The Triton path keeps only q, k, v and those states for backward (no per-token
intermediates: the reference — like diffusers' processor — keeps the fp32 copies, the padded values and the
scores), accumulates in fp32, and has an analytic backward:

    num = φ(Q)S, den = φ(Q)z + eps, out = num / den
    dnum = dout / den, dden = −⟨dout, out⟩ / den
    dφ(Q) = dnum Sᵀ + dden zᵀ,  dS = φ(Q)ᵀ dnum,  dz = φ(Q)ᵀ dden
    dφ(K) = V dSᵀ + 1 dzᵀ,  dV = φ(K) dS,  dQ = dφ(Q)·[Q > 0],  dK = dφ(K)·[K > 0]

Kernels: a chunked reduction of S and z (partial states per token chunk, summed), a token-parallel output
kernel, and two token-parallel backward kernels (dQ with partial dS/dz; then dK, dV).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pairfree.kernels import dispatch
from pairfree.kernels.triton_support import next_power_of_2, tl, triton


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """``q, k, v``: ``(B, H, N, d)`` -> ``(B, H, N, d)`` in ``q``'s dtype, computed in fp32 (fp64 for fp64)."""
    dtype = q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q, k, v = F.relu(q).to(acc), F.relu(k).to(acc), v.to(acc)
    state = torch.einsum("bhnd,bhne->bhde", k, v)  # φ(K)ᵀV
    norm = torch.einsum("bhnd,bhd->bhn", q, k.sum(2))  # φ(Q)(φ(K)ᵀ1)
    out = torch.einsum("bhnd,bhde->bhne", q, state) / (norm[..., None] + eps)
    return out.to(dtype)


if triton is not None:

    @triton.jit
    def _state_kernel(
        K, V, S, Z, N, D, skb, skh, skn, svb, svh, svn, H, CHUNK, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        """Partial S = φ(K)ᵀV and z = φ(K)ᵀ1 over one chunk of tokens."""
        pid_bh, pid_c = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        s = tl.zeros([BLOCK_D, BLOCK_D], tl.float32)
        z = tl.zeros([BLOCK_D], tl.float32)
        start = pid_c * CHUNK
        for n0 in range(start, tl.minimum(start + CHUNK, N), BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            m = (offs_n < N)[:, None] & dmask[None, :]
            k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=m, other=0.0)
            k = tl.maximum(k.to(tl.float32), 0.0)
            v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=m, other=0.0)
            s += tl.dot(tl.trans(k), v.to(tl.float32), input_precision="ieee")
            z += tl.sum(k, 0)
        base = (pid_bh * tl.num_programs(1) + pid_c) * BLOCK_D
        tl.store(S + (base + offs_d[:, None]) * BLOCK_D + offs_d[None, :], s)
        tl.store(Z + base + offs_d, z)

    @triton.jit
    def _out_kernel(
        Q, S, Z, OUT, N, D, sqb, sqh, sqn, sob, soh, son, H, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        pid_bh, pid_n = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m = (offs_n < N)[:, None] & (offs_d < D)[None, :]
        q = tl.maximum(
            tl.load(Q + b * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :], mask=m, other=0.0).to(tl.float32),
            0.0,
        )
        s = tl.load(S + (pid_bh * BLOCK_D + offs_d[:, None]) * BLOCK_D + offs_d[None, :])
        z = tl.load(Z + pid_bh * BLOCK_D + offs_d)
        num = tl.dot(q, s, input_precision="ieee")
        den = tl.sum(q * z[None, :], 1) + eps
        out = num / den[:, None]
        tl.store(
            OUT + b * sob + h * soh + offs_n[:, None] * son + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=m
        )

    @triton.jit
    def _bwd_q_kernel(
        Q,
        DO,
        S,
        Z,
        DQ,
        DS,
        DZ,
        N,
        D,
        sqb,
        sqh,
        sqn,
        sdob,
        sdoh,
        sdon,
        sdqb,
        sdqh,
        sdqn,
        H,
        eps,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """dQ for a token block, plus this block's partial dS = φ(Q)ᵀdnum and dz = φ(Q)ᵀdden."""
        pid_bh, pid_n = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m = (offs_n < N)[:, None] & (offs_d < D)[None, :]
        q_raw = tl.load(Q + b * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :], mask=m, other=0.0)
        q = tl.maximum(q_raw.to(tl.float32), 0.0)
        do = tl.load(DO + b * sdob + h * sdoh + offs_n[:, None] * sdon + offs_d[None, :], mask=m, other=0.0).to(
            tl.float32
        )
        s = tl.load(S + (pid_bh * BLOCK_D + offs_d[:, None]) * BLOCK_D + offs_d[None, :])
        z = tl.load(Z + pid_bh * BLOCK_D + offs_d)
        num = tl.dot(q, s, input_precision="ieee")
        den = tl.sum(q * z[None, :], 1) + eps
        out = num / den[:, None]
        dnum = do / den[:, None]
        dden = -tl.sum(do * out, 1) / den
        dq = tl.dot(dnum, tl.trans(s), input_precision="ieee") + dden[:, None] * z[None, :]
        dq = tl.where(q_raw > 0, dq, 0.0)
        tl.store(
            DQ + b * sdqb + h * sdqh + offs_n[:, None] * sdqn + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=m
        )
        ds = tl.dot(tl.trans(q), dnum, input_precision="ieee")
        dz = tl.sum(q * dden[:, None], 0)
        base = (pid_bh * tl.num_programs(1) + pid_n) * BLOCK_D
        tl.store(DS + (base + offs_d[:, None]) * BLOCK_D + offs_d[None, :], ds)
        tl.store(DZ + base + offs_d, dz)

    @triton.jit
    def _bwd_kv_kernel(
        K,
        V,
        DS,
        DZ,
        DK,
        DV,
        N,
        D,
        skb,
        skh,
        skn,
        svb,
        svh,
        svn,
        sdkb,
        sdkh,
        sdkn,
        sdvb,
        sdvh,
        sdvn,
        H,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_bh, pid_n = tl.program_id(0), tl.program_id(1)
        b, h = pid_bh // H, pid_bh % H
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m = (offs_n < N)[:, None] & (offs_d < D)[None, :]
        k_raw = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=m, other=0.0)
        k = tl.maximum(k_raw.to(tl.float32), 0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=m, other=0.0).to(tl.float32)
        ds = tl.load(DS + (pid_bh * BLOCK_D + offs_d[:, None]) * BLOCK_D + offs_d[None, :])
        dz = tl.load(DZ + pid_bh * BLOCK_D + offs_d)
        dk = tl.dot(v, tl.trans(ds), input_precision="ieee") + dz[None, :]
        dk = tl.where(k_raw > 0, dk, 0.0)
        dv = tl.dot(k, ds, input_precision="ieee")
        tl.store(
            DK + b * sdkb + h * sdkh + offs_n[:, None] * sdkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=m
        )
        tl.store(
            DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=m
        )


def _tiles(d: int, n: int) -> tuple[int, int, int]:
    block_d = max(16, next_power_of_2(d))
    block_n = 16 if dispatch.triton_interpreter() else (64 if block_d > 64 else 128)
    chunk = max(block_n, triton.cdiv(n, 16 if dispatch.triton_interpreter() else 64) // block_n * block_n)
    return block_n, block_d, chunk


def _s(t):  # strides (batch, head, token) of a (B, H, N, d) tensor
    return t.stride(0), t.stride(1), t.stride(2)


def triton_state(k, v):
    b, h, n, d = k.shape
    block_n, block_d, chunk = _tiles(d, n)
    chunks = triton.cdiv(n, chunk)
    s = torch.empty(b * h, chunks, block_d, block_d, device=k.device, dtype=torch.float32)
    z = torch.empty(b * h, chunks, block_d, device=k.device, dtype=torch.float32)
    _state_kernel[(b * h, chunks)](k, v, s, z, n, d, *_s(k), *_s(v), h, chunk, BLOCK_N=block_n, BLOCK_D=block_d)
    return s.sum(1).contiguous(), z.sum(1).contiguous()


@torch.library.custom_op("pairfree::linear_attention_fwd", mutates_args=())
def linear_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton forward -> ``(out, S, z)``: the ``(d, d)`` states are what backward keeps, no per-token ones."""
    b, h, n, d = q.shape
    block_n, block_d, _ = _tiles(d, n)
    s, z = triton_state(k, v)
    o = torch.empty_like(q)
    _out_kernel[(b * h, triton.cdiv(n, block_n))](
        q, s, z, o, n, d, *_s(q), *_s(o), h, eps, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return o, s, z


@linear_attention_fwd.register_fake
def _(q, k, v, eps):
    b, h, n, d = q.shape
    block_d = max(16, next_power_of_2(d))
    f32 = dict(device=q.device, dtype=torch.float32)
    return torch.empty_like(q), q.new_empty(b * h, block_d, block_d, **f32), q.new_empty(b * h, block_d, **f32)


@torch.library.custom_op("pairfree::linear_attention_bwd", mutates_args=())
def linear_attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor, z: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward -> ``(dq, dk, dv)`` (the analytic formula of the module docstring)."""
    b, h, n, d = q.shape
    block_n, block_d, _ = _tiles(d, n)
    blocks = triton.cdiv(n, block_n)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ds = torch.empty(b * h, blocks, block_d, block_d, device=q.device, dtype=torch.float32)
    dz = torch.empty(b * h, blocks, block_d, device=q.device, dtype=torch.float32)
    _bwd_q_kernel[(b * h, blocks)](
        q, do, s, z, dq, ds, dz, n, d, *_s(q), *_s(do), *_s(dq), h, eps, BLOCK_N=block_n, BLOCK_D=block_d
    )
    ds, dz = ds.sum(1).contiguous(), dz.sum(1).contiguous()
    _bwd_kv_kernel[(b * h, blocks)](
        k, v, ds, dz, dk, dv, n, d, *_s(k), *_s(v), *_s(dk), *_s(dv), h, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return dq, dk, dv


@linear_attention_bwd.register_fake
def _(do, q, k, v, s, z, eps):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, eps = inputs
    ctx.save_for_backward(q, k, v, output[1], output[2])
    ctx.eps = eps


def _backward(ctx, do, ds, dz):
    q, k, v, s, z = ctx.saved_tensors
    do = do if do.stride(-1) == 1 else do.contiguous()
    dq, dk, dv = linear_attention_bwd(do, q, k, v, s, z, ctx.eps)
    return dq, dk, dv, None


linear_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15, backend: str = "auto"
) -> torch.Tensor:
    """ReLU linear attention over ``(B, H, N, d)`` tensors (see the module docstring). CUDA → Triton,
    CPU → the reference (``backend=`` or ``PAIRFREE_LINEAR_ATTENTION_BACKEND`` overrides)."""
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise ValueError(
            f"linear_attention: q, k, v must share a (B, H, N, d) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    backend = dispatch.select("linear_attention", q.device, backend)
    if backend == "reference" or q.dtype == torch.float64:
        return linear_attention_reference(q, k, v, eps)
    if q.shape[-1] > 128:
        raise ValueError(f"linear_attention: the triton kernel takes head dims up to 128, got {q.shape[-1]}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return linear_attention_fwd(q, k, v, float(eps))[0]
