"""Tiny random weights saved in the paper presets' directory layouts (``save_pretrained`` of tiny configs):
a diffusers SANA pipeline directory (transformer/, text_encoder/, tokenizer/, vae/) and a transformers
Qwen2.5-VL directory, so the presets load through the real loaders."""

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (the paper presets load SANA pipelines)")
from diffusers import AutoencoderDC, SanaTransformer2DModel  # noqa: E402
from transformers import Gemma2Config, Gemma2Model

from pairfree.judge.world import build_world_judge  # noqa: E402
from pairfree.models.tokenizer import build_world_tokenizer


def save_tiny_sana_pipeline(root):
    tok = build_world_tokenizer()
    torch.manual_seed(0)
    SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        sample_size=16,
    ).save_pretrained(root / "transformer")
    Gemma2Model(
        Gemma2Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            pad_token_id=tok.pad_token_id,
        )
    ).save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    AutoencoderDC(
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
    ).save_pretrained(root / "vae")
    return root


def save_tiny_qwen(path):
    judge = build_world_judge(seed=0, width=32, vision_layers=1, text_layers=1, image_size=56)
    judge.model.save_pretrained(path)
    judge.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def paper_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_weights")
    return save_tiny_sana_pipeline(root / "sana"), save_tiny_qwen(root / "qwen")
