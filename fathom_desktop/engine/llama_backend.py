"""The thin layer over llama-cpp-python: log capture, opening a model, sampling, detokenizing.

Kept apart from the engine's conversation logic so that the ctypes details (buffers, native
handles that must be freed) sit in one place.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from convert.llama_log import LogLevel
from fathom_desktop.engine.native import llama_cpp
from fathom_desktop.engine.types import SamplingParams

logger = logging.getLogger("fathom_desktop.engine.llama_cpp")

# One definition of llama.cpp's log levels for the engine and the converter (convert/llama_log.py).
_GGML_LOG_ERROR = LogLevel.ERROR
_GGML_LOG_CONT = LogLevel.CONT


class _LogCapture:
    """Keeps llama.cpp's error lines for our messages; everything else is dropped.

    llama-cpp-python's verbose=False also redirects stderr to /dev/null while a model loads, which
    would swallow the one line saying why a load failed; capturing at the log callback keeps it.
    """

    def __init__(self) -> None:
        self.errors: deque[str] = deque(maxlen=20)
        self._n_errors = 0  # ever logged, so a block can tell its own lines from older ones
        self._last_level = 0
        # Everything llama.cpp says goes to the logger at INFO too (fathom-chat --verbose, or
        # FATHOM_LLAMA_LOG=1 in the environment).
        self.pass_through = os.environ.get("FATHOM_LLAMA_LOG") == "1"
        self._callback = llama_cpp.llama_log_callback(self._on_log)

    def install(self) -> None:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        # llama_log_set covers llama.cpp's own lines only; ggml's (a CUDA error, the line before
        # an abort) go to stderr unless ggml's logger is set too.
        ggml_base = _ggml_base_library()
        if ggml_base is not None:
            ggml_base.ggml_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if level == _GGML_LOG_CONT:
            level = self._last_level
        self._last_level = level
        message = text.decode("utf-8", "replace")
        if self.pass_through and message.strip():
            logger.info(message.rstrip())
        if level == _GGML_LOG_ERROR and message.strip():
            self.errors.append(message.strip())
            self._n_errors += 1
            logger.error(message.rstrip())

    def mark(self) -> int:
        return self._n_errors

    def since(self, mark: int) -> list[str]:
        """Error lines logged after `mark` (as many as are still kept)."""
        new = min(self._n_errors - mark, len(self.errors))
        return list(self.errors)[len(self.errors) - new :] if new else []


def _ggml_base_library() -> ctypes.CDLL | None:
    """ggml's base library as llama-cpp-python loaded it (None if it is not beside it)."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for path in sorted(lib_dir.glob("libggml-base.*")):
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        library.ggml_log_set.argtypes = [llama_cpp.llama_log_callback, ctypes.c_void_p]
        library.ggml_log_set.restype = None
        return library
    return None


LOG = _LogCapture()
LOG.install()


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def library_version() -> str:
    return str(llama_cpp.__version__)


def system_info() -> str:
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


_FUNCTION_PREFIX = re.compile(r"^[A-Za-z_]\w*: ")


class LlamaOpenError(Exception):
    """llama.cpp refused the model or the context; the message carries its own reason."""


KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}


@dataclass(frozen=True)
class OpenParams:
    model_path: str
    n_ctx: int
    n_gpu_layers: int
    flash_attn: bool
    kv_cache_type: str
    n_threads: int | None


def open_llama(params: OpenParams) -> llama_cpp.Llama:
    """Load model and context; raises LlamaOpenError with llama.cpp's own reason."""
    kv_type = KV_TYPES[params.kv_cache_type]
    mark = LOG.mark()
    try:
        return llama_cpp.Llama(
            model_path=params.model_path,
            n_ctx=params.n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_gpu_layers=params.n_gpu_layers,
            flash_attn=params.flash_attn,
            type_k=kv_type,
            type_v=kv_type,
            n_threads=params.n_threads,
            # With no layer on the GPU, llama.cpp would still send large prompt batches there
            # ("op offload"). CPU only should mean no GPU at all: the user keeps the VRAM, and
            # a GPU this build cannot drive is never touched.
            op_offload=params.n_gpu_layers > 0,
            logits_all=False,
            verbose=False,
        )
    except (ValueError, RuntimeError) as error:
        # The first error line is the cause; later ones only say that loading failed.
        errors = LOG.since(mark)
        reason = _FUNCTION_PREFIX.sub("", errors[0]) if errors else str(error)
        raise LlamaOpenError(reason) from None


