"""GGUF -> quantized GGUF through llama.cpp's own quantizer (`llama_model_quantize`).

llama.cpp reports a failed quantization only as a return code and explains it in its log, and it
cannot be interrupted once started. So the call runs in a child Python process that captures
llama.cpp's log with `llama_log_set` and streams it back as JSON lines: the parent turns the
per-tensor lines into progress, turns a failure into a sentence naming llama.cpp's reason, and
on Ctrl-C or cancel kills the child before deleting the partial output (a thread could not be
stopped, and would keep writing).

The ladder of recommended types is declared once here (`LADDER`); the README, the GUI and the CLI
read it. It uses gguf's `LlamaFileType`, whose values are llama.cpp's `LLAMA_FTYPE_*`, so that
reading the table does not load llama.cpp.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf

from convert.atomic import atomic_output, require_free_space
from convert.errors import ConversionError
from convert.gguf_header import GgufFormatError, GgufTensor, file_type_name, read_gguf_header
from convert.inspect import open_gguf
from convert.llama_log import LevelTracker, LogLevel
from convert.progress import NullProgress, Progress


class ImatrixUse(enum.Enum):
    """What an importance matrix does for a type."""

    NONE = "none"  # enough bits that it changes little
    HELPS = "helps"  # made with one when there is one (published figures: KLD −10 to −25 %)
    REQUIRED = "required"  # only worth making (and llama.cpp only makes some) with one


@dataclass(frozen=True)
class QuantType:
    """One llama.cpp quantization mix, named as `llama-quantize` names it."""

    name: str
    file_type: gguf.LlamaFileType
    # Typical size of the whole file per weight for a 14B Qwen2 with llama.cpp's mixes (the
    # embeddings, output and some attention/FFN tensors get more bits than the headline type).
    bits_per_weight: float | None = None
    purpose: str = ""
    imatrix: ImatrixUse = ImatrixUse.NONE

    def estimated_bytes(self, n_params: int) -> int | None:
        if self.bits_per_weight is None:
            return None
        return int(n_params * self.bits_per_weight / 8)


_F = gguf.LlamaFileType
_HELPS, _REQUIRED = ImatrixUse.HELPS, ImatrixUse.REQUIRED

# Fathom-R1-14B's weights (48 layers, hidden 5120, FFN 13824, vocab 152064, untied head), for
# size estimates before any file exists.
FATHOM_R1_14B_PARAMS = 14_770_033_664

# Largest to smallest. Card sizes assume Fathom-R1-14B fully offloaded with room for a long
# reasoning context; a smaller card still runs a type with part of the layers on the CPU.
LADDER: tuple[QuantType, ...] = (
    QuantType("Q8_0", _F.MOSTLY_Q8_0, 8.50, "near-lossless reference; 24 GB cards"),
    QuantType("Q6_K", _F.MOSTLY_Q6_K, 6.56, "practically lossless; 16 GB cards"),
    QuantType("Q5_K_M", _F.MOSTLY_Q5_K_M, 5.69, "high quality; 12-16 GB cards"),
    QuantType("Q4_K_M", _F.MOSTLY_Q4_K_M, 4.89, "best balance for 12 GB cards", _HELPS),
    QuantType(
        "IQ4_XS", _F.MOSTLY_IQ4_XS, 4.46, "near Q4_K_M quality, smaller; 10-12 GB cards", _HELPS
    ),
    QuantType("Q3_K_M", _F.MOSTLY_Q3_K_M, 3.91, "8 GB cards; noticeable quality loss", _HELPS),
    QuantType(
        "IQ3_XXS", _F.MOSTLY_IQ3_XXS, 3.22, "6-8 GB cards; needs an importance matrix", _REQUIRED
    ),
    QuantType(
        "Q2_K", _F.MOSTLY_Q2_K, 3.16, "last resort for 6-8 GB cards; reasoning degrades", _HELPS
    ),
    QuantType(
        "IQ2_M", _F.MOSTLY_IQ2_M, 2.90, "6 GB cards, with a clear loss; needs an imatrix", _REQUIRED
    ),
)

# Input types that are not quantized: llama.cpp re-encodes these without compounding error.
UNQUANTIZED_FILE_TYPES = frozenset({_F.ALL_F32, _F.MOSTLY_F16, _F.MOSTLY_BF16})
_UNQUANTIZED_TENSOR_TYPES = frozenset(
    {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
)
# Names llama-quantize accepts for the same ftype as another name.
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def known_types() -> dict[str, QuantType]:
    """Every type llama.cpp can produce, by name: the ladder plus the others without advice."""
    types = {q.name: q for q in LADDER}
    for member in gguf.LlamaFileType:
        if member is _F.GUESSED:
            continue
        name = file_type_name(member)
        types.setdefault(name, QuantType(name, member))
    return types


def quant_type(name: str) -> QuantType:
    types = known_types()
    key = name.strip().upper()
    key = _ALIASES.get(key, key)
    if key not in types:
        ladder = ", ".join(q.name for q in LADDER)
        raise ConversionError(
            f"Unknown quantization type {name!r}; the ladder is {ladder} "
            f"(others: {', '.join(sorted(set(types) - {q.name for q in LADDER}))})."
        )
    return types[key]


def output_name(basename: str, quant: QuantType | str) -> str:
    """The file name for a type: `Fathom-R1-14B` + Q4_K_M -> `Fathom-R1-14B-Q4_K_M.gguf`."""
    name = quant.name if isinstance(quant, QuantType) else quant
    return f"{basename}-{name}.gguf"


_TYPE_SUFFIX = re.compile(r"-(?:F32|F16|BF16|Q\d\w*|IQ\d\w*|TQ\d\w*)$", re.IGNORECASE)


def basename_of(gguf_path: Path) -> str:
    """The model's base name from a GGUF file name: `Fathom-R1-14B-BF16.gguf` -> `Fathom-R1-14B`."""
    return _TYPE_SUFFIX.sub("", Path(gguf_path).stem) or Path(gguf_path).stem


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- the input ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufSummary:
    """What the quantizer needs to know about its input before handing it to llama.cpp."""

    file_type: int | None
    tensors: tuple[GgufTensor, ...]
    header_bytes: int
    is_quantized: bool

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> dict[str, int]:
        return {t.name: t.n_bytes for t in self.tensors}


