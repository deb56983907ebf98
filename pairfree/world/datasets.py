"""Deterministic, seedable, rank-sharded torch datasets of the shapes world.

* :class:`CaptionImageDataset` — (image, caption) for the text-to-image teacher.
* :class:`JudgeVQADataset` — (images, Yes/No question, answer) for the judge, exactly balanced Yes/No.
* :class:`EditorDataset` — (input image, instruction, edited caption, judge questions) for the pair-free editor.
  It never yields the target image, the edited scene or the change mask: the method trains without them.

Item ``j`` of rank ``r`` of ``w`` is global item ``j·w + r``; its content depends only on (seed, split, global
index), so any rank, worker or resumed run sees the same item. Splits ("train", "val", "bench") use disjoint
seed streams. Images are float32 ``(3, R, R)`` in [-1, 1]. ``__getitems__`` renders a whole batch at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

import torch
from torch.utils.data import Dataset

from pairfree.world.captions import caption
from pairfree.world.edits import DEFAULT_MIX, TRAINING_TEMPLATES, check_mix, sample_edit
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.spec import FULL, WorldSpec
from pairfree.world.vqa import SINGLE_FORMS, cell_differences, difference_question, pair_question, single_question

SPLITS = ("train", "val", "bench")


def item_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed for item ``index`` of ``split``, independent across splits and base seeds."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class WorldDataset(Dataset):
    """Base: ``length`` global items, this rank's shard of them (equal size on every rank)."""

    def __init__(
        self,
        length: int,
        seed: int = 0,
        split: str = "train",
        resolution: int = 32,
        rank: int = 0,
        world_size: int = 1,
        spec: WorldSpec = FULL,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if length < world_size:
            raise ValueError(f"length: {length} items cannot be shared by {world_size} ranks")
        item_seed(seed, split, 0)  # validates split
        self.length, self.seed, self.split, self.resolution = length, seed, split, resolution
        self.rank, self.world_size, self.spec = rank, world_size, spec

    def __len__(self) -> int:
        return self.length // self.world_size

    def global_index(self, j: int) -> int:
        if not 0 <= j < len(self):
            raise IndexError(f"index {j} out of range for a shard of {len(self)} items")
        return j * self.world_size + self.rank

    def __getitem__(self, j: int) -> dict:
        return self.__getitems__([j])[0]

    def __getitems__(self, js: list[int]) -> list[dict]:
        raise NotImplementedError

    def render(self, scenes, device="cpu") -> torch.Tensor:
        """``scenes`` drawn at this dataset's resolution, in [-1, 1]."""
        images, _ = render(list(scenes), self.resolution, device=device)
        return images * 2 - 1


class CaptionImageDataset(WorldDataset):
    """(image, caption) pairs; a fraction ``style_prob`` of scenes carry a global style (so the teacher can draw
    what style edits ask for)."""

    def __init__(self, length: int, style_prob: float = 0.2, **kw):
        super().__init__(length, **kw)
        self.style_prob = style_prob

    def example(self, index: int):
        rng = random.Random(item_seed(self.seed, self.split, index))
        scene = sample_scene(rng.getrandbits(63), self.spec)
        if rng.random() < self.style_prob:
            scene = dataclasses.replace(scene, style=rng.choice(self.spec.styles[1:]))
        return scene, caption(scene, rng.getrandbits(32))

    def __getitems__(self, js):
        examples = [self.example(self.global_index(j)) for j in js]
        images = self.render(s for s, _ in examples)
        return [{"image": im, "caption": cap} for im, (_, cap) in zip(images, examples)]


class JudgeVQADataset(WorldDataset):
    """Yes/No questions with one or two images; even global indices answer Yes, odd ones No. A fraction
    ``pair_prob`` are two-image (original, edited) questions. Items carry ``images`` ``(n, 3, R, R)``; batch
    them with :func:`collate_vqa`."""

    def __init__(
        self,
        length: int,
        pair_prob: float = 0.5,
        mix: dict | None = None,
        forms: tuple[str, ...] | None = None,
        difference_prob: float = 0.0,
        **kw,
    ):
        super().__init__(length, **kw)
        self.pair_prob, self.mix = pair_prob, check_mix(mix or DEFAULT_MIX)
        self.difference_prob = difference_prob  # of the two-image items: short "where do they differ" questions
        unknown = set(forms or ()) - set(SINGLE_FORMS)
        if unknown:
            raise ValueError(f"forms: unknown single-image question form(s) {sorted(unknown)}; allowed: {SINGLE_FORMS}")
        self.forms = tuple(forms) if forms else SINGLE_FORMS

    def example(self, index: int):
        s = item_seed(self.seed, self.split, index)
        yes = index % 2 == 0
        r = random.Random(s)
        if r.random() < self.pair_prob:
            if r.random() < self.difference_prob:
                return difference_question(s, yes, self.mix, spec=self.spec)
            return pair_question(s, yes, self.mix, spec=self.spec)
        return single_question(s, yes, forms=self.forms, spec=self.spec)

    def __getitems__(self, js):
        items = [self.example(self.global_index(j)) for j in js]
        images = self.render(sc for it in items for sc in it.scenes)
        out, k = [], 0
        for it in items:
            n = len(it.scenes)
            out.append(
                {
                    "images": images[k : k + n],
                    "question": it.question,
                    "answer": it.answer,
                    "kind": it.kind,
                    "form": it.form,
                    "truth": it.truth,
                    "diff": cell_differences(*it.scenes) if n == 2 else None,
                }
            )
            k += n
        return out


def collate_vqa(items: list[dict]) -> dict:
    """Batch VQA items: ``images`` stays a list (one or two images per item); ``label`` is 1 for Yes."""
    return {
        "images": [it["images"] for it in items],
        "question": [it["question"] for it in items],
        "label": torch.tensor([it["answer"] == "Yes" for it in items], dtype=torch.long),
        "kind": [it["kind"] for it in items],
        "form": [it["form"] for it in items],
        "truth": [it.get("truth") for it in items],
        "diff": [it.get("diff") for it in items],
    }


EDITOR_KEYS = ("image", "instruction", "edited_caption", "source_caption", "type", "questions")


class EditorDataset(WorldDataset):
    """What the pair-free editor trains on: the input image, the instruction, the edited caption (the DMD
    teacher's prompt) and the two judge questions with their targets. No target image, no edited scene, no
    mask. ``mix`` sets the edit-type mix; instructions come from a training template set (``templates``: "train"
    or "wide"), never the benchmark's."""

    def __init__(self, length: int, mix: dict | None = None, templates: str = "train", **kw):
        super().__init__(length, **kw)
        if templates not in TRAINING_TEMPLATES:
            raise ValueError(f"templates: expected a training set, one of {TRAINING_TEMPLATES}, got {templates!r}")
        self.mix, self.templates = check_mix(mix or DEFAULT_MIX), templates

    def example(self, index: int):
        s = item_seed(self.seed, self.split, index)
        return sample_edit(s, self.mix, templates=self.templates, spec=self.spec), s

    def __getitems__(self, js):
        examples = [self.example(self.global_index(j)) for j in js]
        images = self.render(e.source for e, _ in examples)
        out = []
        for im, (e, s) in zip(images, examples):
            verify, identity = e.questions()
            out.append(
                {
                    "image": im,
                    "instruction": e.instruction,
                    "edited_caption": e.edited_caption(s % 997),
                    "source_caption": caption(e.source, s % 991),
                    "type": e.kind,
                    "questions": [verify.to_dict(), identity.to_dict()],
                }
            )
        return out
