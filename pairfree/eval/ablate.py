"""``pairfree ablate``: the paper's ablation table at equal compute — every row the same config, steps and seeds
but for the one thing it changes; one run directory per (row, seed), resumable; evaluated by the independent
evaluator on a fixed benchmark; written as ``table.json``, ``table.md`` and ``table.png`` with each row's commands.

    pairfree ablate --config configs/lite/editor.yaml --bench runs/lite/bench --out runs/ablations \\
        --results results/ablations [--rows full,only_dmd] [--seeds 2] [--set steps=1500]

Rows train one after another in this process; to use two cores, run two commands on disjoint ``--rows`` with the
same ``--out``: a finished row is read back, not retrained, and the table holds every row finished so far (the
rows still missing are listed in it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path

from pairfree.config import ConfigError, load_config
from pairfree.eval.editing import evaluate
from pairfree.train.config import TrainConfig
from pairfree.train.run import add_arguments as add_train_arguments
from pairfree.train.run import train

METRICS = ("complete edit", "edit success", "preservation", "PSNR outside mask")


@dataclass(frozen=True)
class Row:
    """One line of the table: its name, what it changes (config overrides) and which trainer runs it."""

    name: str
    what: str
    overrides: tuple[str, ...] = ()
    trainer: str = "pairfree"  # "pairfree" (EditorTrainer) or "paired" (the supervised yardstick)
    given: str = ""  # a model evaluated as it is, not trained (``--sft``)
    config: str = ""  # its own YAML config instead of the table's (``--grpo-config``)


def rows_for(cfg: TrainConfig) -> list[Row]:
    """The paper's ablations of ``cfg`` (the full method): its loss terms, question set, CE over Yes/No or the
    whole vocabulary, sampler steps and unroll, DMD's fake score, and the judge weight; plus the yardstick."""
    w = cfg.loss.vlm_weight
    return [
        Row("full", "the full method (the config as given)"),
        Row("only_dmd", "no judge term", ("loss.vlm_weight=0",)),
        Row("only_vlm", "no DMD term (no teacher)", ("loss.dmd_weight=0",)),
        Row("no_identity", "verification question only", ("loss.identity_question=false",)),
        Row("full_vocab", "judge CE over the whole vocabulary", ("loss.full_vocab=true",)),
        Row("k1", "sampler K = 1", ("sampler.steps=1",)),
        Row("k2", "sampler K = 2", ("sampler.steps=2",)),
        Row("two_call", "two-call unroll (the reimplementation's)", ("sampler.unroll=two_call",)),
        Row("delta", "DMD fake score: delta (no critic)", ("loss.dmd_fake=delta",)),
        Row("judge_x0.5", "judge weight x0.5", (f"loss.vlm_weight={w * 0.5:g}",)),
        Row("judge_x2", "judge weight x2", (f"loss.vlm_weight={w * 2:g}",)),
        Row("supervised", "supervised yardstick (told the answer)", trainer="paired"),
    ]


def rl_rows_for(cfg: TrainConfig, sft_model: str = "", grpo_config: str = "") -> list[Row]:
    """The paper's RL comparison at an equal generator-update budget: the supervised yardstick (SFT), then from
    its model Flow-GRPO with the judge as reward, or NP-Edit; and NP-Edit from the copy warm-up.
    ``{out}``/``{seed}`` in an override are the ablation's ``--out`` and the row's seed. ``sft_model``: an SFT
    model trained beforehand (as the paper's is), evaluated as the ``supervised`` row instead of training one.
    ``grpo_config``: Flow-GRPO's own config (its learning rate, batch and group; configs/lite/grpo.yaml) instead
    of the NP-Edit config with ``trainer=grpo``."""
    sft = f"models.generator={sft_model or '{out}/supervised/seed{seed}/model'}"
    return [
        Row("supervised", "supervised yardstick (SFT, told the answer)", trainer="paired", given=sft_model),
        Row(
            "supervised_grpo",
            "SFT, then Flow-GRPO (judge reward)",
            (sft, "copy_steps=0", "trainer=grpo"),
            config=grpo_config,
        ),
        Row("supervised_npedit", "SFT, then NP-Edit (the config as given)", (sft, "copy_steps=0")),
        Row("npedit", "NP-Edit from the copy warm-up (the config as given)"),
    ]


TABLES = {"ablations": rows_for, "rl": rl_rows_for}
# the paper's order, best first (GEdit-Bench: SFT + NP-Edit 6.06, SFT + Flow-GRPO 4.19, SFT 3.64)
PAPER_ORDER = {"rl": ("supervised_npedit", "supervised_grpo", "supervised")}


