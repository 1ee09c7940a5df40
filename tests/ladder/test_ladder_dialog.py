"""Settings › Model shows every model's whole ladder beside a chart, and makes and measures
levels in a child process while the window goes on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import pytest
from PySide6.QtWidgets import QApplication

from convert.atomic import PARTIAL_SUFFIX
from convert.manifest import read_manifest
from convert.quantize import LADDER
from fathom_desktop import paths
from fathom_desktop.engine import planner
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.gui.ladder_cells import MAKE, MEASURE, NEEDS_SOURCE, NOT_MEASURED
from fathom_desktop.gui.ladder_jobs import ladder_jobs
from fathom_desktop.gui.settings_dialog import SettingsDialog
from fathom_desktop.settings import SettingsStore
from tests.gui.conftest import cuda_backend
from tests.gui.test_settings_dialog import write_model_header
from tests.ladder.conftest import copy_of

JOB_MS = 90_000  # a child that loads llama.cpp and runs on a busy 2-core box
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_T = gguf.GGMLQuantizationType
_F = gguf.LlamaFileType
LADDER_NAMES = [q.name for q in LADDER]


@pytest.fixture
def models(demo_ladder: Path) -> Path:
    """The user's models folder: a fresh install's demo ladder."""
    return copy_of(demo_ladder, paths.models_dir())


@pytest.fixture
def fathom_levels(models: Path) -> dict[str, Path]:
    """Fathom-R1-14B's BF16 and two levels beside the demo (headers with sparse weights)."""
    return {
        "BF16": write_model_header(
            models / "Fathom-R1-14B-BF16.gguf", matrix_type=_T.BF16, file_type=_F.MOSTLY_BF16
        ),
        "Q8_0": write_model_header(
            models / "Fathom-R1-14B-Q8_0.gguf", matrix_type=_T.Q8_0, file_type=_F.MOSTLY_Q8_0
        ),
        "Q4_K_M": write_model_header(models / "Fathom-R1-14B-Q4_K_M.gguf"),
    }


def open_dialog(qtbot, store: SettingsStore | None = None, **kwargs) -> SettingsDialog:
    dialog = SettingsDialog(store or SettingsStore.load(), **kwargs)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: not dialog.model_list.busy(), timeout=15_000)
    return dialog


def rows_of(dialog: SettingsDialog, title: str):
    return [
        (row, item) for group, row, item in dialog.model_list.level_rows() if group.title == title
    ]


def demo_row(dialog: SettingsDialog, quant: str):
    return next(
        (row, item)
        for row, item in rows_of(dialog, "Demo model (fathom-tiny)")
        if row.quant == quant
    )


def wait_for_jobs(qtbot, dialog: SettingsDialog) -> None:
    qtbot.waitUntil(lambda: not ladder_jobs().running(), timeout=JOB_MS)
    qtbot.waitUntil(lambda: not dialog.model_list.busy(), timeout=15_000)


@pytest.fixture(autouse=True)
def no_job_left_behind(qtbot):
    yield
    ladder_jobs().cancel_all(wait_s=15)
    QApplication.processEvents()


def test_every_level_of_every_model_grouped_and_in_ladder_order(
    qtbot, monkeypatch, models: Path, fathom_levels: dict[str, Path]
) -> None:
    monkeypatch.setattr(
        planner, "detect_gpu", lambda: GpuInfo("Fake RTX 4070", 12 * 2**30, 11 * 2**30)
    )
    cuda_backend(monkeypatch)
    dialog = open_dialog(qtbot)
    titles = [group.title for group in dialog.model_list.groups()]
    assert titles == ["Fathom-R1-14B", "Demo model (fathom-tiny)"]  # the demo apart, last
    for title in titles:
        levels = [row.quant for row, _item in rows_of(dialog, title)]
        assert levels == ["BF16", *LADDER_NAMES]  # the reference, then the whole ladder

    fathom = dict((row.quant, (row, item)) for row, item in rows_of(dialog, "Fathom-R1-14B"))
    # Made levels: measured size; the others estimated from bits/weight, smaller down the list.
    assert fathom["Q8_0"][1].text(1) == f"{fathom_levels['Q8_0'].stat().st_size / 2**30:.1f} GiB"
    estimates = [
        float(re.fullmatch(r"≈ (\d+\.\d) GiB", item.text(1)).group(1))
        for quant, (row, item) in fathom.items()
        if not row.made
    ]
    assert len(estimates) == len(LADDER) - 2 and estimates == sorted(estimates, reverse=True)
    # Fit badges for made and estimated levels alike: Q2_K fits 11 GiB at 16k context, Q8_0 not.
    assert fathom["Q2_K"][1].text(2) == "fits on GPU"
    assert fathom["Q8_0"][1].text(2).startswith("partial: ")
    # Not made: Make; made without measurements: Measure ("not measured" said in words).
    assert dialog.model_list.action_button(fathom["Q6_K"][0].path).text() == MAKE
    assert fathom["Q4_K_M"][1].text(3) == NOT_MEASURED
    assert dialog.model_list.action_button(fathom["Q4_K_M"][0].path).text() == MEASURE

    # The demo's levels carry the numbers measured at first start, with what they mean.
    row, item = demo_row(dialog, "Q4_K_M")
    assert re.fullmatch(r"\d+\.\d % · [\d.e-]+", item.text(3))
    tip = item.toolTip(3)
    assert "Same top token" in tip and "KLD" in tip and "2,040 tokens" in tip
    assert "lower is better" in tip
    assert dialog.model_list.action_button(row.path) is None  # nothing left to do there
    ARTIFACTS.mkdir(exist_ok=True)
    dialog.resize(1000, 640)
    assert dialog.grab().save(str(ARTIFACTS / "settings_dialog_ladder.png"))


