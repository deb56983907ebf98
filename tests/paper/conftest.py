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


@pytest.fixture(scope="session")
def real_records(tmp_path_factory):
    """A JSONL of photograph-like records in the paper's reimplementation's field names: random RGB images of
    other sizes and aspect ratios than the run's resolution."""
    import json

    from PIL import Image

    root = tmp_path_factory.mktemp("real_data")
    (root / "photos").mkdir()
    g = torch.Generator().manual_seed(0)
    lines = []
    for i, (w, h, kind, text) in enumerate(
        [
            (48, 40, "color", "make the cup red"),
            (64, 48, "remove", "remove the cup"),
            (40, 56, "style", "make it a sketch"),
        ]
    ):
        pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "photos" / f"{i}.jpg")
        record = {"input_image_path": f"photos/{i}.jpg", "edit_instruction": text, "edit_type": kind,
                  "edited_caption": f"a photo after: {text}", "width": w, "height": h}  # fmt: skip
        if kind != "style":
            record["object"] = "cup"
        lines.append(json.dumps(record))
    (root / "edits.jsonl").write_text("\n".join(lines) + "\n")
    return root / "edits.jsonl"
