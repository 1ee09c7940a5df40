"""Where Fathom Desktop keeps its files.

The per-user folders come from platformdirs (XDG on Linux, Application Support on macOS,
%LOCALAPPDATA% on Windows). Setting FATHOM_HOME puts everything under one folder instead, which
is how the tests and a portable install keep the user's real folders untouched.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import sys
import tempfile
from pathlib import Path

import platformdirs

APP_NAME = "FathomDesktop"
HOME_ENV_VAR = "FATHOM_HOME"

SETTINGS_FILE_NAME = "settings.json"
HISTORY_FILE_NAME = "history.sqlite3"
MODELS_DIR_NAME = "models"
# Written by the conversion pipeline beside the GGUFs it produces.
MANIFEST_FILE_NAME = "manifest.json"


def _home_override() -> Path | None:
    value = os.environ.get(HOME_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _ensure(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def data_dir() -> Path:
    """History and models live here; created on first use."""
    home = _home_override()
    if home is not None:
        return _ensure(home / "data")
    return _ensure(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)))


def config_dir() -> Path:
    """The settings file lives here; created on first use."""
    home = _home_override()
    if home is not None:
        return _ensure(home / "config")
    return _ensure(Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)))


def models_dir() -> Path:
    return _ensure(data_dir() / MODELS_DIR_NAME)


def history_db() -> Path:
    return data_dir() / HISTORY_FILE_NAME


def settings_file() -> Path:
    return config_dir() / SETTINGS_FILE_NAME


def resources_dir() -> Path:
    """Icons, stylesheets and other read-only files shipped with the app."""
    # A PyInstaller bundle unpacks its data beside the frozen interpreter, not beside this file.
    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        return Path(bundle) / "resources"
    # Installed (wheel or editable), resources/ is the package fathom_desktop.resources (setup.py).
    return Path(str(importlib.resources.files("fathom_desktop.resources")))


def write_text_atomically(path: Path, text: str) -> None:
    """Write a file so that a crash mid-write leaves the previous version, never half of each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
