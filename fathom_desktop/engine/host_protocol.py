"""What crosses the pipe between the engine host and its client: the engine's own dataclasses,
written as plain data.

A message is a tuple of built-in values (str, int, float, bool, None, tuples, lists, dicts)
encoded with `marshal`, which can express nothing else: no message can name a class or make the
receiving process import a module, so the GUI process never loads `llama_cpp` by reading what the
host says. Dataclasses travel as `{"$": name, field: value, ...}`, enums and paths tagged the same
way, and only the types listed here are rebuilt on the other side.
"""

from __future__ import annotations

import dataclasses
import marshal
from enum import Enum
from pathlib import Path
from typing import Any

from fathom_desktop.engine import errors
from fathom_desktop.engine.consensus import ConsensusResult
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationStats,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
    SamplingParams,
    TextDelta,
)

_DATACLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ChatMessage,
        LoadOptions,
        SamplingParams,
        PhaseChanged,
        ContextTrimmed,
        GenerationStats,
        Finished,
        LoadReport,
        ConsensusResult,
    )
}
_ENUMS: dict[str, type[Enum]] = {cls.__name__: cls for cls in (DeltaKind, Phase, FinishReason)}
_ERRORS: dict[str, type[errors.EngineError]] = {
    cls.__name__: cls
    for cls in (
        errors.EngineError,
        errors.ModelFileError,
        errors.ModelNotLoadedError,
        errors.ModelLoadError,
        errors.PromptTooLongError,
        errors.DecodeError,
        errors.SettingsError,
        errors.BackendUnavailableError,
    )
}

# Requests (client → host). The host answers each with OK or ERROR; GENERATE and CONSENSUS first
# stream EVENT / SAMPLE_EVENT messages. CANCEL and ANSWER_NOW act on the running request.
LOAD, CLOSE, COUNT_TOKENS, GENERATE, CONSENSUS, SHUTDOWN = (
    "load",
    "close",
    "count_tokens",
    "generate",
    "consensus",
    "shutdown",
)
CANCEL, ANSWER_NOW = "cancel", "answer_now"
CONTROLS = frozenset({CANCEL, ANSWER_NOW})
# Replies (host → client).
OK, ERROR, STARTED, EVENT, SAMPLE_EVENT = "ok", "error", "started", "event", "sample_event"

# The marker the host puts before each llama.cpp error line on its stderr.
LOG_ERROR_PREFIX = "llama.cpp error: "


def dumps(message: tuple[Any, ...]) -> bytes:
    return marshal.dumps(message)


def loads(data: bytes) -> tuple[Any, ...]:
    message = marshal.loads(data)
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ValueError("malformed engine host message")
    return message


def encode(value: Any) -> Any:
    # The hot path: one TextDelta per message while a reply streams.
    if type(value) is TextDelta:
        return {"$delta": (value.kind.value, value.text, value.tokens)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _DATACLASSES.get(name) is not type(value):
            raise TypeError(f"{name} cannot cross the engine host pipe")
        data = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        data["$"] = name
        return data
    if isinstance(value, Enum):
        return {"$enum": type(value).__name__, "value": value.value}
    if isinstance(value, Path):
        return {"$path": str(value)}
    if isinstance(value, tuple):
        return tuple(encode(item) for item in value)
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(decode(item) for item in value)
    if isinstance(value, list):
        return [decode(item) for item in value]
    if isinstance(value, dict):
        if "$delta" in value:
            kind, text, tokens = value["$delta"]
            return TextDelta(DeltaKind(kind), text, tokens)
        if "$" in value:
            cls = _DATACLASSES[value["$"]]
            return cls(**{k: decode(v) for k, v in value.items() if k != "$"})
        if "$enum" in value:
            return _ENUMS[value["$enum"]](value["value"])
        if "$path" in value:
            return Path(value["$path"])
        return {key: decode(item) for key, item in value.items()}
    return value


def encode_error(error: BaseException) -> tuple[str, str]:
    """(class name, one-line message) for an error raised in the host."""
    if isinstance(error, errors.EngineError) and type(error).__name__ in _ERRORS:
        return type(error).__name__, str(error)
    if isinstance(error, errors.EngineError):
        return "EngineError", str(error)
    return "EngineError", f"The engine failed: {type(error).__name__}: {error}"


def decode_error(name: str, message: str) -> errors.EngineError:
    return _ERRORS.get(name, errors.EngineError)(message)
