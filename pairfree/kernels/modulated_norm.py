"""adaLN-modulated RMSNorm and LayerNorm, the DiT's hottest memory-bound op, with an optional fused residual add.

    s = residual + gate * x            (only when ``residual`` is given; otherwise s = x)
    rms:   y = s / sqrt(mean(s**2, -1) + eps) * weight * (1 + scale) + shift
    layer: y = (s - mean(s)) / sqrt(var(s) + eps) * weight * (1 + scale) + shift     (SANA's norm, no affine)

``x``: ``(B, ..., D)``. ``shift``/``scale``/``gate``: ``(B, D)`` (per-sample, the usual adaLN-single
modulation) or ``x.shape`` (per-token, e.g. a clean reference image's tokens at t=0 next to noisy ones).
The residual form is the DiT block's ``x = x + gate * attn(...)`` followed by the next modulated norm in one
pass over memory; it returns ``(y, s)`` so ``s`` continues as the residual stream.

This file holds, top to bottom: the PyTorch reference, the Triton kernels and their launchers, the backend
table (Triton, C++ CPU and CUDA kernels from ``pairfree._C``, reference), the ``torch.ops.pairfree``
operators with their autograd formula and fake kernels, and the functional entry point.
"""

from __future__ import annotations

import math

import torch

from pairfree.kernels import dispatch
from pairfree.kernels.triton_support import num_warps, row_block, tl, triton

# --------------------------------------------------------------------------------------------------------
# 1. Reference
# --------------------------------------------------------------------------------------------------------


def modulated_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    kind: str = "rms",
):
    """Plain PyTorch, computed in the inputs' dtype: the ground truth every backend is tested against."""
    _check_inputs(x, weight, shift, scale, residual, gate)
    _check_kind(kind)

    def per_token(m):
        return m if m is None or m.shape == x.shape else m.view(m.shape[0], *([1] * (x.dim() - 2)), m.shape[-1])

    shift, scale, gate = per_token(shift), per_token(scale), per_token(gate)
    s = x
    if residual is not None:
        s = residual + (x if gate is None else gate * x)
    c = s - s.mean(-1, keepdim=True) if kind == "layer" else s
    y = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    y = y * (1 + scale) + shift
    return y if residual is None else (y, s)


def _check_kind(kind: str) -> None:
    if kind not in ("rms", "layer"):
        raise ValueError(f"modulated norm: kind must be 'rms' or 'layer', got {kind!r}")


def _check_inputs(x, weight, shift, scale, residual, gate) -> bool:
    """Validate shapes with messages naming the argument; returns True for per-sample modulation."""
    if x.dim() < 2:
        raise ValueError(f"modulated norm: x must have shape (B, ..., D), got {tuple(x.shape)}")
    b, d = x.shape[0], x.shape[-1]
    per_sample = (b, d)
    modes = set()
    for name, m in (("shift", shift), ("scale", scale), ("gate", gate)):
        if m is None:
            continue
        if tuple(m.shape) == tuple(x.shape):
            modes.add("token")
        elif tuple(m.shape) == per_sample:
            modes.add("sample")
        else:
            raise ValueError(
                f"modulated norm: {name} has shape {tuple(m.shape)}; expected {per_sample} (per-sample) "
                f"or {tuple(x.shape)} (per-token) for x of shape {tuple(x.shape)}"
            )
    if len(modes) > 1:
        raise ValueError("modulated norm: shift, scale and gate must all be per-sample (B, D) or all per-token")
    if weight is not None and tuple(weight.shape) != (d,):
        raise ValueError(f"modulated norm: weight has shape {tuple(weight.shape)}, expected ({d},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(
            f"modulated norm: residual has shape {tuple(residual.shape)}, expected {tuple(x.shape)} (as x)"
        )
    if gate is not None and residual is None:
        raise ValueError("modulated norm: gate needs a residual (s = residual + gate * x)")
    return modes == {"sample"} and x.dim() > 2


