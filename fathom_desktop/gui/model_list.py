"""The GGUFs the user can pick: every file in the models folder, what its manifest says about it,
and whether it fits the GPU at the current context length and KV cache type.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gguf
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTreeWidget, QTreeWidgetItem

from fathom_desktop.engine import gpu_support, planner
from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.planner import GpuInfo

GGUF_SUFFIX = ".gguf"
CPU_ONLY = "CPU only"


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    size_bytes: int | None  # None when the file is missing
    quant: str | None  # "Q4_K_M", "BF16", ...
    sha256: str | None
    in_manifest: bool

    @property
    def exists(self) -> bool:
        return self.size_bytes is not None


def _file_type_names() -> list[str]:
    names = {m.name.removeprefix("MOSTLY_").removeprefix("ALL_") for m in gguf.LlamaFileType}
    names.discard("GUESSED")
    # Longest first, so Q4_K_M wins over Q4_K in a file name.
    return sorted(names, key=len, reverse=True)


_QUANT_IN_NAME = re.compile(
    r"(?:^|[-_.])(" + "|".join(re.escape(n) for n in _file_type_names()) + r")(?=$|[-_.])",
    re.IGNORECASE,
)


def quant_from_name(name: str) -> str | None:
    """`Fathom-R1-14B-Q4_K_M.gguf` -> "Q4_K_M"; None when the name does not say."""
    match = _QUANT_IN_NAME.search(Path(name).stem)
    return match.group(1).upper() if match else None


def _quant_of(path: Path) -> str | None:
    """The name says it for files the pipeline wrote; otherwise the header's general.file_type."""
    named = quant_from_name(path.name)
    if named is not None:
        return named
    try:
        return check_model_file(path).file_type
    except ModelFileError:
        return None


def _read_manifest(models_dir: Path) -> tuple[dict[str, tuple[str, int, str]], str | None]:
    """{file name: (quant type, size, sha256)} from the folder's manifest, and any problem."""
    try:
        from convert.manifest import read_manifest
    except ImportError:
        return {}, None
    try:
        manifest = read_manifest(models_dir)
    except Exception as error:  # a damaged manifest must not hide the GGUFs beside it
        return {}, str(error)
    return {
        name: (entry.quant_type, entry.size_bytes, entry.sha256)
        for name, entry in manifest.files.items()
    }, None


def discover_models(
    models_dir: Path, extra: Iterable[Path | None] = ()
) -> tuple[list[ModelEntry], str | None]:
    """Every GGUF in `models_dir`, plus `extra` files (the current model), sorted by name.

    Returns the entries and a one-line warning when the folder's manifest could not be read.
    """
    manifest, warning = _read_manifest(models_dir) if models_dir.is_dir() else ({}, None)
    # Keyed by the file itself, so a symlink and its target are one entry; the path kept is the
    # one the user knows (the name in the folder, or the path they chose).
    found: dict[Path, Path] = {}
    if models_dir.is_dir():
        for path in sorted(models_dir.iterdir()):
            # Hidden names are the pipeline's unfinished outputs.
            if path.suffix.lower() == GGUF_SUFFIX and not path.name.startswith("."):
                found.setdefault(_identity(path), path.absolute())
    for path in extra:
        if path is not None:
            found.setdefault(_identity(Path(path)), Path(path).absolute())
    folder = models_dir.absolute()
    entries = []
    for path in found.values():
        try:
            size: int | None = path.stat().st_size
        except OSError:
            size = None
        listed = manifest.get(path.name) if path.parent == folder else None
        entries.append(
            ModelEntry(
                path=path,
                size_bytes=size,
                quant=listed[0] if listed else _quant_of(path),
                sha256=listed[2] if listed else None,
                in_manifest=listed is not None,
            )
        )
    entries.sort(key=lambda e: (e.path.name.lower(), str(e.path)))
    return entries, warning


def _identity(path: Path) -> Path:
    return path.resolve()


def same_file(a: Path | str, b: Path | str) -> bool:
    return _identity(Path(a)) == _identity(Path(b))


def human_size(n_bytes: int | None) -> str:
    """Binary units, the same ones the GPU's memory is shown in."""
    if n_bytes is None:
        return "missing"
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# -- GPU and fit -----------------------------------------------------------------------------


def probe_gpu() -> GpuInfo | None:
    """The engine's view of the GPU; a broken driver means "no GPU" to the user, not a crash.

    The GPU comes with the reason the installed llama.cpp cannot use it, if any (the CPU build,
    an old driver or GPU), so that the badges promise what the engine will do.
    """
    try:
        gpu = planner.detect_gpu()
        if gpu is None:
            return None
        return dataclasses.replace(gpu, problem=gpu_support.usability_problem(gpu))
    except Exception:
        return None


