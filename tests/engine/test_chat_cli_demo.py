"""fathom-chat without --model: the embedded demo model, made on first use, as the app does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fathom_desktop import chat_cli, demo
from fathom_desktop.engine.consensus import extract_boxed
from training.heldout import held_out_problems

ROOT = Path(__file__).resolve().parents[2]
DEMO_NOTICE = "No --model given: using the demo model fathom-tiny (math word problems only)."
# The first held-out problem: numbers training never saw, answered greedily (deterministic).
PROBLEM = held_out_problems(1)[0]


def test_no_model_answers_with_the_demo_model(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FATHOM_HOME": str(tmp_path)}
    command = [
        sys.executable, "-m", "fathom_desktop.chat_cli", "--prompt", PROBLEM.question, "--json",
        "--temperature", "0", "--max-tokens", "600", "--threads", "2",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The notice goes to stderr, so stdout is exactly one JSON object.
    assert done.stderr.strip() == DEMO_NOTICE
    reply = json.loads(done.stdout)
    assert reply["finish_reason"] == "stop"
    assert reply["boxed"] == str(PROBLEM.answer)
    assert extract_boxed(reply["answer"]) == str(PROBLEM.answer)
    # Reasoning and answer are separated: worked arithmetic in one, the boxed result in the other.
    assert "ones:" in reply["reasoning"] and "\\boxed" not in reply["reasoning"]
    assert "ones:" not in reply["answer"]
    assert "<think>" not in reply["reasoning"] + reply["answer"]
    assert "</think>" not in reply["reasoning"] + reply["answer"]
    # The GGUF was made in FATHOM_HOME's models folder, not in the user's real one.
    made = list((tmp_path / "data" / "models").glob("fathom-tiny-*-Q8_0.gguf"))
    assert len(made) == 1


def test_unavailable_demo_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FATHOM_HOME", str(tmp_path / "home"))
    # A copy of the app whose resources lack the demo checkpoint.
    monkeypatch.setattr(demo, "resources_dir", lambda: tmp_path / "resources")

    code = chat_cli.main(["--prompt", "What is 17 + 25?", "--json"])

    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""  # no half JSON for a script to choke on
    lines = err.strip().splitlines()
    assert lines[0] == DEMO_NOTICE
    assert len(lines) == 2, err
    assert lines[1].startswith("fathom-chat: The demo model is incomplete")
    assert "pass --model" in lines[1]
    assert "Traceback" not in err
    assert not list((tmp_path / "home").rglob("*.gguf"))
