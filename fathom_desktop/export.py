"""Export a conversation as Markdown (reasoning folded in <details>) or as JSON.

A consensus reply exports its vote (a table), the winner as the reply, and every sample folded
below it; the JSON keeps each sample as the history does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from fathom_desktop import __version__, paths
from fathom_desktop.history import ConversationSummary, History, MessageStatus, StoredMessage
from fathom_desktop.history.samples import (
    SampleRecord,
    VoteRecord,
    stored_samples,
    vote_labels,
    voted_for,
)

JSON_FORMAT_NAME = "fathom-desktop-conversation"
# 2: a consensus reply's messages carry `samples` (every sample) beside the vote in `stats`.
JSON_FORMAT_VERSION = 2


class ExportFormat(StrEnum):
    MARKDOWN = "markdown"
    JSON = "json"

    @property
    def suffix(self) -> str:
        return ".md" if self is ExportFormat.MARKDOWN else ".json"

    @classmethod
    def from_path(cls, path: Path) -> ExportFormat:
        suffix = path.suffix.lower()
        if suffix in (".md", ".markdown"):
            return cls.MARKDOWN
        if suffix == ".json":
            return cls.JSON
        raise ExportError(f"Cannot tell the export format from {path.name!r}: use .md or .json.")


class ExportError(Exception):
    """str(error) is one readable line for the user."""


_ROLE_HEADINGS = {"system": "System", "user": "You", "assistant": "Fathom"}
_STATUS_NOTES = {
    MessageStatus.STOPPED: "Stopped before the end.",
    MessageStatus.ERROR: "The reply failed part-way.",
    MessageStatus.INTERRUPTED: "Interrupted: the app closed while this reply was being written.",
    MessageStatus.STREAMING: "Still being written when exported.",
}
# A literal </details> in the reasoning would close the fold early; any case, any spacing.
_DETAILS_CLOSE = re.compile(r"</(\s*details\s*)>", re.IGNORECASE)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def to_markdown(conversation: ConversationSummary, messages: Sequence[StoredMessage]) -> str:
    lines = [
        f"# {_one_line(conversation.title) or 'Untitled conversation'}",
        "",
        f"*Exported from Fathom Desktop {__version__}; started {_iso(conversation.created_at)}.*",
        "",
    ]
    for message in messages:
        lines += [f"## {_ROLE_HEADINGS[message.role]}", ""]
        if message.role == "assistant" and message.model_file:
            model = Path(message.model_file).name
            quant = f", {message.quant}" if message.quant else ""
            lines += [f"*{model}{quant}*", ""]
        samples = stored_samples(message.samples) if message.samples is not None else None
        if samples is not None:
            vote = VoteRecord.from_dict((message.stats or {}).get("consensus"))
            lines += _vote_lines(vote, samples)
        if message.reasoning:
            lines += _folded("Reasoning", message.reasoning)
        if message.content:
            lines += [message.content.strip(), ""]
        if samples:
            lines += [
                "<details>",
                f"<summary>All {len(samples)} samples</summary>",
                "",
                *(line for sample in samples for line in _sample_lines(sample)),
                "</details>",
                "",
            ]
        note = _STATUS_NOTES.get(message.status)
        if note:
            lines += [f"> *{note}*", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _folded(summary: str, text: str) -> list[str]:
    body = _DETAILS_CLOSE.sub(r"&lt;/\1>", text.strip())
    # Blank lines around the body let Markdown renderers format the reasoning inside.
    return ["<details>", f"<summary>{summary}</summary>", "", body, "", "</details>", ""]


def _vote_lines(vote: VoteRecord | None, samples: list[SampleRecord]) -> list[str]:
    """The vote as a line and a table: each answer, its votes, and which samples gave it."""
    if vote is None:
        return [f"**Consensus ×{len(samples)}** (no vote was recorded)", ""]
    if vote.answer is None:
        head = f"**Consensus ×{vote.samples}**: no sample boxed an answer"
    else:
        agree = round(vote.agreement * vote.samples)
        head = (
            f"**Consensus ×{vote.samples}**: {_cell(vote.answer)}, {agree} of {vote.samples}"
            f" agree ({vote.agreement:.0%})"
        )
    if vote.samples < vote.requested:
        head += f"; {vote.samples} of {vote.requested} samples ran"
    head += "; one sample at a time" if vote.parallel <= 1 else f"; {vote.parallel} at once"
    if vote.winner is not None:
        head += f"; the reply below is sample {vote.winner + 1}"
    labels = vote_labels(samples)
    lines = [head, "", "| answer | votes | samples |", "|---|---|---|"]
    for key, count in vote.votes.items():
        which = [s.index + 1 for s in samples if s.boxed is not None and voted_for(s) == key]
        label = labels.get(key, key)
        lines.append(f"| {_cell(label)} | {count} | {', '.join(map(str, which))} |")
    boxless = [s.index + 1 for s in samples if s.boxed is None]
    if boxless:
        lines.append(f"| *(no boxed answer)* | – | {', '.join(map(str, boxless))} |")
    return [*lines, ""]


def _sample_lines(sample: SampleRecord) -> list[str]:
    ended = sample.finish_reason or "unfinished"
    boxed = f" · answer {_cell(sample.boxed)}" if sample.boxed is not None else ""
    lines = [
        f"### Sample {sample.index + 1}{boxed}",
        "",
        f"*{sample.reasoning_tokens:,} reasoning tokens, {sample.answer_tokens:,} answer tokens;"
        f" ended: {ended}{'; reasoning cut short' if sample.thinking_closed_early else ''}*",
        "",
    ]
    if sample.reasoning:
        lines += _folded("Reasoning", sample.reasoning)
    if sample.answer:
        lines += [sample.answer.strip(), ""]
    return lines


def _cell(text: str) -> str:
    """Model text inside a table cell or a heading: one line, pipes escaped."""
    return _one_line(text).replace("|", "\\|")


def to_json(conversation: ConversationSummary, messages: Sequence[StoredMessage]) -> str:
    document = {
        "format": JSON_FORMAT_NAME,
        "format_version": JSON_FORMAT_VERSION,
        "exported_by": f"Fathom Desktop {__version__}",
        "title": conversation.title,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "reasoning": m.reasoning,
                "status": m.status.value,
                "model_file": m.model_file,
                "quant": m.quant,
                "sampling": m.sampling,
                "stats": m.stats,
                "created_at": _iso(m.created_at),
                **({"samples": list(m.samples)} if m.samples is not None else {}),
            }
            for m in messages
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render(
    conversation: ConversationSummary, messages: Sequence[StoredMessage], fmt: ExportFormat
) -> str:
    if fmt is ExportFormat.MARKDOWN:
        return to_markdown(conversation, messages)
    return to_json(conversation, messages)


def export_conversation(
    history: History, conversation_id: int, destination: Path, fmt: ExportFormat | None = None
) -> Path:
    """Write the conversation to `destination` (format from its suffix unless given)."""
    destination = Path(destination)
    fmt = fmt if fmt is not None else ExportFormat.from_path(destination)
    conversation = history.conversation(conversation_id)
    return write_export(destination, render(conversation, history.messages(conversation_id), fmt))


def write_export(destination: Path, text: str) -> Path:
    """Write an export atomically: an interrupted write never leaves a file that looks finished."""
    try:
        paths.write_text_atomically(destination, text)
    except OSError as error:
        reason = error.strerror.lower() if error.strerror else str(error)
        raise ExportError(f"Could not write {destination}: {reason}.") from error
    return destination


def suggested_file_name(conversation: ConversationSummary, fmt: ExportFormat) -> str:
    stem = "-".join(re.sub(r"[^\w\- ]+", "", conversation.title).split())[:60]
    return (stem or f"conversation-{conversation.id}") + fmt.suffix


def _one_line(text: str) -> str:
    return " ".join(text.split())
