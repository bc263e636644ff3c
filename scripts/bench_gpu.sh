#!/usr/bin/env bash
# The GPU figures of the README in one call: CUDA-vs-CPU correctness tests, then `laco bench` on the
# LLaVA-OneVision geometries (0.5B and 7B at batch 8, where training and batched serving live; 0.5B at batch 1,
# a single request). Each step has its own time limit so one slow step cannot take the others' results.
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
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$py" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    step 230 "bench llava-ov-0.5b batch 8" "$py" -m laco.bench --preset llava-ov-0.5b --batch 8 --no-progress --out "$out/ov05-b8"
    step 60 "CUDA tests" "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
    step 150 "bench llava-ov-7b batch 8" "$py" -m laco.bench --preset llava-ov-7b --batch 8 --no-progress --out "$out/ov7b-b8"
    step 70 "bench llava-ov-0.5b batch 1" "$py" -m laco.bench --preset llava-ov-0.5b --batch 1 --measure encoder,prefill,decode \
        --no-progress --out "$out/ov05-b1"
} 2>&1 | tee "$out/log.txt"
