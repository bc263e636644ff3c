#!/usr/bin/env bash
# The GPU figures of the README, one call of a 15-minute lease per suite, on an H200 (141 GB; batch 32 of the
# uncompressed 0.5B training step peaks at 99 GB).
#
# Suite "sweep" (default; 259 s on an H200, docs/bench-gpu/lease2/bench_gpu.sh.log): CUDA-vs-CPU correctness
# tests, then `laco bench` on the LLaVA-OneVision geometries:
#   1. 0.5B, batch 32, every placement (encoder, training step, TTFT): the placement table and plot.
#   2. 7B (4 of 28 layers timed, scaled), batch 32, LaCo@1/4 against external.
#   3. 0.5B, LaCo@1/4 against external at batch 16 and 8: how the ratios grow with the work per kernel launch.
# Suite "compile" (not run on a GPU yet): does `--compile` (each encoder block and LLM decoder layer under
# torch.compile) lift the host-bound cases, batch 8 and two-stage 16x, toward their FLOP bounds? 0.5B, LaCo@1/4
# and two-stage: eager then compiled at batch 8, compiled at batch 32 (eager: the sweep's step 1), and the
# batch-8 pair side by side with `laco bench --compare`. On the 2-core CPU, where nothing is host-bound, it moved
# no ratio beyond the noise (README, "Two-stage, and compiled models").
#
# Decode is left out: LaCo and external feed the LLM the same tokens, so its ratio is 1, and 32 eager decode
# steps per call make up half of the full preset's time (`laco bench --preset llava-ov-0.5b --batch 32`, decode
# included, took 219 s of measurements on the H200: give it its own call).
# Usage: scripts/bench_gpu.sh [OUT_DIR] [sweep|compile]      (laco importable: `pip install -e .` or PYTHONPATH=.)
set -uo pipefail
suite=${2:-sweep}
out=${1:-runs/bench-gpu-$suite}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() {  # step SECONDS NAME COMMAND...: run with a limit, say how it ended, keep going
    local limit=$1 name=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - t0)) s (limit $limit s)"
}
bench=("$py" -m laco.bench --measure encoder,train,prefill --reps 5 --warmup 2 --no-progress)
headline=(--methods laco --depths 1/4 --two-stage none)
with_two_stage=(--preset llava-ov-0.5b --methods laco --depths 1/4 --two-stage 1/4,1/2)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$py" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    case $suite in
    sweep)
        step 60 "CUDA tests" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
        step 200 "0.5B batch 32, every placement" "${bench[@]}" --preset llava-ov-0.5b --batch 32 --out "$out/ov05-b32"
        step 150 "7B batch 32" "${bench[@]}" --preset llava-ov-7b --batch 32 "${headline[@]}" --out "$out/ov7b-b32"
        step 60 "0.5B batch 16" "${bench[@]}" --preset llava-ov-0.5b --batch 16 "${headline[@]}" --out "$out/ov05-b16"
        step 60 "0.5B batch 8" "${bench[@]}" --preset llava-ov-0.5b --batch 8 "${headline[@]}" --out "$out/ov05-b8"
        ;;
    compile)
        step 90 "eager, batch 8" "${bench[@]}" "${with_two_stage[@]}" --batch 8 --out "$out/eager-b8"
        step 240 "compiled, batch 8" "${bench[@]}" "${with_two_stage[@]}" --batch 8 --compile --out "$out/compiled-b8"
        step 240 "compiled, batch 32" "${bench[@]}" "${with_two_stage[@]}" --batch 32 --compile --out "$out/compiled-b32"
        "$py" -m laco.bench --compare "$out/eager-b8" "$out/compiled-b8" --variant laco@1/4+1/2 --out "$out/compare-b8"
        ;;
    *)
        echo "unknown suite $suite: use sweep or compile" >&2
        exit 2
        ;;
    esac
} 2>&1 | tee "$out/log.txt"
