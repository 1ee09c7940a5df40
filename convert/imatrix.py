"""`fathom-convert imatrix`: llama.cpp's importance matrix, computed through llama-cpp-python.

For every weight matrix of the transformer blocks, the importance of each input column is the
mean over the calibration tokens of that column's squared activation: the quantizer then spends
its precision where the activations are large. llama.cpp's own `llama-imatrix` gathers these
sums from a graph callback; so does this module: the context's `cb_eval` sees every node, and
for each matrix multiplication by a `blk.*` weight, the activations (its second operand, F32,
`ne[0]` columns × tokens) are read and their squares summed per column. The text is cut into
chunks exactly as llama-imatrix and llama-perplexity cut it.

The file written is llama.cpp's imatrix GGUF (`<tensor>.in_sum2` and `<tensor>.counts` per
weight, `imatrix.datasets`/`chunk_count`/`chunk_size`), so `llama-quantize --imatrix` reads it,
and `quantize(..., imatrix=...)` passes it to llama.cpp the way llama-quantize does.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from convert.atomic import atomic_output
from convert.errors import ConversionError
from convert.evaluate import EvaluationText, chunk_tokens
from convert.llama_forward import ForwardModel, ForwardSettings
from convert.progress import NullProgress, Progress

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0
# llama-imatrix skips multiplications over fewer tokens than this (single-token decodes).
MIN_TOKENS = 16


class GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` of the ggml that the pinned llama-cpp-python bundles (ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml_base() -> ctypes.CDLL:
    """libggml-base beside llama-cpp-python's libllama (already loaded by it)."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.so*")) + sorted(lib_dir.glob("libggml-base.*"))
    if not candidates:
        raise ConversionError(f"llama-cpp-python's libggml-base was not found in {lib_dir}.")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t
    ]
    return lib


