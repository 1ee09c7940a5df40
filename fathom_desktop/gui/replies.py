"""A reply's figures: what the footer says, and how a stored reply is shown again after a
restart."""

from __future__ import annotations

from fathom_desktop.engine.types import FinishReason, GenerationStats
from fathom_desktop.gui.chat_view import AssistantMessage
from fathom_desktop.gui.reasoning_pane import tokens_text
from fathom_desktop.gui.session_types import ReplyEnded
from fathom_desktop.history import MessageStatus, StoredMessage
from fathom_desktop.history.samples import VoteRecord, stored_samples

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
    vote = VoteRecord.from_dict(consensus)
    if vote is not None:
        parts.append(consensus_text(vote))
    return " · ".join(parts)


def consensus_text(vote: VoteRecord) -> str:
    """The vote in one line ("Consensus ×8: 2500, 6 of 8 agree (75%)") and the speed."""
    if vote.answer is None:
        text = f"Consensus ×{vote.samples}: no sample boxed an answer"
    else:
        agree = round(vote.agreement * vote.samples)
        text = (
            f"Consensus ×{vote.samples}: {vote.answer}, {agree} of {vote.samples} agree"
            f" ({vote.agreement:.0%})"
        )
    if vote.tokens_per_s:
        text += f" · {tokens_text(vote.tokens)} at {vote.tokens_per_s:.1f} tok/s"
    return text


def consensus_figures(status: MessageStatus | None, vote: VoteRecord | None) -> str:
    """A consensus reply's footer: the vote and how it ended (the pane counts the shown
    sample's own tokens)."""
    parts = [consensus_text(vote)] if vote is not None else []
    if status is not None and status in _STATUS_WORDS:
        parts.append(_STATUS_WORDS[status])
    return " · ".join(parts)


def finish_consensus_reply(widget: AssistantMessage, ended: ReplyEnded) -> None:
    """A consensus reply that just ended: the winner in the panes, every sample in its lanes."""
    vote = VoteRecord.from_dict(ended.record.get("consensus"))
    widget.finish_consensus(
        ended.samples,
        vote,
        consensus_figures(ended.status, vote),
        ended.status is not MessageStatus.COMPLETE,
    )
    if ended.status is MessageStatus.ERROR:
        widget.fail(ended.error or "")


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
    if message.samples is not None:
        _restore_consensus(widget, message, record)
        return
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


def _restore_consensus(widget: AssistantMessage, message: StoredMessage, record: dict) -> None:
    """A stored consensus reply: the same lanes, chart and browsable samples as when it ended."""
    samples = stored_samples(message.samples)
    vote = VoteRecord.from_dict(record.get("consensus"))
    requested = vote.requested if vote is not None else len(samples)
    widget.start_consensus(max(requested, len(samples), 1))
    widget.finish_consensus(
        samples,
        vote,
        consensus_figures(message.status, vote),
        message.status is not MessageStatus.COMPLETE,
    )
    if message.status is MessageStatus.ERROR and record.get("error"):
        widget.error.setText(str(record["error"]))
        widget.error.setVisible(True)
