"""Get Fathom-R1-14B: from a (fake, local) Hub to a measured, loaded level, resumable and
cancellable at every step. The model is the shipped demo checkpoint served as if it were
Fathom-R1-14B, so the whole flow runs in seconds."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from convert.download import SOURCE_MARKER, CheckpointSource, _write_source
from fathom_desktop import paths
from fathom_desktop.engine import planner
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.gui.get_fathom import GetFathomDialog, open_get_fathom
from fathom_desktop.gui.setup_run import CANCELLED
from fathom_desktop.model_setup import (
    FATHOM_REPO,
    STEPS,
    SetupPlan,
    SetupState,
    Step,
    next_step,
    read_state,
    write_state,
)
from tests.convert.fake_hub import FakeHub, serve_fake_hub
from tests.gui.conftest import cuda_backend, screenshot

TINY = Path(__file__).resolve().parents[2] / "resources" / "fathom-tiny"
FAKE_GPU = GpuInfo(name="Fake RTX 4060", total_bytes=8 * 2**30, free_bytes=int(7.6 * 2**30))
# Every step runs in a child process that imports numpy, gguf and llama.cpp: allow for a loaded
# 2-core machine.
STEP_MS = 120_000


@pytest.fixture(autouse=True)
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "detect_gpu", lambda: FAKE_GPU)
    cuda_backend(monkeypatch)  # a CUDA build that can use it; this machine's is the CPU one


@pytest.fixture
def plan() -> SetupPlan:
    # Q4_K_M and Q3_K_M: both fit, Q4_K_M is the larger, and it is made with an imatrix.
    return SetupPlan(
        repo_id=FATHOM_REPO,
        checkpoint_dir=paths.data_dir() / "checkpoints" / "fathom",
        models_dir=paths.models_dir(),
        candidates=("Q4_K_M", "Q3_K_M"),
        imatrix_chunks=2,
        measure_chunks=2,
    )


def tiny_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in TINY.iterdir() if p.is_file()}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The demo checkpoint on a fake Hub at 127.0.0.1, for the download's child process."""
    with serve_fake_hub(monkeypatch, FATHOM_REPO, tiny_files()) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # conftest's 1 would reach the child
        yield fake


def downloaded(plan: SetupPlan) -> SetupState:
    """The state after the download, made without one."""
    shutil.copytree(TINY, plan.checkpoint_dir)
    _write_source(plan.checkpoint_dir, CheckpointSource(FATHOM_REPO, "0" * 40))
    state = SetupState(done=["download"], level="Q4_K_M", reason="Q4_K_M: test")
    write_state(plan, state)
    return state


def converted(plan: SetupPlan) -> SetupState:
    from convert.gguf_convert import convert_checkpoint

    state = downloaded(plan)
    convert_checkpoint(plan.checkpoint_dir, plan.bf16, "bf16")
    state.mark_done(Step.CONVERT)
    write_state(plan, state)
    return state


def with_imatrix(plan: SetupPlan) -> SetupState:
    from convert.imatrix import compute_imatrix

    state = converted(plan)
    compute_imatrix(plan.bf16, plan.imatrix, chunks=2)
    state.mark_done(Step.IMATRIX)
    write_state(plan, state)
    return state


def quantized(plan: SetupPlan) -> SetupState:
    from convert.quantize import quantize

    state = with_imatrix(plan)
    quantize(plan.bf16, plan.level_file("Q4_K_M"), "Q4_K_M", imatrix=plan.imatrix)
    state.mark_done(Step.QUANTIZE)
    write_state(plan, state)
    return state


PREPARE = {
    Step.CONVERT: downloaded,
    Step.IMATRIX: converted,
    Step.QUANTIZE: with_imatrix,
    Step.MEASURE: quantized,
}


def open_dialog(qtbot, plan: SetupPlan) -> GetFathomDialog:
    dialog = GetFathomDialog(plan=plan)
    qtbot.addWidget(dialog)
    dialog.resize(680, 460)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled())  # the saved state was read
    return dialog


