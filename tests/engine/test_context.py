"""The context budget: what is sent, what is dropped, and when a message is simply too long."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fathom_desktop.engine.context import fit_to_context, reply_reserve
from fathom_desktop.engine.errors import PromptTooLongError
from fathom_desktop.engine.types import ChatMessage

PER_MESSAGE = 3  # a stand-in for the template's role markers


def count(messages: Sequence[ChatMessage]) -> int:
    """Words plus a fixed overhead per message: monotonic like real tokenization."""
    return 1 + sum(len(m.content.split()) + PER_MESSAGE for m in messages)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def conversation(turn_sizes: list[int], new_size: int, system: bool = True) -> list[ChatMessage]:
    messages = [ChatMessage("system", "be brief")] if system else []
    for index, size in enumerate(turn_sizes):
        messages.append(ChatMessage("user", words(size, f"q{index}_")))
        messages.append(
            ChatMessage("assistant", words(size, f"a{index}_"), reasoning=words(500, "r"))
        )
    messages.append(ChatMessage("user", words(new_size, "new")))
    return messages


def test_reply_reserve_is_a_floor_capped_by_max_tokens_and_the_context():
    assert reply_reserve(16384, None) == 2048
    assert reply_reserve(16384, 300) == 300
    assert reply_reserve(512, None) == 128  # a quarter of a small context
    assert reply_reserve(512, 10_000) == 128


def test_everything_fits_nothing_dropped_and_reasoning_never_sent():
    messages = conversation([5, 5], 5)
    fitted = fit_to_context(messages, count, n_ctx=1000, reserve=100)
    assert fitted.dropped_messages == 0
    assert [m.role for m in fitted.messages] == [m.role for m in messages]
    assert all(m.reasoning is None for m in fitted.messages)
    # The 500-word reasonings are not counted either: the prompt stays small.
    assert fitted.prompt_tokens == count(fitted.messages) < 100


def test_inline_reasoning_in_an_old_reply_is_cut_at_the_closing_tag():
    messages = [
        ChatMessage("user", "q"),
        ChatMessage("assistant", "long thoughts\n</think>\n\nfinal answer"),
        ChatMessage("user", "next"),
    ]
    fitted = fit_to_context(messages, count, n_ctx=1000, reserve=10)
    assert fitted.messages[1].content == "final answer"


def test_oldest_turns_dropped_first_system_and_new_message_kept():
    messages = conversation([40, 40, 40, 40], 10)
    fitted = fit_to_context(messages, count, n_ctx=300, reserve=50)
    assert fitted.dropped_messages > 0
    assert fitted.messages[0] == messages[0]  # the system prompt
    assert fitted.messages[-1] == messages[-1]  # the new message
    kept = [(m.role, m.content) for m in fitted.messages[1:-1]]
    recent = messages[len(messages) - 1 - len(kept) : -1]
    assert kept == [(m.role, m.content) for m in recent]  # the most recent turns
    assert fitted.dropped_messages == len(messages) - len(fitted.messages)
    assert fitted.prompt_tokens + 50 <= 300


def test_single_message_larger_than_the_context_says_so_with_numbers():
    messages = conversation([3], 2000)
    with pytest.raises(PromptTooLongError) as raised:
        fit_to_context(messages, count, n_ctx=1024, reserve=256)
    message = str(raised.value)
    assert "2,009" in message and "256" in message and "1,024" in message
    assert "\n" not in message


def test_a_conversation_must_end_with_the_users_message():
    with pytest.raises(ValueError):
        fit_to_context(
            [ChatMessage("user", "a"), ChatMessage("assistant", "b")], count, n_ctx=100, reserve=10
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 60), max_size=12),
    st.integers(1, 80),
    st.integers(64, 2000),
    st.integers(1, 300),
    st.booleans(),
)
def test_fitting_drops_the_fewest_oldest_turns(
    turn_sizes: list[int], new_size: int, n_ctx: int, reserve: int, system: bool
):
    messages = conversation(turn_sizes, new_size, system)
    minimal = ([messages[0]] if system else []) + [messages[-1]]
    if count(minimal) + reserve > n_ctx:
        with pytest.raises(PromptTooLongError):
            fit_to_context(messages, count, n_ctx=n_ctx, reserve=reserve)
        return
    fitted = fit_to_context(messages, count, n_ctx=n_ctx, reserve=reserve)
    assert fitted.prompt_tokens == count(fitted.messages)
    assert fitted.prompt_tokens + reserve <= n_ctx
    assert fitted.messages[-1] == messages[-1]
    if system:
        assert fitted.messages[0] == messages[0]
    assert fitted.dropped_messages % 2 == 0  # whole turns only
    kept_history = len(fitted.messages) - len(minimal)
    assert kept_history == len(messages) - len(minimal) - fitted.dropped_messages
    # Minimal: keeping one more turn would not have fitted.
    if fitted.dropped_messages:
        start = (1 if system else 0) + fitted.dropped_messages - 2
        one_more = [*minimal[:-1], *messages[start:-1], messages[-1]]
        assert count(one_more) + reserve > n_ctx
