"""The world as a value: which shapes, colours, textures, sizes, styles, how many objects on how large a grid, at
what resolution.

A :class:`WorldSpec` travels with every scene (``Scene.spec``), so rendering, captions, edits, judge questions,
datasets and the benchmark all read the same vocabulary; it is saved beside every shipped model (``world.json``),
dataset and benchmark manifest, and a model is refused on a benchmark of another spec.

Two specs ship: ``full`` (3×3 grid, 8 shapes × 12 colours × 4 textures × 3 sizes, 1–4 objects, 5 styles — the
original world, for GPU runs) and ``lite`` (2×2 grid, shapes and colours that differ at a glance, 1–3 objects —
the CPU default, sized by measurement so a 2-core machine learns it; see ``docs/experiments/lite-world.md``).
A spec can also be a YAML file with the same fields.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from math import comb
from pathlib import Path

# Every colour any spec may use, with its RGB (a spec picks a subset by name).
PALETTE = {
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
ALL_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "heart")
ALL_TEXTURES = ("solid", "stripes", "dots", "checker")
ALL_STYLES = ("none", "grayscale", "invert", "pixelate", "outline")  # global looks, applied after drawing
CELL_NAMES = {  # grid -> (row names, column names)
    2: (("top", "bottom"), ("left", "right")),
    3: (("top", "middle", "bottom"), ("left", "center", "right")),
}


class SpecError(ValueError):
    """A malformed world spec, or a model and a benchmark of different specs; the message names both sides."""


@dataclass(frozen=True)
class WorldSpec:
    """One world. ``sizes``: (name, half-extent as a fraction of the canvas) pairs, smallest first; ``styles``
    starts with ``"none"``; objects sit in distinct cells of a ``grid × grid`` layout."""

    name: str
    grid: int
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    textures: tuple[str, ...]
    sizes: tuple[tuple[str, float], ...]
    styles: tuple[str, ...]
    min_objects: int = 1
    max_objects: int = 4
    resolution: int = 32

    def __post_init__(self):
        where = f"world spec {self.name!r}"
        if self.grid not in CELL_NAMES:
            raise SpecError(f"{where}.grid: expected one of {sorted(CELL_NAMES)}, got {self.grid!r}")
        for key, allowed, least in (
            ("shapes", ALL_SHAPES, 2),
            ("colors", tuple(PALETTE), 3),
            ("textures", ALL_TEXTURES, 2),  # every edit type must be possible: a texture edit needs two
            ("styles", ALL_STYLES, 1),
        ):
            values = getattr(self, key)
            bad = [v for v in values if v not in allowed]
            if bad or len(set(values)) != len(values) or len(values) < least:
                raise SpecError(
                    f"{where}.{key}: expected at least {least} distinct values from {', '.join(allowed)}, got {values}"
                )
        if self.textures[0] != "solid" or self.styles[0] != "none":
            raise SpecError(f"{where}: textures must start with 'solid' and styles with 'none'")
        if [h for _, h in self.sizes] != sorted(h for _, h in self.sizes):
            raise SpecError(f"{where}.sizes: expected smallest first, got {self.sizes}")
        if not self.sizes or any(not 0 < h < 0.5 / self.grid + 1e-9 for _, h in self.sizes):
            raise SpecError(f"{where}.sizes: half-extents must lie in (0, {0.5 / self.grid:.3f}] (inside a cell)")
        if not 1 <= self.min_objects <= self.max_objects < self.grid * self.grid:
            raise SpecError(
                f"{where}: expected 1 <= min_objects <= max_objects < {self.grid * self.grid} cells, "
                f"got {self.min_objects}..{self.max_objects}"
            )
        if self.resolution < 8:
            raise SpecError(f"{where}.resolution: expected >= 8, got {self.resolution}")

    # -- vocabulary ------------------------------------------------------------------------------------------
    @property
    def size_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.sizes)

    def half_extent(self, size: str) -> float:
        return dict(self.sizes)[size]

    def cell_name(self, row: int, col: int) -> str:
        """ "top left", "center", "bottom right" ... in this spec's grid."""
        rows, cols = CELL_NAMES[self.grid]
        if self.grid == 3 and (row, col) == (1, 1):
            return "center"
        if self.grid == 3 and row == 1:
            return f"middle {cols[col]}"
        if self.grid == 3 and col == 1:
            return f"{rows[row]} center"
        return f"{rows[row]} {cols[col]}"

    def distinct_scenes(self) -> int:
        """How many distinct scenes (background colour and texture, objects in cells, style) the spec has;
        object colours differ from the background."""
        per_object = len(self.shapes) * (len(self.colors) - 1) * len(self.textures) * len(self.sizes)
        cells = self.grid * self.grid
        layouts = sum(comb(cells, n) * per_object**n for n in range(self.min_objects, self.max_objects + 1))
        return len(self.colors) * len(self.textures) * len(self.styles) * layouts

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = {n: h for n, h in self.sizes}
        for k in ("shapes", "colors", "textures", "styles"):
            d[k] = list(d[k])
        return d

    @staticmethod
    def from_dict(d: dict, where: str = "world") -> WorldSpec:
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected a mapping of spec fields, got {type(d).__name__}")
        names = {f.name for f in fields(WorldSpec)}
        unknown = sorted(d.keys() - names)
        if unknown:
            raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(names)}")
        missing = sorted(f.name for f in fields(WorldSpec) if f.default is MISSING and f.name not in d)
        if missing:
            raise SpecError(f"{where}: missing field(s) {missing}")
        d = dict(d)
        if not isinstance(d["sizes"], dict):
            raise SpecError(f"{where}.sizes: expected a mapping name -> half-extent, got {d['sizes']!r}")
        d["sizes"] = tuple(sorted(((str(n), float(h)) for n, h in d["sizes"].items()), key=lambda s: s[1]))
        for k in ("shapes", "colors", "textures", "styles"):
            d[k] = tuple(d[k])
        return WorldSpec(**d)


