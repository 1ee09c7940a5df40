"""Stop sequences over streamed answer text.

The engine has no notion of client stop strings, so the server watches the answer as it streams:
text that could be the start of a stop sequence is held back until the next piece decides it, and
nothing from the stop sequence on is ever sent. The reasoning is not searched: clients send stop
sequences for the answer they read, and a reasoning model's scratch work routinely contains them.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of `text` that is safe to send; sets `stopped` once a sequence appears."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        hits = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        hold = max(_partial_suffix(buffer, stop) for stop in self._stops)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """What was held back when the answer ended without completing a stop sequence."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Whole-text version: (text before the first stop sequence, whether one was found)."""
    matcher = StopMatcher(stops)
    kept = matcher.feed(text)
    return kept + matcher.flush(), matcher.stopped