def measured_order(table_name: str, rows: list[dict]) -> str:
    """The rows the paper orders, sorted by measured complete edit, and whether that is the paper's order ("" when
    the table has no such claim or a row is missing)."""
    paper = PAPER_ORDER.get(table_name)
    got = {r["name"]: r["overall"]["complete edit"] for r in rows}
    if not paper or not all(name in got for name in paper):
        return ""
    ranked = sorted(paper, key=lambda name: -got[name])
    verdict = "as the paper's" if tuple(ranked) == paper else "the paper's is " + " > ".join(f"`{n}`" for n in paper)
    return "Measured order on complete edit: " + " > ".join(f"`{n}` {got[n]:.3f}" for n in ranked) + f" ({verdict})."


HEADLINE = ("full", "only_dmd", "only_vlm", "no_identity", "supervised", "supervised_grpo", "supervised_npedit",
            "npedit")  # the rows run with every seed  # fmt: skip


def train_command(config: str, sets: list[str], row: Row, resume: bool = False) -> str:
    head = "python -m pairfree.train.paired" if row.trainer == "paired" else "pairfree train"
    tail = " --resume" if resume else ""
    return f"{head} --config {shlex.quote(config)}{tail} --set " + " ".join(shlex.quote(s) for s in sets)


def run_row(row: Row, seed: int, config: str, base: list[str], out: Path, bench: str) -> dict:
    """Train (or resume, or read back) one (row, seed) and evaluate it; returns its metrics and commands."""
    config = row.config or config
    run = out / row.name / f"seed{seed}"
    sets = [*base, *(o.format(out=out, seed=seed) for o in row.overrides), f"out={run}", f"seed={seed}"]
    record = run / "row.json"
    commands = [
        train_command(config, sets, row),
        f"pairfree eval --model {run}/model --bench {bench} --out {run}/eval --baselines ''",
    ]
    if row.given:
        made = Path(row.given) / "train.json"
        commands[0] = json.loads(made.read_text()).get("command", f"(the model in {row.given})")
        commands[1] = f"pairfree eval --model {row.given} --bench {bench} --out {run}/eval --baselines ''"
        run.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"row": row.name, "seed": seed, "commands": commands}, indent=1) + "\n")
    elif not record.is_file():
        resume = (run / "checkpoint.pt").is_file() or (run / "deepspeed").is_dir()
        p = argparse.ArgumentParser()
        add_train_arguments(p)
        args = p.parse_args(["--config", config, *(["--resume"] if resume else []), "--set", *sets])
        print(f"ablate: {row.name} seed {seed}: {commands[0]}{' (resumed)' if resume else ''}", flush=True)
        train(args, "paired" if row.trainer == "paired" else None)
        record.write_text(json.dumps({"row": row.name, "seed": seed, "commands": commands}, indent=1) + "\n")
    if not (run / "eval" / "metrics.json").is_file():
        evaluate(row.given or run / "model", bench, run / "eval", baselines=())
    if (run / "best" / "best.json").is_file() and not (run / "eval_best" / "metrics.json").is_file():
        evaluate(run / "best", bench, run / "eval_best", baselines=())  # picked on validation edits (heldout_every)
    return read_row(row, seed, out)


def done(run: Path) -> bool:
    return (run / "row.json").is_file() and (run / "eval" / "metrics.json").is_file()


def read_row(row: Row, seed: int, out: Path) -> dict:
    """A finished (row, seed): the editor's metrics on the benchmark and the commands that made them."""
    run = out / row.name / f"seed{seed}"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["editor"]
    result = {"metrics": metrics, "commands": json.loads((run / "row.json").read_text())["commands"]}
    made = Path(row.given or run / "model") / "train.json"
    if made.is_file():  # the row's budget: its updates (copy warm-up included), wall minutes and ranks
        record = json.loads(made.read_text())
        result["budget"] = {k: record.get(k) for k in ("step", "copy_steps", "wall_min", "ranks")}
    if (run / "eval_best" / "metrics.json").is_file():  # the best checkpoint on the validation edits
        best = json.loads((run / "eval_best" / "metrics.json").read_text())["editor"]["overall"]
        step = json.loads((run / "best" / "best.json").read_text())["step"]
        result["best"] = {"step": step, **{m: best[m] for m in METRICS}}
    return result


