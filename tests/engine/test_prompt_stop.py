"""Stop while llama.cpp reads a long prompt: the reply ends within half a second, and the model
stays usable (the prompt sent again gives the reply a model that was never stopped gives).

The prompt is about 15,600 tokens on a tiny model with a 16k context on one thread, which takes
seconds to read on a CPU; Stop comes well inside that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fathom_desktop.engine import LlamaEngine, llama_backend
from fathom_desktop.engine.process_engine import ProcessEngine
from fathom_desktop.engine.types import (
    ChatEngine,
    ChatMessage,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
)

N_CTX = 16384
N_THREADS = 1  # a prompt that takes seconds even on an idle machine
LONG_PROMPT = [ChatMessage("user", " ".join(f"word{i % 97} and" for i in range(4000)))]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6)
STOP_AT = 0.25  # of the time the whole prompt takes to read, into its evaluation
STOP_WITHIN_S = 0.5


@pytest.fixture(scope="module")
def reference_answer(wide_head_gguf: Path) -> tuple[str, str, float]:
    """The long prompt's greedy reply from a model that was never stopped, and how long the
    prompt took to read."""
    engine = LlamaEngine()
    engine.load(LoadOptions(wide_head_gguf, n_ctx=N_CTX, n_threads=N_THREADS))
    try:
        started = time.perf_counter()
        finished = list(engine.generate(LONG_PROMPT, GREEDY))[-1]
        took = time.perf_counter() - started
    finally:
        engine.close()
    assert isinstance(finished, Finished)
    return finished.reasoning, finished.answer, took


def stop_during_prompt(engine: ChatEngine, after_s: float) -> tuple[list[StreamEvent], float]:
    """Generate the long prompt, press Stop `after_s` into reading it; the events and the
    seconds from Stop to the end of the stream."""
    control = GenerationControl()
    pressed: list[float] = []

    def press_stop() -> None:
        pressed.append(time.perf_counter())
        control.cancel.set()

    events: list[StreamEvent] = []
    stream: Iterator[StreamEvent] = engine.generate(LONG_PROMPT, GREEDY, control)
    timer: threading.Timer | None = None
    for event in stream:
        events.append(event)
        if isinstance(event, PhaseChanged) and event.phase is Phase.PROMPT:
            timer = threading.Timer(after_s, press_stop)
            timer.start()
    ended = time.perf_counter()
    assert timer is not None and pressed, "the stream ended before Stop was pressed"
    return events, ended - pressed[0]


def assert_stopped_then_usable(
    engine: ChatEngine, reference_answer: tuple[str, str, float]
) -> None:
    reasoning, answer, prompt_s = reference_answer
    # What is left to read after Stop must take clearly longer than Stop may, or the test could
    # not tell a stopped read from a finished one.
    left_s = prompt_s * (1 - STOP_AT)
    assert left_s > 1.5 * STOP_WITHIN_S, "the prompt reads too fast to stop in the middle"
    events, stop_s = stop_during_prompt(engine, prompt_s * STOP_AT)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.stats.finish_reason is FinishReason.CANCELLED
    assert finished.stats.reasoning_tokens + finished.stats.answer_tokens == 0
    assert stop_s < STOP_WITHIN_S
    again = list(engine.generate(LONG_PROMPT, GREEDY))[-1]
    assert isinstance(again, Finished)
    assert again.stats.finish_reason is FinishReason.LENGTH
    assert (again.reasoning, again.answer) == (reasoning, answer)


def test_stop_while_the_engine_reads_a_long_prompt(wide_head_gguf: Path, reference_answer):
    engine = LlamaEngine()
    engine.load(LoadOptions(wide_head_gguf, n_ctx=N_CTX, n_threads=N_THREADS))
    try:
        assert_stopped_then_usable(engine, reference_answer)
    finally:
        engine.close()


def test_stop_while_the_engine_host_reads_a_long_prompt(wide_head_gguf: Path, reference_answer):
    engine = ProcessEngine()
    engine.load(LoadOptions(wide_head_gguf, n_ctx=N_CTX, n_threads=N_THREADS))
    try:
        assert_stopped_then_usable(engine, reference_answer)
    finally:
        engine.close()


def test_the_abort_callback_stops_llama_cpp_inside_one_batch(engine: LlamaEngine):
    """What lets Stop work when one batch of a big model takes longer than half a second."""
    llama = engine._model.llama  # type: ignore[union-attr]
    tokens = engine.prompt_tokens([ChatMessage("user", "word " * 300)])
    assert len(tokens) < llama.n_batch  # one llama_decode call
    llama_backend.truncate_cache(llama, 0)
    stop = threading.Event()
    stop.set()
    with engine._model.prompt_abort.watching(stop), pytest.raises(RuntimeError):  # type: ignore[union-attr]
        llama.eval(tokens)
    assert llama.n_tokens == 0
    llama.eval(tokens)  # outside `watching` the callback is gone, and the context still works
    assert llama.n_tokens == len(tokens)