# --------------------------------------------------------------------------------------------------------
# 2. Triton kernels (2-D layout: rows R = B * N of length D; modulation row of row r is r // GROUP)
# --------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _fwd_kernel(
        X,
        RES,
        GATE,
        W,
        SHIFT,
        SCALE,
        Y,
        XSUM,
        RSTD,
        D,
        GROUP,
        eps,
        HAS_RES: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        LAYER: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One program per row: s = res + gate*x; c = s (rms) or s - mean(s) (layer); y = c*rstd*w*(1+scale)+shift.
        X, Y, XSUM: (R, D)."""
        row = tl.program_id(0).to(tl.int64)
        mrow = row // GROUP
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        s = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            if HAS_GATE:
                s = s * tl.load(GATE + mrow * D + cols, mask=mask, other=0.0).to(tl.float32)
            s = (s + tl.load(RES + row * D + cols, mask=mask, other=0.0).to(tl.float32)).to(XSUM.dtype.element_ty)
            tl.store(XSUM + row * D + cols, s, mask=mask)
            s = s.to(tl.float32)  # normalise the stored (rounded) sum: backward sees the same values
        if LAYER:
            s = tl.where(mask, s - tl.sum(s, axis=0) / D, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / D + eps)
        tl.store(RSTD + row, rstd)
        n = s * rstd
        if HAS_W:
            n = n * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(SCALE + mrow * D + cols, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(SHIFT + mrow * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * D + cols, (n * (1.0 + scale) + shift).to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_kernel(
        DY,
        DXSUM,
        XN,
        H,
        W,
        SCALE,
        GATE,
        RSTD,
        DX,
        DRES,
        DW_PART,
        DSHIFT,
        DSCALE,
        DGATE,
        TOKENS,
        CHUNK,
        D,
        GROUP,
        HAS_RES: tl.constexpr,
        HAS_DXSUM: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        PER_SAMPLE: tl.constexpr,
        LAYER: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Program (b, c) walks rows [b*TOKENS + c*CHUNK, ...) of sample b, accumulating dW (and, per-sample,
        dshift/dscale/dgate) in fp32 registers; one partial row per program, summed by the launcher.
        Per-token modulation gradients are written row by row into DSHIFT/DSCALE/DGATE instead."""
        b = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1).to(tl.int64)
        pid = b * tl.num_programs(1) + c
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_W else 1.0
        acc_dw = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_sh = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_sc = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_g = tl.zeros([BLOCK_D], dtype=tl.float32)
        start = b * TOKENS + c * CHUNK
        end = tl.minimum(start + CHUNK, (b + 1) * TOKENS)
        for row in range(start, end):
            mrow = row // GROUP
            o = row * D + cols
            rstd = tl.load(RSTD + row)
            xhat = tl.load(XN + o, mask=mask, other=0.0).to(tl.float32)
            if LAYER:  # the mean is recomputed from s, not saved
                xhat = tl.where(mask, xhat - tl.sum(xhat, axis=0) / D, 0.0)
            xhat = xhat * rstd
            dy = tl.load(DY + o, mask=mask, other=0.0).to(tl.float32)
            scale = tl.load(SCALE + mrow * D + cols, mask=mask, other=0.0).to(tl.float32)
            g = dy * (1.0 + scale)
            acc_dw += g * xhat
            gx = g * w
            ds = gx - xhat * (tl.sum(gx * xhat, axis=0) / D)
            if LAYER:
                ds -= tl.sum(gx, axis=0) / D
            ds = tl.where(mask, ds * rstd, 0.0)
            if HAS_DXSUM:
                ds += tl.load(DXSUM + o, mask=mask, other=0.0).to(tl.float32)
            dg = tl.zeros([BLOCK_D], dtype=tl.float32)
            if HAS_RES:
                tl.store(DRES + o, ds.to(DRES.dtype.element_ty), mask=mask)
                if HAS_GATE:
                    gate = tl.load(GATE + mrow * D + cols, mask=mask, other=0.0).to(tl.float32)
                    tl.store(DX + o, (gate * ds).to(DX.dtype.element_ty), mask=mask)
                    dg = tl.load(H + o, mask=mask, other=0.0).to(tl.float32) * ds
                else:
                    tl.store(DX + o, ds.to(DX.dtype.element_ty), mask=mask)
            else:
                tl.store(DX + o, ds.to(DX.dtype.element_ty), mask=mask)
            if PER_SAMPLE:
                acc_sh += dy
                acc_sc += dy * xhat * w
                acc_g += dg
            else:
                tl.store(DSHIFT + o, dy.to(DSHIFT.dtype.element_ty), mask=mask)
                tl.store(DSCALE + o, (dy * xhat * w).to(DSCALE.dtype.element_ty), mask=mask)
                if HAS_GATE:
                    tl.store(DGATE + o, dg.to(DGATE.dtype.element_ty), mask=mask)
        tl.store(DW_PART + pid * D + cols, acc_dw, mask=mask)
        if PER_SAMPLE:
            tl.store(DSHIFT + pid * D + cols, acc_sh, mask=mask)
            tl.store(DSCALE + pid * D + cols, acc_sc, mask=mask)
            if HAS_GATE:
                tl.store(DGATE + pid * D + cols, acc_g, mask=mask)


