"""What the terminal front ends (fathom-chat, fathom-eval, fathom-serve) share: option types and
what Ctrl-C means while the model writes."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fathom_desktop.engine.types import GenerationControl

if TYPE_CHECKING:
    from fathom_desktop.engine.remote import RemoteEngine


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


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """`--server URL [--api-key KEY] [--server-model NAME]`: the model runs on another machine."""
    remote = parser.add_argument_group(
        "a model served elsewhere (vLLM, llama.cpp server, fathom-serve)"
    )
    remote.add_argument(
        "--server",
        metavar="URL",
        help="use the OpenAI-compatible server at URL (e.g. http://gpu-box:8000/v1) instead of "
        "a local GGUF",
    )
    remote.add_argument(
        "--api-key",
        default=os.environ.get("FATHOM_API_KEY") or None,
        help="the server's API key (or set FATHOM_API_KEY)",
    )
    remote.add_argument(
        "--server-model", metavar="NAME", help="the server's model (default: the first it lists)"
    )


def server_engine(args: argparse.Namespace) -> RemoteEngine:
    """The engine for the `--server` options (not connected yet: load() connects)."""
    from fathom_desktop.engine.remote import RemoteEndpoint, RemoteEngine

    return RemoteEngine(RemoteEndpoint(args.server, api_key=args.api_key, model=args.server_model))


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
