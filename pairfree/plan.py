"""``pairfree plan``: per-GPU memory of a training config at a given scale, before renting the cluster.

Parameters, gradients and optimizer states: ZeRO arithmetic on the models built on the meta device from the
config's architecture presets (``models.*_arch``). Activations: not estimated but counted — the real forward
passes (the checkpointed or plain unroll of the generator, the DC-AE decode, the critic's flow loss) run on the
meta device with ``saved_tensors_hooks`` adding up the bytes autograd keeps for backward; the judge (whose
transformers code needs real tensors) runs on the CPU at its real widths with one and two layers, and the
per-layer bytes are extrapolated to its depth (exact: the layers are identical).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pairfree.config import ConfigError, load_config
from pairfree.flow import few_step_schedule
from pairfree.judge.qwen import JudgeConfig, images_to_patches
from pairfree.models.presets import build_from_preset, parameter_count, read_preset
from pairfree.train.config import TrainConfig
from pairfree.train.models import with_reference_skip
from pairfree.unroll import unroll

GiB = 2**30
QUESTION_TOKENS = 48  # the verification / identity question and chat template around the two images


@dataclass
class ModelMemory:
    """One model's bytes per GPU (static: weights, gradients, optimizer states, EMA)."""

    name: str
    params: int
    trainable: bool
    sharded: bool  # partitioned over the GPUs (ZeRO-3)
    weights: float
    grads: float = 0.0
    optimizer: float = 0.0
    ema: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ema


@dataclass
class Activations:
    """Bytes autograd keeps per micro-batch (per GPU), measured; ``*_ckpt``: with the checkpointed unroll."""

    unroll: float
    unroll_ckpt: float  # the step inputs plus the last call's activations (it is not recomputed)
    recompute: float  # one generator call, re-run during the checkpointed backward
    decode: float
    judge: float
    critic: float

    @property
    def peak_ckpt(self) -> float:
        """Backward starts with everything held; a recomputed call comes after the judge, the decode and the last
        call have freed theirs; the critic's update comes after the generator's."""
        held = self.unroll_ckpt + self.decode + self.judge
        return max(held, self.critic)

    @property
    def peak(self) -> float:
        return max(self.unroll + self.decode + self.judge, self.critic)


@dataclass
class Plan:
    gpus: int
    models: list[ModelMemory]
    gather: float  # ZeRO-3: the largest layer of each sharded model gathered whole while it runs (bf16)
    acts: Activations | None
    notes: list[str] = field(default_factory=list)

    @property
    def static(self) -> float:
        return sum(m.total for m in self.models) + self.gather

    def total(self, checkpoint: bool = True) -> float:
        if self.acts is None:
            return self.static
        return self.static + (self.acts.peak_ckpt if checkpoint else self.acts.peak)


def _arch(cfg: TrainConfig, key: str, required: bool = True) -> str | None:
    path = getattr(cfg.models, key)
    if not path:
        if required:
            raise ConfigError(f"models.{key}: the planner needs an architecture preset (configs/models/*.yaml)")
        return None
    if not Path(path).is_file():
        raise ConfigError(f"models.{key}: {path} is not a file")
    return path


def build_models(cfg: TrainConfig) -> dict[str, nn.Module]:
    """The run's models on the meta device: generator (with the reference skip), critic, teacher, judge, and,
    when presets are named, the text encoder and the autoencoder."""
    teacher = build_from_preset(_arch(cfg, "teacher_arch"))
    with torch.device("meta"):
        generator = with_reference_skip(teacher)
    models = {"generator": generator, "critic": build_from_preset(_arch(cfg, "teacher_arch"))}
    models["teacher"] = teacher
    models["judge"] = build_from_preset(_arch(cfg, "judge_arch"))
    for name, key in (("text encoder", "text_arch"), ("autoencoder", "autoencoder_arch")):
        path = _arch(cfg, key, required=False)
        if path:
            models[name] = build_from_preset(path)
    return models