def describe_gpu(gpu: GpuInfo | None) -> str:
    if gpu is None:
        return "No GPU detected: models run on the CPU."
    if gpu.problem is not None:
        return f"GPU: {gpu.name}. {gpu.problem}"
    return (
        f"GPU: {gpu.name}, {gpu.free_bytes / 2**30:.1f} GiB free "
        f"of {gpu.total_bytes / 2**30:.1f} GiB"
    )


@lru_cache(maxsize=256)
def _plan_label(
    path: Path, mtime_ns: int, n_ctx: int, kv_cache_type: str, flash_attn: bool, free: int
) -> str:
    plan = planner.plan_offload(path, n_ctx, kv_cache_type, free, flash_attn=flash_attn)  # type: ignore[arg-type]
    return plan.label


def fit_badge(
    entry: ModelEntry, n_ctx: int, kv_cache_type: str, flash_attn: bool, gpu: GpuInfo | None
) -> str:
    """The planner's verdict: "fits on GPU", "partial: 31/49 layers" or "CPU only"."""
    if not entry.exists:
        return "file missing"
    if gpu is None or gpu.problem is not None:
        return CPU_ONLY
    try:
        mtime_ns = entry.path.stat().st_mtime_ns
        return _plan_label(entry.path, mtime_ns, n_ctx, kv_cache_type, flash_attn, gpu.free_bytes)
    except ModelFileError:
        return "not a usable model"
    except (OSError, ValueError, KeyError):
        return "unreadable"


# -- the widget ------------------------------------------------------------------------------


class ModelList(QTreeWidget):
    """A table of GGUFs: file, quantization, size, fit; one can be selected."""

    COLUMNS = ("File", "Quantization", "Size", "Fit")
    FILE, QUANT, SIZE, FIT = range(4)

    model_selected = Signal(object)  # Path

    def __init__(self, parent: object | None = None) -> None:
        super().__init__(parent)
        self.setColumnCount(len(self.COLUMNS))
        self.setHeaderLabels(list(self.COLUMNS))
        self.setRootIsDecorated(False)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setAlternatingRowColors(True)
        header = self.header()
        header.setSectionResizeMode(self.FILE, QHeaderView.ResizeMode.Stretch)
        for column in (self.QUANT, self.SIZE, self.FIT):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self._entries: list[ModelEntry] = []
        self.itemSelectionChanged.connect(self._emit_selection)

    def set_entries(self, entries: list[ModelEntry], selected: Path | None = None) -> None:
        self._entries = list(entries)
        self.blockSignals(True)
        try:
            self.clear()
            for entry in self._entries:
                item = QTreeWidgetItem(
                    [entry.path.name, entry.quant or "?", human_size(entry.size_bytes), ""]
                )
                item.setData(self.FILE, Qt.ItemDataRole.UserRole, str(entry.path))
                tip = str(entry.path)
                if entry.sha256:
                    tip += f"\nsha256 {entry.sha256}"
                item.setToolTip(self.FILE, tip)
                item.setTextAlignment(self.SIZE, Qt.AlignmentFlag.AlignRight)
                self.addTopLevelItem(item)
                if selected is not None and same_file(entry.path, selected):
                    item.setSelected(True)
                    self.setCurrentItem(item)
        finally:
            self.blockSignals(False)

    def set_fits(self, badge: Callable[[ModelEntry], str]) -> None:
        for row, entry in enumerate(self._entries):
            item = self.topLevelItem(row)
            text = badge(entry)
            item.setText(self.FIT, text)
            item.setToolTip(self.FIT, text)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def fit_text(self, path: Path) -> str | None:
        for row, entry in enumerate(self._entries):
            if same_file(entry.path, path):
                return self.topLevelItem(row).text(self.FIT)
        return None

    def selected_path(self) -> Path | None:
        items = self.selectedItems()
        if not items:
            return None
        return Path(items[0].data(self.FILE, Qt.ItemDataRole.UserRole))

    def select_path(self, path: Path) -> None:
        for row in range(self.topLevelItemCount()):
            item = self.topLevelItem(row)
            if same_file(item.data(self.FILE, Qt.ItemDataRole.UserRole), path):
                self.setCurrentItem(item)
                item.setSelected(True)
                return

    def _emit_selection(self) -> None:
        path = self.selected_path()
        if path is not None:
            self.model_selected.emit(path)
