"""Captions of scenes for text-to-image training: several phrasings, each naming every object and the background."""

from __future__ import annotations

import random

from pairfree.world.scene import Obj, Scene

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


def describe_placed(scene: Scene) -> str:
    """A fixed-order, fully explicit description: every object with its cell, then background and style."""
    objs = sorted(scene.objects, key=lambda o: (o.row, o.col))
    parts = [f"{describe(o)} at the {scene.position_name(o)}" for o in objs] or ["no objects"]
    text = "; ".join(parts) + f"; {_background(scene)}"
    return text + (STYLE_SUFFIX[scene.style] if scene.style != "none" else "") + "."
