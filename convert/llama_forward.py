"""Forward passes over text chunks with llama.cpp, for measuring and calibrating quantizations.

The chat engine decodes one token at a time; quality work instead evaluates whole chunks and
needs the logits of many positions at once, or the activations inside the graph. This module
drives llama-cpp-python's low-level API for that: one model, one context of one chunk's length,
and the logits of the positions asked for, handed out as a numpy view of llama.cpp's own buffer
(no copy: at Fathom's 152,064-token vocabulary a 256-position window is 155 MB).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.errors import ConversionError
from convert.llama_log import LevelTracker, LogLevel
from convert.quantize import capture_llama_log

# llama.cpp calls this between graph computations; True asks it to stop.
AbortCheck = Callable[[], bool]


@dataclass(frozen=True)
class ForwardSettings:
    """How every model of one measurement runs: the same for the reference and each level."""

    n_ctx: int = 512
    # None: every layer on the GPU when this llama.cpp can offload, else the CPU.
    n_gpu_layers: int | None = None
    n_threads: int | None = None

    def gpu_layers(self, llama_cpp) -> int:
        if self.n_gpu_layers is not None:
            return self.n_gpu_layers
        return 999 if llama_cpp.llama_supports_gpu_offload() else 0


class ForwardModel:
    """One GGUF loaded for chunked evaluation. Not thread-safe; close() frees it."""

    def __init__(
        self,
        path: Path,
        settings: ForwardSettings,
        *,
        cb_eval=None,
        cb_eval_user_data=None,
    ) -> None:
        import llama_cpp  # the converter's measuring layer is one of the two places that do

        self._llama = llama_cpp
        self.path = Path(path)
        self.settings = settings
        # llama.cpp's logger is process-wide: take it for this model's life and give the previous
        # one back at close (an engine in the same process keeps its own error capture).
        self._log = contextlib.ExitStack()
        self._log.enter_context(capture_llama_log(_keep_errors))
        try:
            self._open(llama_cpp, settings, cb_eval, cb_eval_user_data)
        except BaseException:
            self.close()
            raise

    def _open(self, llama_cpp, settings: ForwardSettings, cb_eval, cb_eval_user_data) -> None:
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = settings.gpu_layers(llama_cpp)
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self._model:
            raise ConversionError(f"llama.cpp could not load {self.path.name}: {_last_error()}.")
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = settings.n_ctx
        ctx_params.n_batch = settings.n_ctx
        ctx_params.n_ubatch = settings.n_ctx
        ctx_params.n_seq_max = 1
        threads = settings.n_threads or max(1, os.cpu_count() or 1)
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        if cb_eval is not None:
            ctx_params.cb_eval = cb_eval
            ctx_params.cb_eval_user_data = cb_eval_user_data
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            raise ConversionError(
                f"llama.cpp could not make a {settings.n_ctx}-token context for "
                f"{self.path.name}: {_last_error()}."
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.bos: int = llama_cpp.llama_vocab_bos(self._vocab)
        self.n_layer: int = llama_cpp.llama_model_n_layer(self._model)
        self._batch = llama_cpp.llama_batch_init(settings.n_ctx, 0, 1)
        self._abort_check: AbortCheck | None = None
        # Kept referenced for as long as llama.cpp may call it.
        self._abort_callback = llama_cpp.ggml_abort_callback(self._should_abort)
        llama_cpp.llama_set_abort_callback(self._ctx, self._abort_callback, None)

    # -- what the model is -----------------------------------------------------------------

    def token_text(self, token: int) -> bytes:
        return self._llama.llama_vocab_get_text(self._vocab, token) or b""

    def tokenize(self, text: str) -> list[int]:
        """The text as llama-perplexity tokenizes it: BOS first where the vocabulary adds one,
        special-token markup read as plain text."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        tokens = (self._llama.llama_token * capacity)()
        n = self._llama.llama_tokenize(
            self._vocab, data, len(data), tokens, capacity, self.add_bos, False
        )
        if n < 0:
            raise ConversionError(f"The text did not tokenize ({-n} tokens needed).")
        return list(tokens[:n])

    # -- running ---------------------------------------------------------------------------

    def chunk_logits(
        self, tokens: list[int], first_scored: int, abort: AbortCheck | None = None
    ) -> np.ndarray:
        """Evaluate one chunk from an empty cache; logits of positions first_scored.. (a view
        of llama.cpp's buffer, valid until the next call)."""
        n = len(tokens)
        if n > self.settings.n_ctx:
            raise ValueError(f"a chunk of {n} tokens exceeds the context of {self.settings.n_ctx}")
        llama = self._llama
        llama.llama_memory_clear(llama.llama_get_memory(self._ctx), True)
        batch = self._batch
        batch.n_tokens = n
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= first_scored
        self._abort_check = abort
        try:
            status = llama.llama_decode(self._ctx, batch)
        finally:
            self._abort_check = None
        if status == 2 and abort is not None and abort():
            raise KeyboardInterrupt
        if status != 0:
            raise ConversionError(
                f"llama.cpp failed to evaluate a chunk of {self.path.name} (status {status}): "
                f"{_last_error()}."
            )
        n_out = n - first_scored
        pointer = llama.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(n_out * self.n_vocab,)).reshape(
            n_out, self.n_vocab
        )

    def _should_abort(self, _user_data: ctypes.c_void_p) -> bool:
        check = self._abort_check
        return bool(check is not None and check())

    def close(self) -> None:
        llama = self._llama
        if getattr(self, "_batch", None) is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            llama.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)
            self._model = None
        # Last: freeing the model logs too, and that belongs to us, not to the default logger.
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ForwardModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- llama.cpp's log: errors kept for our messages, the rest dropped ------------------------

_errors: list[str] = []
_levels = LevelTracker()


def _keep_errors(level: int, text: str) -> None:
    level = _levels.resolve(level)
    message = text.strip()
    if level == LogLevel.ERROR and message:
        _errors.append(message)
        del _errors[:-10]


def _last_error() -> str:
    return _errors[-1].rstrip(".") if _errors else "no reason given"
