"""A frozen Qwen2.5-VL as a differentiable judge: P(Yes) for (images, question), gradients to the pixels.

Images arrive as tensors in [-1, 1] that carry gradients. Everything between them and the model — resize,
normalisation, the patch layout and ``image_grid_thw`` that Qwen2.5-VL's image processor would produce — is
torch, so backprop reaches the images. The two answer logits are taken from the final hidden state at the
answer position and the two ``lm_head`` rows of "No" and "Yes" only, never the full vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pairfree.kernels.judge_loss import judge_loss
from pairfree.models.persistence import CheckpointError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class JudgeConfig:
    """How images and questions are presented to the VLM."""

    image_size: int = 448  # images are resized to image_size² (a multiple of patch_size · merge_size)
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    answer_tokens: tuple[str, str] = ("No", "Yes")
    resize_mode: str = "bicubic"
    # the question before the images, so every image token can attend to it (our from-scratch world judge:
    # each cell's token then checks itself against the question); pretrained VLMs take the images first
    question_first: bool = False
    # Qwen2.5-VL's 3-D (time, row, column) rotary positions for image tokens, as its processor sets them up (it
    # passes ``mm_token_type_ids``; without them transformers falls back to 1-D positions). Pretrained weights
    # need True; the shipped world judge was trained with 1-D positions (its judge.json says mrope: false)
    mrope: bool = True

    def __post_init__(self):
        factor = self.patch_size * self.merge_size
        if self.image_size % factor:
            raise ValueError(f"JudgeConfig.image_size: {self.image_size} is not a multiple of patch·merge = {factor}")


def images_to_patches(images: torch.Tensor, cfg: JudgeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` ``(N, 3, H, W)`` in [-1, 1] -> (``pixel_values`` ``(N·gh·gw, 3·T·p·p)``, ``image_grid_thw``
    ``(N, 3)``), laid out as Qwen2-VL's image processor lays them out; differentiable."""
    n, c, h, w = images.shape
    size, p, m, t = cfg.image_size, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    x = images if images.dtype == torch.float64 else images.float()
    x = (x + 1) / 2  # [0, 1], as the processor's rescale of uint8 pixels gives
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=cfg.resize_mode, align_corners=False, antialias=min(h, w) > size)
    mean = torch.tensor(cfg.image_mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(cfg.image_std, device=x.device, dtype=x.dtype)[None, :, None, None]
    x = (x - mean) / std
    g = size // p
    x = x.reshape(n, c, g // m, m, p, g // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)  # (N, gh, gw, mh, mw, C, p, p)
    x = x[:, :, :, :, :, :, None].expand(*x.shape[:6], t, p, p)  # repeat the frame over the temporal patch
    pixel_values = x.reshape(n * g * g, c * t * p * p)
    grid = torch.tensor([[1, g, g]] * n, dtype=torch.long, device=images.device)
    return pixel_values, grid


def prompt(question: str, num_images: int, tokens_per_image: int, question_first: bool = False) -> str:
    """The chat-formatted prompt with one vision block per image; the answer is predicted after it."""
    vision = ("<|vision_start|>" + "<|image_pad|>" * tokens_per_image + "<|vision_end|>") * num_images
    body = question + vision if question_first else vision + question
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


class QwenJudge(nn.Module):
    """Wraps a transformers ``Qwen2_5_VLForConditionalGeneration`` (frozen) and a tokenizer.

    ``forward(images, questions)``: ``images`` a list (one entry per question) of ``(n_i, 3, H, W)`` tensors in
    [-1, 1], ``n_i`` ∈ {1, 2}; returns logits ``(B, 2)`` for [No, Yes].
    """

    def __init__(self, model: nn.Module, tokenizer, config: JudgeConfig | None = None):
        super().__init__()
        self.model, self.tokenizer, self.config = model, tokenizer, config or JudgeConfig()
        self.tokenizer.padding_side = "right"  # the answer position is then each prompt's last real token
        self.model.requires_grad_(False)
        self.model.eval()
        ids = tokenizer.convert_tokens_to_ids(list(self.config.answer_tokens))
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ValueError(f"judge: answer tokens {self.config.answer_tokens} are not in the tokenizer's vocabulary")
        self.register_buffer("answer_ids", torch.tensor(ids), persistent=False)
        g = self.config.image_size // self.config.patch_size
        self.tokens_per_image = (g // self.config.merge_size) ** 2

    def train(self, mode: bool = True):  # the VLM stays in eval mode (no dropout) whatever the wrapper does
        super().train(mode)
        self.model.eval()
        return self

    def encode_text(self, questions: list[str], num_images: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        qf = self.config.question_first
        texts = [prompt(q, n, self.tokens_per_image, qf) for q, n in zip(questions, num_images)]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def hidden_states(
        self, images: list[torch.Tensor], questions: list[str], all_layers: bool = False
    ) -> tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """The language model's final hidden states ``(B, L, D)`` (or, with ``all_layers``, every layer's), with
        the prompts' ``input_ids`` and attention mask ``(B, L)``."""
        if len(images) != len(questions):
            raise ValueError(f"judge: {len(images)} image entries for {len(questions)} questions")
        device = self.answer_ids.device
        flat = torch.cat([im if im.dim() == 4 else im[None] for im in images]).to(device)
        pixel_values, grid = images_to_patches(flat, self.config)
        input_ids, mask = self.encode_text(questions, [im.shape[0] if im.dim() == 4 else 1 for im in images], device)
        dtype = next(self.model.parameters()).dtype
        out = self.model.model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=pixel_values.to(dtype),
            image_grid_thw=grid,
            output_hidden_states=all_layers,
            **self._positions(input_ids),
        )
        return (out.hidden_states if all_layers else out.last_hidden_state), input_ids, mask

    def _positions(self, input_ids: torch.Tensor) -> dict:
        """What Qwen2.5-VL's processor adds so the model builds its 3-D rotary positions: image tokens typed 1."""
        if not self.config.mrope:
            return {}
        return {"mm_token_type_ids": (input_ids == self.model.config.image_token_id).int()}

    def answer_hidden(self, images: list[torch.Tensor], questions: list[str]) -> torch.Tensor:
        """The final hidden state ``(B, D)`` at each prompt's answer position."""
        hidden, _, mask = self.hidden_states(images, questions)
        return answer_positions(hidden, mask)

    def vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The vision tower's merged tokens ``(N, tokens_per_image, D)`` for ``images`` ``(N, 3, H, W)``, row-major
        over the merged patch grid (what the language model sees in place of each image's pad tokens)."""
        device = self.answer_ids.device
        pixel_values, grid = images_to_patches(images.to(device), self.config)
        dtype = next(self.model.parameters()).dtype
        merged = self.model.model.visual(pixel_values.to(dtype), grid_thw=grid).pooler_output
        return merged.reshape(images.shape[0], self.tokens_per_image, -1)

    def head_weight(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``lm_head.weight`` (or its ``rows``). The loss reads it directly rather than calling ``lm_head``, so
        under DeepSpeed ZeRO-3 it is gathered here (a detached copy: the judge is frozen)."""
        w = self.model.lm_head.weight
        if hasattr(w, "ds_id"):  # a ZeRO-3 partitioned parameter
            import deepspeed

            with deepspeed.zero.GatheredParameters([w]):
                return (w if rows is None else w[rows]).detach().clone()
        return w if rows is None else w[rows]

    def forward(self, images: list[torch.Tensor], questions: list[str]) -> torch.Tensor:
        """[No, Yes] logits ``(B, 2)`` from the two ``lm_head`` rows only."""
        h = self.answer_hidden(images, questions)
        rows = self.head_weight(self.answer_ids)  # (2, D)
        return h @ rows.T if h.dtype == torch.float64 else (h @ rows.T).float()

    def loss(
        self, images, questions, target_yes: torch.Tensor, logit_scale: float = 1.0, full_vocab: bool = False
    ) -> torch.Tensor:
        """Per-question loss ``(B,)`` toward the target answers (1 = Yes): the fused two-token CE, or the
        full-vocabulary CE of the paper's ablation (chunked)."""
        h = self.answer_hidden(images, questions)
        no_id, yes_id = (int(i) for i in self.answer_ids)
        if full_vocab:
            weight = self.head_weight()
        else:  # the two rows suffice: [No, Yes]
            weight, no_id, yes_id = self.head_weight(self.answer_ids), 0, 1
        return judge_loss(h, weight, yes_id, no_id, target_yes.to(h.device), logit_scale, full_vocab=full_vocab)

    def caption_loss(
        self, images: torch.Tensor, captions: list[str], instruction: str = "Describe the image."
    ) -> torch.Tensor:
        """Next-token cross-entropy of ``captions`` given one image each (the answer tokens only): the dense
        image-to-text supervision VLMs are pretrained with, used while training the world's judge."""
        device = self.answer_ids.device
        pixel_values, grid = images_to_patches(images.to(device), self.config)
        prompts = [prompt(instruction, 1, self.tokens_per_image, self.config.question_first) for _ in captions]
        full = self.tokenizer(
            [p + c + "<|im_end|>" for p, c in zip(prompts, captions)],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        plen = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        ids, mask = full["input_ids"].to(device), full["attention_mask"].to(device)
        labels = ids.masked_fill(mask == 0, -100)
        for i, n in enumerate(plen):
            labels[i, :n] = -100
        dtype = next(self.model.parameters()).dtype
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixel_values.to(dtype),
            image_grid_thw=grid,
            labels=labels,
            **self._positions(ids),
        )
        return out.loss

    @torch.no_grad()
    def generate_text(self, images: torch.Tensor, instruction: str, max_new_tokens: int = 64) -> list[str]:
        """Greedy answers to ``instruction`` about each of ``images`` ``(N, 3, H, W)`` (e.g. a caption per image),
        through transformers' ``generate``."""
        device = self.answer_ids.device
        pixel_values, grid = images_to_patches(images.to(device), self.config)
        prompts = [prompt(instruction, 1, self.tokens_per_image, self.config.question_first)] * images.shape[0]
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"  # generation appends on the right
        try:
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        finally:
            self.tokenizer.padding_side = side
        dtype = next(self.model.parameters()).dtype
        out = self.model.generate(
            **batch,
            pixel_values=pixel_values.to(dtype),
            image_grid_thw=grid,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            **self._positions(batch["input_ids"]),
        )
        return [
            t.strip()
            for t in self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        ]

    def p_yes(self, images, questions) -> torch.Tensor:
        return self.forward(images, questions).softmax(-1)[:, 1]


def answer_positions(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden`` ``(B, L, D)`` at each right-padded prompt's last real token (where the answer is predicted)."""
    last = mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def two_token_loss(logits: torch.Tensor, target_yes: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Per-question CE over [No, Yes] logits toward the target answer = ``−log σ(s · (ℓ_target − ℓ_other))``."""
    return F.cross_entropy(logits * logit_scale, target_yes.long(), reduction="none")


def load_qwen_judge(
    path,
    image_size: int = 448,
    dtype: torch.dtype | None = None,
    question_first: bool = False,
    mrope: bool = True,
) -> QwenJudge:
    """A judge from a local transformers Qwen2.5-VL directory (config, safetensors weights, tokenizer)."""
    from pathlib import Path

    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    for name in ("config.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing (expected a local Qwen2.5-VL model directory)")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    answers = ("No", "Yes") if "Yes" in tok.get_vocab() else ("no", "yes")
    return QwenJudge(
        model,
        tok,
        JudgeConfig(image_size=image_size, answer_tokens=answers, question_first=question_first, mrope=mrope),
    )
