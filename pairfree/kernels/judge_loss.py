"""The judge's Yes/No loss straight from the final hidden state: never the full-vocabulary logits.

    ℓ_yes = h·W[yes],  ℓ_no = h·W[no],  loss = CE(s · [ℓ_no, ℓ_yes], target) = softplus(−s · (ℓ_target − ℓ_other))

``h (B, D)`` is the judge's last hidden state at the answer position, ``W (V, D)`` its ``lm_head`` weight,
``target (B,)`` 1 for Yes, 0 for No, s the logit scale (the paper's "temperature" τ, which the trainer warms up
0.1 → 1: soft answers early). Memory O(B·D): one
Triton program per row reads h and the two weight rows once, writes the loss and (for backward) the sigmoid
of the margin; the backward writes dh = (σ(m) − 1) · s · (W[target] − W[other]) · dloss. The full-vocabulary
cross-entropy of the paper's ablation has the same interface (:func:`judge_loss` with ``full_vocab=True``), in
chunks over the vocabulary so its memory is O(B·chunk), not O(B·V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pairfree.kernels import dispatch
from pairfree.kernels.triton_support import row_block, tl, triton


def judge_loss_reference(h, weight, yes_id: int, no_id: int, target, logit_scale: float = 1.0):
    """Two-token CE per row, in fp32 (fp64 for fp64 inputs)."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    logits = h.to(acc) @ weight[[no_id, yes_id]].to(acc).T  # (B, 2): [No, Yes]
    return F.cross_entropy(logits * logit_scale, target.long(), reduction="none")


def full_vocab_loss_reference(h, weight, yes_id: int, no_id: int, target, logit_scale: float = 1.0):
    """Full-vocabulary CE toward the Yes or No token (materialises (B, V) logits: the thing to avoid)."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    logits = h.to(acc) @ weight.to(acc).T
    ids = torch.where(target.bool(), yes_id, no_id)
    return F.cross_entropy(logits * logit_scale, ids, reduction="none")


if triton is not None:

    @triton.jit
    def _fwd_kernel(H, W, T, LOSS, SIG, D, shb, swv, yes_id, no_id, scale, BLOCK_D: tl.constexpr):
        b = tl.program_id(0)
        target = tl.load(T + b)
        l_yes = tl.zeros([BLOCK_D], tl.float32)
        l_no = tl.zeros([BLOCK_D], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            m = offs < D
            h = tl.load(H + b * shb + offs, mask=m, other=0.0).to(tl.float32)
            l_yes += h * tl.load(W + yes_id * swv + offs, mask=m, other=0.0).to(tl.float32)
            l_no += h * tl.load(W + no_id * swv + offs, mask=m, other=0.0).to(tl.float32)
        diff = (tl.sum(l_yes, 0) - tl.sum(l_no, 0)) * scale
        margin = tl.where(target != 0, diff, -diff)  # s · (ℓ_target − ℓ_other)
        # softplus(−m) = max(−m, 0) + log(1 + exp(−|m|)), stable for either sign
        e = tl.exp(-tl.abs(margin))  # never overflows
        loss = tl.maximum(-margin, 0.0) + tl.log(1.0 + e)
        sig = tl.where(margin >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        tl.store(LOSS + b, loss)
        tl.store(SIG + b, sig)

    @triton.jit
    def _bwd_kernel(DLOSS, SIG, T, W, DH, D, swv, sdhb, yes_id, no_id, scale, BLOCK_D: tl.constexpr):
        b = tl.program_id(0)
        target = tl.load(T + b)
        coef = (tl.load(SIG + b) - 1.0) * scale * tl.load(DLOSS + b).to(tl.float32)
        coef = tl.where(target != 0, coef, -coef)  # d/dh of (ℓ_yes − ℓ_no) carries the sign of the target
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            m = offs < D
            wy = tl.load(W + yes_id * swv + offs, mask=m, other=0.0).to(tl.float32)
            wn = tl.load(W + no_id * swv + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(DH + b * sdhb + offs, (coef * (wy - wn)).to(DH.dtype.element_ty), mask=m)


@torch.library.custom_op("pairfree::judge_loss_fwd", mutates_args=())
def judge_loss_fwd(
    h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, yes_id: int, no_id: int, logit_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-token CE per row (Triton) -> ``(loss, σ(margin))`` in fp32; ``target`` int32 ``(B,)``."""
    b, d = h.shape
    loss = torch.empty(b, device=h.device, dtype=torch.float32)
    sig = torch.empty_like(loss)
    _fwd_kernel[(b,)](
        h, weight, target, loss, sig, d, h.stride(0), weight.stride(0), yes_id, no_id, logit_scale,
        BLOCK_D=row_block(d, 16, 1024),
    )  # fmt: skip
    return loss, sig


