#!/usr/bin/env bash
# The GPU figures of the README in one call: CUDA-vs-CPU correctness tests, then `laco bench` on the
# LLaVA-OneVision geometries at batch 8 (and 0.5B at batch 32), LaCo@1/4 against external compression.
# Sized for a 15-minute GPU lease: the full preset (13 variants x 4 measurements x 10 rounds, decode included)
# takes over 4 minutes per geometry on an H200 in eager mode, so this runs the headline comparison only.
# Usage: scripts/bench_gpu.sh [OUT_DIR]      (laco importable: `pip install -e .` or PYTHONPATH=.)
set -uo pipefail
out=${1:-runs/bench-gpu}
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
headline=(--batch 8 --methods laco --depths 1/4 --two-stage none --measure encoder,train,prefill --reps 5 --warmup 2)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$py" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    step 60 "CUDA tests" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
    step 90 "bench llava-ov-0.5b" "$py" -m laco.bench --preset llava-ov-0.5b "${headline[@]}" --no-progress --out "$out/ov05-b8"
    step 90 "bench llava-ov-7b" "$py" -m laco.bench --preset llava-ov-7b "${headline[@]}" --no-progress --out "$out/ov7b-b8"
    # Batch 32 (4x the work per launch): if the 0.5B ratios move toward the FLOP bound, batch 8 was launch-bound.
    step 90 "bench llava-ov-0.5b batch 32" "$py" -m laco.bench --preset llava-ov-0.5b "${headline[@]}" --batch 32 \
        --no-progress --out "$out/ov05-b32"
} 2>&1 | tee "$out/log.txt"