def leftovers(folder: Path) -> list[str]:
    """Hidden files that are not the flow's state: what a step left half-written."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(".") and not p.name.startswith(".get-")
    )


# -- the whole flow -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_flow_downloads_converts_makes_measures_and_loads_the_level(
    make_window, qtbot, plan: SetupPlan, hub: FakeHub, artifacts: Path
) -> None:
    window = make_window()
    dialog = open_get_fathom(window, window.store, window.load_model, window.show_banner, plan)
    qtbot.waitUntil(lambda: dialog.start_button.isEnabled())
    assert dialog.start_button.text() == "Start"
    assert [dialog.step_mark(step) for step in STEPS] == ["todo"] * len(STEPS)
    screenshot(dialog, artifacts, "get_fathom_start")
    started: list[Step] = []
    dialog.step_started.connect(started.append)
    dialog.start_button.click()
    level = plan.level_file("Q4_K_M")
    qtbot.waitUntil(lambda: not dialog.running(), timeout=5 * STEP_MS)
    assert dialog.error_text() == ""
    # Every step ran, in order, and the level is the model now.
    assert started == list(STEPS)
    assert [dialog.step_mark(step) for step in (*STEPS, None)] == ["done"] * (len(STEPS) + 1)
    assert window.store.get("model_path") == str(level)
    qtbot.waitUntil(lambda: window.model_label.text() == level.name)
    assert dialog.start_button.isHidden()  # loaded already: nothing left to press but Close
    assert dialog.detail_label.text() == "Everything is done; Q4_K_M is loaded."
    # The recommendation says why, now with the measured quality.
    text = dialog.recommendation_text()
    assert text.startswith("Recommended: Q4_K_M (")
    assert "the largest, so least lossy, level that fits fully on the GPU (measured: " in text
    assert "% same top token as BF16, KLD " in text
    screenshot(dialog, artifacts, "get_fathom_done")

    manifest = json.loads((plan.models_dir / "manifest.json").read_text())
    files = {entry["file"]: entry for entry in manifest["files"]}
    assert set(files) == {plan.bf16.name, level.name}
    assert files[level.name]["imatrix"]["file"] == plan.imatrix.name
    [evaluation] = manifest["evaluations"]
    assert evaluation["file"] == level.name and evaluation["setup"]["chunks"] == 2
    state = read_state(plan)
    assert state.done == [s.value for s in STEPS] and state.measured is not None
    assert next_step(plan, state) is None
    assert leftovers(plan.models_dir) == []
    assert (plan.checkpoint_dir / SOURCE_MARKER).is_file()
    # Only the needed files were fetched from the Hub.
    assert sorted(hub.downloads()) == sorted(tiny_files())

    # Opened again, everything is done and one click loads the level.
    dialog.close()
    again = open_dialog(qtbot, plan)
    assert again.start_button.text() == "Load Q4_K_M"
    assert again.detail_label.text() == "Everything is done."
    again.start_button.click()
    assert again.start_button.isHidden()
    assert again.detail_label.text() == "Everything is done; Q4_K_M is loaded."


# -- resuming -------------------------------------------------------------------------------------


def test_after_a_restart_the_flow_continues_at_the_first_unfinished_step(
    qtbot, plan: SetupPlan, artifacts: Path
) -> None:
    converted(plan)  # the last run ended (was killed) after the conversion
    dialog = open_dialog(qtbot, plan)
    assert [dialog.step_mark(step) for step in STEPS] == ["done", "done", "todo", "todo", "todo"]
    assert dialog.start_button.text() == "Continue"
    assert dialog.detail_label.text() == "Continues with: make the importance matrix."
    assert dialog.step_labels[Step.QUANTIZE].text() == "Make Q4_K_M"
    screenshot(dialog, artifacts, "get_fathom_continue")
    started: list[Step] = []
    dialog.step_started.connect(started.append)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: bool(started), timeout=STEP_MS)
    assert started == [Step.IMATRIX]  # neither the download nor the conversion again
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.running(), timeout=STEP_MS)
    assert dialog.error_text() == CANCELLED


def test_a_step_counts_as_done_only_while_its_output_is_there(plan: SetupPlan) -> None:
    state = converted(plan)
    assert next_step(plan, state) is Step.IMATRIX
    shutil.rmtree(plan.checkpoint_dir)  # deleted once converted, to save 30 GB: no matter
    assert next_step(plan, state) is Step.IMATRIX
    plan.bf16.unlink()  # the user deleted the BF16 file too
    assert next_step(plan, state) is Step.DOWNLOAD
    # A level that needs no imatrix skips that step.
    state = converted(plan)
    state.level = "Q8_0"
    assert next_step(plan, state) is Step.QUANTIZE


def test_a_damaged_state_file_means_starting_over_not_a_crash(plan: SetupPlan) -> None:
    plan.models_dir.mkdir(parents=True, exist_ok=True)
    plan.state_file.write_text("{ not json")
    assert read_state(plan) == SetupState()
    assert next_step(plan, read_state(plan)) is Step.DOWNLOAD


def test_the_manifest_of_a_command_line_conversion_counts(plan: SetupPlan) -> None:
    from convert.gguf_convert import convert_checkpoint
    from convert.manifest import describe_file, update_manifest

    downloaded(plan)
    plan.state_file.unlink()  # no record from this flow at all
    convert_checkpoint(plan.checkpoint_dir, plan.bf16, "bf16")
    update_manifest(
        plan.models_dir, [describe_file(plan.bf16, "BF16", source_repo=None, source_revision=None)]
    )
    state = SetupState(done=["download"], level="Q4_K_M")
    assert next_step(plan, state) is Step.IMATRIX


# -- cancelling -----------------------------------------------------------------------------------


def outputs(plan: SetupPlan, step: Step) -> list[Path]:
    return {
        Step.CONVERT: [plan.bf16],
        Step.IMATRIX: [plan.imatrix],
        Step.QUANTIZE: [plan.level_file("Q4_K_M")],
        Step.MEASURE: [],
    }[step]


@pytest.mark.slow
@pytest.mark.parametrize("step", [Step.CONVERT, Step.IMATRIX, Step.QUANTIZE, Step.MEASURE])
def test_cancel_at_each_step_keeps_the_finished_ones_and_nothing_half_made(
    qtbot, plan: SetupPlan, step: Step
) -> None:
    PREPARE[step](plan)
    before = read_state(plan)
    manifest = plan.models_dir / "manifest.json"
    manifest_before = manifest.read_text() if manifest.exists() else None
    dialog = open_dialog(qtbot, plan)
    # Cancel as soon as the step starts, while its child process is starting or working.
    dialog.step_started.connect(lambda started: dialog.cancel())
    dialog.start_button.click()
    qtbot.waitUntil(lambda: not dialog.running(), timeout=STEP_MS)
    assert dialog.error_text() == CANCELLED
    assert dialog.start_button.text() == "Continue" and dialog.start_button.isVisible()
    after = read_state(plan)
    assert after.done == before.done and next_step(plan, after) is step
    assert [p for p in outputs(plan, step) if p.exists()] == []
    assert leftovers(plan.models_dir) == []
    if manifest_before is not None:
        assert manifest.read_text() == manifest_before  # no measurement was recorded


@pytest.mark.slow
def test_cancel_stops_a_download_and_keeps_what_was_finished(
    qtbot, plan: SetupPlan, hub: FakeHub
) -> None:
    for name in hub.files:
        if name.endswith(".safetensors"):
            hub.faults[name] = "slow"  # about 13 s for the demo's 2 MB
    dialog = open_dialog(qtbot, plan)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: "Downloading" in dialog.detail_label.text(), timeout=STEP_MS)
    # The small files come first; cancel while the weights are on their way.
    qtbot.waitUntil(lambda: (plan.checkpoint_dir / "config.json").is_file(), timeout=STEP_MS)
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.running(), timeout=STEP_MS)
    assert dialog.error_text() == CANCELLED
    state = read_state(plan)
    assert state.done == [] and next_step(plan, state) is Step.DOWNLOAD
    assert not (plan.checkpoint_dir / SOURCE_MARKER).exists()  # not finished-looking
    assert not (plan.checkpoint_dir / "model.safetensors").exists()
    partial = plan.checkpoint_dir / ".cache" / "huggingface" / "download"
    assert not list(partial.rglob("*.incomplete")) if partial.is_dir() else True
    assert (plan.checkpoint_dir / "config.json").is_file()  # finished files stay for next time


# -- refusals -------------------------------------------------------------------------------------


def test_no_room_for_the_bf16_is_refused_in_one_line_before_it_starts(
    qtbot, plan: SetupPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    import convert.atomic

    downloaded(plan)
    usage = shutil.disk_usage(paths.data_dir())
    monkeypatch.setattr(convert.atomic.shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))
    dialog = open_dialog(qtbot, plan)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: not dialog.running(), timeout=STEP_MS)
    error = dialog.error_text()
    assert error.startswith(f"Not enough disk space for {plan.bf16.name}: needs ")
    assert "\n" not in error
    assert dialog.step_mark(Step.CONVERT) == "failed"
    assert not plan.bf16.exists() and leftovers(plan.models_dir) == []


# -- the ways in ----------------------------------------------------------------------------------


def _flow_dialog(window) -> GetFathomDialog:
    found = [d for d in window.findChildren(GetFathomDialog) if d.isVisible()]
    assert len(found) == 1
    return found[0]


def test_file_menu_welcome_view_and_settings_open_the_flow(make_window, qtbot) -> None:
    from PySide6.QtWidgets import QApplication

    from fathom_desktop.gui.settings_dialog import SettingsDialog

    window = make_window()
    [file_menu] = [a.menu() for a in window.menuBar().actions() if a.text() == "&File"]
    [action] = [a for a in file_menu.actions() if a.text() == "&Get Fathom-R1-14B…"]
    action.trigger()
    dialog = _flow_dialog(window)
    assert dialog.windowTitle() == "Get Fathom-R1-14B"
    action.trigger()  # a second time: the same dialog, raised
    assert _flow_dialog(window) is dialog
    dialog.close()

    window.chat.welcome.get_fathom_button.click()
    _flow_dialog(window).close()

    window.open_settings()
    settings = window.findChild(SettingsDialog)
    assert settings is not None
    settings.get_fathom_button.click()
    flow = _flow_dialog(window)
    assert flow.isVisible() and not settings.isVisible()  # nothing modal left in its way
    assert QApplication.activeModalWidget() is None


# -- the window process ---------------------------------------------------------------------------

_FLOW_IN_A_WINDOW = r"""
import json, sys, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
from fathom_desktop.gui.get_fathom import GetFathomDialog
from fathom_desktop.model_setup import SetupPlan

