"""The DiT equals diffusers' SANA after conversion; reference conditioning, checkpointing, persistence."""

import json

import pytest
import torch

try:
    from diffusers import SanaTransformer2DModel
except ImportError:  # the GPU test machine has no diffusers: the conversion tests skip, the rest run
    SanaTransformer2DModel = None

from pairfree.models import CheckpointError, DiT, DiTConfig
from pairfree.models.convert import dit_from_diffusers

TINY = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=8,
    num_layers=2,
    num_cross_attention_heads=2,
    cross_attention_head_dim=8,
    cross_attention_dim=16,
    caption_channels=12,
    sample_size=8,
)


needs_diffusers = pytest.mark.skipif(SanaTransformer2DModel is None, reason="diffusers not installed")


def _random_sana(seed=0, **kw):
    torch.manual_seed(seed)
    model = SanaTransformer2DModel(**{**TINY, **kw}).eval()
    with torch.no_grad():  # randomise everything, including zero-initialised tensors
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _inputs(b=3, c=4, hw=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, hw, hw, generator=g)
    t = torch.rand(b, generator=g)
    text = torch.randn(b, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])[:b]
    return x, t, text, mask


@pytest.mark.parametrize(
    "kw, hw",
    [
        ({"patch_size": 1}, 8),
        ({"patch_size": 2}, 8),
        ({"patch_size": 2, "attention_bias": True}, 6),
        ({"patch_size": 1, "interpolation_scale": 1}, 8),
        ({"patch_size": 1, "mlp_ratio": 3.0}, 5),
    ],
)
@needs_diffusers
def test_converted_sana_matches_diffusers(kw, hw):
    ref = _random_sana(**kw)
    ours = dit_from_diffusers(ref).eval()
    x, t, text, mask = _inputs(hw=hw)
    with torch.no_grad():
        expected = ref(x, text, t * 1000, encoder_attention_mask=mask).sample
        got = ours(x, t, text, mask)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@needs_diffusers
def test_convert_from_a_local_directory(tmp_path):
    ref = _random_sana()
    ref.save_pretrained(tmp_path / "sana" / "transformer")
    ours = dit_from_diffusers(tmp_path / "sana")  # a pipeline directory with transformer/ works
    x, t, text, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x, t, text, mask), ref(x, text, t * 1000, encoder_attention_mask=mask).sample, rtol=1e-5, atol=1e-4
        )
    with pytest.raises(CheckpointError, match="no config.json"):
        dit_from_diffusers(tmp_path / "missing")


@needs_diffusers
def test_reference_conditioning():
    model = dit_from_diffusers(_random_sana()).eval()
    x, t, text, mask = _inputs()
    r1, r2 = torch.randn_like(x), torch.randn_like(x)
    with torch.no_grad():
        plain = model(x, t, text, mask)
        a, b = model(x, t, text, mask, reference=r1), model(x, t, text, mask, reference=r2)
    assert not torch.allclose(a, plain) and not torch.allclose(a, b)  # the reference matters
    # the images meet only in self-attention: silence it and the reference has no effect (no leak via the conv)
    with torch.no_grad():
        for blk in model.blocks:
            blk.self_attn.out.weight.zero_()
            blk.self_attn.out.bias.zero_()
        torch.testing.assert_close(model(x, t, text, mask, reference=r1), model(x, t, text, mask, reference=r2))
    # reference tokens sit at t = 0: changing t changes only the noisy tokens' modulation
    nr = DiT(DiTConfig(**{**_small_cfg(), "reference": False}))
    with pytest.raises(ValueError, match="reference=False"):
        nr(x, t, text, mask, reference=r1)


