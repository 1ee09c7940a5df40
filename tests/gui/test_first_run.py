"""The first-run dialog: open a local GGUF, refuse a bad one, convert a checkpoint, download."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fathom_desktop import paths
from fathom_desktop.engine import planner
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.gui import first_run, first_run_steps
from fathom_desktop.gui.first_run import FirstRunDialog, Page
from fathom_desktop.gui.first_run_steps import (
    JobCancelled,
    JobProgress,
    convert_folder,
    download_folder,
)
from fathom_desktop.gui.model_list import human_size
from tests.convert.fake_hub import REPO, FakeHub, needed_bytes, repo_files, serve_fake_hub
from tests.gui.conftest import WAIT_MS, cuda_backend
from tests.gui.test_settings_dialog import write_model_header

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FAKE_GPU = GpuInfo(name="Fake RTX 4060", total_bytes=8 * 2**30, free_bytes=int(7.6 * 2**30))
# Quantizing runs llama.cpp in a child process; allow for a loaded 2-core machine.
JOB_TIMEOUT_MS = 120_000


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(paths.HOME_ENV_VAR, str(tmp_path / "home"))
    monkeypatch.setattr(planner, "detect_gpu", lambda: FAKE_GPU)
    # A CUDA build that supports it; this machine's own llama.cpp is the CPU build.
    cuda_backend(monkeypatch)
    return tmp_path / "home"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records (and refuses) every attempt to open a connection from this process."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def dialog(qtbot) -> FirstRunDialog:
    d = FirstRunDialog()
    qtbot.addWidget(d)
    d.resize(640, 420)
    d.show()
    return d


@pytest.fixture
def slow_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hub on 127.0.0.1 for the download's child process. Both shards come slowly (about
    3 s each): huggingface-hub writes in 10 MB chunks, so a test shard lands all at once, and
    progress is seen mid-download only between the two."""
    with serve_fake_hub(monkeypatch, REPO, repo_files()) as hub:
        for name in hub.files:
            if name.endswith(".safetensors"):
                hub.faults[name] = "slow"
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # conftest's 1 would reach the child
        yield hub


def _shot(widget: FirstRunDialog, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    assert widget.grab().save(str(ARTIFACTS / name))


def open_gguf(qtbot, dialog: FirstRunDialog, path: Path) -> bool:
    """Open `path` as the user would and wait for its header to be read; True if accepted."""
    dialog.open_gguf(path)
    qtbot.waitUntil(lambda: not dialog.busy(), timeout=WAIT_MS)
    return dialog.result() == FirstRunDialog.DialogCode.Accepted


def test_opens_a_local_gguf(
    dialog: FirstRunDialog, tmp_path: Path, no_network: list, qtbot, monkeypatch
) -> None:
    model = write_model_header(tmp_path / "Fathom-R1-14B-Q4_K_M.gguf")
    _shot(dialog, "first_run_welcome.png")
    read_on: list[str] = []
    original = first_run.check_model_file

    def recorded(path):
        read_on.append(threading.current_thread().name)
        return original(path)

    monkeypatch.setattr(first_run, "check_model_file", recorded)
    assert open_gguf(qtbot, dialog, model)
    assert read_on and threading.main_thread().name not in read_on  # never on the GUI thread
    assert dialog.chosen_path == model
    assert dialog.result() == FirstRunDialog.DialogCode.Accepted
    assert no_network == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"PK\x03\x04 a zip file", "notes.gguf is not a GGUF model file"),
        (b"GGUF" + bytes(10), "notes.gguf is damaged or incomplete"),
    ],
)
def test_refuses_a_bad_file_with_a_message(
    dialog: FirstRunDialog, tmp_path: Path, content: bytes, reason: str, no_network: list, qtbot
) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(content)
    assert not open_gguf(qtbot, dialog, bad)
    assert dialog.error_text().startswith(reason)
    assert "\n" not in dialog.error_text()
    assert dialog.chosen_path is None and dialog.isVisible()
    assert dialog.page() is Page.WELCOME
    _shot(dialog, "first_run_refused.png")
    assert no_network == []


