"""What goes into the one-folder package and what stays out, in one place.

The PyInstaller spec applies these rules to the lists PyInstaller's analysis produced; they are
plain functions over destination paths so that the tests can check them without building.
Destination paths are the POSIX paths inside the package's contents folder (`_internal/`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path, PurePosixPath


class Backend(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


# Python packages that are installed beside the app (training, tests, optional extras of our
# dependencies) and that PyInstaller would otherwise follow from a lazy import somewhere.
EXCLUDED_MODULES: tuple[str, ...] = (
    "torch",
    "functorch",
    "torchgen",
    "tkinter",
    "_tkinter",
    # Only the interactive prompt uses it, and it would bundle GNU readline (GPL).
    "readline",
    # Nothing imports these at run time, but once in the graph PyInstaller adds a runtime hook
    # that imports setuptools before the app starts: half a second of every launch.
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils",
    "pytest",
    "_pytest",
    "pytestqt",
    "hypothesis",
    "tokenizers",
    "IPython",
    "matplotlib",
    "scipy",
    "pandas",
    "PIL",
    # llama-cpp-python's OpenAI-compatible server and multimodal bindings; the app uses neither,
    # and mtmd would drag in libmtmd.so.
    "llama_cpp.server",
    "llama_cpp.llava_cpp",
    "llama_cpp.mtmd_cpp",
    # Qt modules the app does not use but that helper code in PySide6 may mention.
    "PySide6.QtNetwork",
    "PySide6.QtQml",
    "PySide6.QtQuick",
    "PySide6.QtOpenGL",
    "PySide6.QtOpenGLWidgets",
    "PySide6.QtPdf",
    "PySide6.QtSql",
    "PySide6.QtTest",
    "PySide6.QtUiTools",
    "PySide6.QtDesigner",
    "PySide6.QtHelp",
)

# Distributions whose installed version the app reads with importlib.metadata (the conversion
# manifest records them); PyInstaller copies no .dist-info unless asked.
METADATA_DISTRIBUTIONS: tuple[str, ...] = ("gguf", "llama-cpp-python")

QT_PREFIX = "PySide6/Qt/"
QT_PLUGINS = QT_PREFIX + "plugins/"

# Qt plugins kept, relative to the plugins folder. `xcb` draws on an X11 (or XWayland) desktop,
# `offscreen` runs the self-test and CI without a display. The input-context plugins make dead
# keys and IBus input methods (CJK) work; both link only libraries Qt's GUI module needs anyway.
KEPT_QT_PLUGINS: frozenset[str] = frozenset(
    {
        "platforms/libqxcb.so",
        "platforms/libqoffscreen.so",
        "platforminputcontexts/libcomposeplatforminputcontextplugin.so",
        "platforminputcontexts/libibusplatforminputcontextplugin.so",
        # The window icon is an SVG.
        "imageformats/libqsvg.so",
        "iconengines/libqsvgicon.so",
    }
)

# Shared objects in llama_cpp/lib that the app loads. ctypes opens libllama.so by that name; its
# dependencies are found by SONAME (libggml.so.0 ...), so the other two copies that a wheel
# install leaves of each library (libggml.so, libggml.so.0.25.3) would only add weight.
LLAMA_LIB_DIR = "llama_cpp/lib"
LLAMA_ENTRY_LIBRARY = "libllama.so"

# The CUDA runtime that libggml-cuda links; the driver (libcuda.so.1) comes from the user's system.
CUDA_RUNTIME_LIBRARIES: tuple[str, ...] = ("libcudart", "libcublas", "libcublasLt")


def _posix(dest: str) -> str:
    return str(PurePosixPath(dest.replace("\\", "/")))


def keep_qt_file(dest: str) -> bool:
    """Whether a file PyInstaller collected for PySide6 belongs in the package."""
    dest = _posix(dest)
    if dest.startswith(QT_PLUGINS):
        return dest[len(QT_PLUGINS) :] in KEPT_QT_PLUGINS
    # The app's strings are English and Qt's own dialogs are used in English: no translations.
    return not dest.startswith(QT_PREFIX + "translations/")


def keep_llama_file(dest: str, backend: Backend) -> bool:
    """Whether a file under llama_cpp/lib belongs in the package for this backend."""
    dest = _posix(dest)
    if not dest.startswith(LLAMA_LIB_DIR + "/"):
        return True
    name = PurePosixPath(dest).name
    if name.startswith("libmtmd"):
        return False
    if name.startswith("libggml-cuda") and backend is not Backend.CUDA:
        return False
    if name == LLAMA_ENTRY_LIBRARY:
        return True
    # Dependencies are loaded by SONAME: lib<name>.so.<major>. Keep exactly those.
    return re.fullmatch(r"lib[\w-]+\.so\.\d+", name) is not None and not name.startswith(
        "libllama.so."
    )


def keep(dest: str, backend: Backend) -> bool:
    return keep_qt_file(dest) and keep_llama_file(dest, backend)


def filter_entries(
    entries: Iterable[tuple[str, str, str]], backend: Backend
) -> list[tuple[str, str, str]]:
    """Apply `keep` to PyInstaller TOC entries (dest_name, src_name, typecode)."""
    return [entry for entry in entries if keep(entry[0], backend)]


TocEntry = tuple[str, str, str]


def _is_root(entry: TocEntry) -> bool:
    """Binaries something opens by path, not by SONAME: their dependencies must stay."""
    dest, _, typecode = entry
    dest = _posix(dest)
    name = PurePosixPath(dest).name
    return (
        typecode == "EXTENSION"
        or dest.startswith(QT_PLUGINS)
        or dest == f"{LLAMA_LIB_DIR}/{LLAMA_ENTRY_LIBRARY}"
        or name.startswith("libpython")
    )


def prune_unreachable(
    binaries: Iterable[TocEntry],
    datas: Iterable[TocEntry],
    needed_of: Callable[[str], Iterable[str]],
) -> tuple[list[TocEntry], list[TocEntry], list[str]]:
    """Drop shared libraries that no kept extension module, plugin or libllama links to.

    Filtering plugins after PyInstaller's analysis leaves behind what only those plugins needed
    (the GTK3 theme alone drags in GTK, Pango and Cairo). `needed_of(src)` names the libraries a
    binary links (its DT_NEEDED entries); libraries are matched by file name, as the loader does.
    PyInstaller files the top-level links to libraries kept in package folders under `datas`
    (typecode SYMLINK); a link goes with the library it points to.
    Returns the kept binaries, the kept datas and the destination names that were dropped.
    """
    binaries = list(binaries)
    by_name: dict[str, list[TocEntry]] = {}
    for entry in binaries:
        by_name.setdefault(PurePosixPath(_posix(entry[0])).name, []).append(entry)

    reachable: set[str] = set()
    todo = [entry for entry in binaries if _is_root(entry)]
    seen_src: set[str] = set()
    while todo:
        dest, src, _ = todo.pop()
        reachable.add(PurePosixPath(_posix(dest)).name)
        if src in seen_src:
            continue
        seen_src.add(src)
        for needed in needed_of(src):
            if needed not in reachable:
                reachable.add(needed)
                todo.extend(by_name.get(needed, []))

    kept_binaries: list[TocEntry] = []
    dropped: list[str] = []
    for entry in binaries:
        if _is_root(entry) or PurePosixPath(_posix(entry[0])).name in reachable:
            kept_binaries.append(entry)
        else:
            dropped.append(_posix(entry[0]))

    dropped_set = set(dropped)
    kept_datas: list[TocEntry] = []
    for entry in datas:
        dest, src, typecode = entry
        if typecode == "SYMLINK":
            target = _normalize(PurePosixPath(_posix(dest)).parent / _posix(src))
            if target in dropped_set:
                dropped.append(_posix(dest))
                continue
        kept_datas.append(entry)
    return kept_binaries, kept_datas, dropped


def _normalize(path: PurePosixPath) -> str:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def resource_datas(resources_dir: Path) -> list[tuple[str, str]]:
    """(source file, destination folder) pairs that put resources/ at `_internal/resources`.

    `fathom_desktop.paths.resources_dir()` looks there when frozen. Partial downloads and caches
    left in a developer's tree stay out.
    """
    pairs: list[tuple[str, str]] = []
    for path in sorted(resources_dir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(resources_dir)
        if (
            path.name.endswith(".partial")
            or "__pycache__" in rel.parts
            or path.name.startswith(".")
        ):
            continue
        pairs.append((str(path), str(PurePosixPath("resources", *rel.parts[:-1]))))
    return pairs
