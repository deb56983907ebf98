"""Inference: edit an image with a trained few-step editor (``pairfree edit`` and ``EditPipeline``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pairfree.flow import few_step_schedule, sample_few_step
from pairfree.models.autoencoder import DCAutoencoder
from pairfree.models.bundle import FlowModel
from pairfree.models.dit import DiT
from pairfree.models.persistence import CheckpointError
from pairfree.models.text import HFTextEncoder

EDITOR_META = "editor.json"


class ImageError(ValueError):
    """An input image that cannot be read or has the wrong shape; the message names the file or the shape."""


@torch.no_grad()
def edit_images(
    generator,
    inputs: torch.Tensor,
    instructions: list[str],
    schedule: list[float],
    seed: int = 0,
    autoencoder=None,
) -> torch.Tensor:
    """Few-step editing of ``inputs`` ``(B, 3, H, W)`` in [-1, 1]: the sampler the editor was trained to unroll
    (in the ``autoencoder``'s latent space when one is given, else in pixel space)."""
    if autoencoder is not None:
        inputs = autoencoder.encode(inputs)
    g = torch.Generator(device=inputs.device).manual_seed(seed)
    text, mask = generator.text.encode(instructions)
    noise = torch.randn(inputs.shape, generator=g, device=inputs.device, dtype=inputs.dtype)
    velocity = lambda x, t: generator.dit(x, t, text, mask, reference=inputs)  # noqa: E731
    x0 = sample_few_step(velocity, noise, schedule, g)
    return (x0 if autoencoder is None else autoencoder.decode(x0)).clamp(-1, 1)


def load_image(path: str | Path, resolution: int) -> tuple[torch.Tensor, str | None]:
    """An image file as ``(3, r, r)`` in [-1, 1]; returns a note when it had to be converted or resized."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    note = []
    if im.mode != "RGB":
        note.append(f"converted {im.mode} to RGB")
        im = im.convert("RGB")
    if im.size != (resolution, resolution):
        note.append(f"resized {im.size[0]}x{im.size[1]} to the model's {resolution}x{resolution}")
        im = im.resize((resolution, resolution), Image.BICUBIC)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1, ("; ".join(note) or None)


def save_image(x: torch.Tensor, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(u8).save(path)
    return path


class EditPipeline:
    """``EditPipeline.from_pretrained(DIR)(image, instruction)`` -> the edited image ``(3, r, r)`` in [-1, 1].

    ``image``: a ``(3, H, W)`` tensor in [-1, 1] at the model's resolution, or a path to an image file. A paper-scale
    editor (trained from a diffusers SANA directory) stores only its DiT and names that directory (``source``),
    from which the frozen text encoder and the DC-AE autoencoder are loaded."""

    def __init__(self, generator, resolution: int, steps: int = 4, shift: float = 6.0, autoencoder=None, source=None):
        self.generator, self.resolution, self.steps, self.shift = generator.eval(), resolution, steps, shift
        self.autoencoder, self.source = autoencoder, source

    @classmethod
    def from_pretrained(cls, path: str | Path) -> EditPipeline:
        path = Path(path)
        meta = path / EDITOR_META
        if not meta.is_file():
            raise CheckpointError(f"{meta}: missing (expected an editor directory written by `pairfree train`)")
        info = json.loads(meta.read_text())
        sampling = (info["resolution"], info.get("steps", 4), info.get("shift", 6.0))
        if info.get("format", "shapes") == "diffusers":
            root = Path(info["source"])
            if not root.is_dir():
                raise CheckpointError(
                    f"{meta}: source {root} is not a directory (the SANA pipeline it was trained from)"
                )
            text = HFTextEncoder(root / "text_encoder", info["text_max_length"], tokenizer_path=root / "tokenizer")
            generator = FlowModel(DiT.from_pretrained(path / "dit"), text)
            return cls(generator, *sampling, autoencoder=DCAutoencoder.from_pretrained(root / "vae"), source=root)
        return cls(FlowModel.from_pretrained(path), *sampling)

    def to(self, device) -> EditPipeline:
        """The pipeline on ``device`` (e.g. ``"cuda"``): the generator and the autoencoder; returns itself."""
        self.generator.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        return self

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"resolution": self.resolution, "steps": self.steps, "shift": self.shift}
        if self.source is not None:  # the frozen text encoder and autoencoder stay in the source directory
            path.mkdir(parents=True, exist_ok=True)
            self.generator.dit.save_pretrained(path / "dit")
            meta.update(format="diffusers", source=str(self.source), text_max_length=self.generator.text.max_length)
        else:
            self.generator.save_pretrained(path)
        (path / EDITOR_META).write_text(json.dumps(meta, indent=1))
        return path

    def __call__(self, image, instruction: str, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image, _ = load_image(image, self.resolution)
        if image.shape != (3, self.resolution, self.resolution):
            raise ImageError(
                f"EditPipeline: image shape {tuple(image.shape)}, expected (3, {self.resolution}, {self.resolution})"
            )
        schedule = few_step_schedule(steps or self.steps, self.shift)
        device = next(self.generator.parameters()).device
        return edit_images(
            self.generator, image[None].to(device), [instruction], schedule, seed, autoencoder=self.autoencoder
        )[0]
