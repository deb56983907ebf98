"""The editor's optional loss terms against closed forms and references: the excess-variation (anti-noise) loss
and DMD with the delta score's fake."""

import pytest
import torch

from pairfree.kernels.dmd import dmd_loss_reference
from pairfree.train.losses import dmd_generator_loss, excess_variation_loss, total_variation


def _tv_loop(x):
    b, c, h, w = x.shape
    out = []
    for i in range(b):
        dy = sum(
            abs(float(x[i, k, r + 1, q] - x[i, k, r, q])) for k in range(c) for r in range(h - 1) for q in range(w)
        )
        dx = sum(
            abs(float(x[i, k, r, q + 1] - x[i, k, r, q])) for k in range(c) for r in range(h) for q in range(w - 1)
        )
        out.append(dy / (c * (h - 1) * w) + dx / (c * h * (w - 1)))
    return torch.tensor(out)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 4, 4), (3, 3, 9, 2)])
def test_total_variation_matches_a_loop(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(total_variation(x), _tv_loop(x), rtol=1e-5, atol=1e-6)


def test_closed_forms():
    assert total_variation(torch.full((1, 3, 6, 6), 0.3)).item() == 0
    stripes = torch.tensor([1.0, -1.0]).repeat(4).expand(1, 1, 8, 8)  # columns alternate: every dx is 2
    assert total_variation(stripes).item() == pytest.approx(2.0)


def test_recolouring_a_flat_region_is_free_and_noise_is_not():
    scene = torch.full((1, 3, 16, 16), -0.5)
    scene[..., 4:9, 4:9] = 0.8  # an object on a flat background
    recoloured = scene.clone()
    recoloured[recoloured == -0.5] = 0.2  # the background recoloured, closer to the object: less contrast
    assert excess_variation_loss(recoloured, scene).item() == 0
    noisy = (scene + 0.1 * torch.randn(scene.shape, generator=torch.Generator().manual_seed(1))).requires_grad_()
    loss = excess_variation_loss(noisy, scene)
    expected = (_tv_loop(noisy.detach()) - _tv_loop(scene)).clamp_min(0).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0.05
    loss.backward()
    assert noisy.grad.abs().sum() > 0


class ConstantTeacher:
    """A text-to-image model whose x0 prediction is a fixed image per caption, whatever it is shown (closed form)."""

    def __init__(self, images: dict):
        self.images = images

    def velocity(self, x_t, t, captions):
        x0 = torch.stack([self.images[c] for c in captions])
        return (x_t - x0) / t.view(-1, 1, 1, 1)  # so that x0 = x_t - t·v


def test_delta_fake_moves_by_the_caption_difference_plus_the_change_so_far():
    """With the delta score, DMD's step on x̂0 is (teacher's x0 on the edited caption) − (on the source caption) −
    (x̂0 − reference): what the teacher draws for both captions cancels. Closed form with a constant teacher."""
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 5, 4)
    images = {c: torch.randn(shape[1:], generator=g) for c in ("", "red", "blue", "green")}
    teacher = ConstantTeacher(images)
    x0 = torch.randn(shape, generator=g, requires_grad=True)
    ref = torch.randn(shape, generator=g)
    edited, source, cfg = ["blue", "green"], ["red", "red"], torch.tensor([3.5, 7.5])

    def guided(c, s):
        return images[""] + s * (images[c] - images[""])

    real = torch.stack([guided(c, s) for c, s in zip(edited, cfg)])
    fake = x0.detach() - ref + torch.stack([guided(c, s) for c, s in zip(source, cfg)])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    loss = dmd_generator_loss(x0, teacher, None, edited, cfg, (0.2, 0.8), gens, reference=ref, source_captions=source)
    (grad,) = torch.autograd.grad(loss, x0)
    x = x0.detach().requires_grad_()
    expected = dmd_loss_reference(x, real, fake).mean()
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_delta_score_leaves_the_reference_alone_under_its_own_caption(tiny_models):
    """A real (tiny) teacher: x̂0 = the reference and the edited caption = the source caption gives no gradient,
    however the teacher would redraw the image; the critic's DMD (fake = the teacher itself) is not zero-free."""
    from pairfree.shipped import pretrained

    teacher = pretrained("shapes-teacher", tiny_models["teacher"]).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    ref = torch.rand((3, 3, 32, 32), generator=g) * 2 - 1
    captions = ["a red circle on a blue background", "a green square", "a small yellow triangle"]
    x0 = ref.clone().requires_grad_()
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    loss = dmd_generator_loss(
        x0, teacher, None, captions, torch.full((3,), 3.5), (0.1, 0.9), gens, reference=ref, source_captions=captions
    )
    (same,) = torch.autograd.grad(loss, x0)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    edited = ["a blue circle on a blue background", "a green square", "a large yellow triangle"]
    loss = dmd_generator_loss(
        x0, teacher, None, edited, torch.full((3,), 3.5), (0.1, 0.9), gens, reference=ref, source_captions=captions
    )
    (grad,) = torch.autograd.grad(loss, x0)
    scale = grad.abs().max()
    assert scale > 0 and same.abs().max() < 1e-4 * scale  # float rounding only
    assert grad[1].abs().max() < 1e-4 * scale  # sample 1's caption did not change
    assert grad[0].abs().max() > 0.1 * scale and grad[2].abs().max() > 0.1 * scale


