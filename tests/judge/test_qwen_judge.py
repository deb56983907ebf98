"""The judge: our torch preprocessing equals Qwen2-VL's image processor, the two-token logits equal the full
model's, padding does not change answers, and input-image gradients match finite differences (fp64)."""

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from pairfree.judge import JudgeConfig, images_to_patches, two_token_loss
from pairfree.judge.world import build_world_judge
from pairfree.world import render, sample_scene


@pytest.fixture(scope="module")
def judge():
    return build_world_judge(seed=0)


def _hf(images_u8: np.ndarray, size: int):
    proc = Qwen2VLImageProcessorPil(size={"shortest_edge": size * size, "longest_edge": size * size})
    out = proc([im for im in images_u8], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("size", [56, 112])
def test_preprocessing_equals_the_hf_processor_without_resize(size):
    images, _ = render([sample_scene(s) for s in range(3)], size)
    u8 = (images * 255).round().to(torch.uint8)
    ours, grid = images_to_patches(u8.float() / 127.5 - 1, JudgeConfig(image_size=size))
    theirs, their_grid = _hf(u8.permute(0, 2, 3, 1).numpy(), size)
    assert torch.equal(grid, their_grid)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=2e-5)


def test_preprocessing_close_to_the_hf_processor_with_resize():
    """32² renders upsampled to 112² for the judge: torch bicubic vs PIL bicubic differ only by the kernel's
    coefficient; the layout and normalisation are the same."""
    images, _ = render([sample_scene(s) for s in range(3)], 32)
    u8 = (images * 255).round().to(torch.uint8)
    ours, grid = images_to_patches(u8.float() / 127.5 - 1, JudgeConfig(image_size=112))
    theirs, their_grid = _hf(u8.permute(0, 2, 3, 1).numpy(), 112)
    assert torch.equal(grid, their_grid) and ours.shape == theirs.shape
    err = (ours - theirs).abs()
    assert err.mean() < 0.05 and err.max() < 0.6  # normalised units (1/255 of a pixel is ~0.015)
    shuffled = (ours.roll(1, 0) - theirs).abs().mean()
    assert shuffled > 5 * err.mean()  # a wrong layout would be far worse


def test_two_token_logits_equal_the_full_models(judge):
    ims = [render([sample_scene(s)], 32)[0] * 2 - 1 for s in range(2)]
    ims = [torch.cat([ims[0], ims[1]]), ims[1]]
    qs = ["Was the instruction carried out? Answer yes or no.", "Is there a red circle in the image?"]
    with torch.no_grad():
        ours = judge(ims, qs)
        for i, (im, q) in enumerate(zip(ims, qs)):
            pv, grid = images_to_patches(im, judge.config)
            ids, mask = judge.encode_text([q], [im.shape[0]], "cpu")
            full = judge.model(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid).logits
            torch.testing.assert_close(ours[i], full[0, -1, judge.answer_ids], rtol=1e-4, atol=1e-5)


def test_frozen_and_gradients_reach_the_images(judge):
    assert not any(p.requires_grad for p in judge.parameters())
    im = (render([sample_scene(3), sample_scene(4)], 32)[0] * 2 - 1).requires_grad_()
    logits = judge([im, im[1:]], ["Was it carried out?", "Is there a star?"])
    loss = two_token_loss(logits, torch.tensor([1, 0])).mean()
    loss.backward()
    assert torch.isfinite(im.grad).all() and im.grad.abs().sum() > 0


def test_input_gradient_matches_finite_differences():
    judge = build_world_judge(seed=1, image_size=56, width=32, vision_layers=2, text_layers=2).double()
    g = torch.Generator().manual_seed(0)
    im = (torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    f = lambda x: (
        judge([x, x[:1]], ["Was it carried out?", "Is there a star?"])
        .double()
        .mul(torch.tensor([[0.3, -1.0], [0.7, 0.2]], dtype=torch.float64))
        .sum()
    )
    f(im).backward()
    for _ in range(3):
        u = torch.randn(im.shape, generator=g, dtype=torch.float64)
        eps = 1e-3  # transformers computes the rotary embedding in fp32 even in an fp64 model: keep eps large
        with torch.no_grad():
            fd = (f(im + eps * u) - f(im - eps * u)) / (2 * eps)
        torch.testing.assert_close((im.grad * u).sum(), fd, rtol=2e-3, atol=1e-7)


def test_padding_does_not_change_answers(judge):
    ims = [render([sample_scene(s)], 32)[0] * 2 - 1 for s in range(2)]
    qs = ["Is there a star?", "Apart from what the instruction changes, is the second image the same as the first?"]
    with torch.no_grad():
        both = judge(ims, qs)
        alone = torch.cat([judge([im], [q]) for im, q in zip(ims, qs)])
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="not a multiple of patch·merge = 28"):
        JudgeConfig(image_size=100)