def read_input(path: Path) -> GgufSummary:
    f = open_gguf(path)
    if not f.tensors:
        raise ConversionError(f"{Path(path).name} holds no tensors; it is not a model GGUF.")
    file_type = f.integer(gguf.Keys.General.FILE_TYPE)
    if file_type is not None:
        quantized = file_type not in UNQUANTIZED_FILE_TYPES
    else:
        quantized = any(t.ggml_type not in _UNQUANTIZED_TENSOR_TYPES for t in f.tensors)
    return GgufSummary(file_type, f.tensors, f.data_offset, quantized)


# llama.cpp's mixes keep these at 6-8 bits whatever the file type.
_HIGH_PRECISION_TENSORS = frozenset({"token_embd.weight", "output.weight"})


def estimate_output_bytes(summary: GgufSummary, quant: QuantType) -> int:
    """A generous estimate of the output's size, for the free-space check before writing."""
    if quant.file_type is _F.ALL_F32:
        matrix_bits = 32.0
    elif quant.file_type in (_F.MOSTLY_F16, _F.MOSTLY_BF16):
        matrix_bits = 16.0
    else:
        # The mixes raise some attention and FFN tensors above the headline type.
        matrix_bits = (quant.bits_per_weight or 8.5) * 1.15
    total = summary.header_bytes
    for t in summary.tensors:
        if len(t.shape) < 2:
            total += t.n_bytes  # norms and biases are copied as they are
        elif t.name in _HIGH_PRECISION_TENSORS:
            total += int(t.n_elements * max(matrix_bits, 8.5) / 8)
        else:
            total += int(t.n_elements * matrix_bits / 8)
    return total


# --- llama.cpp's log ------------------------------------------------------------------------



