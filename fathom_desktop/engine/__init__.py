"""The inference engine: the only package that imports llama_cpp.

`LlamaEngine` is imported lazily so that code needing only the typed API (`engine.types`) or the
pure helpers does not load llama.cpp's native library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fathom_desktop.engine.llama_engine import LlamaEngine

__all__ = ["LlamaEngine"]


def __getattr__(name: str) -> Any:
    if name == "LlamaEngine":
        from fathom_desktop.engine.llama_engine import LlamaEngine

        return LlamaEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
