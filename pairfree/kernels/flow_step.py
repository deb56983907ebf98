"""The few-step sampler's elementwise step as one op: from the model's velocity, the x0-prediction and the
re-noised input of the next step,

    x̂0 = x_t − t·v,   x_next = (1 − t_next)·x̂0 + t_next·ε      (t, t_next per sample, ``(B,)``)

One pass over memory instead of four eager kernels, and nothing saved for backward except t and t_next:
dx_t = dx̂0 + (1 − t_next)·dx_next, dv = −t·(dx̂0 + (1 − t_next)·dx_next), dε = t_next·dx_next.
"""

from __future__ import annotations

import torch

from pairfree.kernels import dispatch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


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


def _block() -> int:
    return 256 if dispatch.triton_interpreter() else 2048


class _FlowStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_t, v, eps, t, t_next, backend):
        b, n = x_t.shape[0], x_t[0].numel()
        x2, v2, e2 = (z.reshape(b, n).contiguous() for z in (x_t, v, eps))
        tf, tnf = t.float().contiguous(), t_next.float().contiguous()
        if backend == "cpp":
            x0, xn = dispatch.extension().flow_step_fwd(x2, v2, e2, tf, tnf)
        else:
            x0, xn = torch.empty_like(x2), torch.empty_like(x2)
            _fwd_kernel[(triton.cdiv(b * n, _block()),)](x2, v2, e2, tf, tnf, x0, xn, n, b * n, BLOCK=_block())
        ctx.save_for_backward(tf, tnf)
        ctx.meta = (backend, x_t.shape)
        return x0.view(x_t.shape), xn.view(x_t.shape)

    @staticmethod
    def backward(ctx, dx0, dxn):
        tf, tnf = ctx.saved_tensors
        backend, shape = ctx.meta
        b = shape[0]
        ref = dx0 if dx0 is not None else dxn
        dx0 = torch.zeros_like(ref) if dx0 is None else dx0
        dxn = torch.zeros_like(ref) if dxn is None else dxn
        d0, dn = dx0.reshape(b, -1).contiguous(), dxn.reshape(b, -1).contiguous()
        if backend == "cpp":
            dxt, dv, de = dispatch.extension().flow_step_bwd(d0, dn, tf, tnf, ctx.needs_input_grad[2])
            de = de if ctx.needs_input_grad[2] else None
        else:
            dxt, dv, de = torch.empty_like(d0), torch.empty_like(d0), torch.empty_like(d0)
            total = d0.numel()
            _bwd_kernel[(triton.cdiv(total, _block()),)](
                d0, dn, tf, tnf, dxt, dv, de, d0.shape[1], total, BLOCK=_block()
            )
        return dxt.view(shape), dv.view(shape), None if de is None else de.view(shape), None, None, None


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
    return _FlowStep.apply(x_t, v.to(x_t.dtype), eps.to(x_t.dtype), t, t_next, backend)
