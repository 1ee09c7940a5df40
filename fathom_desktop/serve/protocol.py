"""OpenAI's chat-completions wire format: requests read into engine types, replies written back.

Only the fields a chat front end sends are honoured; unknown fields are ignored, as OpenAI-style
servers do, so clients that send more (tools they will not use, logit_bias left empty) still work.
Reasoning travels in `reasoning_content` (DeepSeek's convention, also vLLM's and llama.cpp's).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fathom_desktop.engine.types import (
    FATHOM_TEMPERATURE,
    FATHOM_TOP_P,
    ChatMessage,
    FinishReason,
    GenerationStats,
    Role,
    SamplingParams,
)

MAX_CHOICES = 16  # n > 1 samples one after another; more would hold the queue for too long
MAX_STOP_SEQUENCES = 4  # OpenAI's own limit
# The extension field for the thinking budget (reasoning tokens before the answer is asked for).
THINKING_BUDGET_FIELD = "thinking_budget"

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
}


class ApiError(Exception):
    """An error reply in OpenAI's JSON shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatMessage]
    sampling: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    model: str | None = None


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"'{name}' must be a number.", name)
    if not low <= value <= high:
        raise _invalid(f"'{name}' must be between {low:g} and {high:g}; got {value}.", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"'{name}' must be a whole number.", name)
    if value < low:
        raise _invalid(f"'{name}' must be at least {low}; got {value}.", name)
    return value


def _content(value: Any, index: int) -> str:
    """A message's text: a string, or a list of text parts (images are not supported)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _invalid(f"messages[{index}]: only text content is supported.", "messages")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if value is None:
        return ""
    raise _invalid(f"messages[{index}].content must be a string.", "messages")


def _messages(body: dict[str, Any]) -> list[ChatMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _invalid("'messages' must be a non-empty list.", "messages")
    messages = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _invalid(f"messages[{index}] must be an object.", "messages")
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise _invalid(
                f"messages[{index}].role '{item.get('role')}' is not supported; use system, "
                "user or assistant.",
                "messages",
            )
        messages.append(ChatMessage(role, _content(item.get("content"), index)))
    if messages[-1].role != "user":
        raise _invalid("The last message must be the user's.", "messages")
    return messages


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("'stop' must be a string or a list of strings.", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _invalid(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.", "stop")
    return tuple(s for s in stops if s)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body; raises ApiError(400) naming the offending field."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise _invalid("'top_p' must be greater than 0.", "top_p")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _invalid("'seed' must be a whole number.", "seed")
    n = _integer(body, "n", 1) or 1
    if n > MAX_CHOICES:
        raise _invalid(f"'n' can be at most {MAX_CHOICES}.", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be true or false.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object.", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("'model' must be a string.", "model")
    sampling = SamplingParams(
        temperature=FATHOM_TEMPERATURE if temperature is None else temperature,
        top_p=FATHOM_TOP_P if top_p is None else top_p,
        seed=seed,
        max_tokens=max_tokens,
        thinking_budget=_integer(body, THINKING_BUDGET_FIELD, 0),
    )
    return ChatRequest(
        messages=_messages(body),
        sampling=sampling,
        n=n,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        stop=_stop(body),
        model=model,
    )


# -- replies ---------------------------------------------------------------------------------


def finish_reason(reason: FinishReason, *, stopped_by_sequence: bool = False) -> str:
    if stopped_by_sequence or reason is FinishReason.STOP:
        return "stop"
    if reason in (FinishReason.LENGTH, FinishReason.CONTEXT):
        return "length"
    return "stop"  # cancelled: the client left, or a stop sequence ended it


@dataclass
class Usage:
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0

    def add(self, stats: GenerationStats) -> None:
        self.prompt_tokens = stats.prompt_tokens
        self.reasoning_tokens += stats.reasoning_tokens
        self.answer_tokens += stats.answer_tokens

    def body(self) -> dict[str, Any]:
        completion = self.reasoning_tokens + self.answer_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


@dataclass
class ReplyIds:
    """What every chunk and reply of one request shares."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{secrets.token_hex(12)}")
    created: int = field(default_factory=lambda: int(time.time()))

    def envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def chunk(ids: ReplyIds, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict:
    body = ids.envelope("chat.completion.chunk")
    body["choices"] = choices
    if usage is not None:
        body["usage"] = usage.body()
    return body


def delta_choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def message_choice(index: int, reasoning: str, answer: str, finish: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    message["reasoning_content"] = reasoning or None
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
