"""Batched consensus: samples decoded together must behave exactly like samples decoded alone.

The model here is built so that greedy decoding never meets a near-tie (tiny_models.
successor_qwen2), so a parallel greedy sample must equal the sequential greedy reply exactly:
batched kernels round differently, and only a clear margin makes exact equality the right test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fathom_desktop.engine import LlamaEngine
from fathom_desktop.engine.consensus import consensus
from fathom_desktop.engine.errors import SettingsError
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
from tests.engine.tiny_models import successor_qwen2

N_CTX = 512
QUESTION = [ChatMessage("user", "What is 17 + 25?")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


@pytest.fixture(scope="module")
def margin_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaEngine]:
    path = successor_qwen2(tmp_path_factory.mktemp("margin") / "successor.gguf")
    engine = LlamaEngine()
    engine.load(LoadOptions(path, n_ctx=N_CTX, n_gpu_layers=0, n_threads=2))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def random_engine(tiny_gguf_f32: Path) -> Iterator[LlamaEngine]:
    """Random weights: a flat next-token distribution, where seeds make a difference."""
    engine = LlamaEngine()
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=N_CTX, n_gpu_layers=0, n_threads=2))
    yield engine
    engine.close()


def alone(engine: LlamaEngine, sampling: SamplingParams, messages=QUESTION) -> Finished:
    last = list(engine.generate(messages, sampling))[-1]
    assert isinstance(last, Finished)
    return last


class Recorder:
    """Collects every sample's events, and lets a test act when a sample reaches a point."""

    def __init__(self) -> None:
        self.events: dict[int, list[StreamEvent]] = {}
        self.hooks: list = []

    def __call__(self, index: int, event: StreamEvent) -> None:
        self.events.setdefault(index, []).append(event)
        for hook in self.hooks:
            hook(index, event, self)

    def tokens(self, index: int, kind: DeltaKind | None = None) -> int:
        return sum(
            e.tokens
            for e in self.events[index]
            if isinstance(e, TextDelta) and (kind is None or e.kind is kind)
        )


def same_reply(a: Finished, b: Finished) -> None:
    assert (a.reasoning, a.answer) == (b.reasoning, b.answer)
    assert (a.stats.reasoning_tokens, a.stats.answer_tokens) == (
        b.stats.reasoning_tokens,
        b.stats.answer_tokens,
    )
    assert a.stats.finish_reason is b.stats.finish_reason
    assert a.stats.thinking_closed_early == b.stats.thinking_closed_early


@pytest.mark.parametrize(("k", "parallel"), [(3, 3), (5, 2)])
def test_greedy_samples_equal_the_sequential_greedy_reply(margin_engine, k, parallel):
    reference = alone(margin_engine, GREEDY)
    assert reference.stats.finish_reason is FinishReason.LENGTH  # 40 tokens, no early end
    assert reference.stats.reasoning_tokens == 40 and len(reference.reasoning) > 40
    result = margin_engine.consensus(QUESTION, GREEDY, k, parallel=parallel)
    assert result.parallel == parallel  # (5, 2): three samples start in a refilled sequence
    assert len(result.samples) == k
    for sample in result.samples:
        same_reply(sample, reference)


def test_greedy_identity_holds_for_a_second_prompt_and_a_thinking_budget(margin_engine):
    messages = [ChatMessage("user", "A different question, so a different reply?")]
    sampling = replace(GREEDY, thinking_budget=12)
    reference = alone(margin_engine, sampling, messages)
    assert reference.reasoning != alone(margin_engine, GREEDY).reasoning
    assert reference.stats.thinking_closed_early and reference.stats.reasoning_tokens == 12
    result = margin_engine.consensus(messages, sampling, 4, parallel=4)
    for sample in result.samples:
        same_reply(sample, reference)


@pytest.mark.parametrize(("k", "parallel"), [(3, 3), (4, 3)])
def test_a_sample_ending_early_leaves_the_others_replies_intact(
    margin_engine, monkeypatch, k, parallel
):
    """Sample 0 ends after 5 tokens, as an end-of-generation would. With more samples to come
    the next one starts in its sequence (4, 3); without, the sample in the highest sequence
    moves into the freed one (3, 3). Either way every other reply is the greedy reply."""
    from fathom_desktop.engine.batched import BatchedConsensus

    advance = BatchedConsensus._advance
    moved: list[tuple[int, int]] = []

    def stop_sample_0_early(self, context, sample, answer_now):  # noqa: ANN001, ANN202
        if sample.index == 0 and sample.sampled == 5:
            return FinishReason.STOP
        return advance(self, context, sample, answer_now)

    close_gaps = BatchedConsensus._close_gaps

    def note_moves(self, context, live):  # noqa: ANN001, ANN202
        before = {sample.index: sample.sequence for sample in live}
        close_gaps(self, context, live)
        moved.extend((s.index, s.sequence) for s in live if before[s.index] != s.sequence)

    monkeypatch.setattr(BatchedConsensus, "_advance", stop_sample_0_early)
    monkeypatch.setattr(BatchedConsensus, "_close_gaps", note_moves)
    reference = alone(margin_engine, GREEDY)
    result = margin_engine.consensus(QUESTION, GREEDY, k, parallel=parallel)
    first, *others = result.samples
    assert first.stats.finish_reason is FinishReason.STOP and first.stats.reasoning_tokens == 5
    assert reference.reasoning.startswith(first.reasoning)
    assert len(others) == k - 1
    for sample in others:
        same_reply(sample, reference)
    # (3, 3): sample 2 left sequence 2 for sample 0's sequence 0; (4, 3): sample 3 took it.
    assert moved == ([(2, 0)] if k == parallel else [])


