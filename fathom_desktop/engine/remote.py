"""RemoteEngine: the ChatEngine of a model served elsewhere over OpenAI's chat-completions API.

For models too large for one GPU (vLLM at BF16 across GPUs or machines), llama.cpp's server on
another machine, or fathom-serve. Nothing here connects anywhere until `load` is called with an
endpoint; the app stays offline unless a user configures one.

HTTP goes through httpx2 (the maintained httpx line; huggingface-hub and the openai client already
depend on it), with its SSE reader. The openai client itself is not used: it retries on its own,
hides non-standard fields such as `reasoning_content`, and gives no handle on the socket, which
Stop needs to end a stream at once.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2

from fathom_desktop.engine.consensus import (
    ConsensusResult,
    SampleOrder,
    consensus,
    majority_vote,
)
from fathom_desktop.engine.context import answer_only
from fathom_desktop.engine.errors import ModelNotLoadedError
from fathom_desktop.engine.remote_server import (
    CONNECT_TIMEOUT_S,
    KINDS,
    UNKNOWN_KIND,
    RemoteEndpoint,
    RemoteError,
    ServerKind,
    check_response,
    describe_failure,
    retry_wait,
)
from fathom_desktop.engine.remote_stream import ChoiceState, RemoteReasoning, StreamCloser
from fathom_desktop.engine.types import (
    ChatMessage,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
)


class RemoteEngine:
    """ChatEngine over HTTP. Like the local engine, one generation at a time per caller."""

    def __init__(self, endpoint: RemoteEndpoint, *, interleave_samples: bool = False) -> None:
        self.endpoint = endpoint
        # The window shows the samples side by side and takes their events as they come; a
        # terminal prints one sample after another (SampleOrder), as the local engine does.
        self._interleave_samples = interleave_samples
        self._client: httpx2.Client | None = None
        self._model: str | None = None
        self._report: LoadReport | None = None
        self.kind = UNKNOWN_KIND

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def loaded(self) -> LoadReport | None:
        return self._report

    @property
    def answer_now_unsupported_reason(self) -> str | None:
        return self.kind.answer_now_unsupported_reason

    def load(self, options: LoadOptions | None = None) -> LoadReport:
        """Connect: list the server's models and pick ours. `options` do not apply remotely."""
        self.close()
        headers = (
            {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        )
        self._client = httpx2.Client(
            headers=headers,
            timeout=httpx2.Timeout(self.endpoint.read_timeout_s, connect=CONNECT_TIMEOUT_S),
        )
        try:
            return self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> LoadReport:
        listing = self._json(self._request("GET", "/models"))
        data = listing.get("data") if isinstance(listing, dict) else None
        models = [m for m in data or [] if isinstance(m, dict) and "id" in m]
        if not models:
            raise RemoteError(f"{self.endpoint.base} lists no models.")
        wanted = self.endpoint.model
        chosen = next((m for m in models if m["id"] == wanted), None) if wanted else models[0]
        if chosen is None:
            offered = ", ".join(str(m["id"]) for m in models[:5])
            raise RemoteError(
                f"The server has no model '{wanted}'; it offers: {offered}.", status=404
            )
        self._model = str(chosen["id"])
        self.kind = KINDS.get(str(chosen.get("owned_by")), UNKNOWN_KIND)
        meta = chosen.get("meta") if isinstance(chosen.get("meta"), dict) else {}
        n_ctx = chosen.get("max_model_len") or meta.get("n_ctx") or meta.get("n_ctx_train") or 0
        self._report = LoadReport(
            model_path=Path(self._model),
            n_ctx=int(n_ctx),
            n_gpu_layers=0,
            n_layers=0,
            flash_attn=False,
            kv_cache_type="f16",
            gpu_offload_supported=False,
            file_type="remote",
            notes=(f"{self.kind.name} at {self.endpoint.base}, model {self._model}",),
        )
        return self._report

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._report = None
        self._model = None

    def _json(self, response: httpx2.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RemoteError(
                f"{response.request.url} did not answer with JSON; is this an OpenAI-compatible "
                "API (its URL usually ends in /v1)?"
            ) from None

    def _require(self) -> httpx2.Client:
        if self._client is None or self._model is None:
            raise ModelNotLoadedError("Not connected to a server; connect first.")
        return self._client

    # -- requests ------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, root: bool = False, **kwargs: Any
    ) -> httpx2.Response:
        client = self._client
        assert client is not None
        url = (self.endpoint.root if root else self.endpoint.base) + path
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                response = client.request(method, url, **kwargs)
            except httpx2.TransportError as error:
                raise RemoteError(describe_failure(error, self.endpoint)) from None
            wait = retry_wait(response, attempt, self.endpoint.max_retries)
            if wait is None:
                check_response(response, self._model or self.endpoint.model)
                return response
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _open_stream(self, payload: dict[str, Any]) -> httpx2.Response:
        client = self._require()
        for attempt in range(self.endpoint.max_retries + 1):
            request = client.build_request(
                "POST", f"{self.endpoint.base}/chat/completions", json=payload
            )
            try:
                response = client.send(request, stream=True)
            except httpx2.TransportError as error:
                raise RemoteError(describe_failure(error, self.endpoint)) from None
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            wait = retry_wait(response, attempt, self.endpoint.max_retries)
            if wait is None:
                check_response(response, self._model or self.endpoint.model)
            else:
                time.sleep(wait)
        raise AssertionError("unreachable")

    def count_tokens(self, text: str) -> int:
        self._require()
        path = self.kind.tokenize
        if path is None:
            raise RemoteError(f"{self.kind.name} does not offer token counting.")
        if path == "/extras/tokenize/count":
            body: dict[str, Any] = {"input": text}
        elif self.kind.name == "llama.cpp server":
            body = {"content": text}
        else:
            body = {"model": self._model, "prompt": text, "add_special_tokens": False}
        data = self._json(self._request("POST", path, root=True, json=body))
        if "count" in data:
            return int(data["count"])
        return len(data.get("tokens", []))

    # -- generation ----------------------------------------------------------------------------

    def _payload(self, messages: list[ChatMessage], sampling: SamplingParams, n: int = 1) -> dict:
        payload: dict[str, Any] = {
            "model": self._model,
            # Earlier answers travel without their reasoning, as they do to the local engine.
            "messages": [{"role": m.role, "content": answer_only(m).content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.max_tokens is not None:
            payload["max_tokens"] = sampling.max_tokens
        if n > 1:
            payload["n"] = n
        if self.kind is not UNKNOWN_KIND:  # OpenAI-style servers that take llama.cpp's samplers
            payload["top_k"] = sampling.top_k
            payload["min_p"] = sampling.min_p
            payload["repeat_penalty" if self.kind.name != "vLLM" else "repetition_penalty"] = (
                sampling.repeat_penalty
            )
        if sampling.thinking_budget is not None and self.kind.name == "fathom-serve":
            payload["thinking_budget"] = sampling.thinking_budget
        return payload

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        """Send the request now (refusals raise here), then stream its events."""
        self._require()
        if not messages or messages[-1].role != "user":
            raise ValueError("a conversation sent to the model must end with a user message")
        payload = self._payload(messages, sampling)
        response = self._open_stream(payload)
        return self._stream(response, payload, sampling, control or GenerationControl())

    def _stream(
        self,
        response: httpx2.Response,
        payload: dict[str, Any],
        sampling: SamplingParams,
        control: GenerationControl,
    ) -> Iterator[StreamEvent]:
        state = ChoiceState(
            splitter=RemoteReasoning(
                template_opens_reasoning=self.endpoint.template_opens_reasoning
            )
        )
        yield PhaseChanged(Phase.PROMPT)
        while True:
            outcome = yield from _events_only(self._read(response, control, {0: state}, sampling))
            if outcome != "answer_now":
                break
            # Continue the same reply with its reasoning closed (vLLM / llama.cpp prefill).
            state.closed_early = True
            yield from state.events(state.splitter.close_reasoning())
            response = self._open_stream(self._continuation(payload, state))
        finish = state.finish or FinishReason.STOP
        if outcome == "cancelled":
            finish = FinishReason.CANCELLED
        elif outcome == "cut":
            finish = FinishReason.INTERRUPTED
        events, finished = state.finished(finish, prompt_tokens=0)
        yield from events
        yield finished

    def _continuation(self, payload: dict[str, Any], state: ChoiceState) -> dict[str, Any]:
        prefix = "".join(state.reasoning) + "\n</think>\n\n" + "".join(state.answer)
        messages = [*payload["messages"], {"role": "assistant", "content": prefix}]
        continued = {**payload, "messages": messages}
        if self.kind.prefill == "continue_final_message":
            continued.update(continue_final_message=True, add_generation_prompt=False)
        if "max_tokens" in payload:
            spent = state.reasoning_chunks + state.answer_chunks
            continued["max_tokens"] = max(1, payload["max_tokens"] - spent)
        return continued

    def _read(
        self,
        response: httpx2.Response,
        control: GenerationControl,
        states: dict[int, ChoiceState],
        sampling: SamplingParams,
    ) -> Generator[tuple[int, StreamEvent], None, str]:
        """(choice index, event) for every choice in `states`, until the stream ends.

        Returns "done", "cancelled", "cut" (the connection broke) or "answer_now".
        """
        stopper = StreamCloser(
            response,
            lambda: (
                control.cancel.is_set()
                or (len(states) == 1 and self._wants_answer_now(states[0], control, sampling))
            ),
        )
        try:
            for sse in httpx2.EventSource(response):
                if sse.data.strip() == "[DONE]":
                    return "done"
                try:
                    data = sse.json()
                except ValueError:
                    continue  # a comment or keep-alive some servers send as data
                if not isinstance(data, dict):
                    continue
                if "error" in data:
                    said = (
                        data["error"].get("message")
                        if isinstance(data["error"], dict)
                        else data["error"]
                    )
                    raise RemoteError(f"The server failed mid-reply: {said}")
                if data.get("usage"):
                    for state in states.values():
                        state.usage = data["usage"]
                for choice in data.get("choices") or []:
                    state = states.get(int(choice.get("index", 0)))
                    if state is None:
                        continue
                    for event in state.on_delta(choice.get("delta") or {}):
                        yield int(choice.get("index", 0)), event
                    state.on_finish_reason(choice.get("finish_reason"))
                if control.cancel.is_set():
                    return "cancelled"
                if len(states) == 1 and self._wants_answer_now(states[0], control, sampling):
                    return "answer_now"
            return self._ended_early(control, states, sampling) or (
                "done" if all(s.finish for s in states.values()) else "cut"
            )
        except (httpx2.TransportError, httpx2.StreamError) as error:
            ended = self._ended_early(control, states, sampling)
            if ended:
                return ended
            if isinstance(error, httpx2.SSEError):
                raise RemoteError(
                    f"The server did not answer with an event stream ({error})."
                ) from None
            return "cut"
        finally:
            stopper.done()
            response.close()

    def _ended_early(
        self, control: GenerationControl, states: dict[int, ChoiceState], sampling: SamplingParams
    ) -> str | None:
        """Why the client ended the stream itself, if it did."""
        if control.cancel.is_set():
            return "cancelled"
        if len(states) == 1 and self._wants_answer_now(states[0], control, sampling):
            return "answer_now"
        return None

    def _wants_answer_now(
        self, state: ChoiceState, control: GenerationControl, sampling: SamplingParams
    ) -> bool:
        if self.kind.prefill is None or state.closed_early:
            return False
        if state.splitter.phase is not DeltaKind.REASONING:
            return False
        budget = sampling.thinking_budget
        over_budget = (
            budget is not None
            and self.kind.name != "fathom-serve"
            and (state.reasoning_chunks >= budget)
        )
        return control.answer_now.is_set() or over_budget

    def consensus(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl | None = None,
        on_event: Callable[[int, StreamEvent], None] | None = None,
        *,
        parallel: int | None = None,
    ) -> ConsensusResult:
        """One request with n=k where the server supports it, else k requests, a few at once."""
        control = control or GenerationControl()
        if k == 1:
            return consensus(self, messages, sampling, 1, control, on_event)
        # The samples stream at once; unless the caller takes them interleaved, it sees them one
        # after another, as locally.
        order = (
            SampleOrder(on_event)
            if on_event is not None and not self._interleave_samples
            else None
        )
        sink = order or on_event
        try:
            if self.kind.n_choices:
                return self._consensus_in_one_request(messages, sampling, k, control, sink)
            return self._consensus_in_parallel(messages, sampling, k, control, sink, parallel)
        finally:
            if order is not None:
                order.flush()

    def _consensus_in_one_request(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl,
        on_event: Callable[[int, StreamEvent], None] | None,
    ) -> ConsensusResult:
        self._require()
        response = self._open_stream(self._payload(messages, sampling, n=k))
        states = {
            i: ChoiceState(
                splitter=RemoteReasoning(
                    template_opens_reasoning=self.endpoint.template_opens_reasoning
                )
            )
            for i in range(k)
        }
        reader = self._read(response, control, states, sampling)
        try:
            while True:
                index, event = next(reader)
                if on_event is not None:
                    on_event(index, event)
        except StopIteration as stop:
            outcome = stop.value
        finished: list[Finished] = []
        for index, state in states.items():
            finish = state.finish or {
                "cancelled": FinishReason.CANCELLED,
                "cut": FinishReason.INTERRUPTED,
            }.get(outcome, FinishReason.STOP)
            events, done = state.finished(finish, prompt_tokens=0)
            for event in [*events, done]:
                if on_event is not None:
                    on_event(index, event)
            finished.append(done)
        return majority_vote(finished)

    def _consensus_in_parallel(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl,
        on_event: Callable[[int, StreamEvent], None] | None,
        parallel: int | None,
    ) -> ConsensusResult:
        """k single requests, at most `parallel` in flight; events reach `on_event` on the
        caller's thread, in the order they arrived."""
        self._require()
        inbox: queue.Queue[tuple[int, StreamEvent | BaseException | None]] = queue.Queue()

        def sample(index: int) -> None:
            try:
                if control.cancel.is_set():
                    return
                seed = None if sampling.seed is None else sampling.seed + index
                for event in self.generate(messages, replace(sampling, seed=seed), control):
                    inbox.put((index, event))
            except BaseException as error:
                inbox.put((index, error))
            finally:
                inbox.put((index, None))

        workers = max(1, min(k, parallel or self.endpoint.max_parallel))
        results: dict[int, Finished] = {}
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-sample") as pool:
            for index in range(k):
                pool.submit(sample, index)
            remaining = k
            while remaining:
                index, item = inbox.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    failure = failure or item
                    control.cancel.set()  # the others would likely fail the same way
                else:
                    if isinstance(item, Finished):
                        results[index] = item
                    if on_event is not None:
                        on_event(index, item)
        if failure is not None and not results:
            raise failure
        return majority_vote([results[i] for i in sorted(results)])


__all__ = ["RemoteEndpoint", "RemoteEngine", "RemoteError", "ServerKind"]


def _events_only(
    reader: Generator[tuple[int, StreamEvent], None, str],
) -> Generator[StreamEvent, None, str]:
    """One choice's events without their index; returns what the reader returned."""
    while True:
        try:
            _, event = next(reader)
        except StopIteration as stop:
            return stop.value
        yield event
