"""ProcessEngine: the engine in a child process, and what the app sees when that child dies.

The child is killed from outside (SIGKILL, as the OOM killer does) and made to crash itself
(SIGSEGV; SIGABRT through ggml's own abort after a CUDA error line): the client must survive,
keep every delta it delivered, name the signal and llama.cpp's last error line, and answer the
next request from a fresh child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fathom_desktop.engine.errors import EngineCrashedError, ModelFileError
from fathom_desktop.engine.process_engine import ProcessEngine
from fathom_desktop.engine.scripted import DEMO_ANSWER, DEMO_MODEL_PATH, DEMO_REASONING
from fathom_desktop.engine.types import (
    ChatMessage,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from tests.engine import host_engines
from tests.engine.conftest import SMALL_CTX

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUESTION = [ChatMessage("user", "What is 3 + 4?")]
CRASH = [ChatMessage("user", f"Please {host_engines.CRASH_WORD} now.")]
FAKE = "tests.engine.host_engines:SegfaultingFakeEngine"
CUDA_FAILING = "tests.engine.host_engines:cuda_failing_engine"


def finished_of(events: list[StreamEvent]) -> Finished:
    assert isinstance(events[-1], Finished)
    return events[-1]


def text_of(events: list[StreamEvent], kind: DeltaKind) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.kind is kind)


def exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); its state in /proc says it is gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1].startswith("Z")


@pytest.fixture
def fake_engine():
    engine = ProcessEngine(factory=FAKE)
    engine.load(LoadOptions(DEMO_MODEL_PATH))
    yield engine
    engine.close()


def test_llama_cpp_is_never_imported_by_the_client(tiny_gguf_f32: Path):
    """A whole load and reply on the real engine, in a fresh interpreter that stays clean."""
    script = f"""
