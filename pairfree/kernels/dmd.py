"""The DMD loss (DMD2's formulation) as one fused op:

    norm_b = mean |x̂0_b − r_b|,  g = nan_to_num((f − r) / norm_b),  loss_b = ½·mean((x̂0 − sg(x̂0 − g))²) = ½·mean(g²)

``x`` (x̂0, the generator's output) carries the gradient; ``real`` (r, the teacher's x0-prediction with CFG) and
``fake`` (f, the critic's) do not. The gradient is ``dx = g · dloss_b / n``: a descent step moves x̂0 toward the
teacher and away from the critic. The eager version materialises the normaliser broadcast, g, the detached
pseudo-target and the difference; the fused kernels read x, r, f once per pass and keep only the (B,) norms for
backward (g is recomputed from r and f). Per-sample losses ``(B,)`` in fp32 let the trainer weight edit types.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pairfree.kernels import dispatch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

_FMAX = 3.4028234663852886e38


def dmd_loss_reference(x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """DMD2's loss per sample, ``(B,)``, computed as the method states it (fp32, fp64 for fp64 inputs)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, rf, ff = x.to(acc), real.to(acc), fake.to(acc)
    dims = tuple(range(1, x.dim()))
    with torch.no_grad():
        norm = (xf - rf).abs().mean(dim=dims, keepdim=True)
        grad = torch.nan_to_num((ff - rf) / norm, posinf=_FMAX, neginf=-_FMAX)
        target = xf - grad
    return 0.5 * F.mse_loss(xf, target, reduction="none").mean(dim=dims)


if triton is not None:

    @triton.jit
    def _nan_to_num(g):
        g = tl.where(g != g, 0.0, g)
        return tl.minimum(tl.maximum(g, -3.4028234663852886e38), 3.4028234663852886e38)

    @triton.jit
    def _fwd_kernel(X, R, F_, LOSS, NORM, N, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        base = b.to(tl.int64) * N
        acc = tl.zeros([BLOCK], tl.float32)
        for n0 in range(0, N, BLOCK):
            offs = n0 + tl.arange(0, BLOCK)
            m = offs < N
            x = tl.load(X + base + offs, mask=m, other=0.0).to(tl.float32)
            r = tl.load(R + base + offs, mask=m, other=0.0).to(tl.float32)
            acc += tl.abs(x - r)
        norm = tl.sum(acc, 0) / N
        sq = tl.zeros([BLOCK], tl.float32)
        for n0 in range(0, N, BLOCK):
            offs = n0 + tl.arange(0, BLOCK)
            m = offs < N
            r = tl.load(R + base + offs, mask=m, other=0.0).to(tl.float32)
            f = tl.load(F_ + base + offs, mask=m, other=0.0).to(tl.float32)
            g = _nan_to_num((f - r) / norm)
            sq += tl.where(m, g * g, 0.0)
        tl.store(NORM + b, norm)
        tl.store(LOSS + b, 0.5 * tl.sum(sq, 0) / N)

    @triton.jit
    def _bwd_kernel(DLOSS, R, F_, NORM, DX, N, BLOCK: tl.constexpr):
        b, pid = tl.program_id(0), tl.program_id(1)
        base = b.to(tl.int64) * N
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        r = tl.load(R + base + offs, mask=m, other=0.0).to(tl.float32)
        f = tl.load(F_ + base + offs, mask=m, other=0.0).to(tl.float32)
        c = tl.load(DLOSS + b).to(tl.float32) / N
        g = _nan_to_num((f - r) / tl.load(NORM + b))
        tl.store(DX + base + offs, (g * c).to(DX.dtype.element_ty), mask=m)


def _block(n: int) -> int:
    return 64 if dispatch.triton_interpreter() else min(4096, triton.next_power_of_2(max(n, 16)))


class _DMDLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, real, fake, backend):
        b, n = x.shape[0], x[0].numel()
        x2, r2, f2 = (t.reshape(b, n).contiguous() for t in (x, real, fake))
        if backend == "cpp":
            loss, norm = dispatch.extension().dmd_loss_fwd(x2, r2, f2)
        else:
            loss = torch.empty(b, device=x.device, dtype=torch.float32)
            norm = torch.empty_like(loss)
            _fwd_kernel[(b,)](x2, r2, f2, loss, norm, n, BLOCK=_block(n))
        ctx.save_for_backward(r2, f2, norm)
        ctx.meta = (backend, x.shape, x.dtype)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        r2, f2, norm = ctx.saved_tensors
        backend, shape, dtype = ctx.meta
        b, n = r2.shape
        if backend == "cpp":
            dx = dispatch.extension().dmd_loss_bwd(dloss.contiguous(), r2, f2, norm, dtype)
        else:
            dx = torch.empty(b, n, device=r2.device, dtype=dtype)
            block = _block(n)
            _bwd_kernel[(b, triton.cdiv(n, block))](dloss.contiguous(), r2, f2, norm, dx, n, BLOCK=block)
        return dx.view(shape), None, None, None


def dmd_loss(x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Per-sample DMD loss ``(B,)`` (fp32); gradient only to ``x`` (see the module docstring)."""
    if not (x.shape == real.shape == fake.shape) or x.dim() < 2:
        raise ValueError(
            f"dmd_loss: x, real, fake must share a (B, ...) shape, got {tuple(x.shape)}, "
            f"{tuple(real.shape)}, {tuple(fake.shape)}"
        )
    backend = dispatch.select("dmd_loss", x.device, backend)
    if backend == "reference" or x.dtype == torch.float64 and backend == "triton":
        return dmd_loss_reference(x, real, fake)
    real, fake = real.detach().to(x.dtype), fake.detach().to(x.dtype)
    return _DMDLoss.apply(x, real, fake, backend)