FULL = WorldSpec(
    name="full",
    grid=3,
    shapes=ALL_SHAPES,
    colors=tuple(PALETTE),
    textures=ALL_TEXTURES,
    sizes=(("small", 0.09), ("medium", 0.12), ("large", 0.155)),
    styles=ALL_STYLES,
    min_objects=1,
    max_objects=4,
    resolution=32,
)
# Calibrated on a 2-core CPU (docs/experiments/lite-world.md): a 2×2 grid (16 px cells at 32²), shapes and colours
# that differ at a glance, solid or striped, two well-separated sizes, 1–3 objects, two global looks.
LITE = WorldSpec(
    name="lite",
    grid=2,
    shapes=("circle", "square", "triangle", "cross"),
    colors=("red", "yellow", "green", "blue", "white", "black"),
    textures=("solid", "stripes"),
    sizes=(("small", 0.14), ("large", 0.21)),
    styles=("none", "grayscale", "invert"),
    min_objects=1,
    max_objects=3,
    resolution=32,
)
SPECS = {s.name: s for s in (FULL, LITE)}
DEFAULT = LITE  # what the CPU commands, the demo and the benchmark use unless told otherwise


def get_spec(spec: str | dict | WorldSpec | None) -> WorldSpec:
    """A spec from its name (``lite``, ``full``), a YAML/JSON file, a dict of fields, or itself; None: ``full``
    (what a model saved before specs existed was trained on)."""
    if spec is None:
        return FULL
    if isinstance(spec, WorldSpec):
        return spec
    if isinstance(spec, dict):
        return WorldSpec.from_dict(spec)
    if spec in SPECS:
        return SPECS[spec]
    path = Path(spec)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        import yaml

        return WorldSpec.from_dict(yaml.safe_load(path.read_text()), str(path))
    raise SpecError(f"world: unknown spec {spec!r}; expected one of {', '.join(SPECS)} or a .yaml file")


def save_spec(directory: str | Path, spec: WorldSpec) -> Path:
    """Write ``world.json`` into a model or dataset directory."""
    path = Path(directory) / "world.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    return path


def load_spec(directory: str | Path) -> WorldSpec:
    """The spec a model directory was trained on (``world.json``; absent: ``full``, the only world before specs)."""
    path = Path(directory) / "world.json"
    if not path.is_file():
        return FULL
    return WorldSpec.from_dict(json.loads(path.read_text()), str(path))


def check_same(a: WorldSpec, a_what: str, b: WorldSpec, b_what: str) -> None:
    """Refuse to use ``a`` with ``b`` when they are different worlds; the message names both."""
    if a != b:
        raise SpecError(
            f"{a_what} was made for world {a.name!r} but {b_what} is world {b.name!r}: "
            f"they differ in {', '.join(k for k in a.to_dict() if a.to_dict()[k] != b.to_dict()[k])}"
        )