plan = SetupPlan.from_json(json.loads(sys.argv[1]))
dialog = GetFathomDialog(plan=plan)
dialog.show()
ready = []
dialog.model_ready.connect(ready.append)
end = time.monotonic() + 240
while not dialog.start_button.isEnabled():
    app.processEvents(); time.sleep(0.01)
dialog.start()
while dialog.running() and time.monotonic() < end:
    app.processEvents(); time.sleep(0.01)
app.processEvents()
print(json.dumps({"llama_cpp": any(m.startswith("llama_cpp") for m in sys.modules),
                  "error": dialog.error_text(), "ready": [str(p) for p in ready]}))
"""


@pytest.mark.slow
def test_the_window_process_never_loads_llama_cpp(plan: SetupPlan) -> None:
    import os
    import subprocess
    import sys

    downloaded(plan)
    done = subprocess.run(
        [sys.executable, "-c", _FLOW_IN_A_WINDOW, json.dumps(plan.to_json())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] == ""
    assert result["ready"] == [str(plan.level_file("Q4_K_M"))]  # imatrix, quantized, measured
    assert result["llama_cpp"] is False


_STEP_THEN_KILLED = r"""
import json, multiprocessing, sys, threading
from fathom_desktop.model_setup import SetupPlan, Step
from fathom_desktop.setup_steps import run_step

