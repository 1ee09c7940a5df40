"""fathom-eval against fathom-serve: the samples come from the server, in one request with `n`
where the server honours it, else as separate requests; resume works as with a local model."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fathom_desktop.engine import remote_server
from fathom_desktop.engine.consensus import ConsensusResult, normalize_answer
from fathom_desktop.engine.types import (
    ChatMessage,
    GenerationControl,
    SamplingParams,
    StreamEvent,
)
from fathom_desktop.eval_cli import main
from fathom_desktop.paths import resources_dir
from tests.serve.conftest import serve

pytestmark = pytest.mark.slow

SHIPPED = resources_dir() / "problems" / "demo-heldout-50.jsonl"


@dataclass
class CountingEngine:
    """The served engine, noting each consensus (its K) and each single reply it is asked for."""

    engine: object
    consensus_calls: list[int] = field(default_factory=list)
    replies: int = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        self.replies += 1
        return self.engine.generate(messages, sampling, control)  # type: ignore[attr-defined]

    def consensus(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl | None = None,
        on_event: Callable[[int, StreamEvent], None] | None = None,
        *,
        parallel: int | None = None,
    ) -> ConsensusResult:
        self.consensus_calls.append(k)
        return self.engine.consensus(  # type: ignore[attr-defined]
            messages, sampling, k, control, on_event, parallel=parallel
        )


def problem_file(folder: Path, count: int) -> Path:
    path = folder / f"problems-{count}.jsonl"
    path.write_text("\n".join(SHIPPED.read_text().splitlines()[:count]) + "\n", encoding="utf-8")
    return path


def eval_args(url: str, problems: Path, out: Path, *extra: str) -> list[str]:
    return [str(problems), "--server", url, "--max-tokens", "600", "--out", str(out), *extra]


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def assert_scored(result: dict, k: int) -> None:
    assert len(result["boxed"]) == k and len(result["finish_reasons"]) == k
    assert result["correct"] == [
        b is not None and normalize_answer(b) == normalize_answer(result["answer"])
        for b in result["boxed"]
    ]


def test_eval_on_fathom_serve_asks_n_samples_per_request_and_resumes(
    demo_engine: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counting = CountingEngine(demo_engine)
    out = tmp_path / "results.jsonl"
    with serve(counting) as server:
        assert main(eval_args(server.v1, problem_file(tmp_path, 2), out, "--samples", "3")) == 0
        first = capsys.readouterr()
        assert f"fathom-serve at {server.v1}" in first.err
        # One consensus of 3 per problem on the server: the samples travelled as n = 3.
        assert counting.consensus_calls == [3, 3]
        done = results(out)
        assert [r["answer"] for r in done] == [
            str(json.loads(line)["answer"]) for line in SHIPPED.read_text().splitlines()[:2]
        ]
        for result in done:
            assert_scored(result, 3)
        # The demo is ~94 % right on held-out problems; its votes on these two are right.
        assert all(result["cons"] for result in done)

        # A rerun over a longer set asks only for the problems not yet in --out.
        assert main(eval_args(server.v1, problem_file(tmp_path, 3), out, "--samples", "3")) == 0
        rerun = capsys.readouterr()
    assert "[2 of 3 problems already in" in rerun.err
    assert counting.consensus_calls == [3, 3, 3]
    assert [r["problem"] for r in results(out)[:2]] == [r["problem"] for r in done]
    assert len(results(out)) == 3 and rerun.out.strip().splitlines()[-1].startswith("pass@1 ")


def test_a_server_without_n_gets_one_request_per_sample(
    demo_engine: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fathom-serve as a server that ignores `n` (llama.cpp's server, llama-cpp-python's).
    monkeypatch.setitem(
        remote_server.KINDS,
        "fathom-desktop",
        remote_server.ServerKind("fathom-serve", n_choices=False, prefill=None, tokenize=None),
    )
    counting = CountingEngine(demo_engine)
    out = tmp_path / "results.jsonl"
    with serve(counting) as server:
        args = eval_args(server.v1, problem_file(tmp_path, 1), out, "--samples", "2")
        assert main([*args, "--parallel", "2"]) == 0
    assert counting.consensus_calls == [] and counting.replies == 2
    [result] = results(out)
    assert_scored(result, 2)
    assert all(reason == "stop" for reason in result["finish_reasons"])


def test_more_samples_than_fathom_serve_takes_at_once_go_in_parts(
    demo_engine: object, tmp_path: Path
) -> None:
    counting = CountingEngine(demo_engine)
    out = tmp_path / "results.jsonl"
    with serve(counting) as server:
        args = eval_args(server.v1, problem_file(tmp_path, 1), out, "--samples", "17")
        assert main(args) == 0
    # fathom-serve takes n <= 16: 16 samples in one request, the 17th alone.
    assert counting.consensus_calls == [16] and counting.replies == 1
    [result] = results(out)
    assert_scored(result, 17)
    assert result["cons"]  # the demo votes right on this problem


def test_server_and_model_together_are_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        main([str(problem_file(tmp_path, 1)), "--server", "http://127.0.0.1:9", "--model", "x"])
    assert exit_info.value.code == 2
    assert "--server runs the model elsewhere" in capsys.readouterr().err


def test_an_unreachable_server_is_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "results.jsonl"
    # Port 9 (discard) on the loopback: nothing listens, the connection is refused at once.
    assert main(eval_args("http://127.0.0.1:9/v1", problem_file(tmp_path, 1), out)) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("fathom-eval: ") and "refused" in error[-1]
    assert not out.exists() or out.read_text() == ""
