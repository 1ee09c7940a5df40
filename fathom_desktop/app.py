"""`fathom-desktop`: start the chat window.

fathom-desktop                      # the model from Settings, else the embedded demo model
fathom-desktop --model FILE.gguf    # this model for this run (Settings are not changed)
fathom-desktop --fake-engine        # a scripted stand-in model, for demos without weights
fathom-desktop --self-test          # a headless check of this copy: one line and an exit status
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Slot

from fathom_desktop.single_instance import (
    InstanceLockError,
    ask_first_instance_to_raise,
    data_folder,
    hold_instance_lock,
    server_name,
)

EXIT_USAGE = 2
EXIT_FAILURE = 1

PREPARING_DEMO = "Preparing the demo model…"
NO_BACKEND = "llama.cpp unavailable"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fathom-desktop", description="Chat with Fathom-R1-14B on this computer, offline."
    )
    parser.add_argument("--model", type=Path, metavar="FILE.gguf", help="GGUF model file to load")
    parser.add_argument(
        "--fake-engine",
        action="store_true",
        help="use a scripted stand-in instead of llama.cpp (demos, screenshots)",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check this copy without a display (the demo model, or --model) and exit",
    )
    parser.add_argument(
        "--version",
        action="store_true",
        help="show the versions of the app, its llama.cpp backend and Qt, then exit",
    )
    return parser


def _engine_host():
    """The engine the window uses: llama.cpp in a child process, so that a crash in it (a CUDA
    error, GPU memory running out mid-reply, a bad kernel) ends that process and not the window
    with the user's conversation on screen. The child starts in the background right away."""
    from fathom_desktop.engine.process_engine import SIDE_BY_SIDE_FACTORY, ProcessEngine

    return ProcessEngine(SIDE_BY_SIDE_FACTORY)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.model is not None and not args.model.is_file():
        print(f"fathom-desktop: {args.model} is not a file.", file=sys.stderr)
        return EXIT_USAGE
    if args.version:
        from fathom_desktop.versions import collect

        print(collect().one_line())
        return 0
    if args.self_test:
        from fathom_desktop.selftest import run_self_test

        return run_self_test(args.model)
    # One app per user: two windows on one history would each take the other's streaming reply
    # for one left over from a crash and mark it interrupted.
    try:
        lock = hold_instance_lock()
    except InstanceLockError as error:
        print(_second_start(error), file=sys.stderr)
        return EXIT_FAILURE
    try:
        return _run_app(args)
    finally:
        lock.unlock()


