"""Scenes of the shapes world: a background and a few objects on a grid of cells, as plain records.

A scene carries its :class:`~pairfree.world.spec.WorldSpec` (the vocabulary and grid it is drawn from). Objects sit
in distinct cells (so they never overlap and "top left" / "move right" are exact); each has a shape, colour, texture
and size. A scene serialises to JSON and a seed reproduces it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

from pairfree.world.spec import FULL, PALETTE, WorldSpec

# The full world's vocabulary (kept for callers that name it); a scene's own vocabulary is ``scene.spec``.
SHAPES, TEXTURES, STYLES = FULL.shapes, FULL.textures, FULL.styles
COLORS = {c: PALETTE[c] for c in FULL.colors}
SIZES = dict(FULL.sizes)


class SceneError(ValueError):
    """A malformed scene record; the message names the field, what was expected and what was found."""


@dataclass(frozen=True)
class Obj:
    """One object. ``row``/``col`` index the spec's grid (0 = top / left)."""

    shape: str
    color: str
    texture: str
    size: str
    row: int
    col: int


@dataclass(frozen=True)
class Scene:
    """A background (colour, texture), its objects (drawn in list order), a global style, and the world it
    belongs to (not serialised: files name their spec once, in a manifest or ``world.json``)."""

    background: str
    background_texture: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    style: str = "none"
    spec: WorldSpec = field(default=FULL, repr=False)

    def position_name(self, o: Obj) -> str:
        """Where ``o`` sits, in words: "top left", "center"..."""
        return self.spec.cell_name(o.row, o.col)

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "background_texture": self.background_texture,
            "objects": [asdict(o) for o in self.objects],
            "style": self.style,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(d: dict, where: str = "scene", spec: WorldSpec = FULL) -> Scene:
        """Parse and validate against ``spec``; errors name the field (``where`` prefixes it, e.g. a file name)."""
        if not isinstance(d, dict):
            raise SceneError(f"{where}: expected an object, got {type(d).__name__}")
        _check_keys(d, {"background", "background_texture", "objects"}, where, optional={"style"})
        _check_choice(d["background"], spec.colors, f"{where}.background")
        _check_choice(d.get("style", "none"), spec.styles, f"{where}.style")
        _check_choice(d["background_texture"], spec.textures, f"{where}.background_texture")
        if not isinstance(d["objects"], list):
            raise SceneError(f"{where}.objects: expected a list, got {type(d['objects']).__name__}")
        if len(d["objects"]) > spec.max_objects:
            raise SceneError(f"{where}.objects: at most {spec.max_objects} objects, got {len(d['objects'])}")
        objs, cells = [], set()
        for i, o in enumerate(d["objects"]):
            obj = obj_from_dict(o, f"{where}.objects[{i}]", spec)
            if (obj.row, obj.col) in cells:
                raise SceneError(f"{where}.objects[{i}]: cell (row={obj.row}, col={obj.col}) is already taken")
            cells.add((obj.row, obj.col))
            objs.append(obj)
        return Scene(d["background"], d["background_texture"], tuple(objs), d.get("style", "none"), spec)

    @staticmethod
    def from_json(text: str, where: str = "scene", spec: WorldSpec = FULL) -> Scene:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SceneError(f"{where}: not valid JSON ({e})") from None
        return Scene.from_dict(d, where, spec)


def obj_from_dict(o: dict, where: str = "object", spec: WorldSpec = FULL) -> Obj:
    """Parse and validate one object record against ``spec``; errors name the field and list the allowed values."""
    if not isinstance(o, dict):
        raise SceneError(f"{where}: expected an object, got {type(o).__name__}")
    _check_keys(o, {"shape", "color", "texture", "size", "row", "col"}, where)
    _check_choice(o["shape"], spec.shapes, f"{where}.shape")
    _check_choice(o["color"], spec.colors, f"{where}.color")
    _check_choice(o["texture"], spec.textures, f"{where}.texture")
    _check_choice(o["size"], spec.size_names, f"{where}.size")
    for k in ("row", "col"):
        if not isinstance(o[k], int) or not 0 <= o[k] < spec.grid:
            raise SceneError(f"{where}.{k}: expected an integer in 0..{spec.grid - 1}, got {o[k]!r}")
    return Obj(**o)


def _check_keys(d: dict, keys: set[str], where: str, optional: set[str] = frozenset()) -> None:
    missing, extra = keys - d.keys(), d.keys() - keys - optional
    if missing:
        raise SceneError(f"{where}: missing field(s) {sorted(missing)}")
    if extra:
        raise SceneError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(keys | optional)}")


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    """Grid cells without an object, in row-major order."""
    taken, g = {(o.row, o.col) for o in scene.objects}, scene.spec.grid
    return [(r, c) for r in range(g) for c in range(g) if (r, c) not in taken]


def _check_choice(value, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise SceneError(f"{where}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def sample_object(
    rng: random.Random, row: int, col: int, avoid_color: str | None = None, spec: WorldSpec = FULL
) -> Obj:
    colors = [c for c in spec.colors if c != avoid_color]
    return Obj(
        rng.choice(spec.shapes), rng.choice(colors), rng.choice(spec.textures), rng.choice(spec.size_names), row, col
    )


def sample_scene(seed: int, spec: WorldSpec = FULL) -> Scene:
    """The scene of ``seed`` in ``spec``: background plus ``min_objects..max_objects`` objects in distinct cells,
    colours distinct from the background so every object is visible."""
    rng = random.Random(seed)
    background = rng.choice(spec.colors)
    n = rng.randint(spec.min_objects, spec.max_objects)
    cells = rng.sample([(r, c) for r in range(spec.grid) for c in range(spec.grid)], n)
    objects = tuple(sample_object(rng, r, c, avoid_color=background, spec=spec) for r, c in cells)
    return Scene(background, rng.choice(spec.textures), objects, "none", spec)
