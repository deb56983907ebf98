"""Yes/No questions about shapes-world images, with exact answers: the judge's training data.

Two kinds, matching what the trainer asks the judge:

* ``single`` — one image: attribute questions ("Is the object at the top left a star?", "Is the background
  blue?", "Is the image pixelated?") and the remove-verification form "Is there a red circle in the image?".
  Negatives are near misses (one attribute off), so the judge has to look.
* ``pair`` — two images (original, edited): the trainer's verification question ("was the instruction carried
  out?"; identical images → No) and identity question ("apart from what the instruction changes, is it the
  same?"), shown with the true edit, with no change, with a wrong edit, or with the true edit plus an
  unrelated extra change.

Each generator takes the wanted answer so datasets can balance Yes/No exactly.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from pairfree.world.captions import TEXTURE_ADJ
from pairfree.world.edits import (
    EDIT_TYPES,
    Edit,
    EditError,
    apply_edit,
    exists_question,
    identity_question,
    layout_question,
    propose_params,
    refer,
    sample_edit,
    verify_question,
)
from pairfree.world.scene import Scene, free_cells, sample_scene
from pairfree.world.spec import FULL, WorldSpec

STYLE_PHRASE = {
    "grayscale": "in grayscale",
    "invert": "color-inverted",
    "pixelate": "pixelated",
    "outline": "an outline drawing",
}
# which single-image questions stay answerable under each style
VISIBLE_UNDER = {
    "grayscale": ("shape", "texture", "size", "empty", "count"),
    "pixelate": ("color", "empty", "count"),
    "outline": ("shape", "color", "size", "empty", "count", "exists"),
}


@dataclass(frozen=True)
class VQAItem:
    """Scenes to render (1 or 2), a question and its answer."""

    scenes: tuple[Scene, ...]
    question: str
    answer: str  # "Yes" | "No"
    kind: str  # "single" | "pair"
    form: str  # which generator made it, for per-form accuracy
    truth: str | None = None  # the asked attribute's true value as one word (a dense auxiliary target)


def _other(rng: random.Random, allowed, current):
    return rng.choice([a for a in allowed if a != current])


SINGLE_FORMS = ("shape", "color", "texture", "size", "empty", "background", "count", "style", "exists")


def single_question(
    seed: int,
    yes: bool,
    style_prob: float = 0.2,
    forms: tuple[str, ...] = SINGLE_FORMS,
    spec: WorldSpec = FULL,
) -> VQAItem:
    """A single-image question about the scene of ``seed`` in ``spec`` whose answer is Yes iff ``yes``;
    ``forms``: the question forms to draw from (a curriculum may start with the global ones)."""
    rng = random.Random(seed)
    scene = sample_scene(rng.getrandbits(63), spec)
    form = rng.choice(forms)
    answer = "Yes" if yes else "No"
    if form == "style":
        asked = rng.choice(spec.styles[1:])
        style = asked if yes else rng.choice([s for s in spec.styles if s != asked])
        scene = dataclasses.replace(scene, style=style)
        return VQAItem((scene,), f"Is the image {STYLE_PHRASE[asked]}? Answer yes or no.", answer, "single", form)
    if rng.random() < style_prob:  # also ask on styled pictures, where the asked attribute stays visible
        styles = [s for s, forms in VISIBLE_UNDER.items() if form in forms and s in spec.styles]
        if styles:
            scene = dataclasses.replace(scene, style=rng.choice(styles))
    o = rng.choice(scene.objects)
    at = f"the object at the {scene.position_name(o)}"
    truth = None
    if form in ("shape", "color", "texture", "size"):
        allowed = {"shape": spec.shapes, "color": spec.colors, "texture": spec.textures, "size": spec.size_names}[form]
        value = getattr(o, form) if yes else _other(rng, allowed, getattr(o, form))
        truth = TEXTURE_ADJ[o.texture] if form == "texture" else getattr(o, form)
        if form == "shape":
            q = f"Is {at} a {value}?"
        elif form == "texture":
            q = f"Is {at} {TEXTURE_ADJ[value]}?"
        else:
            q = f"Is {at} {value}?"
    elif form == "empty":
        r, c = (o.row, o.col) if yes else rng.choice(free_cells(scene))  # a spec never fills every cell
        q = f"Is there an object at the {spec.cell_name(r, c)}?"
    elif form == "background":
        if rng.random() < 0.5 or len(spec.textures) == 1:
            value = scene.background if yes else _other(rng, spec.colors, scene.background)
            q, truth = f"Is the background {value}?", scene.background
        else:
            value = scene.background_texture if yes else _other(rng, spec.textures, scene.background_texture)
            q, truth = f"Is the background {TEXTURE_ADJ[value]}?", TEXTURE_ADJ[scene.background_texture]
    elif form == "count":
        counts = range(spec.min_objects, spec.max_objects + 1)
        if len(counts) == 1:
            counts = range(1, spec.max_objects + 2)
        n = len(scene.objects) if yes else _other(rng, counts, len(scene.objects))
        q = f"Are there exactly {n} objects?" if n > 1 else "Is there exactly one object?"
    else:  # exists: the trainer's remove-verification form, with a near miss for No
        if yes:
            ref = refer(scene, scene.objects.index(o))
        else:  # remove an object and ask about it
            i = scene.objects.index(o)
            ref = refer(scene, i)
            scene = apply_edit(scene, "remove", {"object": i})
        return VQAItem((scene,), exists_question("a" + ref[3:]), answer, "single", form)
    return VQAItem((scene,), q + " Answer yes or no.", answer, "single", form, truth)


def cell_differences(a: Scene, b: Scene) -> tuple[int, ...]:
    """Per grid cell (row-major), 1 where the two scenes draw it differently: its object (present, absent or
    any attribute) or, for every cell, the background or the style — a dense target for comparing two images."""
    glob = (a.background, a.background_texture, a.style) != (b.background, b.background_texture, b.style)
    at_a = {(o.row, o.col): o for o in a.objects}
    at_b = {(o.row, o.col): o for o in b.objects}
    g = a.spec.grid
    return tuple(int(glob or at_a.get((r, c)) != at_b.get((r, c))) for r in range(g) for c in range(g))


def difference_question(seed: int, yes: bool, mix: dict[str, float] | None = None, spec: WorldSpec = FULL) -> VQAItem:
    """A short two-image question about where the images differ — "Is the top left of the second image the same
    as in the first?" or "Is the second image the same as the first?" (Yes iff nothing differs there) — on an
    (original, edited) pair or an unchanged one: the stepping stone from comparing cells to the verification
    and identity questions."""
    rng = random.Random(seed)
    whole = rng.random() < 0.3
    for _ in range(100):
        edit = sample_edit(rng.getrandbits(63), mix, spec=spec)
        a = edit.source
        if whole:  # Yes: the unchanged pair; No: the edit
            b = a if yes else edit.target
            if yes or any(cell_differences(a, b)):
                q = "Is the second image the same as the first? Answer yes or no."
                return VQAItem((a, b), q, "Yes" if yes else "No", "pair", "difference_image")
            continue
        b = a if rng.random() < 0.25 else edit.target
        cells = [i for i, d in enumerate(cell_differences(a, b)) if d == (0 if yes else 1)]
        if not cells:
            continue
        cell = rng.choice(cells)
        where = spec.cell_name(cell // spec.grid, cell % spec.grid)
        q = f"Is the {where} of the second image the same as in the first? Answer yes or no."
        return VQAItem((a, b), q, "Yes" if yes else "No", "pair", "difference_cell")
    raise RuntimeError("no difference question found")


def _extra_change(scene: Scene, keep: int | None, rng: random.Random) -> Scene:
    """``scene`` with one more geometric change (add, remove, replace or move) not touching object ``keep``."""
    for _ in range(1000):
        kind = rng.choice(("add", "remove", "replace", "adjust"))
        params = propose_params(scene, kind, rng)
        if kind == "adjust":
            params.pop("size", None)
            params.setdefault("row", rng.randrange(scene.spec.grid))
            params.setdefault("col", rng.randrange(scene.spec.grid))
        if keep is not None and params.get("object") == keep:
            continue
        try:
            return apply_edit(scene, kind, params)
        except EditError:
            continue
    raise RuntimeError("no extra change found")


def _edited_object(edit: Edit) -> int | None:
    if edit.kind == "add":
        return len(edit.source.objects)
    if edit.kind in ("color", "texture", "replace", "adjust"):
        return edit.params["object"]
    return None


def pair_question(
    seed: int, yes: bool, mix: dict[str, float] | None = None, templates: str = "train", spec: WorldSpec = FULL
) -> VQAItem:
    """A two-image (original, edited) question as the trainer asks it, whose answer is Yes iff ``yes``."""
    rng = random.Random(seed)
    edit = sample_edit(rng.getrandbits(63), mix, templates, spec=spec)
    src, tgt = edit.source, edit.target
    role = rng.choice(("verify", "identity")) if edit.kind != "remove" else "identity"
    if role == "verify":
        q = verify_question(edit.instruction)
        if yes:
            return VQAItem((src, tgt), q, "Yes", "pair", "verify_true")
        if rng.random() < 0.4:
            return VQAItem((src, src), q, "No", "pair", "verify_unchanged")
        for _ in range(100):  # a wrong edit: same type with other parameters, or another type
            kind = edit.kind if rng.random() < 0.5 else rng.choice(EDIT_TYPES)
            try:
                wrong = apply_edit(src, kind, propose_params(src, kind, rng))
            except EditError:
                continue
            if wrong != tgt:
                return VQAItem((src, wrong), q, "No", "pair", "verify_wrong")
        return VQAItem((src, src), q, "No", "pair", "verify_unchanged")
    q = (
        identity_question(edit.instruction)
        if edit.kind != "remove"
        else layout_question(refer(src, edit.params["object"]))
    )
    if yes:
        shown = tgt if rng.random() < 0.75 else src
        return VQAItem((src, shown), q, "Yes", "pair", "identity_true" if shown is tgt else "identity_unchanged")
    return VQAItem((src, _extra_change(tgt, _edited_object(edit), rng)), q, "No", "pair", "identity_extra")
