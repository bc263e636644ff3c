#!/usr/bin/env bash
# The serving benchmark on a lent GPU (not run yet: no device was lent to this task). One call, ~10 min:
#   laco bench --engine vllm --device cuda: LaCo@1/4 vs external, LLaVA-OneVision-0.5B geometry (random weights,
#   full 24-layer LLM), each served by `vllm serve` (bfloat16), requests/s at 1, 4 and 16 concurrent requests of 32
#   tokens, 5 rounds; then a Qwen2.5-VL-7B geometry converted keep_llm_tokens against the stock model (448 px).
# The device machine reaches no package registry, so vLLM cannot be installed there: SERVE_PYTHON must name a Python
# that already has a CUDA build of vLLM (e.g. a venv made beforehand with `pip install vllm`); laco is added to it
# here without dependencies (nothing to download). laco's own environment (torch, transformers) runs the driver.
# Usage: SERVE_PYTHON=/path/to/vllm-venv/bin/python scripts/bench_gpu_serving.sh [OUT_DIR]
set -uo pipefail
out=${1:-runs/bench-gpu-serving}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
serve=${SERVE_PYTHON:-}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    if [ -z "$serve" ] || ! "$serve" -c "import vllm, torch; assert torch.cuda.is_available(); print('vllm', vllm.__version__, 'torch', torch.__version__)"; then
        echo "== no CUDA vLLM: set SERVE_PYTHON to a Python with a CUDA build of vLLM (this machine cannot download one)"
        exit 2
    fi
    "$serve" -m pip install -q --no-deps --no-build-isolation -e . || exit 2
    t0=$SECONDS
    timeout 300 "$py" -m laco bench --engine vllm --device cuda --serve-python "$serve" \
        --output-tokens 32 --rounds 5 --warmup 1 --out "$out/llava-ov-0.5b"
    echo "== serving bench llava-ov-0.5b: exit $? after $((SECONDS - t0)) s"
    timeout 270 "$py" -m laco bench --engine vllm --preset qwen2.5-vl-7b-tower --device cuda --serve-python "$serve" \
        --output-tokens 32 --rounds 3 --warmup 1 --out "$out/qwen2.5-vl-7b"
    echo "== serving bench qwen2.5-vl-7b: exit $? after $((SECONDS - t0)) s"
} 2>&1 | tee "$out/bench_gpu_serving.sh.log"
