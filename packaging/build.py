"""Build the self-contained Linux package of Fathom Desktop.

    python packaging/build.py           # CPU build from the llama-cpp-python in this environment
    python packaging/build.py --cuda    # needs llama-cpp-python compiled with -DGGML_CUDA=on

Writes dist/<backend>/fathom-desktop/ (the one-folder app) and, beside it in dist/,
fathom-desktop-<version>-linux-<arch>[-cuda].tar.gz with a .sha256 file that `sha256sum -c` reads.
Every problem found before or after PyInstaller runs is reported as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGING_DIR = Path(__file__).resolve().parent
ROOT = PACKAGING_DIR.parent
sys.path.insert(0, str(PACKAGING_DIR))

from bundle_policy import (  # noqa: E402
    CUDA_RUNTIME_LIBRARIES,
    LLAMA_ENTRY_LIBRARY,
    LLAMA_LIB_DIR,
    Backend,
)

APP_NAME = "fathom-desktop"
SPEC_FILE = PACKAGING_DIR / "fathom-desktop.spec"
DESKTOP_INSTALLER = PACKAGING_DIR / "install-desktop-entry.sh"
CONTENTS_DIR = "_internal"
# What the app reads from resources/ at run time; the package is useless without them.
REQUIRED_RESOURCES = ("fathom-desktop.desktop", "icons/fathom-desktop.svg")


class BuildError(Exception):
    """str(error) is one line telling the user what is wrong and what to do."""


@dataclass(frozen=True)
class BuildPlan:
    backend: Backend
    version: str
    dist_dir: Path
    work_dir: Path

    @property
    def folder(self) -> Path:
        return self.dist_dir / self.backend.value / APP_NAME

    @property
    def archive(self) -> Path:
        suffix = "-cuda" if self.backend is Backend.CUDA else ""
        name = f"{APP_NAME}-{self.version}-linux-{platform.machine()}{suffix}.tar.gz"
        return self.dist_dir / name

    @property
    def checksum(self) -> Path:
        return self.archive.with_name(self.archive.name + ".sha256")


@dataclass(frozen=True)
class BuildResult:
    warnings: list[str]
    folder: Path
    archive: Path
    checksum: Path
    folder_bytes: int
    archive_bytes: int
    seconds: float
    largest: list[tuple[str, int]]


def app_version() -> str:
    init = (ROOT / "fathom_desktop" / "__init__.py").read_text(encoding="utf-8")
    for line in init.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise BuildError("fathom_desktop/__init__.py has no __version__ line.")


def llama_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "llama-cpp-python is not installed in this Python; run scripts/bootstrap.sh first."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def check_environment(backend: Backend) -> None:
    """Refuse early, with the fix, instead of producing a package that cannot start."""
    if not sys.platform.startswith("linux"):
        raise BuildError(f"This script builds the Linux package; this is {sys.platform}.")
    if importlib.util.find_spec("PyInstaller") is None:
        raise BuildError(
            "PyInstaller is not installed; run: .venv/bin/pip install 'pyinstaller==6.22.3'"
        )
    lib_dir = llama_lib_dir()
    if not (lib_dir / LLAMA_ENTRY_LIBRARY).is_file():
        raise BuildError(f"{lib_dir / LLAMA_ENTRY_LIBRARY} is missing; reinstall llama-cpp-python.")
    has_cuda = any(lib_dir.glob("libggml-cuda.so*"))
    if backend is Backend.CUDA and not has_cuda:
        raise BuildError(
            "--cuda needs llama-cpp-python built with CUDA (no libggml-cuda.so in "
            f"{lib_dir}); rebuild it with FATHOM_CUDA=1 scripts/bootstrap.sh."
        )
    if backend is Backend.CPU and has_cuda:
        raise BuildError(
            "This llama-cpp-python has the CUDA backend; build with --cuda, or reinstall a CPU "
            "build (scripts/bootstrap.sh) for the CPU package."
        )
    for rel in REQUIRED_RESOURCES:
        if not (ROOT / "resources" / rel).is_file():
            raise BuildError(f"resources/{rel} is missing from the working tree.")
    if shutil.which("strip") is None:
        raise BuildError("`strip` (binutils) is not installed; apt-get install binutils.")


def cuda_library_dirs(env: dict[str, str]) -> list[Path]:
    """Where libcudart/libcublas/libcublasLt may live on a build machine, in search order.

    The toolkit's lib64, or NVIDIA's pip wheels (nvidia-cublas, nvidia-cuda-runtime) under
    site-packages/nvidia/<pkg>/lib (cu12 wheels) or nvidia/cu13/lib: the toolkit images that
    ship without cuBLAS leave it to the wheels.
    """
    dirs = [Path(env.get("CUDA_HOME", "/usr/local/cuda")) / "lib64"]
    for site_dir in map(Path, sys.path):
        nvidia = site_dir / "nvidia"
        if site_dir.name == "site-packages" and nvidia.is_dir():
            dirs.extend(sorted(nvidia.glob("*/lib")))
    return [d for d in dirs if d.is_dir()]


def pyinstaller_env(backend: Backend) -> dict[str, str]:
    """For CUDA, let PyInstaller's dependency analysis find the CUDA runtime libraries.

    libggml-cuda.so links libcudart/libcublas/libcublasLt by SONAME, and neither the toolkit's
    lib64 nor the pip wheels' folders are in the loader's default path on a build machine.
    """
    env = dict(os.environ)
    if backend is Backend.CUDA:
        paths = [str(d) for d in cuda_library_dirs(env)]
        paths += [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join(paths)
    return env


def run_pyinstaller(plan: BuildPlan) -> None:
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    log_path = plan.work_dir / f"pyinstaller-{plan.backend.value}.log"
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        str(plan.folder.parent),
        "--workpath",
        str(plan.work_dir / plan.backend.value),
        str(SPEC_FILE),
        "--",
        "--backend",
        plan.backend.value,
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=pyinstaller_env(plan.backend),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise BuildError(
            f"PyInstaller failed (exit {done.returncode}): {' '.join(tail)} (full log: {log_path})"
        )


def _has_debug_info(path: Path) -> bool:
    done = subprocess.run(
        ["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and ".debug_info" in done.stdout


def strip_debug_info(folder: Path) -> int:
    """Strip debug sections from collected libraries; returns the bytes saved.

    Only files that carry DWARF sections are touched (a pyenv-built libpython is 22 MB of which
    18 MB is debug info), and never the auditwheel-grafted copies in `*.libs/` folders, whose
    patched program headers `strip` rewrites into a library the loader refuses.
    """
    saved = 0
    for path in sorted(folder.rglob("*.so*")):
        if path.is_symlink() or not path.is_file():
            continue
        if any(part.endswith(".libs") for part in path.relative_to(folder).parts):
            continue
        if not _has_debug_info(path):
            continue
        before = path.stat().st_size
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR)
        subprocess.run(["strip", "--strip-debug", str(path)], check=True)
        path.chmod(mode)
        saved += before - path.stat().st_size
    return saved


def add_desktop_integration(folder: Path) -> None:
    """The installer script sits beside the launcher, where a user looks after unpacking."""
    target = folder / DESKTOP_INSTALLER.name
    shutil.copy2(DESKTOP_INSTALLER, target)
    target.chmod(0o755)


def verify_layout(plan: BuildPlan) -> None:
    folder = plan.folder
    contents = folder / CONTENTS_DIR
    launcher = folder / APP_NAME
    if not (launcher.is_file() and os.access(launcher, os.X_OK)):
        raise BuildError(f"PyInstaller produced no executable launcher at {launcher}.")
    entry = contents / LLAMA_LIB_DIR / LLAMA_ENTRY_LIBRARY
    if not entry.is_file():
        raise BuildError(f"{entry} is missing: llama_cpp would fail to find its library.")
    for rel in REQUIRED_RESOURCES:
        if not (contents / "resources" / rel).is_file():
            raise BuildError(f"The package lacks resources/{rel}.")
    platforms = contents / "PySide6" / "Qt" / "plugins" / "platforms"
    for plugin in ("libqxcb.so", "libqoffscreen.so"):
        if not (platforms / plugin).is_file():
            raise BuildError(f"The package lacks the Qt platform plugin {plugin}.")
    if plan.backend is Backend.CUDA:
        names = {p.name for p in contents.rglob("*.so*")}
        for base in (*CUDA_RUNTIME_LIBRARIES, "libggml-cuda"):
            if not any(name.startswith(base + ".so") for name in names):
                raise BuildError(
                    f"The CUDA package lacks {base}.so; is the CUDA runtime installed?"
                )
    # The driver library must come from the user's system, matching their kernel module; a
    # copy from the build machine (or a link-time stub) would break every GPU but that one.
    driver = sorted(p.name for p in contents.rglob("libcuda.so*"))
    if driver:
        raise BuildError(f"The package carries the NVIDIA driver library {driver[0]}; remove it.")
    dangling = [p for p in folder.rglob("*") if p.is_symlink() and not p.exists()]
    if dangling:
        raise BuildError(f"The package has a broken link: {dangling[0].relative_to(folder)}.")


def _needed(path: Path) -> list[str]:
    done = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=False)
    return [
        line.split("[", 1)[1].rstrip("]")
        for line in done.stdout.splitlines()
        if "(NEEDED)" in line and "[" in line
    ]


def missing_display_libraries(folder: Path) -> list[str]:
    """Libraries the xcb platform plugin links that are neither bundled nor left to the system.

    PyInstaller bundles what it finds on the build machine and only warns about the rest; a
    package built where libxcb-icccm4 or libxcb-keysyms1 is absent opens no window on a desktop
    that lacks them too (the offscreen self-test cannot notice).
    """
    from PyInstaller.depend.dylib import include_library

    contents = folder / CONTENTS_DIR
    bundled = {p.name for p in contents.rglob("*.so*")}
    qt = contents / "PySide6" / "Qt"
    missing: set[str] = set()
    for binary in (qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"):
        if binary.is_file():
            missing.update(
                name for name in _needed(binary) if name not in bundled and include_library(name)
            )
    return sorted(missing)


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Reproducible ownership: nobody's uid/gid leaks into the archive.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(plan: BuildPlan) -> None:
    """tar.gz with one top folder `fathom-desktop/`, written under a temporary name first."""
    partial = plan.archive.with_name(f".{plan.archive.name}.partial")
    try:
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(plan.folder, arcname=APP_NAME, filter=_tar_filter)
        os.replace(partial, plan.archive)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    digest = hashlib.sha256()
    with open(plan.archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    plan.checksum.write_text(f"{digest.hexdigest()}  {plan.archive.name}\n", encoding="utf-8")


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def largest_parts(folder: Path, limit: int = 10) -> list[tuple[str, int]]:
    """Space by component: a package folder under _internal, or a single top-level file."""
    sizes: dict[str, int] = {}
    contents = folder / CONTENTS_DIR
    for path in _files(folder):
        rel = path.relative_to(folder)
        if rel.parts[0] == CONTENTS_DIR and len(rel.parts) > 2:
            inner = path.relative_to(contents)
            # Qt's own libraries are the bulk of PySide6: name them one by one.
            key = str(inner) if inner.parts[:3] == ("PySide6", "Qt", "lib") else inner.parts[0]
        else:
            key = str(rel)
        sizes[key] = sizes.get(key, 0) + path.stat().st_size
    return sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:limit]


def build(plan: BuildPlan) -> BuildResult:
    started = time.monotonic()
    check_environment(plan.backend)
    plan.dist_dir.mkdir(parents=True, exist_ok=True)
    # A failed build must not leave last build's archive looking like this one's.
    plan.archive.unlink(missing_ok=True)
    plan.checksum.unlink(missing_ok=True)
    run_pyinstaller(plan)
    strip_debug_info(plan.folder)
    add_desktop_integration(plan.folder)
    verify_layout(plan)
    warnings = []
    missing = missing_display_libraries(plan.folder)
    if missing:
        warnings.append(
            f"not bundled (absent on this machine): {', '.join(missing)}; the package will open "
            "no window where they are missing; apt-get install libxcb-icccm4 libxcb-keysyms1 "
            "libxcb-cursor0 and rebuild"
        )
    write_archive(plan)
    return BuildResult(
        warnings=warnings,
        folder=plan.folder,
        archive=plan.archive,
        checksum=plan.checksum,
        folder_bytes=sum(p.stat().st_size for p in _files(plan.folder)),
        archive_bytes=plan.archive.stat().st_size,
        seconds=time.monotonic() - started,
        largest=largest_parts(plan.folder),
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cuda", action="store_true", help="package the CUDA build of llama-cpp-python"
    )
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "build" / "pyinstaller",
        help="PyInstaller's work folder",
    )
    args = parser.parse_args(argv)
    try:
        plan = BuildPlan(
            backend=Backend.CUDA if args.cuda else Backend.CPU,
            version=app_version(),
            dist_dir=args.dist.resolve(),
            work_dir=args.work.resolve(),
        )
        result = build(plan)
    except BuildError as error:
        print(f"build.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("build.py: interrupted; the archive was not written.", file=sys.stderr)
        return 130
    for warning in result.warnings:
        print(f"build.py: warning: {warning}", file=sys.stderr)
    print(f"built {result.archive} in {result.seconds:.0f} s")
    print(f"  archive {_mb(result.archive_bytes)}, unpacked {_mb(result.folder_bytes)}")
    print(f"  checksum {result.checksum.name}; app folder {result.folder}")
    print("  largest parts (unpacked):")
    for name, size in result.largest:
        print(f"    {_mb(size):>9}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
