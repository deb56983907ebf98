#!/usr/bin/env bash
# Editor runs on one GPU (issue 8), from the repo root:   OUT=/tmp/gpu_editor bash benchmarks/gpu_editor.sh
# One copy warm-up, then from it (a) the supervised yardstick (`pairfree.train.paired`: flow loss toward the true
# edit — how fast this generator can learn edits at all) and (b) the pair-free editor (`pairfree train`), each read
# on the 200-edit held-out benchmark by the independent evaluator; ends with a short table. The pair-free model
# comes back under $OUT/editor_model. Knobs (env): COPY_MIN, PAIRED_MIN, EDIT_MIN (minutes per stage: 1.5 / 2 / 3),
# BATCH (64), DEVICE (cuda; cpu to try the script on a CPU), CFG (configs/lite/editor.yaml: the lite world, whose
# models meet their bars; configs/shapes/editor.yaml for the full world), EXTRA (more --set overrides for the
# pair-free run, e.g. "loss.vlm_weight=0.1 loss.dmd_weight=1.0").
# No extension build: CUDA tensors take the Triton kernels (a 5-step smoke run first; if it fails, every run falls
# back to PAIRFREE_BACKEND=reference and the table says so). Nothing is installed: run it where torch,
# transformers, safetensors, tokenizers, tqdm, matplotlib and pyyaml are (the device machines have them).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_editor_out}
PY=${PYTHON:-python3}
COPY_MIN=${COPY_MIN:-1.5}
PAIRED_MIN=${PAIRED_MIN:-2}
EDIT_MIN=${EDIT_MIN:-3}
BATCH=${BATCH:-64}
EXTRA=${EXTRA:-}
CFG=${CFG:-configs/lite/editor.yaml}
RUNS=${RUNS:-/tmp/pairfree_gpu_editor}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
train() { $PY -m pairfree.cli train --config $CFG "$@"; }
common=(batch=$BATCH threads=0 prefetch=4 log_every=50 sample_every=0 ckpt_every=500 device=${DEVICE:-cuda})

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
world=$($PY -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get('world', 'full'))" "$CFG")  # the bench's spec
$PY -m pairfree.cli world bench --spec "$world" --out "$RUNS/bench" --n-per-type 25 --seed 0 >"$OUT/bench.log" 2>&1

backend=auto
train --set out=$RUNS/smoke "${common[@]}" copy_steps=2 steps=3 ckpt_every=100 >"$OUT/smoke.log" 2>&1
smoke_rc=$?
if [ $smoke_rc -ne 0 ]; then
  backend=reference
  export PAIRFREE_BACKEND=reference
  tail -30 "$OUT/smoke.log"
fi

# 1. the copy warm-up, stopped by time; its step count becomes copy_steps of the two runs that resume from it
train --set out=$RUNS/copy "${common[@]}" copy_steps=1000000 steps=0 max_minutes=$COPY_MIN >"$OUT/copy.log" 2>&1
copy_rc=$?
copied=$($PY -c "import torch; print(torch.load('$RUNS/copy/checkpoint.pt', map_location='cpu', weights_only=False)['step'])")
for run in paired editor; do rm -rf "$RUNS/$run"; mkdir -p "$RUNS/$run"; cp "$RUNS/copy/checkpoint.pt" "$RUNS/$run/"; done
total() { $PY -c "print($COPY_MIN + $1)"; }

# 2. the supervised yardstick (uses the true edits: a measuring stick, not the method)
$PY -m pairfree.train.paired --config $CFG --resume --set out=$RUNS/paired "${common[@]}" copy_steps=$copied \
  steps=1000000 max_minutes=$(total $PAIRED_MIN) >"$OUT/paired.log" 2>&1
paired_rc=$?
# 3. the pair-free editor (never sees a target)
train --resume --set out=$RUNS/editor "${common[@]}" copy_steps=$copied steps=1000000 max_minutes=$(total $EDIT_MIN) \
  $EXTRA >"$OUT/editor.log" 2>&1
editor_rc=$?

evaluate() {
  $PY -m pairfree.cli eval --model "$RUNS/$1/model" --bench "$RUNS/bench" --out "$RUNS/eval_$1" --baselines "$2" \
    >"$OUT/eval_$1.log" 2>&1 && cp "$RUNS/eval_$1/metrics.json" "$OUT/eval_$1.json" && cp "$RUNS/eval_$1/metrics.md" "$OUT/eval_$1.md"
}
evaluate copy all; evaluate paired ''; evaluate editor ''
cp -r "$RUNS/editor/model" "$OUT/editor_model"
for run in copy paired editor; do cp "$RUNS/$run/metrics.jsonl" "$OUT/metrics_$run.jsonl" 2>/dev/null; done
cp "$RUNS/editor/loss.png" "$OUT/editor_loss.png" 2>/dev/null

echo
echo "== summary ($(head -1 "$OUT/gpu.txt"); $CFG; batch $BATCH; kernels: $backend; copy $copied steps) =="
$PY - "$OUT" "$RUNS" <<'EOF'
import json, sys, torch
from pathlib import Path
out, runs = Path(sys.argv[1]), Path(sys.argv[2])
print("| run | steps | minutes | system | complete edit | edit success | preservation | PSNR outside mask |")
print("|---|---|---|---|---|---|---|---|")
for run in ("copy", "paired", "editor"):
    ck, res = runs / run / "checkpoint.pt", out / f"eval_{run}.json"
    if not (ck.is_file() and res.is_file()):
        print(f"| {run} | failed: see {run}.log / eval_{run}.log |"); continue
    state = torch.load(ck, map_location="cpu", weights_only=False)
    for system, rows in json.loads(res.read_text()).items():
        o = rows["overall"]
        print(f"| {run} | {state['step']} | {state['wall_s'] / 60:.1f} | {system} | {o['complete edit']:.3f} | "
              f"{o['edit success']:.3f} | {o['preservation']:.3f} | {o['PSNR outside mask']:.1f} |")
EOF
echo "rc: smoke=$smoke_rc copy=$copy_rc paired=$paired_rc editor=$editor_rc"
exit $(( copy_rc || paired_rc || editor_rc ))
