"""Render a conversation with the GGUF's own chat template, in a sandbox.

The template comes from a downloaded file, so it runs in Jinja's immutable sandbox: it can
format strings but not reach Python objects or mutate what it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fathom_desktop.engine.errors import EngineError, ModelFileError
from fathom_desktop.engine.types import ChatMessage


def _raise_exception(message: str) -> None:
    # Hugging Face templates call this to reject conversations they cannot format.
    raise jinja2.TemplateError(message)


class ChatTemplate:
    """A compiled chat template with the model's own BOS/EOS text."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        # The same whitespace handling as transformers' apply_chat_template, so that prompts
        # match the ones the model was trained on.
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.globals["raise_exception"] = _raise_exception
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as error:
            raise ModelFileError(f"The model's chat template is not valid Jinja: {error}") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as error:
            raise EngineError(
                f"The model's chat template could not format the chat: {error}"
            ) from None
