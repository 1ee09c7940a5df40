# Sourced on the CUDA machine from the project root, after bench/gpu/carry.sh ran here:
#     source .gpu/cuda_build.sh && python3 bench/engine_overhead.py ...
# Compiles llama-cpp-python with CUDA (Hopper, sm_90, unless CUDA_ARCHS says otherwise) and
# installs it, the carried wheels and this project into /tmp/site, which goes on PYTHONPATH.
# About 330 s on a 16-core machine; a machine still warm from an earlier call keeps /tmp/site
# and skips the compile.
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
_fathom_cuda_build() {
    local started src
    started=$(date +%s)
    python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || return 1
    rm -rf /tmp/lcp && mkdir -p /tmp/lcp
    tar -xzf .gpu/src/llama_cpp_python-*.tar.gz -C /tmp/lcp
    src=$(ls -d /tmp/lcp/llama_cpp_python-*)
    # Portable CPU flags: a native build can pick AMX kernels that crash on quantized models.
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90} -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        python3 -m pip wheel --quiet --no-build-isolation --no-deps -w /tmp/lcp/wheel "$src" || return 1
    python3 -m pip install --quiet --no-index --no-deps --target /tmp/site /tmp/lcp/wheel/*.whl || return 1
    echo "cuda_build: llama-cpp-python compiled in $(( $(date +%s) - started )) s"
}
if [ ! -d /tmp/site/llama_cpp ]; then
    _fathom_cuda_build || return 1
fi
# This project, without its dependencies (the GPU image has numpy; Qt is not needed for checks).
python3 -m pip install --quiet --no-index --no-deps --no-build-isolation --target /tmp/site . \
    || echo "cuda_build: the project did not install; run checks from the source tree instead"
python3 -c "import llama_cpp as l; print('cuda_build: llama_cpp', l.__version__, 'GPU offload:', l.llama_supports_gpu_offload())"
