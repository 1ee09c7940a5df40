"""The model thread: batched deltas in order, failures reported as one line, a clean shutdown."""

from __future__ import annotations

import threading

import pytest

from fathom_desktop.engine.scripted import DEMO_MODEL_PATH, FakeEngine, FakeScript, split_tokens
from fathom_desktop.engine.types import (
    DeltaKind,
    LoadOptions,
    Phase,
    PhaseChanged,
    SamplingParams,
    TextDelta,
)
from fathom_desktop.gui.worker import EngineClient
from tests.gui.conftest import WAIT_MS

REASONING = "".join(f"line {i} of the reasoning\n" for i in range(400))


@pytest.fixture
def client(qtbot):
    made: list[EngineClient] = []

    def make(engine) -> EngineClient:
        made.append(EngineClient(lambda: engine))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _record(client: EngineClient) -> list[object]:
    events: list[object] = []
    for signal in (
        client.worker.batch,
        client.worker.notice,
        client.worker.generation_done,
        client.worker.generation_failed,
        client.worker.load_finished,
        client.worker.load_failed,
    ):
        signal.connect(events.append)
    return events


def _load(qtbot, client: EngineClient, path=DEMO_MODEL_PATH) -> None:
    ended: list[object] = []
    client.worker.load_finished.connect(ended.append)
    client.worker.load_failed.connect(ended.append)
    client.load(LoadOptions(model_path=path))
    qtbot.waitUntil(lambda: bool(ended), timeout=WAIT_MS)
    client.worker.load_finished.disconnect(ended.append)
    client.worker.load_failed.disconnect(ended.append)


def _idle(qtbot, client: EngineClient) -> None:
    qtbot.waitUntil(lambda: client.current is None, timeout=WAIT_MS)


def test_deltas_arrive_batched_complete_and_in_order(qtbot, client):
    engine = FakeEngine(FakeScript(reasoning=REASONING, answer="done"), tokens_per_s=4000)
    worker_client = client(engine)
    events = _record(worker_client)
    _load(qtbot, worker_client)
    worker_client.generate([], SamplingParams())
    _idle(qtbot, worker_client)

    batches = [e for e in events if type(e).__name__ == "StreamBatch"]
    tokens = engine.count_tokens(REASONING)
    assert "".join(b.reasoning for b in batches) == REASONING
    assert "".join(b.answer for b in batches) == "done"
    assert batches[-1].reasoning_tokens == tokens
    # ~0.5 s of tokens at 4,000/s in 40 ms batches: far fewer GUI updates than tokens.
    assert len(batches) < tokens / 10
    first_answer = next(i for i, e in enumerate(events) if getattr(e, "answer", ""))
    answer_notice = next(
        i
        for i, e in enumerate(events)
        if getattr(getattr(e, "event", None), "phase", None) == "answer"
    )
    assert answer_notice < first_answer  # the phase change comes before the answer's text
    assert type(events[-1]).__name__ == "GenerationDone"


def test_a_load_failure_is_one_line_and_the_thread_lives_on(qtbot, client, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    engine = FakeEngine(tokens_per_s=None)
    worker_client = client(engine)
    events = _record(worker_client)
    _load(qtbot, worker_client, bad)
    assert [e.message for e in events] == ["bad.gguf is not a GGUF model file."]
    assert events[0].crash is None
    _load(qtbot, worker_client)
    assert type(events[-1]).__name__ == "LoadReport"


class _Exploding(FakeEngine):
    """Raises an unexpected error (not an EngineError) after a few tokens."""

    def _stream(self, messages, sampling, control, crash=None):
        yield PhaseChanged(Phase.REASONING)
        yield TextDelta(DeltaKind.REASONING, "so far ")
        raise RuntimeError("the binding fell over")


def test_an_unexpected_error_mid_stream_fails_the_reply_not_the_app(qtbot, client):
    worker_client = client(_Exploding(tokens_per_s=None))
    events = _record(worker_client)
    _load(qtbot, worker_client)
    worker_client.generate([], SamplingParams())
    _idle(qtbot, worker_client)
    failed = events[-1]
    assert failed.message == "Generation failed: the binding fell over"
    assert failed.reasoning == "so far "
    # The thread still serves requests.
    worker_client.generate([], SamplingParams())
    _idle(qtbot, worker_client)


def test_close_stops_a_running_reply_and_closes_the_engine_in_its_thread(qtbot):
    closed_in: list[threading.Thread] = []

    class Recording(FakeEngine):
        def close(self) -> None:
            closed_in.append(threading.current_thread())
            super().close()

    engine = Recording(FakeScript(reasoning=REASONING * 20), tokens_per_s=200)
    worker_client = EngineClient(lambda: engine)
    _load(qtbot, worker_client)
    worker_client.generate([], SamplingParams())
    qtbot.wait(100)
    assert worker_client.close(timeout_ms=WAIT_MS)
    assert worker_client.thread.isFinished()
    assert engine.closed
    assert closed_in and closed_in[0] is not threading.main_thread()


def test_an_engine_that_dies_is_reported_as_a_crash_with_the_text_so_far(qtbot, client):
    from fathom_desktop.engine.errors import EngineCrashedError
    from fathom_desktop.engine.scripted import Crash

    engine = FakeEngine(FakeScript(reasoning=REASONING, answer="done"), tokens_per_s=None)
    engine.crash_next(Crash(after_tokens=30, gpu_memory=True))
    worker_client = client(engine)
    events = _record(worker_client)
    _load(qtbot, worker_client)
    worker_client.generate([], SamplingParams())
    _idle(qtbot, worker_client)
    failed = events[-1]
    assert isinstance(failed.crash, EngineCrashedError) and failed.crash.gpu_memory
    assert failed.message == str(failed.crash)
    assert failed.reasoning_tokens == 30
    assert failed.reasoning == "".join(split_tokens(REASONING)[:30])
    # The next load makes the model usable again; a crash while loading is reported as one.
    engine.crash_next(Crash(while_loading=True))
    _load(qtbot, worker_client)
    assert events[-1].crash is not None and events[-1].crash.while_loading
    _load(qtbot, worker_client)
    assert type(events[-1]).__name__ == "LoadReport"


def test_consensus_progress_comes_in_batches_of_every_sample_that_moved(qtbot, client):
    scripts = [FakeScript(reasoning=REASONING, answer=f"so \\boxed{{{n}}}") for n in (1, 2, 2)]
    engine = FakeEngine(tokens_per_s=1000, sample_scripts=scripts)
    worker_client = client(engine)
    batches: list[object] = []
    worker_client.worker.consensus_batch.connect(batches.append)
    _load(qtbot, worker_client)
    worker_client.generate([], SamplingParams(), samples=6)
    _idle(qtbot, worker_client)

    per_sample: dict[int, list[object]] = {}
    for batch in batches:
        for progress in batch.samples:
            per_sample.setdefault(progress.index, []).append(progress)
    assert sorted(per_sample) == list(range(6))
    tokens = engine.count_tokens(REASONING)
    for index, progress in per_sample.items():
        # Each sample's text arrives whole and in order, its counts are the engine's, and its
        # end carries its record with the boxed value.
        assert "".join(p.reasoning for p in progress) == REASONING
        assert progress[-1].reasoning_tokens == tokens
        assert progress[-1].finished is not None
        assert progress[-1].finished.boxed == ("1" if index % 3 == 0 else "2")
    # Samples that moved together share a batch; far fewer GUI updates than tokens.
    assert max(len(batch.samples) for batch in batches) == 4
    assert len(batches) < 6 * tokens / 10
