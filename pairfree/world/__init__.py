"""The shapes world: procedural scenes, a deterministic anti-aliased renderer, and captions.

A verifiable miniature of the paper's setting: every scene is a small JSON record, a seed reproduces it, and
renders come with exact per-object masks (for evaluation only — never for the editor's training).
"""

from pairfree.world.captions import caption
from pairfree.world.render import render
from pairfree.world.scene import COLORS, SHAPES, SIZES, TEXTURES, Obj, Scene, SceneError, sample_scene

__all__ = ["COLORS", "SHAPES", "SIZES", "TEXTURES", "Obj", "Scene", "SceneError", "caption", "render", "sample_scene"]