plan = SetupPlan.from_json(json.loads(sys.argv[1]))
said = []

def report(title, done, total, message):
    if done and not said:  # the child is computing: tell the test who it is
        said.append(1)
        print(json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)

run_step(plan, Step.IMATRIX, "Q4_K_M", report, threading.Event())
print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_step_whose_window_was_killed_stops_and_leaves_nothing(plan: SetupPlan) -> None:
    """The app killed mid-step (a crash, a power-off of the session): the step's child notices,
    stops, and removes its partial output; the next start does the step again."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys
    import time

    converted(plan)
    whole = dataclasses.replace(plan, imatrix_chunks=None)  # the whole calibration text: seconds
    window = subprocess.Popen(
        [sys.executable, "-c", _STEP_THEN_KILLED, json.dumps(whole.to_json())],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert window.stdout is not None
    line = window.stdout.readline()
    assert line.startswith("["), line
    [child] = json.loads(line)
    window.send_signal(signal.SIGKILL)
    window.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, os.WNOHANG)
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the step's child outlived its window by a minute")
    assert not plan.imatrix.exists()
    assert leftovers(plan.models_dir) == []
    assert next_step(plan, read_state(plan)) is Step.IMATRIX


def test_closing_mid_step_hides_at_once_and_cancels_the_step(qtbot, plan: SetupPlan) -> None:
    converted(plan)
    dialog = open_dialog(qtbot, plan)
    closed_while_running: list[bool] = []

    def close_now(step: Step) -> None:
        dialog.reject()
        closed_while_running.append(dialog.running() and not dialog.isVisible())

    dialog.step_started.connect(close_now)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: bool(closed_while_running), timeout=STEP_MS)
    assert closed_while_running == [True]  # the window did not wait for the child
    qtbot.waitUntil(lambda: not dialog.running(), timeout=STEP_MS)
    assert dialog.result() == GetFathomDialog.DialogCode.Rejected
    assert not plan.imatrix.exists() and leftovers(plan.models_dir) == []
    assert next_step(plan, read_state(plan)) is Step.IMATRIX


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (None, None),  # on the CPU: whatever fits this machine's memory, but always a level
        (GpuInfo("Fake RTX 4090", 24 * 2**30, int(23.5 * 2**30)), "fits fully on the GPU"),
        (GpuInfo("Fake RTX 3050", 6 * 2**30, int(5.6 * 2**30)), None),
    ],
)
def test_every_ladder_level_is_weighed_for_fathom(
    plan: SetupPlan, gpu: GpuInfo | None, expected: str | None
) -> None:
    """The whole ladder, the imatrix-only levels included, on Fathom-R1-14B's own config."""
    import dataclasses

    from convert.quantize import LADDER
    from fathom_desktop.engine.types import FATHOM_N_CTX
    from fathom_desktop.model_setup import choose_level

    config = Path(__file__).resolve().parents[1] / "fixtures" / "fathom-r1-14b" / "config.json"
    plan.checkpoint_dir.mkdir(parents=True)
    shutil.copy(config, plan.checkpoint_dir / "config.json")
    full = dataclasses.replace(plan, candidates=tuple(q.name for q in LADDER))
    chosen = choose_level(full, gpu, FATHOM_N_CTX)
    assert chosen.level.name in full.candidates
    assert "\n" not in chosen.reason and chosen.reason.startswith(chosen.level.name)
    if expected is not None:
        assert expected in chosen.reason


