"""Learning curve of a teacher run from saved checkpoints: caption attribute match of the raw weights and of the EMA
at each checkpoint, read back by the world's evaluator (the same measure as ``pairfree pretrain teacher``).

    python benchmarks/teacher_curve.py --config configs/lite/teacher.yaml runs/lite/teacher_snapshots/*.pt \
        --out docs/experiments/lite-world/teacher_curve.json

A checkpoint holds ``model``, ``ema``, ``step`` and ``wall_s`` (``pairfree.pretrain.loop``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pairfree import pretrained
from pairfree.config import from_dict, load_config
from pairfree.models.bundle import FlowModel
from pairfree.models.dit import DiT, DiTConfig
from pairfree.models.text import WorldTextEncoder
from pairfree.pretrain.common import PretrainConfig
from pairfree.pretrain.teacher import evaluate
from pairfree.shipped import model_name
from pairfree.world.spec import get_spec


def build(cfg: PretrainConfig) -> FlowModel:
    text = WorldTextEncoder.for_world(seed=cfg.loop.seed, **cfg.model.get("text", {}))
    dit_cfg = from_dict(DiTConfig, {**cfg.model.get("dit", {}), "text_dim": text.dim}, "model.dit")
    return FlowModel(DiT(dit_cfg), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=200, help="held-out captions per point")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(PretrainConfig, args.config, [])
    spec = get_spec(cfg.world)
    evaluator = pretrained(model_name("evaluator", spec))
    rows, seen = [], set()
    for path in args.checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["step"] in seen:
            continue
        seen.add(state["step"])
        row = {"step": state["step"], "minutes": round(state["wall_s"] / 60, 1)}
        for tag in ("model", "ema"):
            if state.get(tag) is None:
                continue
            teacher = build(cfg)
            teacher.load_state_dict(state[tag])
            m = evaluate(teacher, evaluator, cfg.loop.seed, args.n, cfg.resolution, spec=spec)
            row["raw" if tag == "model" else "ema"] = round(m["caption attribute match"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: r["step"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/teacher_curve.py", *sys.argv[1:]])
    out.write_text(json.dumps({"command": command, "items": args.n, "curve": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