def summarise(row: Row, runs: dict[int, dict]) -> dict:
    """A row of ``table.json``: per metric the mean over seeds (and the spread, max − min), overall and per
    sub-type."""

    def stats(key):
        values = {m: [r["metrics"][key][m] for r in runs.values()] for m in METRICS}
        values = {m: [v for v in vs if v == v] for m, vs in values.items()}  # NaN (no pixels outside a mask)
        return {m: statistics.fmean(vs) if vs else None for m, vs in values.items()}, {
            m: (max(vs) - min(vs)) if vs else None for m, vs in values.items()
        }

    overall, spread = stats("overall")
    kinds = [k for k in next(iter(runs.values()))["metrics"] if k != "overall"]
    best = None
    if all("best" in r for r in runs.values()):  # last vs best: reward hacking shows as best > last
        best = {m: statistics.fmean(r["best"][m] for r in runs.values()) for m in METRICS}
        best["steps"] = [r["best"]["step"] for _, r in sorted(runs.items())]
    budgets = [r.get("budget") for _, r in sorted(runs.items())]
    return {
        "name": row.name,
        "what": row.what,
        "seeds": sorted(runs),
        "overall": overall,
        "spread": spread,
        "per_type": {k: stats(k)[0] for k in kinds},
        "best": best,
        "budget": budgets if all(budgets) else None,
        "commands": {str(s): r["commands"] for s, r in sorted(runs.items())},
    }


def baseline_rows(bench: str, out: Path) -> list[dict]:
    """The identity / teacher / ground-truth rows: no training, read once per benchmark."""
    path = out / "baselines" / "metrics.json"
    if not path.is_file():
        evaluate(None, bench, out / "baselines", baselines=("identity", "teacher"))
    results = json.loads(path.read_text())
    command = f"pairfree eval --bench {bench} --out {out}/baselines"
    return [
        {
            "name": name,
            "what": "baseline",
            "seeds": [],
            "overall": {m: r["overall"][m] for m in METRICS},
            "spread": {m: 0.0 for m in METRICS},
            "per_type": {k: {m: v[m] for m in METRICS} for k, v in r.items() if k != "overall"},
            "best": None,
            "budget": None,
            "commands": {"-": [command]},
        }
        for name, r in results.items()
    ]


def _fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def _budget(budgets: list[dict] | None) -> str:
    """Each seed's generator updates and training wall minutes (× ranks when several), e.g. ``6,969 (29.9 ×2)``."""
    if not budgets:
        return "—"
    cells = []
    for b in budgets:
        ranks = b.get("ranks") or 1
        cells.append(f"{b['step']:,} ({b['wall_min']:g}{f' ×{ranks}' if ranks > 1 else ''})")
    return ", ".join(cells)


