"""--version text, the About dialog, and the desktop entry and icons the package ships."""

from __future__ import annotations

import configparser
import shutil
import subprocess

from PySide6.QtGui import QGuiApplication, QImage

from fathom_desktop import __version__
from fathom_desktop.gui.about import AboutDialog, details_text
from fathom_desktop.versions import Backend, Versions, collect
from tests.conftest import PROJECT_ROOT

RESOURCES = PROJECT_ROOT / "resources"

CUDA_BUILD = Versions(
    app="1.2.3",
    llama_cpp_python="0.3.36",
    backend=Backend.CUDA,
    backend_details="CUDA : ARCHS = 900 | CPU : AVX2 = 1",
    qt="6.11.3",
    pyside="6.11.3",
    python="3.11.7",
    packaged=True,
)


def test_versions_from_source_name_this_checkout() -> None:
    versions = collect()
    assert versions.app == __version__
    # This environment's llama-cpp-python is the portable CPU build (scripts/bootstrap.sh).
    assert versions.backend is Backend.CPU
    assert versions.packaged is False
    line = versions.one_line()
    assert line.startswith(f"fathom-desktop {__version__}: llama.cpp CPU backend")
    assert f"Qt {versions.qt}" in line and ", source on " in line


def test_a_broken_llama_install_still_gives_a_version_line() -> None:
    broken = Versions(
        **{
            **CUDA_BUILD.__dict__,
            "backend": Backend.UNAVAILABLE,
            "backend_details": "Shared library with base name 'llama' not found",
        }
    )
    assert "llama.cpp unavailable (Shared library with base name 'llama' not found)" in (
        broken.one_line()
    )


def test_about_dialog_shows_versions_and_copies_them(qtbot) -> None:
    dialog = AboutDialog(versions=CUDA_BUILD)
    qtbot.addWidget(dialog)
    dialog.show()
    shown = dialog.details.text()
    for fact in ("1.2.3", "CUDA (llama-cpp-python 0.3.36)", "6.11.3 (PySide6 6.11.3)", "package"):
        assert fact in shown
    dialog.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert copied == details_text(CUDA_BUILD)
    assert "llama.cpp backend: CUDA (llama-cpp-python 0.3.36)" in copied.splitlines()
    assert "llama.cpp system info: CUDA : ARCHS = 900 | CPU : AVX2 = 1" in copied.splitlines()


def test_desktop_entry_names_the_launcher_and_icon() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive
    entry.read(RESOURCES / "fathom-desktop.desktop", encoding="utf-8")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    assert section["Name"] == "Fathom Desktop"
    assert section["Exec"] == section["TryExec"] == "fathom-desktop"
    assert section["Icon"] == "fathom-desktop"
    assert section["Terminal"] == "false"
    validator = shutil.which("desktop-file-validate")
    assert validator, "desktop-file-validate is missing: apt-get install desktop-file-utils"
    done = subprocess.run(
        [validator, str(RESOURCES / "fathom-desktop.desktop")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_icons_are_square_images_of_the_named_sizes(qapp) -> None:
    for size in (48, 256):
        image = QImage(str(RESOURCES / "icons" / f"fathom-desktop-{size}.png"))
        assert (image.width(), image.height()) == (size, size)
    svg = QImage(str(RESOURCES / "icons" / "fathom-desktop.svg"))
    assert not svg.isNull()
