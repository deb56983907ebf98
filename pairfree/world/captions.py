"""Captions of scenes for text-to-image training: several phrasings, each naming every object and the background."""

from __future__ import annotations

import functools
import random
import re

from pairfree.world.scene import Obj, Scene, SceneError

TEXTURE_ADJ = {"solid": "plain", "stripes": "striped", "dots": "dotted", "checker": "checkered"}


def describe(o: Obj) -> str:
    """``a large striped red star`` (no texture word for solid objects)."""
    tex = "" if o.texture == "solid" else TEXTURE_ADJ[o.texture] + " "
    return f"a {o.size} {tex}{o.color} {o.shape}"


def _background(scene: Scene) -> str:
    return f"a {TEXTURE_ADJ[scene.background_texture]} {scene.background} background"


STYLE_SUFFIX = {
    "none": "",
    "grayscale": ", in grayscale",
    "invert": ", with inverted colors",
    "pixelate": ", pixelated",
    "outline": ", as an outline drawing",
}

TEMPLATES = (
    "{objects} on {background}.",
    "{background_cap} with {objects}.",
    "A picture of {objects}, on {background}.",
    "{objects_placed}; {background}.",
)


def caption(scene: Scene, seed: int = 0) -> str:
    """One caption of ``scene`` (its style, if any, is stated last); ``seed`` picks the phrasing."""
    rng = random.Random(seed)
    objs = [describe(o) for o in scene.objects]
    placed = [f"{describe(o)} at the {scene.position_name(o)}" for o in scene.objects]
    join = lambda xs: xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]
    bg = _background(scene)
    if not objs:  # e.g. after removing the only object
        text = rng.choice(("{bg} with no objects.", "An empty picture: {bg}.")).format(bg=bg)
    else:
        text = rng.choice(TEMPLATES).format(
            objects=join(objs), objects_placed=join(placed), background=bg, background_cap=bg[0].upper() + bg[1:]
        )
    if scene.style != "none":
        text = text.rstrip(".") + STYLE_SUFFIX[scene.style] + "."
    return text[0].upper() + text[1:]


@functools.cache  # the trainer asks every step; a spec is frozen
def caption_words(spec) -> frozenset[str]:
    """Every word a caption of ``spec``'s world can use (lower case): the vocabulary the teacher's text encoder
    learnt. Instruction words outside it (verbs, prepositions) are the ones a caption-trained encoder never saw."""
    texts = [*TEMPLATES, "{bg} with no objects.", "An empty picture: {bg}.", *(STYLE_SUFFIX[s] for s in spec.styles)]
    texts += ["a background", "at the", "and"]  # _background(), the placed objects, join()
    texts += [*spec.shapes, *spec.colors, *(TEXTURE_ADJ[t] for t in spec.textures), *(n for n, _ in spec.sizes)]
    texts += [spec.cell_name(r, c) for r in range(spec.grid) for c in range(spec.grid)]
    return frozenset(w for t in texts for w in re.findall(r"[a-z]+", re.sub(r"\{[a-z_]+\}", " ", t.lower())))


def describe_placed(scene: Scene) -> str:
    """A fixed-order, fully explicit description: every object with its cell, then background and style."""
    objs = sorted(scene.objects, key=lambda o: (o.row, o.col))
    parts = [f"{describe(o)} at the {scene.position_name(o)}" for o in objs] or ["no objects"]
    text = "; ".join(parts) + f"; {_background(scene)}"
    return text + (STYLE_SUFFIX[scene.style] if scene.style != "none" else "") + "."


def parse_placed(text: str, spec) -> Scene:
    """The scene a :func:`describe_placed` text describes (its inverse; the spacing of generated text — "left ;"
    — is accepted). Raises :class:`SceneError` naming the part it cannot read."""
    norm = " ".join(text.replace(";", " ; ").replace(",", " , ").replace(".", " . ").split()).rstrip(" .")
    style = "none"
    for name, suffix in STYLE_SUFFIX.items():
        s = " ".join(suffix.replace(",", " , ").split())
        if name != "none" and s and norm.endswith(s):
            style, norm = name, norm[: -len(s)].rstrip()
    parts = [p.strip() for p in norm.split(";")]
    adj_to_texture = {v: k for k, v in TEXTURE_ADJ.items()}
    cells = {spec.cell_name(r, c): (r, c) for r in range(spec.grid) for c in range(spec.grid)}
    sizes = [n for n, _ in spec.sizes]
    words = parts[-1].split()
    if len(words) != 4 or words[0] != "a" or words[3] != "background" or words[1] not in adj_to_texture:
        raise SceneError(f"caption: cannot read the background from {parts[-1]!r}")
    if words[2] not in spec.colors:
        raise SceneError(f"caption: background colour {words[2]!r} is not in world {spec.name!r}")
    objects = []
    for part in parts[:-1]:
        if part == "no objects":
            continue
        head, sep, where = part.partition(" at the ")
        w = head.split()
        texture = "solid"
        if len(w) == 5 and w[2] in adj_to_texture:
            texture = adj_to_texture[w.pop(2)]
        ok = sep and len(w) == 4 and w[0] == "a" and w[1] in sizes and w[2] in spec.colors and w[3] in spec.shapes
        if not ok or where not in cells or texture not in spec.textures:
            raise SceneError(f"caption: cannot read an object of world {spec.name!r} from {part!r}")
        objects.append(Obj(w[3], w[2], texture, w[1], *cells[where]))
    return Scene(words[2], adj_to_texture[words[1]], tuple(objects), style, spec)
