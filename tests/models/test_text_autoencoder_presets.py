"""Text encoders, autoencoders, presets (meta-device sizes equal the published ones) and the config loader."""

import dataclasses

import pytest
import torch
from transformers import Gemma2Config, Gemma2Model

from pairfree.config import ConfigError, load_config
from pairfree.judge.qwen import load_qwen_judge
from pairfree.judge.world import build_world_judge
from pairfree.models import CheckpointError, DiTConfig
from pairfree.models.autoencoder import DCAutoencoder, IdentityAutoencoder
from pairfree.models.presets import build_from_preset, parameter_count, read_preset
from pairfree.models.text import HFTextEncoder, WorldTextEncoder

try:
    from diffusers import AutoencoderDC
except ImportError:  # the GPU test machine has no diffusers: the DC-AE test skips, the rest run
    AutoencoderDC = None


@pytest.fixture(scope="module")
def world_text():
    return WorldTextEncoder.for_world(seed=0, width=32, num_layers=1)


def test_world_text_encoder_interface_and_round_trip(world_text, tmp_path):
    texts = ["make the red circle blue", "A large striped green star at the center; a plain white background."]
    emb, mask = world_text.encode(texts)
    assert emb.shape[:2] == mask.shape and emb.shape[-1] == 32 and mask.dtype == torch.bool
    assert mask[0].sum() == 5 and mask[1].all()
    assert world_text.tokenizer.unk_token_id not in world_text.tokenizer(texts[1])["input_ids"]
    loaded = WorldTextEncoder.from_pretrained(world_text.eval().save_pretrained(tmp_path / "text")).eval()
    with torch.no_grad():
        a, _ = world_text.encode(texts)
        b, _ = loaded.encode(texts)
    assert torch.equal(a, b)
    # padding does not change a prompt's embeddings
    with torch.no_grad():
        alone, _ = world_text.encode(texts[:1])
    torch.testing.assert_close(a[0, :5], alone[0], rtol=1e-5, atol=1e-6)


def test_empty_text_is_finite_and_unconditional(world_text):
    """An empty prompt (CFG's unconditional branch) encodes to a finite, fully masked row, alone or in a batch;
    a DiT conditioned on it gives the same output either way and finite gradients to its image input."""
    from pairfree.models.dit import DiT

    emb, mask = world_text.encode(["", "make the red circle blue"])
    assert torch.isfinite(emb).all() and not mask[0].any() and (emb[0] == 0).all()
    alone, alone_mask = world_text.encode(["", ""])
    assert alone.shape[1] == 1 and not alone_mask.any()
    torch.manual_seed(0)
    dit = DiT(DiTConfig(in_channels=3, out_channels=3, num_layers=1, num_heads=2, head_dim=16, cross_heads=2,
                        cross_head_dim=16, patch_size=4, norm="rms", text_dim=32)).eval()  # fmt: skip
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    t = torch.full((2,), 0.5)
    v_batch = dit(x, t, emb[:1].expand(2, -1, -1), mask[:1].expand(2, -1))
    v_alone = dit(x, t, alone, alone_mask)
    torch.testing.assert_close(v_batch, v_alone)
    v_alone.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hf_text_encoder_from_a_local_directory(tmp_path, world_text):
    cfg = Gemma2Config(
        vocab_size=len(world_text.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Gemma2Model(cfg).save_pretrained(tmp_path / "gemma")
    world_text.tokenizer.save_pretrained(tmp_path / "gemma")
    enc = HFTextEncoder(tmp_path / "gemma", max_length=12)
    emb, mask = enc.encode(["make the red circle blue", "remove the star"])
    assert emb.shape == (2, 12, 32) and mask.sum(1).tolist() == [5, 3] and enc.dim == 32
    with pytest.raises(CheckpointError, match="config.json: missing"):
        HFTextEncoder(tmp_path / "nothing")


def _tiny_dcae():
    torch.manual_seed(0)
    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        scaling_factor=0.41,
    ).eval()


@pytest.mark.skipif(AutoencoderDC is None, reason="diffusers not installed")
def test_autoencoders(tmp_path):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ident = IdentityAutoencoder()
    assert ident.decode(ident.encode(x)) is x
    vae = _tiny_dcae()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    ae = DCAutoencoder.from_pretrained(tmp_path / "pipe")  # a pipeline directory with vae/ works
    with torch.no_grad():
        z = ae.encode(x)
        torch.testing.assert_close(z, vae.encode(x).latent * 0.41)
        torch.testing.assert_close(ae.decode(z), vae.decode(z / 0.41).sample)
    assert z.shape == (2, 4, 8, 8) and ae.downsample == 2 and ae.latent_channels == 4
    zz = z.clone().requires_grad_()
    ae.decode(zz).sum().backward()  # the judge's gradient reaches the latents
    assert zz.grad.abs().sum() > 0 and not any(p.requires_grad for p in ae.parameters())
    with pytest.raises(CheckpointError, match="no config.json"):
        DCAutoencoder.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("preset", ["sana_1600m", "qwen2_5_vl_7b", "qwen2_5_vl_3b", "gemma2_2b"])
def test_paper_presets_on_meta_match_the_published_sizes(preset):
    path = f"configs/models/{preset}.yaml"
    model = build_from_preset(path)
    n = parameter_count(model)
    extra = model.config.width if preset.startswith("sana") else 0  # our reference embedding
    assert n - extra == read_preset(path)["published_parameters"]
    assert all(p.is_meta for p in model.parameters())


def test_shapes_dit_preset_builds():
    model = build_from_preset("configs/shapes/dit.yaml", device="cpu")
    out = model(torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 7, 128))
    assert out.shape == (2, 3, 32, 32)


def test_qwen_judge_loads_from_a_local_directory(tmp_path):
    judge = build_world_judge(seed=0, width=32, vision_layers=1, text_layers=1, image_size=56, mrope=True)
    judge.model.save_pretrained(tmp_path / "qwen")
    judge.tokenizer.save_pretrained(tmp_path / "qwen")
    loaded = load_qwen_judge(tmp_path / "qwen", image_size=56, question_first=True)
    im = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded([im], ["is there a star?"]), judge([im], ["is there a star?"]))
    with pytest.raises(CheckpointError, match="tokenizer_config.json: missing"):
        (tmp_path / "qwen" / "tokenizer_config.json").unlink()
        load_qwen_judge(tmp_path / "qwen")


@dataclasses.dataclass
class _Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.9)


@dataclasses.dataclass
class _Cfg:
    steps: int = 10
    name: str = "run"
    optim: _Optim = dataclasses.field(default_factory=_Optim)
    dit: DiTConfig | None = None


def test_config_loader(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5\noptim:\n  lr: 3\ndit:\n  num_layers: 2\n")
    cfg = load_config(_Cfg, f, ["optim.betas=[0.5, 0.99]", "name=x"])
    assert cfg.steps == 5 and cfg.optim.lr == 3.0 and cfg.optim.betas == (0.5, 0.99) and cfg.name == "x"
    assert cfg.dit.num_layers == 2 and load_config(_Cfg).dit is None
    f.write_text("optim:\n  lrr: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml.optim: unknown field\(s\) \['lrr'\]"):
        load_config(_Cfg, f)
    with pytest.raises(ConfigError, match=r"config.steps: expected int, got 'many'"):
        load_config(_Cfg, None, ["steps=many"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(_Cfg, None, ["steps"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(_Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"config.dit: DiTConfig.norm: expected 'layer' or 'rms'"):
        load_config(_Cfg, None, ["dit.norm=batch"])
