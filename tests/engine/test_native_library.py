"""When llama.cpp's native library will not load, every entry point says why in one line.

The commonest case is the CUDA package on a machine without the NVIDIA driver: libggml-cuda.so
links libcuda.so.1, which only the driver installs, so `import llama_cpp` fails. The subprocess
tests put a stand-in llama_cpp first on the path that fails exactly as llama-cpp-python 0.3.36
does there (its message checked against a real CUDA build on a machine without the driver).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fathom_desktop.engine.native import NO_DRIVER, explain
from tests.conftest import PROJECT_ROOT

LIB = "/opt/fathom-desktop/_internal/llama_cpp/lib/libllama.so"
NO_DRIVER_ERROR = (
    f"Failed to load shared library '{LIB}': libcuda.so.1: cannot open shared object file: "
    "No such file or directory"
)


def test_a_missing_driver_is_named_with_the_fix() -> None:
    assert explain(RuntimeError(NO_DRIVER_ERROR)) == NO_DRIVER
    assert "install the NVIDIA driver, or use the CPU package" in NO_DRIVER


def test_the_driver_is_found_behind_pyinstallers_message_in_the_package() -> None:
    # What the packaged app raises (seen in the unpacked CUDA package on a machine without the
    # driver): llama_cpp's RuntimeError, raised while handling PyInstaller's ctypes error, raised
    # from the loader's OSError.
    class PyInstallerImportError(OSError):
        pass

    loader = OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
    frozen = (
        f"Failed to load dynlib/dll '{LIB}'. Most likely this dynlib/dll was not found when the "
        "application was frozen."
    )
    try:
        try:
            raise PyInstallerImportError(frozen) from loader
        except OSError as e:
            raise RuntimeError(f"Failed to load shared library '{LIB}': {e}")  # noqa: B904
    except RuntimeError as error:
        assert explain(error) == NO_DRIVER


def test_a_missing_cuda_runtime_is_named_apart_from_the_driver() -> None:
    error = OSError("libcublasLt.so.13: cannot open shared object file: No such file or directory")
    message = explain(error)
    assert message.startswith("The CUDA runtime library libcublasLt.so.13 is missing")
    assert "driver" not in message


def test_other_failures_keep_the_loaders_words_on_one_line() -> None:
    error = RuntimeError(f"Failed to load shared library '{LIB}':\n  undefined symbol: ggml_foo")
    message = explain(error)
    assert message.startswith("llama.cpp could not be loaded: Failed to load shared library")
    assert "undefined symbol: ggml_foo" in message and "\n" not in message


@pytest.fixture
def no_driver_env(tmp_path: Path) -> dict[str, str]:
    stand_in = tmp_path / "site" / "llama_cpp"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(f"raise RuntimeError({NO_DRIVER_ERROR!r})\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stand_in.parent), str(PROJECT_ROOT)])
    env["FATHOM_HOME"] = str(tmp_path / "home")
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_self_test_fails_first_at_the_backend_with_the_fix(no_driver_env) -> None:
    done = _run(no_driver_env, "-m", "fathom_desktop.app", "--self-test")
    assert done.returncode == 1
    assert done.stdout == f"self-test FAILED at llama.cpp backend: {NO_DRIVER}\n"
    assert "Traceback" not in done.stderr
    # Nothing was converted: the demo model is made only once llama.cpp loads.
    assert not list(Path(no_driver_env["FATHOM_HOME"]).rglob("*.gguf"))


def test_version_still_prints_and_names_the_reason(no_driver_env) -> None:
    done = _run(no_driver_env, "-m", "fathom_desktop.app", "--version")
    assert done.returncode == 0, done.stderr
    assert f"llama.cpp unavailable ({NO_DRIVER})" in done.stdout


def test_fathom_chat_gives_one_line_and_a_failure_status(no_driver_env, tiny_gguf_f32) -> None:
    done = _run(
        no_driver_env,
        "-m",
        "fathom_desktop.chat_cli",
        "--model",
        str(tiny_gguf_f32),
        "--prompt",
        "What is 2 + 2?",
    )
    assert done.returncode != 0
    assert done.stderr == f"fathom-chat: {NO_DRIVER}\n"
    assert done.stdout == ""
