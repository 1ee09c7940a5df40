"""fathom-chat --consensus K [--parallel P]: what the JSON and the stderr line say about samples."""

from __future__ import annotations

import json
from pathlib import Path

from tests.engine.test_chat_cli import fathom_chat, one_line_error

COMMON = ("--n-ctx", "256", "--prompt", "2+2?", "--eval-preset", "--seed", "1")


def test_json_carries_each_samples_tokens_and_answer_and_which_p_ran(tiny_gguf_f32: Path):
    args = ("--model", str(tiny_gguf_f32), *COMMON, "--max-tokens", "12")
    result = fathom_chat(
        *args, "--thinking-budget", "4", "--consensus", "3", "--parallel", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # Today's keys stay.
    assert set(data) >= {
        "reasoning",
        "answer",
        "finish_reason",
        "stats",
        "boxed",
        "votes",
        "samples",
    }
    assert data["parallel"] == 2 and data["parallel_reason"].startswith("2 at once (capped at 2")
    assert len(data["samples"]) == 3
    for sample in data["samples"]:
        assert set(sample) == {
            "boxed",
            "finish_reason",
            "reasoning_tokens",
            "answer_tokens",
            "answer",
        }
        assert sample["finish_reason"] == "length"
        assert sample["reasoning_tokens"] == 4  # the budget closed each sample's reasoning
        assert sample["reasoning_tokens"] + sample["answer_tokens"] == 12
        assert isinstance(sample["answer"], str) and sample["answer"]
    # The same seed at the same P: the same samples on a second run.
    again = json.loads(
        fathom_chat(
            *args, "--thinking-budget", "4", "--consensus", "3", "--parallel", "2", "--json"
        ).stdout
    )
    assert [s["answer"] for s in again["samples"]] == [s["answer"] for s in data["samples"]]


def test_stderr_says_how_many_samples_ran_at_once(tiny_gguf_f32: Path):
    result = fathom_chat(
        "--model", str(tiny_gguf_f32), *COMMON, "--max-tokens", "6", "--consensus", "2"
    )
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("[consensus of 2:")
    assert "samples decoded 2 at once (all 2 samples" in summary


def test_bad_sample_counts_get_one_line(tiny_gguf_f32: Path):
    alone = fathom_chat("--model", str(tiny_gguf_f32), *COMMON, "--parallel", "2")
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    usage = "fathom-chat: --parallel goes with --consensus (see fathom-chat --help)"
    assert alone.stderr.strip() == usage
    line = one_line_error(fathom_chat("--model", str(tiny_gguf_f32), *COMMON, "--consensus", "65"))
    assert line == "fathom-chat: A consensus takes 1 to 64 samples, not 65."
