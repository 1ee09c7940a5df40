"""Render a conversation with the GGUF's own chat template: bounded, and with text kept as text.

The template comes from a downloaded file, so it runs in Jinja's immutable sandbox with limits on
time, size and nesting (engine/template_limits.py). Its output is returned in pieces: the control
tokens the template's own markup writes (`<｜User｜>`, `<｜Assistant｜>`, BOS/EOS) and text. A
message that holds the text of a control token (pasted, or written by the model) stays text, so a
user cannot forge a turn boundary: before rendering, every control-token text inside a message is
swapped for a placeholder no one can type (it carries a fresh random nonce), the template's output
is split at the control tokens that remain, which are the markup's, and the placeholders are put
back inside the text pieces. The template sees the same messages otherwise, so for ordinary
messages the pieces tokenize exactly as the whole prompt did with special-token parsing on.
(Only a template that itself writes half a control token right beside a message could let the
message complete it; the R1 templates write whole tokens, and the template is the model's own.)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import jinja2

from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.template_limits import (
    BoundedEnvironment,
    RenderLimits,
    TemplateLimitError,
    render_bounded,
)
from fathom_desktop.engine.types import ChatMessage

# Rendered at load: a template that fails or runs away on this is refused before use.
PROBE_CONVERSATION = (
    ChatMessage("system", "You are a careful mathematician."),
    ChatMessage("user", "What is 2 + 2?"),
    ChatMessage("assistant", "<think>\nTwo and two.\n</think>\n\n\\boxed{4}"),
    ChatMessage("user", "And 3 + 4?"),
)


class ChatTemplateError(ModelFileError):
    """The model's chat template is broken, fails, or went past a limit.

    `cause` completes "the chat template ..." (e.g. "took longer than 2 s to format a
    conversation"); str() is the whole sentence.
    """

    def __init__(self, cause: str) -> None:
        cause = cause.rstrip(".")
        super().__init__(f"The model's chat template {cause}.")
        self.cause = cause


@dataclass(frozen=True)
class PromptPiece:
    text: str
    control: bool  # a control token written by the template's markup


@dataclass(frozen=True)
class RenderedPrompt:
    pieces: tuple[PromptPiece, ...]

    @property
    def text(self) -> str:
        return "".join(piece.text for piece in self.pieces)


def _raise_exception(message: str) -> None:
    # Hugging Face templates call this to reject conversations they cannot format.
    raise jinja2.TemplateError(message)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ChatTemplate:
    """A compiled chat template with the model's BOS/EOS text and control-token texts.

    `control_texts` are the texts of the vocabulary's control tokens; the template's markup may
    write them, messages may not. Raises ChatTemplateError when the source is not valid Jinja.
    """

    def __init__(
        self,
        source: str,
        *,
        bos_token: str,
        eos_token: str,
        control_texts: Iterable[str] = (),
        limits: RenderLimits | None = None,
    ) -> None:
        # The same whitespace handling as transformers' apply_chat_template, so that prompts
        # match the ones the model was trained on.
        self._environment = BoundedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        self._environment.globals["raise_exception"] = _raise_exception
        try:
            self._template = self._environment.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(
                f"is not valid Jinja (line {error.lineno}: {_one_line(error.message or '')})"
            ) from None
        except (jinja2.TemplateError, RecursionError, MemoryError) as error:
            raise ChatTemplateError(f"is not valid Jinja ({_one_line(str(error))})") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.limits = limits or RenderLimits()
        # llama.cpp matches the longest control token first; so does the split below.
        self._control = tuple(sorted(set(filter(None, control_texts)), key=len, reverse=True))
        self._control_pattern = re.compile("|".join(map(re.escape, self._control)))

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        return self.render_pieces(messages, add_generation_prompt=add_generation_prompt).text

    def render_pieces(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> RenderedPrompt:
        """The prompt as control-token pieces (from the markup only) and text pieces.

        Raises ChatTemplateError with the cause when the template fails or goes past a limit.
        """
        placeholders = _Placeholders(self._control, self._control_pattern)
        context = {
            "messages": [
                {"role": m.role, "content": placeholders.hide(m.content)} for m in messages
            ],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        input_chars = sum(len(m.content) for m in messages)
        try:
            rendered = render_bounded(
                self._template, self._environment, self.limits, input_chars, context
            )
        except TemplateLimitError as error:
            raise ChatTemplateError(str(error)) from None
        except jinja2.TemplateError as error:
            reason = _one_line(error.message or type(error).__name__)
            raise ChatTemplateError(f"failed: {reason}") from None
        except Exception as error:  # anything a template expression can raise (1/0, bad types)
            reason = f"{type(error).__name__}: {_one_line(str(error))}"
            raise ChatTemplateError(f"failed: {reason}") from None
        pieces = [
            PromptPiece(text if control else placeholders.restore(text), control)
            for text, control in split_control(rendered, self._control)
        ]
        return RenderedPrompt(tuple(pieces))

    def probe(self) -> None:
        """Render a small conversation; raises ChatTemplateError as any later render would."""
        self.render_pieces(PROBE_CONVERSATION)


class _Placeholders:
    """Swaps control-token texts inside messages for placeholders, and back."""

    def __init__(self, control_texts: Sequence[str], pattern: re.Pattern[str]) -> None:
        self._control = control_texts
        self._pattern = pattern
        # Private-use characters around a fresh nonce: neither a user nor a template can guess it.
        self._nonce = secrets.token_hex(8)
        self._hidden: list[str] = []
        self._restore = re.compile(f"\ue000{self._nonce}:(\\d+)\ue001")

    def hide(self, content: str) -> str:
        # Substring tests first: far faster than the pattern on text that holds none of them.
        if not any(text in content for text in self._control):
            return content
        return self._pattern.sub(self._placeholder, content)

    def _placeholder(self, match: re.Match[str]) -> str:
        self._hidden.append(match.group(0))
        return f"\ue000{self._nonce}:{len(self._hidden) - 1}\ue001"

    def restore(self, text: str) -> str:
        if not self._hidden:
            return text
        return self._restore.sub(lambda match: self._hidden[int(match.group(1))], text)


def split_control(text: str, control_texts: Sequence[str]) -> list[tuple[str, bool]]:
    """Split `text` at control-token texts the way llama.cpp's special-token pass does.

    `control_texts` longest first; each is found left to right in what is still plain text.
    Returns (piece, is_control) in order, without empty pieces.
    """
    fragments: list[tuple[str, bool]] = [(text, False)] if text else []
    for token in [token for token in control_texts if token in text]:
        split: list[tuple[str, bool]] = []
        for fragment, control in fragments:
            if control or token not in fragment:
                split.append((fragment, control))
                continue
            for index, part in enumerate(fragment.split(token)):
                if index:
                    split.append((token, True))
                if part:
                    split.append((part, False))
        fragments = split
    return fragments

