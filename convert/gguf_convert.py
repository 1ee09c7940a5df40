"""The `gguf` step: a checked Qwen2 checkpoint -> one GGUF file llama.cpp loads as-is.

Memory stays bounded whatever the model's size: the writer is told every tensor's shape and type
up front (``add_tensor_info``), then each tensor streams from its shard through short memory-mapped
windows, converted and checked one window at a time. BF16 weights pass through bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, get_args

import gguf
import numpy as np

from convert.atomic import atomic_output, require_free_space
from convert.checkpoint import Checkpoint, open_checkpoint
from convert.errors import ConversionError
from convert.progress import NullProgress, Progress
from convert.safetensors import SafetensorsDType, TensorEntry, TensorStream
from convert.tensor_names import ARCH_NAME
from convert.vocab import add_vocab_to_gguf, load_vocab

OutType = Literal["f32", "f16", "bf16"]
_Q = gguf.GGMLQuantizationType
OUT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (_Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (_Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (_Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
assert set(OUT_TYPES) == set(get_args(OutType))

# Source bytes per window: large enough that syscalls and numpy's per-call cost vanish, small
# enough that the f32 temporaries of an f16 conversion stay around 100 MB.
DEFAULT_CHUNK_BYTES = 32 << 20
HF_URL = "https://huggingface.co"

# How each output type stores its bits, and the exponent field that marks Inf/NaN in them.
_BITS = {
    _Q.BF16: (np.uint16, 0x7FFF, 0x7F80),
    _Q.F16: (np.uint16, 0x7FFF, 0x7C00),
    _Q.F32: (np.uint32, 0x7FFFFFFF, 0x7F800000),
}
_STORAGE = {
    _Q.BF16: np.dtype(np.uint16),
    _Q.F16: np.dtype(np.float16),
    _Q.F32: np.dtype(np.float32),
}


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    outtype: str
    n_tensors: int
    n_bytes: int
    architecture: str
    name: str
    pre_tokenizer: str


@dataclass(frozen=True)
class TensorPlan:
    """One tensor as it will be written: its GGUF name, where it comes from, and its output type."""

    name: str
    source: TensorEntry
    out_type: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return self.source.n_elements * _STORAGE[self.out_type].itemsize


def plan_tensors(checkpoint: Checkpoint, outtype: OutType) -> list[TensorPlan]:
    weight_type = OUT_TYPES[outtype][0]
    # Norms and biases stay F32 in every llama.cpp file type: they are tiny and precision-critical.
    return [
        TensorPlan(t.name.gguf, t.source, _Q.F32 if len(t.source.shape) == 1 else weight_type)
        for t in checkpoint.tensors
    ]


def convert_checkpoint(
    model_dir: Path,
    out_path: Path,
    outtype: OutType = "bf16",
    *,
    progress: Progress | None = None,
    overwrite: bool = True,
    source_repo: str | None = None,
    source_revision: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ConversionResult:
    """Convert a Hugging Face Qwen2ForCausalLM folder into a GGUF at `out_path`.

    Raises ConversionError (one readable line) on bad input; then no file exists at `out_path`.
    """
    if outtype not in OUT_TYPES:
        raise ConversionError(
            f"Unknown output type {outtype!r}; choose one of {', '.join(OUT_TYPES)}."
        )
    progress = progress or NullProgress()
    out_path = Path(out_path)
    checkpoint = open_checkpoint(Path(model_dir))
    vocab = load_vocab(checkpoint.model_dir, checkpoint.hparams.vocab_size, checkpoint.config)
    plan = plan_tensors(checkpoint, outtype)
    total_bytes = sum(p.nbytes for p in plan)
    require_free_space(out_path.parent, total_bytes, out_path.name)
    name = _model_identity(checkpoint, source_repo)

    with atomic_output(out_path, overwrite=overwrite) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH_NAME)
        try:
            _add_model_metadata(writer, checkpoint, outtype, name, source_repo, source_revision)
            add_vocab_to_gguf(writer, vocab)
            for p in plan:
                writer.add_tensor_info(
                    p.name, p.source.shape, _STORAGE[p.out_type], p.nbytes, raw_dtype=p.out_type
                )
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            progress.start("convert", total_bytes)
            _write_tensors(writer, plan, progress, chunk_bytes)
        except OSError as e:
            raise ConversionError(f"Writing {out_path.name} failed: {e.strerror or e}.") from e
        finally:
            writer.close()
    progress.finish()
    return ConversionResult(
        path=out_path,
        outtype=outtype,
        n_tensors=len(plan),
        n_bytes=out_path.stat().st_size,
        architecture=ARCH_NAME,
        name=name.full,
        pre_tokenizer=vocab.pre.value,
    )


@dataclass(frozen=True)
class _ModelName:
    full: str
    organization: str | None
    basename: str | None
    finetune: str | None
    version: str | None
    size_label: str


def _model_identity(checkpoint: Checkpoint, source_repo: str | None) -> _ModelName:
    n_params = checkpoint.n_parameters
    if checkpoint.hparams.tie_word_embeddings:
        # llama.cpp counts the head it reuses; so does the size in a model's name.
        n_params += checkpoint.hparams.vocab_size * checkpoint.hparams.hidden_size
    model_id = source_repo or checkpoint.model_dir.resolve().name
    full, org, basename, finetune, version, size_label = gguf.Metadata.get_model_id_components(
        model_id, n_params
    )
    return _ModelName(
        full=full or model_id,
        organization=org,
        # gguf's heuristics find a basename only beside a size label ("Fathom-R1" in
        # "Fathom-R1-14B"); otherwise the whole name serves.
        basename=basename or full or model_id,
        finetune=finetune,
        version=version,
        size_label=size_label or gguf.size_label(n_params, 0, 0, 0),
    )


def _add_model_metadata(
    writer: gguf.GGUFWriter,
    checkpoint: Checkpoint,
    outtype: OutType,
    name: _ModelName,
    source_repo: str | None,
    source_revision: str | None,
) -> None:
    hp = checkpoint.hparams
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name.full)
    if name.organization:
        writer.add_organization(name.organization)
    if name.basename:
        writer.add_basename(name.basename)
    if name.finetune:
        writer.add_finetune(name.finetune)
    if name.version:
        writer.add_version(name.version)
    writer.add_size_label(name.size_label)
    if source_repo:
        writer.add_source_repo_url(f"{HF_URL}/{source_repo}")
        if source_revision:
            writer.add_source_url(f"{HF_URL}/{source_repo}/tree/{source_revision}")
    writer.add_block_count(hp.n_layers)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.n_heads)
    writer.add_head_count_kv(hp.n_kv_heads)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    writer.add_file_type(OUT_TYPES[outtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tensors(
    writer: gguf.GGUFWriter, plan: list[TensorPlan], progress: Progress, chunk_bytes: int
) -> None:
    buffers = _Buffers(chunk_bytes)
    with contextlib.ExitStack() as stack:
        streams: dict[Path, TensorStream] = {}
        for p in plan:
            path = p.source.path
            if path not in streams:
                streams[path] = stack.enter_context(TensorStream(path))
            progress.message(p.name)
            tensor = _StreamedTensor(p, streams[path], chunk_bytes, progress, buffers)
            writer.write_tensor_data(tensor)


class _Buffers:
    """Work arrays reused from window to window, one per purpose.

    A fresh 64 MB temporary per window would cost its page faults every time and let the
    allocator's high-water mark drift; reusing them keeps both the speed and the peak steady.
    """

    def __init__(self, window_bytes: int) -> None:
        # The largest temporary is a 2-byte window widened to 4 bytes.
        self._bytes = 2 * window_bytes
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, purpose: str, dtype: type[np.generic], n: int) -> np.ndarray:
        if purpose not in self._arrays:
            self._arrays[purpose] = np.empty(self._bytes, dtype=np.uint8)
        return self._arrays[purpose].view(dtype)[:n]


class _StreamedTensor:
    """Stands in for the numpy array `GGUFWriter.write_tensor_data` expects.

    The writer (gguf 0.17-0.19) only reads ``nbytes`` and calls ``tofile(file)`` between its own
    alignment padding, so the tensor can be produced window by window instead of materialised:
    a 3 GB f32 embedding never exists in memory.
    """

    def __init__(
        self,
        plan: TensorPlan,
        stream: TensorStream,
        chunk_bytes: int,
        progress: Progress,
        buffers: _Buffers,
    ) -> None:
        self._plan = plan
        self._stream = stream
        self._chunk_bytes = chunk_bytes
        self._progress = progress
        self._buffers = buffers
        self.nbytes = plan.nbytes
        self.dtype = _STORAGE[plan.out_type]
        self.shape = plan.source.shape

    def tofile(self, fout: IO[bytes]) -> None:
        plan = self._plan
        src = plan.source.dtype
        written = 0
        for chunk in self._stream.chunks(plan.source, self._chunk_bytes):
            if _has_nonfinite(chunk, src.ggml_type, self._buffers):
                raise ConversionError(
                    f"Tensor {plan.source.name!r} in {plan.source.path.name} contains NaN or Inf "
                    f"values; the checkpoint is corrupt."
                )
            out = _encode(chunk, src, plan.out_type, self._buffers)
            if out is not chunk and _has_nonfinite(out, plan.out_type, self._buffers):
                raise ConversionError(
                    f"Tensor {plan.source.name!r} has values too large for {plan.out_type.name}; "
                    f"convert to bf16 or f32 instead."
                )
            fout.write(memoryview(out).cast("B"))
            written += out.nbytes
            self._progress.advance(out.nbytes)
            del chunk, out
        if written != self.nbytes:
            raise ConversionError(f"Tensor {plan.source.name!r} was cut short while reading.")


def _has_nonfinite(
    values: np.ndarray, kind: gguf.GGMLQuantizationType, buffers: _Buffers | None = None
) -> bool:
    # On raw bits: an all-ones exponent is Inf or NaN. One AND and one max over the window, with
    # no float conversion, so the check costs little next to the copy itself.
    if values.size == 0:
        return False
    bits_type, magnitude_mask, exponent = _BITS[kind]
    bits = values.view(bits_type)
    magnitude = (buffers or _Buffers(bits.nbytes)).get("check", bits_type, bits.size)
    np.bitwise_and(bits, bits_type(magnitude_mask), out=magnitude)
    return int(magnitude.max()) >= exponent


def _encode(
    chunk: np.ndarray,
    src: SafetensorsDType,
    out_type: gguf.GGMLQuantizationType,
    buffers: _Buffers | None = None,
) -> np.ndarray:
    """The window in the output type; the result may live in `buffers` until the next window."""
    if src.ggml_type == out_type:
        return chunk
    buffers = buffers or _Buffers(chunk.nbytes)
    n = chunk.size
    if src is SafetensorsDType.F32:
        f32 = chunk
    elif src is SafetensorsDType.BF16:
        # bf16 is the top half of an f32: widening is exact.
        wide = buffers.get("f32", np.uint32, n)
        np.left_shift(chunk, np.uint32(16), out=wide, dtype=np.uint32)
        f32 = wide.view(np.float32)
    else:
        f32 = buffers.get("f32", np.float32, n)
        f32[...] = chunk
    if out_type == _Q.F32:
        return f32
    if out_type == _Q.F16:
        f16 = buffers.get("out", np.float16, n)
        # Overflow becomes Inf, which the caller reports with the tensor's name.
        with np.errstate(over="ignore"):
            f16[...] = f32
        return f16
    return _f32_to_bf16_bits(f32, buffers)


def _f32_to_bf16_bits(f32: np.ndarray, buffers: _Buffers | None = None) -> np.ndarray:
    # Round to nearest, ties to even, as torch and gguf-py do. NaN cannot reach here (refused).
    buffers = buffers or _Buffers(f32.nbytes)
    bits = f32.view(np.uint32).reshape(-1)
    rounded = buffers.get("round", np.uint32, bits.size)
    np.right_shift(bits, np.uint32(16), out=rounded)
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded >>= np.uint32(16)
    out = buffers.get("out", np.uint16, bits.size)
    out[...] = rounded
    return out.reshape(f32.shape)
