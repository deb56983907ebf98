"""``pairfree ablate``: each row is the full config plus its one change, resumable, and the table reports what the
evaluator measured on each row's model (means over seeds) with commands that reproduce the runs."""

import json
import shlex

import pytest
import yaml

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
    # each row states its budget: the updates (copy warm-up included) and wall minutes its model's train.json says
    rows = {r["name"]: r for r in table["rows"]}
    assert rows["npedit"]["budget"] == [{k: npedit[k] for k in ("step", "copy_steps", "wall_min", "ranks")}]
    assert rows["identity"]["budget"] is None
    assert f"| {npedit['step']:,} ({npedit['wall_min']:g}) |" in (tmp_path / "results" / "table.md").read_text()

    # --sft: a model trained beforehand is the supervised row (evaluated, not retrained) and the start of the others;
    # --grpo-config: Flow-GRPO trains with its own config (here: another learning rate)
    again = tmp_path / "given"
    grpo = yaml.safe_load(open("configs/shapes/editor.yaml"))
    grpo["optim"]["lr"] = 1.25e-4
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump({**grpo, "trainer": "grpo"}))
    argv = ["ablate", "--table", "rl", "--sft", sft, "--grpo-config", str(tmp_path / "grpo.yaml"),
            "--rows", "supervised,supervised_npedit,supervised_grpo", "--config",
            "configs/shapes/editor.yaml", "--bench", str(bench_dir), "--out", str(again / "runs"),
            "--results", str(again / "results"), "--seeds", "1", "--set", *sets,
            "heldout_every=2", "heldout_items=8"]  # fmt: skip
    assert cli(argv) == 0
    given = {r["name"]: r for r in json.loads((again / "results" / "table.json").read_text())["rows"]}
    # best vs last: the runs kept their best checkpoint on the validation edits; the table reads it on the bench
    assert given["supervised"]["best"] is None
    for name in ("supervised_npedit", "supervised_grpo"):
        run = again / "runs" / name / "seed0"
        picked = json.loads((run / "best" / "best.json").read_text())
        best = json.loads((run / "eval_best" / "metrics.json").read_text())["editor"]["overall"]
        assert given[name]["best"]["steps"] == [picked["step"]]
        assert given[name]["best"]["complete edit"] == best["complete edit"]
    assert "best checkpoint (step)" in (again / "results" / "table.md").read_text()
    first = {r["name"]: r for r in table["rows"]}
    assert given["supervised"]["overall"] == first["supervised"]["overall"]
    assert not (again / "runs" / "supervised" / "seed0" / "checkpoint.pt").exists()
    sft_command = json.loads((runs / "supervised" / "seed0" / "model" / "train.json").read_text())["command"]
    assert given["supervised"]["commands"]["0"][0] == sft_command
    assert given["supervised"]["budget"] == rows["supervised"]["budget"]  # a given SFT: its own training's budget
    for name, lr in [("supervised_npedit", 5.0e-4), ("supervised_grpo", 1.25e-4)]:
        record = json.loads((again / "runs" / name / "seed0" / "model" / "train.json").read_text())
        assert record["config"]["models"]["generator"] == sft and record["config"]["optim"]["lr"] == lr
    assert "grpo.yaml" in given["supervised_grpo"]["commands"]["0"][0]


def test_sft_model_is_only_for_the_rl_table(tiny_models, bench_dir, tmp_path, capsys):
    argv = ["ablate", "--sft", str(tmp_path), "--config", "configs/shapes/editor.yaml", "--bench", str(bench_dir),
            "--out", str(tmp_path / "runs")]  # fmt: skip
    assert cli(argv) == 2
    assert "--sft" in capsys.readouterr().err


def test_measured_order_against_the_papers():
    from pairfree.eval.ablate import measured_order

    def rows(npedit, grpo, sft):
        names = ("supervised_npedit", "supervised_grpo", "supervised")
        return [{"name": n, "overall": {"complete edit": v}} for n, v in zip(names, (npedit, grpo, sft))]

    assert measured_order("rl", rows(0.7, 0.6, 0.5)).endswith("(as the paper's).")
    differs = measured_order("rl", rows(0.827, 0.785, 0.8))
    assert differs.startswith("Measured order on complete edit: `supervised_npedit` 0.827 > `supervised` 0.800 > ")
    assert differs.endswith("(the paper's is `supervised_npedit` > `supervised_grpo` > `supervised`).")
    assert measured_order("rl", rows(0.7, 0.6, 0.5)[:2]) == ""  # a row missing: no claim
    assert measured_order("ablations", rows(0.7, 0.6, 0.5)) == ""


def test_table_note_names_the_budget_the_rows_share():
    from pairfree.eval.ablate import budget_note

    def row(*budgets):
        return {"budget": [{"step": s, "copy_steps": 0, "wall_min": m, "ranks": r} for s, m, r in budgets]}

    same_steps = [row((700, 3.0, 1), (700, 3.4, 1)), row((700, 9.0, 1)), {"budget": None}]
    assert budget_note(same_steps) == "Equal compute: every row made the same 700 updates."
    same_time = [row((1284, 25.0, 1)), row((1030, 25.0, 1), (1047, 24.6, 1))]
    assert budget_note(same_time) == "Equal wall time: every row trained for about 25 core-minutes."
    assert budget_note([row((1284, 12.5, 2)), row((1030, 25.0, 1))]).startswith("Equal wall time")  # 2 ranks
    assert budget_note([row((6969, 29.9, 2)), row((400, 6.2, 1))]).startswith("The rows' budgets differ")
    assert budget_note([{"budget": None}]) == "No row states its budget."
