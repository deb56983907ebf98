"""The ``pairfree`` command: ``doctor``, ``demo``, ``world sample|edits|bench``, ``presets``."""

from __future__ import annotations

import argparse
import json
import sys


def _doctor(args) -> int:
    from pairfree import doctor

    info = doctor.collect()
    print(json.dumps(info, indent=2) if args.json else doctor.format_report(info))
    return 0


def _demo(args) -> int:
    from pairfree import demo

    return demo.run(out_dir=args.out, seed=args.seed, minutes=args.minutes, world=args.world)


def _world_sample(args) -> int:
    from pairfree.world.grid import save_scene_grid
    from pairfree.world.spec import get_spec

    spec = get_spec(args.spec)
    path = save_scene_grid(args.out, n=args.n, resolution=args.resolution, seed=args.seed, spec=spec)
    r = args.resolution or spec.resolution
    print(
        f"wrote {path} ({args.n} scenes of world {spec.name!r}, {spec.distinct_scenes():,} distinct, at {r}x{r}) "
        f"and {path.with_suffix('.json')}"
    )
    return 0


def _world_edits(args) -> int:
    from pairfree.world.grid import save_edit_grid
    from pairfree.world.spec import get_spec

    path = save_edit_grid(
        args.out,
        n=args.n,
        resolution=args.resolution,
        seed=args.seed,
        templates=args.templates,
        spec=get_spec(args.spec),
    )
    print(f"wrote {path} ({args.n} edits: input | instruction | target | mask) and {path.with_suffix('.json')}")
    return 0


def _world_bench(args) -> int:
    from pairfree.world.bench import save_bench
    from pairfree.world.spec import get_spec

    spec = get_spec(args.spec)
    out = save_bench(args.out, args.n_per_type, args.seed, args.resolution, spec=spec, templates=args.templates)
    r = args.resolution or spec.resolution
    print(
        f"wrote {out}/cases.jsonl, tensors.safetensors, manifest.json (world {spec.name!r}: "
        f"{args.n_per_type} cases x 8 edit types at {r}x{r}, {args.templates} templates)"
    )
    return 0


def _world_bars(args) -> int:
    from pathlib import Path

    from pairfree.eval.bars import collect, write_bars
    from pairfree.shipped import WEIGHTS_DIR, world_prefix
    from pairfree.world.spec import get_spec

    rows = write_bars(Path(args.out), collect(WEIGHTS_DIR, world_prefix(get_spec(args.spec)), Path(args.yardstick)))
    for key, r in rows.items():
        print(f"{key:24s} {r['value']:>9.4f} {r['sense']} {r['threshold']:<6g} {'met' if r['met'] else 'NOT met'}")
    print(f"wrote {args.out}")
    return 0


def _presets(args) -> int:
    from pairfree.models.presets import build_from_preset, parameter_count, read_preset

    print(f"{'preset':40s} {'parameters':>15s} {'published':>15s}  note")
    for path in args.paths:
        model = build_from_preset(path)
        n, published = parameter_count(model), read_preset(path).get("published_parameters")
        note = f"+{model.config.width:,} = reference-image embedding" if hasattr(model.config, "reference") else ""
        shown = "-" if published is None else f"{published:,}"
        print(f"{path:40s} {n:15,d} {shown:>15s}  {note}")
    return 0


def _plan(args) -> int:
    from pairfree import plan

    return plan.run(args)


def _pretrain(args) -> int:
    import importlib

    from pairfree.config import load_config
    from pairfree.pretrain.common import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    metrics = importlib.import_module(f"pairfree.pretrain.{args.model}").run(cfg, resume=args.resume)
    if not metrics:  # a data-parallel rank other than the main one
        return 0
    print(json.dumps(metrics, indent=1, sort_keys=True))
    print(f"model, MODEL_CARD.md and loss.png in {cfg.out}/model")
    return 0


def _train(args) -> int:
    from pairfree.train.run import train

    return train(args)


def _edit(args) -> int:
    from pairfree.device import resolve_device
    from pairfree.edit import EditPipeline, load_image, save_image
    from pairfree.shipped import NAMES, pretrained

    device = resolve_device(args.device)
    pipe = (pretrained(args.model) if args.model in NAMES else EditPipeline.from_pretrained(args.model)).to(device)
    image, note = load_image(args.image, pipe.resolution)
    if note:
        print(f"{args.image}: {note}")
    out = pipe(image, args.instruction, steps=args.steps, seed=args.seed)
    print(f"wrote {save_image(out, args.out)}")
    return 0


def _eval(args) -> int:
    from pairfree.eval.editing import BASELINES, evaluate, markdown_table

    if args.card and args.model is None:
        from pairfree.config import ConfigError

        raise ConfigError("--card: needs --model (the card is written into the editor's directory)")
    baselines = BASELINES if args.baselines == "all" else tuple(b for b in args.baselines.split(",") if b)
    results = evaluate(args.model, args.bench, args.out, steps=args.steps, baselines=baselines)
    print(markdown_table(results))
    print(f"metrics.json, metrics.md and grid.png in {args.out}")
    if args.card:
        from pairfree.eval.editing import write_editor_card
        from pairfree.pretrain.common import command_line

        print(f"wrote {write_editor_card(args.model, results, args.bench, command_line())}")
    return 0


def _data_build(args) -> int:
    from pairfree.data.build import build

    report = build(args)
    print(f"{report['records']} records from {report['images']} images in {args.out}/edits.jsonl; "
          f"report.md says what was kept and why")  # fmt: skip
    if not report["records"]:
        print(f"pairfree data build: error: no proposal survived (see {args.out}/report.md)", file=sys.stderr)
        return 1
    return 0


