"""A consensus reply in the history (schema 2: every sample beside the vote) and in exports;
a history written before samples were kept still opens, migrated, with nothing lost."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fathom_desktop.export import JSON_FORMAT_VERSION, to_json, to_markdown
from fathom_desktop.history import SCHEMA_VERSION, History, MessageStatus
from fathom_desktop.history.records import MIGRATIONS
from fathom_desktop.history.salvage import salvage
from fathom_desktop.history.samples import SampleRecord, VoteRecord, stored_samples
from fathom_desktop.history.unsaved import read_unsaved, write_unsaved

SAMPLES = [
    SampleRecord(0, "n squared: 2500.", "So \\boxed{2500}.", "2500", 12, 5, "stop"),
    SampleRecord(1, "About 2501 | maybe.", "Roughly \\boxed{2501}.", "2501", 14, 4, "stop"),
    SampleRecord(2, "Pairs of 100, </details> 25 of them.", "\\boxed{2500}", "2500", 20, 3, "stop"),
    SampleRecord(3, "I stopped here", "", None, 7, 0, "cancelled"),
]
VOTE = VoteRecord(
    answer="2500",
    votes={"2500": 2, "2501": 1},
    samples=4,
    requested=6,
    winner=0,
    parallel=4,
    parallel_reason="4 at once",
    tokens=65,
    seconds=1.5,
)


def _consensus_reply(history: History) -> tuple[int, int]:
    conversation = history.create_conversation("Odd sums")
    history.add_user_message(conversation, "Sum of the first 50 odd numbers?")
    reply = history.begin_assistant_message(conversation, "m.Q4_K_M.gguf", "Q4_K_M", None)
    history.save_partial(reply, "", "", [s.to_dict() for s in SAMPLES[:2]])
    history.finish_assistant_message(
        reply,
        SAMPLES[0].reasoning,
        SAMPLES[0].answer,
        {"reasoning_tokens": 12, "consensus": VOTE.to_dict()},
        MessageStatus.STOPPED,
        [s.to_dict() for s in SAMPLES],
    )
    return conversation, reply


def test_every_sample_and_the_vote_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with History(path) as history:
        conversation, reply = _consensus_reply(history)
        # Read back before and after the writer has reached the file: the same.
        waiting = history.message(reply)
        history.flush()
        assert history.message(reply) == waiting
    with History(path) as reopened:
        stored = reopened.message(reply)
        [_, same] = reopened.messages(conversation)
    assert stored == same
    assert stored_samples(stored.samples) == SAMPLES
    assert VoteRecord.from_dict(stored.stats["consensus"]) == VOTE
    assert (stored.reasoning, stored.content) == (SAMPLES[0].reasoning, SAMPLES[0].answer)


def test_a_streaming_consensus_saves_its_samples_so_far(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with History(path) as history:
        conversation = history.create_conversation("Odd sums")
        reply = history.begin_assistant_message(conversation, "m.gguf", None, None)
        history.save_partial(reply, "", "", [s.to_dict() for s in SAMPLES[:3]])
    # The app died here: the reply is interrupted and keeps the three samples.
    with History(path) as reopened:
        stored = reopened.message(reply)
    assert stored.status is MessageStatus.INTERRUPTED
    assert stored_samples(stored.samples) == SAMPLES[:3]


def test_a_history_from_before_samples_opens_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO conversations VALUES (1, 'Old', 1.0, 2.0)")
    db.execute(
        "INSERT INTO messages (id, conversation_id, role, content, reasoning, status, stats, "
        "created_at, updated_at) VALUES (1, 1, 'assistant', 'Four.', 'hmm', 'complete', "
        '\'{"consensus": {"answer": "4", "votes": {"4": 3}, "samples": 3}}\', 1.0, 2.0)'
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with History(path) as history:
        [old] = history.messages(1)
        assert (old.content, old.reasoning, old.samples) == ("Four.", "hmm", None)
        # A vote recorded before the winner and P were kept still reads.
        vote = VoteRecord.from_dict(old.stats["consensus"])
        assert vote is not None and (vote.samples, vote.winner, vote.parallel) == (3, None, 1)
        history.add_user_message(1, "And now?")
    assert SCHEMA_VERSION == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2


def test_salvage_reads_a_damaged_history_from_before_samples(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO conversations VALUES (1, 'Old', 1.0, 2.0)")
    db.execute(
        "INSERT INTO messages (id, conversation_id, role, content, status, created_at, "
        "updated_at) VALUES (1, 1, 'user', 'Hello', 'complete', 1.0, 1.0)"
    )
    db.commit()
    db.close()
    target = tmp_path / "new.sqlite3"
    History(target).close()  # the current schema
    assert (
        salvage(f"file:{old}?mode=ro", target).summary() == "1 conversation and 1 message recovered"
    )
    with History(target) as history:
        assert [m.content for m in history.messages(1)] == ["Hello"]


def test_samples_waiting_at_close_are_kept_beside_the_history(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with History(path) as history:
        _, reply = _consensus_reply(history)
        waiting = history._writer.pending()  # noqa: SLF001 - what close() would keep
        kept = write_unsaved(path, waiting)
    assert kept is not None
    ids = iter(range(100, 200))
    changes = read_unsaved([kept], lambda: next(ids), lambda: next(ids))
    finish = [c for c in changes if type(c).__name__ == "FinishReply"]
    assert finish and stored_samples(finish[0].samples) == SAMPLES


def test_markdown_export_has_the_vote_the_winner_and_every_sample(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite3") as history:
        conversation, _ = _consensus_reply(history)
        text = to_markdown(history.conversation(conversation), history.messages(conversation))
    assert (
        "**Consensus ×4**: 2500, 2 of 4 agree (50%); 4 of 6 samples ran; 4 at once;"
        " the reply below is sample 1" in text
    )
    assert "| 2500 | 2 | 1, 3 |" in text
    assert "| 2501 | 1 | 2 |" in text
    assert "| *(no boxed answer)* | – | 4 |" in text
    assert "<summary>All 4 samples</summary>" in text
    assert "### Sample 2 · answer 2501" in text
    assert "*14 reasoning tokens, 4 answer tokens; ended: stop*" in text
    assert "*7 reasoning tokens, 0 answer tokens; ended: cancelled*" in text
    for sample in SAMPLES:
        assert sample.reasoning.replace("</details>", "&lt;/details>") in text
    # A sample's </details> cannot close the fold early.
    assert text.count("<details>") == text.count("</details>")
    # The winner is the reply itself, right after the vote.
    assert text.index("So \\boxed{2500}.") < text.index("<summary>All 4 samples</summary>")


def test_json_export_keeps_every_sample_and_the_vote(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite3") as history:
        conversation, _ = _consensus_reply(history)
        document = json.loads(
            to_json(history.conversation(conversation), history.messages(conversation))
        )
    assert document["format_version"] == JSON_FORMAT_VERSION == 2
    user, reply = document["messages"]
    assert "samples" not in user
    assert [SampleRecord.from_dict(s, i) for i, s in enumerate(reply["samples"])] == SAMPLES
    assert reply["stats"]["consensus"]["winner"] == 0
    assert reply["stats"]["consensus"]["parallel"] == 4
    assert reply["content"] == SAMPLES[0].answer
