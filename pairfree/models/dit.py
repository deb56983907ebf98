"""A SANA-architecture diffusion transformer with reference-image conditioning.

SANA's block: adaLN-single modulated norm → ReLU linear self-attention → softmax cross-attention to the text →
modulated norm → Mix-FFN (GLUMBConv: 1×1 conv, depthwise 3×3 conv, gated, 1×1 conv). No positional embedding
(the depthwise conv carries position) unless ``pos_embed="sincos"``. Loads diffusers ``SanaTransformer2DModel``
weights (:mod:`pairfree.models.convert`).

Editing extension: the reference image's tokens are appended to the noisy tokens along the token axis and
conditioned on t = 0 (per-token modulation). In the Mix-FFN each image keeps its own 2-D layout (the conv never
mixes the two images); they meet only in self-attention. A learned reference embedding (zero at init) marks
the reference tokens; without a reference the model computes exactly what the text-to-image teacher computes.
One class serves as teacher, critic and generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pairfree.kernels import modulated_norm
from pairfree.kernels.attention import attention
from pairfree.kernels.linear_attention import linear_attention
from pairfree.models.persistence import PretrainedMixin


@dataclass
class DiTConfig:
    """Sizes of the DiT. Defaults: SANA-1.6B (20 layers, width 2240 = 70 heads × 32, DC-AE 32 channels)."""

    in_channels: int = 32
    out_channels: int = 32
    num_layers: int = 20
    num_heads: int = 70
    head_dim: int = 32
    cross_heads: int = 20
    cross_head_dim: int = 112
    text_dim: int = 2304  # width of the text encoder's embeddings (Gemma-2-2B)
    mlp_ratio: float = 2.5
    patch_size: int = 1
    self_attn_bias: bool = False
    norm_eps: float = 1e-6
    norm: str = "layer"  # "layer": SANA's LayerNorm; "rms": RMSNorm through pairfree's fused modulated-norm op
    pos_embed: str = "none"  # "none" (SANA) or "sincos"
    # "linear": SANA's ReLU linear attention; "softmax": softmax attention over the same q, k, v — a deviation from
    # SANA for the tiny world DiTs (at 64 tokens it is ~30 % faster per step on a CPU and learns faster)
    self_attn: str = "linear"
    sample_size: int = 32  # base latent size for "sincos"
    interpolation_scale: float = 1.0  # for "sincos"
    timestep_scale: float = 1000.0  # t in [0, 1] is fed to the embedder as t * timestep_scale
    reference: bool = True  # build the reference-conditioning weights
    # a zero-initialised, position-aligned skip from the reference's patch tokens into the noisy tokens: SANA's
    # linear attention has no positions, so token concatenation alone cannot tell a token where "its"
    # reference token is (the editor turns it on; the teacher's behaviour is unchanged at initialisation)
    reference_skip: bool = False
    # add the caption's masked-mean embedding to the timestep embedding that drives every block's modulation
    # (SD3's pooled-text path; not in SANA): a direct route for global words (background, style) that a tiny DiT
    # trained from scratch otherwise learns late through cross-attention alone
    pooled_text: bool = False
    gradient_checkpointing: bool = False

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    def __post_init__(self):
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"DiTConfig.norm: expected 'layer' or 'rms', got {self.norm!r}")
        if self.self_attn not in ("linear", "softmax"):
            raise ValueError(f"DiTConfig.self_attn: expected 'linear' or 'softmax', got {self.self_attn!r}")
        if self.pos_embed not in ("none", "sincos"):
            raise ValueError(f"DiTConfig.pos_embed: expected 'none' or 'sincos', got {self.pos_embed!r}")
        if self.cross_heads * self.cross_head_dim != self.width:
            raise ValueError(
                f"DiTConfig: cross_heads * cross_head_dim ({self.cross_heads}*{self.cross_head_dim}) must equal the "
                f"width num_heads * head_dim ({self.width})"
            )


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos, sin]`` of (scaled) timesteps ``t`` ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """adaLN-single: t -> (6·width modulation shared by all blocks, width embedding for the output norm)."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Linear(width, 6 * width)

    def forward(
        self, t: torch.Tensor, dtype: torch.dtype, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``extra`` ``(B, width)`` (the pooled caption, optional) is added to the timestep embedding."""
        emb = self.mlp(timestep_features(t).to(dtype))
        if extra is not None:
            emb = emb + extra
        return self.modulation(F.silu(emb)), emb


def modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    kind: str,
    eps: float,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
):
    """Norm without affine, then ``· (1 + scale) + shift``, through pairfree's fused modulated-norm op; with a
    ``residual``, the norm of ``s = residual + gate · x`` and ``s`` itself: ``(y, s)``. Modulation per sample
    ``(B, 1, D)`` or per token ``(B, N, D)``."""
    mods = (shift, scale) if gate is None else (shift, scale, gate)
    if all(m.shape[1] == 1 for m in mods):
        mods = [m[:, 0] for m in mods]
    else:
        mods = [m.expand(x.shape) for m in mods]
    return modulated_norm(x, None, mods[0], mods[1], eps, residual, mods[2] if gate is not None else None, kind)


class SelfAttention(nn.Module):
    """Self-attention over the image tokens: SANA's linear attention, or softmax attention (``cfg.self_attn``)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.kind = cfg.num_heads, cfg.self_attn
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.self_attn_bias)
        self.out = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = linear_attention(q, k, v) if self.kind == "linear" else attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


class CrossAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads = cfg.cross_heads
        self.q = nn.Linear(cfg.width, cfg.width)
        self.kv = nn.Linear(cfg.width, 2 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(text).view(b, text.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.out(attention(q, k, v, key_padding_mask=text_mask).transpose(1, 2).reshape(b, n, -1))


class MixFFN(nn.Module):
    """GLUMBConv over each image's own 2-D token grid."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.width)
        self.inverted = nn.Conv2d(cfg.width, 2 * hidden, 1)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.pointwise = nn.Conv2d(hidden, cfg.width, 1, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, d = x.shape
        h, w = grid
        images = n // (h * w)  # 1 (noisy) or 2 (noisy + reference): fold the images into the batch
        # the depthwise conv runs channels-last: the same math as on NCHW, with a faster CPU backward (every conv
        # is called as its module, so ZeRO-3 gathers its weights)
        x = F.silu(self.inverted(x.reshape(b * images, h, w, d).permute(0, 3, 1, 2)))
        x = self.depthwise(x.contiguous(memory_format=torch.channels_last))
        x, gate = x.chunk(2, dim=1)
        x = self.pointwise(x * F.silu(gate))
        return x.permute(0, 2, 3, 1).reshape(b, n, d)


class DiTBlock(nn.Module):
    """SANA's block. Each norm is fused with the residual add before it: ``norm1`` adds the previous block's
    gated FFN output (``h_prev · gate_prev``), ``norm2`` the cross-attention output. So a block returns its
    residual stream without its own FFN output, ``(x, h, gate)``; the next block (or the output norm) adds it."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.kind, self.eps = cfg.norm, cfg.norm_eps
        self.modulation = nn.Parameter(torch.randn(6, cfg.width) / cfg.width**0.5)
        self.self_attn = SelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = MixFFN(cfg)

    def forward(self, x, temb, text, text_mask, grid, h_prev=None, gate_prev=None):
        """``temb``: ``(B, T, 6, D)`` with T = 1 (one timestep per sample) or T = N (per token). Returns
        ``(x, h, gate)``: the block's output is ``x + gate · h``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (self.modulation + temb).unbind(2)
        if h_prev is None:
            y = modulate(x, shift_msa, scale_msa, self.kind, self.eps)
        else:
            y, x = modulate(h_prev, shift_msa, scale_msa, self.kind, self.eps, residual=x, gate=gate_prev)
        x = x + gate_msa * self.self_attn(y)
        y, x = modulate(self.cross_attn(x, text, text_mask), shift_mlp, scale_mlp, self.kind, self.eps, residual=x)
        return x, self.ffn(y, grid), gate_mlp


class DiT(nn.Module, PretrainedMixin):
    """SANA DiT: ``forward(x, t, text, text_mask, reference=None)`` predicts the flow velocity ``v = ε − x0``.

    ``x``: ``(B, C, H, W)`` noisy latents; ``t``: ``(B,)`` in [0, 1] (1 = pure noise); ``text``: ``(B, L, text_dim)``;
    ``text_mask``: ``(B, L)`` bool or 0/1 (1 = real token); ``reference``: ``(B, C, H, W)`` clean latents or None.
    """

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.time_embed = TimestepEmbedder(d)
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.text_norm = nn.RMSNorm(d, eps=1e-5)
        if cfg.pooled_text:
            self.pooled_proj = nn.Linear(d, d)
            nn.init.zeros_(self.pooled_proj.weight)  # zero: starts as the model without the pooled path
            nn.init.zeros_(self.pooled_proj.bias)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.out_modulation = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.out_proj = nn.Linear(d, cfg.patch_size**2 * cfg.out_channels)
        if cfg.reference:
            self.reference_embed = nn.Parameter(torch.zeros(d))  # zero: the teacher's behaviour is unchanged
            if cfg.reference_skip:
                self.reference_skip = nn.Linear(d, d)
                nn.init.zeros_(self.reference_skip.weight)
                nn.init.zeros_(self.reference_skip.bias)

    def _pos_embed(self, h: int, w: int, device, dtype) -> torch.Tensor:
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        cfg = self.config
        pe = get_2d_sincos_pos_embed(
            cfg.width,
            (h, w),
            base_size=cfg.sample_size // cfg.patch_size,
            interpolation_scale=cfg.interpolation_scale,
            output_type="pt",
        )
        return pe.to(device=device, dtype=dtype)[None]

    def _pooled(self, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        """The projected caption's mean over its real tokens (zero for an empty caption)."""
        if text_mask is None:
            return self.pooled_proj(text.mean(1))
        w = text_mask.to(text.dtype)[..., None]
        return self.pooled_proj((text * w).sum(1) / w.sum(1).clamp(min=1))

    def forward(self, x, t, text, text_mask=None, reference=None):
        cfg = self.config
        b, _, hh, ww = x.shape
        p = cfg.patch_size
        if hh % p or ww % p:
            raise ValueError(f"DiT: latent size {hh}x{ww} is not divisible by patch_size {p}")
        grid = (hh // p, ww // p)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if cfg.pos_embed == "sincos":
            tokens = tokens + self._pos_embed(*grid, x.device, tokens.dtype)
        t = t.expand(b) if t.dim() == 0 else t
        text = self.text_norm(self.text_proj(text))
        if text_mask is not None:
            text_mask = text_mask.to(torch.bool)
        pooled = self._pooled(text, text_mask) if cfg.pooled_text else None
        temb, emb = self.time_embed(t.to(x.device) * cfg.timestep_scale, tokens.dtype, pooled)
        temb = temb.view(b, 1, 6, -1)
        n = tokens.shape[1]
        if reference is not None:
            if not cfg.reference:
                raise ValueError("DiT: this model was built with reference=False and cannot take a reference image")
            if reference.shape != x.shape:
                raise ValueError(f"DiT: reference shape {tuple(reference.shape)} must equal x's {tuple(x.shape)}")
            ref = self.patch_embed(reference).flatten(2).transpose(1, 2)
            if cfg.reference_skip:
                tokens = tokens + self.reference_skip(ref)
            ref = ref + self.reference_embed
            if cfg.pos_embed == "sincos":
                ref = ref + self._pos_embed(*grid, x.device, tokens.dtype)
            ref_temb, _ = self.time_embed(torch.zeros_like(t, device=x.device), tokens.dtype, pooled)
            tokens = torch.cat([tokens, ref], dim=1)
            temb = torch.cat([temb.expand(b, n, 6, -1), ref_temb.view(b, 1, 6, -1).expand(b, n, 6, -1)], dim=1)
        h = gate = None
        for block in self.blocks:
            if cfg.gradient_checkpointing and torch.is_grad_enabled():
                tokens, h, gate = checkpoint(block, tokens, temb, text, text_mask, grid, h, gate, use_reentrant=False)
            else:
                tokens, h, gate = block(tokens, temb, text, text_mask, grid, h, gate)
        shift, scale = (self.out_modulation[None] + emb[:, None]).unbind(1)
        if h is None:  # no blocks
            tokens = modulate(tokens[:, :n], shift[:, None], scale[:, None], "layer", 1e-6)
        else:
            gate = gate[:, :n] if gate.shape[1] > 1 else gate
            tokens, _ = modulate(h[:, :n], shift[:, None], scale[:, None], "layer", 1e-6, tokens[:, :n], gate)
        out = self.out_proj(tokens).view(b, *grid, p, p, -1)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, hh, ww)
