"""Captions of scenes for text-to-image training: several phrasings, each naming every object and the background."""

from __future__ import annotations

import random

from pairfree.world.scene import Obj, Scene


def describe(o: Obj, rng: random.Random | None = None) -> str:
    """``a large striped red star`` (texture word omitted for solid, sometimes stated)."""
    tex = {"solid": "", "stripes": "striped ", "dots": "dotted ", "checker": "checkered "}[o.texture]
    return f"a {o.size} {tex}{o.color} {o.shape}"


def _background(scene: Scene) -> str:
    tex = {"solid": "plain", "stripes": "striped", "dots": "dotted", "checker": "checkered"}[scene.background_texture]
    return f"a {tex} {scene.background} background"


TEMPLATES = (
    "{objects} on {background}.",
    "{background_cap} with {objects}.",
    "A picture of {objects}, on {background}.",
    "{objects_placed}; {background}.",
)


def caption(scene: Scene, seed: int = 0) -> str:
    """One caption of ``scene``; ``seed`` picks the phrasing deterministically."""
    rng = random.Random(seed)
    objs = [describe(o) for o in scene.objects]
    placed = [f"{describe(o)} at the {o.position_name()}" for o in scene.objects]
    join = lambda xs: xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]
    bg = _background(scene)
    text = rng.choice(TEMPLATES).format(
        objects=join(objs), objects_placed=join(placed), background=bg, background_cap=bg[0].upper() + bg[1:]
    )
    return text[0].upper() + text[1:]
