"""Rendering conversations with the R1 chat templates, in the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fathom_desktop.engine.chat_template import ChatTemplate
from fathom_desktop.engine.errors import EngineError, ModelFileError
from fathom_desktop.engine.prompt import with_eval_instruction
from fathom_desktop.engine.reasoning import prompt_opens_reasoning
from fathom_desktop.engine.types import FATHOM_EVAL_INSTRUCTION, ChatMessage

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def template(fixture_dir: Path, legacy: bool) -> ChatTemplate:
    name = "tokenizer_config.legacy-template.json" if legacy else "tokenizer_config.json"
    config = json.loads((fixture_dir / "r1-distill-qwen-tokenizer" / name).read_text("utf-8"))
    return ChatTemplate(config["chat_template"], bos_token=BOS, eos_token=EOS)


CHAT = [
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "2+2?"),
    ChatMessage("assistant", "4", reasoning="two and two"),
    ChatMessage("user", "3+4?"),
]


def test_current_template_opens_the_reasoning(fixture_dir: Path):
    prompt = template(fixture_dir, legacy=False).render(CHAT)
    assert prompt == (
        f"{BOS}You are terse.<｜User｜>2+2?<｜Assistant｜>4{EOS}"
        "<｜User｜>3+4?<｜Assistant｜><think>\n"
    )
    assert prompt_opens_reasoning(prompt)


def test_legacy_template_leaves_the_opening_to_the_model(fixture_dir: Path):
    prompt = template(fixture_dir, legacy=True).render(CHAT)
    assert prompt.endswith("<｜User｜>3+4?<｜Assistant｜>")
    assert not prompt_opens_reasoning(prompt)
    assert "two and two" not in prompt


def test_sandbox_blocks_reaching_python_internals():
    hostile = ChatTemplate(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}", bos_token="", eos_token=""
    )
    with pytest.raises(EngineError) as raised:
        hostile.render([ChatMessage("user", "hi")])
    assert "chat template" in str(raised.value)


def test_broken_template_is_a_model_file_error():
    with pytest.raises(ModelFileError):
        ChatTemplate("{% for %}", bos_token="", eos_token="")


def test_eval_preset_appends_fathoms_instruction_once():
    messages = with_eval_instruction([ChatMessage("user", "Find x if 2x = 6.")])
    assert messages[-1].content == f"Find x if 2x = 6.\n{FATHOM_EVAL_INSTRUCTION}"
    assert with_eval_instruction(messages) == messages
