"""The official openai client against fathom-serve on the demo model (all on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time

import httpx2
import openai
import pytest

from fathom_desktop.demo import SELF_TEST_ANSWER, SELF_TEST_QUESTION
from fathom_desktop.engine.types import (
    ChatMessage,
    Finished,
    FinishReason,
    SamplingParams,
)
from tests.serve.conftest import PacedEngine, Served, serve

QUESTION = [{"role": "user", "content": SELF_TEST_QUESTION}]


def client(server: Served, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=api_key, max_retries=0, timeout=60)


def engine_reply(server: Served, sampling: SamplingParams) -> Finished:
    """What the served engine itself says, run in the server's engine thread."""

    def run(engine):
        events = list(engine.generate([ChatMessage("user", SELF_TEST_QUESTION)], sampling))
        return events[-1]

    return server.runner.run_now(run)


def test_non_streaming_reply_is_the_engines_reply(served: Served) -> None:
    reply = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0
    )
    local = engine_reply(served, SamplingParams(temperature=0))
    message = reply.choices[0].message
    assert message.content == local.answer
    assert message.reasoning_content == local.reasoning
    assert f"\\boxed{{{SELF_TEST_ANSWER}}}" in message.content
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens == local.stats.prompt_tokens
    assert usage.completion_tokens_details.reasoning_tokens == local.stats.reasoning_tokens
    assert usage.completion_tokens == local.stats.reasoning_tokens + local.stats.answer_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_gives_the_same_reply_in_deltas(served: Served) -> None:
    stream = client(served).chat.completions.create(
        model=served.model_id,
        messages=QUESTION,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, answer, finishes, usage, chunks = [], [], [], None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            answer.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    local = engine_reply(served, SamplingParams(temperature=0))
    assert "".join(reasoning) == local.reasoning
    assert "".join(answer) == local.answer
    assert finishes == ["stop"]
    assert chunks > 3  # it really streamed
    assert usage is not None and usage.completion_tokens_details.reasoning_tokens > 0


def test_n_choices_are_consensus_samples(served: Served) -> None:
    reply = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0.8, seed=7, n=3
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.reasoning_content and c.message.content for c in reply.choices)
    # The engine's vote travels along as an extension field.
    assert reply.model_extra["consensus"]["votes"]
    # Seeds run seed, seed+1, ...: the same request gives the same three samples.
    again = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0.8, seed=7, n=3
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]

    stream = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0.8, seed=7, n=3, stream=True
    )
    streamed: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index].append(choice.delta.content or "")
    assert ["".join(streamed[i]) for i in range(3)] == [c.message.content for c in reply.choices]


def test_stop_sequence_ends_the_answer(served: Served) -> None:
    reply = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0, stop=["\\boxed"]
    )
    local = engine_reply(served, SamplingParams(temperature=0))
    assert reply.choices[0].message.content == local.answer.split("\\boxed")[0]
    assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_and_thinking_budget(served: Served) -> None:
    short = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0, max_tokens=5
    )
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 5
    budget = client(served).chat.completions.create(
        model=served.model_id,
        messages=QUESTION,
        temperature=0,
        extra_body={"thinking_budget": 8},
    )
    assert budget.usage.completion_tokens_details.reasoning_tokens <= 8 + 4  # + the closer
    assert budget.choices[0].message.content  # the model was asked for its answer


def test_wrong_or_missing_key_is_401(demo_engine: object) -> None:
    with serve(demo_engine, api_key="sesame") as server:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(server, api_key="wrong").chat.completions.create(
                model=server.model_id, messages=QUESTION
            )
        assert caught.value.status_code == 401
        assert "API key" in caught.value.body["message"]
        bare = httpx2.get(f"{server.v1}/models")
        assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"
        models = client(server, api_key="sesame").models.list()
        assert [m.id for m in models.data] == [server.model_id]


def test_prompt_over_the_context_is_400_with_token_counts(served: Served) -> None:
    long = "seven apples and " * 600  # ~1,800 tokens into a 1,024-token context
    with pytest.raises(openai.BadRequestError) as caught:
        client(served).chat.completions.create(
            model=served.model_id, messages=[{"role": "user", "content": long}]
        )
    error = caught.value.body
    assert error["code"] == "context_length_exceeded"
    assert "1,024 tokens" in error["message"] and "the prompt needs" in error["message"]


