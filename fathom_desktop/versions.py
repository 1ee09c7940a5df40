"""What this copy of Fathom Desktop is made of, for `--version`, the About dialog and bug reports.

The llama.cpp part goes through the engine (the only code that imports llama_cpp). Loading the
native library can fail in a broken install; that is reported in the text instead of raised,
because this is exactly what a user pastes into a bug report when something is wrong.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from enum import StrEnum

from fathom_desktop import __version__


class Backend(StrEnum):
    CPU = "CPU"
    CUDA = "CUDA"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Versions:
    app: str
    llama_cpp_python: str
    backend: Backend
    # llama.cpp's own summary of the CPU features and GPU devices it was built for.
    backend_details: str
    qt: str
    pyside: str
    python: str
    # True in the PyInstaller package, False when run from source.
    packaged: bool

    def one_line(self) -> str:
        llama = (
            f"llama.cpp {self.backend.value} backend (llama-cpp-python {self.llama_cpp_python})"
            if self.backend is not Backend.UNAVAILABLE
            else f"llama.cpp unavailable ({self.backend_details})"
        )
        build = "package" if self.packaged else "source"
        return (
            f"fathom-desktop {self.app}: {llama}, Qt {self.qt} (PySide6 {self.pyside}), "
            f"Python {self.python}, {build} on {platform.system()} {platform.machine()}"
        )


def _llama() -> tuple[str, Backend, str]:
    # Asked of a child process: the About dialog must not load llama.cpp into the window's.
    from fathom_desktop.engine.backend_probe import backend_facts

    facts = backend_facts()
    if facts.problem is not None:
        return "?", Backend.UNAVAILABLE, facts.problem
    # What the library was built for, not whether a GPU answered: a CUDA build on a machine
    # whose CUDA did not start is still the CUDA build (and its details say why it runs on CPU).
    backend = Backend.CUDA if facts.build.is_cuda else Backend.CPU
    return facts.version, backend, facts.system_info


def _qt() -> tuple[str, str]:
    import PySide6
    from PySide6.QtCore import qVersion

    return qVersion(), PySide6.__version__


def collect() -> Versions:
    llama_version, backend, details = _llama()
    qt, pyside = _qt()
    return Versions(
        app=__version__,
        llama_cpp_python=llama_version,
        backend=backend,
        backend_details=details,
        qt=qt,
        pyside=pyside,
        python=platform.python_version(),
        packaged=bool(getattr(sys, "frozen", False)),
    )