def static_memory(cfg: TrainConfig, models: dict[str, nn.Module], gpus: int) -> tuple[list[ModelMemory], float]:
    """ZeRO arithmetic: trained models keep 16-bit weights and gradients plus fp32 master weights and Adam's two
    moments (12 bytes per parameter, ZeRO's K); ZeRO-2 shards gradients and optimizer states, ZeRO-3 the weights
    too. Frozen models hold 16-bit weights, sharded when ``distributed.frozen`` is zero3 (the autoencoder is
    replicated). The EMA is an fp32 copy of the generator's trained part on every GPU."""
    mixed = cfg.distributed.bf16
    w_bytes = 2 if mixed else 4
    stage, frozen_sharded = cfg.distributed.zero_stage, cfg.distributed.frozen == "zero3"
    rows = []
    for name, model in models.items():
        n = parameter_count(model)
        if name in ("generator", "critic"):
            opt = (12 if mixed else 8) * n
            rows.append(
                ModelMemory(
                    name,
                    n,
                    True,
                    stage == 3,
                    weights=w_bytes * n / (gpus if stage == 3 else 1),
                    grads=w_bytes * n / gpus,  # ZeRO-2 and 3 both shard gradients
                    optimizer=opt / gpus,
                    ema=4 * n if name == "generator" and cfg.optim.ema else 0.0,
                )
            )
        else:
            sharded = frozen_sharded and name != "autoencoder"
            rows.append(ModelMemory(name, n, False, sharded, weights=2 * n / (gpus if sharded else 1)))
    gather = sum(2 * _largest_leaf(models[r.name]) for r in rows if r.sharded)
    return rows, gather


def _largest_leaf(model: nn.Module) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


