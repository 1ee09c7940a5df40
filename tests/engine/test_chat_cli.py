"""fathom-chat as a user runs it: a subprocess, its stdout, stderr and exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.conftest import SMALL_CTX

ROOT = Path(__file__).resolve().parents[2]


def fathom_chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fathom_desktop.chat_cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_json_answer(tiny_gguf_f32: Path):
    result = fathom_chat(
        "--model",
        str(tiny_gguf_f32),
        "--n-ctx",
        str(SMALL_CTX),
        "--prompt",
        "What is 3+4?",
        "--seed",
        "5",
        "--max-tokens",
        "24",
        "--thinking-budget",
        "6",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # llama.cpp's loading chatter stays silent
    data = json.loads(result.stdout)
    assert set(data) >= {
        "reasoning",
        "answer",
        "finish_reason",
        "stats",
        "n_ctx",
        "n_gpu_layers",
        "boxed",
    }
    assert data["finish_reason"] == "length"
    assert data["n_ctx"] == SMALL_CTX
    assert data["stats"]["reasoning_tokens"] == 6
    assert data["stats"]["thinking_closed_early"] is True
    assert data["answer"] and data["boxed"] is None


def test_plain_output_and_same_seed_same_text(tiny_gguf_f32: Path):
    args = (
        "--model",
        str(tiny_gguf_f32),
        "--n-ctx",
        "256",
        "--prompt",
        "Hi",
        "--seed",
        "3",
        "--max-tokens",
        "12",
        "--thinking-budget",
        "4",
        "--temperature",
        "0.6",
    )
    first, second = fathom_chat(*args), fathom_chat(*args)
    assert first.returncode == 0 and first.stdout == second.stdout
    assert first.stdout.startswith("[reasoning]\n")  # not a terminal: a label instead of dimming


def test_consensus_reports_votes(tiny_gguf_f32: Path):
    result = fathom_chat(
        "--model",
        str(tiny_gguf_f32),
        "--n-ctx",
        "256",
        "--prompt",
        "2+2?",
        "--eval-preset",
        "--seed",
        "1",
        "--max-tokens",
        "8",
        "--thinking-budget",
        "3",
        "--consensus",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["samples"]) == 2 and "votes" in data


def test_interactive_session_reset_and_exit(tiny_gguf_f32: Path):
    result = fathom_chat(
        "--model",
        str(tiny_gguf_f32),
        "--n-ctx",
        "256",
        "--max-tokens",
        "4",
        "--seed",
        "1",
        stdin="hello\n/reset\nagain\n/exit\n",
    )
    assert result.returncode == 0, result.stderr
    assert "[new conversation]" in result.stderr
    assert result.stdout.count("[reasoning]") == 2  # two replies


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"not a model at all", "not a GGUF"), (b"", "not a GGUF")],
)
def test_bad_model_file_is_one_line(tmp_path: Path, content: bytes, expected: str):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    line = one_line_error(fathom_chat("--model", str(bad), "--prompt", "hi", "--json"))
    assert line.startswith("fathom-chat: ") and expected in line


def test_missing_model_and_too_long_prompt(tiny_gguf_f32: Path, tmp_path: Path):
    line = one_line_error(fathom_chat("--model", str(tmp_path / "nope.gguf"), "--prompt", "hi"))
    assert "no such model file" in line
    line = one_line_error(
        fathom_chat("--model", str(tiny_gguf_f32), "--n-ctx", "128", "--prompt", "word " * 400)
    )
    assert "too long" in line


def test_bad_option_values_are_usage_errors(tiny_gguf_f32: Path):
    result = fathom_chat("--model", str(tiny_gguf_f32), "--prompt", "hi", "--n-gpu-layers", "lots")
    assert result.returncode == 2 and "--n-gpu-layers" in result.stderr
    line = one_line_error(
        fathom_chat(
            "--model",
            str(tiny_gguf_f32),
            "--prompt",
            "hi",
            "--kv-cache-type",
            "q8_0",
            "--flash-attn",
            "off",
        )
    )
    assert "flash attention" in line


def test_diagnostics_report_gpu_offload_support(tiny_gguf_f32: Path):
    import llama_cpp

    result = fathom_chat("--diagnostics", "--model", str(tiny_gguf_f32), "--n-ctx", "4096")
    assert result.returncode == 0, result.stderr
    supported = llama_cpp.llama_supports_gpu_offload()
    assert f"gpu_offload_supported: {supported}" in result.stdout
    assert "model check: ok" in result.stdout and "offload plan" in result.stdout


def start_interactive(model: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fathom_desktop.chat_cli",
            "--model",
            str(model),
            "--n-ctx",
            "2048",
            "--seed",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        bufsize=1,
    )


def wait_for_reply_to_start(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("Tell me a long story.\n")
    process.stdin.flush()
    seen = ""
    while "[reasoning]" not in seen:  # streamed: the reply is under way
        char = process.stdout.read(1)
        assert char, "fathom-chat ended before replying"
        seen += char


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(tiny_gguf_f32: Path):
    process = start_interactive(tiny_gguf_f32)
    try:
        wait_for_reply_to_start(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate("/exit\n", timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "[stopped]" in stderr and "Traceback" not in stderr


def test_second_ctrl_c_quits(tiny_gguf_f32: Path):
    process = start_interactive(tiny_gguf_f32)
    try:
        wait_for_reply_to_start(process)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        seen = ""
        while "[stopped]" not in seen:  # the first Ctrl-C has stopped the reply
            line = process.stderr.readline()
            assert line, "fathom-chat ended after one Ctrl-C"
            seen += line
        process.send_signal(signal.SIGINT)
        # stdin stays open: only the second Ctrl-C can end the program here.
        returncode = process.wait(timeout=60)
        seen += process.stderr.read()
    finally:
        process.kill()
    # 0 when it lands at the "you>" prompt, 130 when just before it: either way the chat quit.
    assert returncode in (0, 130), seen
    assert "Traceback" not in seen
