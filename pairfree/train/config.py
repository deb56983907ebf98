"""The editor's training config: plain dataclasses loaded from YAML (``configs/shapes/editor.yaml``) with dotted
overrides. Defaults are docs/design.md's (the paper's public reimplementation) unless a comment says otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field

from pairfree.device import check_device_name
from pairfree.engine.precision import check_mode as check_precision
from pairfree.world.edits import DEFAULT_MIX, TRAINING_TEMPLATES


@dataclass
class ModelsConfig:
    """Where the frozen and initial models come from. ``format: shapes``: shipped names (``shapes-teacher``) or
    directories in their layout, pixel space. ``format: diffusers``: ``teacher`` is a local diffusers SANA
    pipeline directory (``transformer/``, ``text_encoder/``, ``tokenizer/``, ``vae/``: DC-AE latents) and
    ``judge`` a local transformers Qwen2.5-VL directory. ``*_arch``: architecture presets the planner sizes
    (``pairfree plan``) without reading any weights."""

    format: str = "shapes"
    teacher: str = "shapes-teacher"
    judge: str = "shapes-judge"
    generator: str = ""  # shapes: an editor to start the generator from (lite-sft, or a run's model/; default: teacher)
    # shapes: keep the generator's text encoder the teacher's, frozen (as the paper's Gemma; diffusers: always frozen)
    freeze_text: bool = False
    resolution: int = 32  # image side the editor works at
    judge_image_size: int = 448  # diffusers format: the judge's input side (shapes: from the shipped judge.json)
    text_max_length: int = 300  # diffusers format: prompts padded/truncated to this many tokens (SANA: 300)
    dtype: str = "float32"  # diffusers format: weights' dtype ("bfloat16" on GPU)
    teacher_arch: str = ""  # e.g. configs/models/sana_1600m.yaml
    judge_arch: str = ""  # e.g. configs/models/qwen2_5_vl_7b.yaml
    text_arch: str = ""  # e.g. configs/models/gemma2_2b.yaml
    autoencoder_arch: str = ""  # e.g. configs/models/dc_ae_f32c32.yaml

    def __post_init__(self):
        if self.format not in ("shapes", "diffusers"):
            raise ValueError(f"models.format: expected 'shapes' or 'diffusers', got {self.format!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"models.dtype: expected 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")


@dataclass
class SamplerConfig:
    """The few-step sampler that is unrolled with gradients (random k per step) and used at inference."""

    steps: int = 4
    shift: float = 6.0  # [1, .75, .5, .25] -> [1.0, 0.9474, 0.8571, 0.6667]
    random_k: bool = True  # each step picks k in 1..steps; False: always all steps
    checkpoint: bool = True  # checkpointed unroll (activation memory of one generator call)
    # "full": a generator call at each of the k steps; "two_call" (the paper's public reimplementation): 1.0 -> x̂0,
    # re-noise with fresh noise to t_k, predict x̂0 again
    unroll: str = "full"

    def __post_init__(self):
        if self.unroll not in ("full", "two_call"):
            raise ValueError(f"sampler.unroll: expected 'full' or 'two_call', got {self.unroll!r}")


@dataclass
class LossConfig:
    """Weights and schedules of the generator's loss terms."""

    vlm_weight: float = 0.02  # × mean(edit-verification CE, identity CE)
    identity_question: bool = True
    # the judge-logit "temperature" τ of the paper's reimplementation, CE(logits · τ) (a scale, not a divisor:
    # soft answers early), linear from temperature_start to 1 over temperature_steps
    temperature_start: float = 0.1
    temperature_steps: int = 2000
    full_vocab: bool = False  # the paper's ablation: CE over the whole vocabulary
    judge_noise: float = 0.0  # σ of Gaussian noise on the output the judge sees (pixel fine print cannot fool it)
    dmd_weight: float = 1.0
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    # DMD's fake score: "critic" (the paper: the online critic trained on the generator's samples) or "delta" (the
    # teacher's own pull on the input under its source caption, Delta Denoising Score: what a weak teacher would
    # redraw anyway cancels, so unchanged content stays; no critic updates are run)
    dmd_fake: str = "critic"
    cfg_scale: float = 3.5  # teacher CFG on the edited caption
    cfg_scale_strong: float = 7.5
    # the paper's strong-CFG types are remove, shape change, style and action; the shapes world's shape change is
    # replace, and it has no action edits
    strong_types: tuple[str, ...] = ("remove", "replace", "style")
    # the teacher's CFG negative prompt (the reimplementation: "low quality"; the shapes world's vocabulary has no
    # such words, so its configs keep the empty caption the teacher was trained to drop to)
    negative_prompt: str = ""
    do_nothing_prob: float = 0.01  # "do nothing" instruction: MSE of the output to the input
    do_nothing_weight: float = 1.0
    pixel_identity_weight: float = 0.0  # optional L1 to the input (helps preservation, hurts edit strength)
    # optional: the total variation the output has beyond its input's (new noise and speckle; a colour change of a
    # flat region adds none) — neither the judge nor a weak teacher's DMD penalises the noise an editor can add
    noise_weight: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.0, 0.9)
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    skip_grad_norm: float = 300.0  # skip the update (counted, logged) above this norm or on a non-finite loss
    ema: float = 0.999
    critic_lr: float = 2e-5
    critic_updates: int = 5  # N_aux critic updates per generator update
    warmup_lr: float = 1e-4  # stage 0 (reference copy)
    # stage 1's lr: "constant", or "cosine" from lr to min_lr_ratio × lr over the `steps` editing steps (set
    # `steps` to what fits the time limit, or the decay is cut off)
    decay: str = "constant"
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.decay not in ("constant", "cosine"):
            raise ValueError(f"optim.decay: expected 'constant' or 'cosine', got {self.decay!r}")


