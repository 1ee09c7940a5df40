"""What the chat window can do right now, shared by the window and the controllers it owns.

Apart from `main_window` so that `turns` and `conversations` can read the state without importing
the window they belong to.
"""

from __future__ import annotations

from enum import StrEnum


class ChatState(StrEnum):
    NO_MODEL = "no model"
    LOADING = "loading"
    READY = "ready"
    GENERATING = "generating"
