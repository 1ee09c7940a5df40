"""What the terminal front ends (fathom-chat, fathom-eval, fathom-serve) share: option types and
what Ctrl-C means while the model writes."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from fathom_desktop.engine.types import GenerationControl


def positive_option(value: str) -> int:
    """A whole number of at least 1 (tokens, threads, samples, context size)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def gpu_layers_option(value: str) -> int | None:
    """`--gpu-layers`: a number of layers, -1 for all, or "auto" (None: the planner decides)."""
    if value == "auto":
        return None
    try:
        layers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use a number of layers, -1 for all, or 'auto'") from None
    if layers < -1:
        raise argparse.ArgumentTypeError("use a number of layers, -1 for all, or 'auto'")
    return layers


@contextmanager
def ctrl_c_cancels(control: GenerationControl) -> Iterator[None]:
    """The first Ctrl-C stops what the model is writing (between tokens); a second one quits."""

    def handler(_signum: int, _frame: object) -> None:
        if control.cancel.is_set():
            raise KeyboardInterrupt
        control.cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