def _ablate(args) -> int:
    from pairfree.eval.ablate import ablate

    ablate(args)
    return 0


SPEC_HELP = "world spec: lite (the CPU default), full, or a spec .yaml file"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pairfree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="versions, live kernel backends, GPU, known-bad combinations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_doctor)

    p = sub.add_parser("demo", help="the furthest real pipeline available (see README)")
    p.add_argument("--out", default="results/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=14.0, help="editor training time (0: skip the editor)")
    p.add_argument("--world", default="lite", help=SPEC_HELP)
    p.set_defaults(fn=_demo)

    p = sub.add_parser("world", help="the shapes world")
    world = p.add_subparsers(dest="world_command", required=True)
    p = world.add_parser("sample", help="render scenes with their captions into a PNG grid")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", default="runs/world/grid.png")
    p.add_argument("--resolution", type=int, default=None, help="image side (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spec", default="lite", help=SPEC_HELP)
    p.set_defaults(fn=_world_sample)

    p = world.add_parser("edits", help="edits per sub-type as rows: input | instruction | GT target | mask (PNG)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", default="runs/world/edits.png")
    p.add_argument("--resolution", type=int, default=None, help="image side (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--templates", choices=("train", "heldout", "unseen"), default="train")
    p.add_argument("--spec", default="lite", help=SPEC_HELP)
    p.set_defaults(fn=_world_edits)
    p = world.add_parser("bench", help="write the fixed editing benchmark (inputs, instructions, GT, masks)")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--n-per-type", type=int, default=50)
    p.add_argument("--resolution", type=int, default=None, help="image side (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spec", default="lite", help=SPEC_HELP)
    p.add_argument(
        "--templates",
        choices=("heldout", "train", "unseen"),
        default="heldout",
        help="instruction wording: held-out phrasings of trained words (the benchmark); diagnostics: the training "
        "phrasings, or words never trained (unseen)",
    )
    p.set_defaults(fn=_world_bench)
    p = world.add_parser("bars", help="the world's calibration bars, read from the shipped models' metrics files")
    p.add_argument("--spec", default="lite", help=SPEC_HELP)
    p.add_argument("--yardstick", default="results/lite/yardstick", help="`pairfree eval` dir of the yardstick")
    p.add_argument("--out", default="results/lite/bars.json")
    p.set_defaults(fn=_world_bars)

    p = sub.add_parser("presets", help="build model presets on the meta device and print their parameter counts")
    p.add_argument("paths", nargs="+", help="preset YAML files, e.g. configs/models/*.yaml")
    p.set_defaults(fn=_presets)

    p = sub.add_parser("plan", help="per-GPU memory of a training config at 8, 64, 512 GPUs (does it fit?)")
    p.add_argument("--config", required=True, help="training config with models.*_arch presets (configs/paper/)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (H100: 80)")
    p.add_argument("--scale", default="8,64,512", help="GPU counts for the scaling table")
    p.add_argument("--no-activations", action="store_true", help="static memory only (skips the measurements)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.set_defaults(fn=_plan)
    p = sub.add_parser("pretrain", help="train the shapes world's teacher, judge or evaluator")
    p.add_argument("model", choices=("teacher", "judge", "evaluator"))
    from pairfree.config import add_run_arguments

    add_run_arguments(p, "YAML config (configs/shapes/<model>.yaml)", "loop.steps=100 out=runs/x")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("train", help="train the pair-free editor (also: deepspeed --module pairfree.train ...)")
    from pairfree.train.run import add_arguments

    add_arguments(p)
    p.set_defaults(fn=_train)

    p = sub.add_parser("edit", help="edit an image with a trained editor")
    p.add_argument("--model", required=True, help="editor directory (written by `pairfree train`) or shapes-editor")
    p.add_argument("--image", required=True, help="any image file; resized to the model's resolution")
    p.add_argument("--instruction", required=True)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="edited.png")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    p.set_defaults(fn=_edit)

    p = sub.add_parser("eval", help="evaluate an editor and the baselines on the world benchmark")
    p.add_argument("--model", default=None, help="editor directory (omit to evaluate the baselines only)")
    p.add_argument("--bench", required=True, help="benchmark directory (`pairfree world bench --out DIR`)")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--baselines", default="all", help="comma list of identity,teacher; 'all' or '' for none")
    p.add_argument("--card", action="store_true", help="also write MODEL_CARD.md (+ metrics.md) into --model")
    p.set_defaults(fn=_eval)

    p = sub.add_parser("data", help="instruction data from your images")
    data = p.add_subparsers(dest="data_command", required=True)
    p = data.add_parser("build", help="images -> VLM captions -> LLM proposals -> VLM validation -> edits.jsonl")
    from pairfree.data.build import add_arguments as add_data_build_arguments

    add_data_build_arguments(p)
    p.set_defaults(fn=_data_build)

    p = sub.add_parser("ablate", help="the paper's ablation table: one resumable run per row and seed, evaluated")
    from pairfree.eval.ablate import add_arguments as add_ablate_arguments

    add_ablate_arguments(p)
    p.set_defaults(fn=_ablate)

    args = parser.parse_args(argv)
    from pairfree.pretrain import common

    common.CLI_ARGV = list(argv) if argv is not None else None  # what command_line() reports for this run
    from pairfree.config import ConfigError
    from pairfree.data.records import DataError
    from pairfree.edit import ImageError
    from pairfree.models.persistence import CheckpointError
    from pairfree.world.scene import SceneError
    from pairfree.world.spec import SpecError

    try:
        return args.fn(args)
    except (
        ConfigError,
        DataError,
        CheckpointError,
        ImageError,
        FileNotFoundError,
        SpecError,
        SceneError,
    ) as e:  # bad input: the message names it
        print(f"pairfree {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
