"""packaging/build.py on its own: refusals, the archive, its checksum (no PyInstaller run)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import build
import pytest
from bundle_policy import Backend

from tests.conftest import PROJECT_ROOT

BUILD_SCRIPT = PROJECT_ROOT / "packaging" / "build.py"


def _plan(tmp_path: Path, backend: Backend = Backend.CPU) -> build.BuildPlan:
    return build.BuildPlan(
        backend=backend, version="9.8.7", dist_dir=tmp_path / "dist", work_dir=tmp_path / "work"
    )


def _fake_package(folder: Path) -> None:
    """The layout build.py expects after PyInstaller, with tiny stand-in files."""
    contents = folder / "_internal"
    (contents / "llama_cpp" / "lib").mkdir(parents=True)
    (contents / "llama_cpp" / "lib" / "libllama.so").write_bytes(b"\x7fELF")
    platforms = contents / "PySide6" / "Qt" / "plugins" / "platforms"
    platforms.mkdir(parents=True)
    for plugin in ("libqxcb.so", "libqoffscreen.so"):
        (platforms / plugin).write_bytes(b"\x7fELF")
    for rel in build.REQUIRED_RESOURCES:
        target = contents / "resources" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")
    launcher = folder / "fathom-desktop"
    launcher.write_bytes(b"#!launcher")
    launcher.chmod(0o755)
    (contents / "libQt6Core.so.6").symlink_to("PySide6/Qt/lib/libQt6Core.so.6")
    (contents / "PySide6" / "Qt" / "lib").mkdir(parents=True)
    (contents / "PySide6" / "Qt" / "lib" / "libQt6Core.so.6").write_bytes(b"\x7fELF")


def test_a_build_for_the_other_backend_is_refused_in_one_line(tmp_path: Path) -> None:
    """Asking for the backend this llama-cpp-python was not built for stops before PyInstaller."""
    lib_dir = build.llama_lib_dir()
    installed_cuda = any(lib_dir.glob("libggml-cuda.so*"))
    flags = [] if installed_cuda else ["--cuda"]
    done = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), *flags, "--dist", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    expected = (
        "build.py: error: This llama-cpp-python has the CUDA backend; build with --cuda, or "
        "reinstall a CPU build (scripts/bootstrap.sh) for the CPU package."
        if installed_cuda
        else "build.py: error: --cuda needs llama-cpp-python built with CUDA (no libggml-cuda.so "
        f"in {lib_dir}); rebuild it with FATHOM_CUDA=1 scripts/bootstrap.sh."
    )
    assert done.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "dist").exists()


def test_archive_has_one_top_folder_keeps_links_and_modes_and_a_valid_checksum(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path)
    _fake_package(plan.folder)
    build.verify_layout(plan)
    build.write_archive(plan)

    assert plan.archive.name.startswith("fathom-desktop-9.8.7-linux-")
    assert plan.archive.name.endswith(".tar.gz") and "-cuda" not in plan.archive.name
    with tarfile.open(plan.archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {name.split("/")[0] for name in members} == {"fathom-desktop"}
    launcher = members["fathom-desktop/fathom-desktop"]
    assert launcher.mode & 0o111 and launcher.uid == 0 and launcher.uname == ""
    link = members["fathom-desktop/_internal/libQt6Core.so.6"]
    assert link.issym() and link.linkname == "PySide6/Qt/lib/libQt6Core.so.6"

    digest, name = plan.checksum.read_text().split()
    assert name == plan.archive.name
    assert digest == hashlib.sha256(plan.archive.read_bytes()).hexdigest()
    # No temporary file is left beside the archive.
    assert sorted(p.name for p in plan.dist_dir.iterdir()) == sorted(
        ["cpu", plan.archive.name, plan.checksum.name]
    )


def test_cuda_archive_is_named_apart(tmp_path: Path) -> None:
    assert _plan(tmp_path, Backend.CUDA).archive.name.endswith("-cuda.tar.gz")


def test_a_package_without_libllama_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _fake_package(plan.folder)
    (plan.folder / "_internal" / "llama_cpp" / "lib" / "libllama.so").unlink()
    with pytest.raises(build.BuildError, match="llama_cpp would fail to find its library"):
        build.verify_layout(plan)


def test_a_package_with_a_broken_link_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _fake_package(plan.folder)
    (plan.folder / "_internal" / "libgone.so.1").symlink_to("PySide6/Qt/lib/libgone.so.1")
    with pytest.raises(build.BuildError, match="broken link: _internal/libgone.so.1"):
        build.verify_layout(plan)


def test_a_cuda_package_must_carry_the_cuda_runtime(tmp_path: Path) -> None:
    plan = _plan(tmp_path, Backend.CUDA)
    _fake_package(plan.folder)
    with pytest.raises(build.BuildError, match="lacks libcudart.so"):
        build.verify_layout(plan)
    contents = plan.folder / "_internal"
    for name in ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12"):
        (contents / name).write_bytes(b"\x7fELF")
    (contents / "llama_cpp" / "lib" / "libggml-cuda.so.0").write_bytes(b"\x7fELF")
    build.verify_layout(plan)


def test_a_package_must_not_carry_the_nvidia_driver(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _fake_package(plan.folder)
    (plan.folder / "_internal" / "libcuda.so.1").write_bytes(b"\x7fELF")
    with pytest.raises(build.BuildError, match="carries the NVIDIA driver library libcuda.so.1"):
        build.verify_layout(plan)


def test_cuda_libraries_are_found_in_the_toolkit_and_in_nvidias_wheels(
    tmp_path: Path, monkeypatch
) -> None:
    toolkit = tmp_path / "cuda" / "lib64"
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    for folder in (toolkit, site / "nvidia" / "cu13" / "lib", site / "nvidia" / "cublas" / "lib"):
        folder.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "elsewhere")])
    env = {"CUDA_HOME": str(tmp_path / "cuda"), "LD_LIBRARY_PATH": "/opt/mine"}
    monkeypatch.setattr(build.os, "environ", env)
    paths = build.pyinstaller_env(Backend.CUDA)["LD_LIBRARY_PATH"].split(":")
    assert paths == [
        str(toolkit),
        str(site / "nvidia" / "cu13" / "lib"),
        str(site / "nvidia" / "cublas" / "lib"),
        "/opt/mine",
    ]
    # The CPU package needs none of them.
    assert build.pyinstaller_env(Backend.CPU)["LD_LIBRARY_PATH"] == "/opt/mine"


def test_version_comes_from_the_package() -> None:
    from fathom_desktop import __version__

    assert build.app_version() == __version__


def test_cuda_backend_script_without_a_toolkit_says_what_to_install(tmp_path: Path) -> None:
    script = PROJECT_ROOT / "packaging" / "cuda-backend.sh"
    done = subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path / "no-cuda")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"cuda-backend: no nvcc in {tmp_path / 'no-cuda'}/bin; install the CUDA toolkit or set "
        "CUDA_HOME.\n"
    )