@contextlib.contextmanager
def capture_llama_log(sink: Callable[[int, str], None]) -> Iterator[None]:
    """Route llama.cpp's (and ggml's) log to `sink(level, text)`; restore the previous logger after.

    The logger is process-global in llama.cpp, so this is not safe against a concurrent model
    load in another thread of the same process.
    """
    import llama_cpp  # only the quantizer's child process loads llama.cpp

    previous = llama_cpp.llama_log_callback()
    previous_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))

    def forward(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
        # An exception cannot cross back into C; it would only be printed and dropped.
        with contextlib.suppress(Exception):
            sink(level, (text or b"").decode("utf-8", errors="replace"))

    # Kept referenced until restored: llama.cpp holds only the raw function pointer.
    callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(previous, previous_data)


# The child is a fresh interpreter started with `python -c`, not a multiprocessing child: spawn
# re-imports the caller's __main__, which fails from stdin and re-runs unguarded scripts.
_CHILD_CODE = "from convert.quantize import _child_main; _child_main()"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _child_main() -> None:
    """The quantizer's child process: one llama_model_quantize call, its log sent as JSON lines."""
    # Ctrl-C is the parent's to handle (it kills this process and removes the partial file).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request = json.loads(sys.argv[1])
    # stdout is the channel to the parent; anything else printing to it is sent to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def stop_when_orphaned() -> None:
        # Raw reads: a daemon thread inside the buffered stdin would abort interpreter exit.
        while os.read(sys.stdin.fileno(), 4096):  # empty at EOF: the parent has gone
            pass
        with contextlib.suppress(OSError):
            os.unlink(request["output"])
        os._exit(3)

    threading.Thread(target=stop_when_orphaned, daemon=True).start()

    def send(*message: object) -> None:
        channel.write(json.dumps(message) + "\n")

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = request["file_type"]
    params.nthread = request["n_threads"]
    params.allow_requantize = request["allow_requantize"]
    keep_alive: list[object] = []
    if request.get("imatrix"):
        params.imatrix = _imatrix_entries(request["imatrix"], keep_alive)
    with capture_llama_log(lambda level, text: send("log", level, text)):
        rc = llama_cpp.llama_model_quantize(
            request["input"].encode(), request["output"].encode(), ctypes.byref(params)
        )
    send("done", int(rc))
    channel.close()
    sys.stderr.flush()
    os._exit(0)  # without waiting for the watcher thread, which waits for the parent


def _check_imatrix(path: Path, summary: GgufSummary, input_path: Path) -> None:
    """Refuse, before llama.cpp runs, an imatrix that is not one or was made for another model."""
    from convert.imatrix import Imatrix

    if not path.is_file():
        raise ConversionError(f"No such imatrix file: {path}.")
    shapes = {t.name: t.shape for t in summary.tensors}
    Imatrix.read(path).require_fits(shapes, input_path.name)


def _imatrix_entries(path: str, keep_alive: list[object]):
    """The imatrix as llama_model_quantize takes it: (name, mean squared activations, size)
    per weight, ended by an entry with no name."""
    import llama_cpp

    from convert.imatrix import Imatrix

    imatrix = Imatrix.read(Path(path))
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix.values) + 1))()
    for entry, (name, values) in zip(entries, imatrix.values.items(), strict=False):
        encoded = name.encode()
        keep_alive.extend((encoded, values))
        entry.name = encoded
        entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = values.size
    keep_alive.append(entries)
    return entries


# One line per tensor in llama.cpp's main loop:
# "[  12/ 339]  blk.1.attn_q.weight - [ 5120,  5120,  1,  1], type =   bf16, converting to q4_K .."
_TENSOR_LINE = re.compile(
    r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-\s+\[.*?\],\s+type\s+=\s+(\w+),\s*(.*)"
)
_CONVERTING = re.compile(r"converting to (\w+)")
# "warning: blk.0.ffn_down.weight - ncols 1376 not divisible by 256 (required for type q4_K)
#  -> falling back to q5_0" (one line in the log)
_FALLBACK = re.compile(
    r"warning:\s+(\S+)\s+-\s+ncols\s+(\d+) not divisible by\s+(\d+) \(required for type\s+(\w+)\)"
    r".*->\s*falling back to\s+(\w+)"
)
_FAILURE = re.compile(r"failed to quantize:\s*(.*)")


@dataclass(frozen=True)
class Fallback:
    """A tensor llama.cpp stored in another type because its rows do not fit the type's blocks."""

    tensor: str
    n_cols: int
    block_size: int
    wanted: str
    used: str

    def __str__(self) -> str:
        return (
            f"{self.tensor}: {self.n_cols} columns not divisible by {self.block_size}, "
            f"{self.wanted} -> {self.used}"
        )


