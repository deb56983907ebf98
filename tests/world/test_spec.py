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


def test_bars_are_read_from_the_metrics_files(tmp_path):
    """`pairfree world bars` copies each value from the file that measured it, with the card's command, and judges
    it against its threshold (>= for quality, <= for minutes)."""
    from pairfree.eval.bars import BARS, collect, write_bars

    weights, ys = tmp_path / "weights", tmp_path / "yardstick"
    card = "# x\n\n## Reproduce\n\n```bash\npairfree pretrain {kind} --config configs/lite/{kind}.yaml\n```\n"
    files = {
        "lite-evaluator": {"min_attribute": 1.0, "scene_vs_noise_sigma": {"0.1": 0.9}},
        "lite-teacher": {"caption attribute match": 0.91, "minutes": 95.0},
        "lite-judge": {"single accuracy": 0.98, "pair accuracy": 0.5, "verification AUC (benchmark)": 0.99},
    }
    for name, metrics in files.items():
        (weights / name).mkdir(parents=True)
        (weights / name / "metrics.json").write_text(json.dumps(metrics))
        (weights / name / "MODEL_CARD.md").write_text(card.format(kind=name.split("-")[1]))
    ys.mkdir()
    per_type = {k: {"complete edit": v} for k, v in (("overall", 0.85), ("color", 0.4), ("add", 1.0))}
    (ys / "metrics.json").write_text(
        json.dumps({"editor": per_type, "ground truth (ceiling)": {"overall": {"complete edit": 0.99}}})
    )
    (ys / "command.txt").write_text("pairfree eval --model m --bench b\n")
    (ys / "train.json").write_text(json.dumps({"wall_min": 29.0, "command": "python -m pairfree.train.paired"}))
    rows = write_bars(tmp_path / "bars.json", collect(weights, "lite", ys))
    assert set(rows) == set(BARS)
    assert rows["evaluator_noisy_scene"] == {
        "value": 0.9,
        "threshold": 0.95,
        "sense": ">=",
        "met": False,
        "source": str(weights / "lite-evaluator" / "metrics.json"),
        "command": "pairfree pretrain evaluator --config configs/lite/evaluator.yaml",
    }
    assert rows["teacher_minutes"]["met"] is False and rows["yardstick_minutes"]["met"] is True
    assert rows["yardstick_min_subtype"]["value"] == 0.4 and rows["judge_two_image"]["met"] is False
    assert json.loads((tmp_path / "bars.json").read_text()) == rows


def test_editor_models_of_another_world_are_refused(tmp_path):
    """Training on the lite world with a teacher saved for the full world stops before any step."""
    from pairfree.train.config import ModelsConfig
    from pairfree.train.models import load_models

    teacher = tmp_path / "teacher"
    save_spec(teacher, FULL)
    with pytest.raises(
        SpecError, match=r"models.teacher .* was made for world 'full' but the run's world is world 'lite'"
    ):
        load_models(ModelsConfig(teacher=str(teacher), judge=str(teacher)), world=LITE)


def test_an_old_benchmark_is_refused_with_the_command_that_rewrites_it(tmp_path):
    from pairfree.world.scene import SceneError

    save_bench(tmp_path / "b", n_per_type=1, spec=LITE)
    manifest = tmp_path / "b" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 2}))
    with pytest.raises(SceneError, match=r"version: expected 3, got 2 \(rewrite it with `pairfree world bench"):
        load_bench(tmp_path / "b")
