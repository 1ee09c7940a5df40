#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools (llama-perplexity, llama-imatrix, llama-quantize) from
# the sources of the pinned llama-cpp-python, so the tests can check fathom-convert's statistics,
# importance matrices and quantizations against the tools users compare us with, built from the
# very llama.cpp the app runs. Prints the folder holding the binaries.
# About 15 minutes on 2 cores the first time; later runs reuse the build.
# Usage: scripts/llama_tools.sh [--print-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^ *"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
root="${FATHOM_LLAMA_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fathom-desktop}/llama-tools-$version"
bin="$root/build/bin"
targets=(llama-perplexity llama-imatrix llama-quantize)
if [ "${1:-}" = "--print-dir" ]; then echo "$bin"; exit 0; fi

missing=0
for t in "${targets[@]}"; do [ -x "$bin/$t" ] || missing=1; done
if [ "$missing" = 1 ]; then
    mkdir -p "$root"
    if [ ! -d "$root/src" ]; then
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        python3 -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$version" -d "$work" 2>/dev/null
        tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
        mv "$work/llama_cpp_python-$version/vendor/llama.cpp" "$root/src"
    fi
    echo "llama_tools: building ${targets[*]} from llama.cpp $version (minutes, once)" >&2
    # The same portable CPU flags as the app's own build (a native build can pick AMX kernels
    # that crash on quantized models).
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    cmake -S "$root/src" -B "$root/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >/dev/null
    cmake --build "$root/build" --parallel "$(nproc)" --target "${targets[@]}" >/dev/null
fi
echo "$bin"
