"""`--self-test` logic from source: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fathom_desktop.engine.types import Finished, FinishReason, GenerationStats
from fathom_desktop.selftest import (
    EXIT_FAILED,
    Probe,
    SelfTestFailure,
    Step,
    check_gui,
    check_reply,
    run_self_test,
)

PROBE = Probe(question="What is 48+24?", expected="72")


def _finished(
    reasoning: str = "48+24:\nones: 8+4=12, carry 1, so 2\n48+24=72",
    answer: str = "The answer is \\boxed{72}.",
    reason: FinishReason = FinishReason.STOP,
) -> Finished:
    stats = GenerationStats(
        prompt_tokens=12,
        reasoning_tokens=30,
        answer_tokens=8,
        time_to_first_token_s=0.1,
        prompt_tokens_per_s=100.0,
        decode_tokens_per_s=50.0,
        finish_reason=reason,
    )
    return Finished(reasoning=reasoning, answer=answer, stats=stats)


def test_a_good_reply_passes_with_its_boxed_answer() -> None:
    assert check_reply(_finished(), PROBE) == "72"


@pytest.mark.parametrize(
    ("finished", "step", "reason"),
    [
        (
            _finished(reason=FinishReason.LENGTH),
            Step.GENERATE,
            "the reply did not end by itself (finish reason: length)",
        ),
        (_finished(reasoning=" \n"), Step.SPLIT, "the reply has no reasoning before </think>"),
        (
            _finished(reasoning="<think>\n48+24=72"),
            Step.SPLIT,
            "<think> is left in the reasoning text",
        ),
        (_finished(answer=""), Step.SPLIT, "the reply has no answer after </think>"),
        (
            _finished(answer="</think>\n\\boxed{72}"),
            Step.SPLIT,
            "</think> is left in the answer text",
        ),
        (
            _finished(answer="It is seventy-two."),
            Step.ANSWER,
            "the answer has no \\boxed{}: ...'It is seventy-two.'",
        ),
        (_finished(answer="\\boxed{71}"), Step.ANSWER, "expected \\boxed{72}, got \\boxed{71}"),
    ],
)
def test_a_bad_reply_names_the_step_and_the_reason(
    finished: Finished, step: Step, reason: str
) -> None:
    with pytest.raises(SelfTestFailure) as caught:
        check_reply(finished, PROBE)
    assert (caught.value.step, caught.value.reason) == (step, reason)


def test_a_missing_model_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_self_test(tmp_path / "nope.gguf", out=out) == EXIT_FAILED
    missing = tmp_path / "nope.gguf"
    assert out.getvalue() == f"self-test FAILED at demo model: {missing} is not a file\n"


def test_a_file_that_is_not_a_model_fails_at_load_in_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("these are my notes, not a model")
    out = io.StringIO()
    assert run_self_test(bogus, out=out) == EXIT_FAILED
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("self-test FAILED at model load: ")
    assert "Traceback" not in out.getvalue()


def test_the_gui_check_builds_the_main_window_offscreen(qapp) -> None:
    from PySide6.QtCore import qVersion

    assert check_gui() == qVersion()
