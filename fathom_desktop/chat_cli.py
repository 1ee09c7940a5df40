"""fathom-chat: talk to a Fathom GGUF in the terminal, or answer one prompt (optionally as JSON).

Without --model it uses the embedded demo model (fathom-tiny), as the desktop app does, made
into a GGUF in the models folder on first use.

Interactive: reasoning is dimmed on a terminal, the answer plain; Ctrl-C stops the current
reply, a second Ctrl-C (or /exit, or Ctrl-D) quits; /reset starts a new conversation.
Errors end the program with one readable line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import select
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, get_args

from convert.errors import ConversionError
from fathom_desktop.engine.errors import EngineError
from fathom_desktop.engine.types import (
    FATHOM_N_CTX,
    FATHOM_TEMPERATURE,
    FATHOM_TOP_P,
    ChatMessage,
    ContextTrimmed,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    KvCacheType,
    LoadOptions,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from fathom_desktop.terminal import (
    add_server_options,
    ctrl_c_cancels,
    gpu_layers_option,
    positive_option,
    server_engine,
)

PROG = "fathom-chat"
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
DIM, RESET = "\033[2m", "\033[0m"


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError("cannot be negative")
    return number


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {value}")
    return number


def _temperature(value: str) -> float:
    number = _finite(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative ({value})")
    return number


def _top_p(value: str) -> float:
    number = _finite(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {value}")
    return number


def _text(value: str) -> str:
    """A message given on the command line: refuse bytes that are not UTF-8, naming them.

    Python hands undecodable argument bytes over as lone surrogates, which no tokenizer takes.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raw = value[error.start : error.end].encode("utf-8", "surrogateescape")
        shown = " ".join(f"0x{byte:02x}" for byte in raw[:4])
        what = "byte" if len(raw) == 1 else "bytes"
        raise argparse.ArgumentTypeError(
            f"is not valid UTF-8 text ({what} {shown} at character {error.start + 1})"
        ) from None
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        # One line: argparse's usage block is longer than the mistake it points at.
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Chat with Fathom-R1-14B (a GGUF file) in the terminal.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="the GGUF model file (default: the embedded demo model, math word problems only)",
    )
    parser.add_argument("--prompt", type=_text, help="answer this one message and exit")
    parser.add_argument("--system", type=_text, help="system prompt")
    parser.add_argument(
        "--eval-preset",
        action="store_true",
        help="add Fathom's evaluation instruction (reason step by step, \\boxed{} answer)",
    )
    parser.add_argument("--max-tokens", type=positive_option, help="stop the reply after N tokens")
    parser.add_argument("--temperature", type=_temperature, default=FATHOM_TEMPERATURE)
    parser.add_argument("--top-p", type=_top_p, default=FATHOM_TOP_P)
    parser.add_argument("--seed", type=int, help="sampling seed, for repeatable replies")
    parser.add_argument(
        "--n-gpu-layers",
        type=gpu_layers_option,
        default=None,
        metavar="N|auto",
        help="layers to offload to the GPU (default: auto, from the VRAM planner)",
    )
    parser.add_argument("--n-ctx", type=positive_option, default=FATHOM_N_CTX, help="context size")
    parser.add_argument("--kv-cache-type", choices=get_args(KvCacheType), default="f16")
    parser.add_argument(
        "--flash-attn",
        choices=("auto", "on", "off"),
        default="auto",
        help="flash attention (default: on where the build supports it)",
    )
    parser.add_argument("--threads", type=positive_option, help="CPU threads for generation")
    parser.add_argument(
        "--thinking-budget",
        type=_non_negative,
        metavar="N",
        help="close the reasoning after N tokens and ask for the answer",
    )
    parser.add_argument(
        "--consensus",
        type=positive_option,
        metavar="K",
        help="sample K replies and majority-vote their \\boxed{} answers (needs --prompt)",
    )
    parser.add_argument(
        "--parallel",
        type=positive_option,
        metavar="P",
        help="with --consensus: decode at most P samples at once (default: as many as fit)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (needs --prompt)"
    )
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="print the llama.cpp build, GPU and model checks, then exit",
    )
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")
    add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.json or args.consensus) and not args.prompt and not args.diagnostics:
        parser.error("--json and --consensus need --prompt")
    if args.server and (args.model or args.diagnostics):
        parser.error("--server runs the model elsewhere: leave out --model and --diagnostics")
    if args.parallel is not None and not args.consensus:
        parser.error("--parallel goes with --consensus")
    if args.verbose:
        from fathom_desktop.engine import llama_backend

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        llama_backend.LOG.pass_through = True
    else:
        # The reason for a failure is in our one-line message; llama.cpp's own lines are noise.
        logging.getLogger("fathom_desktop.engine").setLevel(logging.CRITICAL)
    try:
        if args.diagnostics:
            return _diagnostics(args)
        if args.model is None and not args.server:
            args.model = _demo_model()
        return _run(args)
    except (EngineError, ConversionError) as error:
        _fail(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _demo_model() -> Path:
    """The demo's GGUF, made on first use; raises ConversionError when the demo is unavailable."""
    from convert.progress import NullProgress, TqdmProgress
    from fathom_desktop import demo

    # stderr, so that --json keeps stdout to the one JSON object.
    dim, reset = (DIM, RESET) if sys.stderr.isatty() else ("", "")
    print(
        f"{dim}No --model given: using the demo model {demo.DEMO_NAME} "
        f"(math word problems only).{reset}",
        file=sys.stderr,
    )
    # Bars only for a person watching; piped output and logs get no carriage-return clutter.
    progress = TqdmProgress() if sys.stderr.isatty() else NullProgress()
    try:
        return demo.ensure_demo_model(progress)
    finally:
        progress.finish()


def _load_options(args: argparse.Namespace) -> LoadOptions:
    flash = {"auto": None, "on": True, "off": False}[args.flash_attn]
    return LoadOptions(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_gpu_layers=args.n_gpu_layers,
        flash_attn=flash,
        kv_cache_type=args.kv_cache_type,
        n_threads=args.threads,
    )


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        thinking_budget=args.thinking_budget,
    )