def test_loss_equals_ce_of_the_logits(judge):
    ims = [render([sample_scene(s)], 32)[0] * 2 - 1 for s in range(3)]
    qs = ["Is there a star?", "Is the background red?", "Is there a circle?"]
    target = torch.tensor([1, 0, 1])
    with torch.no_grad():
        logits = judge(ims, qs)
        for tau in (0.1, 1.0):
            torch.testing.assert_close(
                judge.loss(ims, qs, target, tau), two_token_loss(logits, target, tau), rtol=1e-5, atol=1e-6
            )
        full = judge.loss(ims, qs, target, 1.0, full_vocab=True)
        assert (full >= judge.loss(ims, qs, target, 1.0) - 1e-5).all()  # more competitors -> larger CE


def test_caption_loss_scores_only_the_caption(judge):
    from pairfree.world.captions import describe_placed

    scenes = [sample_scene(s) for s in range(2)]
    ims = render(scenes, 32)[0] * 2 - 1
    caps = [describe_placed(s) for s in scenes]
    with torch.no_grad():
        loss = judge.caption_loss(ims, caps)
    n_vocab = len(judge.tokenizer)
    assert torch.isfinite(loss) and 0.5 * torch.log(torch.tensor(float(n_vocab))) < loss < 3 * torch.log(
        torch.tensor(float(n_vocab))
    )  # an untrained model is near uniform over the vocabulary


def test_mrope_positions_are_the_processors():
    """With ``mrope`` the model gets what Qwen2.5-VL's processor adds (``mm_token_type_ids``: image tokens = 1)
    and builds 3-D rotary positions — the logits equal a forward given ``get_rope_index``'s positions
    explicitly, and differ from the 1-D fallback a pretrained model was never trained on."""
    j = build_world_judge(seed=0, width=32, vision_layers=1, text_layers=1, image_size=56, mrope=True)
    ims = [torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1]
    qs = ["is the object at the center red?", "is there a star?"]
    with torch.no_grad():
        ours = j(ims, qs)
        flat = torch.cat(ims)
        pixel_values, grid = images_to_patches(flat, j.config)
        ids, mask = j.encode_text(qs, [2, 1], "cpu")
        types = (ids == j.model.config.image_token_id).int()
        pos, _ = j.model.model.get_rope_index(ids, types, image_grid_thw=grid, attention_mask=mask)
        assert not torch.equal(pos[1], pos[0])  # rows and columns: not 1-D
        out = j.model.model(
            input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=grid, position_ids=pos
        ).last_hidden_state
        h = out[torch.arange(2), mask.sum(1) - 1]
        torch.testing.assert_close(ours, h @ j.model.lm_head.weight[j.answer_ids].T)
        j.config.mrope = False
        assert not torch.allclose(j(ims, qs), ours)


def test_judge_gradient_report_moves_pixels_and_measures_them_with_the_evaluator():
    """The judge-gradient check (pixel optimisation against the VLM loss): zero steps leave every input as it
    is (the evaluator then reads no edit and full preservation: the identity baseline's ground truth); some
    steps raise the judge's P(verify) and change pixels."""
    import pairfree
    from pairfree.eval.judge_gradient import judge_gradient_report
    from pairfree.judge.world import build_world_judge

    judge = build_world_judge(seed=0, image_size=84, width=32, vision_layers=1, text_layers=1)
    evaluator = pairfree.pretrained("shapes-evaluator")
    still = judge_gradient_report(judge, evaluator, n=7, steps=0)
    assert still["edit success"] == 0.0 and still["preservation"] == 1.0 and still["PSNR outside mask"] == 99.0
    assert set(still["per kind"]) == {"color", "texture", "background", "add", "remove", "replace", "adjust"}
    moved = judge_gradient_report(judge, evaluator, n=7, steps=5, lr=0.05)
    assert moved["p_verify after"] > moved["p_verify before"] and moved["PSNR outside mask"] < 99.0