def test_refuses_a_truncated_model(dialog: FirstRunDialog, tmp_path: Path, qtbot) -> None:
    model = write_model_header(tmp_path / "cut.gguf")
    with open(model, "r+b") as f:
        f.truncate(model.stat().st_size // 2)
    assert not open_gguf(qtbot, dialog, model)
    assert "cut.gguf is incomplete" in dialog.error_text()


def test_offers_models_already_in_the_folder(qtbot, tmp_path: Path) -> None:
    folder = paths.models_dir()
    write_model_header(folder / "Fathom-R1-14B-Q4_K_M.gguf")
    dialog = FirstRunDialog()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: not dialog.busy())  # the folder and the GPU are read aside
    assert not dialog.existing_button.isHidden()
    assert "1 found" in dialog.existing_button.text()
    assert dialog.gpu_label.text() == "GPU: Fake RTX 4060, 7.6 GiB free of 8.0 GiB"
    dialog.existing_button.click()
    assert dialog.page() is Page.CHOOSE
    qtbot.waitUntil(lambda: not dialog.busy())
    item = dialog.model_list.topLevelItem(0)
    assert item.text(0) == "Fathom-R1-14B-Q4_K_M.gguf"
    assert item.text(3).startswith("partial: ")  # 14B at Q4_K_M on an 8 GB card
    dialog.resize(640, 420)
    _shot(dialog, "first_run_choose.png")
    dialog._use_selected()
    qtbot.waitUntil(lambda: not dialog.busy())  # its header is read again, aside
    assert dialog.chosen_path == folder / "Fathom-R1-14B-Q4_K_M.gguf"


def test_empty_folder_hides_the_existing_models_button(dialog: FirstRunDialog, qtbot) -> None:
    qtbot.waitUntil(lambda: not dialog.busy())
    assert dialog.existing_button.isHidden()


def test_a_cancelled_conversion_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    reports: list[tuple[str, int, int, str]] = []

    def report(step: str, done: int, total: int, message: str) -> None:
        reports.append((step, done, total, message))
        cancel.set()  # the user presses Cancel as soon as the conversion starts

    out_dir = tmp_path / "models"
    out_dir.mkdir()
    with pytest.raises(JobCancelled):
        convert_folder(tiny_checkpoint, out_dir, JobProgress(report, cancel), cancel)
    assert reports and reports[0][0] == "convert"
    assert list(out_dir.iterdir()) == []


def test_download_while_offline_says_so(dialog: FirstRunDialog, qtbot) -> None:
    # conftest sets HF_HUB_OFFLINE=1; the child process inherits it.
    dialog.download_button.click()
    assert dialog.page() is Page.DOWNLOAD
    _shot(dialog, "first_run_download.png")
    dialog.start_download()
    assert dialog.page() is Page.WORKING
    qtbot.waitUntil(lambda: not dialog.job_running(), timeout=JOB_TIMEOUT_MS)
    assert dialog.page() is Page.DOWNLOAD
    assert dialog.error_text().startswith(
        "Cannot download FractalAIResearch/Fathom-R1-14B: offline mode is on"
    )
    _shot(dialog, "first_run_offline.png")