@dataclass
class GRPOConfig:
    """``trainer: grpo`` (Flow-GRPO with the judge as the reward; pairfree/train/grpo.py)."""

    group_size: int = 4  # G samples per (input, instruction); rewards are normalised within the group
    clip_range: float = 1e-4  # PPO ratio clip; log-probabilities are means over dimensions (as Flow-GRPO's)
    adv_clip: float = 5.0  # normalised advantages clipped to ±adv_clip
    kl_weight: float = 0.04  # KL to the frozen starting policy (closed form between Gaussians of one std)
    train_fraction: float = 1.0  # share of the stochastic sampler steps trained per rollout (drawn per rollout)

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size: expected ≥ 2 samples per group, got {self.group_size}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"grpo.train_fraction: expected a share in (0, 1], got {self.train_fraction}")


@dataclass
class DistributedConfig:
    """Used when a launcher starts several ranks: ``backend: deepspeed`` (the ``deepspeed`` launcher; ZeRO engines)
    or ``torch`` (``torchrun``; plain data parallelism, whole models on every rank: the faster one on CPUs)."""

    backend: str = "deepspeed"
    zero_stage: int = 3  # generator and critic engines: 2 or 3
    frozen: str = "replicate"  # teacher and judge: "replicate" or "zero3" (ZeRO-3 inference engines)
    bf16: bool = True  # on GPU
    # a DeepSpeed JSON (configs/paper/ds_*.json) whose settings (communication, offload, ...) every engine starts
    # from; batch size, ZeRO stage, clipping and bf16 are then set from this config
    deepspeed_config: str = ""

    def __post_init__(self):
        if self.backend not in ("deepspeed", "torch"):
            raise ValueError(f"distributed.backend: expected 'deepspeed' or 'torch', got {self.backend!r}")


@dataclass
class DataConfig:
    """Where the editor's (image, instruction) items come from: ``world`` draws them from the shapes world
    (``world``), ``jsonl`` reads records of real images (docs/data.md; ``pairfree data build`` writes them)."""

    source: str = "world"
    path: str = ""  # jsonl: the records file
    image_root: str = ""  # jsonl: the folder the records' image paths are relative to (default: the file's folder)
    min_side: int = 16  # jsonl: images smaller than this (pixels, either side) are skipped, counted and listed
    do_nothing: str = "the same image as the original"  # the "do nothing" instruction (loss.do_nothing_prob)
    # probability that each word of the instruction the generator reads is hidden (the unknown token) in training:
    # robustness to wording never trained on (pairfree.data.augment; the judge always reads the clean instruction;
    # lowered the lite yardstick at 0.15 and 0.3)
    word_dropout: float = 0.0
    # which words word_dropout may hide: "all", or "non_caption" (world data: only the words the world's captions
    # never use, i.e. the instruction's verbs and prepositions; colours, shapes, places are always read; measured on
    # the lite yardstick at 0.3 and 0.6: no gain on the benchmark's new phrasings, docs/experiments/lite-world.md)
    word_dropout_scope: str = "all"
    # world data: the training phrasings the generator reads, "train" or "wide" (more phrasings from one grammar, so
    # a verb no longer names the edit type; pairfree.world.edits; the judge reads them in its questions too;
    # configs/lite/*.yaml use "wide"; measured in docs/experiments/lite-world.md)
    templates: str = "train"

    def __post_init__(self):
        if self.templates not in TRAINING_TEMPLATES:
            raise ValueError(f"data.templates: expected one of {TRAINING_TEMPLATES}, got {self.templates!r}")
        if self.templates != "train" and self.source != "world":
            raise ValueError(f"data.templates: {self.templates!r} words shapes-world edits; it needs data.source=world")
        if self.word_dropout_scope not in ("all", "non_caption"):
            raise ValueError(
                f"data.word_dropout_scope: expected 'all' or 'non_caption', got {self.word_dropout_scope!r}"
            )
        if self.word_dropout_scope == "non_caption" and self.source != "world":
            raise ValueError("data.word_dropout_scope: 'non_caption' needs data.source=world (the world's captions)")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"data.word_dropout: expected a probability in [0, 1), got {self.word_dropout}")
        if self.source not in ("world", "jsonl"):
            raise ValueError(f"data.source: expected 'world' or 'jsonl', got {self.source!r}")
        if self.source == "jsonl" and not self.path:
            raise ValueError("data.path: required with data.source=jsonl (a JSONL file of edit records)")