def markdown(table: dict) -> str:
    kinds = list(next(iter(table["rows"]))["per_type"])
    bests = any(r.get("best") for r in table["rows"])
    head = ["row", "what", "seeds", "updates (minutes)", *METRICS,
            *(["best checkpoint (step): complete edit"] if bests else []), *kinds]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in table["rows"]:
        cells = [f"`{r['name']}`", r["what"], ",".join(map(str, r["seeds"])) or "—", _budget(r.get("budget"))]
        for m in METRICS:
            d = 1 if m.startswith("PSNR") else 3
            s = r["spread"][m]
            cells.append(_fmt(r["overall"][m], d) + (f" ±{_fmt(s / 2, d)}" if len(r["seeds"]) > 1 and s else ""))
        if bests:
            b = r.get("best")
            cells.append(f"{_fmt(b['complete edit'])} ({','.join(map(str, b['steps']))})" if b else "—")
        cells += [_fmt(r["per_type"][k]["complete edit"], 2) for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Per sub-type columns: complete edit. ± is half the spread over seeds. {table['note']}"]
    if bests:
        lines += ["", "The metrics are the last checkpoint's. The best checkpoint is the one whose edits of held-out "
                  "validation edits (`heldout_every`; disjoint from the benchmark) the evaluator read best; its "
                  "benchmark complete edit and step are in their own column."]  # fmt: skip
    if table.get("order"):
        lines += ["", table["order"]]
    if table["missing"]:
        lines += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in table["missing"]) + "."]
    lines += [""]
    lines += ["Commands:", ""]
    for r in table["rows"]:
        for seed, cmds in r["commands"].items():
            lines += [f"- `{r['name']}` seed {seed}: " + "; ".join(f"`{c}`" for c in cmds)]
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ys = range(len(rows))
    for i, m in enumerate(("complete edit", "preservation")):
        vals = [r["overall"][m] or 0.0 for r in rows]
        err = [(r["spread"][m] or 0.0) / 2 for r in rows]
        ax.barh([y + 0.4 * i for y in ys], vals, height=0.4, xerr=err, label=m)
    ax.set_yticks([y + 0.2 for y in ys], [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("ablations (evaluator-read, held-out benchmark)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def budget_note(rows: list[dict]) -> str:
    """What the trained rows' budgets (their ``train.json``) share: the same number of updates, about the same wall
    time, or neither (rows gathered from several commands, or an SFT given with ``--sft``)."""
    budgets = [b for r in rows if r.get("budget") for b in r["budget"]]
    if not budgets:
        return "No row states its budget."
    steps, minutes = {b["step"] for b in budgets}, [b["wall_min"] * (b.get("ranks") or 1) for b in budgets]
    if len(steps) == 1:
        return f"Equal compute: every row made the same {steps.pop():,} updates."
    if max(minutes) - min(minutes) <= 0.05 * max(minutes):
        return f"Equal wall time: every row trained for about {max(minutes):.3g} core-minutes."
    return "The rows' budgets differ: see each row's updates (minutes) column."


def ablate(args) -> dict:
    """Run the chosen rows (all by default), then write the table of every row finished under ``--out``."""
    cfg = load_config(TrainConfig, args.config, args.overrides)
    if args.sft and args.table != "rl":
        raise ConfigError(f"--sft: only the rl table starts from an SFT model (got --table {args.table})")
    if args.sft and not (Path(args.sft) / "train.json").is_file():
        raise ConfigError(f"--sft {args.sft}: not a trained model directory (no train.json in it)")
    if args.grpo_config and args.table != "rl":
        raise ConfigError(f"--grpo-config: only the rl table has a Flow-GRPO row (got --table {args.table})")
    if args.grpo_config:
        load_config(TrainConfig, args.grpo_config, args.overrides)  # a bad file fails here, not after other rows
    rows = rl_rows_for(cfg, args.sft, args.grpo_config) if args.table == "rl" else rows_for(cfg)
    known = {r.name: r for r in rows}
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else list(known)
    unknown = [r for r in chosen if r not in known]
    if unknown:
        raise ConfigError(f"--rows: unknown row(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    out = Path(args.out)
    # equal compute = equal steps: no wall-time stop unless asked for
    base = ["max_minutes=0", *(s for s in args.overrides if not s.startswith(("out=", "seed=")))]
    for name in chosen:
        for seed in range(args.seeds) if name in HEADLINE and not known[name].given else range(1):
            run_row(known[name], seed, args.config, base, out, args.bench)
    finished = {  # every row with a finished seed so far (this command's and those of others on the same --out)
        r.name: {s: read_row(r, s, out) for s in range(args.seeds) if done(out / r.name / f"seed{s}")} for r in rows
    }
    trained = [summarise(r, finished[r.name]) for r in rows if finished[r.name]]
    table = {
        "config": args.config,
        "overrides": base,
        "bench": args.bench,
        "note": f"{budget_note(trained)} Quality is read by the evaluator on the held-out benchmark, never by the "
        "judge trained against.",
        "missing": [r.name for r in rows if not finished[r.name]],
        "rows": trained + baseline_rows(args.bench, out),
        "order": measured_order(args.table, trained),
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    (res / "table.md").write_text(markdown(table))
    plot(table, res / "table.png")
    print(markdown(table))
    print(f"table.json, table.md and table.png in {res}")
    return table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the full method's YAML config (configs/lite/editor.yaml)")
    p.add_argument("--bench", required=True, help="benchmark directory (pairfree world bench)")
    p.add_argument("--out", default="runs/ablations", help="one run directory per row and seed under here")
    p.add_argument("--results", default="results/ablations", help="where table.json/.md/.png go")
    p.add_argument("--table", choices=sorted(TABLES), default="ablations",
                   help="ablations: the paper's ablation rows; rl: SFT → +Flow-GRPO vs SFT → +NP-Edit")  # fmt: skip
    p.add_argument("--sft", default="", help="rl table: an SFT model to start from (evaluated as `supervised`, "
                   "not trained; e.g. runs/lite/yardstick/model)")  # fmt: skip
    p.add_argument("--grpo-config", default="", help="rl table: Flow-GRPO's own YAML config for `supervised_grpo` "
                   "(e.g. configs/lite/grpo.yaml; default: --config with trainer=grpo)")  # fmt: skip
    p.add_argument("--rows", default="", help="comma-separated rows to run (default: all, then the table)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of the headline rows (others: 1)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for every row, e.g. --set steps=1500 max_minutes=0")  # fmt: skip