def _first_messages(args: argparse.Namespace) -> list[ChatMessage]:
    return [ChatMessage("system", args.system)] if args.system else []


def _user_message(args: argparse.Namespace, text: str) -> ChatMessage:
    if args.eval_preset:
        from fathom_desktop.engine.prompt import with_eval_instruction

        return with_eval_instruction([ChatMessage("user", text)])[0]
    return ChatMessage("user", text)


def _run(args: argparse.Namespace) -> int:
    engine: Any
    if args.server:
        engine = server_engine(args)
    else:
        from fathom_desktop.engine import LlamaEngine

        # In-process, unlike the window's engine host: a terminal chat has no conversation on
        # screen for a crash to take with it, and one process keeps Ctrl-C, the exit status and
        # llama.cpp's own messages where a terminal user expects them.
        engine = LlamaEngine()
    try:
        report = engine.load(None if args.server else _load_options(args))
        if not args.json:
            for note in report.notes:
                print(f"[{note}]", file=sys.stderr)
        if args.prompt is None:
            return _interactive(engine, args)
        messages = [*_first_messages(args), _user_message(args, args.prompt)]
        if args.consensus:
            return _one_consensus(engine, args, messages)
        return _one_prompt(engine, args, messages)
    finally:
        engine.close()


# -- one prompt ----------------------------------------------------------------------------


class _Printer:
    """Writes deltas as they come: reasoning dimmed on a terminal, the answer plain."""

    def __init__(self, out: TextIO, *, show_reasoning: bool = True) -> None:
        self.out = out
        self.color = out.isatty()
        self.show_reasoning = show_reasoning
        self.kind: DeltaKind | None = None

    def event(self, event: StreamEvent) -> None:
        if isinstance(event, ContextTrimmed):
            print(
                f"[left out {event.dropped_messages} older messages to fit the context]",
                file=sys.stderr,
            )
        elif isinstance(event, TextDelta):
            if event.kind is DeltaKind.REASONING and not self.show_reasoning:
                return
            if event.kind is not self.kind:
                self._switch(event.kind)
            self.out.write(event.text)
            self.out.flush()

    def _switch(self, kind: DeltaKind) -> None:
        if self.kind is DeltaKind.REASONING:
            self.out.write((RESET if self.color else "") + "\n\n")
        if kind is DeltaKind.REASONING:
            self.out.write(DIM if self.color else "[reasoning]\n")
        self.kind = kind

    def end(self) -> None:
        if self.kind is DeltaKind.REASONING and self.color:
            self.out.write(RESET)
        if self.kind is not None:
            self.out.write("\n")
        self.out.flush()
        self.kind = None


