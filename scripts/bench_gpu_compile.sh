#!/usr/bin/env bash
# Compiled against eager on a GPU, in one call of a lease after scripts/bench_gpu.sh: does `--compile` (each
# encoder block and LLM decoder layer under torch.compile) lift the host-bound cases, batch 8 and the two-stage
# placement, toward their FLOP bounds? Not measured on a GPU yet; on the 2-core CPU, where nothing is host-bound,
# it moved no ratio beyond the noise (README, "Two-stage, and compiled models").
#   1. 0.5B, batch 8: eager, then compiled (LaCo@1/4 and two-stage 16x against their external baselines).
#   2. 0.5B, batch 32: compiled, the same placements (eager figures: scripts/bench_gpu.sh, step 2).
# Then `laco bench --compare OUT/eager-b8 OUT/compiled-b8` puts them side by side.
# Usage: scripts/bench_gpu_compile.sh [OUT_DIR]      (laco importable: `pip install -e .` or PYTHONPATH=.)
set -uo pipefail
out=${1:-runs/bench-gpu-compile}
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
bench=("$py" -m laco.bench --preset llava-ov-0.5b --measure encoder,train,prefill --reps 5 --warmup 2 --no-progress
    --methods laco --depths 1/4 --two-stage 1/4,1/2)
{
    "$py" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    step 90 "eager, batch 8" "${bench[@]}" --batch 8 --out "$out/eager-b8"
    step 240 "compiled, batch 8" "${bench[@]}" --batch 8 --compile --out "$out/compiled-b8"
    step 240 "compiled, batch 32" "${bench[@]}" --batch 32 --compile --out "$out/compiled-b32"
    "$py" -m laco.bench --compare "$out/eager-b8" "$out/compiled-b8" --out "$out/compare-b8"
} 2>&1 | tee "$out/log.txt"
