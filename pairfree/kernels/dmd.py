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
from pairfree.kernels.triton_support import elementwise_block, tl, triton

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


@torch.library.custom_op("pairfree::dmd_loss_fwd", mutates_args=())
def dmd_loss_fwd(
    x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N)`` inputs -> per-sample ``(loss, norm)`` in fp32 (``norm`` is saved for backward)."""
    if backend == "cpp":
        loss, norm = dispatch.extension().dmd_loss_fwd(x, real, fake)
        return loss, norm
    b, n = x.shape
    loss = torch.empty(b, device=x.device, dtype=torch.float32)
    norm = torch.empty_like(loss)
    _fwd_kernel[(b,)](x, real, fake, loss, norm, n, BLOCK=elementwise_block(n))
    return loss, norm


@dmd_loss_fwd.register_fake
def _(x, real, fake, backend):
    loss = x.new_empty(x.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("pairfree::dmd_loss_bwd", mutates_args=())
def dmd_loss_bwd(
    dloss: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, norm: torch.Tensor, backend: str
) -> torch.Tensor:
    """``dx`` (the dtype of ``real``, which is ``x``'s) from the per-sample loss gradient."""
    if backend == "cpp":
        return dispatch.extension().dmd_loss_bwd(dloss, real, fake, norm, real.dtype)
    b, n = real.shape
    dx = torch.empty_like(real)
    block = elementwise_block(n)
    _bwd_kernel[(b, triton.cdiv(n, block))](dloss, real, fake, norm, dx, n, BLOCK=block)
    return dx


@dmd_loss_bwd.register_fake
def _(dloss, real, fake, norm, backend):
    return torch.empty_like(real)


def _setup_context(ctx, inputs, output):
    _, real, fake, backend = inputs
    ctx.save_for_backward(real, fake, output[1])
    ctx.backend = backend


def _backward(ctx, dloss, dnorm):
    real, fake, norm = ctx.saved_tensors
    return dmd_loss_bwd(dloss.contiguous(), real, fake, norm, ctx.backend), None, None, None


dmd_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


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
    b = x.shape[0]
    flat = lambda z: z.reshape(b, -1).contiguous()
    return dmd_loss_fwd(flat(x), flat(real), flat(fake), backend)[0]
