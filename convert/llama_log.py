"""llama.cpp's log levels, for everything that reads its log (the quantizer here, the engine).

The numbering is the one in the llama.cpp bundled with the pinned llama-cpp-python
(`enum ggml_log_level`); older releases, and llama-cpp-python's own `_logger.py`, number them
differently, so nothing else in the project may spell these as literals.
"""

from __future__ import annotations

from enum import IntEnum


class LogLevel(IntEnum):
    NONE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    # Continues the previous message: it has that message's level.
    CONT = 5


class LevelTracker:
    """Gives CONT fragments the level of the message they continue."""

    def __init__(self) -> None:
        self._last = LogLevel.NONE

    def resolve(self, level: int) -> int:
        if level == LogLevel.CONT:
            return self._last
        self._last = LogLevel(level) if level in LogLevel._value2member_map_ else LogLevel.NONE
        return level
