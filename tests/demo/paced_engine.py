"""The real engine at a human pace, for killing its process in the middle of a reply.

The demo model writes a whole reply in well under a second on a CPU; a test that must stop it
half-way (kill the engine's process while the reasoning streams) needs time to do so. This engine
is the real LlamaEngine on llama.cpp, with a pause after each piece of text it streams.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

PAUSE_S = 0.05


def paced_llama_engine() -> object:
    from fathom_desktop.engine.llama_engine import LlamaEngine
    from fathom_desktop.engine.types import TextDelta

    class PacedLlamaEngine(LlamaEngine):
        def generate(self, messages, sampling, control=None) -> Iterator:
            stream = super().generate(messages, sampling, control)

            def paced() -> Iterator:
                for event in stream:
                    yield event
                    if isinstance(event, TextDelta):
                        time.sleep(PAUSE_S)

            return paced()

    return PacedLlamaEngine()
