"""Text encoders behind one interface: ``encode(list[str]) -> (embeddings (B, L, D), mask (B, L) bool)``.

* :class:`WorldTextEncoder` — the shapes world's small transformer over the word-level tokenizer.
* :class:`HFTextEncoder` — a transformers encoder/decoder from a local directory (paper scale: SANA's Gemma-2),
  using its last hidden state, as SANA does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pairfree.models.persistence import CheckpointError, PretrainedMixin
from pairfree.models.tokenizer import build_world_tokenizer


@dataclass
class WorldTextEncoderConfig:
    vocab_size: int = 256
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 64
    pad_token_id: int = 0


class WorldTextEncoder(nn.Module, PretrainedMixin):
    """Token + learned position embeddings, a pre-norm transformer encoder, a final LayerNorm."""

    config_class = WorldTextEncoderConfig

    def __init__(self, config: WorldTextEncoderConfig, tokenizer=None):
        super().__init__()
        self.config = c = config
        self.tokenizer = tokenizer
        self.embed = nn.Embedding(c.vocab_size, c.width, padding_idx=c.pad_token_id)
        self.pos = nn.Parameter(torch.randn(c.max_length, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            c.width, c.num_heads, 4 * c.width, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, c.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)

    @property
    def dim(self) -> int:
        return self.config.width

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` embeddings, zero at padding. An empty text (no unpadded token) lets its first position
        attend, so its row is finite: a fully masked softmax is NaN, and NaN at a padded position survives a
        downstream mask (``0 * NaN``) in gradients and in plain attention implementations."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        attend = mask.clone()
        attend[:, 0] = True
        return self.norm(self.encoder(x, src_key_padding_mask=~attend)).masked_fill(~mask[..., None], 0.0)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError("WorldTextEncoder.encode: no tokenizer attached (load with from_pretrained)")
        batch = self.tokenizer(
            list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.config.max_length
        )
        device = self.pos.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()
        if ids.shape[1] == 0:  # every text empty (unconditional): one padding position, masked out downstream
            ids = torch.full((len(texts), 1), self.config.pad_token_id, dtype=ids.dtype, device=device)
            mask = torch.zeros(len(texts), 1, dtype=torch.bool, device=device)
        return self(ids, mask), mask

    def save_pretrained(self, path):
        path = PretrainedMixin.save_pretrained(self, path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        return path

    @classmethod
    def from_pretrained(cls, path, dtype=None, **overrides):
        from transformers import PreTrainedTokenizerFast

        model = super().from_pretrained(path, dtype, **overrides)
        if not (Path(path) / "tokenizer.json").is_file():
            raise CheckpointError(f"{Path(path) / 'tokenizer.json'}: missing")
        model.tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        return model

    @classmethod
    def for_world(cls, seed: int = 0, **sizes) -> WorldTextEncoder:
        """A randomly initialised encoder with the world tokenizer."""
        tok = build_world_tokenizer()
        torch.manual_seed(seed)
        return cls(WorldTextEncoderConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **sizes), tok)


class HFTextEncoder(nn.Module):
    """A transformers text model + tokenizer from a local directory; frozen; last hidden state as embeddings.
    ``max_length`` pads/truncates every prompt to the same length (SANA: 300)."""

    def __init__(
        self,
        path: str | Path,
        max_length: int = 300,
        dtype: torch.dtype | None = None,
        tokenizer_path: str | Path | None = None,
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        for name in ("config.json",):
            if not (path / name).is_file():
                raise CheckpointError(f"{path / name}: missing (expected a transformers model directory)")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
        model = AutoModel.from_pretrained(path, dtype=dtype)
        self.model = getattr(model, "language_model", model).requires_grad_(False).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), return_tensors="pt", padding="max_length", truncation=True, max_length=self.max_length
        )
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask.bool()