class _LogReader:
    """Assembles llama.cpp's log fragments into lines and follows the quantizer's progress."""

    def __init__(self, summary: GgufSummary, progress: Progress) -> None:
        self._tensor_bytes = summary.tensor_bytes
        self._progress = progress
        self._partial = ""
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.fallbacks: list[Fallback] = []
        self.tensor_types: dict[str, str] = {}
        self._levels = LevelTracker()

    def feed(self, level: int, text: str) -> None:
        level = self._levels.resolve(level)
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self._line(level, line.strip())

    def close(self) -> None:
        if self._partial.strip():
            self._line(0, self._partial.strip())
        self._partial = ""

    def _line(self, level: int, line: str) -> None:
        if not line:
            return
        self.lines.append(line)
        if level == LogLevel.ERROR and not line.startswith("="):
            self.errors.append(line)
        if m := _FALLBACK.search(line):
            cols, block = int(m.group(2)), int(m.group(3))
            self.fallbacks.append(Fallback(m.group(1), cols, block, m.group(4), m.group(5)))
        elif m := _TENSOR_LINE.match(line):
            name, rest = m.group(3), m.group(5)
            target = _CONVERTING.search(rest)
            self.tensor_types[name] = target.group(1) if target else m.group(4)
            self._progress.message(f"{m.group(1)}/{m.group(2)} {name}")
            self._progress.advance(self._tensor_bytes.get(name, 0))

    def failure_reason(self) -> str:
        for line in reversed(self.lines):
            if m := _FAILURE.search(line):
                return m.group(1).strip().rstrip(".")
        if self.errors:
            return self.errors[-1]
        return self.lines[-1] if self.lines else "no reason given"


def _explain(reason: str, quant: QuantType, out_path: Path | None = None) -> str:
    """llama.cpp's terse reasons, in the user's terms where we know what they mean."""
    # The quantizer reads and writes through C++ streams, which report any failed read or write
    # (a full disk, a quota, a file-size limit, a vanished input) only as this.
    if "basic_ios::clear" in reason or "iostream error" in reason:
        where = f" to {out_path.parent}" if out_path is not None else ""
        return (
            f"reading the input or writing the output{where} failed; check that the folder has "
            f"room for the file and accepts files that large, and that the input is still there"
        )
    if "requires an imatrix" in reason or "Missing importance matrix" in reason:
        return (
            f"{quant.name} needs an importance matrix: make one with `fathom-convert imatrix` "
            f"and pass it with --imatrix (llama.cpp: {reason})"
        )
    if "requantizing from type" in reason:
        return f"the input is already quantized; pass --allow-requantize (llama.cpp: {reason})"
    return f"llama.cpp: {reason}"


# --- the public entry point -----------------------------------------------------------------


class QuantizationCancelled(ConversionError):
    """The caller's cancel event was set; the partial output was removed."""


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    quant: QuantType
    n_bytes: int
    input_bytes: int
    n_params: int
    fallbacks: tuple[Fallback, ...]
    # llama.cpp's type per tensor name (e.g. "q4_K", "q6_K", "f32"): the actual mix it chose.
    tensor_types: dict[str, str]

    @property
    def bits_per_weight(self) -> float:
        return self.n_bytes * 8 / self.n_params