def _run_app(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from fathom_desktop import paths
    from fathom_desktop.engine.scripted import FakeEngine
    from fathom_desktop.gui.main_window import MainWindow
    from fathom_desktop.history import History, HistoryError
    from fathom_desktop.settings import SettingsStore
    from fathom_desktop.single_instance import InstanceServer, bring_to_front

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Fathom Desktop")
    icon = paths.resources_dir() / "icons" / "fathom-desktop.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    # Listening as early as possible: a second start waits for the answer while this one starts.
    server = InstanceServer(server_name(paths.data_dir()), app)

    store = SettingsStore.load()
    try:
        history = History()  # a damaged, read-only or locked file still opens; see `notice`
    except HistoryError as error:
        print(f"fathom-desktop: {error}", file=sys.stderr)
        return EXIT_FAILURE
    _apply_theme(str(store.get("theme")))

    if args.fake_engine:
        engine_factory = lambda: FakeEngine(tokens_per_s=60.0)  # noqa: E731
    else:
        # Started now, so the child's start-up overlaps the window's; every load reuses it (after
        # a crash or a close, its next load starts a fresh child).
        engine = _engine_host()
        engine_factory = lambda: engine  # noqa: E731
    window = MainWindow(engine_factory, store, history)
    for warning in store.warnings:
        window.show_banner(warning)
    announce_history(window, history)
    server.raise_requested.connect(lambda: bring_to_front(window))
    window.show()

    started = start_model(window, store, args.model, fake_engine=args.fake_engine)
    code = app.exec()
    server.close()
    if isinstance(started, DemoStart):
        started.stop()  # the window may close while the demo is still being made
    window.shutdown()
    history.close()
    if history.unsaved_at_close:
        count = history.unsaved_at_close
        kept = (
            f"kept in {history.unsaved_file} and saved at the next start"
            if history.unsaved_file
            else "lost"
        )
        print(
            f"fathom-desktop: {count} change{'' if count == 1 else 's'} could not be saved in"
            f" {history.path} (it stayed locked or read-only): {kept}.",
            file=sys.stderr,
        )
    return code


def _second_start(error: InstanceLockError) -> str:
    """One line for a start refused by the lock; the running window is asked to come forward."""
    if not error.held:
        return str(error)
    try:
        raised = ask_first_instance_to_raise(server_name(data_folder()))
    except InstanceLockError:
        raised = False
    if raised:
        return f"{error.args[0].rstrip('.')}; its window was brought to the front."
    return str(error)


def announce_history(window, history) -> None:
    """Say in the window's banner how the history opened (moved aside, read-only, scratch),
    when saving stalls (nothing is lost) and when it resumes."""
    from fathom_desktop.gui.banner import BannerKind
    from fathom_desktop.gui.history_reports import HistoryReports
    from fathom_desktop.history import WriteReport, WriteStatus

    if history.notice:
        window.show_banner(history.notice)
    reports = HistoryReports(history, window)

    def show(report: WriteReport) -> None:
        kind = BannerKind.NOTE if report.status is WriteStatus.SAVED else BannerKind.PROBLEM
        window.show_banner(report.message, kind)

    reports.report.connect(show)  # emitted on the GUI thread


def _apply_theme(theme: str) -> None:
    try:
        from fathom_desktop.gui.settings_dialog import apply_theme
    except ImportError:
        return
    apply_theme(theme)


def start_model(window, store, model: Path | None, *, fake_engine: bool = False):
    """Load the model to use: --model, else Settings' server or model, else the best level that
    fits of a model converted into the models folder, else the embedded demo model.

    Returns the DemoStart when it looks for a model in the folder (its `dialog` is the first-run
    dialog should the demo be needed and unavailable), else None.
    """
    from fathom_desktop.engine.scripted import DEMO_MODEL_PATH
    from fathom_desktop.engine.types import LoadOptions
    from fathom_desktop.settings import SettingsValueError

    if model is None and store.get("model_source") == "server":
        window.load_model()  # the server in Settings; --model still means a local file
        return None
    if model is not None:
        try:
            store.set("model_path", str(model.resolve()))
        except SettingsValueError as error:
            window.show_banner(error.reason)
        window.load_model()
    elif store.get("model_path") and not _names_a_demo_level(store.get("model_path")):
        window.load_model()
    elif fake_engine:
        window.load_model(LoadOptions(model_path=DEMO_MODEL_PATH))
    else:
        demo = DemoStart(window, store)
        demo.start()
        return demo
    return None


def _names_a_demo_level(model_path: object) -> bool:
    """A demo level chosen in Settings is looked for off the GUI thread: an app update with a
    retrained demo removes the old files, and then the new demo starts in their place."""
    from convert.quantize import basename_of
    from fathom_desktop.model_ladder import is_demo_basename

    return is_demo_basename(basename_of(Path(str(model_path))))


def require_llama() -> None:
    """Raise BackendUnavailableError, with the reason and the fix, when llama.cpp's library does
    not load here. Asked of a child process (the window's process never loads llama.cpp), off
    the GUI thread."""
    from fathom_desktop.engine.backend_probe import backend_facts
    from fathom_desktop.engine.errors import BackendUnavailableError

    problem = backend_facts().problem
    if problem is not None:
        raise BackendUnavailableError(problem)


def demo_load_options(store, model: Path):
    """The user's load settings (context, GPU layers, …) applied to the demo model.

    The demo's path is not written to the model_path setting: that setting means "a model you
    chose", and the demo's file name carries a fingerprint of the shipped checkpoint, so a saved
    path would go stale (and be deleted) at the next app update with a retrained demo.
    """
    from fathom_desktop.settings import SettingsStore

    scratch = SettingsStore()  # in memory; never saved
    scratch.update({**store.as_dict(), "model_path": str(model)})
    return scratch.load_options()


class DemoStart(QObject):
    """Finds the model to start on off the GUI thread, then loads it in the window.

    A model converted into the models folder starts on its best level that fits
    (start_level.py), with the reason in the banner. Otherwise the embedded demo: the first run
    converts the shipped checkpoint to BF16 and Q8_0 GGUFs in the models folder (a second or
    so), and once it is loaded the rest of its ladder is made and measured in the background
    (a few seconds, a child process), so the settings dialog shows real measurements. Should the
    demo be unavailable, the first-run dialog opens, with the reason in the window's banner.
    """

    def __init__(self, window, store) -> None:
        super().__init__(window)  # lives (and its slots run) in the GUI thread, as long as window
        self._window = window
        self._store = store
        self._job = None
        self.dialog = None  # the first-run dialog, once the demo turned out to be unavailable
        # Set in the job's thread before it fails, read in the GUI thread after: no model can
        # run at all, so the first-run dialog (convert, download) would only mislead.
        self._no_backend = False
        self._reason: str | None = None  # why a converted model's level was chosen
        self._demo_ladder = None  # the LevelWork left of the demo's ladder, once known
        self.ladder_key: str | None = None  # its job in ladder_jobs(), once started

    def start(self) -> None:
        from fathom_desktop.gui.first_run_steps import Job

        self._job = job = Job(lambda progress, _cancel: self._make_demo(progress))
        # Queued: the job's signals are emitted on its own thread and the slots touch widgets.
        queued = Qt.ConnectionType.QueuedConnection
        job.progress.connect(self._on_progress, queued)
        job.succeeded.connect(self._on_ready, queued)
        job.failed.connect(self._on_unavailable, queued)
        job.cancelled.connect(self._on_cancelled, queued)
        # On permanent status-bar widgets: a status message would hide the busy bar.
        self._window.busy.setVisible(True)
        self._window.model_label.setText(PREPARING_DEMO)
        job.start()

    def _make_demo(self, progress) -> Path:
        from fathom_desktop import demo
        from fathom_desktop.engine.errors import BackendUnavailableError

        try:
            require_llama()
        except BackendUnavailableError:
            self._no_backend = True
            raise
        try:
            chosen = self._converted_model()
        except Exception as error:  # noqa: BLE001 - an unreadable folder must not cost the demo
            logging.getLogger(__name__).warning("no converted model to start on: %s", error)
            chosen = None
        if chosen is not None:
            return chosen
        stored = self._store.get("model_path")
        # Looked up when the job runs, so that tests can stand in for the conversion.
        model = demo.ensure_demo_model(progress)
        if stored and Path(str(stored)).is_file():
            model = Path(str(stored))  # a level of the demo chosen in Settings
        try:
            self._demo_ladder = demo.demo_ladder_work(model.parent)
        except Exception as error:  # noqa: BLE001 - the demo itself is ready; only numbers miss
            logging.getLogger(__name__).warning("the demo's ladder: %s", error)
        return model

    def _converted_model(self) -> Path | None:
        """The best level that fits of a model converted into the models folder, if any."""
        from fathom_desktop import paths
        from fathom_desktop.engine.planner import available_host_bytes
        from fathom_desktop.gui.model_list import probe_gpu
        from fathom_desktop.start_level import choose_start_level, converted_groups

        if self._store.get("model_path") or not converted_groups(paths.models_dir()):
            return None
        found = choose_start_level(
            paths.models_dir(),
            probe_gpu(),
            n_ctx=int(self._store.get("n_ctx")),
            kv_cache_type=str(self._store.get("kv_cache_type")),
            flash_attn=self._store.get("flash_attn") is not False,
            host_bytes=available_host_bytes(),
        )
        if found is None:
            return None
        group, choice = found
        self._reason = f"Started on {group.title} {choice.reason}"
        return choice.path

    def running(self) -> bool:
        return self._job is not None

    def stop(self) -> None:
        """Cancel and wait; a half-made GGUF is removed, never left looking finished."""
        if self._job is not None:
            self._job.stop_and_wait()
            self._job = None

    def _finish(self) -> None:
        if self._job is not None:
            self._job.thread.wait()
            self._job = None

    def _superseded(self) -> bool:
        """True when the window closed, or the user loaded a model of their own meanwhile."""
        from fathom_desktop.gui.session_types import SessionState

        session = self._window.session
        if session.closed:
            return True
        stored = self._store.get("model_path")
        chosen = bool(stored) and not _names_a_demo_level(stored)
        return chosen or session.state is not SessionState.NO_MODEL

    @Slot(str, int, int, str)
    def _on_progress(self, step: str, done: int, total: int, _message: str) -> None:
        detail = f"{step}, {100 * min(done, total) // total}%" if total > 0 else step
        self._window.model_label.setText(f"{PREPARING_DEMO} ({detail})")

    @Slot(object)
    def _on_ready(self, model: object) -> None:
        self._finish()
        if self._demo_ladder is not None and not self._window.session.closed:
            from fathom_desktop.gui.ladder_jobs import ladder_jobs

            self.ladder_key = f"demo-ladder:{self._demo_ladder.out_dir}"
            ladder_jobs().start(self.ladder_key, self._demo_ladder)
        if self._superseded():
            return
        if self._reason:
            from fathom_desktop.gui.banner import BannerKind

            self._window.show_banner(self._reason, BannerKind.NOTE)
        self._window.load_model(demo_load_options(self._store, Path(str(model))))

    @Slot(str)
    def _on_unavailable(self, reason: str) -> None:
        self._finish()
        window = self._window
        window.busy.setVisible(False)
        window.model_label.setText(NO_BACKEND if self._no_backend else "No model")
        if self._superseded():
            return
        if self._no_backend:
            window.show_banner(reason)
            return
        why = f"The demo model is unavailable: {reason}"
        window.show_banner(why)
        self.dialog = _first_run(window, self._store, why)

    @Slot(str)
    def _on_cancelled(self, _reason: str) -> None:
        self._finish()


def _first_run(window, store, why: str | None = None):
    from fathom_desktop.gui.first_run import FirstRunDialog

    dialog = FirstRunDialog(window)

    def chosen() -> None:
        path = dialog.chosen_path
        if path is None:
            return
        store.set("model_path", str(path))
        try:
            store.save()
        except OSError as error:  # SettingsSaveError: the model is still used for this run
            window.show_banner(str(error))
        window.load_model()

    gave_up = "No model is chosen yet. Choose a GGUF file in File › Settings."
    dialog.accepted.connect(chosen)
    dialog.rejected.connect(lambda: window.show_banner(f"{why} {gave_up}" if why else gave_up))
    dialog.open()
    return dialog


if __name__ == "__main__":
    sys.exit(main())
