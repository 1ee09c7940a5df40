"""A reply's figures: what the footer says, and how a stored reply is shown again after a
restart."""

from __future__ import annotations

from fathom_desktop.engine.types import FinishReason, GenerationStats
from fathom_desktop.gui.chat_view import AssistantMessage
from fathom_desktop.gui.reasoning_pane import tokens_text
from fathom_desktop.history import MessageStatus, StoredMessage

_FINISH_WORDS = {
    FinishReason.STOP: "",
    FinishReason.LENGTH: "stopped at the token limit",
    FinishReason.CONTEXT: "the context window is full",
    FinishReason.CANCELLED: "stopped",
    FinishReason.INTERRUPTED: "the server's stream was cut off",
}
_STATUS_WORDS = {
    MessageStatus.STOPPED: "stopped",
    MessageStatus.ERROR: "failed",
    MessageStatus.INTERRUPTED: "interrupted: the app closed while this was being written",
    MessageStatus.STREAMING: "still being written",
}


def earlier_messages_text(count: int) -> str:
    return f"{count} earlier message{'' if count == 1 else 's'}"


def figures_text(
    stats: GenerationStats | None, status: MessageStatus | None, consensus: dict | None
) -> str:
    parts: list[str] = []
    if stats is not None:
        parts.append(tokens_text(stats.reasoning_tokens + stats.answer_tokens))
        if stats.decode_tokens_per_s:
            parts.append(f"{stats.decode_tokens_per_s:.1f} tok/s")
        if stats.dropped_messages:
            parts.append(f"{stats.dropped_messages} earlier messages left out")
        if stats.thinking_closed_early:
            parts.append("reasoning cut short")
        words = _FINISH_WORDS[stats.finish_reason]
        if words:
            parts.append(words)
    if (
        status is not None
        and status in _STATUS_WORDS
        and (stats is None or status is not MessageStatus.STOPPED)
    ):
        parts.append(_STATUS_WORDS[status])
    if consensus:
        votes = consensus.get("votes") or {}
        total = consensus.get("samples", 0)
        if consensus.get("answer") is None:
            parts.append(f"Consensus ×{total}: no sample boxed an answer")
        else:
            tally = ", ".join(f"{value}: {count}" for value, count in votes.items())
            parts.append(f"Consensus ×{total}: {consensus['answer']} ({tally})")
    return " · ".join(parts)


def stats_from_record(record: dict | None) -> GenerationStats | None:
    if not record or "reasoning_tokens" not in record:
        return None
    try:
        return GenerationStats(
            prompt_tokens=int(record.get("prompt_tokens", 0)),
            reasoning_tokens=int(record["reasoning_tokens"]),
            answer_tokens=int(record.get("answer_tokens", 0)),
            time_to_first_token_s=float(record.get("time_to_first_token_s", 0.0)),
            prompt_tokens_per_s=float(record.get("prompt_tokens_per_s", 0.0)),
            decode_tokens_per_s=float(record.get("decode_tokens_per_s", 0.0)),
            finish_reason=FinishReason(record.get("finish_reason", FinishReason.STOP.value)),
            dropped_messages=int(record.get("dropped_messages", 0)),
            thinking_closed_early=bool(record.get("thinking_closed_early", False)),
        )
    except (TypeError, ValueError):
        return None


def restore_reply(widget: AssistantMessage, message: StoredMessage) -> None:
    """Show a stored reply as it ended: rendered answer, collapsed reasoning, its figures."""
    record = message.stats or {}
    stats = stats_from_record(record)
    reasoning = message.reasoning or ""
    tokens = stats.reasoning_tokens if stats is not None else len(reasoning.split())
    seconds = record.get("reasoning_seconds")
    unfinished = message.status is not MessageStatus.COMPLETE and not message.content
    if reasoning:
        widget.reasoning.restore(
            reasoning, tokens, float(seconds) if seconds is not None else None, unfinished
        )
    widget.answer_started = bool(message.content)
    widget.finish(
        message.content,
        tokens,
        figures_text(stats, message.status, record.get("consensus")),
        unfinished,
    )
    if message.status is MessageStatus.ERROR and record.get("error"):
        widget.error.setText(str(record["error"]))
        widget.error.setVisible(True)