def test_bad_requests_get_openai_error_json(served: Served) -> None:
    url = f"{served.v1}/chat/completions"
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": QUESTION, "temperature": "hot"}).encode(), 400, "temperature"),
        (json.dumps({"model": "gpt-4o", "messages": QUESTION}).encode(), 404, "gpt-4o"),
    ]
    for body, status, words in cases:
        response = httpx2.post(url, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert words in error["message"]
        assert "Traceback" not in response.text
    missing = httpx2.get(f"{served.base_url}/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_body_over_the_limit_is_413(demo_engine: object) -> None:
    with serve(demo_engine, max_body_bytes=4096) as server:
        big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
        with pytest.raises(openai.APIStatusError) as caught:
            client(server).chat.completions.create(model=server.model_id, **big)
        assert caught.value.status_code == 413
        assert "4,096 bytes" in caught.value.body["message"]


def test_client_leaving_mid_stream_cancels_within_a_token(demo_engine: object) -> None:
    paced = PacedEngine(demo_engine, delay_s=0.03)
    with serve(paced) as server:
        stream = client(server).chat.completions.create(
            model=server.model_id, messages=QUESTION, temperature=0, stream=True
        )
        seen = 0
        for chunk in stream:
            seen += bool(
                chunk.choices and getattr(chunk.choices[0].delta, "reasoning_content", None)
            )
            if seen == 5:
                break
        stream.close()  # the client goes away mid-reasoning
        deadline = time.monotonic() + 10
        while not paced.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        assert paced.finished, "the generation did not end after the client left"
        stats = paced.finished[0].stats
        assert stats.finish_reason is FinishReason.CANCELLED
        assert stats.answer_tokens == 0  # it never got to the answer
        assert 0 <= paced.deltas_after_cancel[0] <= 1
        # The model is free again at once.
        reply = client(server).chat.completions.create(
            model=server.model_id, messages=QUESTION, temperature=0, max_tokens=3
        )
        assert reply.choices[0].finish_reason == "length"


def test_requests_take_turns_and_a_full_queue_gets_503(demo_engine: object) -> None:
    paced = PacedEngine(demo_engine, delay_s=0.01)
    with serve(paced, max_waiting=1) as server:
        results: dict[str, object] = {}

        def ask(name: str, max_tokens: int) -> None:
            try:
                reply = client(server).chat.completions.create(
                    model=server.model_id, messages=QUESTION, temperature=0, max_tokens=max_tokens
                )
                results[name] = (time.monotonic(), reply.usage.completion_tokens)
            except openai.APIStatusError as error:
                results[name] = error

        first = threading.Thread(target=ask, args=("first", 60))
        first.start()
        _wait_until(lambda: server.runner.busy)
        second = threading.Thread(target=ask, args=("second", 2))
        second.start()
        _wait_until(lambda: server.runner.waiting == 1)
        ask("third", 2)  # one running, one waiting: no room
        first.join(30)
        second.join(30)
    third = results["third"]
    assert isinstance(third, openai.APIStatusError) and third.status_code == 503
    assert "busy" in third.body["message"]
    # The short second request waited for the long first one: arrival order, one at a time.
    assert results["first"][1] == 60 and results["second"][1] == 2
    assert results["first"][0] <= results["second"][0]


def _wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_health_says_when_the_model_is_busy(served: Served) -> None:
    health = httpx2.get(f"{served.base_url}/health").json()
    assert health == {"status": "ok", "model": served.model_id, "busy": False, "waiting": 0}


def test_stop_sequence_while_streaming_never_sends_it(served: Served) -> None:
    stream = client(served).chat.completions.create(
        model=served.model_id, messages=QUESTION, temperature=0, stop=["\\boxed"], stream=True
    )
    answer, finishes = [], []
    for chunk in stream:
        for choice in chunk.choices:
            answer.append(choice.delta.content or "")
            finishes.append(choice.finish_reason)
    local = engine_reply(served, SamplingParams(temperature=0))
    assert "".join(answer) == local.answer.split("\\boxed")[0]
    assert [f for f in finishes if f] == ["stop"]


def test_client_giving_up_on_a_non_streaming_reply_cancels_it(demo_engine: object) -> None:
    paced = PacedEngine(demo_engine, delay_s=0.03)
    with serve(paced) as server:
        body = {"model": server.model_id, "messages": QUESTION, "temperature": 0}
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(f"{server.v1}/chat/completions", json=body, timeout=0.5)
        _wait_until(lambda: paced.finished)
    stats = paced.finished[0].stats
    assert stats.finish_reason is FinishReason.CANCELLED
    assert 0 <= paced.deltas_after_cancel[0] <= 1
