"""``pairfree demo``: the whole package, small, on the machine at hand.

The environment report; modulated RMSNorm on every backend that can run here, checked against an fp64 reference
(output and all gradients) and timed against eager PyTorch; captioned grids of shapes-world scenes and edits; the
shipped models of the world (``lite`` by default) on held-out data; and the pair-free editor trained from the
shipped teacher for ``minutes``, then evaluated against the identity and teacher baselines. Results go to
``<out>/`` (``demo.json``, ``demo.md``, grids, ``editor_metrics.md``, ``editor_grid.png``, ``editor_loss.png``, the
run in ``editor_run/``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import pairfree
from pairfree import doctor
from pairfree.config import load_config
from pairfree.eval.editing import evaluate, markdown_table
from pairfree.evaluator import accuracy
from pairfree.kernels import dispatch
from pairfree.kernels.modulated_norm import modulated_norm_reference, modulated_rms_norm
from pairfree.pretrain import teacher as teacher_pretrain
from pairfree.pretrain.evaluator import batch_of, scenes_for
from pairfree.shipped import WEIGHTS_DIR, model_name, world_prefix
from pairfree.train.config import TrainConfig
from pairfree.train.models import load_models
from pairfree.train.trainer import EditorTrainer
from pairfree.world.bench import save_bench
from pairfree.world.datasets import JudgeVQADataset, collate_vqa
from pairfree.world.grid import save_edit_grid, save_scene_grid
from pairfree.world.spec import get_spec


def _grads(fn, x, kw, cot, dtype, **extra):
    leaves = [x.to(dtype).requires_grad_()] + [v.to(dtype).requires_grad_() for v in kw.values()]
    out = fn(leaves[0], None, *leaves[1:3], residual=leaves[3], gate=leaves[4], **extra)
    grads = torch.autograd.grad(out, leaves, [c.to(dtype) for c in cot])
    return [o.detach().double() for o in out] + [g.double() for g in grads]


def _time_ms(fn, repeats=10):
    fn()
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1e3 * sorted(t)[len(t) // 2]


def editor_config(spec) -> tuple[Path, str]:
    """The demo editor's config and what it starts from: NP-Edit from the world's shipped supervised editor
    (``configs/<world>/finetune.yaml``, the paper's SFT → +NP-Edit) when both are there; else NP-Edit from the
    teacher's copy warm-up (``editor.yaml``), which makes no complete edit in a CPU demo's minutes
    (docs/experiments/ablations.md)."""
    configs = Path(__file__).resolve().parents[1] / "configs" / world_prefix(spec)
    sft = model_name("sft", spec)
    if (configs / "finetune.yaml").is_file() and (WEIGHTS_DIR / sft).is_dir():
        return configs / "finetune.yaml", sft
    return configs / "editor.yaml", ""


def editor_overrides(run_dir, seed: int, minutes: float) -> list[str]:
    """The demo's ``--set`` overrides of its config: run directory, seed and time (every sub-type is trained)."""
    return [f"out={run_dir}", f"seed={seed}", f"max_minutes={minutes}"]


def subtype_table(results: dict) -> tuple[str, dict]:
    """Complete edit per sub-type for every system, and per sub-type whether the editor beats every baseline
    (identity, teacher) there."""
    kinds = [k for k in results["editor"] if k != "overall"]
    lines = ["| system | overall | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 2) + "|"]
    for system, res in results.items():
        cells = [f"{res[k]['complete edit']:.2f}" for k in ("overall", *kinds)]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    baselines = [b for b in ("identity", "teacher (edited caption)") if b in results]
    beats = {
        k: all(results["editor"][k]["complete edit"] > results[b][k]["complete edit"] for b in baselines) for k in kinds
    }
    return "\n".join(lines) + "\n", beats


def run(out_dir: str = "results/demo", seed: int = 0, minutes: float = 14.0, world: str = "lite") -> int:

    spec = get_spec(world)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(doctor.format_report(doctor.collect()))
    torch.manual_seed(seed)

    # 1. correctness at a DiT block's shape: 2 samples x 256 tokens x width 384, fused residual + gate
    b, n, d = 2, 256, 384
    x = torch.randn(b, n, d, dtype=torch.float64)
    kw = {
        "shift": 0.5 * torch.randn(b, d),
        "scale": 0.5 * torch.randn(b, d),
        "residual": torch.randn(b, n, d),
        "gate": torch.randn(b, d),
    }
    kw = {k: v.double() for k, v in kw.items()}
    cot = [torch.randn(b, n, d, dtype=torch.float64) for _ in range(2)]
    exact = _grads(modulated_norm_reference, x, kw, cot, torch.float64)
    names = ["y", "s", "dx", "dshift", "dscale", "dresidual", "dgate"]
    backends = [
        k for k, why in dispatch.live_backends("cpu").items() if why is None and k in dispatch.OPS["modulated_norm"]
    ]
    rows = []
    print(f"\n== modulated RMSNorm (+ residual, gate) vs fp64 reference, shape {b}x{n}x{d} ==")
    print(f"{'backend':<10} {'dtype':<9} " + " ".join(f"{nm:>10}" for nm in names))
    for backend in backends:
        for dtype in (torch.float32, torch.bfloat16):
            if backend == "triton" and dtype == torch.bfloat16:
                continue  # the Triton interpreter has no bf16
            got = _grads(modulated_rms_norm, x, kw, cot, dtype, backend=backend)
            errs = [(g - e).abs().max().item() for g, e in zip(got, exact)]
            rows.append({"backend": backend, "dtype": str(dtype)[6:], **dict(zip(names, errs))})
            print(f"{backend:<10} {str(dtype)[6:]:<9} " + " ".join(f"{e:>10.2e}" for e in errs))

    # 2. speed: forward + backward at SANA-600M width, fp32
    b, n, d = 2, 1024, 1152
    x = torch.randn(b, n, d, requires_grad=True)
    shift, scale = torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)
    timings = {}
    for name, fn in {"eager": modulated_norm_reference, "pairfree": modulated_rms_norm}.items():
        step = lambda fn=fn: torch.autograd.grad(fn(x, None, shift, scale).square().sum(), (x, shift, scale))
        timings[name] = _time_ms(step)
    auto = dispatch.select("modulated_norm", torch.device("cpu"))
    print(f"\n== forward+backward {b}x{n}x{d} fp32, median of 10 ==")
    print(
        f"eager PyTorch {timings['eager']:.2f} ms | pairfree ({auto}) {timings['pairfree']:.2f} ms "
        f"| speed-up {timings['eager'] / timings['pairfree']:.2f}x"
    )

    # 3. the shapes world: scenes with captions at 32x32 and 64x64

    grids = [str(save_scene_grid(out / f"world_{r}.png", n=16, resolution=r, seed=seed, spec=spec)) for r in (32, 64)]
    print(f"\n== {spec.name} world: 16 scenes with captions -> {grids[0]}, {grids[1]} ==")
    grids.append(str(save_edit_grid(out / "edits_64.png", n=16, resolution=64, seed=seed, spec=spec)))
    print(f"== {spec.name} world: 16 edits (input | instruction | ground truth | mask) -> {grids[-1]} ==")

    # 4. the shipped models on held-out data (when present in the package)
    shipped = _shipped_models(out, seed, spec)

    # 5. the editor: pair-free training from the shipped teacher and judge, then the benchmark vs baselines
    editor = _editor(out, seed, minutes, spec) if minutes > 0 else None
    recorded = Path(__file__).resolve().parents[1] / "results" / "ablations" / "table.md"
    if recorded.is_file():  # a source checkout: the ablation rows measured so far, beside the demo's own table
        print(f"\n== the recorded ablation table ({recorded.relative_to(recorded.parents[2])}; pairfree ablate) ==")
        print(recorded.read_text())

    result = {
        "shipped_models": shipped,
        "editor": editor,
        "world_grids": grids,
        "accuracy": rows,
        "timing_ms": timings,
        "auto_backend": auto,
        "seed": seed,
        "world": spec.name,
        "command": f"pairfree demo --out {out_dir} --seed {seed} --minutes {minutes} --world {spec.name}",
    }
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    md = ["| backend | dtype | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    md += [f"| {r['backend']} | {r['dtype']} | " + " | ".join(f"{r[k]:.2e}" for k in names) + " |" for r in rows]
    (out / "demo.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out / 'demo.json'} and {out / 'demo.md'}")
    return 0


def _editor(out: Path, seed: int, minutes: float, spec) -> dict | None:
    """Train the editor for ``minutes`` on all eight sub-types (:func:`editor_config`), then read it, its
    starting model and both baselines on a 25-per-type benchmark (held-out wording); writes editor_grid.png,
    editor_loss.png, editor_heldout.png, editor_metrics.md."""
    import shutil

    missing = [n for n in (model_name(k, spec) for k in ("teacher", "judge")) if not (WEIGHTS_DIR / n).is_dir()]
    if missing:
        print(f"\n== editor: skipped (no shipped {', '.join(missing)} in this package) ==")
        return None
    config, start = editor_config(spec)
    if not config.is_file():
        print(f"\n== editor: skipped ({config} not found: run the demo from a source checkout) ==")
        return None
    run_dir = out / "editor_run"
    sets = editor_overrides(run_dir, seed, minutes)
    cfg = load_config(TrainConfig, config, sets)
    origin = f"from the shipped supervised editor {start}" if start else "from the teacher's copy warm-up"
    print(f"\n== editor: NP-Edit {origin}, all eight sub-types, at most {minutes:g} min ({config.name}: --set "
          f"{' '.join(sets)}) ==")  # fmt: skip
    EditorTrainer(cfg, load_models(cfg.models, critic=cfg.uses_critic, world=spec)).train()
    bench = save_bench(out / "bench", n_per_type=25, seed=seed, spec=spec)
    results = evaluate(run_dir / "model", bench, out / "editor_eval")
    if start:  # what NP-Edit started from, on the same benchmark
        begun = evaluate(WEIGHTS_DIR / start, bench, out / "start_eval", baselines=())["editor"]
        results = {"editor": results.pop("editor"), f"start ({start})": begun, **results}
    table, beats = subtype_table(results)
    verdict = ", ".join(f"{k} {'yes' if ok else '**no**'}" for k, ok in beats.items())
    text = (f"{table}\nComplete edit, 200 held-out edits read by the evaluator. The editor above both baselines "
            f"(identity, teacher) on: {verdict}.\n")  # fmt: skip
    print(text)
    (out / "editor_metrics.md").write_text(text + "\n" + markdown_table(results))
    for src, dst in (("editor_eval/grid.png", "editor_grid.png"), ("editor_run/loss.png", "editor_loss.png"),
                     ("editor_run/heldout.png", "editor_heldout.png")):  # fmt: skip
        if (out / src).is_file():
            shutil.copyfile(out / src, out / dst)
    return {
        "start": start or "copy warm-up",
        "complete edit": {k: v["overall"]["complete edit"] for k, v in results.items()},
        "beats both baselines": beats,
    }


def _shipped_models(out: Path, seed: int, spec) -> dict:
    """Held-out checks of world ``spec``'s shipped evaluator, judge and teacher (each skipped if not shipped)."""
    import torch

    res = {}
    name = {kind: model_name(kind, spec) for kind in ("evaluator", "judge", "teacher")}
    print(f"\n== shipped models of the {spec.name} world (held-out data) ==")
    if (WEIGHTS_DIR / name["evaluator"]).is_dir():
        ev = pairfree.pretrained(name["evaluator"])
        b = batch_of(scenes_for(seed + 99, "val", 0, 128, 0.0, spec), spec.resolution)
        with torch.no_grad():
            res["evaluator attribute accuracy"] = accuracy(ev(b["images"]), b["targets"])
        print(
            "evaluator accuracy on 128 held-out scenes:",
            ", ".join(f"{k} {v:.3f}" for k, v in res["evaluator attribute accuracy"].items()),
        )
    if (WEIGHTS_DIR / name["judge"]).is_dir():
        judge = pairfree.pretrained(name["judge"])
        ds = JudgeVQADataset(64, seed=seed + 99, split="val", spec=spec)
        b = collate_vqa(ds.__getitems__(list(range(64))))
        with torch.no_grad():
            ok = (judge(b["images"], b["question"]).argmax(-1) == b["label"]).tolist()
        for kind in ("single", "pair"):
            sel = [o for o, k in zip(ok, b["kind"]) if k == kind]
            res[f"judge {kind} accuracy"] = sum(sel) / max(1, len(sel))
        print(
            f"judge on 64 held-out questions: single-image {res['judge single accuracy']:.3f}, "
            f"two-image {res['judge pair accuracy']:.3f}"
        )
    if (WEIGHTS_DIR / name["teacher"]).is_dir() and (WEIGHTS_DIR / name["evaluator"]).is_dir():
        teacher = pairfree.pretrained(name["teacher"])
        ev = pairfree.pretrained(name["evaluator"])
        m = teacher_pretrain.evaluate(
            teacher, ev, seed + 99, 16, spec.resolution, grid_out=out / "teacher_samples.png", spec=spec
        )
        res["teacher caption attribute match"] = m["caption attribute match"]
        print(
            f"teacher: 16 held-out captions, evaluator-read attribute match {m['caption attribute match']:.3f} "
            f"-> {out / 'teacher_samples.png'}"
        )
    if not res:
        print("none shipped yet (pairfree pretrain ... --set ship=true)")
    return res
