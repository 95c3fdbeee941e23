#!/usr/bin/env bash
# Create .venv and install everything the default grid and the tests need, llama-cpp-python included
# (built from source: about 6 minutes on 2 cores the first time; pip keeps it once installed).
# torch goes in first so that no requirement drags in a multi-GB CUDA build on a CPU machine.
# `--with-llamacpp` (the former opt-in) is still accepted and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
for arg in "$@"; do
  case "$arg" in
    --with-llamacpp) ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
# One editable install with the extras (bnb: bitsandbytes, for 4-bit scoring of PruneGPT job files): a second,
# non-editable `pip install ".[llamacpp]"` would replace the
# editable project with a copy of today's checkout.
.venv/bin/python -c "import llama_cpp" 2>/dev/null || echo "building llama-cpp-python from source (several minutes)..."
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install -q -e ".[test,llamacpp,bnb]"
.venv/bin/python -c "import torch, transformers, llama_cpp, pruning; print('ready: torch', torch.__version__, '| transformers', transformers.__version__, '| llama-cpp-python', llama_cpp.__version__, '| pruning', pruning.__version__)"