def triton_forward(x, residual, gate, weight, shift, scale, group: int, eps: float, layer: bool):
    """Launch the Triton forward on 2-D inputs (see section 2). Returns ``(y, x_sum, rstd)``."""
    rows, d = x.shape
    block_d = row_block(d, 1)
    y = torch.empty_like(x)
    x_sum = torch.empty_like(x) if residual is not None else x.new_empty(0)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    if rows:
        _fwd_kernel[(rows,)](
            x,
            residual if residual is not None else x,
            gate if gate is not None else x,
            weight if weight is not None else x,
            shift,
            scale,
            y,
            x_sum,
            rstd,
            d,
            group,
            eps,
            HAS_RES=residual is not None,
            HAS_GATE=gate is not None,
            HAS_W=weight is not None,
            LAYER=layer,
            BLOCK_D=block_d,
            num_warps=num_warps(block_d),
        )
    return y, x_sum, rstd


def _row_chunks(batch: int, tokens: int, device: torch.device) -> int:
    """Programs per sample in backward: enough to fill the GPU (4 per SM), few under the interpreter."""
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(tokens, math.ceil(target / batch)))


def triton_backward(dy, dx_sum, x_normed, h, weight, scale, gate, rstd, batch: int, group: int, layer: bool):
    """Launch the Triton backward. Returns ``(dx, dresidual, dweight, dshift, dscale, dgate)``."""
    rows, d = x_normed.shape
    tokens = rows // batch
    per_sample = group > 1
    chunks = _row_chunks(batch, tokens, x_normed.device)
    programs = batch * chunks
    f32 = dict(device=x_normed.device, dtype=torch.float32)
    empty = lambda: x_normed.new_empty(0)  # distinct tensors: op outputs must not alias
    dx = torch.empty_like(x_normed)
    dres = torch.empty_like(x_normed) if h is not None else empty()
    dw_part = torch.empty(programs, d, **f32)
    if per_sample:
        dmods = [torch.empty(programs, d, **f32) for _ in range(3)]
    else:
        dmods = [torch.empty_like(scale) for _ in range(3)]
    if rows:
        block_d = row_block(d, 1)
        _bwd_kernel[(batch, chunks)](
            dy,
            dx_sum if dx_sum is not None else dy,
            x_normed,
            h if h is not None else dy,
            weight if weight is not None else dy,
            scale,
            gate if gate is not None else dy,
            rstd,
            dx,
            dres if h is not None else dx,
            dw_part,
            *dmods,
            tokens,
            math.ceil(tokens / chunks),
            d,
            group,
            HAS_RES=h is not None,
            HAS_DXSUM=dx_sum is not None,
            HAS_GATE=gate is not None,
            HAS_W=weight is not None,
            PER_SAMPLE=per_sample,
            LAYER=layer,
            BLOCK_D=block_d,
            num_warps=num_warps(block_d),
        )
    else:
        dw_part.zero_()
        for m in dmods:
            m.zero_()
    dw = dw_part.sum(0).to(x_normed.dtype) if weight is not None else empty()
    if per_sample:
        dmods = [m.view(batch, chunks, d).sum(1).to(x_normed.dtype) for m in dmods]
    dshift, dscale, dgate = dmods
    return dx, dres, dw, dshift, dscale, dgate if gate is not None else empty()


# --------------------------------------------------------------------------------------------------------
# 3. Reference backend (fp32 PyTorch on the same 2-D layout)
# --------------------------------------------------------------------------------------------------------


