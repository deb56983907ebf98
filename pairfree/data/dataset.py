"""The editor's training data from a JSONL file of real images: the same items as the shapes world's
``EditorDataset`` (input image, instruction, edited and source captions, sub-type, judge questions), drawn
deterministically per (seed, global index) and sharded by rank, so ``--resume`` and N ranks = 1 process hold.

An unreadable or too-small image is skipped — the next record of the same epoch's order takes its place — and
counted and listed (``skipped``), never a crash mid-run and never silent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from pairfree.data.records import DataError, EditRecord, read_records


class ImageSkip(Exception):
    """An image the dataset cannot use (the message says why)."""


def read_image(path: Path, resolution: int, min_side: int = 16, expect: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``path`` as ``(3, r, r)`` in [-1, 1]: RGB, the shorter side resized to ``resolution`` (aspect kept), centre
    crop. Raises :class:`ImageSkip` for a missing, unreadable or too-small file, or one whose size differs from
    the record's ``expect`` (width, height; 0 = unchecked)."""
    if not path.is_file():
        raise ImageSkip("no such file")
    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ImageSkip(f"not a readable image ({type(e).__name__})") from None
    w, h = im.size
    if min(w, h) < min_side:
        raise ImageSkip(f"{w}x{h} is smaller than data.min_side={min_side}")
    if expect[0] and (w, h) != expect:
        raise ImageSkip(f"{w}x{h} differs from the record's width x height {expect[0]}x{expect[1]}")
    im = im.convert("RGB")
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


class JsonlEditorDataset(torch.utils.data.Dataset):
    """Items of ``path`` (a JSONL of :class:`EditRecord`), ``length`` global items cycling through the records
    in a fresh seeded order each epoch; item ``j`` of rank ``r`` of ``w`` is global item ``j·w + r``."""

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path = "",
        resolution: int = 32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        length: int = 10**12,
        min_side: int = 16,
    ):
        self.path = Path(path)
        self.records: list[EditRecord] = read_records(self.path)
        self.root = Path(image_root) if image_root else self.path.parent
        if not self.root.is_dir():
            raise DataError(f"data.image_root: {self.root} is not a folder")
        self.resolution, self.seed, self.min_side = resolution, seed, min_side
        self.rank, self.world_size, self.length = rank, world_size, length
        self.skipped: dict[str, str] = {}  # image path -> why it was skipped
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length // self.world_size

    def global_index(self, j: int) -> int:
        if not 0 <= j < len(self):
            raise IndexError(f"index {j} out of range for a shard of {len(self)} items")
        return j * self.world_size + self.rank

    def order(self, epoch: int) -> torch.Tensor:
        """The records' order in ``epoch`` (a seeded permutation; the last few are cached)."""
        if epoch not in self._orders:
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)))
            g = torch.Generator().manual_seed(_seed(self.seed, "jsonl", epoch))
            self._orders[epoch] = torch.randperm(len(self.records), generator=g)
        return self._orders[epoch]

    def example(self, index: int) -> tuple[EditRecord, torch.Tensor]:
        """The record and image of global item ``index`` (a skipped image passes to the next record)."""
        n = len(self.records)
        epoch, pos = divmod(index, n)
        order = self.order(epoch)
        for step in range(n):
            record = self.records[int(order[(pos + step) % n])]
            path = self.root / record.image
            if str(path) in self.skipped:
                continue
            try:
                return record, read_image(path, self.resolution, self.min_side, (record.width, record.height))
            except ImageSkip as e:
                self.skipped[str(path)] = str(e)
        raise DataError(f"{self.path}: none of its {n} images can be read (e.g. {next(iter(self.skipped.items()))})")

    def __getitem__(self, j: int) -> dict:
        return self.__getitems__([j])[0]

    def __getitems__(self, js: list[int]) -> list[dict]:
        out = []
        for j in js:
            record, image = self.example(self.global_index(j))
            verify, identity = record.questions()
            out.append(
                {
                    "image": image,
                    "instruction": record.instruction,
                    "edited_caption": record.edited_caption,
                    "source_caption": record.source_caption,
                    "type": record.type,
                    "questions": [verify.to_dict(), identity.to_dict()],
                }
            )
        return out
