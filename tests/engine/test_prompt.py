"""What the model is sent: the presets, and where a continued reply picks up its text."""

from __future__ import annotations

import pytest

from fathom_desktop.engine.prompt import (
    REASONING_END,
    Continuation,
    conversation_for_model,
    split_continuation,
)
from fathom_desktop.engine.types import FATHOM_EVAL_INSTRUCTION, ChatMessage

TURNS = [
    ChatMessage("user", "What is 2 + 2?"),
    ChatMessage("assistant", "4", reasoning="Two and two."),
    ChatMessage("assistant", "", reasoning="A reply that never reached its answer."),
    ChatMessage("user", "And 3 + 3?"),
]


def test_the_eval_preset_puts_the_instruction_in_the_last_user_turn_and_sends_no_system():
    sent = conversation_for_model(TURNS, system_prompt="ignored", eval_preset=True)
    assert [(m.role, m.content) for m in sent] == [
        ("user", "What is 2 + 2?"),
        ("assistant", "4"),
        ("user", f"And 3 + 3?\n{FATHOM_EVAL_INSTRUCTION}"),
    ]


def test_a_custom_system_prompt_goes_first_and_empty_replies_are_left_out():
    sent = conversation_for_model(TURNS, system_prompt="Be brief.", eval_preset=False)
    assert [m.role for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0].content == "Be brief."
    assert conversation_for_model(TURNS, system_prompt="", eval_preset=False)[0].role == "user"


def test_a_partial_reply_is_sent_even_without_an_answer():
    partial = ChatMessage("assistant", "", reasoning="So far", partial=True)
    sent = conversation_for_model([*TURNS, partial], system_prompt="", eval_preset=True)
    assert sent[-1] == partial
    assert sent[-2].content.endswith(FATHOM_EVAL_INSTRUCTION)  # the last user turn still has it
    history, found = split_continuation(sent)
    assert found == partial and history == sent[:-1]
    assert split_continuation(sent[:-1]) == (sent[:-1], None)


@pytest.mark.parametrize(
    ("opens", "reasoning", "answer", "text", "in_reasoning"),
    [
        # R1 templates end the prompt with "<think>\n": the saved reasoning follows directly.
        (True, "Let me add", "", "Let me add", True),
        (True, "Done.", "The sum is", f"Done.{REASONING_END}The sum is", False),
        (True, "", "The sum is", f"{REASONING_END}The sum is", False),
        # Legacy templates leave the opening tag to the reply.
        (False, "Let me add", "", "<think>\nLet me add", True),
        (False, "Done.", "The sum is", f"<think>\nDone.{REASONING_END}The sum is", False),
        (False, "", "The sum is", "The sum is", False),
    ],
)
def test_the_prefill_ends_where_the_saved_reply_did(opens, reasoning, answer, text, in_reasoning):
    partial = ChatMessage("assistant", answer, reasoning=reasoning, partial=True)
    assert Continuation.of(partial, prompt_opens_reasoning=opens) == Continuation(
        text, in_reasoning
    )


def test_only_an_assistant_reply_can_be_continued():
    with pytest.raises(ValueError, match="only an assistant reply"):
        split_continuation([ChatMessage("user", "hi", partial=True)])