@dataclass
class TrainConfig:
    out: str = "runs/editor"
    world: str = "full"  # the world spec the data is drawn from (lite, full or a .yaml); must be the models' own
    seed: int = 0
    batch: int = 8  # per process
    copy_steps: int = 500  # stage 0: reference-copy warm-up
    steps: int = 2000  # stage 1: pair-free editing
    mix: dict = field(default_factory=lambda: dict(DEFAULT_MIX))  # world data: the sub-type mix
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    trainer: str = "pair-free"  # pair-free (NP-Edit) | paired (supervised yardstick) | grpo (Flow-GRPO, judge reward)
    log_every: int = 10
    sample_every: int = 250  # sample grid (input | instruction | output); 0: never
    ckpt_every: int = 250
    max_minutes: float = 0.0  # stop with a checkpoint after this wall time; 0: no limit
    threads: int = 0
    tensorboard: bool = False
    device: str = "auto"  # single process: "auto" (the GPU when there is one), "cpu", "cuda" or "cuda:N"
    prefetch: int = 0  # batches built ahead on background threads (0: in the step); a GPU outruns the renderer
    # single process: bf16 | fp16 (loss scaling) | no (fp32) autocast with fp32 master weights, the frozen teacher
    # and judge in that dtype; auto: bf16 on a GPU, fp32 on a CPU. Under deepspeed: distributed.bf16 instead
    mixed_precision: str | bool = "auto"
    # every N steps (0: never): the evaluator reads the generator's edits of heldout_items held-out world edits (the
    # validation stream, held-out wording; disjoint from the benchmark) — complete edit, preservation, PSNR outside
    # the mask — logged beside the training signal (reward hacking in view); the best so far is exported to best/
    heldout_every: int = 0
    heldout_items: int = 32

    @property
    def uses_critic(self) -> bool:
        """Whether the run trains DMD's online critic: the pair-free trainer with DMD on and the critic as its fake.
        The delta score, DMD off (``loss.dmd_weight: 0``), the supervised and the GRPO trainers need none, so none
        is built, trained or saved."""
        return self.trainer == "pair-free" and self.loss.dmd_fake == "critic" and self.loss.dmd_weight > 0

    def __post_init__(self):
        check_device_name(self.device)
        if self.mixed_precision is False:  # YAML reads an unquoted `no` as false
            self.mixed_precision = "no"
        check_precision(self.mixed_precision)
        if self.trainer not in ("pair-free", "paired", "grpo"):
            raise ValueError(f"trainer: expected 'pair-free', 'paired' or 'grpo', got {self.trainer!r}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch: expected ≥ 0 batches built ahead, got {self.prefetch}")
        if self.distributed.frozen not in ("replicate", "zero3"):
            raise ValueError(f"distributed.frozen: expected 'replicate' or 'zero3', got {self.distributed.frozen!r}")
        if self.distributed.zero_stage not in (2, 3):
            raise ValueError(f"distributed.zero_stage: expected 2 or 3, got {self.distributed.zero_stage}")
        if self.loss.dmd_fake not in ("critic", "delta"):
            raise ValueError(f"loss.dmd_fake: expected 'critic' or 'delta', got {self.loss.dmd_fake!r}")
        if self.batch < 1:
            raise ValueError(f"batch: expected ≥ 1, got {self.batch}")
