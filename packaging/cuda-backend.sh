#!/usr/bin/env bash
# Builds llama-cpp-python with llama.cpp's CUDA backend into .venv-cuda, the environment that
# `packaging/build.py --cuda` packages from. Needs the CUDA toolkit (nvcc) and a C compiler.
#
#   packaging/cuda-backend.sh                  # llama.cpp's own GPU list (Turing to Blackwell)
#   CUDA_ARCHS=86 packaging/cuda-backend.sh    # one architecture: a much shorter compile
#   .venv-cuda/bin/python packaging/build.py --cuda
#
# Kept apart from .venv on purpose: a CUDA llama-cpp-python does not even import on a machine
# without the NVIDIA driver (it links libcuda.so.1), so the tests and the CPU package keep the CPU
# build. pip's wheel cache is bypassed both ways: it keys a built wheel by the source archive
# alone, so a cached CPU wheel would silently satisfy this build, or this one the CPU bootstrap.
#
# Toolkits without cuBLAS or the driver stub (the slim container images) are completed here:
# cuBLAS from NVIDIA's pip wheel for the same CUDA release, installed into .venv-cuda (where
# build.py finds it to bundle), and a link-time libcuda stub (cuda_driver_stub.c), never packaged.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
VENV=${FATHOM_CUDA_VENV:-.venv-cuda}
WORK=build/cuda-backend
PYTHON=${PYTHON:-python3}
fail() { echo "cuda-backend: $*" >&2; exit 2; }

[ -x "$CUDA_HOME/bin/nvcc" ] || fail "no nvcc in $CUDA_HOME/bin; install the CUDA toolkit or set CUDA_HOME."
cuda_release=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
cuda_major=${cuda_release%%.*}
[ -n "$cuda_major" ] || fail "cannot read the CUDA release from nvcc --version."
llama_pin=$(sed -n 's/^ *"\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)
[ -n "$llama_pin" ] || fail "pyproject.toml pins no llama-cpp-python version."

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --quiet "$@"; }
pip install --upgrade pip
mkdir -p "$WORK/link"

cmake_args=(-DGGML_CUDA=on -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=off)
[ -n "${CUDA_ARCHS:-}" ] && cmake_args+=("-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS")

if [ ! -e "$CUDA_HOME/include/cublas_v2.h" ]; then
    if [ "$cuda_major" -ge 13 ]; then wheel="nvidia-cublas==$cuda_release.*"
    else wheel="nvidia-cublas-cu$cuda_major==$cuda_release.*"; fi
    echo "cuda-backend: the toolkit has no cuBLAS; using NVIDIA's wheel $wheel"
    pip install --no-cache-dir "$wheel"
    header=$(ls "$VENV"/lib/python3*/site-packages/nvidia/*/include/cublas_v2.h | head -1)
    cublas=$(realpath "$(dirname "$(dirname "$header")")")
    for lib in cublas cublasLt; do
        ln -sf "$(realpath "$(ls "$cublas"/lib/lib$lib.so.* | head -1)")" "$WORK/link/lib$lib.so"
        cmake_args+=("-DCUDA_${lib}_LIBRARY=$PWD/$WORK/link/lib$lib.so")
    done
    cmake_args+=("-DCMAKE_CUDA_FLAGS=-I$cublas/include" "-DCMAKE_CXX_FLAGS=-I$cublas/include")
fi
if [ ! -e "$CUDA_HOME/lib64/stubs/libcuda.so" ] && [ ! -e "$CUDA_HOME/lib64/libcuda.so" ]; then
    echo "cuda-backend: the toolkit has no libcuda stub; linking against packaging/cuda_driver_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/link/libcuda.so" packaging/cuda_driver_stub.c
    cmake_args+=("-DCUDA_cuda_driver_LIBRARY=$PWD/$WORK/link/libcuda.so")
fi

# A wheel built with the same settings is reused: the compile is the slow part (hours on 2 cores).
stamp="$llama_pin CUDA $cuda_release ${cmake_args[*]}"
if [ "$(cat "$WORK/wheel.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$WORK/wheel" "$WORK/wheel.stamp"
    echo "cuda-backend: compiling $llama_pin with CUDA $cuda_release (archs: ${CUDA_ARCHS:-llama.cpp default})"
    started=$(date +%s)
    CUDACXX="$CUDA_HOME/bin/nvcc" CMAKE_ARGS="${cmake_args[*]}" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$WORK/wheel" "$llama_pin"
    echo "$stamp" > "$WORK/wheel.stamp"
    echo "cuda-backend: compiled in $(( $(date +%s) - started )) s"
fi
pip install --force-reinstall --no-deps "$WORK"/wheel/llama_cpp_python-*.whl
pip install -e ".[package]"

lib=$(ls "$VENV"/lib/python3*/site-packages/llama_cpp/lib/libggml-cuda.so* 2>/dev/null | head -1)
[ -n "$lib" ] || fail "the installed llama-cpp-python has no libggml-cuda.so; see the build log above."
echo "cuda-backend: ready; now run $VENV/bin/python packaging/build.py --cuda"
