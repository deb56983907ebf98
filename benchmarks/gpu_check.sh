#!/usr/bin/env bash
# GPU check, run from the repo root on a CUDA machine (budget: 8 minutes in all):
#   make gpu-wheels   # here, once: pure-Python wheels (diffusers) into wheels/, carried to the GPU machine
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
# Builds pairfree._C with its CUDA kernels for the visible GPU, then — kernels first, long steps last, each under
# its own time cap — the kernel tests, the kernel benchmarks, the rest of the test suite and the step benchmarks.
# The summary table prints whatever happened (also when a step times out). Logs and raw JSON land in $OUT.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -A RC
STEPS=()

# step NAME CAP_SECONDS LOG COMMAND...: run under a time cap (rc 124 = over its cap), remember the exit status
step() {
    local name=$1 cap=$2 log=$3
    shift 3
    local t0=$(date +%s)
    timeout "$cap" "$@" >"$OUT/$log" 2>&1
    RC[$name]=$?
    STEPS+=("$name")
    echo "$name: rc=${RC[$name]} in $(( $(date +%s) - t0 )) s (cap $cap s)"
}

summary() {
    echo
    echo "== summary =="
    echo "| step | rc | note |"
    echo "|---|---|---|"
    for s in "${STEPS[@]}"; do
        note=""
        case $s in
            tests_*) note=$(grep -E '(passed|failed|error)' "$OUT/$s.log" | tail -1) ;;
        esac
        echo "| $s | ${RC[$s]} | $note |"
    done
    for f in bench_modulated_norm bench_dit_block bench_attention bench_fused_ops bench_unroll_memory bench_train_step; do
        [ -f "$OUT/$f.log" ] && { echo; echo "### $f"; grep -E "^\| " "$OUT/$f.log" | head -30; }
    done
    grep -hE "^(FAILED|ERROR)" "$OUT"/tests_*.log 2>/dev/null | head -20
}
trap summary EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cap=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}.{b}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap}
if [ -d wheels ] && ! $PY -c "import diffusers" 2>/dev/null; then  # diffusers for the SANA tests and train_step
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/pairfree_site wheels/*.whl >"$OUT/wheels.log" 2>&1
    export PYTHONPATH=/tmp/pairfree_site${PYTHONPATH:+:$PYTHONPATH}
fi
MAX_JOBS=${MAX_JOBS:-16} step build 240 build.log $PY -m pip install -e . --no-deps --no-build-isolation
step doctor 30 doctor.log $PY -m pairfree.cli doctor
step tests_kernels 120 tests_kernels.log $PY -m pytest tests/kernels -q -m "not slow" -p no:cacheprovider
step bench_modulated_norm 60 bench_modulated_norm.log $PY benchmarks/modulated_norm.py --out "$OUT"
step bench_dit_block 60 bench_dit_block.log $PY benchmarks/dit_block.py --out "$OUT"
step bench_attention 60 bench_attention.log $PY benchmarks/attention.py --out "$OUT"
step bench_fused_ops 45 bench_fused_ops.log $PY benchmarks/fused_ops.py --out "$OUT"
step tests_rest 150 tests_rest.log $PY -m pytest tests -q -m "not slow" -p no:cacheprovider --ignore tests/kernels
step bench_unroll_memory 40 bench_unroll_memory.log $PY benchmarks/unroll_memory.py --out "$OUT"
step bench_world_render 30 bench_world_render.log $PY benchmarks/world_render.py --device cuda --out "$OUT"
step bench_train_step 60 bench_train_step.log $PY benchmarks/train_step.py --out "$OUT"
worst=0
for s in "${STEPS[@]}"; do [ "${RC[$s]}" -ne 0 ] && worst=1; done
exit $worst
