"""Render an untrusted Jinja chat template with limits on time, size and nesting.

A chat template arrives inside a downloaded model file. Jinja's immutable sandbox keeps it away
from Python objects, but not from the machine: a nested loop runs for ever, and a loop or a
string repetition can fill memory. Every render here is bounded three ways:

- **Time.** Jinja compiles a template to Python, so a line tracer (`sys.settrace`, installed only
  for the rendering thread and only while it renders) sees every line the template runs and
  raises past the deadline; the work stops where it is, and nothing is left running. The
  alternatives were worse: a rendering thread that is abandoned keeps running and allocating, and
  an exception injected from a watchdog thread (PyThreadState_SetAsyncExc) lands at an arbitrary
  bytecode, inside Jinja's own handlers or finally blocks. The price is speed: while a tracer is
  set CPython 3.11 runs its slower tracing dispatch, and every call pays for a trace event.
  `bench/chat_template_overhead.py` on the R1 template (2-core box, size checks included):
  6 messages about 0.15 ms plain, 0.9 ms bounded; 202 messages about 3 ms plain, 20 ms
  bounded. That is paid once or twice per reply, beside a prompt evaluation of seconds.
- **Size.** The output is consumed chunk by chunk and refused past a cap proportional to the
  conversation. Every value one step can build is checked against the same cap *before* the
  step allocates it: `*`, `**`, `%`, `+` and `~`, a macro's or a `{% set %}` block's text, each
  `{{ ... }}` before it becomes text, each call's and filter's arguments and result (their text
  size is counted by walking containers, so a list holding one long text many times counts
  every copy). Joins and replacements are predicted from their inputs. String methods are an
  allow-list of those that cannot multiply their input (no format, expandtabs or translate);
  filters that pad or reflow by a caller-given amount (center, indent, wordwrap, format) and
  `lipsum` are not offered, and `tojson` indents by at most 16. Chat templates use none of them.
- **Nesting.** Template frames (macros calling macros) are counted by the tracer.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat, EvalContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

TEMPLATE_FILENAME = "<template>"  # what Jinja names code compiled from a string
# Filters that pad or reflow text by an amount the template chooses.
REMOVED_FILTERS = ("center", "indent", "wordwrap", "format", "xmlattr")
# An integer this large as an argument (a width, a count) can only be meant to exhaust memory.
_MAX_INT_ARGUMENT = 1_000_000
_MAX_INT_BITS = 4096
_LONG_NUMBER = re.compile(r"\d{7,}")  # a width or precision of a million or more in a format
_PASSED_ARGUMENTS = (jinja2.runtime.Context, EvalContext, jinja2.Environment)
_MAX_JSON_INDENT = 16
# String methods a template may call: each returns at most about as much text as it is given.
# format, format_map, expandtabs and translate can multiply it, and no chat template needs them.
STRING_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum",
        "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
        "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip",
        "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust",
        "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip",
        "swapcase", "title", "upper", "zfill",
    }
)  # fmt: skip


class TemplateLimitError(Exception):
    """A render went past one of its limits; str() says which, in words for the user."""


@dataclass(frozen=True)
class RenderLimits:
    seconds: float = 2.0
    # Output and values: a fixed allowance plus a multiple of the conversation's own text, so a
    # long (legitimate) conversation is never refused while the template cannot inflate it.
    base_chars: int = 256 * 1024
    chars_per_input_char: int = 4
    max_depth: int = 64

    def max_chars(self, input_chars: int) -> int:
        return self.base_chars + self.chars_per_input_char * input_chars


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        # `a ~ b ~ c` normally compiles to a plain join; route it through the size check.
        self.write("environment.checked_str_join((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


def text_size(value: Any, budget: int) -> int:
    """About how many characters str(value) has, counting no further than past `budget`.

    Walks containers (a list of one long text repeated is as long as all its copies) without
    building the text, so a value can be refused before str() allocates it.
    """
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, Namespace):
        value = object.__getattribute__(value, "_Namespace__attrs")
    if isinstance(value, dict):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return 32  # numbers, Undefined, loop and macro objects: short texts
    total = 2
    for item in items:
        total += text_size(item, budget - total) + 2
        if total > budget:
            break
    return total


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every size-amplifying step checked against `max_chars`."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        self.max_chars = RenderLimits().max_chars(0)
        # finalize sees every `{{ ... }}` value before str() turns it into output.
        super().__init__(finalize=self._finalize_output, **options)
        for name in REMOVED_FILTERS:
            self.filters.pop(name, None)
        self.globals.pop("lipsum", None)
        for name, function in list(self.filters.items()):
            self.filters[name] = self._guarded_filter(name, function)
        # Macro bodies and `{% set %}` blocks are joined with environment.concat.
        self.concat = self.checked_concat  # type: ignore[method-assign]

    # -- size checks --------------------------------------------------------------------------

    def _refuse(self, what: str) -> TemplateLimitError:
        return TemplateLimitError(f"builds {what} larger than {self.max_chars:,} characters")

    @staticmethod
    def _refuse_number() -> TemplateLimitError:
        return TemplateLimitError(f"computes a number of more than {_MAX_INT_BITS:,} bits")

    def _too_large(self, value: Any) -> bool:
        return text_size(value, self.max_chars) > self.max_chars

    def _check_value(self, value: Any) -> Any:
        if self._too_large(value):
            raise self._refuse("a value")
        if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise self._refuse_number()
        return value

    def _finalize_output(self, value: Any) -> Any:
        if self._too_large(value):
            raise self._refuse("an output")
        return value

    def _check_arguments(self, args: Iterable[Any]) -> None:
        for argument in args:
            if (
                isinstance(argument, int)
                and not isinstance(argument, bool)
                and abs(argument) > _MAX_INT_ARGUMENT
            ):
                raise TemplateLimitError(f"passes the number {argument:,} as a size or count")
            if self._too_large(argument):
                raise self._refuse("an argument")

    def _check_join(self, separator: Any, items: Iterable[Any]) -> list[Any]:
        """The items, listed (a generator is read once), if joining them stays under the cap."""
        listed = list(items)
        total = len(str(separator)) * max(0, len(listed) - 1)
        for item in listed:
            total += text_size(item, self.max_chars)
            if total > self.max_chars:
                raise self._refuse("a joined text")
        return listed

    def _check_replace(self, text: Any, old: Any, new: Any) -> None:
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            count = len(text) + 1 if not old else text.count(old)
            if len(text) + count * (len(new) - len(old)) > self.max_chars:
                raise self._refuse("a replaced text")

    def checked_concat(self, pieces: Iterable[str]) -> str:
        collected = list(pieces)
        if sum(map(len, collected)) > self.max_chars:
            raise self._refuse("a text")
        return "".join(collected)

    def checked_str_join(self, values: Iterable[Any]) -> str:
        listed = list(values)
        if sum(text_size(value, self.max_chars) for value in listed) > self.max_chars:
            raise self._refuse("a text")
        return "".join(map(str, listed))

    # -- the sandbox's hooks ------------------------------------------------------------------

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "*":
            self._predict_product(left, right)
        elif operator == "**":
            self._predict_power(left, right)
        elif operator == "%" and isinstance(left, str):
            if _LONG_NUMBER.search(left):
                raise TemplateLimitError("formats with a width of a million characters or more")
            arguments = right if isinstance(right, tuple) else (right,)
            self._check_arguments(arguments)
            if len(left) + text_size(arguments, self.max_chars) > self.max_chars:
                raise self._refuse("a formatted text")
        elif operator == "+" and self._too_large((left, right)):
            raise self._refuse("a value")
        return self._check_value(super().call_binop(context, operator, left, right))

    def _predict_product(self, left: Any, right: Any) -> None:
        for sequence, count in ((left, right), (right, left)):
            if not (isinstance(count, int) and isinstance(sequence, str | list | tuple)):
                continue
            if text_size(sequence, self.max_chars) * max(count, 0) > self.max_chars:
                raise self._refuse("a repeated value")
        both_numbers = isinstance(left, int) and isinstance(right, int)
        if both_numbers and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise self._refuse_number()

    def _predict_power(self, base: Any, exponent: Any) -> None:
        if not (isinstance(base, int) and isinstance(exponent, int)):
            return
        if exponent > 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > _MAX_INT_BITS:
            raise self._refuse_number()

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self._check_arguments((*args, *kwargs.values()))
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name not in STRING_METHODS:
                raise TemplateLimitError(f"calls str.{name}, which chat templates may not use")
            if name == "join" and args:
                args = (__self._check_join(owner, args[0]), *args[1:])
            elif name == "replace" and len(args) >= 2:
                __self._check_replace(owner, args[0], args[1])
        elif name in ("format", "format_map"):
            # The sandbox hands out str.format wrapped; it can repeat its arguments at will.
            raise TemplateLimitError(f"calls str.{name}, which chat templates may not use")
        return __self._check_value(super().call(__context, __obj, *args, **kwargs))

    def _guarded_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        # Filters are called directly by compiled templates, not through `call`.
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._check_arguments((*args, *kwargs.values()))
            # Jinja passes a context, eval context or environment first to filters marked so.
            first = 1 if args and isinstance(args[0], _PASSED_ARGUMENTS) else 0
            values = list(args[first:])
            if name == "join" and values:
                separator = values[1] if len(values) > 1 else kwargs.get("d", "")
                values[0] = self._check_join(separator, values[0])
            elif name == "replace" and len(values) >= 3:
                self._check_replace(values[0], values[1], values[2])
            elif name == "tojson":
                indent = kwargs.get("indent", values[1] if len(values) > 1 else None)
                if isinstance(indent, int) and indent > _MAX_JSON_INDENT:
                    raise TemplateLimitError(f"indents JSON by {indent:,} spaces")
            return self._check_value(function(*args[:first], *values, **kwargs))

        if hasattr(function, "jinja_pass_arg"):
            guarded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
        return guarded


class _Watchdog:
    """The line tracer: a deadline for everything, a depth limit for template frames."""

    def __init__(self, limits: RenderLimits) -> None:
        self._deadline = time.monotonic() + limits.seconds
        self._limits = limits
        self._depth = 0

    def on_call(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if frame.f_code.co_filename != TEMPLATE_FILENAME:
            # Jinja's and Python's own functions do a bounded amount of work per call (ranges
            # are capped, sizes checked) and return to a template line, where time is checked.
            # Tracing them costs a Python call each: keep that call as short as possible.
            return None
        self._check_time()
        self._depth += 1
        if self._depth > self._limits.max_depth:
            raise TemplateLimitError(
                f"nests deeper than {self._limits.max_depth} levels (macros calling macros)"
            )
        return self.on_event

    def on_event(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "line":
            self._check_time()
        elif event == "return":
            self._depth -= 1
        return self.on_event

    def _check_time(self) -> None:
        if time.monotonic() > self._deadline:
            raise TemplateLimitError(
                f"took longer than {self._limits.seconds:g} s to format a conversation"
            )


def render_bounded(
    template: jinja2.Template,
    environment: BoundedEnvironment,
    limits: RenderLimits,
    input_chars: int,
    context: dict[str, Any],
) -> str:
    """Render within `limits`; raises TemplateLimitError past one, or the template's own error."""
    max_chars = limits.max_chars(input_chars)
    environment.max_chars = max_chars
    watchdog = _Watchdog(limits)
    previous = sys.gettrace()
    pieces: list[str] = []
    total = 0
    sys.settrace(watchdog.on_call)
    try:
        for chunk in template.generate(context):
            total += len(chunk)
            if total > max_chars:
                raise TemplateLimitError(f"writes more than {max_chars:,} characters")
            pieces.append(chunk)
    except RecursionError:
        raise TemplateLimitError("recurses too deeply") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)