def _stream(
    engine: Any,
    messages: list[ChatMessage],
    sampling: SamplingParams,
    control: GenerationControl,
    on_event: Callable[[StreamEvent], None],
) -> Finished:
    finished: Finished | None = None
    with ctrl_c_cancels(control):
        for event in engine.generate(messages, sampling, control):
            on_event(event)
            if isinstance(event, Finished):
                finished = event
    if finished is None:  # the engine always ends with Finished; guard against a broken one
        raise EngineError("The generation ended without a result.")
    return finished


def _stats_dict(finished: Finished) -> dict[str, Any]:
    stats = dataclasses.asdict(finished.stats)
    stats["finish_reason"] = finished.stats.finish_reason.value
    return stats


def _one_prompt(engine: Any, args: argparse.Namespace, messages: list[ChatMessage]) -> int:
    from fathom_desktop.engine.consensus import extract_boxed

    control = GenerationControl()
    printer = None if args.json else _Printer(sys.stdout)
    finished = _stream(
        engine,
        messages,
        _sampling(args),
        control,
        printer.event if printer else (lambda event: None),
    )
    if printer:
        printer.end()
    if finished.stats.finish_reason is FinishReason.INTERRUPTED:
        _fail("the connection to the server broke mid-reply; the reply above is partial.")
    if not printer:
        report = engine.loaded
        _print_json(
            {
                "reasoning": finished.reasoning,
                "answer": finished.answer,
                "finish_reason": finished.stats.finish_reason.value,
                "stats": _stats_dict(finished),
                "n_ctx": report.n_ctx,
                "n_gpu_layers": report.n_gpu_layers,
                "boxed": extract_boxed(finished.answer),
            }
        )
    if finished.stats.finish_reason is FinishReason.INTERRUPTED:
        return EXIT_ERROR
    return EXIT_INTERRUPTED if control.cancel.is_set() else EXIT_OK


def _one_consensus(engine: Any, args: argparse.Namespace, messages: list[ChatMessage]) -> int:
    control = GenerationControl()

    def progress(index: int, event: StreamEvent) -> None:
        if isinstance(event, Finished) and not args.json:
            print(
                f"[sample {index + 1}/{args.consensus}: {event.stats.finish_reason.value}]",
                file=sys.stderr,
            )

    with ctrl_c_cancels(control):
        result = engine.consensus(
            messages, _sampling(args), args.consensus, control, progress, parallel=args.parallel
        )
    if not result.samples:
        raise EngineError("No sample finished, so there is nothing to vote on.")
    winner = result.winner
    if args.json:
        report = engine.loaded
        _print_json(
            {
                "reasoning": winner.reasoning,
                "answer": winner.answer,
                "finish_reason": winner.stats.finish_reason.value,
                "stats": _stats_dict(winner),
                "n_ctx": report.n_ctx,
                "n_gpu_layers": report.n_gpu_layers,
                "boxed": result.answer,
                "votes": result.votes,
                "samples": [
                    {
                        "boxed": b,
                        "finish_reason": s.stats.finish_reason.value,
                        "reasoning_tokens": s.stats.reasoning_tokens,
                        "answer_tokens": s.stats.answer_tokens,
                        "answer": s.answer,
                    }
                    for s, b in zip(result.samples, result.boxed, strict=True)
                ],
                "parallel": result.parallel,
                "parallel_reason": result.parallel_reason,
            }
        )
    else:
        print(winner.answer)
        tally = ", ".join(f"{value}: {count}" for value, count in result.votes.items()) or "none"
        print(
            f"[consensus of {len(result.samples)}: {result.answer} (votes: {tally}); "
            f"samples decoded {result.parallel_reason}]",
            file=sys.stderr,
        )
    return EXIT_INTERRUPTED if control.cancel.is_set() else EXIT_OK


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, ensure_ascii=False))


