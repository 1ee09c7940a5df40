"""fathom-eval on the demo model and its shipped problem set: scores, resume, Ctrl-C, --hub."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fathom_desktop.engine.consensus import normalize_answer
from fathom_desktop.eval_cli import main
from fathom_desktop.paths import resources_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = resources_dir() / "problems" / "demo-heldout-50.jsonl"


def problem_file(folder: Path, count: int, name: str = "problems.jsonl") -> Path:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()[:count]
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_args(demo_gguf: Path, problems: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(problems),
        "--model",
        str(demo_gguf),
        "--n-ctx",
        "1024",
        "--threads",
        "2",
        "--max-tokens",
        "600",
        "--out",
        str(out),
        *extra,
    ]


def out_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_the_shipped_set_is_fifty_demo_problems():
    lines = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 50 and len({line["problem"] for line in lines}) == 50
    assert all(isinstance(line["answer"], int) for line in lines)


def test_scores_are_the_mean_over_samples_and_the_votes(demo_gguf, tmp_path, capsys):  # noqa: ANN001
    problems = problem_file(tmp_path, 5)
    out = tmp_path / "results.jsonl"
    code = main(run_args(demo_gguf, problems, out, "--samples", "3", "--parallel", "3"))
    assert code == 0
    results = out_lines(out)
    expected = [json.loads(line)["answer"] for line in problems.read_text().splitlines()]
    assert [r["answer"] for r in results] == [str(a) for a in expected]
    for result in results:
        assert result["parallel"] == 3 and len(result["boxed"]) == 3
        # Each verdict is the vote's normalized comparison of that sample's last \boxed{}.
        assert result["correct"] == [
            b is not None and normalize_answer(b) == normalize_answer(result["answer"])
            for b in result["boxed"]
        ]
        assert all(reason == "stop" for reason in result["finish_reasons"])
    verdicts = [c for r in results for c in r["correct"]]
    pass1 = sum(verdicts) / len(verdicts)
    cons = sum(r["cons"] for r in results) / len(results)
    assert pass1 >= 0.8  # the demo is ~94 % right on held-out problems
    report = capsys.readouterr().out.strip().splitlines()
    assert len(report) == 6  # a line per problem, then the scores
    assert report[-1] == (
        f"pass@1 {pass1:.1%} (15 samples), cons@3 {cons:.1%} "
        f"({sum(r['cons'] for r in results)}/5 problems)"
    )


def test_a_rerun_skips_the_problems_already_in_out(demo_gguf, tmp_path, capsys):  # noqa: ANN001
    out = tmp_path / "results.jsonl"
    assert main(run_args(demo_gguf, problem_file(tmp_path, 2), out)) == 0
    first = out_lines(out)
    # Mark the first stored result so that a re-asked problem would be noticed.
    first[0]["vote"] = "marker"
    out.write_text("".join(json.dumps(r) + "\n" for r in first), encoding="utf-8")
    capsys.readouterr()
    assert main(run_args(demo_gguf, problem_file(tmp_path, 4), out)) == 0
    captured = capsys.readouterr()
    assert "[2 of 4 problems already in" in captured.err
    results = out_lines(out)
    assert len(results) == 4 and results[0]["vote"] == "marker"
    assert "vote marker" in captured.out.splitlines()[0]


def test_ctrl_c_keeps_the_finished_problems_and_a_rerun_completes(demo_gguf, tmp_path):  # noqa: ANN001
    problems = problem_file(tmp_path, 30)
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "fathom_desktop.eval_cli"]
    command += run_args(demo_gguf, problems, out, "--samples", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (out.is_file() and out.read_text(encoding="utf-8").count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "[interrupted:" in stderr
    kept = out_lines(out)  # every line whole JSON: nothing half-written
    assert 1 <= len(kept) < 30
    assert stdout.strip().splitlines()[-1].startswith("pass@1 ")
    rerun = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"[{len(kept)} of 30 problems already in" in rerun.stderr
    assert [r["problem"] for r in out_lines(out)] == [
        json.loads(line)["problem"] for line in problems.read_text().splitlines()
    ]


class _DatasetHub:
    """Serves one dataset file the way huggingface-hub's hf_hub_download asks for it."""

    def __init__(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repo_id, self.files, self.requests = repo_id, files, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                hub.requests.append((self.command, self.path))
                prefix = f"/datasets/{hub.repo_id}/resolve/main/"
                name = self.path[len(prefix) :] if self.path.startswith(prefix) else None
                if name not in hub.files:
                    code = "EntryNotFound" if name is not None else "RepoNotFound"
                    self.send_response(404)
                    self.send_header("X-Error-Code", code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = hub.files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", "a" * 40)
                self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def dataset_hub(tmp_path: Path) -> Iterator[_DatasetHub]:
    source = tmp_path / "hub-files"
    source.mkdir()
    body = problem_file(source, 2, "aime.jsonl").read_bytes()
    hub = _DatasetHub("someone/demo-problems", {"aime.jsonl": body})
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def test_hub_downloads_the_problem_set_only_when_asked(demo_gguf, tmp_path, dataset_hub):  # noqa: ANN001
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": dataset_hub.url,  # 127.0.0.1: the suite never reaches the network
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    out = tmp_path / "results.jsonl"
    args = run_args(demo_gguf, Path("aime.jsonl"), out)
    command = [sys.executable, "-m", "fathom_desktop.eval_cli", *args]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and dataset_hub.requests == []  # no --hub: a local file
    assert result.stderr.strip() == "fathom-eval: No problem set at aime.jsonl."
    hub_command = [*command, "--hub", "someone/demo-problems"]
    result = subprocess.run(hub_command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (
        "GET",
        "/datasets/someone/demo-problems/resolve/main/aime.jsonl",
    ) in dataset_hub.requests
    assert len(out_lines(out)) == 2
    missing = [*command, "--hub", "someone/other"]
    result = subprocess.run(missing, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
