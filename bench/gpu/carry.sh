#!/usr/bin/env bash
# Run here, in the project root, before a check on a bare CUDA machine (no network, nothing of
# ours installed). Fills the git-ignored .gpu/ with what that machine cannot fetch itself:
#   .gpu/src/     llama-cpp-python's source at the pinned version, without the parts of its vendored
#                 llama.cpp a library build never reads (docs, models, tests, the web UI), so that
#                 the whole tree stays under a 64 MiB transfer limit
#   .gpu/wheels/  pure-Python packages a CUDA image usually lacks (gguf, diskcache, tqdm, jinja2)
#   .gpu/*.sh     cuda_build.sh, sourced there
# Usage: bash bench/gpu/carry.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(sed -n 's/^ *"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf .gpu && mkdir -p .gpu/src .gpu/wheels
python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
vendored="$work/llama_cpp_python-$version/vendor/llama.cpp"
rm -rf "$vendored"/{docs,models,media,benches,tests,tools/ui}
tar -czf ".gpu/src/llama_cpp_python-$version.tar.gz" -C "$work" "llama_cpp_python-$version"

# Wheels for the GPU machine's Python (3.12 on current CUDA images; override with GPU_PYTHON).
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d .gpu/wheels gguf diskcache tqdm jinja2 markupsafe
cp bench/gpu/cuda_build.sh .gpu/
du -sh .gpu
