"""Bad input to the engine and to fathom-chat: one line, never a traceback, nothing sent."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from fathom_desktop.engine.errors import EngineError, ModelFileError, SettingsError
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.types import (
    ChatMessage,
    Finished,
    GenerationControl,
    Phase,
    PhaseChanged,
    SamplingParams,
    TextDelta,
)
from tests.engine.test_chat_cli import fathom_chat, one_line_error

QUESTION = [ChatMessage("user", "What is 3+4?")]


def usage_error(*args: str) -> str:
    done = fathom_chat(*args)
    assert done.returncode == 2 and done.stdout == ""
    return one_line_error(done)


@pytest.mark.parametrize(
    ("raw", "shown"), [(b"\xff", "byte 0xff at character 1"), (b"ok\xe2\x82", "bytes 0xe2 0x82")]
)
@pytest.mark.parametrize("option", ["--prompt", "--system"])
def test_prompt_that_is_not_utf8_is_one_line(option: str, raw: bytes, shown: str):
    # The bytes reach Python exactly as a shell passes $'\xff'.
    line = usage_error(option, os.fsdecode(raw), "--prompt", "fine")
    assert line.startswith(f"fathom-chat: argument {option}: is not valid UTF-8 text")
    assert shown in line


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--temperature", "nan", "must be a finite number, not nan"),
        ("--temperature", "inf", "must be a finite number, not inf"),
        ("--temperature", "-1", "cannot be negative"),
        ("--temperature", "warm", "'warm' is not a number"),
        ("--top-p", "nan", "must be a finite number"),
        ("--top-p", "0", "must be above 0 and at most 1"),
        ("--top-p", "1.5", "must be above 0 and at most 1"),
    ],
)
def test_sampling_values_that_are_not_finite_or_in_range_are_refused(
    option: str, value: str, says: str
):
    line = usage_error("--prompt", "hi", f"{option}={value}")
    assert line.startswith(f"fathom-chat: argument {option}: {says}")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("temperature", math.nan, "temperature must be a finite number"),
        ("temperature", math.inf, "temperature must be a finite number"),
        ("temperature", -0.5, "temperature cannot be negative"),
        ("top_p", math.nan, "top_p must be a finite number"),
        ("min_p", math.nan, "min_p must be a finite number"),
        ("min_p", 2.0, "min_p must be in [0, 1]"),
        ("repeat_penalty", math.inf, "repeat_penalty must be a finite number"),
        ("repeat_penalty", 0.0, "repeat penalty must be above 0"),
        ("top_k", -1, "top_k cannot be negative"),
    ],
)
def test_engine_refuses_sampling_values_before_generating(engine, field, value, says):
    with pytest.raises(SettingsError) as raised:
        engine.generate(QUESTION, SamplingParams(**{field: value}))
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_engine_refuses_a_lone_surrogate_in_one_line(engine):
    for message in ("\udcff", "fine, then \ud800"):
        with pytest.raises(EngineError) as raised:
            engine.generate([ChatMessage("user", message)], SamplingParams(max_tokens=1))
        assert "not text (an unpaired surrogate" in str(raised.value)
    with pytest.raises(EngineError):
        engine.count_tokens("\udcff")


def test_a_folder_or_a_device_is_not_called_missing(tmp_path: Path):
    with pytest.raises(ModelFileError) as raised:
        check_model_file(tmp_path)
    assert str(raised.value) == f"{tmp_path} is a folder, not a GGUF model file."
    with pytest.raises(ModelFileError) as raised:
        check_model_file("/dev/null")
    assert str(raised.value) == (
        "/dev/null is not a regular file, so it cannot be a GGUF model file."
    )


@pytest.mark.parametrize("where", ["folder", "/dev/null"])
def test_fathom_chat_says_what_the_model_path_is(tmp_path: Path, where: str):
    path = str(tmp_path) if where == "folder" else where
    line = one_line_error(fathom_chat("--model", path, "--prompt", "hi"))
    assert "no such model file" not in line
    assert ("is a folder" if where == "folder" else "is not a regular file") in line


def test_stopped_reply_counts_the_tokens_it_decoded(tiny_gguf_f32: Path):
    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import LoadOptions

    # The random tiny model may end its turn at once; ignoring its end token keeps it talking.
    engine = LlamaEngine(stop_at_end_of_generation=False)
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=512))
    try:
        for stop_after in (1, 7, 30):
            control = GenerationControl()
            deltas, prompt_tokens, finished = 0, 0, None
            stream = engine.generate(QUESTION, SamplingParams(seed=3, max_tokens=200), control)
            for event in stream:
                if isinstance(event, PhaseChanged) and event.phase is Phase.PROMPT:
                    prompt_tokens = event.prompt_tokens
                elif isinstance(event, TextDelta):
                    deltas += 1
                    if deltas == stop_after:
                        control.cancel.set()  # as the Stop button does, between tokens
                elif isinstance(event, Finished):
                    finished = event
            assert finished is not None and finished.stats.finish_reason.value == "cancelled"
            counted = finished.stats.reasoning_tokens + finished.stats.answer_tokens
            # Every token the model decoded for the reply went into the KV cache after the prompt.
            assert counted == engine.n_past - prompt_tokens
            assert stop_after <= counted < 200
    finally:
        engine.close()