def test_download_without_a_network_says_so(
    dialog: FirstRunDialog, qtbot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Online mode, but the Hub's address refuses connections (a closed port on this machine).
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    dialog.download_button.click()
    dialog.start_download()
    qtbot.waitUntil(lambda: not dialog.job_running(), timeout=JOB_TIMEOUT_MS)
    assert "no network connection" in dialog.error_text()
    assert "\n" not in dialog.error_text()


def test_download_reports_progress_against_the_total(
    slow_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(first_run_steps, "TIME_LEFT_AFTER_S", 0.0)
    reports: list[tuple[str, int, int, str]] = []
    cancel = threading.Event()
    progress = JobProgress(lambda *report: reports.append(report), cancel)
    dest = tmp_path / "ckpt"
    assert download_folder(REPO, dest, progress, cancel) == dest

    total = needed_bytes(slow_hub.files)
    determinate = [r for r in reports if r[2] > 0]
    assert determinate and {r[2] for r in determinate} == {total}
    done = [r[1] for r in determinate]
    assert done == sorted(done)
    assert reports[-1] == (f"Downloading {REPO}", total, total, "")
    midway = [r for r in determinate if 0 < r[1] < total]
    assert midway, reports
    assert any(re.fullmatch(r"about \d+ min left|less than a minute left", r[3]) for r in midway)


def test_cancel_stops_a_download_and_keeps_the_finished_files(
    slow_hub: FakeHub, tmp_path: Path
) -> None:
    cancel = threading.Event()
    dest = tmp_path / "ckpt"
    partial_dir = dest / ".cache" / "huggingface" / "download"
    # Another program's partial file, older than this run: not ours to delete.
    partial_dir.mkdir(parents=True)
    foreign = partial_dir / "other.incomplete"
    foreign.write_bytes(b"x")
    os.utime(foreign, (time.time() - 3600, time.time() - 3600))
    seen_partial: list[Path] = []

    def report(step: str, done: int, total: int, message: str) -> None:
        # A shard is on its way: its partial file exists.
        ours = [p for p in partial_dir.rglob("*.incomplete") if p != foreign]
        if 0 < done < total and ours:
            seen_partial.extend(ours)
            cancel.set()

    with pytest.raises(JobCancelled, match="finished files are kept"):
        download_folder(REPO, dest, JobProgress(report, cancel), cancel)
    assert (dest / "config.json").read_bytes() == slow_hub.files["config.json"]
    assert list(dest.glob("*.safetensors")) == []
    # huggingface-hub never resumes a killed transfer's file: it must not stay behind.
    assert seen_partial and not any(p.exists() for p in seen_partial)
    assert foreign.exists()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (42, "less than a minute left"),
        (61, "about 2 min left"),
        (90 * 60, "about 1 h 30 min left"),
    ],
)
def test_time_left_reads_naturally(seconds: float, text: str) -> None:
    assert first_run_steps.time_left_text(seconds) == text


