"""The context budget: prompt + reasoning + answer must fit in n_ctx.

Earlier assistant turns travel without their reasoning (the R1 templates drop it anyway, and it is
most of the tokens). If the history still leaves too little room for a reply, whole turns are
dropped, oldest first; the system prompt and the new message always stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fathom_desktop.engine.errors import PromptTooLongError
from fathom_desktop.engine.reasoning import THINK_CLOSE
from fathom_desktop.engine.types import ChatMessage

# A reasoning model needs room to think: keep at least this much for the reply when trimming
# history (a quarter of the context at most, so that small test contexts still work).
REPLY_RESERVE_FLOOR = 2048

CountPromptTokens = Callable[[Sequence[ChatMessage]], int]


@dataclass(frozen=True)
class FittedPrompt:
    messages: tuple[ChatMessage, ...]
    prompt_tokens: int
    dropped_messages: int


def reply_reserve(n_ctx: int, max_tokens: int | None) -> int:
    """Tokens kept free for the reply: min(max_tokens, floor), the floor at most n_ctx / 4."""
    floor = max(1, min(REPLY_RESERVE_FLOOR, n_ctx // 4))
    return floor if max_tokens is None else max(1, min(max_tokens, floor))


def answer_only(message: ChatMessage) -> ChatMessage:
    """What the model sees of an earlier turn: assistant replies lose their reasoning."""
    if message.role != "assistant":
        return message
    content = message.content
    if THINK_CLOSE in content:  # a reply stored with its reasoning inline
        content = content.split(THINK_CLOSE)[-1].lstrip()
    return ChatMessage(role="assistant", content=content)


def _turns(history: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    """Group the middle of a conversation into turns, each starting at a user message."""
    turns: list[list[ChatMessage]] = []
    for message in history:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def fit_to_context(
    messages: Sequence[ChatMessage],
    count_prompt_tokens: CountPromptTokens,
    *,
    n_ctx: int,
    reserve: int,
) -> FittedPrompt:
    """Drop the fewest oldest turns so that the prompt plus `reserve` fits in `n_ctx`.

    `count_prompt_tokens` renders a message list with the chat template and counts its tokens.
    Raises PromptTooLongError when even the system prompt and the new message alone do not fit.
    """
    if not messages or messages[-1].role != "user":
        raise ValueError("a conversation sent to the model must end with a user message")
    cleaned = [answer_only(m) for m in messages]
    system = [m for m in cleaned[:-1] if m.role == "system"]
    turns = _turns([m for m in cleaned[:-1] if m.role != "system"])
    latest = cleaned[-1]
    limit = n_ctx - reserve

    def candidate(dropped_turns: int) -> list[ChatMessage]:
        kept = [m for turn in turns[dropped_turns:] for m in turn]
        return [*system, *kept, latest]

    def dropped_messages(dropped_turns: int) -> int:
        return sum(len(turn) for turn in turns[:dropped_turns])

    tokens = count_prompt_tokens(candidate(0))
    if tokens <= limit:
        return FittedPrompt(tuple(candidate(0)), tokens, 0)

    minimal_tokens = count_prompt_tokens(candidate(len(turns)))
    if minimal_tokens > limit:
        raise PromptTooLongError(
            f"The message is too long: the prompt needs {minimal_tokens:,} tokens and the reply "
            f"at least {reserve:,} more, but the context holds {n_ctx:,} tokens. "
            "Shorten the message or load the model with a larger context."
        )
    # Fewer kept turns never makes the prompt longer, so binary-search the fewest to drop.
    low, high, high_tokens = 1, len(turns), minimal_tokens
    while low < high:
        middle = (low + high) // 2
        middle_tokens = count_prompt_tokens(candidate(middle))
        if middle_tokens <= limit:
            high, high_tokens = middle, middle_tokens
        else:
            low = middle + 1
    return FittedPrompt(tuple(candidate(high)), high_tokens, dropped_messages(high))