import sys
from pathlib import Path
from fathom_desktop.engine.process_engine import ProcessEngine
from fathom_desktop.engine.types import ChatMessage, Finished, LoadOptions, SamplingParams
engine = ProcessEngine()
engine.load(LoadOptions(Path({str(tiny_gguf_f32)!r}), n_ctx=256))
events = list(engine.generate([ChatMessage("user", "hi")], SamplingParams(seed=1, max_tokens=8)))
assert isinstance(events[-1], Finished), events[-1]
assert engine.count_tokens("hello world") == 2
engine.close()
print("llama_cpp" in sys.modules, any(m.startswith("llama_cpp") for m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_the_real_engine_streams_the_same_reply_through_the_host(engine, tiny_gguf_f32: Path):
    sampling = SamplingParams(seed=7, max_tokens=30, thinking_budget=10)
    local = list(engine.generate(QUESTION, sampling))
    remote = ProcessEngine()
    try:
        report = remote.load(LoadOptions(tiny_gguf_f32, n_ctx=SMALL_CTX))
        assert report == engine.loaded
        events = list(remote.generate(QUESTION, sampling))
        assert remote.count_tokens("What is 3 + 4?") == engine.count_tokens("What is 3 + 4?")
    finally:
        remote.close()
    # Everything but the timings is the same, delta for delta.
    assert [e for e in events if not isinstance(e, Finished)] == local[:-1]
    assert finished_of(events).answer == finished_of(local).answer
    assert finished_of(events).reasoning == finished_of(local).reasoning
    assert finished_of(events).stats.thinking_closed_early


def test_errors_in_the_host_reach_the_client_as_the_engine_raised_them(
    fake_engine: ProcessEngine, tmp_path: Path
):
    pid = fake_engine.pid
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("not a model")
    with pytest.raises(ModelFileError, match="notes.gguf"):
        fake_engine.load(LoadOptions(not_a_model))
    # A refused file is the file's fault, not the host's: a new host serves the next load.
    assert fake_engine.loaded is None
    assert fake_engine.load(LoadOptions(DEMO_MODEL_PATH)).model_path == DEMO_MODEL_PATH
    assert fake_engine.pid is not None and exited(pid)


def test_sigkill_mid_reply_keeps_what_was_delivered_and_the_next_load_answers(
    fake_engine: ProcessEngine,
):
    first_pid = fake_engine.pid
    delivered: list[StreamEvent] = []
    with pytest.raises(EngineCrashedError) as raised:
        for event in fake_engine.generate(QUESTION, SamplingParams()):
            delivered.append(event)
            if sum(isinstance(e, TextDelta) for e in delivered) == 10:
                os.kill(first_pid, signal.SIGKILL)
    error = raised.value
    assert error.signal_name == "SIGKILL" and "SIGKILL" in str(error)
    assert not error.while_loading and not error.gpu_memory
    assert "\n" not in str(error)
    # The partial reply is what was shown: a true prefix of the script's reasoning.
    partial = text_of(delivered, DeltaKind.REASONING)
    assert len(partial) > 0 and DEMO_REASONING.startswith(partial)
    assert fake_engine.loaded is None

    fake_engine.load(LoadOptions(DEMO_MODEL_PATH))
    assert fake_engine.pid != first_pid
    finished = finished_of(list(fake_engine.generate(QUESTION, SamplingParams())))
    assert finished.answer == DEMO_ANSWER


def test_a_child_that_segfaults_mid_reply(fake_engine: ProcessEngine):
    delivered: list[StreamEvent] = []
    with pytest.raises(EngineCrashedError) as raised:
        for event in fake_engine.generate(CRASH, SamplingParams()):
            delivered.append(event)
    assert raised.value.signal_name == "SIGSEGV"
    assert str(raised.value).startswith("The engine process was killed by SIGSEGV while generating")
    # Every delta the child sent before it died arrived, and nothing after.
    deltas = [e for e in delivered if isinstance(e, TextDelta)]
    assert len(deltas) == host_engines.DELTAS_BEFORE_CRASH
    assert DEMO_REASONING.startswith(text_of(delivered, DeltaKind.REASONING))

    fake_engine.load(LoadOptions(DEMO_MODEL_PATH))
    assert finished_of(list(fake_engine.generate(QUESTION, SamplingParams()))).answer == DEMO_ANSWER


def test_a_ggml_abort_after_a_cuda_error_names_the_line_and_gpu_memory(tiny_gguf_f32: Path):
    engine = ProcessEngine(factory=CUDA_FAILING)
    options = LoadOptions(tiny_gguf_f32, n_ctx=SMALL_CTX, n_gpu_layers=3)
    try:
        engine.load(options)
        delivered: list[StreamEvent] = []
        with pytest.raises(EngineCrashedError) as raised:
            for event in engine.generate(CRASH, SamplingParams(seed=3, max_tokens=100)):
                delivered.append(event)
        error = raised.value
        assert error.signal_name == "SIGABRT"
        assert error.last_error == "CUDA error: out of memory"
        assert error.gpu_memory
        assert str(error) == (
            "The engine process was killed by SIGABRT while generating: CUDA error: out of memory."
        )
        assert sum(isinstance(e, TextDelta) for e in delivered) == host_engines.DELTAS_BEFORE_CRASH
        # "Reload with fewer GPU layers" is a load with a smaller n_gpu_layers.
        engine.load(replace(options, n_gpu_layers=0))
        assert finished_of(list(engine.generate(QUESTION, SamplingParams(seed=3, max_tokens=5))))
    finally:
        engine.close()


def test_a_child_dying_while_loading(tiny_gguf_f32: Path, tmp_path: Path):
    engine = ProcessEngine(factory=CUDA_FAILING)
    too_big = tmp_path / f"{host_engines.OOM_ON_LOAD}.gguf"
    too_big.symlink_to(tiny_gguf_f32)
    try:
        with pytest.raises(EngineCrashedError) as raised:
            engine.load(LoadOptions(too_big, n_ctx=SMALL_CTX))
        assert raised.value.while_loading and raised.value.gpu_memory
        assert "while loading the model: CUDA error: out of memory" in str(raised.value)
        assert engine.loaded is None
        engine.load(LoadOptions(tiny_gguf_f32, n_ctx=SMALL_CTX))
        assert engine.loaded is not None
    finally:
        engine.close()


def test_a_child_killed_while_loading(tmp_path: Path):
    engine = ProcessEngine(factory="tests.engine.host_engines:HangingFakeEngine")
    pid = engine.pid
    assert pid is not None
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(EngineCrashedError) as raised:
            engine.load(LoadOptions(tmp_path / f"{host_engines.HANG_ON_LOAD}.gguf"))
        assert raised.value.while_loading and raised.value.signal_name == "SIGKILL"
        assert str(raised.value) == (
            "The engine process was killed by SIGKILL while loading the model "
            "(llama.cpp logged no error)."
        )
        assert engine.load(LoadOptions(DEMO_MODEL_PATH)).model_path == DEMO_MODEL_PATH
    finally:
        killer.cancel()
        engine.close()


def test_stop_and_answer_now_cross_to_the_host(fake_engine: ProcessEngine):
    control = GenerationControl()
    events: list[StreamEvent] = []
    for event in fake_engine.generate(QUESTION, SamplingParams(), control):
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == 5:
            control.answer_now.set()
    finished = finished_of(events)
    assert finished.stats.thinking_closed_early and finished.answer == DEMO_ANSWER

    control = GenerationControl()
    events = []
    for event in fake_engine.generate(QUESTION, SamplingParams(), control):
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == 5:
            control.cancel.set()
    assert finished_of(events).stats.finish_reason is FinishReason.CANCELLED
    assert finished_of(events).answer == ""


def test_an_abandoned_stream_does_not_leak_into_the_next_reply(fake_engine: ProcessEngine):
    for event in fake_engine.generate(QUESTION, SamplingParams()):
        if isinstance(event, TextDelta):
            break  # the window dropped the stream after its first delta
    events = list(fake_engine.generate(QUESTION, SamplingParams()))
    assert isinstance(events[0], PhaseChanged) and events[0].phase is Phase.PROMPT
    assert finished_of(events).reasoning == DEMO_REASONING
    fake_engine.generate(QUESTION, SamplingParams())  # a stream never read at all
    assert fake_engine.count_tokens("one two three") == 3
    events = list(fake_engine.generate(QUESTION, SamplingParams()))
    assert isinstance(events[0], PhaseChanged) and events[0].phase is Phase.PROMPT
    assert finished_of(events).answer == DEMO_ANSWER


def test_consensus_runs_in_the_host_and_streams_each_sample(fake_engine: ProcessEngine):
    seen: dict[int, int] = {}

    def on_event(sample: int, event: StreamEvent) -> None:
        seen[sample] = seen.get(sample, 0) + isinstance(event, TextDelta)

    result = fake_engine.consensus(QUESTION, SamplingParams(), 3, on_event=on_event, parallel=2)
    assert result.answer == "2500" and result.votes == {"2500": 3}
    assert result.winner.answer == DEMO_ANSWER
    assert sorted(seen) == [0, 1, 2] and all(count > 0 for count in seen.values())


def test_close_ends_the_child():
    engine = ProcessEngine(factory=FAKE)
    engine.load(LoadOptions(DEMO_MODEL_PATH))
    pid = engine.pid
    assert pid is not None
    engine.close()
    assert engine.pid is None and engine.loaded is None
    deadline = time.monotonic() + 5
    while not exited(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exited(pid)
