"""The GGUFs the user can pick: every file in the models folder, what its manifest says about it,
and whether it fits the GPU at the current context length and KV cache type.

Listing the folder, reading each file's header and asking NVML about the GPU can each stall on a
slow disk or a sick driver, so `ModelList.scan` and `ModelList.check_gpu` do them in background
threads (`gui/background.py`); the rows show "checking…" until their facts arrive. The fit badges
are then computed on the GUI thread from the headers already read (arithmetic, no I/O), so they
follow the dialog's context length and KV cache type at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTreeWidget, QTreeWidgetItem

from fathom_desktop.engine import planner
from fathom_desktop.engine.backend_probe import backend_facts
from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.gguf_check import ModelFileInfo, check_model_file
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.model_ladder import is_imatrix_name, quant_from_name

GGUF_SUFFIX = ".gguf"
CPU_ONLY = "CPU only"
CHECKING = "checking…"


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    size_bytes: int | None  # None when the file is missing
    quant: str | None  # "Q4_K_M", "BF16", ...
    sha256: str | None
    in_manifest: bool
    # Every path (absolute) found for this file: its name in the folder, a symlink, the path
    # the settings use. Comparing against these needs no disk access on the GUI thread.
    aliases: tuple[Path, ...] = ()

    @property
    def exists(self) -> bool:
        return self.size_bytes is not None

    def is_file(self, path: Path | str) -> bool:
        absolute = Path(path).absolute()
        return absolute == self.path or absolute in self.aliases


# What a header read found: the file's facts, or the one-line reason it cannot be used.
ModelFacts = ModelFileInfo | str


# A folder of many GGUFs is read two headers at a time: a Fathom header holds 152k token strings,
# and dozens of parallel reads would only make a spinning disk seek.
_HEADER_READS = threading.BoundedSemaphore(2)


def read_facts(path: Path) -> ModelFacts:
    """Read one file's header (slow on a slow disk: call it off the GUI thread)."""
    with _HEADER_READS:
        try:
            return check_model_file(path)
        except ModelFileError as error:
            return str(error)


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
    Reads the folder, the manifest and each file's size, not the files' headers: the quantization
    comes from the manifest or the file name (`read_facts` has the header's).
    """
    manifest, warning = _read_manifest(models_dir) if models_dir.is_dir() else ({}, None)
    # Keyed by the file itself, so a symlink and its target are one entry; the path kept is the
    # one the user knows (the name in the folder, or the path they chose).
    found: dict[Path, Path] = {}
    aliases: dict[Path, list[Path]] = {}

    def add(path: Path) -> None:
        identity = _identity(path)
        found.setdefault(identity, path.absolute())
        aliases.setdefault(identity, []).append(path.absolute())

    if models_dir.is_dir():
        for path in sorted(models_dir.iterdir()):
            # Hidden names are the pipeline's unfinished outputs; an importance matrix is a GGUF
            # but no model.
            if (
                path.suffix.lower() == GGUF_SUFFIX
                and not path.name.startswith(".")
                and not is_imatrix_name(path.name)
            ):
                add(path)
    for path in extra:
        if path is not None:
            add(Path(path))
    folder = models_dir.absolute()
    entries = []
    for identity, path in found.items():
        try:
            size: int | None = path.stat().st_size
        except OSError:
            size = None
        listed = manifest.get(path.name) if path.parent == folder else None
        entries.append(
            ModelEntry(
                path=path,
                size_bytes=size,
                quant=listed[0] if listed else quant_from_name(path.name),
                sha256=listed[2] if listed else None,
                in_manifest=listed is not None,
                aliases=(*aliases[identity], identity),
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
        # The build's facts come from a child process: llama.cpp never loads in the window's.
        return dataclasses.replace(gpu, problem=backend_facts().gpu_problem(gpu))
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


@dataclass(frozen=True)
class FitInputs:
    """What a fit depends on besides the file and the GPU (the dialog's current choices)."""

    n_ctx: int
    kv_cache_type: str
    flash_attn: bool


def fit_from_facts(
    entry: ModelEntry, facts: ModelFacts | None, inputs: FitInputs, gpu: GpuInfo | None
) -> str:
    """The planner's verdict, "fits on GPU", "partial: 31/49 layers" or "CPU only", from a
    header already read: arithmetic only, fit for the GUI thread."""
    if not entry.exists:
        return "file missing"
    if gpu is None or gpu.problem is not None:
        return CPU_ONLY
    if facts is None:
        return CHECKING
    if isinstance(facts, str):
        return "not a usable model"
    try:
        profile = planner.profile_from_model_file(
            facts,
            n_ctx=inputs.n_ctx,
            kv_cache_type=inputs.kv_cache_type,  # type: ignore[arg-type]
            flash_attn=inputs.flash_attn,
        )
    except (ValueError, KeyError, IndexError):
        return "unreadable"
    return profile.plan(gpu.free_bytes).label


# -- the widget ------------------------------------------------------------------------------


class ModelList(QTreeWidget):
    """A table of GGUFs: file, quantization, size, fit; one can be selected.

    `scan` lists a folder and reads each file's header in the background, `check_gpu` asks NVML;
    until their results arrive the cells they fill say "checking…".
    """

    COLUMNS = ("File", "Quantization", "Size", "Fit")
    FILE, QUANT, SIZE, FIT = range(4)

    model_selected = Signal(object)  # Path
    scanned = Signal(str)  # the manifest warning, "" when none; rows are listed
    facts_checked = Signal(object)  # Path: its header was read (or refused)
    gpu_checked = Signal(object)  # GpuInfo | None

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
        self._facts: dict[Path, ModelFacts] = {}
        self._fit_inputs: FitInputs | None = None
        self._gpu: GpuInfo | None = None
        self._gpu_known = False
        self._scan_id = 0
        self._jobs = BackgroundJobs(self)
        self.itemSelectionChanged.connect(self._emit_selection)

    # -- background checks ---------------------------------------------------------------------

    def scan(
        self,
        models_dir: Path,
        extra: Iterable[Path | None] = (),
        selected: Path | None = None,
        *,
        only: Iterable[Path] | None = None,
        select_first: bool = False,
    ) -> None:
        """List `models_dir` (and `extra` files) and read every header, all in the background.

        `only` keeps just those files; `select_first` selects the first row when `selected` is
        None (a chooser; the settings dialog must not pick a model on its own).
        """
        self._scan_id += 1
        scan_id = self._scan_id
        extra = list(extra)
        keep = list(only) if only is not None else None

        def discover() -> tuple[list[ModelEntry], str | None]:
            entries, warning = discover_models(models_dir, extra)
            if keep is not None:
                entries = [e for e in entries if any(same_file(e.path, p) for p in keep)]
            return entries, warning

        if not self._entries:
            self._show_placeholder("Checking the models folder…")

        def listed(result: tuple[list[ModelEntry], str | None]) -> None:
            if scan_id != self._scan_id:
                return  # a newer scan is on its way
            entries, warning = result
            first = entries[0].path if select_first and entries else None
            self.set_entries(entries, selected if selected is not None else first)
            self.scanned.emit(warning or "")
            for entry in entries:
                if entry.path not in self._facts:
                    self._read_header(entry.path)  # a missing file's facts say it is missing

        self._jobs.run(discover, listed, self._listing_failed)

    def check_gpu(self) -> None:
        """Ask NVML (and the llama.cpp build) about the GPU in the background."""
        self._gpu_known = False
        self.set_fits()

        def found(gpu: GpuInfo | None) -> None:
            self.set_gpu(gpu)
            self.gpu_checked.emit(gpu)

        self._jobs.run(probe_gpu, found)

    def set_gpu(self, gpu: GpuInfo | None) -> None:
        """The GPU the badges plan for (None: no usable GPU, every badge says CPU only)."""
        self._gpu, self._gpu_known = gpu, True
        self.set_fits()

    def busy(self) -> bool:
        """Whether a listing, header read or GPU check is still on its way."""
        return self._jobs.pending() > 0

    def _read_header(self, path: Path) -> None:
        def read(facts: ModelFacts) -> None:
            self._facts[path] = facts
            self._show_facts(path)
            self.facts_checked.emit(path)

        self._jobs.run(lambda: read_facts(path), read)

    def _listing_failed(self, error: BaseException) -> None:
        self._show_placeholder(f"Could not read the models folder: {error}")
        self.scanned.emit("")

    def _show_placeholder(self, text: str) -> None:
        self._entries = []
        self.blockSignals(True)
        try:
            self.clear()
            item = QTreeWidgetItem([text, "", "", ""])
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.addTopLevelItem(item)
        finally:
            self.blockSignals(False)

    # -- rows ----------------------------------------------------------------------------------

    def set_entries(self, entries: list[ModelEntry], selected: Path | None = None) -> None:
        self._entries = list(entries)
        self.blockSignals(True)
        try:
            self.clear()
            for entry in self._entries:
                item = QTreeWidgetItem(
                    [entry.path.name, self._quant_text(entry), human_size(entry.size_bytes), ""]
                )
                item.setData(self.FILE, Qt.ItemDataRole.UserRole, str(entry.path))
                tip = str(entry.path)
                if entry.sha256:
                    tip += f"\nsha256 {entry.sha256}"
                item.setToolTip(self.FILE, tip)
                item.setTextAlignment(self.SIZE, Qt.AlignmentFlag.AlignRight)
                self.addTopLevelItem(item)
                if selected is not None and entry.is_file(selected):
                    item.setSelected(True)
                    self.setCurrentItem(item)
        finally:
            self.blockSignals(False)
        self.set_fits()

    def set_fit_inputs(self, inputs: FitInputs) -> None:
        """Badges for this context length, KV cache type and flash attention, from the headers."""
        self._fit_inputs = inputs
        self.set_fits()

    def set_fits(self) -> None:
        """Fill the Fit column from the headers read so far."""
        for row, entry in enumerate(self._entries):
            if not self._gpu_known or self._fit_inputs is None:
                text = CHECKING if entry.exists else "file missing"
            else:
                facts = self._facts.get(entry.path)
                text = fit_from_facts(entry, facts, self._fit_inputs, self._gpu)
            item = self.topLevelItem(row)
            item.setText(self.FIT, text)
            item.setToolTip(self.FIT, text)

    def _show_facts(self, path: Path) -> None:
        for row, entry in enumerate(self._entries):
            if entry.path == path:
                self.topLevelItem(row).setText(self.QUANT, self._quant_text(entry))
        self.set_fits()

    def _quant_text(self, entry: ModelEntry) -> str:
        if entry.quant:
            return entry.quant
        facts = self._facts.get(entry.path)
        if facts is None:
            return CHECKING if entry.exists else "?"
        return facts.file_type if not isinstance(facts, str) else "?"

    def facts(self, path: Path | str) -> ModelFacts | None:
        """The header read for `path` (the facts or why it is unusable); None until read."""
        entry = self.entry_for(path)
        return self._facts.get(entry.path) if entry is not None else None

    def entry_for(self, path: Path | str) -> ModelEntry | None:
        for entry in self._entries:
            if entry.is_file(path):
                return entry
        return None

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def fit_text(self, path: Path) -> str | None:
        for row, entry in enumerate(self._entries):
            if entry.is_file(path):
                return self.topLevelItem(row).text(self.FIT)
        return None

    def selected_path(self) -> Path | None:
        items = self.selectedItems()
        if not items or not self._entries:
            return None
        return Path(items[0].data(self.FILE, Qt.ItemDataRole.UserRole))

    def select_path(self, path: Path) -> None:
        for row, entry in enumerate(self._entries):
            if entry.is_file(path):
                item = self.topLevelItem(row)
                self.setCurrentItem(item)
                item.setSelected(True)
                return

    def _emit_selection(self) -> None:
        path = self.selected_path()
        if path is not None:
            self.model_selected.emit(path)