def test_download_shows_how_much_of_the_total_is_done(
    dialog: FirstRunDialog, qtbot, slow_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted: list[Path] = []
    monkeypatch.setattr(dialog, "convert_checkpoint_folder", converted.append)
    dialog.download_button.click()
    dialog.start_download()
    of_total = f" of {human_size(needed_bytes(slow_hub.files))}"
    bar = dialog.progress_bar
    qtbot.waitUntil(
        lambda: of_total in dialog.detail_label.text() and 0 < bar.value() < bar.maximum(),
        timeout=JOB_TIMEOUT_MS,
    )
    assert re.search(r"\d+%", bar.text())
    # The title names the download once; the line under the bar says how far it is.
    assert dialog.step_label.text() == f"Downloading {REPO}"
    assert REPO not in dialog.detail_label.text()
    _shot(dialog, "first_run_downloading.png")
    qtbot.waitUntil(lambda: not dialog.job_running(), timeout=JOB_TIMEOUT_MS)
    assert converted == [paths.data_dir() / "checkpoints" / REPO.replace("/", "--")]


def test_a_bad_repo_id_is_refused(dialog: FirstRunDialog, qtbot) -> None:
    dialog.download_button.click()
    dialog.repo_edit.setText("not a repo id")
    dialog.start_download()
    qtbot.waitUntil(lambda: not dialog.job_running(), timeout=JOB_TIMEOUT_MS)
    assert dialog.error_text() == (
        "'not a repo id' is not a Hugging Face repo id like FractalAIResearch/Fathom-R1-14B."
    )


@pytest.mark.slow
def test_converts_a_checkpoint_then_quantizes_the_chosen_level(
    dialog: FirstRunDialog, qtbot, tiny_checkpoint: Path, no_network: list
) -> None:
    models = paths.models_dir()
    dialog.convert_checkpoint_folder(tiny_checkpoint)
    qtbot.waitUntil(lambda: dialog.page() is Page.QUANTS, timeout=JOB_TIMEOUT_MS)
    assert dialog.error_text() == ""
    bf16 = models / f"{tiny_checkpoint.name}-BF16.gguf"
    assert bf16.is_file()
    # The ladder is offered with size and fit estimates, and the best level that fits is
    # recommended (every level of the tiny model fits: the largest), with the reason.
    assert _quant_row(dialog, "Q8_0")[1] == "fits on GPU"
    checked = [name for name, box in dialog.quant_boxes.items() if box.isChecked()]
    assert checked == ["Q8_0"]
    assert dialog.recommend_label.text().startswith("Recommended: Q8_0 (")
    assert dialog.recommend_label.text().endswith(
        "the largest, so least lossy, level that fits fully on the GPU (quality not measured yet)."
    )
    dialog.resize(640, 420)
    _shot(dialog, "first_run_quants.png")

    dialog.start_quantize()
    qtbot.waitUntil(lambda: dialog.page() is not Page.WORKING, timeout=JOB_TIMEOUT_MS)
    assert dialog.error_text() == ""
    assert dialog.page() is Page.CHOOSE
    qtbot.waitUntil(lambda: not dialog.busy())
    q8 = models / f"{tiny_checkpoint.name}-Q8_0.gguf"
    assert q8.is_file() and not bf16.exists()  # the BF16 was not asked to be kept
    assert dialog.model_list.topLevelItemCount() == 1
    assert dialog.model_list.topLevelItem(0).text(1) == "Q8_0"
    manifest = json.loads((models / "manifest.json").read_text())
    [entry] = manifest["files"]
    assert entry["file"] == q8.name and entry["quant_type"] == "Q8_0"
    assert len(entry["sha256"]) == 64
    _shot(dialog, "first_run_done.png")

    dialog._use_selected()
    qtbot.waitUntil(lambda: not dialog.busy())
    assert dialog.chosen_path == q8
    assert no_network == []


def _quant_row(dialog: FirstRunDialog, name: str) -> list[str]:
    grid = dialog.quant_grid
    for row in range(grid.rowCount()):
        box = grid.itemAtPosition(row, 0)
        if box is not None and box.widget().text() == name:
            return [grid.itemAtPosition(row, c).widget().text() for c in (1, 2, 3)]
    raise AssertionError(f"{name} is not offered")


def test_quantize_needs_a_choice(dialog: FirstRunDialog, tmp_path: Path) -> None:
    dialog._converted(write_model_header(tmp_path / "x-BF16.gguf"))
    for box in dialog.quant_boxes.values():
        box.setChecked(False)
    dialog.start_quantize()
    assert dialog.error_text() == "Choose at least one quantization level, or keep the BF16 file."
    assert dialog.page() is Page.QUANTS


def test_opens_a_gguf_the_converter_made(
    dialog: FirstRunDialog, tiny_gguf_f32: Path, qtbot
) -> None:
    assert open_gguf(qtbot, dialog, tiny_gguf_f32)
    assert dialog.chosen_path == tiny_gguf_f32


def test_cancel_stops_a_conversion_and_keeps_nothing(
    dialog: FirstRunDialog, qtbot, tiny_checkpoint: Path
) -> None:
    dialog.convert_checkpoint_folder(tiny_checkpoint)
    assert dialog.page() is Page.WORKING
    _shot(dialog, "first_run_working.png")
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.job_running(), timeout=JOB_TIMEOUT_MS)
    assert dialog.page() is Page.WELCOME
    assert dialog.error_text() == "Cancelled; nothing unfinished was kept."
    assert list(paths.models_dir().iterdir()) == []


def test_the_recommendation_prefers_a_measured_level_that_fits_fully(
    dialog: FirstRunDialog, tmp_path: Path
) -> None:
    """On a 16 GB card only some Fathom levels fit fully; of those, the one measured to lose
    least is recommended (here, to show that the measurement decides, not the size, the
    smallest), and the line says why."""
    from fathom_desktop.gui import first_run

    config = Path(__file__).resolve().parents[1] / "fixtures" / "fathom-r1-14b" / "config.json"
    dialog._config_json = config
    gpu = GpuInfo(name="Fake RTX 4080", total_bytes=16 * 2**30, free_bytes=int(15.5 * 2**30))
    dialog._gpu = gpu
    options = {o.name: o for o in first_run.quant_options(config, gpu)}
    full = [name for name, o in options.items() if o.fit == "fits on GPU"]
    assert len(full) >= 2 and len(full) < len(options)  # the premise: some fit, some do not
    measured = {name: (0.05 + 0.01 * i, 0.9) for i, name in enumerate(reversed(full))}
    dialog._converted(write_model_header(tmp_path / "Fathom-R1-14B-BF16.gguf"), measured)
    best = min(full, key=lambda name: measured[name][0])
    assert [n for n, box in dialog.quant_boxes.items() if box.isChecked()] == [best]
    text = dialog.recommend_label.text()
    assert text.startswith(f"Recommended: {best} (")
    assert "the least quality lost of the levels that fit fully on the GPU" in text
    assert f"KLD {measured[best][0]:.4f}" in text