def test_a_seed_gives_the_same_samples_at_the_same_parallelism(random_engine):
    sampling = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=42, max_tokens=24)
    first = random_engine.consensus(QUESTION, sampling, 4, parallel=4)
    again = random_engine.consensus(QUESTION, sampling, 4, parallel=4)
    assert [s.reasoning for s in first.samples] == [s.reasoning for s in again.samples]
    # Each sample has its own seed (42, 43, ...): the samples differ from one another.
    assert len({s.reasoning for s in first.samples}) == 4
    other = random_engine.consensus(QUESTION, replace(sampling, seed=7), 4, parallel=4)
    assert [s.reasoning for s in other.samples] != [s.reasoning for s in first.samples]


def test_events_per_sample_have_the_single_reply_shape_and_count_every_token(margin_engine):
    recorder = Recorder()
    sampling = replace(GREEDY, thinking_budget=10, max_tokens=30)
    result = margin_engine.consensus(QUESTION, sampling, 3, on_event=recorder, parallel=3)
    assert sorted(recorder.events) == [0, 1, 2]
    for index, sample in enumerate(result.samples):
        events = recorder.events[index]
        assert events[0] == PhaseChanged(Phase.PROMPT, prompt_tokens=sample.stats.prompt_tokens)
        phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
        assert phases == [Phase.PROMPT, Phase.REASONING, Phase.ANSWER]
        assert events[-1] is sample
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert text == sample.reasoning + sample.answer
        # The counters a window sums: every decoded token, each under its own kind.
        assert recorder.tokens(index, DeltaKind.REASONING) == sample.stats.reasoning_tokens == 10
        assert recorder.tokens(index, DeltaKind.ANSWER) == sample.stats.answer_tokens == 20


def test_max_tokens_and_budget_act_per_sample(random_engine):
    sampling = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, seed=3, max_tokens=18, thinking_budget=5
    )
    result = random_engine.consensus(QUESTION, sampling, 5, parallel=2)
    for sample in result.samples:
        assert sample.stats.finish_reason is FinishReason.LENGTH
        assert sample.stats.reasoning_tokens == 5 and sample.stats.answer_tokens == 13
        assert sample.stats.thinking_closed_early and sample.answer


def test_answer_now_closes_the_samples_running_when_pressed_only(margin_engine):
    control = GenerationControl()
    recorder = Recorder()

    pressed: list[bool] = []

    def press_once(index: int, event: StreamEvent, rec: Recorder) -> None:
        reasoning = rec.tokens(0, DeltaKind.REASONING)
        if index == 0 and isinstance(event, TextDelta) and not pressed and reasoning >= 6:
            control.answer_now.set()
            pressed.append(True)

    recorder.hooks.append(press_once)
    sampling = replace(GREEDY, max_tokens=30)
    result = margin_engine.consensus(QUESTION, sampling, 4, control, recorder, parallel=2)
    first, second, third, fourth = result.samples
    # Samples 0 and 1 were decoding when "answer now" came; both answer from there on.
    for sample in (first, second):
        assert sample.stats.thinking_closed_early
        assert 6 <= sample.stats.reasoning_tokens < 10 and sample.stats.answer_tokens > 0
    # Samples 2 and 3 started afterwards and think for their whole length.
    for sample in (third, fourth):
        assert not sample.stats.thinking_closed_early
        assert sample.stats.reasoning_tokens == 30 and sample.answer == ""
    assert not control.answer_now.is_set()


