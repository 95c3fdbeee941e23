#!/usr/bin/env bash
# Create .venv and install the project. torch goes in first so that no requirement drags in a
# multi-GB CUDA build on a CPU machine. Options:
#   --with-llamacpp  also build llama-cpp-python from source (about 6 minutes on 2 cores), which the
#                    GGUF verification and k-quant export need
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
WITH_LLAMACPP=0
for arg in "$@"; do
  case "$arg" in
    --with-llamacpp) WITH_LLAMACPP=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install -q -e ".[test]"
if [ "$WITH_LLAMACPP" = 1 ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python from source (several minutes)..."
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install -q ".[llamacpp]"
fi
.venv/bin/python -c "import torch, transformers, pruning; print('ready: torch', torch.__version__, '| transformers', transformers.__version__, '| pruning', pruning.__version__)"