def quantize(
    input_path: Path,
    out_path: Path,
    quant: QuantType | str,
    *,
    n_threads: int | None = None,
    allow_requantize: bool = False,
    overwrite: bool = True,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    imatrix: Path | None = None,
) -> QuantizeResult:
    """Quantize one GGUF with llama.cpp; the output appears only when complete.

    `imatrix` (an imatrix GGUF made for this model) guides how each block is quantized."""
    input_path, out_path = Path(input_path), Path(out_path)
    quant = quant if isinstance(quant, QuantType) else quant_type(quant)
    progress = progress or NullProgress()
    if n_threads is not None and n_threads < 1:
        raise ConversionError(f"--threads must be at least 1, not {n_threads}.")
    if out_path.resolve() == input_path.resolve():
        raise ConversionError(f"The output {out_path} would overwrite the input.")
    summary = read_input(input_path)
    if summary.is_quantized and not allow_requantize:
        current = file_type_name(summary.file_type) if summary.file_type is not None else "mixed"
        raise ConversionError(
            f"{input_path.name} is already quantized ({current}); quantizing it again compounds "
            f"the error. Start from the BF16/F16 GGUF, or pass --allow-requantize."
        )
    out_dir = out_path.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"Cannot write {out_path.name}: {out_dir} is a file, not a folder.")
    require_free_space(out_dir, estimate_output_bytes(summary, quant), out_path.name)
    if imatrix is not None:
        _check_imatrix(Path(imatrix), summary, input_path)
    elif quant.imatrix is ImatrixUse.REQUIRED:
        raise ConversionError(
            f"{quant.name} is only made with an importance matrix: make one with "
            f"`fathom-convert imatrix {input_path.name} -o imatrix.gguf` and pass --imatrix."
        )

    log = _LogReader(summary, progress)
    with atomic_output(out_path, overwrite=overwrite) as tmp:
        progress.start(quant.name, sum(summary.tensor_bytes.values()))
        request = {
            "input": str(input_path),
            "output": str(tmp),
            "file_type": int(quant.file_type),
            "n_threads": n_threads or default_threads(),
            "allow_requantize": allow_requantize,
            "imatrix": str(Path(imatrix).resolve()) if imatrix is not None else None,
        }
        try:
            rc, exitcode, child_error = _run_child(log, request, cancel)
        finally:
            progress.finish()
        log.close()
        if rc is None or exitcode != 0:
            last = log.failure_reason() if log.lines else child_error or "none"
            raise ConversionError(
                f"Quantizing {input_path.name} to {quant.name} failed: the quantizer stopped "
                f"abruptly ({_describe_exit(exitcode)}); last message: {last}."
            )
        if rc != 0:
            raise ConversionError(
                f"Quantizing {input_path.name} to {quant.name} failed: "
                f"{_explain(log.failure_reason(), quant, out_path)}."
            )
        _check_output(tmp, out_path, summary)
    return QuantizeResult(
        path=out_path,
        quant=quant,
        n_bytes=out_path.stat().st_size,
        input_bytes=input_path.stat().st_size,
        n_params=summary.n_params,
        fallbacks=tuple(log.fallbacks),
        tensor_types=dict(log.tensor_types),
    )


def _run_child(
    log: _LogReader, request: dict[str, object], cancel: threading.Event | None
) -> tuple[int | None, int, str]:
    """Run the quantizer in a child process.

    Returns llama.cpp's return code (None if it never answered), the child's exit code and the
    last line the child wrote to stderr (a Python error, if it failed before llama.cpp ran).
    """
    env = dict(os.environ)
    # The child must import this package even when it is not installed (run from a checkout).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_CODE, json.dumps(request)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        encoding="utf-8",
        errors="replace",
        # Its own session: a terminal's Ctrl-C reaches only the parent, which then kills it.
        start_new_session=os.name == "posix",
    )
    messages: queue.Queue[list | None] = queue.Queue()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=20)

    def read_channel() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with contextlib.suppress(ValueError):
                messages.put(json.loads(line))
        messages.put(None)

    def read_stderr() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            if line.strip():
                stderr_tail.append(line.strip())

    readers = [threading.Thread(target=f, daemon=True) for f in (read_channel, read_stderr)]
    for reader in readers:
        reader.start()
    rc: int | None = None
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise QuantizationCancelled("Quantization cancelled; the partial file was removed.")
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if message is None:  # the child closed its channel: finished, failed or died
                break
            if message[0] == "log":
                log.feed(message[1], message[2])
            elif message[0] == "done":
                rc = message[1]
    finally:
        if child.poll() is None and rc is None:
            child.kill()
        child.wait()
        for reader in readers:
            reader.join(timeout=5)
        if child.stdin is not None:
            child.stdin.close()
    return rc, child.returncode, stderr_tail[-1] if stderr_tail else ""


def _check_output(written: Path, final: Path, summary: GgufSummary) -> None:
    # llama.cpp does not check its writes: a full disk can end in a short file and success.
    try:
        output = read_gguf_header(written)
    except (GgufFormatError, OSError) as e:
        raise ConversionError(
            f"llama.cpp wrote an unusable {final.name} ({e}); is the disk full?"
        ) from e
    if len(output.tensors) != len(summary.tensors):
        raise ConversionError(
            f"llama.cpp wrote {len(output.tensors)} of {len(summary.tensors)} tensors to "
            f"{final.name}."
        )


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
