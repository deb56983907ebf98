"""Inference (``pairfree edit``, ``EditPipeline``) and the benchmark metrics against the ground truth."""

import json

import pytest
import torch
from PIL import Image

from pairfree import pretrained
from pairfree.cli import main as cli
from pairfree.edit import EditPipeline, ImageError, load_image
from pairfree.eval.editing import measure, psnr
from pairfree.world.bench import load_bench, save_bench
from pairfree.world.spec import FULL

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def editor_dir(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("editor")
    sets = tiny_overrides(tiny_models, out, copy_steps=1, steps=1)
    assert cli(["train", "--config", "configs/shapes/editor.yaml", "--set", *sets]) == 0
    return out / "model"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return save_bench(tmp_path_factory.mktemp("bench"), n_per_type=6, seed=3, spec=FULL)  # the shapes-* models


@pytest.fixture(scope="module")
def bench(bench_dir):
    return load_bench(bench_dir)


def test_edit_cli_resizes_and_refuses_unreadable_files(editor_dir, tmp_path, capsys):
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "in.png")
    code = cli(["edit", "--model", str(editor_dir), "--image", str(tmp_path / "in.png"), "--instruction",
                "make the circle blue", "--out", str(tmp_path / "out.png")])  # fmt: skip
    assert code == 0
    assert "resized 50x40 to the model's 32x32" in capsys.readouterr().out
    assert Image.open(tmp_path / "out.png").size == (32, 32)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code = cli(["edit", "--model", str(editor_dir), "--image", str(tmp_path / "bad.png"), "--instruction", "x"])
    assert code == 2 and "bad.png: not a readable image" in capsys.readouterr().err
    code = cli(["edit", "--model", str(tmp_path), "--image", str(tmp_path / "in.png"), "--instruction", "x"])
    assert code == 2 and "editor.json: missing" in capsys.readouterr().err
    if not torch.cuda.is_available():
        code = cli(["edit", "--model", str(editor_dir), "--image", str(tmp_path / "in.png"), "--instruction", "x",
                    "--device", "cuda"])  # fmt: skip
        assert code == 2 and "device: 'cuda' asked for, but torch" in capsys.readouterr().err


def test_pipeline_api_matches_the_cli_path(editor_dir, tmp_path):
    pipe = EditPipeline.from_pretrained(editor_dir)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "in.png")
    image, note = load_image(tmp_path / "in.png", 32)
    assert note is None
    out = pipe(image, "make the background red", seed=1)
    assert out.shape == (3, 32, 32) and out.abs().max() <= 1
    torch.testing.assert_close(out, pipe(tmp_path / "in.png", "make the background red", seed=1))
    assert pipe.to("cpu") is pipe
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:  # runs where the model is (its seeded noise is drawn there)
        out_dev = pipe.to(device)(image, "make the background red", seed=1)
        assert out_dev.device.type == device and out_dev.shape == (3, 32, 32)
    pipe.to("cpu")
    with pytest.raises(ImageError, match=r"image shape \(3, 16, 16\), expected \(3, 32, 32\)"):
        pipe(torch.zeros(3, 16, 16), "x")


def test_metrics_against_ground_truth(bench):
    """The GT target scores as an edit; the unedited input never does; preservation counts what it keeps."""
    evaluator = pretrained("shapes-evaluator")
    oracle = measure(evaluator, bench, bench.targets * 2 - 1)["overall"]
    identity = measure(evaluator, bench, bench.inputs * 2 - 1)["overall"]
    # the evaluator's own reading errors (styled scenes mostly) put the ceiling below 1
    assert oracle["edit success"] >= 0.95 and oracle["complete edit"] >= 0.8 and oracle["PSNR outside mask"] == 99.0
    assert identity["edit success"] == 0.0 and identity["complete edit"] == 0.0
    assert identity["preservation"] >= 0.9 and identity["L1 outside mask"] < 1e-6
    # a planted change outside the mask lowers PSNR to the closed form: 10·log10(1 / 0.1²) = 20 dB
    a = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    assert psnr(a + 0.1, a, ~mask).item() == pytest.approx(20.0, abs=1e-4)
    assert torch.isnan(psnr(a, a, torch.zeros_like(mask)))


def test_eval_cli_writes_tables(editor_dir, bench, bench_dir, tmp_path, capsys):
    code = cli(["eval", "--model", str(editor_dir), "--bench", str(bench_dir),
                "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert set(res) == {"editor", "identity", "teacher (edited caption)", "ground truth (ceiling)"}
    assert set(res["editor"]) == {"overall", *(e.kind for e in bench.edits)}
    table = (tmp_path / "metrics.md").read_text()
    assert "| **identity** | overall | 48 |" in table and (tmp_path / "grid.png").is_file()
    assert "complete edit" in capsys.readouterr().out


def test_eval_card_records_training_and_the_benchmark_table(editor_dir, bench_dir, tmp_path, capsys):
    """``pairfree eval --card`` writes the editor's MODEL_CARD.md: its training record (``train.json``, written
    by ``pairfree train``) and the measured table, the same numbers as metrics.json."""
    train = json.loads((editor_dir / "train.json").read_text())
    assert (train["copy_steps"], train["edit_steps"]) == (1, 1) and train["config"]["models"]["resolution"] == 32
    code = cli(["eval", "--model", str(editor_dir), "--bench", str(bench_dir), "--out", str(tmp_path),
                "--baselines", "identity", "--card"])  # fmt: skip
    assert code == 0
    card = (editor_dir / "MODEL_CARD.md").read_text()
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert "1 reference-copy + 1 pair-free editing" in card
    assert train["ranks"] == 1 and "per rank" not in card
    assert f"| **editor** | overall | 48 | {res['editor']['overall']['complete edit']:.3f} |" in card
    complete = res["editor"]["overall"]["complete edit"]  # a 2-step random editor: far below the 0.80 goal
    assert f"| complete edit | {complete:.3f} | 0.8 | **no** |" in card
    assert cli(["eval", "--bench", str(bench_dir), "--out", str(tmp_path), "--card"]) == 2
    assert "--card: needs --model" in capsys.readouterr().err


def test_shipped_editor_name_when_absent_is_a_clear_error():
    from pairfree.shipped import WEIGHTS_DIR

    if (WEIGHTS_DIR / "shapes-editor").is_dir():
        assert pretrained("shapes-editor").resolution == 32
    else:
        with pytest.raises(FileNotFoundError, match="shapes-editor: not found"):
            pretrained("shapes-editor")


def test_card_goal_says_met_only_when_both_bars_are_reached():
    from pairfree.eval.editing import goal_lines

    def verdict(complete, psnr_out):
        lines = goal_lines({"editor": {"overall": {"complete edit": complete, "PSNR outside mask": psnr_out}}})
        return [line.rsplit("|", 2)[-2].strip() for line in lines if line.startswith(("| complete", "| PSNR"))]

    assert verdict(0.85, 31.0) == ["yes", "yes"]
    assert verdict(0.79, 31.0) == ["**no**", "yes"]
    assert verdict(0.80, 24.9) == ["yes", "**no**"]
    assert goal_lines({"identity": {"overall": {}}}) == []
