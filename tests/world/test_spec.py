"""World specs: validated values, saved and loaded, counted exactly, and carried through edits, questions and the
benchmark; a model is refused on a benchmark of another spec."""

import itertools
import json

import pytest

from pairfree.world.bench import load_bench, save_bench
from pairfree.world.edits import EDIT_TYPES, sample_edit
from pairfree.world.scene import Obj, Scene
from pairfree.world.spec import FULL, LITE, SpecError, WorldSpec, check_same, get_spec, load_spec, save_spec
from pairfree.world.vqa import pair_question, single_question

TINY = WorldSpec(
    name="tiny",
    grid=2,
    shapes=("circle", "square"),
    colors=("red", "green", "blue"),
    textures=("solid", "stripes"),
    sizes=(("small", 0.14), ("large", 0.21)),
    styles=("none", "invert"),
    min_objects=1,
    max_objects=2,
)


def test_distinct_scenes_matches_enumeration():
    """The closed form against brute force: every (background, texture, style, objects in cells) with object colours
    other than the background's."""
    count = 0
    cells = [(r, c) for r in range(TINY.grid) for c in range(TINY.grid)]
    for bg, _texture, _style in itertools.product(TINY.colors, TINY.textures, TINY.styles):
        objects = [o for o in itertools.product(TINY.shapes, TINY.colors, TINY.textures, TINY.size_names) if o[1] != bg]
        for n in range(TINY.min_objects, TINY.max_objects + 1):
            for placed in itertools.combinations(cells, n):
                count += len(objects) ** n
                assert len(placed) == n
    assert TINY.distinct_scenes() == count


@pytest.mark.parametrize("spec", [FULL, LITE, TINY], ids=lambda s: s.name)
def test_round_trip_through_dict_file_and_yaml(spec, tmp_path):
    assert WorldSpec.from_dict(spec.to_dict()) == spec
    assert load_spec(save_spec(tmp_path, spec).parent) == spec
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.to_dict()))
    assert get_spec(str(path)) == spec


def test_named_specs_and_missing_world_json(tmp_path):
    assert get_spec("lite") is LITE and get_spec("full") is FULL and get_spec(None) is FULL
    assert load_spec(tmp_path) == FULL  # models saved before specs existed were trained on the full world
    with pytest.raises(SpecError, match="unknown spec 'tiny'"):
        get_spec("tiny")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(grid=5), "grid: expected one of"),
        (dict(shapes=("circle", "hexagon")), "shapes: expected at least 2 distinct values"),
        (dict(textures=("stripes", "solid")), "must start with 'solid'"),
        (dict(max_objects=4), "max_objects < 4 cells"),
        (dict(sizes=(("huge", 0.4),)), "sizes: half-extents must lie in"),
    ],
)
def test_bad_spec_names_the_field(change, message):
    with pytest.raises(SpecError, match=message):
        WorldSpec(**{**TINY.__dict__, **change})


def test_unknown_and_missing_fields_are_errors():
    with pytest.raises(SpecError, match=r"unknown field\(s\) \['lighting'\]"):
        WorldSpec.from_dict({**LITE.to_dict(), "lighting": "dim"})
    d = LITE.to_dict()
    del d["grid"]
    with pytest.raises(SpecError, match=r"missing field\(s\) \['grid'\]"):
        WorldSpec.from_dict(d)


@pytest.mark.parametrize("spec", [LITE, TINY], ids=lambda s: s.name)
def test_edits_and_questions_stay_in_their_spec(spec):
    """Every sub-type samples in a small spec, and source, target and every question's scenes keep to it."""
    for k, kind in enumerate(EDIT_TYPES):
        for i in range(15):
            e = sample_edit(1000 * k + i, kind=kind, spec=spec)
            for sc in (e.source, e.target):
                assert sc.spec == spec and len(sc.objects) <= spec.max_objects and sc.style in spec.styles
                assert all(o.shape in spec.shapes and o.color in spec.colors for o in sc.objects)
    for s in range(100):
        for item in (single_question(s, s % 2 == 0, spec=spec), pair_question(s, s % 2 == 0, spec=spec)):
            assert all(sc.spec == spec for sc in item.scenes)


def test_lite_cell_names_are_the_two_by_two_grid():
    assert [LITE.cell_name(r, c) for r in range(2) for c in range(2)] == [
        "top left",
        "top right",
        "bottom left",
        "bottom right",
    ]
    sc = Scene("blue", "solid", (Obj("circle", "red", "solid", "large", 1, 0),), spec=LITE)
    assert sc.position_name(sc.objects[0]) == "bottom left"


def test_benchmark_names_its_spec_and_reloads_in_it(tmp_path):
    save_bench(tmp_path / "b", n_per_type=2, spec=LITE)
    bench = load_bench(tmp_path / "b")
    assert bench.spec == LITE and all(e.source.spec == LITE for e in bench.edits)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["world"]["name"] == "lite"


def test_a_model_is_refused_on_a_benchmark_of_another_spec(tmp_path):
    """`pairfree eval` of an editor trained on the full world, on a lite benchmark: a one-line error naming both
    worlds, before any model is run."""
    from pairfree.cli import main

    save_bench(tmp_path / "bench", n_per_type=1, spec=LITE)
    editor = tmp_path / "editor"
    save_spec(editor, FULL)
    with pytest.raises(SpecError, match=r"made for world 'full' but the benchmark .* is world 'lite'"):
        from pairfree.eval.editing import evaluate

        evaluate(editor, tmp_path / "bench", tmp_path / "out")
    assert main(["eval", "--model", str(editor), "--bench", str(tmp_path / "bench"), "--out", str(tmp_path)]) == 2
    with pytest.raises(SpecError, match="they differ in name, grid"):
        check_same(FULL, "a", LITE, "b")