def _reference_2d(x, residual, gate, weight, shift, scale, group, eps, layer):
    """Reference forward on 2-D inputs in fp32, rounding ``s`` to the input dtype like the kernels do."""
    dtype, (rows, d) = x.dtype, x.shape
    f = lambda t: None if t is None else t.float()
    as3 = lambda t: None if t is None else t.float().view(rows // group, group, d)
    s = as3(x)
    if residual is not None:
        s = (as3(residual) + (s if gate is None else f(gate)[:, None] * s)).to(dtype).float()
    c = s - s.mean(-1, keepdim=True) if layer else s
    rstd = torch.rsqrt(c.pow(2).mean(-1) + eps)
    y = c * rstd[..., None]
    if weight is not None:
        y = y * f(weight)
    y = y * (1 + f(scale)[:, None]) + f(shift)[:, None]
    return y.reshape(rows, d).to(dtype), s.reshape(rows, d).to(dtype), rstd.reshape(rows)


def reference_forward(x, residual, gate, weight, shift, scale, group: int, eps: float, layer: bool):
    y, s, rstd = _reference_2d(x, residual, gate, weight, shift, scale, group, eps, layer)
    return y, (s if residual is not None else x.new_empty(0)), rstd


def reference_backward(dy, dx_sum, x_normed, h, weight, scale, gate, eps: float, group: int, layer: bool):
    """The analytic gradient in fp32 PyTorch (tests check it against autograd of the reference)."""
    rows, d = x_normed.shape
    dtype = dy.dtype
    empty = lambda: x_normed.new_empty(0)  # distinct tensors: op outputs must not alias
    as3 = lambda t: t.float().view(rows // group, group, d)
    s, g = as3(x_normed), as3(dy) * (1 + scale.float()[:, None])
    c = s - s.mean(-1, keepdim=True) if layer else s
    rstd = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    xhat = c * rstd
    w = weight.float() if weight is not None else 1.0
    gx = g * w
    ds = gx - xhat * (gx * xhat).mean(-1, keepdim=True)
    if layer:
        ds = ds - gx.mean(-1, keepdim=True)
    ds = rstd * ds
    dw = (g * xhat).sum((0, 1)).to(dtype) if weight is not None else empty()
    dshift = as3(dy).sum(1).to(dtype)
    dscale = (as3(dy) * xhat * w).sum(1).to(dtype)
    if h is None:
        return ds.reshape(rows, d).to(dtype), empty(), dw, dshift, dscale, empty()
    if dx_sum is not None:
        ds = ds + as3(dx_sum)
    dres = ds.reshape(rows, d).to(dtype)
    if gate is None:
        return dres.clone(), dres, dw, dshift, dscale, empty()
    dx = (gate.float()[:, None] * ds).reshape(rows, d).to(dtype)
    return dx, dres, dw, dshift, dscale, (as3(h) * ds).sum(1).to(dtype)


# --------------------------------------------------------------------------------------------------------
# 4. Backend table: every entry takes the same 2-D arguments
# --------------------------------------------------------------------------------------------------------


def _ext_forward(x, residual, gate, weight, shift, scale, group, eps, layer):
    return dispatch.extension().modulated_norm_fwd(x, residual, gate, weight, shift, scale, group, eps, layer)


def _ext_backward(dy, dx_sum, x_normed, h, weight, scale, gate, rstd, eps, batch, group, layer):
    return dispatch.extension().modulated_norm_bwd(
        dy, dx_sum, x_normed, h, weight, scale, gate, rstd, batch, group, layer
    )


_FORWARD = {
    "reference": reference_forward,
    "triton": triton_forward,
    "cpp": _ext_forward,
    "cuda": _ext_forward,
}
_BACKWARD = {
    "reference": lambda dy, dxs, xn, h, w, sc, g, rstd, eps, batch, group, layer: reference_backward(
        dy, dxs, xn, h, w, sc, g, eps, group, layer
    ),
    "triton": lambda dy, dxs, xn, h, w, sc, g, rstd, eps, batch, group, layer: triton_backward(
        dy, dxs, xn, h, w, sc, g, rstd, batch, group, layer
    ),
    "cpp": _ext_backward,
    "cuda": _ext_backward,
}


# --------------------------------------------------------------------------------------------------------
# 5. torch.ops.pairfree operators: dispatch, autograd formula, fake kernels (so torch.compile traces them)
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("pairfree::modulated_norm_fwd", mutates_args=())
def modulated_norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    group: int,
    eps: float,
    layer: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-D forward ``(R, D)`` -> ``(y, s, rstd)``; ``s`` is empty without a residual."""
    name = dispatch.select("modulated_norm", x.device, backend)
    return tuple(_FORWARD[name](x, residual, gate, weight, shift, scale, group, eps, layer))


@modulated_norm_fwd.register_fake
def _(x, residual, gate, weight, shift, scale, group, eps, layer, backend):
    s = torch.empty_like(x) if residual is not None else x.new_empty(0)
    return torch.empty_like(x), s, x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("pairfree::modulated_norm_bwd", mutates_args=())
def modulated_norm_bwd(
    dy: torch.Tensor,
    dx_sum: torch.Tensor | None,
    x_normed: torch.Tensor,
    h: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor,
    gate: torch.Tensor | None,
    rstd: torch.Tensor,
    eps: float,
    group: int,
    layer: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-D backward -> ``(dx, dresidual, dweight, dshift, dscale, dgate)``; absent inputs get empty grads."""
    name = dispatch.select("modulated_norm", dy.device, backend)
    if x_normed.shape[0] == 0:
        name = "reference"  # nothing to launch; the reference gets the empty shapes right
    batch = x_normed.shape[0] // group if group > 1 else 1
    return tuple(_BACKWARD[name](dy, dx_sum, x_normed, h, weight, scale, gate, rstd, eps, batch, group, layer))


@modulated_norm_bwd.register_fake
def _(dy, dx_sum, x_normed, h, weight, scale, gate, rstd, eps, group, layer, backend):
    empty = lambda: dy.new_empty(0)
    return (
        torch.empty_like(dy),
        torch.empty_like(dy) if h is not None else empty(),
        torch.empty_like(weight) if weight is not None else empty(),
        torch.empty_like(scale),
        torch.empty_like(scale),
        torch.empty_like(scale) if gate is not None else empty(),
    )


def _setup_context(ctx, inputs, output):
    x, residual, gate, weight, shift, scale, group, eps, layer, backend = inputs
    _, s, rstd = output
    has_residual = residual is not None
    ctx.save_for_backward(s if has_residual else x, x if has_residual else None, weight, scale, gate, rstd)
    ctx.group, ctx.eps, ctx.layer, ctx.backend, ctx.has_residual = group, eps, layer, backend, has_residual


def _backward(ctx, dy, ds, drstd):
    x_normed, h, weight, scale, gate, rstd = ctx.saved_tensors
    dx_sum = ds.contiguous() if ctx.has_residual and ds is not None else None
    dx, dres, dw, dshift, dscale, dgate = modulated_norm_bwd(
        dy.contiguous(), dx_sum, x_normed, h, weight, scale, gate, rstd, ctx.eps, ctx.group, ctx.layer, ctx.backend
    )
    return (
        dx,
        dres if ctx.has_residual else None,
        dgate if gate is not None else None,
        dw if weight is not None else None,
        dshift,
        dscale,
        None,
        None,
        None,
        None,
    )


modulated_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------------
# 6. Functional entry points
# --------------------------------------------------------------------------------------------------------


def modulated_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    kind: str = "rms",
    backend: str = "auto",
):
    """``norm(s) * weight * (1 + scale) + shift`` with ``s = residual + gate * x`` (or ``s = x``) and ``norm``
    RMSNorm (``kind="rms"``) or LayerNorm without affine (``kind="layer"``, SANA's).

    Returns ``y`` (``x.shape``), or ``(y, s)`` when ``residual`` is given: ``s`` continues as the residual
    stream. Modulation and weight are cast to ``x.dtype``. ``backend``: ``auto`` (see
    :mod:`pairfree.kernels.dispatch`), ``cuda``, ``triton``, ``cpp``, ``reference``.
    """
    per_sample = _check_inputs(x, weight, shift, scale, residual, gate)
    _check_kind(kind)
    d = x.shape[-1]
    group = max(1, math.prod(x.shape[1:-1])) if per_sample else 1
    flat = lambda t: None if t is None else t.to(x.dtype).reshape(-1, d).contiguous()
    y, s, _ = modulated_norm_fwd(
        flat(x),
        flat(residual),
        flat(gate),
        weight if weight is None else weight.to(x.dtype).contiguous(),
        flat(shift),
        flat(scale),
        group,
        float(eps),
        kind == "layer",
        backend,
    )
    y = y.view(x.shape)
    return y if residual is None else (y, s.view(x.shape))


def modulated_rms_norm(x, weight, shift, scale, eps=1e-6, residual=None, gate=None, backend="auto"):
    """:func:`modulated_norm` with RMSNorm."""
    return modulated_norm(x, weight, shift, scale, eps, residual, gate, "rms", backend)


def modulated_layer_norm(x, weight, shift, scale, eps=1e-6, residual=None, gate=None, backend="auto"):
    """:func:`modulated_norm` with LayerNorm (no affine unless ``weight``): SANA's adaLN norm."""
    return modulated_norm(x, weight, shift, scale, eps, residual, gate, "layer", backend)
