"""modulated_norm (RMSNorm and LayerNorm) vs its PyTorch reference, forward and backward, every backend that can
run here; the LayerNorm reference itself against ``F.layer_norm``.

Error rule (FlashAttention's tests): the kernel's error against an fp64 reference must be at most twice the
error of plain PyTorch run in the same dtype, plus a small absolute slack, on the output and on every gradient.
"""

import pytest
import torch
import torch.nn.functional as F

from pairfree.kernels import dispatch
from pairfree.kernels.modulated_norm import (
    modulated_layer_norm,
    modulated_norm,
    modulated_norm_reference,
    modulated_rms_norm,
)

SHAPES = [(2, 16, 64), (3, 7, 37), (5, 33)]  # a normal one, odd sizes, 2-D (B, D) input
# (residual, gate, per_token, weight)
MODES = {
    "plain": (False, False, False, True),
    "plain-per-token-noweight": (False, False, True, False),
    "residual-gate": (True, True, False, True),
    "residual-gate-per-token": (True, True, True, True),
    "residual-nogate": (True, False, False, True),
}
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _backend_params():
    params = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        live = dispatch.live_backends(device)
        for backend in ("reference", "cpp", "triton") if device == "cpu" else ("reference", "triton", "cuda"):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                marks = []
                if live[backend] is not None:
                    marks.append(pytest.mark.skip(reason=live[backend]))
                if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
                    marks.append(pytest.mark.skip(reason="the Triton interpreter has no bf16"))
                if device == "cuda":
                    marks.append(pytest.mark.gpu)
                params.append(
                    pytest.param(device, backend, dtype, marks=marks, id=f"{device}-{backend}-{str(dtype)[6:]}")
                )
    return params


def _make_inputs(shape, mode, device):
    residual, gate, per_token, weight = MODES[mode]
    b, d = shape[0], shape[-1]
    mod_shape = shape if per_token else (b, d)
    inputs = {
        "x": torch.randn(shape),
        "weight": 1 + 0.5 * torch.randn(d) if weight else None,
        "shift": 0.5 * torch.randn(mod_shape),
        "scale": 0.5 * torch.randn(mod_shape),
        "residual": torch.randn(shape) if residual else None,
        "gate": torch.randn(mod_shape) if gate else None,
    }
    return {k: v.to(device=device, dtype=torch.float64) if v is not None else None for k, v in inputs.items()}


def _run(fn, inputs, dtype, cotangents, **kw):
    """Output(s) and input gradients of ``fn`` on copies of ``inputs`` cast to ``dtype``."""
    leaves = {k: v.to(dtype).requires_grad_(True) for k, v in inputs.items() if v is not None}
    args = {k: leaves.get(k) for k in inputs}
    out = fn(
        args["x"],
        args["weight"],
        args["shift"],
        args["scale"],
        residual=args["residual"],
        gate=args["gate"],
        **kw,
    )
    outs = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(outs, list(leaves.values()), [c.to(dtype) for c in cotangents])
    return [o.detach().double() for o in outs] + [g.double() for g in grads], ["y", "s"][: len(outs)] + [
        f"d{k}" for k in leaves
    ]


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device,backend,dtype", _backend_params())
def test_matches_reference(device, backend, dtype, shape, mode, kind):
    inputs = _make_inputs(shape, mode, device)
    inputs["x"] = inputs["x"] + 3.0  # an offset the LayerNorm must remove (and the RMSNorm keep)
    cotangents = [torch.randn(shape, device=device, dtype=torch.float64) for _ in range(2 if MODES[mode][0] else 1)]

    exact, names = _run(modulated_norm_reference, inputs, torch.float64, cotangents, kind=kind)
    eager, _ = _run(modulated_norm_reference, inputs, dtype, cotangents, kind=kind)
    ours, _ = _run(modulated_norm, inputs, dtype, cotangents, kind=kind, backend=backend)

    for name, e, p, o in zip(names, exact, eager, ours):
        err_ours, err_eager = (o - e).abs().max().item(), (p - e).abs().max().item()
        bound = 2 * err_eager + ATOL[dtype] * max(1.0, e.abs().max().item())
        print(
            f"{name}: ours {err_ours:.2e} (mean {(o - e).abs().mean():.2e}), eager {err_eager:.2e}, bound {bound:.2e}"
        )
        assert o.shape == e.shape, name
        assert err_ours <= bound, f"{name}: error {err_ours:.3e} > bound {bound:.3e}"


