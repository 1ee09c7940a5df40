"""`fathom-convert`: download, convert, quantize and inspect Fathom-R1-14B GGUFs.

    fathom-convert download FractalAIResearch/Fathom-R1-14B --dest ~/models/Fathom-R1-14B
    fathom-convert gguf ~/models/Fathom-R1-14B --outtype bf16 -o Fathom-R1-14B-BF16.gguf
    fathom-convert quantize Fathom-R1-14B-BF16.gguf --types ladder --out-dir ~/models/gguf
    fathom-convert inspect ~/models/gguf/Fathom-R1-14B-Q4_K_M.gguf [--json]
    fathom-convert all FractalAIResearch/Fathom-R1-14B --out-dir ~/models/gguf

Every failure the user can fix is one line on stderr and a non-zero exit; --debug shows the
traceback. Ctrl-C exits 130 and leaves no partial output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from convert.errors import ConversionError, one_line
from convert.progress import TqdmProgress
from convert.quantize import (
    FATHOM_R1_14B_PARAMS,
    LADDER,
    ImatrixUse,
    QuantizeResult,
    QuantType,
    basename_of,
    output_name,
    quant_type,
)
from convert.units import human_size

PROG = "fathom-convert"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line rather than the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _type_list(text: str) -> list[QuantType]:
    if text.strip().lower() == "ladder":
        return list(LADDER)
    names = [n for n in text.replace(" ", "").split(",") if n]
    if not names:
        raise argparse.ArgumentTypeError("no types given")
    try:
        types = [quant_type(n) for n in names]
    except ConversionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return list(dict.fromkeys(types))  # each once, in the order given


def _one_type(text: str) -> QuantType:
    try:
        return quant_type(text)
    except ConversionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- commands --------------------------------------------------------------------------------


def _progress(args: argparse.Namespace) -> TqdmProgress:
    return TqdmProgress(disable=args.quiet)


@dataclass(frozen=True)
class _Output:
    path: Path
    quant_type: str
    source_repo: str | None
    source_revision: str | None
    # False for a file an earlier run made and this one kept.
    written_now: bool = True
    imatrix: Path | None = None


def _record(args: argparse.Namespace, outputs: list[_Output]) -> None:
    """Hash the outputs and merge them into their folder's manifest.json."""
    if args.no_manifest or not outputs:
        return
    from convert.manifest import describe_file, read_manifest, update_manifest

    by_folder: dict[Path, list] = {}
    for out in outputs:
        known = read_manifest(out.path.parent).files.get(out.path.name)
        if not out.written_now and known and known.size_bytes == out.path.stat().st_size:
            continue  # hashed when it was written; rehashing 10 GB files costs minutes
        entry = describe_file(
            out.path,
            out.quant_type,
            source_repo=out.source_repo,
            source_revision=out.source_revision,
            progress=_progress(args),
            imatrix=out.imatrix,
        )
        by_folder.setdefault(out.path.parent, []).append(entry)
    for folder, entries in by_folder.items():
        print(f"manifest: {update_manifest(folder, entries)}")


def _report(result: QuantizeResult) -> None:
    print(
        f"{result.quant.name:<7} {result.path}  {human_size(result.n_bytes)}  "
        f"{result.bits_per_weight:.2f} bits/weight"
    )
    if result.fallbacks:
        first = result.fallbacks[0]
        print(
            f"        note: {len(result.fallbacks)} of {len(result.tensor_types)} tensors were "
            f"stored in another type because their rows do not split into the type's blocks "
            f"(e.g. {first})"
        )


def cmd_download(args: argparse.Namespace) -> int:
    from convert.download import download_checkpoint

    dest = args.dest or Path(args.repo_id.rsplit("/", 1)[-1])
    result = download_checkpoint(
        args.repo_id, dest, revision=args.revision, show_progress=not args.quiet
    )
    print(
        f"{result.source.repo_id} @ {result.source.revision}: {len(result.files)} files, "
        f"{human_size(result.n_bytes)} in {result.path}"
    )
    return 0


def _checkpoint_source(folder: Path) -> tuple[str | None, str | None]:
    from convert.download import read_source

    source = read_source(folder)
    return (source.repo_id, source.revision) if source else (None, None)


