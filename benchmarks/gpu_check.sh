#!/usr/bin/env bash
# GPU check, run from the repo root on a CUDA machine:
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
# Builds pairfree._C with its CUDA kernels for the visible GPU, prints `pairfree doctor`, runs the test suite
# (GPU parametrizations: Triton and CUDA backends in fp32/fp16/bf16), runs the kernel benchmarks, and ends with
# a short table. Logs and raw JSON land in $OUT (at most 8 files).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cap=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}.{b}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap}
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install -e . --no-deps --no-build-isolation >"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start )) s (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
[ $build_rc -eq 0 ] || tail -40 "$OUT/build.log"

$PY -m pairfree.cli doctor | tee "$OUT/doctor.txt"

$PY -m pytest tests -q -m "not slow" -p no:cacheprovider >"$OUT/tests.log" 2>&1
tests_rc=$?
gpu_cases=$(grep -c "cuda-" "$OUT/tests.log" || true)
$PY -m pytest tests -q -m gpu -p no:cacheprovider --co 2>/dev/null | tail -1 >>"$OUT/tests.log"

$PY benchmarks/modulated_rms_norm.py --out "$OUT" >"$OUT/bench_modulated_rms_norm.md" 2>&1
bench_rc=$?
$PY benchmarks/attention.py --out "$OUT" >"$OUT/bench_attention.md" 2>&1
attn_rc=$?
$PY benchmarks/fused_ops.py --out "$OUT" >"$OUT/bench_fused_ops.md" 2>&1
fused_rc=$?
$PY benchmarks/unroll_memory.py --out "$OUT" >"$OUT/bench_unroll_memory.md" 2>&1
unroll_rc=$?
$PY benchmarks/world_render.py --device cuda --out "$OUT" >"$OUT/bench_world_render.md" 2>&1
render_rc=$?
# the full-step benchmark needs diffusers (DC-AE); the GPU machine has none: carry its pure-Python wheel in wheels/
$PY -c "import diffusers" 2>/dev/null || $PY -m pip install --no-deps --no-index --find-links wheels diffusers >>"$OUT/build.log" 2>&1
$PY benchmarks/train_step.py --out "$OUT" >"$OUT/bench_train_step.md" 2>&1
step_rc=$?

echo
echo "== summary =="
echo "| step | result |"
echo "|---|---|"
echo "| build pairfree._C (CUDA) | rc=$build_rc |"
echo "| tests (not slow) | rc=$tests_rc: $(grep -E '(passed|failed)' "$OUT/tests.log" | tail -1) |"
echo "| benchmark modulated_rms_norm | rc=$bench_rc |"
echo "| benchmark attention | rc=$attn_rc |"
echo "| benchmark fused_ops | rc=$fused_rc |"
echo "| benchmark unroll_memory | rc=$unroll_rc |"
echo "| benchmark world_render (GPU) | rc=$render_rc: $(grep -E '^\| world.render \| 32x32' "$OUT/bench_world_render.md" | head -1) |"
echo "| benchmark train_step | rc=$step_rc |"
echo
grep -E "^\| op |^\|---|\| full \|" "$OUT/bench_modulated_rms_norm.md" || tail -20 "$OUT/bench_modulated_rms_norm.md"
echo
grep -E "^\| shape |^\|---|\| full \|" "$OUT/bench_attention.md" | head -80 || tail -20 "$OUT/bench_attention.md"
[ $tests_rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
echo
grep -E "^\| " "$OUT/bench_fused_ops.md" | head -40
echo
grep -E "^\| " "$OUT/bench_unroll_memory.md" | head -10
echo
grep -E "^\| " "$OUT/bench_train_step.md" | head -10 || tail -20 "$OUT/bench_train_step.md"
exit $(( build_rc || tests_rc || bench_rc || attn_rc || fused_rc || unroll_rc || step_rc ))
