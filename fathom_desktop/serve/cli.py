"""fathom-serve: the local model behind an OpenAI-compatible API.

    fathom-serve [--model FILE.gguf] [--host 127.0.0.1] [--port 8080] [--api-key KEY]

Safe by default: it listens on the loopback interface only; listening anywhere else needs an API
key (--api-key or FATHOM_API_KEY), and then every request must carry it. Without --model it serves
the embedded demo model, as fathom-chat and the app do.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from convert.errors import ConversionError
from fathom_desktop.engine.errors import EngineError
from fathom_desktop.engine.types import FATHOM_N_CTX, KvCacheType, LoadOptions, LoadReport
from fathom_desktop.serve.app import DEFAULT_MAX_BODY_BYTES, ServerConfig, create_app
from fathom_desktop.serve.runner import EngineRunner
from fathom_desktop.terminal import gpu_layers_option

PROG = "fathom-serve"
API_KEY_ENV = "FATHOM_API_KEY"
DEFAULT_MAX_WAITING = 8


def _at_least(low: int):  # noqa: ANN202 - an argparse type factory
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return number

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a Fathom GGUF through an OpenAI-compatible API "
        "(/v1/chat/completions, /v1/models, /health).",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="the GGUF model file (default: the embedded demo model, math word problems only)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other address needs --api-key)",
    )
    parser.add_argument("--port", type=_at_least(0), default=8080, help="port (default 8080)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"require 'Authorization: Bearer KEY' on every request (or set {API_KEY_ENV})",
    )
    parser.add_argument(
        "--max-waiting",
        type=_at_least(0),
        default=DEFAULT_MAX_WAITING,
        help="requests that may wait for the model; more are refused with 503 (default 8)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_at_least(1024),
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted; larger ones get 413 (default 4 MiB)",
    )
    load = parser.add_argument_group("loading the model")
    load.add_argument("--n-ctx", type=_at_least(1), default=FATHOM_N_CTX, help="context size")
    load.add_argument(
        "--n-gpu-layers",
        type=gpu_layers_option,
        default=None,
        metavar="N|auto",
        help="layers to offload to the GPU (default: auto, from the VRAM planner)",
    )
    load.add_argument("--kv-cache-type", choices=get_args(KvCacheType), default="f16")
    load.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto")
    load.add_argument("--threads", type=_at_least(1), help="CPU threads for generation")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as public


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_loopback(args.host) and not args.api_key:
        return _fail(
            f"refusing to listen on {args.host} without an API key: anyone who can reach it could "
            f"use the model; pass --api-key KEY (or set {API_KEY_ENV}), or keep --host 127.0.0.1."
        )
    if not args.verbose:
        logging.getLogger("fathom_desktop.engine").setLevel(logging.CRITICAL)
    try:
        model = args.model if args.model is not None else _demo_model()
        runner, report = _load(args, model)
    except (EngineError, ConversionError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130
    config = ServerConfig(
        model_id=model.stem,
        n_ctx=report.n_ctx,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
    )
    for note in report.notes:
        print(f"[{note}]", file=sys.stderr)
    print(
        f"{PROG}: serving {config.model_id} (context {report.n_ctx:,} tokens) at "
        f"http://{_url_host(args.host)}:{args.port}/v1"
        + (" (API key required)" if args.api_key else ""),
        file=sys.stderr,
        flush=True,
    )
    return _serve(runner, config, args.host, args.port)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _demo_model() -> Path:
    from convert.progress import NullProgress
    from fathom_desktop import demo

    print(
        f"{PROG}: no --model given: serving the demo model {demo.DEMO_NAME} "
        "(math word problems only).",
        file=sys.stderr,
    )
    return demo.ensure_demo_model(NullProgress())


def _load(args: argparse.Namespace, model: Path) -> tuple[EngineRunner, LoadReport]:
    from fathom_desktop.engine import LlamaEngine

    options = LoadOptions(
        model_path=model,
        n_ctx=args.n_ctx,
        n_gpu_layers=args.n_gpu_layers,
        flash_attn={"auto": None, "on": True, "off": False}[args.flash_attn],
        kv_cache_type=args.kv_cache_type,
        n_threads=args.threads,
    )
    runner = EngineRunner(LlamaEngine(), max_waiting=args.max_waiting)
    try:
        report = runner.run_now(lambda engine: engine.load(options))
    except BaseException:
        runner.close()
        raise
    return runner, report


def _serve(runner: EngineRunner, config: ServerConfig, host: str, port: int) -> int:
    import uvicorn

    app = create_app(runner, config)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
