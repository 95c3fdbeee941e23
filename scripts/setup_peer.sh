#!/usr/bin/env bash
# Create .venv-peer with llm-compressor 0.14 for benchmarks/versus_llmcompressor.py. It pins an older
# transformers than the project, so it gets its own venv; torch goes in first (the CPU wheel, as setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
[ -x .venv-peer/bin/python ] || "$PY" -m venv .venv-peer
.venv-peer/bin/python -m pip install -q --upgrade pip
.venv-peer/bin/python -m pip install -q "torch==${TORCH_VERSION}"
.venv-peer/bin/python -m pip install -q "llmcompressor==0.14.0" sentencepiece  # sentencepiece: stories260K's slow tokenizer
.venv-peer/bin/python -c "import llmcompressor, transformers; print('peer ready: llm-compressor', llmcompressor.__version__, '| transformers', transformers.__version__)"
