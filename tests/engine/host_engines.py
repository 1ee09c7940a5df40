"""Engines for the engine host's tests, made in the child by `ProcessEngine(factory=...)`.

Each fails the way a real failure would, in the child process, on a cue the test controls (a
word in the user's message, a model file's name), so that one ProcessEngine can see the failure
and then, on a fresh host with the same factory, a normal reply.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fathom_desktop.engine.scripted import FakeEngine
from fathom_desktop.engine.types import (
    ChatMessage,
    GenerationControl,
    LoadOptions,
    LoadReport,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

CRASH_WORD = "crash"  # a user message holding it makes the engine die mid-reply
DELTAS_BEFORE_CRASH = 12
HANG_ON_LOAD = "hangs-while-loading"  # a model path with this in its name never finishes loading
OOM_ON_LOAD = "oom-on-load"  # ... with this, dies as ggml-cuda does on CUDA out-of-memory


def _asks_for_crash(messages: list[ChatMessage]) -> bool:
    return CRASH_WORD in messages[-1].content


def _crash_after(
    stream: Iterator[StreamEvent], deltas: int, die: Callable[[], None]
) -> Iterator[StreamEvent]:
    seen = 0
    for event in stream:
        yield event  # the host has sent it before the next event is asked for
        seen += isinstance(event, TextDelta)
        if seen == deltas:
            die()


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a bad kernel or driver fault would


def ggml_cuda_out_of_memory() -> None:
    """What ggml-cuda does on a failed CUDA call, through ggml's own log and abort."""
    from fathom_desktop.engine.native import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    error = 4  # GGML_LOG_LEVEL_ERROR
    for line in (
        b"CUDA error: out of memory\n",
        b"  current device: 0, in function ggml_cuda_op_mul_mat at ggml-cuda.cu:1234\n",
        b"  cudaMalloc((void **) &ptr, look_ahead_size)\n",
    ):
        ggml.ggml_log_internal(error, b"%s", line)
    ggml.ggml_abort(b"ggml-cuda.cu", 88, b"CUDA error")


class SegfaultingFakeEngine(FakeEngine):
    """The fake model at its normal pace (a reply takes about a second, time for a test to
    kill it mid-way); segfaults mid-reply when asked to."""

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        stream = super().generate(messages, sampling, control)
        if _asks_for_crash(messages):
            return _crash_after(stream, DELTAS_BEFORE_CRASH, segfault)
        return stream


class HangingFakeEngine(FakeEngine):
    """The fake model at its normal pace; a load of HANG_ON_LOAD never returns."""

    def load(self, options: LoadOptions) -> LoadReport:
        if HANG_ON_LOAD in options.model_path.name:
            time.sleep(3600)
        return super().load(options)


def _llama_engine() -> type:
    from fathom_desktop.engine.llama_engine import LlamaEngine

    return LlamaEngine


def cuda_failing_engine() -> object:
    """The real engine on llama.cpp, dying as on a CUDA out-of-memory when asked to: in the
    middle of a reply, or while loading a file named OOM_ON_LOAD."""

    class CudaFailingEngine(_llama_engine()):
        def load(self, options: LoadOptions) -> LoadReport:
            report = super().load(options)
            if OOM_ON_LOAD in options.model_path.name:
                ggml_cuda_out_of_memory()
            return report

        def generate(
            self,
            messages: list[ChatMessage],
            sampling: SamplingParams,
            control: GenerationControl | None = None,
        ) -> Iterator[StreamEvent]:
            stream = super().generate(messages, sampling, control)
            if _asks_for_crash(messages):
                return _crash_after(stream, DELTAS_BEFORE_CRASH, ggml_cuda_out_of_memory)
            return stream

    return CudaFailingEngine()