def _small_cfg():
    return dict(
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_heads=2,
        head_dim=8,
        cross_heads=2,
        cross_head_dim=8,
        text_dim=12,
    )


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_gradient_checkpointing_gives_the_same_gradients(norm):
    torch.manual_seed(0)
    model = DiT(DiTConfig(**_small_cfg(), norm=norm)).double()
    x, t, text, mask = (v.double() if v.is_floating_point() else v for v in _inputs())
    ref = torch.randn_like(x)

    def grads(ckpt):
        model.config.gradient_checkpointing = ckpt
        model.zero_grad()
        xx = x.clone().requires_grad_()
        model(xx, t, text, mask, reference=ref).square().mean().backward()
        return [xx.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_save_load_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = DiT(DiTConfig(**_small_cfg())).eval()
    path = model.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(path).eval()
    x, t, text, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, text, mask), loaded(x, t, text, mask))
    assert not list(path.glob("*.tmp"))
    with pytest.raises(CheckpointError, match="no such model directory"):
        DiT.from_pretrained(tmp_path / "nope")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "depth": 3}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown field\(s\) \['depth'\]"):
        DiT.from_pretrained(path)
    (path / "config.json").write_text(json.dumps({**cfg, "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['blocks.2"):
        DiT.from_pretrained(path)
    (path / "config.json").write_text(json.dumps({**cfg, "head_dim": 4, "cross_head_dim": 4}))
    with pytest.raises(CheckpointError, match=r"expected shape .* got"):
        DiT.from_pretrained(path)


@needs_diffusers
def test_sana_1600m_preset_on_meta_matches_the_published_size():
    with torch.device("meta"):
        ours = DiT(DiTConfig())
        theirs = SanaTransformer2DModel()  # diffusers' defaults are SANA-1.6B's
    n = sum(p.numel() for p in ours.parameters())
    assert n - ours.config.width == sum(p.numel() for p in theirs.parameters()) == 1_604_462_752


def test_softmax_self_attention_option_is_sdpa_over_the_same_projections():
    """``self_attn: softmax`` (a deviation from SANA for the tiny world DiTs): the block's self-attention is plain
    softmax attention over the same q, k, v projections, against torch's SDPA."""
    import torch.nn.functional as F

    from pairfree.models.dit import DiTConfig, SelfAttention

    cfg = DiTConfig(num_heads=2, head_dim=8, cross_heads=2, cross_head_dim=8, self_attn="softmax")
    torch.manual_seed(0)
    attn = SelfAttention(cfg)
    x = torch.randn(3, 11, cfg.width)
    q, k, v = attn.qkv(x).view(3, 11, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = attn.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 11, -1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="self_attn: expected 'linear' or 'softmax'"):
        DiTConfig(self_attn="flash")


def test_pooled_text_adds_the_masked_caption_mean_to_the_timestep_embedding():
    """``pooled_text`` (SD3's pooled path, a deviation from SANA): zero-initialised, the model computes what it does
    without it; trained, the modulation sees ``pooled_proj(mean of the real caption tokens)`` — padding ignored —
    added to the timestep embedding."""
    small = dict(in_channels=4, out_channels=4, num_layers=2, num_heads=2, head_dim=8, cross_heads=2,
                 cross_head_dim=8, text_dim=12, norm="rms")  # fmt: skip
    torch.manual_seed(0)
    plain = DiT(DiTConfig(**small)).eval()
    pooled = DiT(DiTConfig(**small, pooled_text=True)).eval()
    pooled.load_state_dict(plain.state_dict(), strict=False)
    x, t, text, mask = _inputs()
    torch.testing.assert_close(pooled(x, t, text, mask), plain(x, t, text, mask))
    torch.nn.init.normal_(pooled.pooled_proj.weight)
    seen = {}
    pooled.time_embed.register_forward_hook(lambda m, args, out: seen.update(extra=seen.get("extra", args[2])))
    pooled(x, t, text, mask)
    projected = pooled.text_norm(pooled.text_proj(text))
    expected = torch.stack([projected[i, mask[i].bool()].mean(0) for i in range(len(x))])
    torch.testing.assert_close(seen["extra"], pooled.pooled_proj(expected))
    # padding is ignored: changing a padded token's embedding changes nothing
    text2 = text.clone()
    text2[0, 4] += 5.0
    torch.testing.assert_close(pooled(x, t, text2, mask), pooled(x, t, text, mask))