def test_judge_temperature_scales_the_answer_logits_as_the_paper_does(tiny_models):
    """The paper's reimplementation computes CE(logits · τ) with τ rising 0.1 → 1 (soft answers first): at
    τ = 0.1 the loss is the two-token CE of a tenth of the judge's own logits, and the logged P(target answer)
    is the judge's at τ = 1."""
    import torch.nn.functional as F

    from pairfree.shipped import pretrained
    from pairfree.train.losses import judge_images, vlm_editing_loss

    judge = pretrained("shapes-judge", tiny_models["judge"]).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    inputs, outputs = (torch.rand((2, 3, 32, 32), generator=g) * 2 - 1 for _ in range(2))
    questions = [
        [{"role": "verify", "text": "Is the circle red?", "target": "Yes", "images": "output"},
         {"role": "identity", "text": "Are the two images the same apart from the circle?", "target": "No",
          "images": "pair"}]
        for _ in range(2)
    ]  # fmt: skip
    flat = [(x, y, q) for x, y, qs in zip(inputs, outputs, questions) for q in qs]
    logits = judge.forward([judge_images(q, x, y) for x, y, q in flat], [q["text"] for _, _, q in flat]).double()
    target = torch.tensor([q["target"] == "Yes" for _, _, q in flat]).long()
    roles = torch.tensor([q["role"] == "identity" for _, _, q in flat])
    for tau in (0.1, 0.55, 1.0):
        loss, stats = vlm_editing_loss(judge, inputs, outputs, questions, tau)
        ce = F.cross_entropy(logits * tau, target, reduction="none")
        expected = (ce[~roles].mean() + ce[roles].mean()) / 2
        torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)
        p = logits.softmax(-1).gather(1, target[:, None])[:, 0]
        assert stats["p_verify"] == pytest.approx(p[~roles].mean().item(), abs=1e-4)
        assert stats["p_identity"] == pytest.approx(p[roles].mean().item(), abs=1e-4)


class _Recorder(torch.nn.Module):
    """A flow model that records what it is asked and predicts v = 0."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def velocity(self, x_t, t, captions, reference=None):
        self.calls.append((t.clone(), list(captions)))
        return torch.zeros_like(x_t)


def test_critic_t_is_drawn_as_dmd_draws_it():
    """The critic's flow loss with ``t_range`` draws t ~ U[t_min, t_max] from the same per-sample generators DMD
    uses (the reimplementation); without it, the copy warm-up's logit-normal t."""
    from pairfree.train.losses import flow_loss, per_sample_rand

    x0 = torch.zeros(64, 3, 4, 4)
    model = _Recorder()
    flow_loss(model, x0, [""] * 64, [torch.Generator().manual_seed(i) for i in range(64)], t_range=(0.3, 0.4))
    expected = 0.3 + 0.1 * per_sample_rand([torch.Generator().manual_seed(i) for i in range(64)], "cpu")
    torch.testing.assert_close(model.calls[0][0], expected)
    flow_loss(model, x0, [""] * 64, [torch.Generator().manual_seed(i) for i in range(64)])
    assert model.calls[1][0].min() < 0.3 or model.calls[1][0].max() > 0.4  # logit-normal: spread over (0, 1)


def test_teacher_cfg_uses_the_negative_prompt():
    from pairfree.train.losses import teacher_x0

    model = _Recorder()
    x_t, t = torch.zeros(2, 3, 4, 4), torch.full((2,), 0.5)
    teacher_x0(model, x_t, t, ["a red circle", "a blue square"], torch.full((2,), 3.5), negative="low quality")
    assert model.calls[0][1] == ["a red circle", "a blue square", "low quality", "low quality"]
    teacher_x0(model, x_t, t, ["a red circle", "a blue square"], torch.full((2,), 3.5))
    assert model.calls[1][1][2:] == ["", ""]