class Sampler:
    """A llama.cpp sampler chain built from SamplingParams; free it with close()."""

    def __init__(self, sampling: SamplingParams, n_vocab: int) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        add = self._add
        if sampling.repeat_penalty != 1.0:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, 64, sampling.repeat_penalty, 0.0, 0.0
                )
            )
        if sampling.temperature <= 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if sampling.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))

    def _add(self, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: llama_cpp.llama_context_p, index: int = -1) -> int:
        """Sample from the logits at batch `index` (-1: the last evaluated position), and record
        the token for penalties."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class Detokenizer:
    """Token → text, one token at a time, in constant time per token.

    Byte-level BPE splits multi-byte characters across tokens; the incremental UTF-8 decoder
    holds the partial bytes until the character completes.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p, *, render_special: bool) -> None:
        self._vocab = vocab
        self._special = render_special
        self._buffer = ctypes.create_string_buffer(64)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._buffer, len(self._buffer), 0, self._special
        )
        if n < 0:  # the piece is longer than the buffer: grow it and ask again
            self._buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(
                self._vocab, token, self._buffer, len(self._buffer), 0, self._special
            )
        return self._buffer.raw[:n]

    def push(self, token: int) -> str:
        return self._decoder.decode(self.piece(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def is_end_of_generation(vocab: llama_cpp.llama_vocab_p, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def token_is_control(vocab: llama_cpp.llama_vocab_p, token: int) -> bool:
    attr = llama_cpp.llama_vocab_get_attr(vocab, token)
    return bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)


def truncate_cache(llama: llama_cpp.Llama, keep: int) -> bool:
    """Drop KV entries from position `keep` on; False if this memory type cannot do that."""
    memory = llama_cpp.llama_get_memory(llama.ctx)
    if memory is None:
        return False
    if llama_cpp.llama_memory_seq_rm(memory, -1, keep, -1):
        llama.n_tokens = keep
        return True
    llama_cpp.llama_memory_clear(memory, True)
    llama.n_tokens = 0
    return False


class PromptAbort:
    """llama.cpp's abort callback on one context: `llama_decode` stops between graph computations
    once the watched event is set, and returns "aborted" (Llama.eval raises RuntimeError).

    Watched only while a prompt is read: the callback runs on every graph node, a Python call
    each, which costs nothing beside a 512-token batch but would slow one-token decoding, where
    the engine checks Stop between tokens anyway. After an abort the positions of the unfinished
    batch are gone from the KV cache and Llama.n_tokens counts only the finished ones, so the
    next prompt reuses what was read and evaluates the rest.
    """

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self._event: threading.Event | None = None
        self._callback = llama_cpp.ggml_abort_callback(self._should_abort)  # kept alive here

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        event = self._event
        return event is not None and event.is_set()

    @contextmanager
    def watching(self, event: threading.Event) -> Iterator[None]:
        self._event = event
        llama_cpp.llama_set_abort_callback(self._llama.ctx, self._callback, None)
        try:
            yield
        finally:
            llama_cpp.llama_set_abort_callback(
                self._llama.ctx, ctypes.cast(None, llama_cpp.ggml_abort_callback), None
            )
            self._event = None


@dataclass(frozen=True)
class PerfCounters:
    prompt_ms: float
    prompt_tokens: int
    decode_ms: float
    decode_tokens: int


def reset_perf(llama: llama_cpp.Llama) -> None:
    llama_cpp.llama_perf_context_reset(llama.ctx)


def read_perf(llama: llama_cpp.Llama) -> PerfCounters:
    # llama.cpp books queued work into its counters when it synchronizes; do that first.
    llama_cpp.llama_synchronize(llama.ctx)
    data = llama_cpp.llama_perf_context(llama.ctx)
    return PerfCounters(data.t_p_eval_ms, data.n_p_eval, data.t_eval_ms, data.n_eval)