@judge_loss_fwd.register_fake
def _(h, weight, target, yes_id, no_id, logit_scale):
    loss = h.new_empty(h.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("pairfree::judge_loss_bwd", mutates_args=())
def judge_loss_bwd(
    dloss: torch.Tensor,
    sig: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    h: torch.Tensor,
    yes_id: int,
    no_id: int,
    logit_scale: float,
) -> torch.Tensor:
    """``dh = (σ(m) − 1) · s · (W[target] − W[other]) · dloss`` (Triton)."""
    dh = torch.empty_like(h)
    _bwd_kernel[(h.shape[0],)](
        dloss, sig, target, weight, dh, h.shape[1], weight.stride(0), dh.stride(0), yes_id, no_id, logit_scale,
        BLOCK_D=row_block(h.shape[1], 16, 1024),
    )  # fmt: skip
    return dh


@judge_loss_bwd.register_fake
def _(dloss, sig, target, weight, h, yes_id, no_id, logit_scale):
    return torch.empty_like(h)


def _setup_judge(ctx, inputs, output):
    h, weight, target, yes_id, no_id, logit_scale = inputs
    ctx.save_for_backward(h, weight, target, output[1])
    ctx.args = (yes_id, no_id, logit_scale)


def _judge_backward(ctx, dloss, dsig):
    h, weight, t, sig = ctx.saved_tensors
    yes_id, no_id, logit_scale = ctx.args
    dh = judge_loss_bwd(dloss.contiguous(), sig, t, weight, h, yes_id, no_id, logit_scale)
    dw = None
    if ctx.needs_input_grad[1]:  # rare (the judge is frozen): only two rows are non-zero
        coef = (sig - 1.0) * logit_scale * dloss.float() * torch.where(t != 0, 1.0, -1.0)
        dw = torch.zeros_like(weight)
        dw[yes_id] += (coef[:, None] * h.float()).sum(0).to(weight.dtype)
        dw[no_id] -= (coef[:, None] * h.float()).sum(0).to(weight.dtype)
    return dh, dw, None, None, None, None


judge_loss_fwd.register_autograd(_judge_backward, setup_context=_setup_judge)


@torch.library.custom_op("pairfree::full_vocab_loss_fwd", mutates_args=())
def full_vocab_loss_fwd(
    h: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, logit_scale: float, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary CE toward ``ids``, chunk by chunk over V (O(B·chunk) memory) -> ``(loss, logsumexp)``."""
    hf = h.float()
    lse = torch.full((h.shape[0],), float("-inf"), device=h.device)
    for v0 in range(0, weight.shape[0], chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(hf @ weight[v0 : v0 + chunk].float().T * logit_scale, -1))
    target_logit = (hf * weight[ids].float()).sum(-1) * logit_scale
    return lse - target_logit, lse


@full_vocab_loss_fwd.register_fake
def _(h, weight, ids, logit_scale, chunk):
    loss = h.new_empty(h.shape[0], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@torch.library.custom_op("pairfree::full_vocab_loss_bwd", mutates_args=())
def full_vocab_loss_bwd(
    dloss: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor,
    logit_scale: float, chunk: int,
) -> torch.Tensor:  # fmt: skip
    """``dh`` of the chunked full-vocabulary CE, again chunk by chunk."""
    hf, g = h.float(), dloss.float()[:, None] * logit_scale
    dh = -(g * weight[ids].float())
    for v0 in range(0, weight.shape[0], chunk):
        w = weight[v0 : v0 + chunk].float()
        p = torch.exp(hf @ w.T * logit_scale - lse[:, None])
        dh += (g * p) @ w
    return dh.to(h.dtype)


@full_vocab_loss_bwd.register_fake
def _(dloss, h, weight, ids, lse, logit_scale, chunk):
    return torch.empty_like(h)


def _setup_full_vocab(ctx, inputs, output):
    h, weight, ids, logit_scale, chunk = inputs
    ctx.save_for_backward(h, weight, ids, output[1])
    ctx.args = (logit_scale, chunk)


def _full_vocab_backward(ctx, dloss, dlse):
    h, weight, ids, lse = ctx.saved_tensors
    return full_vocab_loss_bwd(dloss.contiguous(), h, weight, ids, lse, *ctx.args), None, None, None, None


full_vocab_loss_fwd.register_autograd(_full_vocab_backward, setup_context=_setup_full_vocab)


def judge_loss(
    h,
    weight,
    yes_id: int,
    no_id: int,
    target,
    logit_scale: float = 1.0,
    full_vocab: bool = False,
    chunk: int = 8192,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-row loss ``(B,)`` (fp32) of the judge answering ``target`` (1 = Yes) from hidden states ``h (B, D)``
    and the ``lm_head`` weight ``(V, D)``. ``full_vocab=True``: the full-vocabulary CE (chunked)."""
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"judge_loss: h must be (B, D) and weight (V, D), got {tuple(h.shape)}, {tuple(weight.shape)}")
    if target.shape != h.shape[:1]:
        raise ValueError(f"judge_loss: target must be (B,) = ({h.shape[0]},), got {tuple(target.shape)}")
    for name, i in (("yes_id", yes_id), ("no_id", no_id)):
        if not 0 <= i < weight.shape[0]:
            raise ValueError(f"judge_loss: {name}={i} is outside the vocabulary of {weight.shape[0]} rows")
    if full_vocab:
        ids = torch.where(target.bool(), yes_id, no_id)
        return full_vocab_loss_fwd(h, weight, ids, float(logit_scale), int(chunk))[0]
    backend = dispatch.select("judge_loss", h.device, backend)
    if backend == "reference":
        return judge_loss_reference(h, weight, yes_id, no_id, target, logit_scale)
    h = h if h.stride(-1) == 1 else h.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    t = target.to(torch.int32).contiguous()
    return judge_loss_fwd(h, weight, t, int(yes_id), int(no_id), float(logit_scale))[0]