@pytest.mark.parametrize("residual_gate", [False, True])
def test_layer_reference_is_torch_layer_norm(residual_gate):
    """The LayerNorm reference against F.layer_norm (no affine) with the adaLN modulation written out."""
    x, res = torch.randn(3, 10, 24, dtype=torch.float64) + 2, torch.randn(3, 10, 24, dtype=torch.float64)
    shift, scale, gate = (torch.randn(3, 24, dtype=torch.float64) for _ in range(3))
    s = res + gate[:, None] * x if residual_gate else x
    expect = F.layer_norm(s, (24,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    kw = dict(residual=res, gate=gate) if residual_gate else {}
    got = modulated_norm_reference(x, None, shift, scale, 1e-6, kind="layer", **kw)
    got = got[0] if residual_gate else got
    torch.testing.assert_close(got, expect)
    x, shift, scale = x.float(), shift.float(), scale.float()  # the kernels compute in fp32
    kw = {k: v.float() for k, v in kw.items()}
    ours = modulated_layer_norm(x, None, shift, scale, **kw)
    torch.testing.assert_close(ours, modulated_norm_reference(x, None, shift, scale, kind="layer", **kw))


@pytest.mark.parametrize("layer", [False, True])
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend, layer):
    """torch.library's own checks: schema, fake kernel, autograd registration, dispatch consistency."""
    if dispatch.live_backends("cpu")[backend] is not None:
        pytest.skip(dispatch.live_backends("cpu")[backend])
    r, d, group = 12, 19, 4
    for residual in (None, torch.randn(r, d)):
        gate = torch.randn(r // group, d, requires_grad=True) if residual is not None else None
        args = (
            torch.randn(r, d, requires_grad=True),
            residual,
            gate,
            torch.randn(d, requires_grad=True),
            torch.randn(r // group, d, requires_grad=True),
            torch.randn(r // group, d, requires_grad=True),
            group,
            1e-6,
            layer,
            backend,
        )
        torch.library.opcheck(torch.ops.pairfree.modulated_norm_fwd.default, args)


def test_torch_compile_traces_fullgraph():
    """The op and its backward trace without graph breaks and match eager."""
    x = torch.randn(2, 9, 24, requires_grad=True)
    w, shift, scale = torch.randn(24), torch.randn(2, 24), torch.randn(2, 24, requires_grad=True)
    res, gate = torch.randn(2, 9, 24), torch.randn(2, 24)

    def f(x, scale):
        y, s = modulated_rms_norm(x, w, shift, scale, residual=res, gate=gate)
        return (y * s).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    expect = torch.autograd.grad(f(x, scale), (x, scale))
    got = torch.autograd.grad(compiled(x, scale), (x, scale))
    for e, g in zip(expect, got):
        torch.testing.assert_close(g, e)


@pytest.mark.slow
def test_torch_compile_inductor():
    x = torch.randn(4, 33, 48, requires_grad=True)
    w, shift, scale = torch.randn(48), torch.randn(4, 48), torch.randn(4, 48)
    f = lambda x: modulated_rms_norm(x, w, shift, scale).square().sum()
    expect = torch.autograd.grad(f(x), x)[0]
    got = torch.autograd.grad(torch.compile(f, fullgraph=True)(x), x)[0]
    torch.testing.assert_close(got, expect)


def test_per_sample_equals_per_token_broadcast():
    """Per-sample modulation is the per-token case with the row repeated over tokens (gradients summed)."""
    x, res = torch.randn(3, 10, 16), torch.randn(3, 10, 16)
    mods = [torch.randn(3, 16, requires_grad=True) for _ in range(3)]
    y1, s1 = modulated_rms_norm(x, None, mods[0], mods[1], residual=res, gate=mods[2])
    expanded = [m[:, None].expand(3, 10, 16) for m in mods]
    y2, s2 = modulated_rms_norm(x, None, expanded[0], expanded[1], residual=res, gate=expanded[2])
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(s1, s2)
    g1 = torch.autograd.grad((y1 * s1).sum(), mods)
    g2 = torch.autograd.grad((y2 * s2).sum(), mods)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(shift=torch.randn(2, 5)), "shift has shape (2, 5)"),
        (dict(scale=torch.randn(3, 8)), "scale has shape (3, 8)"),
        (dict(weight=torch.randn(7)), "weight has shape (7,)"),
        (dict(gate=torch.randn(2, 8)), "gate needs a residual"),
        (dict(residual=torch.randn(2, 4, 8)), "residual has shape (2, 4, 8)"),
        (dict(x=torch.randn(8)), "x must have shape (B, ..., D)"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    args = dict(x=torch.randn(2, 3, 8), weight=torch.randn(8), shift=torch.randn(2, 8), scale=torch.randn(2, 8))
    args.update(change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        modulated_rms_norm(**args)


def test_mixed_modulation_modes_rejected():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="all be per-sample"):
        modulated_rms_norm(x, None, torch.randn(2, 8), torch.randn(2, 3, 8))


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="kind must be 'rms' or 'layer', got 'batch'"):
        modulated_norm(torch.randn(2, 3, 8), None, torch.randn(2, 8), torch.randn(2, 8), kind="batch")


def test_empty_batch():
    x = torch.randn(0, 4, 8, requires_grad=True)
    y = modulated_rms_norm(x, None, torch.zeros(0, 8), torch.zeros(0, 8))
    assert y.shape == x.shape
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.shape == x.shape
