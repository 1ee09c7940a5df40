"""fathom-serve's streaming overhead: what a client receives against what the engine produces.

One run: fathom-serve's app (uvicorn, SSE) over LlamaEngine on a converter-made GGUF (random
weights, real R1 tokenizer, end-of-sequence ignored so the reply has a forced length), and a
streaming client in a separate process (so that it does not share the server's interpreter). The
engine's side is timed inside the engine thread (each delta as it is yielded), the client's side
as each event arrives; both use CLOCK_MONOTONIC, so the times compare across the two processes.

Reported: tokens/s the client sees against the engine's own rate over the same reply (target
>= 0.95 on a 16k-token reply), the same ratio over the first and the last window of tokens (the
SSE path must stay linear: the client must not fall further behind as the reply grows), and the
time to first token the server adds (client's time to first token minus the engine's own).

    .venv/bin/python bench/serve_overhead.py [--tokens 16000] [--layers 4] [--hidden 256]
    .venv/bin/python bench/serve_overhead.py --fake-engine max   # the server path's own ceiling

On a shared CPU box the model decodes slowly, which flatters the server; `--fake-engine RATE`
streams a scripted reply from the app's stand-in engine at RATE tokens/s instead ("max": as
fast as it can), so the server's own cost per token is what limits the client.
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fathom_desktop.engine.types import (  # noqa: E402
    ChatMessage,
    Finished,
    GenerationControl,
    SamplingParams,
    TextDelta,
)

N_CTX = 16384
PROMPT = "Prove that the square root of two is irrational."


@dataclass
class TimedEngine:
    """The real engine, with the time and running text length of every delta it yields."""

    engine: object
    called_at: float = 0.0
    deltas: list[tuple[float, int]] = field(default_factory=list)  # (time, characters so far)
    finished: Finished | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def generate(self, messages, sampling, control: GenerationControl | None = None):
        self.called_at = time.perf_counter()
        stream = self.engine.generate(messages, sampling, control)  # type: ignore[attr-defined]
        return self._timed(stream)

    def _timed(self, stream):
        characters = 0
        for event in stream:
            if isinstance(event, TextDelta):
                characters += len(event.text)
                self.deltas.append((time.perf_counter(), characters))
            elif isinstance(event, Finished):
                self.finished = event
            yield event


def client(url: str, tokens: int) -> None:
    """Child process: stream one reply, print [[time, characters so far], ...] and the start."""
    import httpx2

    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0.6,
        "seed": 1234,
    }
    received: list[tuple[float, int]] = []
    characters = 0
    with httpx2.Client(timeout=None) as http:
        sent = time.perf_counter()
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            for sse in httpx2.EventSource(response):
                if sse.data == "[DONE]":
                    break
                for choice in json.loads(sse.data)["choices"]:
                    delta = choice["delta"]
                    text = (delta.get("reasoning_content") or "") + (delta.get("content") or "")
                    if text:
                        characters += len(text)
                        received.append((time.perf_counter(), characters))
    print(json.dumps({"sent": sent, "received": received}))


def _time_of(received: list[tuple[float, int]], characters: int) -> float:
    """When the client had received at least `characters` characters."""
    index = bisect.bisect_left([c for _, c in received], characters)
    return received[min(index, len(received) - 1)][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", type=Path, help="an existing GGUF instead of a fresh one")
    parser.add_argument(
        "--fake-engine",
        metavar="RATE",
        help="stream from the stand-in engine at RATE tokens/s ('max': unthrottled)",
    )
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.tokens)
        return

    if args.fake_engine:
        fake_run(args)
        return

    from engine_overhead import build_model

    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import LoadOptions
    from tests.serve.conftest import serve

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_model(Path(scratch), args.layers, args.hidden)
        engine = LlamaEngine(stop_at_end_of_generation=False)
        engine.load(LoadOptions(model, n_ctx=N_CTX, n_gpu_layers=0, n_threads=args.threads))
        timed = TimedEngine(engine)
        try:
            # Warm-up: the first decode after loading pays one-off allocations.
            list(engine.generate([ChatMessage("user", PROMPT)], SamplingParams(max_tokens=16)))
            with serve(timed) as server:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        server.base_url,
                        "--tokens",
                        str(args.tokens),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
        finally:
            engine.close()
    report(json.loads(out), timed, args.window)


def fake_run(args: argparse.Namespace) -> None:
    from fathom_desktop.engine.scripted import DEMO_MODEL_PATH, FakeEngine, FakeScript
    from fathom_desktop.engine.types import LoadOptions
    from tests.serve.conftest import serve

    rate = None if args.fake_engine == "max" else float(args.fake_engine)
    # One token per word; the reasoning alone is longer than the reply asked for.
    script = FakeScript(reasoning=" ".join(f"w{i % 97}" for i in range(args.tokens + 10)))
    engine = FakeEngine(script, tokens_per_s=rate)
    engine.load(LoadOptions(DEMO_MODEL_PATH, n_ctx=args.tokens + 4096))
    timed = TimedEngine(engine)
    with serve(timed) as server:
        out = subprocess.run(
            [sys.executable, __file__, "--client", server.base_url, "--tokens", str(args.tokens)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    report(json.loads(out), timed, args.window)


def report(seen: dict, timed: TimedEngine, window: int) -> None:
    received = [(t, c) for t, c in seen["received"]]
    assert timed.finished is not None
    stats = timed.finished.stats
    tokens = stats.reasoning_tokens + stats.answer_tokens
    deltas = timed.deltas
    per_delta = tokens / len(deltas)  # the engine yields about one delta per token

    def engine_rate(first: int, last: int) -> float:
        return (last - first) * per_delta / (deltas[last][0] - deltas[first][0])

    def client_rate(first: int, last: int) -> float:
        span = _time_of(received, deltas[last][1]) - _time_of(received, deltas[first][1])
        return (last - first) * per_delta / span if span > 0 else float("inf")

    end = len(deltas) - 1
    size = min(int(window / per_delta), end // 2)
    windows = {
        "whole reply": (0, end),
        f"first {window:,} tokens": (0, size),
        f"last {window:,} tokens": (end - size, end),
    }
    print(f"reply: {tokens:,} tokens ({len(deltas):,} deltas, {len(received):,} SSE events)")
    for name, (first, last) in windows.items():
        own, client_seen = engine_rate(first, last), client_rate(first, last)
        print(
            f"{name:>20}: engine {own:8.1f} tok/s, client {client_seen:8.1f} tok/s, "
            f"ratio {client_seen / own:.3f}"
        )
    lag_start = _time_of(received, deltas[size][1]) - deltas[size][0]
    lag_end = _time_of(received, deltas[end][1]) - deltas[end][0]
    print(
        f"client behind the engine: {lag_start * 1000:.2f} ms early on, "
        f"{lag_end * 1000:.2f} ms at the end"
    )
    engine_ttft = deltas[0][0] - timed.called_at
    client_ttft = received[0][0] - seen["sent"]
    print(
        f"time to first token: client {client_ttft * 1000:.1f} ms, "
        f"engine {engine_ttft * 1000:.1f} ms, "
        f"added by the server {(client_ttft - engine_ttft) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