# ------------------------------------------------------------------------------------------- activations ---
def saved_bytes(fn, exclude: list[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs, each storage once, parameters
    (``exclude``) not counted: they exist anyway."""
    skip = {id(p) for p in exclude}
    seen, total = set(), [0]

    def pack(t):
        base = t._base if t._base is not None else t
        if id(t) in skip or id(base) in skip:
            return t
        key = id(base) if t.is_meta else t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total[0] += base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def dit_activations(
    cfg: TrainConfig, generator: nn.Module, critic: nn.Module, latent: tuple[int, int, int], device: str = "meta"
):
    """(unroll, unroll with checkpointing, one call, critic flow loss) bytes, on the meta device by default (the
    PyTorch reference ops: the fused kernels' own savings are not counted)."""
    dtype = torch.bfloat16 if cfg.distributed.bf16 else torch.float32
    gen, crit = generator.to(dtype).requires_grad_(True), critic.to(dtype).requires_grad_(True)
    b, (c, h, w) = cfg.batch, latent
    meta = dict(device=device, dtype=dtype)
    noise, ref = torch.randn(b, c, h, w, **meta), torch.randn(b, c, h, w, **meta)
    text = torch.randn(b, cfg.models.text_max_length, gen.config.text_dim, **meta)
    mask = torch.ones(b, cfg.models.text_max_length, dtype=torch.bool, device=device)

    def step(x, t, ref, text, mask):
        return gen(x, t, text, mask, reference=ref)

    schedule = few_step_schedule(cfg.sampler.steps, cfg.sampler.shift)
    params = list(gen.parameters())
    plain = saved_bytes(lambda: unroll(step, noise, schedule, None, (ref, text, mask), checkpoint=False), params)
    ckpt = saved_bytes(lambda: unroll(step, noise, schedule, None, (ref, text, mask), checkpoint=True), params)
    one = saved_bytes(lambda: step(noise, torch.rand(b, **meta), ref, text, mask), params)
    critic_b = saved_bytes(lambda: crit(noise, torch.rand(b, **meta), text, mask), list(crit.parameters()))
    return plain, ckpt, one, critic_b


def decode_activations(cfg: TrainConfig, autoencoder: nn.Module, latent: tuple[int, int, int]) -> int:
    dtype = torch.bfloat16 if cfg.distributed.bf16 else torch.float32
    ae = autoencoder.requires_grad_(False)
    for m in ae.modules():  # .to(dtype) on the whole model warns about fp32-kept modules (there are none)
        for name, p in list(m.named_parameters(recurse=False)):
            setattr(m, name, nn.Parameter(p.to(dtype), requires_grad=False))
    z = torch.randn(cfg.batch, *latent, device="meta", dtype=dtype, requires_grad=True)
    return saved_bytes(lambda: ae.decode(z), list(ae.parameters()))


def judge_activations(cfg: TrainConfig, questions: int, text_layers: int | None = None, vision_layers=None) -> int:
    """Input-gradient activations of ``questions`` two-image questions, measured on the CPU with the judge's real
    widths at one and two layers (text and vision separately) and extrapolated to its depth. With ``*_layers``
    given, measured directly at that depth instead (the tests check the extrapolation against it)."""
    data = read_preset(cfg.models.judge_arch)["qwen2_5_vl"]
    depth_t, depth_v = data["text_config"]["num_hidden_layers"], data["vision_config"]["depth"]
    if text_layers is not None:
        return _judge_saved(cfg, data, questions, text_layers, vision_layers)
    base = _judge_saved(cfg, data, questions, 1, 1)
    per_text = _judge_saved(cfg, data, questions, 2, 1) - base
    per_vision = _judge_saved(cfg, data, questions, 1, 2) - base
    return base + (depth_t - 1) * per_text + (depth_v - 1) * per_vision


def _judge_saved(cfg: TrainConfig, data: dict, questions: int, text_layers: int, vision_layers: int) -> int:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    data = {**data, "text_config": dict(data["text_config"]), "vision_config": dict(data["vision_config"])}
    data["text_config"].update(num_hidden_layers=text_layers, vocab_size=data["image_token_id"] + 8)
    full = [i for i in data["vision_config"].get("fullatt_block_indexes", []) if i < vision_layers]
    data["vision_config"].update(depth=vision_layers, fullatt_block_indexes=full or [vision_layers - 1])
    dtype = torch.bfloat16 if cfg.distributed.bf16 else torch.float32
    config = Qwen2_5_VLConfig(**data)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to_empty(device="cpu").to(dtype).requires_grad_(False)  # values do not matter, only shapes
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    jc = JudgeConfig(image_size=cfg.models.judge_image_size)
    side = cfg.models.resolution
    images = torch.zeros(2 * questions, 3, side, side, requires_grad=True)
    per_image = (jc.image_size // jc.patch_size // jc.merge_size) ** 2
    v = [data["vision_start_token_id"]] + [data["image_token_id"]] * per_image + [data["vision_end_token_id"]]
    ids = torch.tensor([[1] * QUESTION_TOKENS + v + v + [2] * 5] * questions)

    def run():
        pixel_values, grid = images_to_patches(images, jc)
        out = model.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values.to(dtype), image_grid_thw=grid
        )
        return out.last_hidden_state

    with torch.inference_mode(False):
        return saved_bytes(run, list(model.parameters()))


def measure_activations(cfg: TrainConfig, models: dict[str, nn.Module]) -> Activations:
    gen = models["generator"]
    ae = models.get("autoencoder")
    down = 2 ** (len(ae.config.encoder_block_out_channels) - 1) if ae is not None else 1
    side = cfg.models.resolution // down
    latent = (gen.config.in_channels, side, side)
    plain, ckpt, one, critic = dit_activations(cfg, gen, models["critic"], latent)
    decode = decode_activations(cfg, ae, latent) if ae is not None else 0
    judge = judge_activations(cfg, questions=2 * cfg.batch)  # verification + identity per sample
    return Activations(plain, ckpt, one, decode, judge, critic)


def plan(
    cfg: TrainConfig, gpus: int, activations: Activations | None = None, measure: bool = True, models=None
) -> Plan:
    """Per-GPU memory of ``cfg`` on ``gpus`` GPUs in all (activations measured unless given or ``measure`` off;
    ``models``: the meta-device models of :func:`build_models`, when already built)."""
    if gpus < 1:
        raise ConfigError(f"plan: the number of GPUs must be ≥ 1, got {gpus}")
    models = models or build_models(cfg)
    rows, gather = static_memory(cfg, models, gpus)
    if activations is None and measure:
        activations = measure_activations(cfg, models)
    notes = []
    if "autoencoder" not in models:
        notes.append("no models.autoencoder_arch: pixel space, no decode activations")
    if "text encoder" not in models:
        notes.append("no models.text_arch: the text encoder's weights are not counted")
    return Plan(gpus, rows, gather, activations, notes)


# --------------------------------------------------------------------------------------------- printing ---
def _gib(x: float) -> str:
    return f"{x / GiB:8.2f}"


def format_plan(p: Plan, gpu_memory_gib: float, cfg: TrainConfig) -> str:
    zero = f"ZeRO-{cfg.distributed.zero_stage} (trained), frozen {cfg.distributed.frozen}"
    lines = [
        f"per-GPU memory on {p.gpus} GPU(s), {zero}, batch {cfg.batch}/GPU, {cfg.models.resolution}² images, "
        f"unroll K={cfg.sampler.steps}, {'bf16' if cfg.distributed.bf16 else 'fp32'} (GiB)",
        "",
        f"{'model':<14}{'params':>10}  {'weights':>8}  {'grads':>8}  {'optim':>8}  {'EMA':>8}  {'total':>8}",
    ]
    for m in p.models:
        lines.append(
            f"{m.name:<14}{m.params / 1e9:>9.3f}B  {_gib(m.weights)}  {_gib(m.grads)}  {_gib(m.optimizer)}  "
            f"{_gib(m.ema)}  {_gib(m.total)}"
        )
    if p.gather:
        lines.append(f"{'ZeRO-3 gather':<14}{'':>10}  {'':>8}  {'':>8}  {'':>8}  {'':>8}  {_gib(p.gather)}")
    lines.append(f"{'static':<14}{'':>10}  {'':>8}  {'':>8}  {'':>8}  {'':>8}  {_gib(p.static)}")
    a = p.acts
    if a is not None:
        lines += [
            "",
            f"activations per micro-batch     {'checkpointed':>12}  {'plain':>8}",
            f"  {f'generator unroll (K={cfg.sampler.steps})':<30}{_gib(a.unroll_ckpt):>12}  {_gib(a.unroll)}",
            f"  autoencoder decode            {_gib(a.decode):>12}  {_gib(a.decode)}",
            f"  judge (input gradients)       {_gib(a.judge):>12}  {_gib(a.judge)}",
            f"  critic flow loss              {_gib(a.critic):>12}  {_gib(a.critic)}",
            f"  peak (generator or critic)    {_gib(a.peak_ckpt):>12}  {_gib(a.peak)}",
        ]
    for ckpt in (True, False) if a is not None else (True,):
        total = p.total(ckpt)
        verdict = "fits" if total <= gpu_memory_gib * GiB else "does NOT fit"
        label = ("with checkpointing" if ckpt else "without checkpointing") if a is not None else "static only"
        lines.append(f"total {label}: {total / GiB:.2f} GiB — {verdict} in {gpu_memory_gib:g} GiB")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def format_scaling(
    cfg: TrainConfig, gpu_counts: list[int], acts: Activations | None, gpu_memory_gib: float, models=None
) -> str:
    """What sharding buys: the per-GPU total at each GPU count (activations do not shard)."""
    models = models or build_models(cfg)
    lines = ["", f"{'GPUs':>6}  {'trained':>8}  {'frozen':>8}  {'total (ckpt)':>12}  fits {gpu_memory_gib:g} GiB"]
    for n in gpu_counts:
        p = plan(cfg, n, acts, measure=False, models=models)
        trained = sum(m.total for m in p.models if m.trainable)
        frozen = sum(m.total for m in p.models if not m.trainable) + p.gather
        total = p.total(True)
        fits = "yes" if total <= gpu_memory_gib * GiB else "no"
        lines.append(f"{n:>6}  {_gib(trained)}  {_gib(frozen)}  {total / GiB:>12.2f}  {fits}")
    return "\n".join(lines)


def run(args) -> int:

    cfg = load_config(TrainConfig, args.config, args.overrides)
    gpus = args.gpus * args.nodes
    models = build_models(cfg)
    p = plan(cfg, gpus, measure=False, models=models)
    if not args.no_activations:
        print("measuring activations (meta device; the judge on the CPU at 1-2 layers) ...", file=sys.stderr)
        p.acts = measure_activations(cfg, build_models(cfg))  # measuring casts the models; keep ours intact
    print(format_plan(p, args.gpu_memory, cfg))
    try:
        counts = sorted({gpus, *(int(x) for x in args.scale.split(",") if x)})
    except ValueError:
        raise ConfigError(f"--scale: expected comma-separated GPU counts, got {args.scale!r}") from None
    print(format_scaling(cfg, counts, p.acts, args.gpu_memory, models))
    return 0
