#!/usr/bin/env bash
# The teacher at GPU scale (issue 8), from the repo root:   OUT=/tmp/gpu_teacher bash benchmarks/gpu_teacher.sh
# Trains configs/shapes/teacher_gpu.yaml (the shipped teacher's size with patch 2, batches of 256 drawn on the GPU)
# for TEACHER_MIN minutes, then asks the question the editor needs answered: does its pull edit *and keep the
# rest*? Pixel optimisation against score distillation toward it (`pairfree.eval.judge_gradient --teacher`: DMD's
# signal with the generator taken out) on N held-out edits, next to the shipped teacher. The model comes back
# under $OUT/teacher_model. Knobs (env): TEACHER_MIN (6), N (56), DEVICE (cuda; cpu to try the script on a CPU),
# EXTRA (more --set overrides for the pretraining, e.g. "batch=16 eval_items=16" on a CPU).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_teacher_out}
PY=${PYTHON:-python3}
TEACHER_MIN=${TEACHER_MIN:-6}
N=${N:-56}
RUNS=${RUNS:-/tmp/pairfree_gpu_teacher}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
# shellcheck disable=SC2086
$PY -m pairfree.cli pretrain teacher --config configs/shapes/teacher_gpu.yaml --set out=$RUNS/teacher \
  loop.max_minutes=$TEACHER_MIN loop.device=${DEVICE:-cuda} ${EXTRA:-} >"$OUT/teacher.log" 2>&1
teacher_rc=$?
tail -5 "$OUT/teacher.log"
[ -d "$RUNS/teacher/model" ] && cp -r "$RUNS/teacher/model" "$OUT/teacher_model"

probe() {  # $1 name, $2 teacher
  $PY -m pairfree.eval.judge_gradient --vlm-weight 0 --teacher "$2" --t-range 0.3 0.7 --n "$N" --out "$OUT" \
    --name "probe_$1" >"$OUT/probe_$1.log" 2>&1
}
probe shipped shapes-teacher
[ $teacher_rc -eq 0 ] && probe gpu "$RUNS/teacher/model"

$PY - "$OUT" "$teacher_rc" <<'PY'
import json, sys
from pathlib import Path

out, rc = Path(sys.argv[1]), sys.argv[2]
shipped = json.loads(Path("pairfree/weights/shapes-teacher/metrics.json").read_text())
rows = [("shapes-teacher (CPU, 88 min, patch 4)", shipped, out / "probe_shipped.json")]
if (out / "teacher_model" / "metrics.json").is_file():
    card = (out / "teacher_model" / "MODEL_CARD.md").read_text()
    steps = next((ln.split(":", 1)[1].split()[0] for ln in card.splitlines() if ln.startswith("- steps:")), "?")
    rows.append((f"teacher_gpu ({steps} steps, patch 2)", json.loads((out / "teacher_model" / "metrics.json").read_text()), out / "probe_gpu.json"))
print(f"\nteacher pretraining exit code {rc}")
print("| teacher | caption match | probe edit success | probe preservation | probe complete | PSNR outside mask |")
print("|---|---|---|---|---|---|")
for name, m, probe in rows:
    p = json.loads(probe.read_text()) if probe.is_file() else {}
    cells = [f"{p[k]:.3f}" if k in p else "—" for k in ("edit success", "preservation", "complete edit")]
    psnr = f"{p['PSNR outside mask']:.1f}" if "PSNR outside mask" in p else "—"
    print(f"| {name} | {m['caption attribute match']:.3f} | {' | '.join(cells)} | {psnr} |")
PY
