"""The remote engine against replayed vLLM and llama.cpp-server streams (all on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from fathom_desktop import chat_cli
from fathom_desktop.engine.errors import PromptTooLongError
from fathom_desktop.engine.remote import RemoteEndpoint, RemoteEngine, RemoteError
from fathom_desktop.engine.types import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerationControl,
    SamplingParams,
    TextDelta,
)
from tests.serve.replay import (
    Reply,
    llamacpp_chunk,
    pieces,
    replay_server,
    stream_vllm,
    vllm_chunk,
    vllm_usage,
)

REASONING = "Natalia sold 48 in April.\nMay: 48/2 = 24.\n48 + 24 = 72.\n"
ANSWER = "She sold 72 clips.\n\n\\boxed{72}"
ASK = [ChatMessage("user", "How many clips?")]
GREEDY = SamplingParams(temperature=0)


def connect(url: str, **options) -> RemoteEngine:
    engine = RemoteEngine(RemoteEndpoint(url, **options))
    engine.load()
    return engine


def run(engine: RemoteEngine, control: GenerationControl | None = None, sampling=GREEDY):
    events = list(engine.generate(ASK, sampling, control))
    assert isinstance(events[-1], Finished)
    return events, events[-1]


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
def test_vllm_stream_with_its_reasoning_parser(field_name: str) -> None:
    with replay_server(owned_by="vllm") as server:
        server.script = lambda reply, body, i: stream_vllm(
            reply, REASONING, ANSWER, field_name=field_name
        )
        engine = connect(server.url)
        assert engine.loaded.n_ctx == 16384 and engine.kind.name == "vLLM"
        events, finished = run(engine)
    assert finished.reasoning == REASONING.strip() and finished.answer == ANSWER
    assert finished.stats.finish_reason is FinishReason.STOP
    assert finished.stats.prompt_tokens == 31
    reasoning_deltas = "".join(
        e.text for e in events if isinstance(e, TextDelta) and e.kind == "reasoning"
    )
    assert reasoning_deltas == REASONING.strip()
    sent = server.requests[0]
    assert sent["model"] == "FractalAIResearch/Fathom-R1-14B"
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["temperature"] == 0 and sent["messages"] == [
        {"role": "user", "content": "How many clips?"}
    ]


def test_llama_cpp_server_stream_with_usage_in_the_last_chunk() -> None:
    def script(reply: Reply, body: dict, index: int) -> None:
        reply.start_events()
        for piece in pieces(REASONING):
            reply.event(llamacpp_chunk({"reasoning_content": piece}))
        for piece in pieces(ANSWER):
            reply.event(llamacpp_chunk({"content": piece}))
        usage = {"completion_tokens": 40, "prompt_tokens": 12, "total_tokens": 52}
        reply.event(llamacpp_chunk({}, finish="stop", usage=usage))
        reply.end_events()

    with replay_server(owned_by="llamacpp", model="Fathom-R1-14B-Q4_K_M.gguf") as server:
        server.script = script
        engine = connect(server.url)
        assert engine.loaded.n_ctx == 131072 and engine.kind.name == "llama.cpp server"
        _, finished = run(engine)
    assert (finished.reasoning, finished.answer) == (REASONING.strip(), ANSWER)
    stats = finished.stats
    assert stats.prompt_tokens == 12 and stats.reasoning_tokens + stats.answer_tokens == 40
    assert server.requests[0]["repeat_penalty"] == 1.0  # llama.cpp's default would be 1.1


def test_a_stream_cut_in_the_middle_keeps_the_partial_reply() -> None:
    def script(reply: Reply, body: dict, index: int) -> None:
        reply.start_events()
        for piece in pieces(REASONING)[:6]:
            reply.event(vllm_chunk({"reasoning_content": piece}))
        reply.cut()

    with replay_server() as server:
        server.script = script
        _, finished = run(connect(server.url))
    assert finished.stats.finish_reason is FinishReason.INTERRUPTED
    assert finished.reasoning == "".join(pieces(REASONING)[:6]).rstrip()
    assert finished.answer == ""


def test_fathom_chat_server_json_and_a_cut_stream(capsys: pytest.CaptureFixture[str]) -> None:
    with replay_server() as server:
        server.script = lambda reply, body, i: stream_vllm(reply, REASONING, ANSWER)
        assert chat_cli.main(["--server", server.url, "--prompt", "How many?", "--json"]) == 0
        whole = json.loads(capsys.readouterr().out)
        assert set(whole) == {
            "reasoning",
            "answer",
            "finish_reason",
            "stats",
            "n_ctx",
            "n_gpu_layers",
            "boxed",
        }
        assert (whole["reasoning"], whole["answer"], whole["boxed"]) == (
            REASONING.strip(),
            ANSWER,
            "72",
        )

        def cut(reply: Reply, body: dict, index: int) -> None:
            reply.start_events()
            reply.event(vllm_chunk({"reasoning_content": "Natalia sold"}))
            reply.cut()

        server.script = cut
        code = chat_cli.main(["--server", server.url, "--prompt", "How many?", "--json"])
        out, err = capsys.readouterr()
    assert code == 1
    partial = json.loads(out)
    assert partial["finish_reason"] == "interrupted" and partial["reasoning"] == "Natalia sold"
    assert err.count("\n") == 1 and "broke mid-reply" in err


def test_stop_ends_a_stalled_stream_at_once_and_the_server_sees_it() -> None:
    seen: dict[str, bool] = {}

    def script(reply: Reply, body: dict, index: int) -> None:
        reply.start_events()
        reply.event(vllm_chunk({"reasoning_content": "Thinking"}))
        seen["client_left"] = reply.client_left(within_s=5)  # the server stalls meanwhile

    with replay_server() as server:
        server.script = script
        engine = connect(server.url)
        control = GenerationControl()
        stream = engine.generate(ASK, GREEDY, control)
        for event in stream:
            if isinstance(event, TextDelta):
                break
        threading.Timer(0.2, control.cancel.set).start()
        started = time.monotonic()
        rest = list(stream)
        elapsed = time.monotonic() - started
        time.sleep(0.1)
    assert rest[-1].stats.finish_reason is FinishReason.CANCELLED
    assert elapsed < 0.2 + 0.3  # not the 5 s the server would have stalled
    assert seen["client_left"]


def _stall_reasoning(reply: Reply, body: dict, index: int) -> None:
    if index == 0:
        reply.start_events()
        reply.event(vllm_chunk({"reasoning_content": "Adding 48 and"}))
        reply.client_left(within_s=5)
    else:
        stream_vllm(reply, "", "72 clips. \\boxed{72}")


@pytest.mark.parametrize(
    ("owned_by", "extra"),
    [
        ("vllm", {"continue_final_message": True, "add_generation_prompt": False}),
        ("llamacpp", {}),
    ],
)
def test_answer_now_continues_the_reply_with_its_reasoning_closed(
    owned_by: str, extra: dict
) -> None:
    with replay_server(owned_by=owned_by) as server:
        server.script = _stall_reasoning
        engine = connect(server.url)
        assert engine.answer_now_unsupported_reason is None
        control = GenerationControl()
        threading.Timer(0.3, control.answer_now.set).start()
        _, finished = run(engine, control)
    assert finished.reasoning == "Adding 48 and"
    assert finished.answer == "72 clips. \\boxed{72}"
    assert finished.stats.thinking_closed_early
    continued = server.requests[1]
    assert continued["messages"][-1] == {
        "role": "assistant",
        "content": "Adding 48 and\n</think>\n\n",
    }
    for key, value in extra.items():
        assert continued[key] == value
    if not extra:
        assert "continue_final_message" not in continued


def test_answer_now_is_reported_unsupported_where_a_server_cannot_continue() -> None:
    with replay_server(owned_by="me", model="fathom.gguf") as server:
        engine = connect(server.url)
    assert "cannot continue" in engine.answer_now_unsupported_reason


def test_consensus_is_one_request_with_n_where_the_server_supports_it() -> None:
    answers = ["\\boxed{72}", "\\boxed{72}", "\\boxed{70}"]

    def script(reply: Reply, body: dict, index: int) -> None:
        reply.start_events()
        for step in range(3):  # the choices interleave, as vLLM sends them
            for choice, answer in enumerate(answers):
                delta = {"reasoning_content": f"r{step} "} if step < 2 else {"content": answer}
                reply.event(vllm_chunk(delta, index=choice))
        for choice in range(3):
            reply.event(vllm_chunk({}, finish="stop", index=choice))
        reply.event(vllm_usage(prompt=10, completion=9))
        reply.end_events()

    with replay_server(owned_by="vllm") as server:
        server.script = script
        seen: list[int] = []
        result = connect(server.url).consensus(
            ASK, SamplingParams(seed=3), 3, on_event=lambda i, e: seen.append(i)
        )
    assert len(server.requests) == 1 and server.requests[0]["n"] == 3
    assert result.answer == "72" and result.votes == {"72": 2, "70": 1}
    assert [s.reasoning for s in result.samples] == ["r0 r1"] * 3
    assert set(seen) == {0, 1, 2}


def test_consensus_elsewhere_is_k_requests_a_few_at_a_time() -> None:
    def script(reply: Reply, body: dict, index: int) -> None:
        time.sleep(0.2)  # long enough for the requests to overlap
        stream_vllm(reply, "r", f"\\boxed{{{body['seed']}}}")

    with replay_server(owned_by="llamacpp") as server:
        server.script = script
        result = connect(server.url, max_parallel=2).consensus(ASK, SamplingParams(seed=5), 5)
    assert sorted(r["seed"] for r in server.requests) == [5, 6, 7, 8, 9]
    assert all("n" not in r for r in server.requests)
    assert server.max_in_flight == 2
    assert result.boxed == ("5", "6", "7", "8", "9")  # in sample order, whatever finished first


# -- failures: one line each ---------------------------------------------------------------


def _status(status: int, message: str, headers: dict | None = None):
    def script(reply: Reply, body: dict, index: int) -> None:
        reply.send_json(
            status, {"error": {"message": message, "type": "x", "code": status}}, headers
        )

    return script


@pytest.mark.parametrize(
    ("status", "said", "words"),
    [
        (401, "Invalid API key", "refused the API key (401)"),
        (403, "Forbidden", "refused the API key (403)"),
        (404, "The model `x` does not exist.", "has no model"),
        (500, "CUDA out of memory", "failed (500): CUDA out of memory"),
        (503, "Service Unavailable", "failed (503)"),
        (400, "This model's maximum context length is 16384 tokens", "too long"),
    ],
)
def test_http_failures_are_one_line(status: int, said: str, words: str) -> None:
    with replay_server() as server:
        server.script = _status(status, said)
        engine = connect(server.url)
        error_type = PromptTooLongError if status == 400 else RemoteError
        with pytest.raises(error_type) as caught:
            engine.generate(ASK, GREEDY)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_bad_key_when_connecting() -> None:
    with replay_server(models_status=401) as server, pytest.raises(RemoteError) as caught:
        connect(server.url, api_key="wrong")
    assert "refused the API key (401)" in str(caught.value)


def test_unknown_model_when_connecting_names_what_the_server_has() -> None:
    with replay_server() as server, pytest.raises(RemoteError) as caught:
        connect(server.url, model="Fathom-R1-70B")
    assert "no model 'Fathom-R1-70B'" in str(caught.value) and "Fathom-R1-14B" in str(caught.value)


def test_429_waits_as_long_as_retry_after_says_then_succeeds() -> None:
    def script(reply: Reply, body: dict, index: int) -> None:
        if index == 0:
            _status(429, "Too many requests", {"Retry-After": "1"})(reply, body, index)
        else:
            stream_vllm(reply, REASONING, ANSWER)

    with replay_server() as server:
        server.script = script
        engine = connect(server.url)
        started = time.monotonic()
        _, finished = run(engine)
    assert time.monotonic() - started >= 1.0
    assert len(server.requests) == 2 and finished.answer == ANSWER


def test_429_that_persists_says_when_to_try_again() -> None:
    with replay_server() as server:
        server.script = _status(429, "slow down", {"Retry-After": "0"})
        engine = connect(server.url, max_retries=1)
        with pytest.raises(RemoteError) as caught:
            engine.generate(ASK, GREEDY)
    assert "(429)" in str(caught.value) and "try again in 0 s" in str(caught.value)
    assert len(server.requests) == 2


def test_refused_connection() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteError) as caught:
        connect(f"http://127.0.0.1:{port}/v1")
    assert "refused" in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)  # no resolver is ever asked
    with pytest.raises(RemoteError) as caught:
        connect("http://gpu-box.example:8000/v1")
    assert "does not resolve" in str(caught.value) and "gpu-box.example:8000" in str(caught.value)


def test_tls_failure() -> None:
    with replay_server() as server, pytest.raises(RemoteError) as caught:
        connect(server.url.replace("http://", "https://"))  # it speaks plain HTTP
    assert "TLS" in str(caught.value)


def test_timeout_when_the_server_goes_silent() -> None:
    with replay_server() as server:
        server.script = lambda reply, body, i: reply.client_left(within_s=3)
        engine = connect(server.url, read_timeout_s=0.3)
        with pytest.raises(RemoteError) as caught:
            engine.generate(ASK, GREEDY)
    assert "sent nothing for 0 s" in str(caught.value) or "timed out" in str(caught.value).lower()


def test_a_url_that_is_not_an_openai_api() -> None:
    with replay_server(models_html=True) as server, pytest.raises(RemoteError) as caught:
        connect(server.url)
    assert "did not answer with JSON" in str(caught.value)
    with replay_server() as server, pytest.raises(RemoteError) as caught:
        connect(server.url.replace("/v1", "/api/v1"))
    assert "No OpenAI-compatible API at" in str(caught.value) and "(404)" in str(caught.value)


def test_thinking_budget_closes_the_reasoning_by_prefill_on_llama_cpp_server() -> None:
    def script(reply: Reply, body: dict, index: int) -> None:
        if index == 0:
            reply.start_events()
            for word in ["Add ", "48 ", "and ", "24 ", "and ", "then "] * 5:
                reply.event(llamacpp_chunk({"reasoning_content": word}))
                time.sleep(0.02)
            reply.client_left(within_s=2)
        else:
            stream_vllm(reply, "", "\\boxed{72}")

    with replay_server(owned_by="llamacpp") as server:
        server.script = script
        _, finished = run(connect(server.url), sampling=SamplingParams(thinking_budget=3))
    assert finished.stats.thinking_closed_early and finished.answer == "\\boxed{72}"
    assert server.requests[1]["messages"][-1]["content"].startswith("Add 48 and")
    assert "thinking_budget" not in server.requests[0]  # not a llama.cpp field