def test_without_bf16_the_buttons_say_what_is_needed(qtbot, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(planner, "detect_gpu", lambda: None)
    folder = paths.models_dir()
    level = write_model_header(folder / "Fathom-R1-14B-Q4_K_M.gguf")
    dialog = open_dialog(qtbot)
    rows = dict((row.quant, row) for row, _item in rows_of(dialog, "Fathom-R1-14B"))
    make = dialog.model_list.action_button(rows["Q6_K"].path)
    assert make is not None and make.text() == NEEDS_SOURCE
    make.click()
    notice = dialog.notice_label.text()
    assert dialog.notice_label.isVisible()
    assert "Fathom-R1-14B-BF16.gguf" in notice and "convert" in notice and "download" in notice
    assert "File › Get Fathom-R1-14B…" in notice  # the one-click way in
    measure = dialog.model_list.action_button(level)
    assert measure is not None and measure.text() == NEEDS_SOURCE
    assert not ladder_jobs().running()
    assert sorted(p.name for p in folder.iterdir()) == [level.name]


def test_make_a_missing_level_and_its_row_fills_in(qtbot, models: Path) -> None:
    dialog = open_dialog(qtbot)
    row, item = demo_row(dialog, "IQ4_XS")
    assert not row.made and item.text(1).startswith("≈ ")
    button = dialog.model_list.action_button(row.path)
    assert button is not None and button.text() == MAKE
    button.click()
    # Running: the row shows progress and Cancel, and the window goes on meanwhile.
    qtbot.waitUntil(lambda: dialog.model_list.progress_bar(row.path) is not None, timeout=5_000)
    assert dialog.model_list.action_button(row.path).text() == "Cancel"
    assert dialog.editor("temperature").isEnabled()
    wait_for_jobs(qtbot, dialog)

    made, item = demo_row(dialog, "IQ4_XS")
    assert made.made and made.path.is_file()
    assert item.text(1) == f"{made.path.stat().st_size / 1024:.1f} KiB"  # measured now
    assert item.text(3) == NOT_MEASURED
    assert dialog.model_list.action_button(made.path).text() == MEASURE
    entry = read_manifest(models).files[made.path.name]
    assert entry.quant_type == "IQ4_XS" and entry.imatrix is not None  # the demo's imatrix used
    # A made level can be chosen.
    dialog.model_list.select_path(made.path)
    assert dialog.values()["model_path"] == str(made.path)


def test_cancel_leaves_nothing_half_written(qtbot, models: Path) -> None:
    dialog = open_dialog(qtbot)
    imatrix = dialog.model_list.groups()[0].imatrix
    assert imatrix is not None
    imatrix.unlink()  # IQ2_M needs one: Make makes it first, which takes a while
    dialog.model_list.rescan()
    qtbot.waitUntil(lambda: not dialog.model_list.busy(), timeout=15_000)
    row, _item = demo_row(dialog, "IQ2_M")
    before = sorted(p.name for p in models.iterdir())
    manifest = (models / "manifest.json").read_bytes()
    dialog.model_list.action_button(row.path).click()
    key = next(iter(ladder_jobs().running()))
    qtbot.waitUntil(
        lambda: (
            (p := ladder_jobs().last_progress(key)) is not None
            and p.step == "importance matrix"
            and p.done > 0
        ),
        timeout=JOB_MS,
    )
    dialog.model_list.action_button(row.path).click()  # Cancel
    wait_for_jobs(qtbot, dialog)

    assert dialog.notice_label.text() == "Cancelled; nothing unfinished was kept."
    assert sorted(p.name for p in models.iterdir()) == before
    assert not [p for p in models.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert (models / "manifest.json").read_bytes() == manifest
    row, _item = demo_row(dialog, "IQ2_M")
    assert not row.made and dialog.model_list.action_button(row.path).text() == MAKE


def test_measure_fills_the_numbers_from_a_real_evaluation(qtbot, models: Path) -> None:
    # Forget Q3_K_M's measurement, as for a level made before measuring existed.
    path = models / "manifest.json"
    data = json.loads(path.read_text())
    data["evaluations"] = [e for e in data["evaluations"] if not e["file"].endswith("-Q3_K_M.gguf")]
    path.write_text(json.dumps(data))
    dialog = open_dialog(qtbot)
    row, item = demo_row(dialog, "Q3_K_M")
    assert item.text(3) == NOT_MEASURED
    assert "Q3_K_M" not in [p.label for p in dialog.quality_chart.points()]
    dialog.model_list.action_button(row.path).click()
    wait_for_jobs(qtbot, dialog)

    row, item = demo_row(dialog, "Q3_K_M")
    assert row.quality is not None and row.quality.tokens == 2040
    assert item.text(3) == f"{100 * row.quality.top1:.1f} % · {row.quality.kld_mean:.3g}"
    # Measured like its neighbours, it lands between them.
    q4, q2 = demo_row(dialog, "Q4_K_M")[0].quality, demo_row(dialog, "Q2_K")[0].quality
    assert q4.kld_mean < row.quality.kld_mean < q2.kld_mean
    assert "Q3_K_M" in [p.label for p in dialog.quality_chart.points()]


def test_the_chart_plots_each_measured_level_and_the_free_vram(
    qtbot, monkeypatch, models: Path
) -> None:
    # A GPU whose free memory falls between the demo's Q4_K_M (835 KiB) and Q6_K (1.1 MiB).
    monkeypatch.setattr(planner, "detect_gpu", lambda: GpuInfo("Small GPU", 2 << 20, 900 << 10))
    cuda_backend(monkeypatch)
    q4 = demo_model("Q4_K_M", models)
    store = SettingsStore.load()
    store.set("model_path", str(q4))
    dialog = open_dialog(qtbot, store)
    qtbot.waitUntil(lambda: dialog.quality_chart.vram_x() is not None, timeout=15_000)
    chart = dialog.quality_chart
    points = {p.label: p for p in chart.points()}
    assert set(points) == {"Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K"}
    assert [label for label, p in points.items() if p.current] == ["Q4_K_M"]
    plot = chart.plot_rect()
    spots = {label: chart.point_position(label) for label in points}
    for spot in spots.values():
        assert plot.contains(spot)
    # Bigger files to the right; more quality lost higher up (smaller y), on a log scale.
    assert spots["Q2_K"].x() < spots["Q3_K_M"].x() < spots["Q4_K_M"].x() < spots["Q8_0"].x()
    assert spots["Q2_K"].y() < spots["Q4_K_M"].y() < spots["Q8_0"].y()
    # The free memory's line: what lies left of it is smaller than the free memory.
    vram_x = chart.vram_x()
    assert not chart.vram_off_scale() and plot.left() < vram_x < plot.right()
    for label, p in points.items():
        assert (spots[label].x() < vram_x) == (p.size_bytes < 900 << 10)
    # Choosing another level moves the highlight.
    dialog.model_list.select_path(demo_model("Q2_K", models))
    assert [p.label for p in chart.points() if p.current] == ["Q2_K"]


def demo_model(quant: str, folder: Path) -> Path:
    (path,) = folder.glob(f"fathom-tiny-*-{quant}.gguf")
    return path


_NO_LLAMA_IN_THE_WINDOW = r"""
import json, sys, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
from fathom_desktop.gui.ladder_jobs import ladder_jobs
from fathom_desktop.gui.settings_dialog import SettingsDialog
from fathom_desktop.settings import SettingsStore

def wait(done, limit=120.0):
    end = time.monotonic() + limit
    while not done():
        app.processEvents()
        time.sleep(0.01)
        assert time.monotonic() < end

dialog = SettingsDialog(SettingsStore(Path(sys.argv[1]) / "settings.json"))
dialog.show()
wait(lambda: not dialog.model_list.busy() and dialog.model_list.level_rows())
rows = {row.quant: row for group, row, item in dialog.model_list.level_rows()}
dialog.model_list.action_button(rows["IQ4_XS"].path).click()  # Make
wait(lambda: not ladder_jobs().running())
wait(lambda: not dialog.model_list.busy())
dialog.model_list.action_button(rows["IQ4_XS"].path).click()  # Measure
wait(lambda: not ladder_jobs().running())
wait(lambda: not dialog.model_list.busy())
rows = {row.quant: row for group, row, item in dialog.model_list.level_rows()}
print(json.dumps({"llama_cpp": "llama_cpp" in sys.modules,
                  "measured": rows["IQ4_XS"].quality is not None}))
"""


def test_make_and_measure_never_load_llama_cpp_in_the_window(models: Path) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _NO_LLAMA_IN_THE_WINDOW, str(models.parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"llama_cpp": False, "measured": True}


def test_the_level_in_use_is_shown_and_choosing_another_is_a_change(qtbot, models: Path) -> None:
    q8, q4 = demo_model("Q8_0", models), demo_model("Q4_K_M", models)
    store = SettingsStore.load()  # no model chosen: the demo's Q8_0 is in use
    dialog = open_dialog(qtbot, store, current_model=q8)
    assert dialog.model_list.selected_path() == q8
    assert [p.label for p in dialog.quality_chart.points() if p.current] == ["Q8_0"]
    assert dialog.values()["model_path"] is None  # the level in use: nothing to reload
    dialog.model_list.select_path(q4)
    assert dialog.apply()  # the demo's 4,096-token context is capped by the engine, not refused
    assert store.get("model_path") == str(q4)
