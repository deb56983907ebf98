"""The four models of pair-free training and how they are loaded: the generator (initialised from the teacher,
with reference conditioning), the critic (a trainable copy of the teacher), and the frozen teacher and judge."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pairfree.judge.qwen import load_qwen_judge
from pairfree.models.autoencoder import DCAutoencoder, IdentityAutoencoder
from pairfree.models.bundle import FlowModel
from pairfree.models.convert import dit_from_diffusers
from pairfree.models.dit import DiT
from pairfree.models.persistence import CheckpointError
from pairfree.models.text import HFTextEncoder
from pairfree.shipped import NAMES, WEIGHTS_DIR, pretrained
from pairfree.train.config import ModelsConfig
from pairfree.world.spec import check_same, load_spec


@dataclass
class EditorModels:
    generator: FlowModel  # DiT (+ reference tokens) and its own text encoder for the instruction
    critic: FlowModel | None  # the online fake score, trained on the generator's samples (None: delta-score DMD)
    teacher: FlowModel  # frozen real score
    judge: nn.Module  # frozen VLM (QwenJudge)
    autoencoder: nn.Module = dataclasses.field(default_factory=IdentityAutoencoder)  # frozen; pixel space: identity

    def to(self, device) -> EditorModels:
        """All four models (and the autoencoder) on ``device``; shared submodules move once."""
        for model in (self.generator, self.critic, self.teacher, self.judge, self.autoencoder):
            if model is not None:
                model.to(device)
        return self


def _load(kind: str, where: str, world=None):
    """A shipped world model (a name, or a directory in its layout); with ``world``, refused unless it was trained on
    that world spec."""
    path = WEIGHTS_DIR / where if where in NAMES else Path(where)
    if where not in NAMES and not path.is_dir():
        raise CheckpointError(
            f"models.{kind}: {where!r} is neither a shipped model ({', '.join(NAMES)}) nor a directory"
        )
    if world is not None and path.is_dir():
        check_same(load_spec(path), f"models.{kind} ({where})", world, "the run's world")
    return pretrained(where if where in NAMES else f"shapes-{kind}", None if where in NAMES else path)


def check_judge_tokens(judge) -> None:
    """The judge's tokenizer must have the two answer tokens (the loss reads their logits only)."""
    vocab = judge.tokenizer.get_vocab()
    missing = [t for t in judge.config.answer_tokens if t not in vocab]
    if missing:
        raise ValueError(f"judge: the tokenizer has no {missing} token(s); the editing loss needs Yes and No")


def load_models(cfg: ModelsConfig, critic: bool = True, world=None) -> EditorModels:
    """Teacher and judge from shipped names or directories; generator and critic initialised from the teacher.
    ``critic=False`` (DMD with the delta score, ``loss.dmd_fake: delta``) builds no critic: nothing would use it.
    ``world`` (a :class:`~pairfree.world.spec.WorldSpec`): refuse shapes models trained on another world."""
    if cfg.format == "diffusers":
        return load_diffusers_models(cfg, critic)
    teacher = _load("teacher", cfg.teacher, world).requires_grad_(False).eval()
    judge = _load("judge", cfg.judge, world)
    check_judge_tokens(judge)
    judge.model.requires_grad_(False)  # input gradients only
    if not teacher.dit.config.reference:
        raise ValueError("models.teacher: the DiT was built with reference=False; the editor needs reference tokens")
    generator = FlowModel(with_reference_skip(teacher.dit), copy.deepcopy(teacher.text)).requires_grad_(True).train()
    if cfg.generator:  # continue from a trained editor (a shipped name such as lite-sft, or a run's model/)
        load_generator(generator, WEIGHTS_DIR / cfg.generator if cfg.generator in NAMES else Path(cfg.generator), world)
    if cfg.freeze_text:
        generator.text.requires_grad_(False)
    fake = copy.deepcopy(teacher).requires_grad_(True).train() if critic else None
    return EditorModels(generator, fake, teacher, judge)