def test_cancel_stops_every_sample_and_starts_no_more(margin_engine):
    control = GenerationControl()
    recorder = Recorder()

    def cancel_at_five(index: int, event: StreamEvent, rec: Recorder) -> None:
        if index == 0 and isinstance(event, TextDelta) and rec.tokens(0) >= 5:
            control.cancel.set()

    recorder.hooks.append(cancel_at_five)
    sampling = replace(GREEDY, max_tokens=200)
    result = margin_engine.consensus(QUESTION, sampling, 6, control, recorder, parallel=2)
    assert sorted(recorder.events) == [0, 1]  # no sample started after the cancel
    assert len(result.samples) == 2
    for sample in result.samples:
        assert sample.stats.finish_reason is FinishReason.CANCELLED
        assert sample.stats.reasoning_tokens < 20
    # The engine is usable afterwards, with the same greedy reply as ever.
    same_reply(alone(margin_engine, GREEDY), alone(margin_engine, GREEDY))


def test_parallel_one_runs_the_sequential_path_and_bad_counts_are_refused(margin_engine):
    result = margin_engine.consensus(QUESTION, GREEDY, 2, parallel=1)
    assert result.parallel == 1 and result.parallel_reason.startswith("one after another")
    sequential = consensus(margin_engine, QUESTION, GREEDY, 2)
    for a, b in zip(result.samples, sequential.samples, strict=True):
        same_reply(a, b)
    with pytest.raises(SettingsError, match="1 to 64 samples"):
        margin_engine.consensus(QUESTION, GREEDY, 65)
    with pytest.raises(SettingsError, match="at least 1"):
        margin_engine.consensus(QUESTION, GREEDY, 2, parallel=0)


def test_the_engine_plans_all_samples_at_once_when_memory_allows(margin_engine):
    plan = margin_engine.plan_parallel(20, GREEDY, 8)
    assert plan.parallel == 8 and "all 8 samples" in plan.reason
    capped = margin_engine.plan_parallel(20, GREEDY, 8, cap=3)
    assert capped.parallel == 3 and "capped at 3" in capped.reason
    result = margin_engine.consensus(QUESTION, GREEDY, 3)
    assert result.parallel == 3 and result.parallel_reason.startswith("3 at once")


def test_the_context_limit_ends_each_sample_at_the_same_point_as_alone(tmp_path: Path):
    path = successor_qwen2(tmp_path / "successor.gguf")
    engine = LlamaEngine()
    engine.load(LoadOptions(path, n_ctx=96, n_gpu_layers=0, n_threads=2))
    try:
        sampling = SamplingParams(temperature=0.0)
        reference = alone(engine, sampling)
        assert reference.stats.finish_reason is FinishReason.CONTEXT
        result = engine.consensus(QUESTION, sampling, 3, parallel=3)
        for sample in result.samples:
            same_reply(sample, reference)
    finally:
        engine.close()


def test_events_come_sample_after_sample_unless_interleaving_is_asked_for(tiny_gguf_f32: Path):
    """A front end written for the sequential path sees each sample whole, in order."""
    sampling = SamplingParams(seed=5, max_tokens=16)
    orders = {}
    for interleave in (False, True):
        engine = LlamaEngine(interleave_samples=interleave)
        engine.load(LoadOptions(tiny_gguf_f32, n_ctx=N_CTX, n_gpu_layers=0, n_threads=2))
        try:
            seen: list[tuple[int, StreamEvent]] = []
            result = engine.consensus(
                QUESTION,
                sampling,
                5,
                on_event=lambda i, e, out=seen: out.append((i, e)),
                parallel=3,
            )
        finally:
            engine.close()
        indices = [index for index, _ in seen]
        orders[interleave] = indices
        # Either way each sample's own events keep their order and end with its result.
        for index, sample in enumerate(result.samples):
            own = [event for i, event in seen if i == index]
            assert own[-1] is sample and isinstance(own[0], PhaseChanged)
    assert orders[False] == sorted(orders[False])  # 0, 0, ..., 1, 1, ..., 4
    assert orders[True] != sorted(orders[True])  # decoded together: the indices alternate
    assert sorted(orders[True]) == sorted(orders[False])


def test_sample_order_holds_later_samples_until_the_earlier_ones_finish():
    from fathom_desktop.engine.batched import SampleOrder
    from fathom_desktop.engine.types import GenerationStats

    def done(name: str) -> Finished:
        stats = GenerationStats(1, 1, 1, 0.0, 0.0, 0.0, FinishReason.STOP)
        return Finished(name, "", stats)

    seen: list[tuple[int, object]] = []
    order = SampleOrder(lambda index, event: seen.append((index, event)))
    order(1, "b1")
    order(0, "a1")
    order(2, "c1")
    order(1, done_b := done("b"))  # sample 1 ends before sample 0
    assert seen == [(0, "a1")]
    order(0, done_a := done("a"))
    assert seen == [(0, "a1"), (0, done_a), (1, "b1"), (1, done_b), (2, "c1")]
    order(2, "c2")  # sample 2 is now the live one
    assert seen[-1] == (2, "c2")
    order(3, "d1")
    order.flush()  # a cancel: what is held comes out in sample order
    assert seen[-1] == (3, "d1")
