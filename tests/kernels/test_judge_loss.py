"""Two-token judge loss (Triton) vs the reference, forward and backward; the chunked full-vocabulary variant vs
the materialised one; peak memory independent of the vocabulary size."""

import pytest
import torch
from helpers import CUDA, TRITON_CPU, triton_params

from pairfree.kernels.judge_loss import full_vocab_loss_reference, judge_loss, judge_loss_reference
from pairfree.memory import LiveBytesMeter


def _inputs(b, d, v, dtype, device, scale=1.0):
    g = torch.Generator().manual_seed(b * 7 + d)
    h = (torch.randn(b, d, generator=g) * scale).to(device, dtype)
    w = (torch.randn(v, d, generator=g) / d**0.5).to(device, dtype)
    target = (torch.rand(b, generator=g) > 0.5).long().to(device)
    return h, w, target


@pytest.mark.parametrize("device,dtype", triton_params())
@pytest.mark.parametrize(
    "b,d,v,logit_scale", [(5, 64, 100, 1.0), (3, 200, 50, 0.1), (8, 1000, 7, 0.37), (1, 17, 3, 2.0)]
)
def test_triton_matches_reference(device, dtype, b, d, v, logit_scale):
    h, w, target = _inputs(b, d, v, dtype, device)
    yes, no = v - 1, 1
    hh = h.clone().requires_grad_()
    loss = judge_loss(hh, w, yes, no, target, logit_scale, backend="triton")
    dloss = torch.rand(b, device=device)
    (dh,) = torch.autograd.grad(loss, hh, dloss)
    href = h.double().requires_grad_()
    ref = judge_loss_reference(href, w.double(), yes, no, target, logit_scale)
    (dref,) = torch.autograd.grad(ref, href, dloss.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(dh.double(), dref, rtol=tol, atol=tol * dref.abs().max().item())
    assert dh.dtype == h.dtype and loss.dtype == torch.float32


@pytest.mark.skipif(not TRITON_CPU and not CUDA, reason="needs Triton")
def test_extreme_margins_are_finite():
    device = "cuda" if CUDA else "cpu"
    h, w, target = _inputs(4, 32, 10, torch.float32, device, scale=1e3)
    hh = h.requires_grad_()
    loss = judge_loss(hh, w, 2, 3, target, 0.1, backend="triton")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(hh.grad).all()
    torch.testing.assert_close(
        loss.double(), judge_loss_reference(h.double(), w.double(), 2, 3, target, 0.1), rtol=1e-5, atol=1e-3
    )


def test_weight_gradient_when_asked():
    h, w, target = _inputs(4, 16, 6, torch.float64, "cpu")
    ww = w.clone().requires_grad_()
    judge_loss(h, ww, 5, 2, target, 0.5, backend="reference").sum().backward()
    if TRITON_CPU:
        w2 = w.float().clone().requires_grad_()
        judge_loss(h.float(), w2, 5, 2, target, 0.5, backend="triton").sum().backward()
        torch.testing.assert_close(w2.grad.double(), ww.grad, rtol=1e-5, atol=1e-6)
        assert w2.grad[[0, 1, 3, 4]].abs().sum() == 0


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_chunked_full_vocab_matches_materialised(chunk):
    h, w, target = _inputs(6, 32, 300, torch.float64, "cpu")
    hh, hr = h.clone().requires_grad_(), h.clone().requires_grad_()
    ours = judge_loss(hh, w, 10, 20, target, 0.7, full_vocab=True, chunk=chunk)
    ref = full_vocab_loss_reference(hr, w, 10, 20, target, 0.7)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    d = torch.rand(6, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad(ours, hh, d)[0], torch.autograd.grad(ref, hr, d)[0], rtol=1e-6, atol=1e-6
    )


def _peak(v, full_vocab):
    h, w, target = _inputs(8, 64, v, torch.float32, "cpu")
    h.requires_grad_()
    with LiveBytesMeter() as m:
        judge_loss(h, w, 1, 2, target, 1.0, full_vocab=full_vocab, chunk=4096, backend="reference").sum().backward()
    return m.peak


def test_peak_memory_does_not_grow_with_the_vocabulary():
    two_small, two_large = _peak(32_000, False), _peak(152_000, False)
    assert two_large == two_small < 8 * 64 * 4 * 8  # O(B·D): a few (B, D) tensors
    chunked_small, chunked_large = _peak(32_000, True), _peak(152_000, True)
    assert chunked_large <= 1.05 * chunked_small  # O(B·chunk), not O(B·V)


def test_bad_input_is_named():
    h, w, target = _inputs(2, 8, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="yes_id=9 is outside the vocabulary of 5 rows"):
        judge_loss(h, w, 9, 1, target)
    with pytest.raises(ValueError, match=r"target must be \(B,\) = \(2,\)"):
        judge_loss(h, w, 2, 1, target[:1])
