"""``pairfree ablate``: each row is the full config plus its one change, resumable, and the table reports what the
evaluator measured on each row's model (means over seeds) with commands that reproduce the runs."""

import json
import shlex

import pytest

from pairfree.cli import main as cli
from pairfree.world.bench import save_bench
from pairfree.world.spec import FULL

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return save_bench(tmp_path_factory.mktemp("bench"), n_per_type=1, seed=5, spec=FULL)


def ablate(tiny_models, out, bench_dir, rows, seeds=2):
    sets = [s for s in tiny_overrides(tiny_models, out) if not s.startswith("out=")]
    argv = ["ablate", "--config", "configs/shapes/editor.yaml", "--bench", str(bench_dir), "--out", str(out / "runs"),
            "--results", str(out / "results"), "--rows", rows, "--seeds", str(seeds), "--set", *sets]  # fmt: skip
    return cli(argv)


def test_ablate_rows_tables_and_resume(tiny_models, bench_dir, tmp_path):
    assert ablate(tiny_models, tmp_path, bench_dir, "full,only_dmd,k1") == 0
    table = json.loads((tmp_path / "results" / "table.json").read_text())
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows)[:3] == ["full", "only_dmd", "k1"]
    assert {"identity", "ground truth (ceiling)"} <= set(rows) and "supervised" in table["missing"]
    assert rows["full"]["seeds"] == [0, 1] and rows["k1"]["seeds"] == [0]  # headline rows: every seed
    assert (tmp_path / "results" / "table.png").stat().st_size > 0
    assert "`only_dmd`" in (tmp_path / "results" / "table.md").read_text()

    runs = tmp_path / "runs"
    for name, seed, key, value in [("only_dmd", 0, ("loss", "vlm_weight"), 0.0), ("k1", 0, ("sampler", "steps"), 1),
                                   ("full", 1, ("loss", "vlm_weight"), 0.02)]:  # fmt: skip
        config = json.loads((runs / name / f"seed{seed}" / "model" / "train.json").read_text())["config"]
        assert config[key[0]][key[1]] == value and config["seed"] == seed
    # the row's number is the mean of what the evaluator wrote for its seeds
    per_seed = [json.loads((runs / "full" / f"seed{s}" / "eval" / "metrics.json").read_text()) for s in (0, 1)]
    mean = sum(m["editor"]["overall"]["complete edit"] for m in per_seed) / 2
    assert rows["full"]["overall"]["complete edit"] == pytest.approx(mean)
    assert rows["identity"]["overall"]["preservation"] > rows["identity"]["overall"]["complete edit"]

    # the recorded command reproduces the row's training
    command = rows["only_dmd"]["commands"]["0"][0]
    argv = shlex.split(command)
    assert argv[:2] == ["pairfree", "train"]
    argv = [a.replace(str(runs / "only_dmd" / "seed0"), str(tmp_path / "again")) for a in argv[1:]]
    assert cli(argv) == 0
    again = (tmp_path / "again" / "metrics.jsonl").read_text()
    assert again == (runs / "only_dmd" / "seed0" / "metrics.jsonl").read_text()

    # resumable: a finished row is read back, an interrupted one continues from its checkpoint
    ckpt = runs / "k1" / "seed0" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    (runs / "only_dmd" / "seed1" / "row.json").unlink()  # interrupted after its last checkpoint
    metrics_before = (runs / "only_dmd" / "seed1" / "metrics.jsonl").read_text()
    assert ablate(tiny_models, tmp_path, bench_dir, "k1,only_dmd") == 0
    assert ckpt.stat().st_mtime_ns == stamp
    assert (runs / "only_dmd" / "seed1" / "row.json").is_file()
    assert (runs / "only_dmd" / "seed1" / "metrics.jsonl").read_text() == metrics_before


def test_ablate_unknown_row_is_a_clear_error(tiny_models, bench_dir, tmp_path, capsys):
    assert ablate(tiny_models, tmp_path, bench_dir, "full,no_such_row") == 2
    assert "no_such_row" in capsys.readouterr().err


def test_rl_table_starts_grpo_and_npedit_from_the_supervised_model(tiny_models, bench_dir, tmp_path):
    sets = [s for s in tiny_overrides(tiny_models, tmp_path, batch=2) if not s.startswith("out=")]
    argv = ["ablate", "--table", "rl", "--config", "configs/shapes/editor.yaml", "--bench", str(bench_dir),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--seeds", "1",
            "--set", *sets, "grpo.group_size=2"]  # fmt: skip
    assert cli(argv) == 0
    table = json.loads((tmp_path / "results" / "table.json").read_text())
    names = [r["name"] for r in table["rows"]]
    assert names[:4] == ["supervised", "supervised_grpo", "supervised_npedit", "npedit"] and not table["missing"]
    runs = tmp_path / "runs"
    sft = str(runs / "supervised" / "seed0" / "model")
    for name, trainer in [("supervised_grpo", "flow-grpo"), ("supervised_npedit", "pair-free")]:
        record = json.loads((runs / name / "seed0" / "model" / "train.json").read_text())
        assert record["trainer"] == trainer and record["config"]["models"]["generator"] == sft
        assert record["copy_steps"] == 0
    npedit = json.loads((runs / "npedit" / "seed0" / "model" / "train.json").read_text())
    assert npedit["config"]["models"]["generator"] == "" and npedit["copy_steps"] == 2
