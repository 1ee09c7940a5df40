"""Typed engine errors; each message is one readable line for the user."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: str(error) is a complete sentence fit to show a user."""


class ModelFileError(EngineError):
    """The file is not a usable Fathom/Qwen2 GGUF (truncated, wrong architecture, ...)."""


class ModelNotLoadedError(EngineError):
    pass


class ModelLoadError(EngineError):
    pass


class PromptTooLongError(EngineError):
    pass


class DecodeError(EngineError):
    pass


class SettingsError(EngineError):
    """Options llama.cpp cannot honour together (a quantized KV cache without flash attention)."""


class BackendUnavailableError(EngineError):
    """llama.cpp's native library does not load here (e.g. the CUDA build without a driver)."""
