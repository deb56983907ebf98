"""The editor's optional excess-variation (anti-noise) loss against closed forms and a loop reference."""

import pytest
import torch

from pairfree.train.losses import excess_variation_loss, total_variation


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
