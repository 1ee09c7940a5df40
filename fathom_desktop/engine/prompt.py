"""What the model is sent: the prompt presets, and the text a continued reply starts from.

Every front end (the window, `fathom-chat`) builds its messages here, so the evaluation preset and
the continuation of an unfinished reply mean the same thing everywhere. The chat template then
renders them (engine/chat_template.py) and the engine fits them to the context (engine/context.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fathom_desktop.engine.reasoning import THINK_CLOSE, THINK_OPEN
from fathom_desktop.engine.types import FATHOM_EVAL_INSTRUCTION, ChatMessage

# How an R1 reasoning conventionally ends before its answer (what the model itself writes).
REASONING_END = f"\n{THINK_CLOSE}\n\n"


def with_eval_instruction(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Fathom's evaluation preset: the instruction goes into the last user message.

    R1-family models are evaluated with this directive in the user turn and no system prompt; the
    boxed answer it asks for is what `consensus` votes on.
    """
    result = list(messages)
    for index in range(len(result) - 1, -1, -1):
        message = result[index]
        if message.role == "user":
            if FATHOM_EVAL_INSTRUCTION not in message.content:
                content = f"{message.content.rstrip()}\n{FATHOM_EVAL_INSTRUCTION}"
                result[index] = ChatMessage(role="user", content=content)
            break
    return result


def conversation_for_model(
    turns: Sequence[ChatMessage], *, system_prompt: str, eval_preset: bool
) -> list[ChatMessage]:
    """The messages to send for a conversation's `turns` (user and assistant messages).

    With the evaluation preset there is no system prompt and the instruction rides in the last
    user message; otherwise a non-empty `system_prompt` goes first. A reply that never reached its
    answer adds nothing the model can use and is left out, unless it is the `partial` reply that
    is being continued.
    """
    messages: list[ChatMessage] = []
    if system_prompt and not eval_preset:
        messages.append(ChatMessage("system", system_prompt))
    for message in turns:
        if message.role == "assistant" and not message.partial and not message.content.strip():
            continue
        if message.role in ("user", "assistant"):
            messages.append(message)
    return with_eval_instruction(messages) if eval_preset else messages


def split_continuation(
    messages: Sequence[ChatMessage],
) -> tuple[list[ChatMessage], ChatMessage | None]:
    """(the conversation up to its last user message, the partial reply to continue or None)."""
    if messages and messages[-1].partial:
        if messages[-1].role != "assistant":
            raise ValueError("only an assistant reply can be continued")
        return list(messages[:-1]), messages[-1]
    return list(messages), None


@dataclass(frozen=True)
class Continuation:
    """The start of a reply written into the prompt, after the template's generation prompt."""

    text: str
    # True when `text` ends inside the reasoning, so the model goes on thinking.
    in_reasoning: bool

    @classmethod
    def of(cls, partial: ChatMessage, *, prompt_opens_reasoning: bool) -> Continuation:
        """What to append for `partial` to a prompt (R1 templates already opened `<think>`)."""
        reasoning = partial.reasoning or ""
        answer = partial.content
        opener = "" if prompt_opens_reasoning or not reasoning else f"{THINK_OPEN}\n"
        if not answer:
            if not reasoning and not prompt_opens_reasoning:
                return cls("", in_reasoning=False)
            return cls(opener + reasoning, in_reasoning=True)
        if not reasoning and not prompt_opens_reasoning:
            return cls(answer, in_reasoning=False)
        return cls(opener + reasoning + REASONING_END + answer, in_reasoning=False)
