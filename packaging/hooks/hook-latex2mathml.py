"""latex2mathml opens unimathsymbols.txt beside its own module file when it is imported."""

from __future__ import annotations

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("latex2mathml", includes=["unimathsymbols.txt"])
