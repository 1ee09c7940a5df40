"""`fathom-convert evaluate`: what each quantization level loses against its reference.

The text is tokenized once, with the reference's vocabulary, and cut into chunks of `ctx` tokens
exactly as llama-perplexity cuts them (BOS in front of the first token of each chunk where the
vocabulary adds one; only the second half of each chunk is scored, so every scored token has at
least ctx/2 tokens of context). The reference runs once; its distributions go to a temporary
file as 16-bit codes (kl_stats.py) and every level is compared with them, chunk by chunk, so the
memory needed does not grow with the number of chunks. Results are cached in the levels'
manifest.json, keyed by the sha256 of both files and of the text, ctx and chunks.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np

from convert.atomic import require_free_space
from convert.errors import ConversionError
from convert.gguf_header import GgufFormatError, file_type_name, read_gguf_header
from convert.kl_stats import QualityStats, ReferenceRows, TokenComparison, compare, encode_reference
from convert.llama_forward import ForwardModel, ForwardSettings
from convert.manifest import file_sha256, read_evaluation, record_evaluation
from convert.progress import NullProgress, Progress

TOKENS_KEY = gguf.Keys.Tokenizer.LIST
# Rows of a chunk compared at once: bounds the float temporaries at a 152k vocabulary to ~40 MB.
ROWS_PER_BLOCK = 32


def default_text() -> Path:
    from fathom_desktop.paths import resources_dir

    return resources_dir() / "quality" / "evaluation.txt"


@dataclass(frozen=True)
class EvaluationText:
    path: Path
    text: str
    sha256: str

    @classmethod
    def read(cls, path: Path) -> EvaluationText:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConversionError(f"Cannot read the evaluation text {path}: {e.strerror}.") from e
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConversionError(f"The evaluation text {path} is not UTF-8 text.") from e
        return cls(Path(path), text, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class LevelResult:
    file: Path
    type: str
    size_bytes: int
    stats: QualityStats
    cached: bool = False

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "file": str(self.file),
            "type": self.type,
            "size_bytes": self.size_bytes,
        }
        data.update(asdict(self.stats))
        data["cached"] = self.cached
        return data


@dataclass(frozen=True)
class EvaluationReport:
    reference: Path
    reference_ppl: float
    text_sha256: str
    text_tokens: int
    ctx: int
    chunks: int
    results: list[LevelResult]

    def to_json(self) -> dict[str, object]:
        return {
            "reference": {"file": str(self.reference), "ppl": self.reference_ppl},
            "text": {"sha256": self.text_sha256, "tokens": self.text_tokens},
            "ctx": self.ctx,
            "chunks": self.chunks,
            "results": [r.to_json() for r in self.results],
        }


@dataclass(frozen=True)
class _ModelIdentity:
    """What must agree between a reference and a level for the comparison to mean anything."""

    path: Path
    architecture: str
    n_vocab: int
    shape: tuple[int, ...]
    tokens_digest: str
    file_type: str

    @classmethod
    def read(cls, path: Path) -> _ModelIdentity:
        path = Path(path)
        if not path.is_file():
            raise ConversionError(f"No such model file: {path}.")
        try:
            header = read_gguf_header(path, keep_string_arrays=frozenset({TOKENS_KEY}))
        except (GgufFormatError, OSError) as e:
            raise ConversionError(f"{path.name} is not a readable GGUF: {e}.") from e
        arch = header.string(gguf.Keys.General.ARCHITECTURE) or "?"
        tokens = header.get(TOKENS_KEY)
        token_list = list(tokens) if isinstance(tokens, list | tuple) else []
        digest = hashlib.sha256(b"\n".join(token_list)).hexdigest()
        llm = gguf.Keys.LLM
        keys = (llm.BLOCK_COUNT, llm.EMBEDDING_LENGTH, llm.FEED_FORWARD_LENGTH,
                gguf.Keys.Attention.HEAD_COUNT)
        shape = tuple(header.integer(k.format(arch=arch)) or 0 for k in keys)
        file_type = header.integer(gguf.Keys.General.FILE_TYPE)
        return cls(
            path=path,
            architecture=arch,
            n_vocab=len(token_list),
            shape=shape,
            tokens_digest=digest,
            file_type=file_type_name(file_type) if file_type is not None else "?",
        )

    def require_same_model(self, reference: _ModelIdentity) -> None:
        if self.tokens_digest != reference.tokens_digest:
            raise ConversionError(
                f"{self.path.name} has another vocabulary than the reference "
                f"{reference.path.name} ({self.n_vocab:,} vs {reference.n_vocab:,} tokens); "
                f"compare levels of one model with that model's own BF16/F16 file."
            )
        if (self.architecture, self.shape) != (reference.architecture, reference.shape):
            raise ConversionError(
                f"{self.path.name} is a quantization of another model than "
                f"{reference.path.name} (its layers or widths differ); compare levels of one "
                f"model with that model's own BF16/F16 file."
            )


def chunk_tokens(tokens: list[int], ctx: int, chunks: int | None) -> int:
    """How many whole chunks the text gives (at most `chunks`); refuses fewer than two."""
    available = len(tokens) // ctx
    if len(tokens) < 2 * ctx:
        raise ConversionError(
            f"The evaluation text is too short: {len(tokens):,} tokens make fewer than two chunks "
            f"of {ctx}; give a longer --text or a smaller --ctx."
        )
    if chunks is not None and chunks < 1:
        raise ConversionError(f"--chunks must be at least 1, not {chunks}.")
    return min(available, chunks) if chunks is not None else available


def evaluate(
    reference: Path,
    levels: list[Path],
    text_path: Path | None = None,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    settings: ForwardSettings | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
) -> EvaluationReport:
    """Compare every level with the reference over the same chunks of the text."""
    if ctx < 16 or ctx % 2:
        raise ConversionError(f"--ctx must be an even number of at least 16, not {ctx}.")
    if not levels:
        raise ConversionError("Name at least one quantized file to evaluate.")
    progress = progress or NullProgress()
    settings = ForwardSettings(
        n_ctx=ctx,
        n_gpu_layers=settings.n_gpu_layers if settings else None,
        n_threads=settings.n_threads if settings else None,
    )
    text = EvaluationText.read(text_path or default_text())
    ref_id = _ModelIdentity.read(reference)
    level_ids = [_ModelIdentity.read(level) for level in levels]
    for level in level_ids:
        level.require_same_model(ref_id)

    def stop() -> bool:
        return cancel is not None and cancel.is_set()

    with ForwardModel(reference, settings) as ref_model:
        tokens = ref_model.tokenize(text.text)
        n_chunks = chunk_tokens(tokens, ctx, chunks)
        first = ctx // 2
        per_chunk = ctx - 1 - first
        chunk_list = [_chunk(tokens, i, ctx, ref_model) for i in range(n_chunks)]
        targets = [np.asarray(chunk[first + 1 :], dtype=np.int64) for chunk in chunk_list]
        key = _CacheKey(text.sha256, ctx, n_chunks)
        ref_sha = file_sha256(reference, progress)
        level_sha = {level.path: file_sha256(level.path, progress) for level in level_ids}
        cached: dict[Path, LevelResult] = {}
        if use_cache:
            for level in level_ids:
                hit = read_evaluation(level.path, level_sha[level.path], ref_sha, key.as_dict())
                if hit is not None:
                    cached[level.path] = _level_result(level, QualityStats(**hit), cached=True)
        todo = [level for level in level_ids if level.path not in cached]
        results: dict[Path, LevelResult] = dict(cached)
        reference_ppl = next(iter(cached.values())).stats.ppl_reference if cached else math.nan
        if todo:
            need = n_chunks * per_chunk * (ref_model.n_vocab * 2 + 8)
            scratch_dir = Path(tempfile.gettempdir())
            require_free_space(scratch_dir, need, "the reference's distributions")
            with tempfile.TemporaryDirectory(prefix="fathom-evaluate-") as scratch:
                store = _ReferenceStore(Path(scratch), n_chunks * per_chunk, ref_model.n_vocab)
                total = n_chunks * per_chunk * (1 + len(todo))
                progress.start("reference", total)
                try:
                    nll_ref: list[np.ndarray] = []
                    for i, chunk in enumerate(chunk_list):
                        logits = ref_model.chunk_logits(chunk, first, stop)[:per_chunk]
                        for start in range(0, per_chunk, ROWS_PER_BLOCK):
                            end = min(start + ROWS_PER_BLOCK, per_chunk)
                            rows = encode_reference(logits[start:end])
                            store.write(i * per_chunk + start, rows)
                            nll_ref.append(rows.nll(targets[i][start:end]))
                        progress.advance(per_chunk)
                        _check_cancel(stop)
                    reference_ppl = math.exp(float(np.concatenate(nll_ref).mean()))
                    ref_model.close()
                    for level in todo:
                        progress.message(level.path.name)
                        stats = _measure_level(
                            level.path, settings, chunk_list, targets, store, first, per_chunk,
                            progress, stop,
                        )
                        results[level.path] = _level_result(level, stats)
                        record_evaluation(
                            level.path, level_sha[level.path], ref_sha, key.as_dict(),
                            asdict(stats),
                        )
                finally:
                    store.close()
                    progress.finish()
    return EvaluationReport(
        reference=Path(reference),
        reference_ppl=reference_ppl,
        text_sha256=text.sha256,
        text_tokens=len(tokens),
        ctx=ctx,
        chunks=n_chunks,
        results=[results[level.path] for level in level_ids],
    )


def _measure_level(
    path: Path,
    settings: ForwardSettings,
    chunk_list: list[list[int]],
    targets: list[np.ndarray],
    store: _ReferenceStore,
    first: int,
    per_chunk: int,
    progress: Progress,
    stop: Callable[[], bool],
) -> QualityStats:
    parts: list[TokenComparison] = []
    with ForwardModel(path, settings) as model:
        for i, chunk in enumerate(chunk_list):
            logits = model.chunk_logits(chunk, first, stop)[:per_chunk]
            for start in range(0, per_chunk, ROWS_PER_BLOCK):
                end = min(start + ROWS_PER_BLOCK, per_chunk)
                reference = store.read(i * per_chunk + start, end - start)
                parts.append(compare(logits[start:end], reference, targets[i][start:end]))
            progress.advance(per_chunk)
            _check_cancel(stop)
    return QualityStats.from_tokens(parts)


def _chunk(tokens: list[int], index: int, ctx: int, model: ForwardModel) -> list[int]:
    chunk = tokens[index * ctx : (index + 1) * ctx]
    if model.add_bos:
        chunk = [model.bos, *chunk[1:]]
    return chunk


def _level_result(level: _ModelIdentity, stats: QualityStats, cached: bool = False) -> LevelResult:
    return LevelResult(
        file=level.path,
        type=level.file_type,
        size_bytes=level.path.stat().st_size,
        stats=stats,
        cached=cached,
    )


def _check_cancel(stop: Callable[[], bool]) -> None:
    if stop():
        raise KeyboardInterrupt


@dataclass(frozen=True)
class _CacheKey:
    text_sha256: str
    ctx: int
    chunks: int

    def as_dict(self) -> dict[str, object]:
        return {"text_sha256": self.text_sha256, "ctx": self.ctx, "chunks": self.chunks}


class _ReferenceStore:
    """The reference's coded distributions on disk, one row per scored position.

    Plain reads and writes, not a memory map: mapped pages would count as the process's memory,
    and at Fathom's vocabulary 100 chunks of codes are 7.8 GB.
    """

    def __init__(self, folder: Path, n_rows: int, n_vocab: int) -> None:
        self._row_bytes = n_vocab * 2
        self._n_vocab = n_vocab
        self._file = open(folder / "reference.codes", "w+b")  # noqa: SIM115 - closed with folder
        self._scale = np.zeros(n_rows, dtype=np.float32)
        self._offset = np.zeros(n_rows, dtype=np.float32)

    def write(self, row: int, rows: ReferenceRows) -> None:
        n = len(rows.scale)
        self._file.seek(row * self._row_bytes)
        self._file.write(np.ascontiguousarray(rows.codes, dtype=np.uint16).tobytes())
        self._scale[row : row + n] = rows.scale
        self._offset[row : row + n] = rows.offset

    def read(self, row: int, n: int) -> ReferenceRows:
        self._file.seek(row * self._row_bytes)
        data = self._file.read(n * self._row_bytes)
        codes = np.frombuffer(data, dtype=np.uint16).reshape(n, self._n_vocab)
        return ReferenceRows(codes, self._scale[row : row + n], self._offset[row : row + n])

    def close(self) -> None:
        self._file.close()
