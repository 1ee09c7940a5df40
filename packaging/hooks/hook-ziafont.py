"""ziafont (used by ziamath) reads DejaVuSans.ttf from the `ziafont.fonts` package at import."""

from __future__ import annotations

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("ziafont", excludes=["**/*.py", "**/py.typed"])
hiddenimports = ["ziafont.fonts"]
