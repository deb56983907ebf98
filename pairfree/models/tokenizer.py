"""The shapes world's word-level tokenizer (built with ``tokenizers``, saved as a ``PreTrainedTokenizerFast``).

Its vocabulary is every word the world can say — captions, instructions (training and held-out templates),
judge questions — plus the chat and vision special tokens the Qwen2.5-VL prompt format uses.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pairfree.world.captions import caption
from pairfree.world.edits import TEMPLATES, sample_edit
from pairfree.world.scene import COLORS, SHAPES, SIZES, STYLES, TEXTURES, sample_scene
from pairfree.world.vqa import pair_question, single_question

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]


def world_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Sentences covering the world's vocabulary: captions, instructions of every template set, VQA questions."""
    rng = random.Random(seed)
    text = [
        " ".join(list(COLORS) + list(SHAPES) + list(SIZES) + list(TEXTURES) + list(STYLES)),
        "user assistant yes no",
    ]
    for split in TEMPLATES.values():
        text += [t for forms in split.values() for t in forms]
    for i in range(n):
        s = rng.getrandbits(63)
        text.append(caption(sample_scene(s), s))
        for templates in TEMPLATES:
            e = sample_edit(s, templates=templates)
            text += [e.instruction, e.edited_caption(s)] + [q.text for q in e.questions()]
        text += [single_question(s, i % 2 == 0).question, pair_question(s, i % 2 == 0).question]
    return text


def _pre_tokenizer():
    return pre_tokenizers.Whitespace()  # words and runs of punctuation


def build_world_tokenizer(corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the (lower-cased) world vocabulary; unknown words map to ``[UNK]``."""
    corpus = corpus if corpus is not None else world_corpus()
    norm = normalizers.Lowercase()
    pre = _pre_tokenizer()
    words = sorted({w for line in corpus for w, _ in pre.pre_tokenize_str(norm.normalize_str(line))})
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + [w for w in words if w not in SPECIAL_TOKENS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", padding_side="right")