def cmd_gguf(args: argparse.Namespace) -> int:
    from convert.gguf_convert import convert_checkpoint

    model_dir: Path = args.model_dir
    repo, revision = _checkpoint_source(model_dir)
    basename = repo.rsplit("/", 1)[-1] if repo else model_dir.resolve().name
    out = args.output or Path(output_name(basename, args.outtype.upper()))
    result = convert_checkpoint(
        model_dir,
        out,
        args.outtype,
        progress=_progress(args),
        overwrite=args.force,
        source_repo=repo,
        source_revision=revision,
    )
    print(f"{result.outtype.upper():<7} {result.path}  {human_size(result.n_bytes)}")
    _record(args, [_Output(result.path, result.outtype.upper(), repo, revision)])
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from convert.manifest import gguf_source
    from convert.quantize import quantize

    if args.type is not None:
        types = [args.type]
    elif args.types is not None:
        types = args.types
    else:
        raise ConversionError(
            "Choose --type TYPE or --types LIST (or --types ladder for "
            f"{','.join(q.name for q in LADDER)})."
        )
    if args.output is not None and len(types) > 1:
        raise ConversionError("-o names one file; use --out-dir with several --types.")
    source: Path = args.input
    out_dir = args.out_dir or source.parent
    outputs = (
        [args.output]
        if args.output is not None
        else [out_dir / output_name(basename_of(source), q) for q in types]
    )
    repo, revision = gguf_source(source)
    produced = []
    for q, out in zip(types, outputs, strict=True):
        result = quantize(
            source,
            out,
            q,
            n_threads=args.threads,
            allow_requantize=args.allow_requantize,
            overwrite=args.force,
            progress=_progress(args),
            imatrix=args.imatrix,
        )
        _report(result)
        produced.append(_Output(result.path, q.name, repo, revision, imatrix=args.imatrix))
    _record(args, produced)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from convert.inspect import format_info, inspect_gguf

    info = inspect_gguf(args.file)
    if args.json:
        print(json.dumps(info.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_info(info))
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    print(f"{'type':<8}{'bits/w':>7}{'~size':>10}  for (sizes for Fathom-R1-14B)")
    for q in LADDER:
        size = human_size(q.estimated_bytes(FATHOM_R1_14B_PARAMS) or 0)
        print(f"{q.name:<8}{q.bits_per_weight:>7.2f}{size:>10}  {q.purpose}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    from convert.download import download_checkpoint, looks_like_repo_id, read_source
    from convert.gguf_convert import convert_checkpoint
    from convert.quantize import quantize

    out_dir: Path = args.out_dir
    source = Path(args.source).expanduser()
    if source.is_dir():
        model_dir = source
        marker = read_source(source)
        repo, revision = (marker.repo_id, marker.revision) if marker else (None, None)
        basename = repo.rsplit("/", 1)[-1] if repo else source.resolve().name
    elif looks_like_repo_id(args.source):
        basename = args.source.rsplit("/", 1)[-1]
        model_dir = args.dest or out_dir / f"{basename}-hf"
        downloaded = download_checkpoint(
            args.source, model_dir, revision=args.revision, show_progress=not args.quiet
        )
        repo, revision = downloaded.source.repo_id, downloaded.source.revision
        print(f"download {repo} @ {revision} -> {model_dir}")
    else:
        raise ConversionError(
            f"{args.source} is neither a checkpoint folder nor a Hugging Face repo id (owner/name)."
        )

    produced: list[_Output] = []
    bf16 = out_dir / output_name(basename, "BF16")
    keep_bf16 = bf16.exists() and not args.force
    if keep_bf16:
        print(f"BF16    {bf16}  already there, kept (--force redoes it)")
    else:
        result = convert_checkpoint(
            model_dir,
            bf16,
            "bf16",
            progress=_progress(args),
            source_repo=repo,
            source_revision=revision,
        )
        print(f"BF16    {result.path}  {human_size(result.n_bytes)}")
    produced.append(_Output(bf16, "BF16", repo, revision, written_now=not keep_bf16))

    imatrix = None
    if any(q.imatrix is not ImatrixUse.NONE for q in args.types):
        imatrix = _imatrix_for(args, bf16, out_dir / f"{basename}-imatrix.gguf")
    for q in args.types:
        out = out_dir / output_name(basename, q)
        keep = out.exists() and not args.force
        guide = imatrix if q.imatrix is not ImatrixUse.NONE else None
        if keep:
            print(f"{q.name:<7} {out}  already there, kept (--force redoes it)")
        else:
            _report(
                quantize(
                    bf16, out, q, n_threads=args.threads, progress=_progress(args), imatrix=guide
                )
            )
        produced.append(_Output(out, q.name, repo, revision, written_now=not keep, imatrix=guide))

    if args.discard_bf16:
        bf16.unlink()
        produced = [p for p in produced if p.path != bf16]
    _record(args, produced)
    return 0


def _imatrix_for(args: argparse.Namespace, bf16: Path, out: Path) -> Path:
    """The model's importance matrix on the shipped calibration text, made once."""
    from convert.imatrix import compute_imatrix
    from convert.llama_forward import ForwardSettings

    if out.exists() and not args.force:
        print(f"imatrix {out}  already there, kept (--force redoes it)")
        return out
    result = compute_imatrix(
        bf16,
        out,
        chunks=args.imatrix_chunks,
        settings=ForwardSettings(n_threads=args.threads),
        progress=TqdmProgress(disable=args.quiet, unit="tok"),
    )
    print(f"imatrix {result.path}  {result.entries} weights, {result.chunks} chunks")
    return out


def cmd_imatrix(args: argparse.Namespace) -> int:
    from convert.imatrix import compute_imatrix
    from convert.llama_forward import ForwardSettings

    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())  # see cmd_evaluate
    try:
        result = compute_imatrix(
            args.model,
            args.output,
            args.text,
            ctx=args.ctx,
            chunks=args.chunks,
            settings=ForwardSettings(n_gpu_layers=args.gpu_layers, n_threads=args.threads),
            progress=TqdmProgress(disable=args.quiet, unit="tok"),
            cancel=cancel,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    print(
        f"imatrix {result.path}: {result.entries} weights, {result.chunks} chunks of "
        f"{result.chunk_size} tokens"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from convert.evaluate import evaluate
    from convert.llama_forward import ForwardSettings

    # Ctrl-C mostly lands while llama.cpp computes, where a KeyboardInterrupt raised in its abort
    # callback would be swallowed by ctypes; the handler only raises a flag that the callback
    # and the chunk loop read, and evaluate() then unwinds as an interrupt.
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        report = evaluate(
            args.reference,
            args.levels,
            args.text,
            ctx=args.ctx,
            chunks=args.chunks,
            settings=ForwardSettings(n_gpu_layers=args.gpu_layers, n_threads=args.threads),
            progress=TqdmProgress(disable=args.quiet or args.json, unit="tok"),
            cancel=cancel,
            use_cache=not args.no_cache,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(
        f"reference {report.reference.name}: PPL {report.reference_ppl:.4f} over "
        f"{report.chunks} chunks of {report.ctx} tokens (text sha256 {report.text_sha256[:12]})"
    )
    print(
        f"{'type':<8}{'size':>10}  {'KLD mean ± se':>20}  {'KLD p99':>9}  "
        f"{'same top ± se':>16}  {'PPL':>9}  {'ln PPL ratio':>12}  {'RMS Δp':>7}"
    )
    for r in report.results:
        s = r.stats
        print(
            f"{r.type:<8}{human_size(r.size_bytes):>10}  {s.kld_mean:>11.6f} ± {s.kld_se:.6f}  "
            f"{s.kld_p99:>9.5f}  {100 * s.top1:>7.2f} ± {100 * s.top1_se:.2f} %  {s.ppl:>9.4f}  "
            f"{s.ln_ppl_ratio:>12.6f}  {100 * s.rms_dp:>5.2f} %"
            + ("  (cached)" if r.cached else "")
        )
    return 0


# --- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ladder = ",".join(q.name for q in LADDER)
    parser = _Parser(prog=PROG, description="Convert Fathom-R1-14B into quantized GGUF files.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # The same two options after the command name; SUPPRESS keeps one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common])

    p = add("download", "download a checkpoint's safetensors, config and tokenizer from the Hub")
    p.add_argument("repo_id", help="e.g. FractalAIResearch/Fathom-R1-14B")
    p.add_argument("--dest", type=Path, help="folder to download into (default: ./<name>)")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.set_defaults(func=cmd_download)

    p = add("gguf", "convert a Hugging Face checkpoint folder to an unquantized GGUF")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--outtype", choices=("bf16", "f16", "f32"), default="bf16")
    p.add_argument("-o", "--output", type=Path, help="default: ./<folder>-<OUTTYPE>.gguf")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--no-manifest", action="store_true", help="do not update manifest.json")
    p.set_defaults(func=cmd_gguf)

    p = add("quantize", "quantize a BF16/F16/F32 GGUF with llama.cpp")
    p.add_argument("input", type=Path)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--type", type=_one_type, help="one type, e.g. Q4_K_M")
    which.add_argument(
        "--types", type=_type_list, help=f"comma-separated types, or 'ladder' ({ladder})"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, help="output file (with --type)")
    where.add_argument(
        "--out-dir", type=Path, help="folder for <basename>-<TYPE>.gguf (default: the input's)"
    )
    p.add_argument("--threads", type=_threads, help="default: all cores")
    p.add_argument(
        "--allow-requantize", action="store_true", help="accept an already-quantized input"
    )
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--no-manifest", action="store_true", help="do not update manifest.json")
    p.add_argument("--imatrix", type=Path, help="an importance matrix made for this model")
    p.set_defaults(func=cmd_quantize)

    p = add("imatrix", "compute llama.cpp's importance matrix of a model on a calibration text")
    p.add_argument("model", type=Path, help="the BF16/F16 GGUF")
    p.add_argument("-o", "--output", type=Path, required=True, help="the imatrix GGUF to write")
    p.add_argument("--text", type=Path, help="UTF-8 text (default: the shipped calibration text)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default: 512)")
    p.add_argument("--chunks", type=int, help="at most this many chunks (default: all)")
    p.add_argument("--gpu-layers", type=int, help="layers on the GPU (default: all)")
    p.add_argument("--threads", type=_threads, help="default: all cores")
    p.set_defaults(func=cmd_imatrix)

    p = add("inspect", "show what a GGUF holds and whether Fathom Desktop can use it")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = add("evaluate", "measure what each level loses against its BF16/F16 reference")
    p.add_argument("levels", type=Path, nargs="+", help="quantized GGUFs of the same model")
    p.add_argument("--reference", type=Path, required=True, help="the BF16/F16 GGUF")
    p.add_argument("--text", type=Path, help="UTF-8 text (default: the shipped evaluation text)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default: 512)")
    p.add_argument("--chunks", type=int, help="at most this many chunks (default: all)")
    p.add_argument(
        "--gpu-layers", type=int, help="layers on the GPU for every model (default: all)"
    )
    p.add_argument("--threads", type=_threads, help="default: all cores")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--no-cache", action="store_true", help="measure again even if recorded")
    p.set_defaults(func=cmd_evaluate)

    p = add("types", "list the quantization ladder")
    p.set_defaults(func=cmd_types)

    p = add("all", "download (or take a local folder), convert to BF16, quantize, write manifest")
    p.add_argument("source", help="a Hub repo id or a local checkpoint folder")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--types", type=_type_list, default=list(LADDER), help=f"default: {ladder}")
    p.add_argument("--dest", type=Path, help="download folder (default: <out-dir>/<name>-hf)")
    p.add_argument("--revision", help="branch, tag or commit to download (default: main)")
    p.add_argument("--threads", type=_threads, help="default: all cores")
    p.add_argument("--discard-bf16", action="store_true", help="delete the BF16 GGUF at the end")
    p.add_argument(
        "--imatrix-chunks",
        type=int,
        help="calibrate the importance matrix on at most this many chunks (default: all)",
    )
    p.add_argument("--force", action="store_true", help="redo outputs that already exist")
    p.set_defaults(func=cmd_all, no_manifest=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to say, and nobody to say it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no partial output was left.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConversionError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug, not bad input: still one line unless asked
        if args.debug:
            traceback.print_exc()
        print(
            f"{PROG}: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug "
            f"and report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
