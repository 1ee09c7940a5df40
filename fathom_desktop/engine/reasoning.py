"""Split a streamed reply into reasoning and answer at the `<think>` / `</think>` tags.

Text arrives in arbitrary pieces (one token may be half a tag, or hold a tag and the answer's first
word), so the splitter holds back only what it cannot classify yet: a possible partial tag, and the
whitespace that might turn out to surround a tag. Whatever the chunking, the concatenated output is
the same; the property tests in tests/engine/test_reasoning.py check exactly that.

The splitter also carries the engine's token counts: each piece of text is fed with the number of
tokens it came from, those tokens belong to the section the text was fed into (a legacy reply's
tokens before it shows its hand belong to the section it turns out to open), and every delta
carries the tokens fed since the previous delta of its kind. Tokens whose text never shows (the
`</think>` tag, the whitespace around it) ride on the next delta of their section, or on a delta
with no text when the section ends, so the deltas of each kind always add up to the tokens fed.
"""

from __future__ import annotations

from enum import Enum

from fathom_desktop.engine.types import DeltaKind, TextDelta

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class _State(Enum):
    # Legacy templates: the model may or may not open with `<think>`; wait until we know.
    DETECT = "detect"
    REASONING = "reasoning"
    ANSWER = "answer"


def prompt_opens_reasoning(prompt: str) -> bool:
    """True when the rendered prompt already opened the reasoning (current R1 templates)."""
    return prompt.rstrip().endswith(THINK_OPEN)


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ReasoningSplitter:
    """Feed decoded text; get typed deltas with the tags and their conventional whitespace removed.

    `starts_in_reasoning=True` when the prompt ended inside `<think>` (see
    `prompt_opens_reasoning`): everything up to `</think>` is reasoning. Otherwise the reply is
    reasoning only if it opens with `<think>` (after optional whitespace); any other start means
    there is no reasoning at all.
    A reasoning that never closes stays reasoning to the end.
    """

    def __init__(self, *, starts_in_reasoning: bool) -> None:
        self._state = _State.REASONING if starts_in_reasoning else _State.DETECT
        self._pending = ""
        # Leading whitespace of a section is dropped until its first visible character.
        self._at_section_start = True
        # Tokens of a legacy reply fed before it showed whether it reasons.
        self._undecided_tokens = 0
        self._unreported = {DeltaKind.REASONING: 0, DeltaKind.ANSWER: 0}
        self._counted = {DeltaKind.REASONING: 0, DeltaKind.ANSWER: 0}

    @property
    def phase(self) -> DeltaKind | None:
        """What the next text belongs to; None while a legacy reply has not shown its hand."""
        if self._state is _State.REASONING:
            return DeltaKind.REASONING
        if self._state is _State.ANSWER:
            return DeltaKind.ANSWER
        return None

    def tokens(self, kind: DeltaKind) -> int:
        """Tokens fed so far that belong to `kind`, whether or not a delta carried them yet."""
        return self._counted[kind]

    def feed(self, text: str, tokens: int = 0) -> list[TextDelta]:
        """Text decoded from `tokens` tokens (0: a caller that does not count tokens)."""
        phase = self.phase
        if phase is None:
            self._undecided_tokens += tokens
        else:
            self._count(phase, tokens)
        if not text:
            return []
        self._pending += text
        return self._drain(final=False)

    def finish(self) -> list[TextDelta]:
        """Flush what was held back; the stream has ended."""
        out = self._drain(final=True)
        for kind in DeltaKind:
            self._emit(out, kind, "", carry_tokens=True)
        return out

    def _count(self, kind: DeltaKind, tokens: int) -> None:
        self._unreported[kind] += tokens
        self._counted[kind] += tokens

    def _enter(self, state: _State) -> None:
        self._state = state
        self._at_section_start = True
        phase = self.phase
        if phase is not None and self._undecided_tokens:
            self._count(phase, self._undecided_tokens)
            self._undecided_tokens = 0

    def _drain(self, *, final: bool) -> list[TextDelta]:
        out: list[TextDelta] = []
        while True:
            if self._state is _State.DETECT:
                if not self._detect(final):
                    break
            elif self._state is _State.REASONING:
                if not self._reasoning(final, out):
                    break
            else:
                self._answer(out)
                break
        return out

    def _detect(self, final: bool) -> bool:
        """Decide whether a legacy reply opens with `<think>`; True when the state moved on."""
        visible = self._pending.lstrip()
        if visible.startswith(THINK_OPEN):
            self._pending = visible[len(THINK_OPEN) :]
            self._enter(_State.REASONING)
            return True
        if not final and THINK_OPEN.startswith(visible):
            return False  # only whitespace or a partial `<think>` so far
        self._enter(_State.ANSWER)
        return True

    def _reasoning(self, final: bool, out: list[TextDelta]) -> bool:
        """Emit reasoning up to `</think>`; True when the answer has begun."""
        if self._at_section_start:
            # A model that opens `<think>` although the template already did: drop the repeats.
            self._pending = self._pending.lstrip()
            while self._pending.startswith(THINK_OPEN):
                self._pending = self._pending[len(THINK_OPEN) :].lstrip()
            if not self._pending or (not final and THINK_OPEN.startswith(self._pending)):
                return False
            self._at_section_start = False
        close = self._pending.find(THINK_CLOSE)
        if close >= 0:
            # The section ends here: its last tokens (the tag's own) go out even without text.
            self._emit(out, DeltaKind.REASONING, self._pending[:close].rstrip(), carry_tokens=True)
            self._pending = self._pending[close + len(THINK_CLOSE) :]
            self._enter(_State.ANSWER)
            return True
        if final:
            self._emit(out, DeltaKind.REASONING, self._pending.rstrip())
            self._pending = ""
            return False
        # Hold back a possible partial `</think>` and the whitespace before it.
        cut = len(self._pending) - _partial_tag_suffix(self._pending, THINK_CLOSE)
        safe = self._pending[:cut].rstrip()
        self._emit(out, DeltaKind.REASONING, safe)
        self._pending = self._pending[len(safe) :]
        return False

    def _answer(self, out: list[TextDelta]) -> None:
        if self._at_section_start:
            self._pending = self._pending.lstrip()
            if not self._pending:
                return
            self._at_section_start = False
        self._emit(out, DeltaKind.ANSWER, self._pending)
        self._pending = ""

    def _emit(
        self, out: list[TextDelta], kind: DeltaKind, text: str, *, carry_tokens: bool = False
    ) -> None:
        """Append a delta with the tokens not yet reported for `kind`; an empty one only when
        `carry_tokens` and there are tokens to carry."""
        tokens = self._unreported[kind]
        if text or (carry_tokens and tokens):
            out.append(TextDelta(kind, text, tokens=tokens))
            self._unreported[kind] = 0


def split_reasoning(text: str, *, starts_in_reasoning: bool) -> tuple[str, str]:
    """Whole-text split (reasoning, answer); the streaming splitter's reference behaviour."""
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    parts = splitter.feed(text) + splitter.finish()
    reasoning = "".join(d.text for d in parts if d.kind is DeltaKind.REASONING)
    answer = "".join(d.text for d in parts if d.kind is DeltaKind.ANSWER)
    return reasoning, answer
