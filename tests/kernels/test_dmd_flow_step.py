"""Fused DMD loss and flow step: every CPU backend (C++, Triton interpreter) vs the fp64 reference, forward and
backward, odd sizes, the nan_to_num edge case, and what they keep for backward."""

import pytest
import torch

from pairfree.kernels import dispatch
from pairfree.kernels.dmd import dmd_loss, dmd_loss_reference
from pairfree.kernels.flow_step import flow_step, flow_step_reference
from pairfree.memory import SavedTensorsMeter

CUDA = torch.cuda.is_available()


def _params():
    out = []
    for device in ["cpu"] + (["cuda"] if CUDA else []):
        live = dispatch.live_backends(device)
        for backend in ("cpp", "triton") if device == "cpu" else ("triton",):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                marks = [pytest.mark.gpu] if device == "cuda" else []
                if live[backend] is not None:
                    marks.append(pytest.mark.skip(reason=live[backend]))
                if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
                    marks.append(pytest.mark.skip(reason="the Triton interpreter has no bf16"))
                out.append(pytest.param(device, backend, dtype, marks=marks, id=f"{device}-{backend}-{str(dtype)[6:]}"))
    return out


SHAPES = [(3, 3, 8, 8), (2, 5, 7), (1, 1000), (4, 3, 17, 9)]


def _tol(dtype):
    return {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]


@pytest.mark.parametrize("device,backend,dtype", _params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dmd_loss_matches_reference(device, backend, dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x, r, f = (torch.randn(*shape, generator=g).to(device, dtype) for _ in range(3))
    xx = x.clone().requires_grad_()
    loss = dmd_loss(xx, r, f, backend=backend)
    dloss = torch.rand(shape[0], generator=g).to(device)
    (dx,) = torch.autograd.grad(loss, xx, dloss)
    xr = x.double().requires_grad_()
    ref = dmd_loss_reference(xr, r.double(), f.double())
    (dref,) = torch.autograd.grad(ref, xr, dloss.double())
    tol = _tol(dtype)
    assert loss.dtype == torch.float32 and dx.dtype == dtype
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(dx.double(), dref, rtol=tol, atol=tol * dref.abs().max().item())


@pytest.mark.parametrize("backend", [b for b in ("cpp", "triton") if dispatch.live_backends("cpu")[b] is None])
def test_dmd_loss_nan_to_num_like_the_reference(backend):
    x, r, f = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 16)
    x[1] = r[1]  # norm 0: the gradient is ±inf / nan before nan_to_num
    f[1, :4] = r[1, :4]  # 0/0 -> nan -> 0
    xx = x.clone().requires_grad_()
    loss = dmd_loss(xx, r, f, backend=backend)
    loss.sum().backward()
    xr = x.clone().requires_grad_()
    ref = dmd_loss_reference(xr, r, f)
    ref.sum().backward()
    torch.testing.assert_close(loss[[0, 2]], ref[[0, 2]])
    assert torch.isinf(loss[1]) == torch.isinf(ref[1])  # (f32 max)^2 overflows in both
    torch.testing.assert_close(xx.grad[[0, 2]], xr.grad[[0, 2]])
    # the degenerate sample: nan -> 0 where f == r, the clamped value elsewhere (the eager graph's
    # intermediate 2·(x − target) overflows to inf there; ours stays finite)
    assert (xx.grad[1, :4] == 0).all() and torch.isfinite(xx.grad[1]).all()
    assert torch.equal(torch.sign(xx.grad[1, 4:]), torch.sign(xr.grad[1, 4:]))


@pytest.mark.parametrize("device,backend,dtype", _params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_flow_step_matches_reference(device, backend, dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x, v, e = (torch.randn(*shape, generator=g).to(device, dtype) for _ in range(3))
    t, tn = torch.rand(shape[0], generator=g).to(device), torch.rand(shape[0], generator=g).to(device)
    d0, dn = (torch.randn(*shape, generator=g).to(device, dtype) for _ in range(2))
    ins = [z.clone().requires_grad_() for z in (x, v, e)]
    x0, xn = flow_step(*ins, t, tn, backend=backend)
    grads = torch.autograd.grad((x0, xn), ins, (d0, dn))
    refs = [z.double().requires_grad_() for z in (x, v, e)]
    r0, rn = flow_step_reference(*refs, t.double(), tn.double())
    rgrads = torch.autograd.grad((r0, rn), refs, (d0.double(), dn.double()))
    tol = _tol(dtype)
    for a, b in zip((x0, xn) + grads, (r0, rn) + rgrads):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


def test_flow_step_with_one_output_used():
    if dispatch.live_backends("cpu")["cpp"] is not None:
        pytest.skip("needs the C++ extension")
    x, v, e = (torch.randn(2, 3, 4, requires_grad=True) for _ in range(3))
    t = torch.tensor([0.9, 0.5])
    x0, _ = flow_step(x, v, e, t, t, backend="cpp")
    x0.sum().backward()  # x_next unused: its gradient arrives as None
    torch.testing.assert_close(v.grad, -t.view(-1, 1, 1).expand(2, 3, 4))
    assert e.grad is None or e.grad.abs().sum() == 0


@pytest.mark.parametrize("backend", [b for b in ("cpp", "triton") if dispatch.live_backends("cpu")[b] is None])
def test_fused_ops_keep_almost_nothing_for_backward(backend):
    x, r, f = (torch.randn(4, 3, 32, 32) for _ in range(3))
    x.requires_grad_()
    saved = {}
    for name in ("reference", backend):
        with SavedTensorsMeter(exclude=[x, r, f]) as m:
            out = dmd_loss(x, r, f, backend=name)
        saved[name] = m.peak
        del out
    assert saved["reference"] >= x.numel() * 4  # the eager graph keeps (B, C, H, W) tensors
    assert saved[backend] <= 4 * 3 * 32 * 32 * 4 * 2 + 64  # detached r, f copies at most, plus the (B,) norms
