"""Settings › Model: every model in the models folder with its whole quantization ladder.

One group per model (the demo is its own), its levels in the ladder's order, made or not: the
size (measured, or estimated from the level's bits/weight), the planner's fit badge, and what
the level loses against the model's BF16/F16 reference (same top token, KLD) as measured by
`fathom-convert evaluate` and kept in manifest.json. A level not made has **Make**, a made one
not measured **Measure**; both run in a child process (level_jobs.py, through the app's
`ladder_jobs()`), with progress and Cancel in the row, and the list is read again when a file
is complete.

As in model_list.py, the folder, the manifest, the headers and the GPU are read in background
threads; fits are arithmetic on headers already read, so they follow the dialog's context
length and KV cache type at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QFont, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QWidget,
)

from fathom_desktop.engine.gguf_check import ModelFileInfo
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.gui.ladder_cells import (
    ACTION_WIDTH,
    IMATRIX_CHUNKS,
    MAKE,
    MEASURE,
    NEEDS_SOURCE,
    ActionCell,
    model_entry,
    quality_text,
    quality_tooltip,
)
from fathom_desktop.gui.ladder_jobs import JobProgress, LadderJobs, ladder_jobs
from fathom_desktop.gui.model_list import (
    CHECKING,
    CPU_ONLY,
    FitInputs,
    ModelEntry,
    ModelFacts,
    fit_from_facts,
    human_size,
    probe_gpu,
    read_facts,
)
from fathom_desktop.gui.quality_chart import ChartPoint
from fathom_desktop.level_jobs import LevelWork, WorkOutcome
from fathom_desktop.model_ladder import (
    LadderListing,
    LadderRow,
    ModelGroup,
    estimated_profile,
    imatrix_path,
    read_ladder,
)


class LadderList(QTreeWidget):
    """Models and their ladders; a made level can be selected as the model to use."""

    COLUMNS = ("Level", "Size", "Fit", "Same top · KLD", "")
    LEVEL, SIZE, FIT, QUALITY, ACTION = range(5)

    model_selected = Signal(object)  # Path
    scanned = Signal(str)  # the manifest warning, "" when none; rows are listed
    facts_checked = Signal(object)  # Path: its header was read (or refused)
    gpu_checked = Signal(object)  # GpuInfo | None
    file_added = Signal(object)  # Path: an added file was usable and is now selected
    file_refused = Signal(str)  # why an added file cannot be used, one line
    notice = Signal(str)  # one line for the user: a job ended, or why a button cannot act
    ladder_changed = Signal()  # rows, measurements, selection or GPU changed: redraw the chart

    def __init__(self, parent: QWidget | None = None, *, jobs: LadderJobs | None = None) -> None:
        super().__init__(parent)
        self.setColumnCount(len(self.COLUMNS))
        self.setHeaderLabels(list(self.COLUMNS))
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setAlternatingRowColors(True)
        self.setIndentation(12)
        header = self.header()
        header.setStretchLastSection(False)
        for column in (self.LEVEL, self.SIZE, self.FIT):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.QUALITY, QHeaderView.ResizeMode.Stretch)
        # Wide enough for a progress bar and Cancel, so the columns do not jump when it runs.
        header.setSectionResizeMode(self.ACTION, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(self.ACTION, ACTION_WIDTH)
        self._groups: list[ModelGroup] = []
        self._items: list[tuple[ModelGroup, LadderRow, QTreeWidgetItem]] = []
        self._cells: dict[Path, ActionCell] = {}
        self._facts: dict[Path, ModelFacts] = {}
        self._fit_inputs: FitInputs | None = None
        self._gpu: GpuInfo | None = None
        self._gpu_known = False
        self._scan_id = 0
        self._models_dir: Path | None = None
        self._extra: list[Path] = []
        self._selected: Path | None = None
        self._background = BackgroundJobs(self)
        self._jobs = jobs if jobs is not None else ladder_jobs()
        self._jobs.progress.connect(self._job_progress)
        self._jobs.made.connect(self._job_made)
        self._jobs.finished.connect(self._job_finished)
        self._jobs.started.connect(self._job_started)
        self.itemSelectionChanged.connect(self._emit_selection)

    # -- reading ----------------------------------------------------------------------------------

    def scan(
        self, models_dir: Path, extra: Iterable[Path | None] = (), selected: Path | None = None
    ) -> None:
        """List the folder (and `extra` files) as models with their ladders, in the background."""
        self._scan_id += 1
        scan_id = self._scan_id
        self._models_dir = models_dir
        self._extra = [Path(p) for p in extra if p is not None]
        if selected is not None:
            self._selected = Path(selected)
        extra_now = list(self._extra)
        if not self._items:
            self._show_placeholder("Checking the models folder…")

        def listed(listing: LadderListing) -> None:
            if scan_id != self._scan_id:
                return  # a newer scan is on its way
            self.set_groups(listing.groups)
            self.scanned.emit(listing.warning or "")
            for _group, row, _item in self._items:
                if row.made and row.path not in self._facts:
                    self._read_header(row.path)

        self._background.run(lambda: read_ladder(models_dir, extra_now), listed, self._failed)

    def rescan(self) -> None:
        if self._models_dir is not None:
            self.scan(self._models_dir, self._extra, self.selected_path() or self._selected)

    def check_gpu(self) -> None:
        self._gpu_known = False
        self.set_fits()

        def found(gpu: GpuInfo | None) -> None:
            self.set_gpu(gpu)
            self.gpu_checked.emit(gpu)

        self._background.run(probe_gpu, found)

    def set_gpu(self, gpu: GpuInfo | None) -> None:
        self._gpu, self._gpu_known = gpu, True
        self.set_fits()
        self.ladder_changed.emit()

    def gpu(self) -> GpuInfo | None:
        return self._gpu

    def add_file(self, path: Path, models_dir: Path, extra: Iterable[Path | None]) -> None:
        """Check a file from elsewhere in the background; `file_added` or `file_refused` tells."""
        path, extra = Path(path), [p for p in extra if p is not None]

        def checked(facts: ModelFacts) -> None:
            if isinstance(facts, str):
                self.file_refused.emit(facts)
                return
            self._facts[path.absolute()] = facts
            self.scan(models_dir, [*extra, path], path)
            self.scanned_once_then(lambda: self.file_added.emit(path))

        self._background.run(lambda: read_facts(path), checked)

    def scanned_once_then(self, call: Callable[[], None]) -> None:
        def once(_warning: str) -> None:
            self.scanned.disconnect(once)
            call()

        self.scanned.connect(once)

    def busy(self) -> bool:
        """Whether a listing, header read or GPU check is still on its way (not Make/Measure)."""
        return self._background.pending() > 0

    def _read_header(self, path: Path) -> None:
        def read(facts: ModelFacts) -> None:
            self._facts[path] = facts
            found = self._find(path)
            if found is not None and found[1].quant == "?" and isinstance(facts, ModelFileInfo):
                # The name did not say; the header does.
                found[2].setText(self.LEVEL, facts.file_type)
            self.set_fits()
            self.facts_checked.emit(path)

        self._background.run(lambda: read_facts(path), read)

    def _failed(self, error: BaseException) -> None:
        self._show_placeholder(f"Could not read the models folder: {error}")
        self.scanned.emit("")

    def _show_placeholder(self, text: str) -> None:
        self._groups, self._items, self._cells = [], [], {}
        self.blockSignals(True)
        try:
            self.clear()
            item = QTreeWidgetItem([text])
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.addTopLevelItem(item)
        finally:
            self.blockSignals(False)

    # -- rows -------------------------------------------------------------------------------------

    def set_groups(self, groups: list[ModelGroup]) -> None:
        selected = self.selected_path() or self._selected
        self._groups = list(groups)
        self._items, self._cells = [], {}
        self.blockSignals(True)
        try:
            self.clear()
            muted = QBrush(self.palette().color(QPalette.ColorRole.PlaceholderText))
            for group in self._groups:
                head = QTreeWidgetItem([group.title])
                head.setFlags(Qt.ItemFlag.ItemIsEnabled)
                font = QFont(head.font(0))
                font.setBold(True)
                head.setFont(0, font)
                head.setToolTip(0, str(group.folder))
                self.addTopLevelItem(head)
                head.setFirstColumnSpanned(True)
                for row in group.rows:
                    item = QTreeWidgetItem([self._level_text(row), self._size_text(group, row)])
                    item.setData(self.LEVEL, Qt.ItemDataRole.UserRole, str(row.path))
                    item.setToolTip(self.LEVEL, self._level_tooltip(row))
                    item.setTextAlignment(self.SIZE, Qt.AlignmentFlag.AlignRight)
                    item.setText(self.QUALITY, quality_text(row))
                    item.setToolTip(self.QUALITY, quality_tooltip(row, group))
                    if not row.made:
                        # A level not made cannot be chosen; Make is in its last column.
                        item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                        for column in range(len(self.COLUMNS)):
                            item.setForeground(column, muted)
                    head.addChild(item)
                    self._items.append((group, row, item))
                    if row.made and selected is not None and row.is_file(selected):
                        item.setSelected(True)
                        self.setCurrentItem(item)
                head.setExpanded(True)
            for _group, row, item in self._items:
                cell = ActionCell()
                self._cells[row.path] = cell
                self.setItemWidget(item, self.ACTION, cell)
        finally:
            self.blockSignals(False)
        self._show_actions()
        self.set_fits()
        self.ladder_changed.emit()

    def _level_text(self, row: LadderRow) -> str:
        if row.is_reference:
            return f"{row.quant} (reference)"
        return row.quant

    def _level_tooltip(self, row: LadderRow) -> str:
        lines = [str(row.path) if row.made else f"Not made yet: would be {row.path.name}"]
        if row.ladder is not None and row.ladder.purpose:
            lines.append(f"{row.ladder.name}: {row.ladder.purpose}")
        if row.ladder is not None and row.ladder.imatrix.value != "none":
            lines.append(f"Importance matrix: {row.ladder.imatrix.value}")
        if row.sha256:
            lines.append(f"sha256 {row.sha256}")
        return "\n".join(lines)

    def _size_text(self, group: ModelGroup, row: LadderRow) -> str:
        if row.made:
            return human_size(row.size_bytes)
        facts = self._group_facts(group)
        if facts is None or row.ladder is None:
            return CHECKING if self._has_made(group) else "?"
        n_params = sum(t.n_elements for t in facts.tensors)
        estimate = row.ladder.estimated_bytes(n_params)
        return f"≈ {human_size(estimate)}" if estimate else "?"

    def _has_made(self, group: ModelGroup) -> bool:
        return any(r.made for r in group.rows)

    def _group_facts(self, group: ModelGroup) -> ModelFileInfo | None:
        """A header of any of the group's files (they share their shapes)."""
        for row in group.rows:
            facts = self._facts.get(row.path) if row.made else None
            if isinstance(facts, ModelFileInfo):
                return facts
        return None

    def set_fit_inputs(self, inputs: FitInputs) -> None:
        self._fit_inputs = inputs
        self.set_fits()

    def set_fits(self) -> None:
        """Fill the Fit column (and estimated sizes) from the headers read so far."""
        for group, row, item in self._items:
            text = self._fit(group, row)
            item.setText(self.FIT, text)
            item.setToolTip(self.FIT, text if row.made else f"{text} (estimated from bits/weight)")
            if not row.made:
                item.setText(self.SIZE, self._size_text(group, row))

    def _fit(self, group: ModelGroup, row: LadderRow) -> str:
        if not self._gpu_known or self._fit_inputs is None:
            return CHECKING
        if row.made:
            return fit_from_facts(
                model_entry(row), self._facts.get(row.path), self._fit_inputs, self._gpu
            )
        if self._gpu is None or self._gpu.problem is not None:
            return CPU_ONLY
        facts = self._group_facts(group)
        if facts is None or row.ladder is None:
            return CHECKING if self._has_made(group) else "?"
        inputs = self._fit_inputs
        profile = estimated_profile(
            facts,
            row.ladder,
            n_ctx=inputs.n_ctx,
            kv_cache_type=inputs.kv_cache_type,
            flash_attn=inputs.flash_attn,
        )
        return profile.plan(self._gpu.free_bytes).label

    # -- lookups ----------------------------------------------------------------------------------

    def groups(self) -> list[ModelGroup]:
        return list(self._groups)

    def level_rows(self) -> list[tuple[ModelGroup, LadderRow, QTreeWidgetItem]]:
        return list(self._items)

    def _find(self, path: Path | str) -> tuple[ModelGroup, LadderRow, QTreeWidgetItem] | None:
        for found in self._items:
            if found[1].is_file(path):
                return found
        return None

    def entry_for(self, path: Path | str) -> ModelEntry | None:
        found = self._find(path)
        return model_entry(found[1]) if found is not None and found[1].made else None

    def entries(self) -> list[ModelEntry]:
        return [model_entry(row) for _g, row, _i in self._items if row.made]

    def facts(self, path: Path | str) -> ModelFacts | None:
        found = self._find(path)
        return self._facts.get(found[1].path) if found is not None else None

    def fit_text(self, path: Path) -> str | None:
        found = self._find(path)
        return found[2].text(self.FIT) if found is not None else None

    def item_for(self, path: Path | str) -> QTreeWidgetItem | None:
        found = self._find(path)
        return found[2] if found is not None else None

    def action_button(self, path: Path | str) -> QPushButton | None:
        found = self._find(path)
        cell = self._cells.get(found[1].path) if found is not None else None
        return cell.button if cell is not None and not cell.button.isHidden() else None

    def progress_bar(self, path: Path | str) -> QProgressBar | None:
        found = self._find(path)
        cell = self._cells.get(found[1].path) if found is not None else None
        return cell.bar if cell is not None and not cell.bar.isHidden() else None

    def selected_path(self) -> Path | None:
        items = self.selectedItems()
        if not items:
            return None
        data = items[0].data(self.LEVEL, Qt.ItemDataRole.UserRole)
        return Path(data) if data else None

    def select_path(self, path: Path) -> None:
        found = self._find(path)
        if found is not None and found[1].made:
            self.setCurrentItem(found[2])
            found[2].setSelected(True)

    def _emit_selection(self) -> None:
        path = self.selected_path()
        if path is not None:
            self._selected = path
            self.model_selected.emit(path)
        self.ladder_changed.emit()

    # -- the chart's view of it -------------------------------------------------------------------

    def chart_group(self) -> ModelGroup | None:
        """The group the chart shows: the selected level's, else the first with measurements."""
        selected = self.selected_path() or self._selected
        found = self._find(selected) if selected is not None else None
        if found is not None:
            return found[0]
        for group in self._groups:
            if any(r.quality is not None for r in group.rows):
                return group
        return self._groups[0] if self._groups else None

    def chart_points(self) -> list[ChartPoint]:
        group = self.chart_group()
        if group is None:
            return []
        selected = self.selected_path() or self._selected
        return [
            ChartPoint(
                label=row.quant,
                size_bytes=row.size_bytes or 0,
                kld=row.quality.kld_mean,
                current=selected is not None and row.is_file(selected),
                tooltip=f"{row.quant}: {human_size(row.size_bytes)}, {quality_text(row)}",
            )
            for row in group.rows
            if row.made and row.quality is not None
        ]

    # -- Make, Measure, Cancel --------------------------------------------------------------------

    def _job_for(self, row: LadderRow) -> str | None:
        for key, work in self._jobs.running().items():
            if row.path in _work_paths(work):
                return key
        return None

    def _show_actions(self) -> None:
        any_running = bool(self._jobs.running())
        for group, row, _item in self._items:
            cell = self._cells.get(row.path)
            if cell is None:
                continue
            key = self._job_for(row)
            if key is not None:
                cell.show_progress(
                    self._jobs.last_progress(key), lambda k=key: self._jobs.cancel(k)
                )
                continue
            busy_tip = "Another level is being made or measured; wait for it, or cancel it."
            if not row.made and row.ladder is not None:
                blocker = group.make_blocker(row)
                if blocker is not None:
                    cell.show_button(
                        NEEDS_SOURCE, lambda b=blocker: self.notice.emit(b), blocker, True
                    )
                else:
                    tip = self._make_tip(group, row)
                    cell.show_button(
                        MAKE,
                        lambda p=row.path: self.make(p),
                        busy_tip if any_running else tip,
                        not any_running,
                    )
            elif row.made and row.quality is None and not row.is_reference and row.ladder:
                blocker = group.measure_blocker(row)
                if blocker is not None:
                    cell.show_button(
                        NEEDS_SOURCE, lambda b=blocker: self.notice.emit(b), blocker, True
                    )
                else:
                    cell.show_button(
                        MEASURE,
                        lambda p=row.path: self.measure(p),
                        busy_tip
                        if any_running
                        else "Measure what this level loses against "
                        f"{group.reference.name if group.reference else 'the reference'}.",
                        not any_running,
                    )
            else:
                cell.bar.hide()
                cell.button.hide()

    def _make_tip(self, group: ModelGroup, row: LadderRow) -> str:
        source = group.reference.name if group.reference else "?"
        if group.needs_imatrix(row):
            return f"Make {row.quant} from {source}; its importance matrix is made first."
        if group.imatrix is not None and row.ladder and row.ladder.imatrix.value != "none":
            return f"Make {row.quant} from {source} with {group.imatrix.name}."
        return f"Make {row.quant} from {source}."

    def make(self, path: Path) -> bool:
        """Start making the level at `path`; False (and a notice) when it cannot."""
        found = self._find(path)
        if found is None:
            return False
        group, row, _item = found
        blocker = group.make_blocker(row)
        if blocker is None and self._jobs.running():
            blocker = "Another level is being made or measured; wait for it, or cancel it."
        if blocker is not None:
            self.notice.emit(blocker)
            return False
        assert group.reference is not None and row.ladder is not None
        work = LevelWork(
            source=str(group.reference),
            out_dir=str(group.folder),
            basename=group.basename,
            make=(row.quant,),
            imatrix=str(imatrix_path(group.folder, group.basename)),
            imatrix_chunks=IMATRIX_CHUNKS,
            chunks=group.measure_chunks,
            # The demo's few MB run on the CPU, like its first-start ladder.
            n_gpu_layers=0 if group.is_demo else None,
            n_threads=1 if group.is_demo else None,
        )
        return self._jobs.start(f"make:{row.path}", work)

    def measure(self, path: Path) -> bool:
        found = self._find(path)
        if found is None:
            return False
        group, row, _item = found
        blocker = group.measure_blocker(row)
        if blocker is None and self._jobs.running():
            blocker = "Another level is being made or measured; wait for it, or cancel it."
        if blocker is not None:
            self.notice.emit(blocker)
            return False
        assert group.reference is not None
        work = LevelWork(
            source=str(group.reference),
            out_dir=str(group.folder),
            basename=group.basename,
            measure=(str(row.path),),
            chunks=group.measure_chunks,
            n_gpu_layers=0 if group.is_demo else None,
            n_threads=1 if group.is_demo else None,
        )
        return self._jobs.start(f"measure:{row.path}", work)

    def cancel(self, path: Path) -> None:
        found = self._find(path)
        key = self._job_for(found[1]) if found is not None else None
        if key is not None:
            self._jobs.cancel(key)

    def _job_progress(self, key: str, progress: JobProgress) -> None:
        for _group, row, item in self._items:
            if self._job_for(row) == key:
                cell = self._cells.get(row.path)
                if cell is not None:
                    cell.show_progress(progress, lambda k=key: self._jobs.cancel(k))
                verb = "making" if not row.made else "measuring"
                detail = f" ({progress.step})" if progress.step else ""
                item.setText(self.QUALITY, f"{verb}…{detail}")

    def _job_started(self, _key: str) -> None:
        self._show_actions()

    def _job_made(self, _key: str, _path: Path) -> None:
        self.rescan()  # the new file is complete: list it at once

    def _job_finished(self, _key: str, outcome: WorkOutcome) -> None:
        if outcome.status == "cancelled":
            self.notice.emit("Cancelled; nothing unfinished was kept.")
        elif outcome.status == "error":
            self.notice.emit(outcome.message)
        self._show_actions()
        self.rescan()


def _work_paths(work: LevelWork) -> set[Path]:
    from convert.quantize import output_name

    made = {Path(work.out_dir) / output_name(work.basename, q) for q in work.make}
    return made | {Path(p) for p in work.measure}
