"""Load diffusers ``SanaTransformer2DModel`` weights into :class:`pairfree.models.dit.DiT`.

The mapping is explicit (fused QKV and KV projections, our module names); the reference-conditioning weights
that SANA lacks keep their neutral initialisation, so the converted model is the text-to-image teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pairfree.models.dit import DiT, DiTConfig
from pairfree.models.persistence import CheckpointError, load_checked


def dit_config_from_diffusers(cfg: dict, **overrides) -> DiTConfig:
    """Our config from a diffusers ``SanaTransformer2DModel`` config dict."""
    if cfg.get("guidance_embeds"):
        raise NotImplementedError("SANA with guidance embeddings (guidance_embeds=True) is not supported yet")
    if cfg.get("qk_norm") is not None:
        raise NotImplementedError(f"SANA with qk_norm={cfg['qk_norm']!r} is not supported yet")
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if cfg.get("cross_attention_dim", width) != width:
        raise NotImplementedError(f"cross_attention_dim {cfg['cross_attention_dim']} != width {width} is not supported")
    interp = cfg.get("interpolation_scale")
    return DiTConfig(
        in_channels=cfg["in_channels"],
        out_channels=cfg.get("out_channels") or cfg["in_channels"],
        num_layers=cfg["num_layers"],
        num_heads=cfg["num_attention_heads"],
        head_dim=cfg["attention_head_dim"],
        cross_heads=cfg["num_cross_attention_heads"],
        cross_head_dim=cfg["cross_attention_head_dim"],
        text_dim=cfg["caption_channels"],
        mlp_ratio=cfg["mlp_ratio"],
        patch_size=cfg["patch_size"],
        self_attn_bias=cfg.get("attention_bias", False),
        norm_eps=cfg.get("norm_eps", 1e-6),
        pos_embed="none" if interp is None else "sincos",
        sample_size=cfg.get("sample_size", 32),
        interpolation_scale=1.0 if interp is None else float(interp),
        **overrides,
    )


def convert_sana_state_dict(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """diffusers SANA tensor names -> ours (without the reference-conditioning weights)."""
    sd = dict(sd)
    out = {}

    def take(src: str, dst: str) -> None:
        if src not in sd:
            raise CheckpointError(f"diffusers SANA state dict: missing tensor {src!r}")
        out[dst] = sd.pop(src)

    def cat(srcs: list[str], dst: str) -> None:
        for s in srcs:
            if s not in sd:
                raise CheckpointError(f"diffusers SANA state dict: missing tensor {s!r}")
        out[dst] = torch.cat([sd.pop(s) for s in srcs])

    for kind in ("weight", "bias"):
        take(f"patch_embed.proj.{kind}", f"patch_embed.{kind}")
        take(f"time_embed.emb.timestep_embedder.linear_1.{kind}", f"time_embed.mlp.0.{kind}")
        take(f"time_embed.emb.timestep_embedder.linear_2.{kind}", f"time_embed.mlp.2.{kind}")
        take(f"time_embed.linear.{kind}", f"time_embed.modulation.{kind}")
        take(f"caption_projection.linear_1.{kind}", f"text_proj.0.{kind}")
        take(f"caption_projection.linear_2.{kind}", f"text_proj.2.{kind}")
        take(f"proj_out.{kind}", f"out_proj.{kind}")
    take("caption_norm.weight", "text_norm.weight")
    take("scale_shift_table", "out_modulation")
    for i in range(num_layers):
        a, b = f"transformer_blocks.{i}.", f"blocks.{i}."
        take(a + "scale_shift_table", b + "modulation")
        cat([a + f"attn1.to_{x}.weight" for x in "qkv"], b + "self_attn.qkv.weight")
        if a + "attn1.to_q.bias" in sd:
            cat([a + f"attn1.to_{x}.bias" for x in "qkv"], b + "self_attn.qkv.bias")
        for kind in ("weight", "bias"):
            take(a + f"attn1.to_out.0.{kind}", b + f"self_attn.out.{kind}")
            take(a + f"attn2.to_q.{kind}", b + f"cross_attn.q.{kind}")
            cat([a + f"attn2.to_k.{kind}", a + f"attn2.to_v.{kind}"], b + f"cross_attn.kv.{kind}")
            take(a + f"attn2.to_out.0.{kind}", b + f"cross_attn.out.{kind}")
            take(a + f"ff.conv_inverted.{kind}", b + f"ffn.inverted.{kind}")
            take(a + f"ff.conv_depth.{kind}", b + f"ffn.depthwise.{kind}")
        take(a + "ff.conv_point.weight", b + "ffn.pointwise.weight")
    sd.pop("patch_embed.pos_embed", None)  # a non-persistent buffer in diffusers; we recompute it
    if sd:
        raise CheckpointError(f"diffusers SANA state dict: unconverted tensor(s) {sorted(sd)[:8]}")
    return out


def dit_from_diffusers(source, **overrides) -> DiT:
    """A :class:`DiT` from a diffusers ``SanaTransformer2DModel`` instance or a local directory holding its
    ``config.json`` and safetensors weights (as ``save_pretrained`` writes them; a ``transformer/`` sub-folder
    of a pipeline directory works too)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if (path / "transformer" / "config.json").is_file():
            path = path / "transformer"
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json (expected a diffusers SanaTransformer2DModel directory)")
        cfg = json.loads((path / "config.json").read_text())
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors weights")
        from safetensors.torch import load_file

        sd = {}
        for f in files:
            sd.update(load_file(str(f)))
    else:
        cfg, sd = dict(source.config), source.state_dict()
    config = dit_config_from_diffusers(cfg, **overrides)
    model = DiT(config)
    state = convert_sana_state_dict(sd, config.num_layers)
    if config.reference:
        state["reference_embed"] = torch.zeros(config.width)
    load_checked(model, state, "converted SANA weights")
    return model
