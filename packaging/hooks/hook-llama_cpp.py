"""PyInstaller hook for llama-cpp-python.

llama_cpp loads its native library with ctypes from `<package>/lib/libllama.so`
(llama_cpp/_ctypes_extensions.py), which PyInstaller's import analysis cannot see: without this
hook the frozen app stops at "Shared library with base name 'llama' not found". Collecting the
entry library into the same relative folder is enough; PyInstaller's dependency analysis then
follows its DT_NEEDED entries (libggml.so.0, libggml-base.so.0, libggml-cpu.so.0 and, in a CUDA
build, libggml-cuda.so.0 with the CUDA runtime) and, because they live in site-packages, keeps
them in llama_cpp/lib beside it, where the $ORIGIN run path of each library finds the next.
"""

from __future__ import annotations

from pathlib import Path

from PyInstaller.utils.hooks import get_package_paths

_, _package_dir = get_package_paths("llama_cpp")
_entry = Path(_package_dir) / "lib" / "libllama.so"
if not _entry.is_file():
    raise SystemExit(f"llama-cpp-python has no {_entry}; reinstall it (scripts/bootstrap.sh).")

binaries = [(str(_entry), "llama_cpp/lib")]
