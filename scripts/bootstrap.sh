#!/usr/bin/env bash
# Creates .venv and installs Fathom Desktop into it (editable), with the test tools when asked.
# Usage: scripts/bootstrap.sh [--test]
# llama-cpp-python compiles from source. A native CPU build picks AMX kernels that crash on
# quantized models on some machines, so the default build uses portable x86-64 flags;
# FATHOM_CUDA=1 builds the CUDA backend instead (needs the CUDA toolkit), to run from source on a
# GPU; the CUDA package is made from its own venv (packaging/cuda-backend.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

portable="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
if [ "${FATHOM_CUDA:-0}" = "1" ]; then
    want=cuda
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=on $portable}"
else
    want=cpu
    export CMAKE_ARGS="${CMAKE_ARGS:-$portable}"
fi

# pip's wheel cache keys a wheel built from source by the source archive alone, not by
# CMAKE_ARGS: a cached CPU build would satisfy a CUDA request (and the reverse) without a word.
# So check what is installed and rebuild, bypassing the cache, when it is the other backend.
installed_backend() {
    local lib
    lib=$(ls .venv/lib/python3*/site-packages/llama_cpp/lib/libllama.so 2>/dev/null | head -1)
    if [ -z "$lib" ]; then echo none
    elif ls "$(dirname "$lib")"/libggml-cuda.so* >/dev/null 2>&1; then echo cuda
    else echo cpu; fi
}

stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extras}"
    touch "$stamp"
fi
if [ "$(installed_backend)" != "$want" ]; then
    echo "bootstrap: the installed llama-cpp-python is not the $want build; rebuilding it (minutes)"
    pin=$(sed -n 's/^ *"\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)
    .venv/bin/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
        --no-binary llama-cpp-python "$pin"
fi