def test_judge_gradient_low_resolution_change_is_smooth_and_the_ensemble_averages():
    """``delta_res=1``: every pixel of an image's channel moves by the same amount (a 1² change, upsampled) where
    nothing clips; an ensemble's per-question loss is the mean of its judges'."""
    from pairfree.eval.judge_gradient import JudgeEnsemble, optimise_pixels
    from pairfree.judge.world import build_world_judge
    from pairfree.world.edits import render_edits, sample_edit

    judges = [build_world_judge(seed=s, image_size=84, width=32, vision_layers=1, text_layers=1) for s in (0, 1)]
    for j in judges:
        j.requires_grad_(False)
    edits = [sample_edit(i, kind="background") for i in range(3)]
    x = render_edits(edits, 32)[0] * 2 - 1
    out, _ = optimise_pixels(JudgeEnsemble(judges), x, edits, steps=3, lr=0.1, delta_res=1)
    change, free = out - x, out.abs() < 1
    for i in range(3):
        for c in range(3):
            d = change[i, c][free[i, c]]
            assert d.abs().max() > 0.01 and d.max() - d.min() < 1e-5
    q = [e.questions()[0].to_dict() for e in edits]
    images, texts = [torch.stack([a, b]) for a, b in zip(x, out)], [d["text"] for d in q]
    target = torch.tensor([1.0 if d["target"] == "Yes" else 0.0 for d in q])
    with torch.no_grad():
        each = [j.loss(images, texts, target) for j in judges]
        torch.testing.assert_close(JudgeEnsemble(judges).loss(images, texts, target), (each[0] + each[1]) / 2)


def _tiny_teacher():
    """A frozen one-layer text-to-image teacher with random weights (seed 0): fast, with a real pull."""
    from pairfree.models.bundle import FlowModel
    from pairfree.models.dit import DiT, DiTConfig
    from pairfree.models.text import WorldTextEncoder

    torch.manual_seed(0)
    text = WorldTextEncoder.for_world(seed=0, width=32, num_layers=1, num_heads=2)
    dit = DiT(DiTConfig(in_channels=3, out_channels=3, num_layers=1, num_heads=2, head_dim=16, cross_heads=2,
                        cross_head_dim=16, patch_size=4, norm="rms", text_dim=text.dim))  # fmt: skip
    return FlowModel(dit, text).eval().requires_grad_(False)


def test_score_distillation_gradient_is_the_normalised_step_toward_the_teachers_x0():
    """d loss / d x0 = (x0 − real) / mean|x0 − real| / (numel): the pull toward the teacher's CFG prediction on
    the edited caption, with t and noise from the given generator (rebuilt here from the same seed)."""
    from pairfree.eval.judge_gradient import score_distillation_loss
    from pairfree.flow import add_noise
    from pairfree.train.losses import teacher_x0

    teacher = _tiny_teacher()
    x0 = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    caps = ["a red circle; a plain blue background.", "a green square at the top left; a plain white background."]
    score_distillation_loss(teacher, x0, caps, (0.3, 0.7), 3.5, torch.Generator().manual_seed(5)).backward()
    g = torch.Generator().manual_seed(5)
    t = 0.3 + 0.4 * torch.rand(2, generator=g)
    x_t = add_noise(x0.detach(), torch.randn(x0.shape, generator=g), t)
    with torch.no_grad():
        real = teacher_x0(teacher, x_t, t, caps, torch.full((2,), 3.5))
    diff = x0.detach() - real
    expected = diff / diff.abs().mean(dim=(1, 2, 3), keepdim=True) / diff[0].numel() / 2
    torch.testing.assert_close(x0.grad, expected)


def test_l1_to_the_input_holds_pixels_against_the_teachers_pull():
    """``l1_weight``: the mean |output − input| term holds the pixels near the input (its gradient outweighs the
    normalised pull everywhere), where the pull alone moves them further; with only the L1 term nothing moves
    (the output starts at the input)."""
    from pairfree.eval.judge_gradient import optimise_pixels
    from pairfree.world.edits import render_edits, sample_edit

    teacher = _tiny_teacher()
    edits = [sample_edit(i, kind=k) for i, k in enumerate(("color", "remove", "background"))]
    x = render_edits(edits, 32)[0] * 2 - 1
    lr = 0.02
    moved = {}
    for w in (0.0, 100.0):
        out, _ = optimise_pixels(None, x, edits, 20, lr, vlm_weight=0.0, teacher=teacher, teacher_weight=1.0,
                                 l1_weight=w)  # fmt: skip
        moved[w] = (out - x).abs().mean().item()
    assert moved[100.0] < 2 * lr and moved[0.0] > 3 * moved[100.0]
    still, _ = optimise_pixels(None, x, edits, 5, lr, vlm_weight=0.0, l1_weight=1.0)
    assert torch.equal(still, x)