def test_a_level_without_imatrix_skips_that_step_and_continues_past_it(
    qtbot, plan: SetupPlan
) -> None:
    from convert.quantize import quantize

    state = converted(plan)
    state.level = "Q8_0"
    quantize(plan.bf16, plan.level_file("Q8_0"), "Q8_0")
    state.mark_done(Step.QUANTIZE)
    write_state(plan, state)
    dialog = open_dialog(qtbot, plan)
    marks = [dialog.step_mark(step) for step in (*STEPS, None)]
    assert marks == ["done", "done", "skip", "done", "todo", "todo"]
    assert dialog.step_labels[Step.IMATRIX].text().endswith("(not needed for Q8_0)")
    assert dialog.detail_label.text() == "Continues with: measure Q8_0's quality against BF16."


def test_progress_reads_in_bytes_or_tokens_with_the_time_left(
    qtbot, plan: SetupPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    from types import SimpleNamespace

    from fathom_desktop.gui import get_fathom

    dialog = open_dialog(qtbot, plan)
    dialog._run = SimpleNamespace(cancel=threading.Event())  # type: ignore[assignment]
    clock = [100.0]
    monkeypatch.setattr(get_fathom.time, "monotonic", lambda: clock[0])
    dialog._current = Step.CONVERT
    dialog._on_progress("convert", 0, 30 * 2**30, "")
    clock[0] += 60
    dialog._on_progress("convert", 3 * 2**30, 30 * 2**30, "blk.4.attn_q.weight")
    assert dialog.detail_label.text() == (
        "convert: 3.0 GiB of 30.0 GiB  blk.4.attn_q.weight  about 9 min left"
    )
    assert dialog.progress_bar.value() == 100  # permille
    dialog._current = Step.MEASURE
    dialog._on_progress("reference", 4_080, 16_320, "")
    assert dialog.detail_label.text() == "reference: 4,080 of 16,320 tokens"
    dialog._run = None


@pytest.mark.slow
def test_a_level_chosen_before_keeps_its_reason_and_gains_the_measured_figures(
    qtbot, plan: SetupPlan
) -> None:
    """The level was chosen on another run (another GPU, say); measured now, the line keeps the
    reason it was chosen for and adds what the measurement found."""
    import dataclasses

    quantized(plan)  # Q4_K_M, chosen with the reason "Q4_K_M: test"
    now = dataclasses.replace(plan, candidates=("Q8_0",))  # this computer would choose Q8_0
    dialog = open_dialog(qtbot, now)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: not dialog.running(), timeout=STEP_MS)
    assert dialog.error_text() == ""
    text = dialog.recommendation_text()
    assert text.startswith("Recommended: Q4_K_M: test Measured: ")
    assert text.endswith(".") and "% same top token as BF16, KLD " in text
    assert read_state(now).reason == text.removeprefix("Recommended: ")


