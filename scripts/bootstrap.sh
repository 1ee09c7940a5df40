#!/usr/bin/env bash
# Creates .venv and installs Fathom Desktop into it (editable), with the test tools when asked.
# Usage: scripts/bootstrap.sh [--test]
# llama-cpp-python compiles from source. A native CPU build picks AMX kernels that crash on
# quantized models on some machines, so the default build uses portable x86-64 flags;
# FATHOM_CUDA=1 builds the CUDA backend instead (needs the CUDA toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

if [ "${FATHOM_CUDA:-0}" = "1" ]; then
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=on}"
else
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
fi

stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extras}"
    touch "$stamp"
fi
