"""The few-step sampler's elementwise step as one op: from the model's velocity, the x0-prediction and the
re-noised input of the next step,

    x̂0 = x_t − t·v,   x_next = (1 − t_next)·x̂0 + t_next·ε      (t, t_next per sample, ``(B,)``)

One pass over memory instead of four eager kernels, and nothing saved for backward except t and t_next:
dx_t = dx̂0 + (1 − t_next)·dx_next, dv = −t·(dx̂0 + (1 − t_next)·dx_next), dε = t_next·dx_next.
"""

from __future__ import annotations

import torch

from pairfree.kernels import dispatch
from pairfree.kernels.triton_support import elementwise_block, tl, triton


def flow_step_reference(x_t, v, eps, t, t_next):
    """``(x̂0, x_next)`` in eager PyTorch."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    x0 = x_t - t.to(x_t.dtype).view(shape) * v
    tn = t_next.to(x_t.dtype).view(shape)
    return x0, (1 - tn) * x0 + tn * eps


if triton is not None:

    @triton.jit
    def _fwd_kernel(XT, V, E, T, TN, X0, XN, N, total, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < total
        b = offs // N
        t = tl.load(T + b, mask=m, other=0.0)
        tn = tl.load(TN + b, mask=m, other=0.0)
        x0 = tl.load(XT + offs, mask=m, other=0.0).to(tl.float32) - t * tl.load(V + offs, mask=m, other=0.0).to(
            tl.float32
        )
        xn = (1 - tn) * x0 + tn * tl.load(E + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(X0 + offs, x0.to(X0.dtype.element_ty), mask=m)
        tl.store(XN + offs, xn.to(XN.dtype.element_ty), mask=m)

    @triton.jit
    def _bwd_kernel(D0, DN, T, TN, DXT, DV, DE, N, total, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < total
        b = offs // N
        t = tl.load(T + b, mask=m, other=0.0)
        tn = tl.load(TN + b, mask=m, other=0.0)
        dn = tl.load(DN + offs, mask=m, other=0.0).to(tl.float32)
        g = tl.load(D0 + offs, mask=m, other=0.0).to(tl.float32) + (1 - tn) * dn
        tl.store(DXT + offs, g.to(DXT.dtype.element_ty), mask=m)
        tl.store(DV + offs, (-t * g).to(DV.dtype.element_ty), mask=m)
        tl.store(DE + offs, (tn * dn).to(DE.dtype.element_ty), mask=m)


@torch.library.custom_op("pairfree::flow_step_fwd", mutates_args=())
def flow_step_fwd(
    x_t: torch.Tensor, v: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N)`` inputs, fp32 ``t``/``t_next`` ``(B,)`` -> ``(x̂0, x_next)`` (the C++ or Triton kernel)."""
    if backend == "cpp":
        x0, xn = dispatch.extension().flow_step_fwd(x_t, v, eps, t, t_next)
        return x0, xn
    x0, xn = torch.empty_like(x_t), torch.empty_like(x_t)
    b, n = x_t.shape
    block = elementwise_block()
    _fwd_kernel[(triton.cdiv(b * n, block),)](x_t, v, eps, t, t_next, x0, xn, n, b * n, BLOCK=block)
    return x0, xn


@flow_step_fwd.register_fake
def _(x_t, v, eps, t, t_next, backend):
    return torch.empty_like(x_t), torch.empty_like(x_t)


@torch.library.custom_op("pairfree::flow_step_bwd", mutates_args=())
def flow_step_bwd(
    dx0: torch.Tensor, dxn: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx_t, dv, dε)`` from the gradients of ``(x̂0, x_next)``."""
    if backend == "cpp":
        dxt, dv, de = dispatch.extension().flow_step_bwd(dx0, dxn, t, t_next, True)
        return dxt, dv, de
    dxt, dv, de = torch.empty_like(dx0), torch.empty_like(dx0), torch.empty_like(dx0)
    total, block = dx0.numel(), elementwise_block()
    _bwd_kernel[(triton.cdiv(total, block),)](dx0, dxn, t, t_next, dxt, dv, de, dx0.shape[1], total, BLOCK=block)
    return dxt, dv, de


@flow_step_bwd.register_fake
def _(dx0, dxn, t, t_next, backend):
    return torch.empty_like(dx0), torch.empty_like(dx0), torch.empty_like(dx0)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[3], inputs[4])
    ctx.backend = inputs[5]


def _backward(ctx, dx0, dxn):
    t, t_next = ctx.saved_tensors
    ref = dx0 if dx0 is not None else dxn
    dx0 = torch.zeros_like(ref) if dx0 is None else dx0.contiguous()
    dxn = torch.zeros_like(ref) if dxn is None else dxn.contiguous()
    dxt, dv, de = flow_step_bwd(dx0, dxn, t, t_next, ctx.backend)
    return dxt, dv, de, None, None, None


flow_step_fwd.register_autograd(_backward, setup_context=_setup_context)


def flow_step(x_t, v, eps, t, t_next, backend: str = "auto"):
    """``(x̂0, x_next)`` of one sampler step (see the module docstring); ``t``/``t_next`` ``(B,)``."""
    if not (x_t.shape == v.shape == eps.shape):
        raise ValueError(
            f"flow_step: x_t, v, eps must share a shape, got {tuple(x_t.shape)}, {tuple(v.shape)}, {tuple(eps.shape)}"
        )
    if t.shape != x_t.shape[:1] or t_next.shape != x_t.shape[:1]:
        raise ValueError(
            f"flow_step: t and t_next must be (B,) = ({x_t.shape[0]},), got {tuple(t.shape)}, {tuple(t_next.shape)}"
        )
    backend = dispatch.select("flow_step", x_t.device, backend)
    if backend == "reference" or x_t.dtype == torch.float64 and backend == "triton":
        return flow_step_reference(x_t, v, eps, t, t_next)
    b = x_t.shape[0]
    flat = lambda z: z.to(x_t.dtype).reshape(b, -1).contiguous()
    x0, xn = flow_step_fwd(flat(x_t), flat(v), flat(eps), t.float().contiguous(), t_next.float().contiguous(), backend)
    return x0.view(x_t.shape), xn.view(x_t.shape)
