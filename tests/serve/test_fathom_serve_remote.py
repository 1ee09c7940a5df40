"""fathom-serve as the remote engine: the app's HTTP client against the app's own server."""

from __future__ import annotations

from fathom_desktop.demo import SELF_TEST_QUESTION
from fathom_desktop.engine.remote import RemoteEndpoint, RemoteEngine
from fathom_desktop.engine.types import ChatMessage, Finished, SamplingParams
from tests.serve.conftest import Served

ASK = [ChatMessage("user", SELF_TEST_QUESTION)]


def test_remote_engine_on_fathom_serve_matches_the_engine_behind_it(served: Served) -> None:
    remote = RemoteEngine(RemoteEndpoint(served.base_url))  # no /v1: it is added
    report = remote.load()
    assert remote.kind.name == "fathom-serve" and report.n_ctx == 1024
    local = served.runner.run_now(
        lambda engine: list(engine.generate(ASK, SamplingParams(temperature=0)))
    )[-1]
    finished = list(remote.generate(ASK, SamplingParams(temperature=0)))[-1]
    assert isinstance(finished, Finished)
    assert (finished.reasoning, finished.answer) == (local.reasoning, local.answer)
    # Counts come from the server's usage, which is the engine's own count.
    assert finished.stats.reasoning_tokens == local.stats.reasoning_tokens
    assert finished.stats.answer_tokens == local.stats.answer_tokens
    assert finished.stats.prompt_tokens == local.stats.prompt_tokens
    count = served.runner.run_now(lambda engine: engine.count_tokens("48 clips in April"))
    assert remote.count_tokens("48 clips in April") == count


def test_thinking_budget_travels_to_fathom_serve(served: Served) -> None:
    remote = RemoteEngine(RemoteEndpoint(served.v1))
    remote.load()
    finished = list(remote.generate(ASK, SamplingParams(temperature=0, thinking_budget=6)))[-1]
    assert finished.stats.reasoning_tokens <= 6 + 4 and finished.answer


def test_consensus_on_fathom_serve_is_one_request_with_n(served: Served) -> None:
    remote = RemoteEngine(RemoteEndpoint(served.v1))
    remote.load()
    result = remote.consensus(ASK, SamplingParams(temperature=0.8, seed=11), 3)
    assert len(result.samples) == 3 and all(s.answer for s in result.samples)
    assert sum(result.votes.values()) == sum(b is not None for b in result.boxed)
