"""The shapes world: procedural scenes, a deterministic anti-aliased renderer, captions, edit instructions with
exact ground truth, judge VQA, and the datasets and benchmark built from them.

A verifiable miniature of the paper's setting: every scene is a small JSON record, a seed reproduces it, and
every edit comes with its edited scene and change mask (for evaluation only — never for the editor's training).
"""

from pairfree.world.captions import caption
from pairfree.world.edits import EDIT_TYPES, Edit, EditError, apply_edit, render_edits, sample_edit
from pairfree.world.render import render
from pairfree.world.scene import COLORS, SHAPES, SIZES, STYLES, TEXTURES, Obj, Scene, SceneError, sample_scene
from pairfree.world.spec import FULL, LITE, SpecError, WorldSpec, get_spec

__all__ = [
    "COLORS",
    "EDIT_TYPES",
    "FULL",
    "LITE",
    "SHAPES",
    "SIZES",
    "STYLES",
    "TEXTURES",
    "Edit",
    "EditError",
    "Obj",
    "Scene",
    "SceneError",
    "SpecError",
    "WorldSpec",
    "apply_edit",
    "caption",
    "get_spec",
    "render",
    "render_edits",
    "sample_edit",
    "sample_scene",
]