def load_generator(generator: FlowModel, path: Path, world=None) -> None:
    """Load an editor directory's generator weights into ``generator`` (same architecture), refusing another world."""
    if not (path / "editor.json").is_file():
        raise CheckpointError(f"models.generator: {path} is not an editor directory (no editor.json)")
    if world is not None:
        check_same(load_spec(path), f"models.generator ({path})", world, "the run's world")
    trained = FlowModel.from_pretrained(path)
    try:
        generator.load_state_dict(trained.state_dict())
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()
        raise CheckpointError(f"models.generator: {path} does not fit the teacher's generator: {first}") from None


def ema_copy(generator: FlowModel) -> FlowModel:
    """A frozen copy of the generator for its EMA; a shared frozen text encoder is shared, not copied."""
    if not any(p.requires_grad for p in generator.text.parameters()):
        return FlowModel(copy.deepcopy(generator.dit), generator.text).requires_grad_(False).eval()
    return copy.deepcopy(generator).requires_grad_(False).eval()


def trained_part(generator: FlowModel) -> nn.Module:
    """What the generator's optimizer (and EMA) covers: the whole model, or its DiT when the text is frozen."""
    return generator if any(p.requires_grad for p in generator.text.parameters()) else generator.dit


def with_reference_skip(dit: DiT) -> DiT:
    """A copy of ``dit`` with the zero-initialised reference skip (same function until it is trained)."""
    out = DiT(dataclasses.replace(dit.config, reference_skip=True)).to(next(dit.parameters()).device)
    missing, unexpected = out.load_state_dict(dit.state_dict(), strict=False)
    if unexpected or any(not k.startswith("reference_skip.") for k in missing):
        raise CheckpointError(f"teacher DiT: unexpected weights {unexpected}, missing {missing}")
    return out


def _need_dir(path: Path, key: str, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"models.{key}: {path / 'config.json'} is missing (expected {what})")
    return path


def load_diffusers_models(cfg: ModelsConfig, critic: bool = True) -> EditorModels:
    """Paper scale from local directories: SANA (DiT + Gemma text encoder + DC-AE) as the teacher, the critic
    (a trainable copy of its DiT) and the generator (its DiT + reference skip); the text encoder and the
    autoencoder are frozen and shared. The judge: a local Qwen2.5-VL."""
    dtype = getattr(torch, cfg.dtype)
    root = Path(cfg.teacher)
    if not root.is_dir():
        raise CheckpointError(f"models.teacher: {root} is not a directory (expected a diffusers SANA pipeline)")
    _need_dir(root / "transformer", "teacher", "the SANA transformer")
    _need_dir(root / "text_encoder", "teacher", "the text encoder")
    _need_dir(root / "vae", "teacher", "the DC-AE autoencoder")
    if not (root / "tokenizer").is_dir():
        raise CheckpointError(f"models.teacher: {root / 'tokenizer'} is missing (expected the text tokenizer)")
    text = HFTextEncoder(root / "text_encoder", cfg.text_max_length, dtype, tokenizer_path=root / "tokenizer")
    dit = dit_from_diffusers(root / "transformer", reference=True).to(dtype)
    teacher = FlowModel(dit, text).requires_grad_(False).eval()
    autoencoder = DCAutoencoder.from_pretrained(root / "vae", dtype=dtype)
    judge_dir = Path(cfg.judge)
    if not judge_dir.is_dir():
        raise CheckpointError(f"models.judge: {judge_dir} is not a directory (expected a Qwen2.5-VL model)")
    judge = load_qwen_judge(judge_dir, image_size=cfg.judge_image_size, dtype=dtype)
    check_judge_tokens(judge)
    generator = FlowModel(with_reference_skip(dit).to(dtype), text)
    generator.dit.requires_grad_(True).train()
    fake = None
    if critic:
        fake = FlowModel(copy.deepcopy(dit), text)
        fake.dit.requires_grad_(True).train()
    return EditorModels(generator, fake, teacher, judge, autoencoder)
