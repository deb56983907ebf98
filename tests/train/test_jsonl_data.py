"""`pairfree train --set data.source=jsonl`: the editor trains on a JSONL of images on disk (here shapes-world
renders written as PNG files), lists the images it had to skip, and resumes identically."""

import json

import pytest

from pairfree.cli import main as cli
from pairfree.config import load_config
from pairfree.data.records import read_records
from pairfree.data.world import write_world_jsonl
from pairfree.edit import save_image
from pairfree.train.config import TrainConfig
from pairfree.train.models import load_models
from pairfree.train.paired import PairedTrainer
from pairfree.world.render import render
from pairfree.world.scene import sample_scene
from pairfree.world.spec import FULL, LITE

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    path = write_world_jsonl(folder, 10, FULL)
    (folder / "images" / "0003.png").write_bytes(b"broken")
    return path


def write_pngs(folder, n, seed=0):
    scenes = [sample_scene(seed + i, LITE) for i in range(n)]
    for i, im in enumerate(render(scenes, 32)[0] * 2 - 1):
        save_image(im, folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not an image")


def _metrics(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_trains_on_jsonl_and_resumes_identically(tiny_models, jsonl, tmp_path):
    data = {"data.source": "jsonl", "data.path": str(jsonl), "loss.do_nothing_prob": 0.0}
    run = lambda out, **more: cli(["train", "--config", "configs/shapes/editor.yaml", "--set",
                                   *tiny_overrides(tiny_models, out, **data, **more)])  # fmt: skip
    assert run(tmp_path / "full", sample_every=5) == 0
    rows = _metrics(tmp_path / "full")
    assert [r["stage"] for r in rows] == ["copy"] * 2 + ["edit"] * 3 and all("vlm" in r for r in rows[2:])
    assert rows[-1]["skipped_images"] == 1
    listed = json.loads((tmp_path / "full" / "skipped_images.json").read_text())
    assert list(listed) == [str(jsonl.parent / "images" / "0003.png")]
    assert (tmp_path / "full" / "samples").is_dir()
    record = json.loads((tmp_path / "full" / "model" / "train.json").read_text())
    assert record["config"]["data"]["source"] == "jsonl"

    assert run(tmp_path / "cut", sample_every=5, steps=1) == 0  # stops after step 3 with a checkpoint
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--resume", "--set",
                *tiny_overrides(tiny_models, tmp_path / "cut", **data, sample_every=5)]) == 0  # fmt: skip
    assert _metrics(tmp_path / "cut") == rows


def test_jsonl_config_errors_are_one_line(tiny_models, jsonl, tmp_path, capsys):
    sets = tiny_overrides(tiny_models, tmp_path, **{"data.source": "jsonl"})
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 2
    assert "data.path: required with data.source=jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png"}\n')
    sets = tiny_overrides(tiny_models, tmp_path, **{"data.source": "jsonl", "data.path": str(bad)})
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: missing field(s)" in err and err.count("\n") == 1  # before any model loads
    cfg = load_config(
        TrainConfig,
        "configs/shapes/editor.yaml",
        tiny_overrides(tiny_models, tmp_path, **{"data.source": "jsonl", "data.path": str(jsonl)}),
    )
    with pytest.raises(ValueError, match="needs the shapes world"):
        PairedTrainer(cfg, load_models(cfg.models))


def test_build_end_to_end_into_training(tiny_models, tmp_path, capsys):
    write_pngs(tmp_path / "images", 16)  # shapes-world renders stand in for photographs
    out = tmp_path / "data"
    argv = ["data", "build", "--images", str(tmp_path / "images"), "--out", str(out), "--llm", "template",
            "--vlm", "lite-judge", "--checks", "object", "--device", "cpu", "--batch", "6"]  # fmt: skip
    assert cli([*argv, "--limit", "7"]) == 0
    first = [json.loads(x)["image"] for x in (out / "work.jsonl").read_text().splitlines()]
    assert len(first) == 7
    assert cli(argv) == 0  # resumable: the first seven are not redone
    rows = [json.loads(x) for x in (out / "work.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows[:7]] == first and len(rows) == 17
    report = json.loads((out / "report.json").read_text())
    assert list(report["skipped_images"]) == ["../images/broken.png"]
    assert "not a readable image" in report["skipped_images"]["../images/broken.png"]
    counts = report["per_type"]
    assert sum(c["proposed"] for c in counts.values()) == 2 * 16
    assert all(c["proposed"] == c["malformed"] + sum(c["rejected"].values()) + c["kept"] for c in counts.values())
    records = read_records(out / "edits.jsonl")
    assert len(records) == report["records"] > 0
    assert all(r.provenance["vlm"] == "lite-judge" and r.source_caption for r in records)
    caption_rows = [r for r in rows if r.get("caption_by") == "lite-judge"]
    assert len(caption_rows) == 16  # every readable image captioned by the VLM (no .txt captions given)
    assert "| remove |" in (out / "report.md").read_text()

    sets = tiny_overrides(
        tiny_models, tmp_path / "run", **{"data.source": "jsonl", "data.path": str(out / "edits.jsonl")}
    )
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
