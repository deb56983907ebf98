"""The shapes world's judge: a tiny Qwen2.5-VL (transformers' own class) with the world's word-level tokenizer."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from pairfree.judge.qwen import JudgeConfig, QwenJudge
from pairfree.models.tokenizer import build_world_tokenizer


def tiny_qwen_config(
    tokenizer,
    width: int = 128,
    vision_layers: int = 4,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    tie_embeddings: bool = True,
) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL config whose special-token ids come from ``tokenizer``. Tied word embeddings (as
    Qwen2.5-VL-3B has): what captioning teaches the output rows ("red") the question's input tokens reuse."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = width // heads
    section = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]
    return Qwen2_5_VLConfig(
        vision_config=dict(
            depth=vision_layers,
            hidden_size=width,
            intermediate_size=2 * width,
            num_heads=heads,
            out_hidden_size=width,
            window_size=112,
            fullatt_block_indexes=[vision_layers - 1],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=text_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
        ),
        image_token_id=ids("<|image_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        video_token_id=tokenizer.unk_token_id,
        tie_word_embeddings=tie_embeddings,
    )


def build_world_judge(
    seed: int = 0, image_size: int = 84, question_first: bool = True, mrope: bool = False, **sizes
) -> QwenJudge:
    """A randomly initialised world judge (pretrained by ``pairfree pretrain judge``). ``mrope`` False: 1-D
    positions, as the shipped world judge was trained (see ``JudgeConfig.mrope``)."""
    tok = build_world_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(tok, **sizes))
    return QwenJudge(
        model,
        tok,
        JudgeConfig(image_size=image_size, answer_tokens=("no", "yes"), question_first=question_first, mrope=mrope),
    )