@pytest.mark.slow
def test_a_step_killed_mid_write_leaves_no_partial_file(
    plan: SetupPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel with no time to unwind: the child is killed while it writes the BF16 (128 MB, so
    that it is still writing), and no hidden partial file is left."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from convert.atomic import partial_path
    from convert.errors import ConversionError
    from fathom_desktop import setup_steps
    from fathom_desktop.model_setup import StepCancelled
    from tests.synthetic import Qwen2Shape, TokenizerKind, build_checkpoint

    shape = Qwen2Shape(n_layers=4, hidden_size=1024, intermediate_size=4096, vocab_size=1024)
    build_checkpoint(plan.checkpoint_dir, shape=shape, tokenizer=TokenizerKind.DEMO)
    monkeypatch.setattr(setup_steps, "CANCEL_GRACE_S", 0.0)  # killed at once

    def attempt() -> bool:
        """Freeze the child as soon as its hidden partial file appears, then cancel; True when
        it was caught mid-write (a fast machine may write the whole file between two looks)."""
        cancel = threading.Event()
        caught: list[bool] = []

        def watch() -> None:
            while not cancel.is_set():
                if partial_path(plan.bf16).exists():
                    for child in multiprocessing.active_children():
                        os.kill(child.pid, signal.SIGSTOP)  # what the kill meets stays as seen
                    caught.append(partial_path(plan.bf16).exists())
                    cancel.set()
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stopped = False
        try:
            setup_steps.run_step(plan, Step.CONVERT, None, lambda *_: None, cancel)
        except (StepCancelled, ConversionError):
            stopped = True
        cancel.set()
        watcher.join()
        if caught == [True]:
            assert stopped  # the step says it did not finish
            return True
        plan.bf16.unlink(missing_ok=True)  # it finished before it was seen writing: again
        return False

    assert any(attempt() for _ in range(3)), "the child was never caught while writing"
    assert not partial_path(plan.bf16).exists()
    assert not plan.bf16.exists()
    assert leftovers(plan.models_dir) == []
