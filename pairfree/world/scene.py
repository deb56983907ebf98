"""Scenes of the shapes world: a background and 1–4 objects on a 3×3 grid of cells, as plain records.

Objects sit in distinct cells (so they never overlap and "top left" / "move right" are exact); each has a
shape, colour, texture and size. A scene serialises to JSON and a seed reproduces it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "heart")
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "pink": (245, 130, 190),
    "brown": (125, 75, 35),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
TEXTURES = ("solid", "stripes", "dots", "checker")
STYLES = ("none", "grayscale", "invert", "pixelate", "outline")  # global looks, applied after drawing
SIZES = {"small": 0.09, "medium": 0.12, "large": 0.155}  # half-extent as a fraction of the canvas
GRID = 3  # cells per side; cell (row, col) has its centre at ((col + .5) / 3, (row + .5) / 3)
ROW_NAMES, COL_NAMES = ("top", "middle", "bottom"), ("left", "center", "right")
MAX_OBJECTS = 4


class SceneError(ValueError):
    """A malformed scene record; the message names the field, what was expected and what was found."""


@dataclass(frozen=True)
class Obj:
    """One object. ``row``/``col`` index the 3×3 grid (0 = top / left)."""

    shape: str
    color: str
    texture: str
    size: str
    row: int
    col: int

    def position_name(self) -> str:
        if (self.row, self.col) == (1, 1):
            return "center"
        if self.row == 1:
            return f"middle {COL_NAMES[self.col]}"
        if self.col == 1:
            return f"{ROW_NAMES[self.row]} center"
        return f"{ROW_NAMES[self.row]} {COL_NAMES[self.col]}"


@dataclass(frozen=True)
class Scene:
    """A background (colour, texture), its objects (drawn in list order) and a global style."""

    background: str
    background_texture: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    style: str = "none"

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
    def from_dict(d: dict, where: str = "scene") -> Scene:
        """Parse and validate; errors name the field (``where`` prefixes it, e.g. a file name)."""
        if not isinstance(d, dict):
            raise SceneError(f"{where}: expected an object, got {type(d).__name__}")
        _check_keys(d, {"background", "background_texture", "objects"}, where, optional={"style"})
        _check_choice(d["background"], tuple(COLORS), f"{where}.background")
        _check_choice(d.get("style", "none"), STYLES, f"{where}.style")
        _check_choice(d["background_texture"], TEXTURES, f"{where}.background_texture")
        if not isinstance(d["objects"], list):
            raise SceneError(f"{where}.objects: expected a list, got {type(d['objects']).__name__}")
        if len(d["objects"]) > MAX_OBJECTS:
            raise SceneError(f"{where}.objects: at most {MAX_OBJECTS} objects, got {len(d['objects'])}")
        objs, cells = [], set()
        for i, o in enumerate(d["objects"]):
            obj = obj_from_dict(o, f"{where}.objects[{i}]")
            if (obj.row, obj.col) in cells:
                raise SceneError(f"{where}.objects[{i}]: cell (row={obj.row}, col={obj.col}) is already taken")
            cells.add((obj.row, obj.col))
            objs.append(obj)
        return Scene(d["background"], d["background_texture"], tuple(objs), d.get("style", "none"))

    @staticmethod
    def from_json(text: str, where: str = "scene") -> Scene:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SceneError(f"{where}: not valid JSON ({e})") from None
        return Scene.from_dict(d, where)


def obj_from_dict(o: dict, where: str = "object") -> Obj:
    """Parse and validate one object record; errors name the field and list the allowed values."""
    if not isinstance(o, dict):
        raise SceneError(f"{where}: expected an object, got {type(o).__name__}")
    _check_keys(o, {"shape", "color", "texture", "size", "row", "col"}, where)
    _check_choice(o["shape"], SHAPES, f"{where}.shape")
    _check_choice(o["color"], tuple(COLORS), f"{where}.color")
    _check_choice(o["texture"], TEXTURES, f"{where}.texture")
    _check_choice(o["size"], tuple(SIZES), f"{where}.size")
    for k in ("row", "col"):
        if not isinstance(o[k], int) or not 0 <= o[k] < GRID:
            raise SceneError(f"{where}.{k}: expected an integer in 0..{GRID - 1}, got {o[k]!r}")
    return Obj(**o)


def _check_keys(d: dict, keys: set[str], where: str, optional: set[str] = frozenset()) -> None:
    missing, extra = keys - d.keys(), d.keys() - keys - optional
    if missing:
        raise SceneError(f"{where}: missing field(s) {sorted(missing)}")
    if extra:
        raise SceneError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(keys | optional)}")


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    """Grid cells without an object, in row-major order."""
    taken = {(o.row, o.col) for o in scene.objects}
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]


def _check_choice(value, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise SceneError(f"{where}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def sample_object(rng: random.Random, row: int, col: int, avoid_color: str | None = None) -> Obj:
    colors = [c for c in COLORS if c != avoid_color]
    return Obj(rng.choice(SHAPES), rng.choice(colors), rng.choice(TEXTURES), rng.choice(tuple(SIZES)), row, col)


def sample_scene(seed: int, min_objects: int = 1, max_objects: int = MAX_OBJECTS) -> Scene:
    """The scene of ``seed``: background plus 1–4 objects in distinct cells, colours distinct from the
    background so every object is visible."""
    rng = random.Random(seed)
    background = rng.choice(tuple(COLORS))
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
    objects = tuple(sample_object(rng, r, c, avoid_color=background) for r, c in cells)
    return Scene(background, rng.choice(TEXTURES), objects)
