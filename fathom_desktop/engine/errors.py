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


class EngineCrashedError(EngineError):
    """The process that ran llama.cpp died (a signal, a ggml abort, the OOM killer).

    str(error) is one line for the user: what happened and llama.cpp's last error line. The
    window offers Reload, and Reload with fewer GPU layers when `gpu_memory` is true.
    """

    def __init__(
        self,
        message: str,
        *,
        signal_name: str | None = None,
        exit_code: int | None = None,
        last_error: str | None = None,
        gpu_memory: bool = False,
        while_loading: bool = False,
    ) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.last_error = last_error
        self.gpu_memory = gpu_memory
        self.while_loading = while_loading
