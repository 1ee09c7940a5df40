"""fathom-eval's problem files: what a bad one gets (one line, before any model loads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fathom_desktop.eval_cli import main, read_problems


def test_problem_and_question_keys_and_any_answer_type(tmp_path: Path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"problem": "1+1?", "answer": 2}\n\n'
        '{"question": "Half of 1?", "answer": "\\\\frac{1}{2}"}\n'
    )
    problems = read_problems(path)
    assert [(p.question, p.answer) for p in problems] == [
        ("1+1?", "2"),
        ("Half of 1?", "\\frac{1}{2}"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"problem": "1+1?", "answer": 2}\n{"problem": "x"\n', "set.jsonl, line 2: not JSON"),
        ('{"problem": "1+1?"}\n', "set.jsonl, line 1: needs a 'problem' (or 'question')"),
        ('["1+1?", 2]\n', "set.jsonl, line 1: needs a 'problem'"),
        ("\n\n", "set.jsonl holds no problems."),
    ],
)
def test_a_bad_problem_file_gets_one_line(tmp_path: Path, capsys, content: str, message: str):  # noqa: ANN001
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    assert main([str(path), "--model", str(tmp_path / "never-loaded.gguf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fathom-eval: {message}") and err.count("\n") == 1


def test_more_than_64_samples_are_refused(tmp_path: Path, capsys):  # noqa: ANN001
    path = tmp_path / "set.jsonl"
    path.write_text('{"problem": "1+1?", "answer": 2}\n')
    assert main([str(path), "--samples", "65"]) == 1
    assert capsys.readouterr().err == "fathom-eval: A consensus takes 1 to 64 samples, not 65.\n"
