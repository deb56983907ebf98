"""patch_qwen2_5_vl: the patched model gives the same logits and the same input-image gradients, and its
vision tower and language model really run through pairfree's kernels."""

import copy

import pytest
import torch

import pairfree.kernels.patch as patch_mod
from pairfree.judge.world import build_world_judge
from pairfree.kernels import dispatch, patch_qwen2_5_vl
from pairfree.world import render, sample_scene

BACKENDS = ["sdpa"] + (
    ["triton"] if dispatch.live_backends("cpu")["triton"] is None or torch.cuda.is_available() else []
)


def _run(judge, images, questions):
    x = [i.clone().requires_grad_() for i in images]
    logits = judge(x, questions)
    (logits[:, 1] - logits[:, 0]).sum().backward()
    return logits.detach(), [i.grad for i in x]


@pytest.mark.parametrize("backend", BACKENDS)
def test_patched_judge_same_logits_and_image_gradients(backend, monkeypatch):
    monkeypatch.setenv("PAIRFREE_ATTENTION_BACKEND", backend)
    judge = build_world_judge(seed=0, image_size=56, width=64, vision_layers=2, text_layers=2)
    patched = copy.deepcopy(judge)
    patch_qwen2_5_vl(patched.model)
    calls = {"attention": 0, "varlen_attention": 0}
    for name in calls:
        real = getattr(patch_mod, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(patch_mod, name, counted)
    images = [render([sample_scene(1), sample_scene(2)], 32)[0] * 2 - 1, render([sample_scene(3)], 32)[0] * 2 - 1]
    questions = ["Was the instruction carried out? Answer yes or no.", "Is there a star?"]  # different lengths
    ref_logits, ref_grads = _run(judge, images, questions)
    logits, grads = _run(patched, images, questions)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    n_vision, n_text = len(patched.model.model.visual.blocks), patched.model.config.text_config.num_hidden_layers
    assert calls["varlen_attention"] >= n_vision  # the vision tower: one packed varlen call per block
    assert calls["attention"] >= n_text  # the LM: one call per layer (causal, padding mask)
    assert judge.model.config._attn_implementation != patch_mod.IMPLEMENTATION  # the original is untouched


def test_patch_refuses_other_models():
    with pytest.raises(TypeError, match="expected a Qwen2.5-VL model, got Linear"):
        patch_qwen2_5_vl(torch.nn.Linear(2, 2))