def weight_name(raw: bytes) -> str:
    """A backend may name a copy `CUDA0#blk.0.attn_q.weight#0`; the weight is the middle part."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


@dataclass
class _Sums:
    values: np.ndarray  # float64 per column
    count: int = 0


@dataclass
class _Collector:
    ggml: ctypes.CDLL
    sums: dict[str, _Sums] = field(default_factory=dict)
    error: BaseException | None = None
    _mul_mat: int | None = None
    _scratch: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint8))

    def is_mul_mat(self, op: int) -> bool:
        if self._mul_mat is None and self.ggml.ggml_op_name(op) == b"MUL_MAT":
            self._mul_mat = op
        return op == self._mul_mat

    def on_node(self, tensor_ptr: int, ask: bool, _user_data: int) -> bool:
        # An exception cannot cross back into C; keep the first and stop collecting.
        if self.error is not None:
            return False
        try:
            return self._on_node(tensor_ptr, ask)
        except BaseException as e:  # noqa: BLE001 - reported after llama_decode returns
            self.error = e
            return False

    def _on_node(self, tensor_ptr: int, ask: bool) -> bool:
        t = GgmlTensor.from_address(tensor_ptr)
        if not self.is_mul_mat(t.op) or not t.src[0] or not t.src[1]:
            return False
        weight = GgmlTensor.from_address(t.src[0])
        acts = GgmlTensor.from_address(t.src[1])
        name = weight_name(weight.name)
        if not name.startswith("blk.") or acts.type != GGML_TYPE_F32 or acts.ne[1] < MIN_TOKENS:
            return False
        if ask:
            return True
        self._accumulate(name, weight, acts)
        return True

    def _accumulate(self, name: str, weight: GgmlTensor, acts: GgmlTensor) -> None:
        ne = list(acts.ne)
        nb = list(acts.nb)
        n_bytes = nb[3] * ne[3]
        if self.ggml.ggml_backend_buffer_is_host(acts.buffer):
            buffer = (ctypes.c_char * n_bytes).from_address(acts.data)
            raw = np.frombuffer(buffer, dtype=np.uint8)
        else:  # on a GPU: copy to the host first
            if self._scratch.size < n_bytes:
                self._scratch = np.empty(n_bytes, dtype=np.uint8)
            raw = self._scratch[:n_bytes]
            self.ggml.ggml_backend_tensor_get(
                ctypes.addressof(acts), raw.ctypes.data, 0, n_bytes
            )
        columns = np.lib.stride_tricks.as_strided(
            raw.view(np.float32)[:1],
            shape=(ne[3], ne[2], ne[1], ne[0]),
            strides=(nb[3], nb[2], nb[1], nb[0]),
            writeable=False,
        )
        n_mat = weight.ne[2] * weight.ne[3]
        if n_mat != 1:
            raise ConversionError(f"{name} is a stack of {n_mat} matrices; not supported.")
        squares = np.square(columns.reshape(-1, ne[0]), dtype=np.float64).sum(axis=0)
        entry = self.sums.get(name)
        if entry is None:
            entry = self.sums[name] = _Sums(np.zeros(ne[0], dtype=np.float64))
        elif entry.values.shape[0] != ne[0]:
            raise ConversionError(f"{name} changed width between chunks.")
        entry.values += squares
        entry.count += ne[1] * ne[2] * ne[3]
        if not np.isfinite(entry.values).all():
            raise ConversionError(f"non-finite activations reached {name}.")


@dataclass(frozen=True)
class ImatrixResult:
    path: Path
    entries: int
    chunks: int
    chunk_size: int
    tokens: int


def compute_imatrix(
    model: Path,
    out: Path,
    text_path: Path | None = None,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    settings: ForwardSettings | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> ImatrixResult:
    """Run the calibration text through `model` and write its importance matrix to `out`."""
    import llama_cpp

    if ctx < 16:
        raise ConversionError(f"--ctx must be at least 16, not {ctx}.")
    model, out = Path(model), Path(out)
    if not model.is_file():
        raise ConversionError(f"No such model file: {model}.")
    progress = progress or NullProgress()
    text = EvaluationText.read(text_path or default_calibration_text())
    collector = _Collector(_ggml_base())
    callback = llama_cpp.ggml_backend_sched_eval_callback(collector.on_node)
    settings = ForwardSettings(
        n_ctx=ctx,
        n_gpu_layers=settings.n_gpu_layers if settings else None,
        n_threads=settings.n_threads if settings else None,
    )

    def stop() -> bool:
        return cancel is not None and cancel.is_set()

    with ForwardModel(model, settings, cb_eval=callback) as forward:
        tokens = forward.tokenize(text.text)
        n_chunks = chunk_tokens(tokens, ctx, chunks)
        progress.start("imatrix", n_chunks * ctx)
        try:
            for i in range(n_chunks):
                chunk = tokens[i * ctx : (i + 1) * ctx]
                if forward.add_bos:
                    chunk = [forward.bos, *chunk[1:]]
                # Logits for every position, as llama-imatrix asks for them: with fewer, llama.cpp
                # runs the last block's later multiplications on those positions only.
                forward.chunk_logits(chunk, 0, stop)
                if collector.error is not None:
                    raise collector.error
                progress.advance(ctx)
                if stop():
                    raise KeyboardInterrupt
        finally:
            progress.finish()
    if not collector.sums:
        raise ConversionError(f"No weight of {model.name} saw any activation.")
    _write(out, collector.sums, text.path.name, n_chunks, ctx)
    return ImatrixResult(out, len(collector.sums), n_chunks, ctx, n_chunks * ctx)


def default_calibration_text() -> Path:
    from fathom_desktop.paths import resources_dir

    return resources_dir() / "quality" / "calibration.txt"


def _write(out: Path, sums: dict[str, _Sums], dataset: str, chunks: int, chunk_size: int) -> None:
    with atomic_output(out) as tmp:
        # llama.cpp's imatrix files carry no architecture; gguf-py always writes one, which the
        # readers ignore.
        writer = gguf.GGUFWriter(tmp, "imatrix")
        writer.add_type("imatrix")
        writer.add_array(gguf.Keys.IMatrix.DATASETS, [dataset])
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, chunks)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, chunk_size)
        # One matrix per weight: llama.cpp stores these 1-D (ggml drops trailing dimensions of 1).
        for name in sorted(sums):
            entry = sums[name]
            writer.add_tensor(f"{name}.in_sum2", entry.values.astype(np.float32))
            writer.add_tensor(f"{name}.counts", np.array([entry.count], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


# --- reading one back, for quantize --------------------------------------------------------


@dataclass(frozen=True)
class Imatrix:
    """An imatrix file as llama-quantize uses it: per weight, the mean squared activation."""

    path: Path
    values: dict[str, np.ndarray]  # float32, contiguous
    datasets: tuple[str, ...]
    chunks: int

    @classmethod
    def read(cls, path: Path) -> Imatrix:
        path = Path(path)
        try:
            reader = gguf.GGUFReader(path)
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path.name} is not an imatrix GGUF: {e}.") from e
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, np.ndarray] = {}
        for tensor in reader.tensors:
            if tensor.name.endswith(".in_sum2"):
                sums[tensor.name.removesuffix(".in_sum2")] = np.asarray(tensor.data, np.float32)
            elif tensor.name.endswith(".counts"):
                counts[tensor.name.removesuffix(".counts")] = np.asarray(tensor.data, np.float32)
        if not sums or sums.keys() != counts.keys():
            raise ConversionError(
                f"{path.name} is not an imatrix GGUF (no matching .in_sum2/.counts tensors)."
            )
        values: dict[str, np.ndarray] = {}
        for name, total in sums.items():
            per_matrix = total.reshape(counts[name].size, -1)
            n = np.rint(counts[name].reshape(-1, 1))
            mean = np.where(n > 0, per_matrix / np.where(n > 0, n, 1), 1.0)
            values[name] = np.ascontiguousarray(mean.reshape(-1), dtype=np.float32)
        field = reader.fields.get(gguf.Keys.IMatrix.DATASETS)
        datasets = tuple(str(v) for v in field.contents()) if field else ()
        chunk_field = reader.fields.get(gguf.Keys.IMatrix.CHUNK_COUNT)
        chunks = int(chunk_field.contents()) if chunk_field else 0
        return cls(path, values, datasets, chunks)

    def require_fits(self, shapes: dict[str, tuple[int, ...]], model_name: str) -> None:
        """Refuse an imatrix made for another model: names and widths must be the model's."""
        for name, values in self.values.items():
            shape = shapes.get(name)
            if shape is None or shape[0] != values.size:
                raise ConversionError(
                    f"{self.path.name} was made for another model: {name} "
                    + ("is not a tensor of " if shape is None else "has another width in ")
                    + f"{model_name}."
                )
