"""`fathom-desktop`: start the chat window.

fathom-desktop                      # the model from Settings, or the first-run dialog
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

EXIT_USAGE = 2
EXIT_FAILURE = 1


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


def _real_engine():
    from fathom_desktop.engine import LlamaEngine  # the only road to llama_cpp

    return LlamaEngine()


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from fathom_desktop import paths
    from fathom_desktop.gui.fake_engine import FakeEngine
    from fathom_desktop.gui.main_window import MainWindow
    from fathom_desktop.history import History, HistoryError
    from fathom_desktop.settings import SettingsStore

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Fathom Desktop")
    icon = paths.resources_dir() / "icons" / "fathom-desktop.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))

    store = SettingsStore.load()
    try:
        history = History()
    except HistoryError as error:
        print(f"fathom-desktop: {error}", file=sys.stderr)
        return EXIT_FAILURE
    _apply_theme(str(store.get("theme")))

    engine_factory = (lambda: FakeEngine(tokens_per_s=60.0)) if args.fake_engine else _real_engine
    window = MainWindow(engine_factory, store, history)
    for warning in store.warnings:
        window.show_banner(warning)
    window.show()

    start_model(window, store, args.model, fake_engine=args.fake_engine)
    code = app.exec()
    window.shutdown()
    history.close()
    return code


def _apply_theme(theme: str) -> None:
    try:
        from fathom_desktop.gui.settings_dialog import apply_theme
    except ImportError:
        return
    apply_theme(theme)


def start_model(window, store, model: Path | None, *, fake_engine: bool = False):
    """Load the model to use; with none configured, open the first-run dialog (returned)."""
    from fathom_desktop.engine.types import LoadOptions
    from fathom_desktop.gui.fake_engine import DEMO_MODEL_PATH
    from fathom_desktop.settings import SettingsValueError

    if model is not None:
        try:
            store.set("model_path", str(model.resolve()))
        except SettingsValueError as error:
            window.show_banner(error.reason)
        window.load_model()
    elif store.get("model_path"):
        window.load_model()
    elif fake_engine:
        window.load_model(LoadOptions(model_path=DEMO_MODEL_PATH))
    else:
        return _first_run(window, store)
    return None


def _first_run(window, store):
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

    dialog.accepted.connect(chosen)
    dialog.rejected.connect(
        lambda: window.show_banner("No model is chosen yet. Choose a GGUF file in File › Settings.")
    )
    dialog.open()
    return dialog


if __name__ == "__main__":
    sys.exit(main())
