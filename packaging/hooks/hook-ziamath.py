"""ziamath (formula layout in fathom_desktop.render.math) reads its STIX Two Math font with
importlib.resources from the `ziamath.fonts` package, which nothing imports by name."""

from __future__ import annotations

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("ziamath", excludes=["**/*.py", "**/py.typed"])
hiddenimports = ["ziamath.fonts"]
