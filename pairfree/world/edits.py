"""Edit instructions of the shapes world, each with its exact ground truth.

An :class:`Edit` is a source scene, an edit type with parameters, and the instruction text. The edited scene
is *computed* from (source, type, params) by :func:`apply_edit`, which refuses no-ops and impossible edits —
our analogue of the paper's VLM validation of LLM-written instructions. From an edit come the edited caption
(the DMD teacher's prompt), the judge questions the trainer asks, and (for evaluation only) the target render
and change mask.

Instruction text is drawn from paraphrase templates; a separate held-out template set exists for the
benchmark only (``templates="heldout"``: trained words in new phrasings) and is never used for training, and a
third (``"unseen"``: words never trained) measures how much the miniature's missing language prior costs.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pairfree.world.captions import TEXTURE_ADJ, caption
from pairfree.world.render import render
from pairfree.world.scene import Obj, Scene, SceneError, free_cells, obj_from_dict, sample_object, sample_scene
from pairfree.world.spec import FULL, WorldSpec

EDIT_TYPES = ("color", "texture", "background", "add", "remove", "replace", "adjust", "style")
# the public reimplementation's mix: remove 25 %, the other types equally
DEFAULT_MIX = {t: (0.25 if t == "remove" else 0.75 / (len(EDIT_TYPES) - 1)) for t in EDIT_TYPES}
ACHROMATIC = ("white", "black", "gray")

# Paraphrase templates per instruction form. "train" is what the editor and the judge ever see. "heldout", the
# benchmark's wording, recombines trained words into phrasings never trained on: the world's text encoders learn
# from scratch and have no language prior, so a word they never saw carries no meaning they could generalise from.
# "unseen" (the benchmark's wording until 2026-12-07) brings new words ("get rid of", "black and white"): a
# diagnostic of that missing prior, not of editing. Fields: obj (a unique reference, "the red circle"), color,
# texture (adjective), shape, size, where (a cell name), new (an indefinite object description).
TEMPLATES = {
    "train": {
        "color": ["make {obj} {color}", "change the color of {obj} to {color}", "recolor {obj} {color}"],
        "texture": ["make {obj} {texture}", "give {obj} a {texture} pattern", "change {obj} to {texture}"],
        "background_color": [
            "make the background {color}",
            "change the background color to {color}",
            "paint the background {color}",
        ],
        "background_texture": [
            "make the background {texture}",
            "give the background a {texture} pattern",
            "change the background to {texture}",
        ],
        "add": ["add {new} at the {where}", "put {new} at the {where}", "place {new} in the {where}"],
        "remove": ["remove {obj}", "delete {obj}", "take away {obj}"],
        "replace": ["turn {obj} into a {shape}", "replace {obj} with a {shape}", "change {obj} into a {shape}"],
        "resize": ["make {obj} {size}", "resize {obj} to {size}", "change the size of {obj} to {size}"],
        "move": ["move {obj} to the {where}", "put {obj} at the {where}", "shift {obj} to the {where}"],
        "grayscale": ["make the image grayscale", "convert the picture to grayscale", "remove all color"],
        "invert": ["invert the colors", "invert the colors of the picture", "make the image color-inverted"],
        "pixelate": ["pixelate the image", "make the picture pixelated", "turn the image into big pixels"],
        "outline": [
            "turn the image into an outline drawing",
            "draw only the outlines of the objects",
            "make the objects outlines",
        ],
    },
    "heldout": {
        "color": ["paint {obj} {color}", "change {obj} to {color}"],
        "texture": ["change the pattern of {obj} to {texture}", "make the pattern of {obj} {texture}"],
        "background_color": ["recolor the background {color}", "change the background to {color}"],
        "background_texture": [
            "change the pattern of the background to {texture}",
            "put a {texture} pattern on the background",
        ],
        "add": ["add {new} in the {where}", "place {new} at the {where}"],
        "remove": ["take {obj} away", "delete {obj} in the picture"],
        "replace": ["make {obj} a {shape}", "change {obj} to a {shape}"],
        "resize": ["change {obj} to {size}", "make the size of {obj} {size}"],
        "move": ["place {obj} in the {where}", "move {obj} into the {where}"],
        "grayscale": ["make the picture grayscale", "convert the image to grayscale"],
        "invert": ["invert the colors of the image", "make the picture color-inverted"],
        "pixelate": ["pixelate the picture", "make the image pixelated"],
        "outline": ["make the image an outline drawing", "draw only the outlines"],
    },
    "unseen": {
        "color": ["the color of {obj} should be {color}", "{obj} needs to become {color}"],
        "texture": ["{obj} should have a {texture} pattern", "I want {obj} to be {texture}"],
        "background_color": ["the background should be {color}", "I want a {color} background"],
        "background_texture": ["the background should be {texture}", "I want a {texture} background"],
        "add": ["there should be {new} at the {where}", "I want {new} at the {where}"],
        "remove": ["get rid of {obj}", "{obj} should not be there"],
        "replace": ["{obj} should be a {shape} instead", "swap {obj} for a {shape}"],
        "resize": ["{obj} should be {size}", "I want {obj} to be {size}"],
        "move": ["{obj} should be at the {where}", "relocate {obj} to the {where}"],
        "grayscale": ["the picture should be in grayscale", "I want it in black and white"],
        "invert": ["I want the colors inverted", "the colors should be inverted"],
        "pixelate": ["the picture should look pixelated", "I want it pixelated"],
        "outline": ["I want only outlines", "the image should be an outline drawing"],
    },
}
# "wide": the training phrasings plus more from one grammar, for the instruction-diversity probe (`data.templates`).
# Each object or background attribute is set with the shared frames "make X V", "turn X V" (replace: "turn X into
# V"), "change the ATTR of X to V", "make the ATTR of X V", "change X to V" and "paint X V" (colour and pattern
# only), and "remove X from the picture/image" and "put X in the ..." join remove, add and move; every frame that
# is a held-out or unseen phrasing is left out (tested). So a verb no longer names the edit type in training: the
# value word does, as in an LLM-written instruction set. The words are the world's own (no tokenizer change).
_WIDE_EXTRA = {
    "color": ["turn {obj} {color}", "make the color of {obj} {color}"],
    "texture": ["turn {obj} {texture}", "paint {obj} {texture}"],
    "background_color": ["turn the background {color}", "change the color of the background to {color}"],
    "background_texture": ["turn the background {texture}", "paint the background {texture}"],
    "add": ["put {new} in the {where}", "draw {new} at the {where}"],
    "remove": ["remove {obj} from the picture", "delete {obj} from the image"],
    "replace": ["change the shape of {obj} to a {shape}", "make the shape of {obj} a {shape}"],
    "resize": ["turn {obj} {size}"],
    "move": ["put {obj} in the {where}", "shift {obj} into the {where}"],
}
TEMPLATES["wide"] = {form: ts + _WIDE_EXTRA.get(form, []) for form, ts in TEMPLATES["train"].items()}
TRAINING_TEMPLATES = ("train", "wide")  # the sets a model may train on; "heldout" and "unseen" word benchmarks
DO_NOTHING = "do nothing"


class EditError(SceneError):
    """An edit that is malformed, impossible, or a no-op; the message says which and why."""


# ---------------------------------------------------------------------------------------------- the edit ---


def apply_edit(scene: Scene, kind: str, params: dict, where: str = "edit") -> Scene:
    """The edited scene of ``scene`` under edit ``kind`` with ``params``; raises :class:`EditError` for
    malformed, impossible or no-op edits.

    params: color {object, color} · texture {object, texture} · background {color} or {texture} ·
    add {object: {shape, color, texture, size, row, col}} · remove {object} · replace {object, shape} ·
    adjust {object, size} or {object, row, col} · style {style}. ``object`` is an index into ``scene.objects``.
    """
    if kind not in EDIT_TYPES:
        raise EditError(f"{where}.type: unknown edit type {kind!r}; allowed: {', '.join(EDIT_TYPES)}")
    if not isinstance(params, dict):
        raise EditError(f"{where}.params: expected an object, got {type(params).__name__}")
    p = dict(params)
    objs = list(scene.objects)
    spec = scene.spec

    def index() -> int:
        i = p.get("object")
        if not objs:
            raise EditError(f"{where}: impossible {kind} edit: the scene has no objects")
        if not isinstance(i, int) or not 0 <= i < len(objs):
            raise EditError(f"{where}.params.object: expected an index in 0..{len(objs) - 1}, got {i!r}")
        return i

    def choice(key: str, allowed) -> str:
        if key not in p:
            raise EditError(f"{where}.params: missing field {key!r} for a {kind} edit")
        if p[key] not in allowed:
            raise EditError(f"{where}.params.{key}: unknown value {p[key]!r}; allowed: {', '.join(allowed)}")
        return p[key]

    def visible(color: str, background: str) -> None:
        if color == background:
            raise EditError(
                f"{where}: impossible {kind} edit: a {color} object on a {background} background would be invisible"
            )

    def noop(what: str) -> EditError:
        return EditError(f"{where}: no-op {kind} edit: {what}")

    if kind in ("color", "texture", "replace"):
        i = index()
        key, allowed = {
            "color": ("color", spec.colors),
            "texture": ("texture", spec.textures),
            "replace": ("shape", spec.shapes),
        }[kind]
        value = choice(key, allowed)
        if getattr(objs[i], key) == value:
            raise noop(f"object {i} is already {value}")
        if kind == "color":
            visible(value, scene.background)
        objs[i] = dataclasses.replace(objs[i], **{key: value})
        return dataclasses.replace(scene, objects=tuple(objs))
    if kind == "background":
        if ("color" in p) == ("texture" in p):
            raise EditError(f"{where}.params: a background edit sets exactly one of 'color' or 'texture'")
        if "color" in p:
            value = choice("color", spec.colors)
            if value == scene.background:
                raise noop(f"the background is already {value}")
            for o in objs:
                visible(o.color, value)
            return dataclasses.replace(scene, background=value)
        value = choice("texture", spec.textures)
        if value == scene.background_texture:
            raise noop(f"the background is already {value}")
        return dataclasses.replace(scene, background_texture=value)
    if kind == "add":
        if len(objs) >= spec.max_objects:
            raise EditError(f"{where}: impossible add edit: the scene is full ({spec.max_objects} objects)")
        try:
            o = obj_from_dict(p.get("object"), f"{where}.params.object", spec)
        except SceneError as e:
            raise EditError(str(e)) from None
        if (o.row, o.col) not in free_cells(scene):
            raise EditError(f"{where}: impossible add edit: cell (row={o.row}, col={o.col}) is taken")
        visible(o.color, scene.background)
        return dataclasses.replace(scene, objects=tuple(objs + [o]))
    if kind == "remove":
        i = index()
        return dataclasses.replace(scene, objects=tuple(objs[:i] + objs[i + 1 :]))
    if kind == "adjust":
        i = index()
        if "size" in p:
            value = choice("size", spec.size_names)
            if objs[i].size == value:
                raise noop(f"object {i} is already {value}")
            objs[i] = dataclasses.replace(objs[i], size=value)
            return dataclasses.replace(scene, objects=tuple(objs))
        if "row" not in p or "col" not in p:
            raise EditError(f"{where}.params: an adjust edit sets 'size', or 'row' and 'col'")
        r, c = p["row"], p["col"]
        if not all(isinstance(v, int) for v in (r, c)):
            raise EditError(f"{where}.params: row and col must be integers, got {r!r}, {c!r}")
        if not (0 <= r < spec.grid and 0 <= c < spec.grid):
            raise EditError(
                f"{where}: impossible move: cell (row={r}, col={c}) is off the {spec.grid}x{spec.grid} canvas"
            )
        if (r, c) == (objs[i].row, objs[i].col):
            raise noop(f"object {i} is already at (row={r}, col={c})")
        if (r, c) not in free_cells(scene):
            raise EditError(f"{where}: impossible move: cell (row={r}, col={c}) is taken")
        objs[i] = dataclasses.replace(objs[i], row=r, col=c)
        return dataclasses.replace(scene, objects=tuple(objs))
    # style
    value = choice("style", spec.styles[1:])
    if scene.style != "none":
        raise EditError(f"{where}: impossible style edit: the scene already has style {scene.style!r}")
    if value == "grayscale" and all(c in ACHROMATIC for c in [scene.background] + [o.color for o in objs]):
        raise noop("every color in the scene is already gray")
    return dataclasses.replace(scene, style=value)


def form_of(kind: str, params: dict) -> str:
    """The template family of an edit: its type, refined for background/adjust/style (``move``, ``invert``...)."""
    if kind == "background":
        return "background_color" if "color" in params else "background_texture"
    if kind == "adjust":
        return "resize" if "size" in params else "move"
    if kind == "style":
        return params["style"]
    return kind


def refer(scene: Scene, i: int) -> str:
    """The shortest unique reference to object ``i``: "the star", "the red star", "the red star at the top left"."""
    o = scene.objects[i]
    for keys in (("shape",), ("color", "shape"), ("size", "color", "shape")):
        if sum(all(getattr(q, k) == getattr(o, k) for k in keys) for q in scene.objects) == 1:
            return "the " + " ".join(getattr(o, k) for k in keys)
    return f"the {o.color} {o.shape} at the {scene.position_name(o)}"


def _indefinite(o: Obj) -> str:
    tex = "" if o.texture == "solid" else TEXTURE_ADJ[o.texture] + " "
    return f"a {o.size} {tex}{o.color} {o.shape}"


def instruction_choices(scene: Scene, kind: str, params: dict, templates: str = "train") -> list[str]:
    """Every wording of the edit in the ``templates`` set ("train", "heldout" or "unseen")."""
    if templates not in TEMPLATES:
        raise ValueError(f"templates: expected one of {sorted(TEMPLATES)}, got {templates!r}")
    fields = {k: v for k, v in params.items() if isinstance(v, str)}
    if isinstance(params.get("object"), int):
        fields["obj"] = refer(scene, params["object"])
    if kind == "add":
        o = Obj(**params["object"])
        fields.update(new=_indefinite(o), where=scene.spec.cell_name(o.row, o.col))
    if "row" in params:
        fields["where"] = scene.spec.cell_name(params["row"], params["col"])
    if "texture" in params:
        fields["texture"] = TEXTURE_ADJ[params["texture"]]
    return [t.format(**fields) for t in TEMPLATES[templates][form_of(kind, params)]]


def instruction_text(scene: Scene, kind: str, params: dict, rng: random.Random, templates: str = "train") -> str:
    """An instruction for the edit, drawn from the ``templates`` set ("train", "wide", "heldout" or "unseen")."""
    return rng.choice(instruction_choices(scene, kind, params, templates))


@dataclass(frozen=True)
class JudgeQuestion:
    """A Yes/No question for the judge. ``images``: "pair" shows (input, output); "output" shows the output only."""

    role: str  # "verify" | "identity"
    images: str
    text: str
    target: str  # "Yes" | "No"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def verify_question(instruction: str) -> str:
    return (
        f"The first image is the original and the second is the edited image. Was the instruction "
        f'"{instruction}" carried out? Identical images mean it was not. Answer yes or no.'
    )


def identity_question(instruction: str) -> str:
    return (
        f'Apart from what the instruction "{instruction}" changes, is the second image the same as the '
        f"first? Answer yes or no."
    )


def exists_question(indefinite: str) -> str:
    return f"Is there {indefinite} in the image? Answer yes or no."


def layout_question(reference: str) -> str:
    return f"Ignoring {reference}, do the two images show the same objects in the same layout? Answer yes or no."


@dataclass(frozen=True)
class Edit:
    """An instruction on a source scene. ``target``/``edited_caption``/``questions`` follow from it."""

    source: Scene
    kind: str
    params: dict = field(hash=False)
    instruction: str

    @property
    def form(self) -> str:
        return form_of(self.kind, self.params)

    @property
    def target(self) -> Scene:
        """The ground-truth edited scene (evaluation only — never shown to the editor)."""
        return apply_edit(self.source, self.kind, self.params)

    def edited_caption(self, seed: int = 0) -> str:
        """A caption of the edited scene: the prompt the DMD teacher is conditioned on."""
        return caption(self.target, seed)

    def questions(self) -> tuple[JudgeQuestion, JudgeQuestion]:
        """(verification, identity) with their targets. Remove asks the single-image "is there <object>?" → No."""
        if self.kind == "remove":
            ref = refer(self.source, self.params["object"])
            return (
                JudgeQuestion("verify", "output", exists_question("a" + ref[3:]), "No"),
                JudgeQuestion("identity", "pair", layout_question(ref), "Yes"),
            )
        return (
            JudgeQuestion("verify", "pair", verify_question(self.instruction), "Yes"),
            JudgeQuestion("identity", "pair", identity_question(self.instruction), "Yes"),
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source.to_dict(),
            "type": self.kind,
            "params": self.params,
            "instruction": self.instruction,
        }

    @staticmethod
    def from_dict(d: dict, where: str = "edit", spec: WorldSpec = FULL) -> Edit:
        """Parse and validate in ``spec`` (the edit must be possible and not a no-op); errors name the field."""
        if not isinstance(d, dict):
            raise EditError(f"{where}: expected an object, got {type(d).__name__}")
        missing = {"source", "type", "params", "instruction"} - d.keys()
        if missing:
            raise EditError(f"{where}: missing field(s) {sorted(missing)}")
        if not isinstance(d["instruction"], str) or not d["instruction"].strip():
            raise EditError(f"{where}.instruction: expected a non-empty string, got {d['instruction']!r}")
        source = Scene.from_dict(d["source"], f"{where}.source", spec)
        apply_edit(source, d["type"], d["params"], where)
        return Edit(source, d["type"], dict(d["params"]), d["instruction"])


# ------------------------------------------------------------------------------------------- sampling ---


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    """Validate an edit-type mix and normalise it to sum to 1."""
    unknown = set(mix) - set(EDIT_TYPES)
    if unknown:
        raise ValueError(f"edit mix: unknown type(s) {sorted(unknown)}; allowed: {', '.join(EDIT_TYPES)}")
    if any(not isinstance(w, (int, float)) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"edit mix: weights must be non-negative numbers with a positive sum, got {mix}")
    total = sum(mix.values())
    return {t: mix.get(t, 0.0) / total for t in EDIT_TYPES}


def propose_params(scene: Scene, kind: str, rng: random.Random) -> dict:
    """A random parameter proposal for ``kind`` on ``scene``; it may be invalid — :func:`apply_edit` judges."""
    n, spec = len(scene.objects), scene.spec
    i = rng.randrange(n) if n else 0
    if kind == "color":
        return {"object": i, "color": rng.choice(spec.colors)}
    if kind == "texture":
        return {"object": i, "texture": rng.choice(spec.textures)}
    if kind == "replace":
        return {"object": i, "shape": rng.choice(spec.shapes)}
    if kind == "background":
        key = rng.choice(("color", "texture")) if len(spec.textures) > 1 else "color"
        return {key: rng.choice(spec.colors if key == "color" else spec.textures)}
    if kind == "add":
        r, c = rng.randrange(spec.grid), rng.randrange(spec.grid)
        return {"object": dataclasses.asdict(sample_object(rng, r, c, spec=spec))}
    if kind == "remove":
        return {"object": i}
    if kind == "adjust":
        if rng.random() < 0.5:
            return {"object": i, "size": rng.choice(spec.size_names)}
        return {"object": i, "row": rng.randrange(spec.grid), "col": rng.randrange(spec.grid)}
    return {"style": rng.choice(spec.styles[1:])}


def sample_edit(
    seed: int,
    mix: dict[str, float] | None = None,
    templates: str = "train",
    kind: str | None = None,
    max_tries: int = 1000,
    spec: WorldSpec = FULL,
) -> Edit:
    """The edit of ``seed`` in world ``spec``: a type drawn from ``mix`` (or ``kind``), then scene + parameter
    proposals until :func:`apply_edit` accepts one (so the type mix holds exactly in expectation)."""
    rng = random.Random(seed)
    mix = check_mix(mix if mix is not None else DEFAULT_MIX)
    if kind is None:
        kind = rng.choices(EDIT_TYPES, weights=[mix[t] for t in EDIT_TYPES])[0]
    elif kind not in EDIT_TYPES:
        raise EditError(f"kind: unknown edit type {kind!r}; allowed: {', '.join(EDIT_TYPES)}")
    scene = sample_scene(rng.getrandbits(63), spec)
    for _ in range(max_tries):
        params = propose_params(scene, kind, rng)
        try:
            apply_edit(scene, kind, params)
        except EditError:
            if rng.random() < 0.25:  # e.g. add into a full scene: draw another scene
                scene = sample_scene(rng.getrandbits(63), spec)
            continue
        return Edit(scene, kind, params, instruction_text(scene, kind, params, rng, templates))
    raise RuntimeError(f"no valid {kind} edit found in {max_tries} proposals (seed {seed})")


# ------------------------------------------------------------------------------- ground truth renders ---


def render_edits(edits: list[Edit], resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs, targets, masks)`` for evaluation: renders ``(B, 3, R, R)`` in [0, 1] and change masks
    ``(B, 1, R, R)`` in [0, 1]. Outside the mask the target equals the input exactly."""
    images, cover = render([e.source for e in edits] + [e.target for e in edits], resolution)
    b = len(edits)
    inputs, targets, cin, cout = images[:b], images[b:], cover[:b], cover[b:]
    masks = torch.zeros(b, 1, resolution, resolution)
    for n, e in enumerate(edits):
        src, tgt = e.source, e.target
        if e.kind == "style":
            masks[n] = 1
            continue
        if e.kind == "background":
            masks[n, 0] = (1 - cin[n].sum(0)).clamp(0, 1)
            continue
        for k, o in enumerate(src.objects):  # objects that changed or left, and objects that are new
            if o not in tgt.objects:
                masks[n, 0] = torch.maximum(masks[n, 0], cin[n, k])
        for k, o in enumerate(tgt.objects):
            if o not in src.objects:
                masks[n, 0] = torch.maximum(masks[n, 0], cout[n, k])
        if src.style == "pixelate":  # a change anywhere in a block changes the whole block
            masks[n] = F.interpolate(F.adaptive_max_pool2d(masks[n : n + 1], 8), size=resolution, mode="nearest")[0]
    return inputs, targets, masks
