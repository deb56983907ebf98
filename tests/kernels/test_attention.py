"""Fused attention vs an fp64 reference, forward and backward (dQ, dK, dV).

Tolerance rule (FlashAttention's tests): our error against the fp64 reference is at most twice the error of
plain PyTorch attention computed in the same precision, plus the rounding of the output dtype. On CPU the
Triton kernels run under TRITON_INTERPRET=1 in fp32/fp16 at small sizes; bf16 and large sizes run on a GPU.
"""

import pytest
import torch
from helpers import CUDA, TRITON_CPU, triton_params

from pairfree.kernels import dispatch
from pairfree.kernels.attention import attention, attention_reference, varlen_attention, varlen_attention_reference


def _naive(q, k, v, mask, causal):
    """Plain PyTorch attention in the inputs' own precision (the error baseline)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    allowed = torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(s.shape[-1] - s.shape[-2])
    allowed = allowed.expand(s.shape)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    p = s.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return p @ v


def _rounding(t: torch.Tensor) -> float:
    return 2 * (t + 0.3 - 0.3 - t).abs().max().item()


def _grads(fn, inputs, do):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    return [out] + list(torch.autograd.grad(out, inputs, do))


def _case(b, h, hk, nq, nk, d, causal, masked, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(nq * 131 + nk)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    q, k, v = mk(b, h, nq, d), mk(b, hk, nk, d), mk(b, hk, nk, d)
    mask = None
    if masked:
        mask = torch.rand(b, nk, generator=g) > 0.35
        mask[:, 0] = True
        mask = mask.to(device)
    return q, k, v, mask, mk(b, h, nq, d)


def _check_against_reference(fn, q, k, v, mask, do, causal):
    ref = _grads(
        lambda a, b_, c: attention_reference(a, b_, c, mask, causal), [t.double() for t in (q, k, v)], do.double()
    )
    base = _grads(lambda a, b_, c: _naive(a, b_, c, mask, causal), [q, k, v], do)
    ours = _grads(fn, [q, k, v], do)
    # FlashAttention's own bar: the output's error at most 2x, each gradient's at most 3x PyTorch's in the same dtype
    # (a backward sums in another order than the naive one: CPU SDPA's fp32 dq/dk land at 2.7x on some CPUs)
    for name, o, p, r in zip(("out", "dq", "dk", "dv"), ours, base, ref):
        assert o.dtype == q.dtype and o.shape == r.shape, name
        err, base_err = (o.double() - r).abs().max().item(), (p.double() - r).abs().max().item()
        times = 2 if name == "out" else 3
        bound = times * base_err + _rounding(r.to(q.dtype))
        assert err <= bound, f"{name}: ours {err:.2e} vs PyTorch {base_err:.2e} (bound {times}x + rounding)"


CASES = [  # b, h, hk, nq, nk, d, causal, key mask
    pytest.param(2, 4, 4, 37, 37, 64, False, False, id="square-d64"),
    pytest.param(2, 4, 2, 37, 37, 80, True, False, id="causal-gqa-d80"),
    pytest.param(2, 4, 4, 33, 50, 72, False, True, id="cross-padded-d72"),
    pytest.param(1, 4, 1, 20, 45, 128, True, True, id="causal-mqa-masked-d128"),
    pytest.param(2, 2, 2, 50, 17, 32, True, False, id="causal-nq>nk-empty-rows"),
    pytest.param(1, 2, 2, 1, 33, 40, False, True, id="one-query"),
]


@pytest.mark.parametrize("device,dtype", triton_params())
@pytest.mark.parametrize("b,h,hk,nq,nk,d,causal,masked", CASES)
def test_triton_matches_reference(device, dtype, b, h, hk, nq, nk, d, causal, masked):
    q, k, v, mask, do = _case(b, h, hk, nq, nk, d, causal, masked, dtype, device)
    _check_against_reference(
        lambda a, b_, c: attention(a, b_, c, mask, causal, backend="triton"), q, k, v, mask, do, causal
    )


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "b,h,hk,n,d,causal", [(2, 28, 4, 1031, 128, True), (1, 16, 16, 2048, 80, False), (2, 8, 8, 777, 112, False)]
)
def test_triton_large_on_gpu(dtype, b, h, hk, n, d, causal):
    q, k, v, mask, do = _case(b, h, hk, n, n, d, causal, False, dtype, "cuda")
    _check_against_reference(
        lambda a, b_, c: attention(a, b_, c, None, causal, backend="triton"), q, k, v, mask, do, causal
    )


@pytest.mark.parametrize("device,dtype", triton_params())
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_reference(device, dtype, causal):
    cu = torch.tensor([0, 5, 23, 40, 41], dtype=torch.int32, device=device)
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(41, h, 80, generator=g).to(device, dtype) for h in (4, 2, 2, 4))
    ref = _grads(
        lambda a, b, c: varlen_attention_reference(a, b, c, cu, cu, causal),
        [t.double() for t in (q, k, v)],
        do.double(),
    )
    ours = _grads(lambda a, b, c: varlen_attention(a, b, c, cu, cu, 18, 18, causal, backend="triton"), [q, k, v], do)
    base = _grads(lambda a, b, c: varlen_attention_reference(a, b, c, cu, cu, causal), [q, k, v], do)
    for name, o, p, r in zip(("out", "dq", "dk", "dv"), ours, base, ref):
        err, base_err = (o.double() - r).abs().max().item(), (p.double() - r).abs().max().item()
        assert err <= 2 * base_err + _rounding(r.to(dtype)) + (1e-3 if dtype != torch.float32 else 1e-6), name


@pytest.mark.skipif(not TRITON_CPU and not CUDA, reason="needs Triton (GPU or interpreter)")
def test_backward_is_deterministic():
    device = "cuda" if CUDA else "cpu"
    q, k, v, mask, do = _case(1, 4, 2, 40, 40, 64, True, True, torch.float32, device)
    a = _grads(lambda x, y, z: attention(x, y, z, mask, True, backend="triton"), [q, k, v], do)
    b = _grads(lambda x, y, z: attention(x, y, z, mask, True, backend="triton"), [q, k, v], do)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("b,h,hk,nq,nk,d,causal,masked", CASES)
def test_sdpa_path_matches_reference(b, h, hk, nq, nk, d, causal, masked):
    q, k, v, mask, do = _case(b, h, hk, nq, nk, d, causal, masked, torch.float32, "cpu")
    _check_against_reference(
        lambda a, b_, c: attention(a, b_, c, mask, causal, backend="sdpa"), q, k, v, mask, do, causal
    )


def test_cpu_dispatches_to_sdpa_and_errors_name_the_problem():
    assert dispatch.select("attention", torch.device("cpu")) == "sdpa"
    q = torch.randn(1, 3, 4, 8)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of key/value heads \(2\)"):
        attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, Nk\)"):
        attention(q, q, q, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be \\(B, H, N, d\\)"):
        attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="backend 'flash' does not exist"):
        attention(q, q, q, backend="flash")
