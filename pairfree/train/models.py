"""The four models of pair-free training and how they are loaded: the generator (initialised from the teacher,
with reference conditioning), the critic (a trainable copy of the teacher), and the frozen teacher and judge."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pairfree.flow import x0_from_velocity
from pairfree.models.dit import DiT
from pairfree.models.persistence import CheckpointError
from pairfree.pretrain.teacher import Teacher
from pairfree.train.config import ModelsConfig


@dataclass
class EditorModels:
    generator: Teacher  # DiT (+ reference tokens) and its own text encoder for the instruction
    critic: Teacher  # the online fake score, trained on the generator's samples
    teacher: Teacher  # frozen real score
    judge: nn.Module  # frozen VLM (QwenJudge)


def _load(kind: str, where: str):
    from pairfree.shipped import NAMES, pretrained

    name = f"shapes-{kind}"
    if where in NAMES:
        return pretrained(where)
    path = Path(where)
    if not path.is_dir():
        raise CheckpointError(
            f"models.{kind}: {where!r} is neither a shipped model ({', '.join(NAMES)}) nor a directory"
        )
    return pretrained(name, path)


def check_judge_tokens(judge) -> None:
    """The judge's tokenizer must have the two answer tokens (the loss reads their logits only)."""
    vocab = judge.tokenizer.get_vocab()
    missing = [t for t in judge.config.answer_tokens if t not in vocab]
    if missing:
        raise ValueError(f"judge: the tokenizer has no {missing} token(s); the editing loss needs Yes and No")


def load_models(cfg: ModelsConfig) -> EditorModels:
    """Teacher and judge from shipped names or directories; generator and critic initialised from the teacher."""
    teacher = _load("teacher", cfg.teacher).requires_grad_(False).eval()
    judge = _load("judge", cfg.judge)
    check_judge_tokens(judge)
    judge.model.requires_grad_(False)  # input gradients only
    if not teacher.dit.config.reference:
        raise ValueError("models.teacher: the DiT was built with reference=False; the editor needs reference tokens")
    generator = Teacher(with_reference_skip(teacher.dit), copy.deepcopy(teacher.text)).requires_grad_(True).train()
    critic = copy.deepcopy(teacher).requires_grad_(True).train()
    return EditorModels(generator, critic, teacher, judge)


def with_reference_skip(dit: DiT) -> DiT:
    """A copy of ``dit`` with the zero-initialised reference skip (same function until it is trained)."""
    out = DiT(dataclasses.replace(dit.config, reference_skip=True)).to(next(dit.parameters()).device)
    missing, unexpected = out.load_state_dict(dit.state_dict(), strict=False)
    if unexpected or any(not k.startswith("reference_skip.") for k in missing):
        raise CheckpointError(f"teacher DiT: unexpected weights {unexpected}, missing {missing}")
    return out


def editor_x0(
    generator: Teacher, x_t: torch.Tensor, t: torch.Tensor, reference: torch.Tensor, text, text_mask
) -> torch.Tensor:
    """One generator call: x̂0 from the noisy x_t, the clean reference image and the encoded instruction."""
    return x0_from_velocity(x_t, generator.dit(x_t, t, text, text_mask, reference=reference), t)
