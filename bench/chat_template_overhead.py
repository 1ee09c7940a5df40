"""What the chat template's guards cost: a plain Jinja render against the bounded, split one.

Renders Fathom's R1 template (tests/fixtures) for a short chat and a long one, three ways: plain
sandboxed Jinja (what the engine did before the limits), `render_bounded` (line tracer, size
checks), and `ChatTemplate.render_pieces` (bounded, plus hiding control-token texts inside
messages and splitting the output at the markup's control tokens). Reports the median of
interleaved rounds, so a machine shared with other work slows all three alike.

    .venv/bin/python bench/chat_template_overhead.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jinja2 import Template  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from fathom_desktop.engine.chat_template import ChatTemplate  # noqa: E402
from fathom_desktop.engine.template_limits import render_bounded  # noqa: E402
from fathom_desktop.engine.types import ChatMessage  # noqa: E402
from tests.engine.tiny_models import chat_template  # noqa: E402

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
CONTROL = (BOS, EOS, "<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<|fim_prefix|>", "<|fim_pad|>")


def chat(n_messages: int) -> list[ChatMessage]:
    text = "Let $x$ be the least prime with $x^2 > 1000$; show that $x = 37$. " * 8
    messages = [ChatMessage("system", "Reason step by step.")]
    for index in range(n_messages):
        messages.append(ChatMessage("user" if index % 2 == 0 else "assistant", text))
    if messages[-1].role != "user":
        messages.append(ChatMessage("user", text))
    return messages


def median_ms(function: Callable[[], object], rounds: int, repeat: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            function()
        times.append((time.perf_counter() - started) / repeat * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    source = chat_template(legacy=False)
    template = ChatTemplate(source, bos_token=BOS, eos_token=EOS, control_texts=CONTROL)
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    print("messages | plain Jinja | bounded | bounded + split | overhead")
    for n_messages in (4, 200):
        messages = chat(n_messages)
        row = measure(template, plain, messages, args.rounds)
        print(
            f"{len(messages):8} | {row[0]:8.3f} ms | {row[1]:7.3f} ms | {row[2]:12.3f} ms | "
            f"+{row[2] - row[0]:.3f} ms ({row[2] / row[0]:.1f}x)"
        )


def measure(
    template: ChatTemplate, plain: Template, messages: list[ChatMessage], rounds: int
) -> list[float]:
    context = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "add_generation_prompt": True,
        "bos_token": BOS,
        "eos_token": EOS,
    }
    chars = sum(len(m.content) for m in messages)
    repeat = 200 if len(messages) < 10 else 5
    functions: list[Callable[[], object]] = [
        lambda: plain.render(context),
        lambda: render_bounded(
            template._template, template._environment, template.limits, chars, context
        ),
        lambda: template.render_pieces(messages),
    ]
    return [median_ms(function, rounds, repeat) for function in functions]


if __name__ == "__main__":
    main()
