"""SANA ReLU linear attention: Triton forward/backward vs an fp64 reference (FlashAttention's 2x rule against
plain PyTorch in the same dtype), odd sizes; the fused path keeps no per-token intermediates for backward."""

import pytest
import torch
import torch.nn.functional as F
from helpers import CUDA, TRITON_CPU, triton_params

from pairfree.kernels import dispatch
from pairfree.kernels.linear_attention import linear_attention, linear_attention_reference
from pairfree.memory import SavedTensorsMeter


def _naive(q, k, v, eps=1e-15):
    """diffusers' formulation, in the inputs' own dtype (the error baseline)."""
    q, k = F.relu(q), F.relu(k)
    vp = F.pad(v.transpose(-1, -2), (0, 0, 0, 1), value=1.0)  # (B, H, d + 1, N)
    out = (vp @ k) @ q.transpose(-1, -2)  # (B, H, d + 1, N)
    return (out[:, :, :-1] / (out[:, :, -1:] + eps)).transpose(-1, -2)


def _grads(fn, inputs, do):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    return [out] + list(torch.autograd.grad(out, inputs, do))


@pytest.mark.parametrize("device,dtype", triton_params())
@pytest.mark.parametrize("b,h,n,d", [(2, 3, 37, 32), (1, 2, 100, 20), (2, 1, 16, 64), (1, 2, 129, 112)])
def test_triton_matches_reference(device, dtype, b, h, n, d):
    g = torch.Generator().manual_seed(n + d)
    q, k, v, do = (torch.randn(b, h, n, d, generator=g).to(device, dtype) for _ in range(4))
    ref = _grads(linear_attention_reference, [t.double() for t in (q, k, v)], do.double())
    base = _grads(_naive, [q, k, v], do)
    ours = _grads(lambda a, b_, c: linear_attention(a, b_, c, backend="triton"), [q, k, v], do)
    for name, o, p, r in zip(("out", "dq", "dk", "dv"), ours, base, ref):
        assert o.dtype == dtype and o.shape == r.shape
        err, base_err = (o.double() - r).abs().max().item(), (p.double() - r).abs().max().item()
        slack = 2 * (r.to(dtype) + 0.3 - 0.3 - r.to(dtype)).abs().max().item()
        assert err <= 2 * base_err + slack, f"{name}: ours {err:.2e} vs PyTorch {base_err:.2e}"


def test_non_contiguous_inputs_like_the_dit():
    """The DiT slices q, k, v out of one fused projection: (B, N, 3, H, d) permuted."""
    if not (TRITON_CPU or CUDA):
        pytest.skip("needs Triton")
    device = "cuda" if CUDA else "cpu"
    qkv = torch.randn(2, 40, 3, 2, 32, device=device).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    torch.testing.assert_close(
        linear_attention(q, k, v, backend="triton"), linear_attention_reference(q, k, v), rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not TRITON_CPU and not CUDA, reason="needs Triton")
def test_saves_no_per_token_intermediates():
    device = "cuda" if CUDA else "cpu"
    q, k, v = (torch.randn(2, 2, 256, 32, device=device, requires_grad=True) for _ in range(3))
    saved = {}
    for backend in ("reference", "triton"):
        with SavedTensorsMeter(exclude=[q, k, v]) as m:
            out = linear_attention(q, k, v, backend=backend)
        saved[backend] = m.peak
        del out
    per_token = 2 * 2 * 256 * 32 * 4  # one fp32 (B, H, N, d) tensor
    assert saved["reference"] >= 3 * per_token  # fp32 copies of q, k, v, ...
    assert saved["triton"] <= 2 * 2 * 33 * 32 * 4  # only the (d, d) states and normalisers


def test_cpu_default_is_the_reference_and_errors():
    assert dispatch.select("linear_attention", torch.device("cpu")) == "reference"
    with pytest.raises(ValueError, match=r"must share a \(B, H, N, d\) shape"):
        linear_attention(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5))
