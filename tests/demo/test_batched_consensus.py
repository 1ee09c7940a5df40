"""Batched consensus on the demo model: a model that really reasons, so replies end by themselves.

The demo model was trained to a loss of 0.001, so its greedy choices have clear margins: a
parallel greedy sample must be exactly the sequential greedy reply, problem by problem.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fathom_desktop.engine.consensus import consensus, extract_boxed
from fathom_desktop.engine.types import (
    FATHOM_TEMPERATURE,
    ChatMessage,
    Finished,
    FinishReason,
    SamplingParams,
)
from training.heldout import held_out_problems

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0.0, seed=0, max_tokens=600)
PROBLEMS = held_out_problems(4)


def alone(engine, question: str, sampling: SamplingParams) -> Finished:  # noqa: ANN001
    last = list(engine.generate([ChatMessage("user", question)], sampling))[-1]
    assert isinstance(last, Finished)
    return last


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.question[:30])
def test_parallel_greedy_samples_equal_the_sequential_reply(demo_engine, problem) -> None:  # noqa: ANN001
    reference = alone(demo_engine, problem.question, GREEDY)
    assert reference.stats.finish_reason is FinishReason.STOP
    result = demo_engine.consensus([ChatMessage("user", problem.question)], GREEDY, 3, parallel=3)
    assert result.parallel == 3
    for sample in result.samples:
        assert (sample.reasoning, sample.answer) == (reference.reasoning, reference.answer)
        assert sample.stats.reasoning_tokens == reference.stats.reasoning_tokens
        assert sample.stats.answer_tokens == reference.stats.answer_tokens
        assert sample.stats.finish_reason is FinishReason.STOP


def test_legacy_template_samples_equal_the_sequential_reply(demo_gguf_legacy) -> None:  # noqa: ANN001
    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import LoadOptions

    engine = LlamaEngine()
    engine.load(LoadOptions(demo_gguf_legacy, n_ctx=1024, n_gpu_layers=0, n_threads=2))
    try:
        question = PROBLEMS[0].question
        reference = alone(engine, question, GREEDY)
        assert reference.reasoning and extract_boxed(reference.answer)
        result = engine.consensus([ChatMessage("user", question)], GREEDY, 2, parallel=2)
        for sample in result.samples:
            assert (sample.reasoning, sample.answer) == (reference.reasoning, reference.answer)
    finally:
        engine.close()


def test_sampled_samples_stop_on_their_own_and_the_vote_is_the_sequential_vote(
    demo_engine,  # noqa: ANN001
) -> None:
    """Samples of different lengths end by themselves; refilled sequences run the rest."""
    messages = [ChatMessage("user", PROBLEMS[1].question)]
    sampling = SamplingParams(temperature=FATHOM_TEMPERATURE, seed=11, max_tokens=600)
    result = demo_engine.consensus(messages, sampling, 6, parallel=3)
    assert len(result.samples) == 6
    assert all(s.stats.finish_reason is FinishReason.STOP for s in result.samples)
    assert all(extract_boxed(s.answer) is not None for s in result.samples)
    assert result.answer == str(PROBLEMS[1].answer)
    # The vote over greedy samples is the vote the sequential path takes, value for value.
    greedy_messages = [ChatMessage("user", PROBLEMS[2].question)]
    parallel = demo_engine.consensus(greedy_messages, GREEDY, 3, parallel=3)
    sequential = consensus(demo_engine, greedy_messages, GREEDY, 3)
    assert (parallel.answer, parallel.votes, parallel.boxed) == (
        sequential.answer,
        sequential.votes,
        sequential.boxed,
    )
    assert replace(
        parallel.winner.stats, decode_tokens_per_s=0, prompt_tokens_per_s=0, time_to_first_token_s=0
    ) == replace(
        sequential.winner.stats,
        decode_tokens_per_s=0,
        prompt_tokens_per_s=0,
        time_to_first_token_s=0,
    )
