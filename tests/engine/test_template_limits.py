"""A model file's chat template cannot hang the app or exhaust the machine.

Each hostile template is refused when the model loads, with one line naming the cause, before
llama.cpp reads a single weight; a template that only runs away later is stopped at that render.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fathom_desktop.engine import llama_backend
from fathom_desktop.engine.chat_template import ChatTemplate, ChatTemplateError
from fathom_desktop.engine.errors import EngineError, ModelFileError
from fathom_desktop.engine.template_limits import RenderLimits
from fathom_desktop.engine.types import ChatMessage, LoadOptions, SamplingParams
from tests.engine.tiny_models import small_qwen2

ROOT = Path(__file__).resolve().parents[2]
QUESTION = [ChatMessage("user", "What is 3+4?")]

# (template, words the refusal must contain)
HOSTILE = {
    "nested-loop": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "took longer than",
    ),
    "huge-output": (
        "{% for i in range(100000) %}{% for j in range(100000) %}"
        "{{ 'all work and no play ' }}{% endfor %}{% endfor %}",
        "writes more than",
    ),
    "repetition": ("{{ 'x' * 10 ** 10 }}", "larger than"),
    "doubling": (
        "{% set s = 'x' * 100000 %}" + "{% set s = s ~ s %}" * 40 + "{{ s|length }}",
        "larger than",
    ),
    "doubling-with-plus": (
        "{% set ns = namespace(s='x' * 100000) %}"
        "{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        "larger than",
    ),
    "join-amplifies": ("{{ range(100000)|join('x' * 100000) }}", "larger than"),
    "method-join-amplifies": ("{{ ('y' * 100000).join(range(100000)) }}", "larger than"),
    "replace-amplifies": (
        "{% set s = 'x' * 100000 %}{{ s.replace('x', s) }}",
        "larger than",
    ),
    "padding": ("{{ 'x'.ljust(10 ** 10) }}", "number"),
    "format-width": ("{{ '%999999999d' % 1 }}", "width"),
    "power": ("{{ 9 ** (9 ** 9) }}", "computes a number"),
    "macro-text": (
        "{% macro m(s) %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}"
        "{{ m('x' * 100000)|length }}",
        "larger than",
    ),
    "deep-recursion": (
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "nests deeper than",
    ),
    "syntax-error": ("{% for message in messages %}{{ message.content }}", "not valid Jinja"),
    "raises": ("{{ raise_exception('Only user and assistant roles are supported!') }}", "failed"),
    "divides-by-zero": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "escapes-sandbox": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "failed"),
    "removed-filter": ("{{ 'x'|center(10 ** 6) }}", "not valid Jinja"),
    "str-format": ("{{ '{:>999999}'.format(1) }}", "calls str.format"),
    "format-repeats": (
        "{% set big = 'x' * 200000 %}{{ ('{0}' * 60000).format(big) }}",
        "calls str.format",
    ),
    "expandtabs": ("{{ ('\t' * 200000).expandtabs(999999) }}", "calls str.expandtabs"),
    "translate": ("{{ ('a' * 200000).translate({97: 'x' * 100000}) }}", "calls str.translate"),
    "list-repeat-output": ("{% set big = 'x' * 200000 %}{{ [big] * 60000 }}", "larger than"),
    "percent-repeats": (
        "{% set big = 'x' * 200000 %}{{ ('%s' * 60000) % ((big,) * 60000) }}",
        "larger than",
    ),
    "literal-list-output": (
        "{% set big = 'x' * 200000 %}{{ [big, big, big, big, big, big] }}",
        "larger than",
    ),
    "literal-list-concat": (
        "{% set big = 'x' * 200000 %}{{ [big, big, big, big, big, big] ~ '' }}",
        "larger than",
    ),
    "string-filter": (
        "{% set big = 'x' * 200000 %}{{ [big, big, big, big, big, big]|string }}",
        "larger than",
    ),
    "json-indent": ("{{ messages|tojson(indent=999999) }}", "indents JSON by 999,999 spaces"),
}


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile-templates")
    return {
        name: small_qwen2(folder / f"{name}.gguf", chat_template=source)
        for name, (source, _) in HOSTILE.items()
    }


@pytest.mark.parametrize("name", HOSTILE)
def test_template_is_refused_at_load_before_the_weights(
    name: str, hostile_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    from fathom_desktop.engine import LlamaEngine

    def must_not_load(params: object) -> None:
        raise AssertionError("llama.cpp was asked to load a model with a hostile template")

    monkeypatch.setattr(llama_backend, "open_llama", must_not_load)
    path = hostile_models[name]
    with pytest.raises(ModelFileError) as raised:
        LlamaEngine().load(LoadOptions(path, n_ctx=256))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name}: its chat template ")
    assert HOSTILE[name][1] in message


def test_a_shorter_time_limit_is_honoured():
    # Not a speed target: each of these would run for minutes or fill memory unchecked, so
    # ending near a 0.3 s limit (30 s leaves room for a busy machine) shows the work itself was
    # stopped, not merely reported afterwards.
    limits = RenderLimits(seconds=0.3)
    for name, (source, _) in HOSTILE.items():
        started = time.monotonic()
        with pytest.raises(ChatTemplateError):
            ChatTemplate(source, bos_token="", eos_token="", limits=limits).probe()
        assert time.monotonic() - started < 30, name


def test_huge_output_never_grows_the_process(hostile_models: dict[str, Path]):
    # In a fresh process: its peak RSS is what the refusal cost, plus Python and llama.cpp.
    code = (
        "import resource, sys\n"
        "from fathom_desktop.engine import LlamaEngine\n"
        "from fathom_desktop.engine.errors import ModelFileError\n"
        "from fathom_desktop.engine.types import LoadOptions\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        LlamaEngine().load(LoadOptions(path, n_ctx=256))\n"
        "    except ModelFileError:\n"
        "        pass\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    names = [n for n in HOSTILE if n not in ("nested-loop", "syntax-error", "deep-recursion")]
    done = subprocess.run(
        [sys.executable, "-c", code, *(str(hostile_models[n]) for n in names)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    before_kib, after_kib = map(int, done.stdout.split())
    assert after_kib - before_kib < 100 * 1024, f"grew by {(after_kib - before_kib) // 1024} MiB"


# Fine for the probe conversation, a runaway loop once a chat has more than four messages.
RUNS_AWAY_LATER = (
    "{% if messages|length > 4 %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}{% endif %}"
    "{% for m in messages %}<｜User｜>{{ m.content }}{% endfor %}<｜Assistant｜>"
)
LONG_CHAT = [ChatMessage("user", "q"), ChatMessage("assistant", "a")] * 2 + QUESTION


def test_a_template_that_runs_away_later_is_stopped_at_that_render():
    chat = ChatTemplate(RUNS_AWAY_LATER, bos_token="", eos_token="", limits=RenderLimits(0.3))
    chat.probe()
    with pytest.raises(EngineError) as raised:
        chat.render(LONG_CHAT)
    assert str(raised.value) == (
        "The model's chat template took longer than 0.3 s to format a conversation."
    )


def test_the_engine_stops_a_later_runaway_render_with_one_line(tmp_path: Path):
    from fathom_desktop.engine import LlamaEngine
    from tests.engine.tiny_models import write_tiny_qwen2

    path = write_tiny_qwen2(tmp_path / "later.gguf", template_source=RUNS_AWAY_LATER)
    engine = LlamaEngine()
    engine.load(LoadOptions(path, n_ctx=256))
    try:
        assert list(engine.generate(QUESTION, SamplingParams(max_tokens=1)))
        with pytest.raises(EngineError) as raised:
            engine.generate(LONG_CHAT, SamplingParams(max_tokens=1))
        assert "took longer than 2 s" in str(raised.value)
    finally:
        engine.close()


def test_limits_leave_real_conversations_alone(fixture_dir: Path):
    from tests.engine.tiny_models import chat_template

    long_message = "Let x be a prime. " * 20_000  # 360 kB, more than the fixed allowance
    for legacy in (False, True):
        chat = ChatTemplate(chat_template(legacy), bos_token="<s>", eos_token="</s>")
        rendered = chat.render(
            [ChatMessage("system", "Be brief."), ChatMessage("user", long_message)]
        )
        assert long_message in rendered


def test_tracing_is_restored_after_a_render():
    def tracer(*args: object) -> None:
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with pytest.raises(ChatTemplateError):
            ChatTemplate("{{ 1 / 0 }}", bos_token="", eos_token="").probe()
        ChatTemplate("{{ messages|length }}", bos_token="", eos_token="").probe()
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


def fathom_chat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fathom_desktop.chat_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "name", ["nested-loop", "huge-output", "deep-recursion", "syntax-error", "raises"]
)
def test_fathom_chat_refuses_in_one_line(name: str, hostile_models: dict[str, Path]):
    path = hostile_models[name]
    done = fathom_chat("--model", str(path), "--prompt", "What is 3+4?")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fathom-chat: {path.name}: its chat template ")
    assert HOSTILE[name][1] in lines[0]
    assert done.stdout == ""