# -- interactive ---------------------------------------------------------------------------


def _interactive(engine: Any, args: argparse.Namespace) -> int:
    print("Type a message. /reset starts over, /exit quits; Ctrl-C stops a reply.", file=sys.stderr)
    history = _first_messages(args)
    printer = _Printer(sys.stdout)
    reader = _LineReader()
    while True:
        try:
            line = reader.read("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return EXIT_OK
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return EXIT_OK
        if text == "/reset":
            history = _first_messages(args)
            print("[new conversation]", file=sys.stderr)
            continue
        messages = [*history, _user_message(args, text)]
        control = GenerationControl()
        try:
            finished = _stream(engine, messages, _sampling(args), control, printer.event)
        except EngineError as error:
            printer.end()
            _fail(str(error))
            continue
        printer.end()
        if control.cancel.is_set():
            print("[stopped]", file=sys.stderr)
        history = [
            *messages,
            ChatMessage("assistant", finished.answer, reasoning=finished.reasoning or None),
        ]


class _LineReader:
    """input(), but a Ctrl-C at the prompt always interrupts it.

    llama.cpp's worker threads can be the ones that receive SIGINT; a main thread blocked in a
    read would then not notice until Enter. Waiting in short select() slices lets Python run
    its signal handler between them. Lines are split here (not by sys.stdin's buffer) so that
    select() never waits on input that was already read.
    """

    def __init__(self) -> None:
        self._pending = b""

    def read(self, prompt: str) -> str:
        if os.name != "posix":
            return input(prompt)
        sys.stdout.write(prompt)
        sys.stdout.flush()
        fd = sys.stdin.fileno()
        while b"\n" not in self._pending:
            while not select.select([fd], [], [], 0.2)[0]:
                pass
            chunk = os.read(fd, 4096)
            if not chunk:
                if not self._pending:
                    raise EOFError
                break
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")


# -- diagnostics ---------------------------------------------------------------------------


def _diagnostics(args: argparse.Namespace) -> int:
    from fathom_desktop.engine import llama_backend
    from fathom_desktop.engine.gguf_check import check_model_file
    from fathom_desktop.engine.planner import detect_gpu, profile_from_model_file

    gpu = detect_gpu()
    lines = [
        f"llama-cpp-python: {llama_backend.library_version()}",
        f"gpu_offload_supported: {llama_backend.gpu_offload_supported()}",
        f"system: {llama_backend.system_info()}",
        "gpu: none found (NVML)"
        if gpu is None
        else f"gpu: {gpu.name}, {gpu.free_bytes / 2**30:.1f} GiB free "
        f"of {gpu.total_bytes / 2**30:.1f} GiB",
    ]
    if gpu is not None:
        from fathom_desktop.engine.gpu_support import usability_problem

        lines.append(f"gpu support: {usability_problem(gpu) or 'ok'}")
    if args.model is not None:
        info = check_model_file(args.model)
        profile = profile_from_model_file(
            info,
            n_ctx=args.n_ctx,
            kv_cache_type=args.kv_cache_type,
            flash_attn=args.flash_attn != "off",
        )
        plan = profile.plan(gpu.free_bytes if gpu else None)
        lines += [
            f"model: {info.path} ({info.name}, {info.file_type}, "
            f"{info.size_bytes / 2**30:.2f} GiB)",
            f"model check: ok ({info.arch}, {info.n_layers} blocks, "
            f"trained context {info.n_ctx_train:,})",
            f"offload plan at n_ctx {args.n_ctx:,}, {args.kv_cache_type} KV cache: {plan.label} "
            f"(predicted {plan.full_vram_bytes / 2**30:.2f} GiB of VRAM for all layers)",
        ]
    print("\n".join(lines))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
