"""The models folder seen as models, each with its quantization ladder.

The folder holds files such as `Fathom-R1-14B-BF16.gguf`, `Fathom-R1-14B-Q4_K_M.gguf`,
`Fathom-R1-14B-imatrix.gguf` and `manifest.json`. Here they become one `ModelGroup` per model
(the file name without its type), each listing every level of the ladder in the ladder's order,
made or not, with what the manifest measured about it. The demo model is a group of its own.

No Qt, and no reading of GGUF headers: `read_ladder` lists the folder and reads manifest.json
(call it off the GUI thread); sizes and fits of levels not made yet are estimated from a header
someone else has read (`estimated_profile`), with arithmetic only.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gguf

from convert.quantize import LADDER, ImatrixUse, QuantType, basename_of, output_name
from fathom_desktop.engine import planner
from fathom_desktop.engine.gguf_check import ModelFileInfo

DEMO_NAME = "fathom-tiny"  # fathom_desktop.demo.DEMO_NAME, without importing the converter's steps
REFERENCE_TYPES = ("BF16", "F16", "F32")
IMATRIX_SUFFIX = "-imatrix"
# The setup the dialog measures with: the shipped evaluation text in llama-perplexity's 512-token
# chunks. The demo is measured on fewer chunks so that a fresh install has numbers in seconds.
MEASURE_CTX = 512
MEASURE_CHUNKS = 100
DEMO_MEASURE_CHUNKS = 8
LADDER_RANK = {q.name: i for i, q in enumerate(LADDER)}


def imatrix_path(folder: Path, basename: str) -> Path:
    """Where a model's importance matrix lives beside its levels."""
    return folder / f"{basename}{IMATRIX_SUFFIX}.gguf"


def _file_type_names() -> list[str]:
    names = {m.name.removeprefix("MOSTLY_").removeprefix("ALL_") for m in gguf.LlamaFileType}
    names.discard("GUESSED")
    # Longest first, so Q4_K_M wins over Q4_K in a file name.
    return sorted(names, key=len, reverse=True)


_QUANT_IN_NAME = re.compile(
    r"(?:^|[-_.])(" + "|".join(re.escape(n) for n in _file_type_names()) + r")(?=$|[-_.])",
    re.IGNORECASE,
)


def quant_from_name(name: str) -> str | None:
    """`Fathom-R1-14B-Q4_K_M.gguf` -> "Q4_K_M"; None when the name does not say."""
    match = _QUANT_IN_NAME.search(Path(name).stem)
    return match.group(1).upper() if match else None


def is_imatrix_name(name: str) -> bool:
    """`Fathom-R1-14B-imatrix.gguf` is an importance matrix, not a model to run."""
    stem = Path(name).stem
    return stem.endswith(IMATRIX_SUFFIX) and quant_from_name(name) is None


def is_demo_basename(basename: str) -> bool:
    return basename.startswith(f"{DEMO_NAME}-")


@dataclass(frozen=True)
class LevelQuality:
    """A level measured against its reference (one `fathom-convert evaluate` result)."""

    kld_mean: float
    kld_se: float
    kld_p99: float
    top1: float  # fraction 0-1
    top1_se: float
    ppl: float
    ppl_reference: float
    tokens: int
    ctx: int
    chunks: int
    text_sha256: str

    @property
    def setup(self) -> tuple[str, int, int]:
        return (self.text_sha256, self.ctx, self.chunks)


@dataclass(frozen=True)
class LadderRow:
    """One level of one model: a file that exists, or the file Make would write."""

    quant: str
    path: Path
    made: bool
    size_bytes: int | None  # the file's size when made
    ladder: QuantType | None  # None for the reference and for types outside the ladder
    is_reference: bool = False
    quality: LevelQuality | None = None
    sha256: str | None = None
    aliases: tuple[Path, ...] = ()

    def is_file(self, path: Path | str) -> bool:
        absolute = Path(path).absolute()
        return absolute == self.path or absolute in self.aliases

    @property
    def rank(self) -> int:
        return LADDER_RANK.get(self.quant, len(LADDER))


@dataclass(frozen=True)
class ModelGroup:
    basename: str
    folder: Path
    in_models_folder: bool
    rows: tuple[LadderRow, ...]
    reference: Path | None  # the BF16/F16 GGUF levels are made from and measured against
    imatrix: Path | None  # the importance matrix beside it, when made

    @property
    def is_demo(self) -> bool:
        return is_demo_basename(self.basename)

    @property
    def title(self) -> str:
        return f"Demo model ({DEMO_NAME})" if self.is_demo else self.basename

    @property
    def measure_chunks(self) -> int:
        return DEMO_MEASURE_CHUNKS if self.is_demo else MEASURE_CHUNKS

    def row(self, quant: str) -> LadderRow | None:
        return next((r for r in self.rows if r.quant == quant), None)

    def make_blocker(self, row: LadderRow) -> str | None:
        """Why Make cannot make `row`, in one line; None when it can."""
        if row.made or row.ladder is None:
            return "already made"
        if not self.in_models_folder:
            return "Make works on models in the models folder."
        if self.reference is None:
            return (
                f"Needs {self.basename}-BF16.gguf (or F16) in the models folder to make other "
                f"levels: convert the checkpoint (File › Open or download a model…), or for "
                f"Fathom-R1-14B use File › Get Fathom-R1-14B…, which downloads and converts it."
            )
        return None

    def measure_blocker(self, row: LadderRow) -> str | None:
        if not row.made or row.is_reference:
            return "nothing to measure"
        if self.reference is None:
            return (
                f"Measuring compares with {self.basename}-BF16.gguf (or F16), which is not in "
                f"the models folder: convert the checkpoint (File › Open or download a model…), "
                f"or for Fathom-R1-14B use File › Get Fathom-R1-14B…."
            )
        return None

    def needs_imatrix(self, row: LadderRow) -> bool:
        """Make must first make the importance matrix (the level is not made without one)."""
        return (
            row.ladder is not None
            and row.ladder.imatrix is ImatrixUse.REQUIRED
            and self.imatrix is None
        )


@dataclass(frozen=True)
class FileFacts:
    """What the folder listing knows of one GGUF (no header read)."""

    path: Path
    size_bytes: int
    quant: str | None
    sha256: str | None  # from the manifest, when it lists this very file
    mtime: float
    # Every path found for this file (its name in the folder, a symlink, the path the settings
    # use), so that comparisons need no disk access on the GUI thread.
    aliases: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """One manifest evaluation record, reduced to what the ladder needs."""

    file: str
    sha256: str
    reference_sha256: str
    quality: LevelQuality
    created: str


def evaluation_from_manifest(entry: object) -> Evaluation | None:
    """An `EvaluationEntry` of convert/manifest.py; None when it lacks what we show."""
    try:
        stats, setup = entry.stats, entry.setup  # type: ignore[attr-defined]
        quality = LevelQuality(
            kld_mean=float(stats["kld_mean"]),
            kld_se=float(stats["kld_se"]),
            kld_p99=float(stats["kld_p99"]),
            top1=float(stats["top1"]),
            top1_se=float(stats["top1_se"]),
            ppl=float(stats["ppl"]),
            ppl_reference=float(stats["ppl_reference"]),
            tokens=int(stats["tokens"]),
            ctx=int(setup["ctx"]),
            chunks=int(setup["chunks"]),
            text_sha256=str(setup["text_sha256"]),
        )
        return Evaluation(
            entry.file,
            entry.sha256,
            entry.reference_sha256,
            quality,
            entry.created,  # type: ignore[attr-defined]
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _reference_rank(quant: str | None) -> int:
    return REFERENCE_TYPES.index(quant) if quant in REFERENCE_TYPES else len(REFERENCE_TYPES)


def build_groups(
    files: Iterable[FileFacts],
    models_dir: Path,
    evaluations: Iterable[Evaluation] = (),
    imatrices: Iterable[Path] = (),
) -> list[ModelGroup]:
    """Group the folder's GGUFs (and files from elsewhere) by model, each with its full ladder.

    Models in the folder come first by name, then files from elsewhere, and the demo last.
    """
    folder = models_dir.absolute()
    by_model: dict[tuple[Path, str], list[FileFacts]] = {}
    for f in files:
        by_model.setdefault((f.path.parent, basename_of(f.path)), []).append(f)
    imatrix_by_model = {(p.parent, p.stem.removesuffix(IMATRIX_SUFFIX)): p for p in imatrices}
    evaluations = list(evaluations)
    groups = []
    for (parent, basename), members in by_model.items():
        in_folder = parent == folder
        references = sorted(
            (m for m in members if m.quant in REFERENCE_TYPES),
            key=lambda m: _reference_rank(m.quant),
        )
        reference = references[0] if references else None
        rows = _rows(members, reference, evaluations, parent, basename, in_folder)
        groups.append(
            ModelGroup(
                basename=basename,
                folder=parent,
                in_models_folder=in_folder,
                rows=tuple(rows),
                reference=reference.path if reference else None,
                imatrix=imatrix_by_model.get((parent, basename)),
            )
        )
    groups.sort(
        key=lambda g: (g.is_demo, not g.in_models_folder, g.basename.lower(), str(g.folder))
    )
    return groups


def _rows(
    members: list[FileFacts],
    reference: FileFacts | None,
    evaluations: list[Evaluation],
    folder: Path,
    basename: str,
    in_folder: bool,
) -> list[LadderRow]:
    made: dict[str, FileFacts] = {}
    others: list[FileFacts] = []
    for m in members:
        if m.quant in LADDER_RANK and m.quant not in made:
            made[m.quant] = m
        else:
            others.append(m)
    quality = _qualities(members, reference, evaluations)
    rows: list[LadderRow] = []
    # The reference first: it is a level too (the best, and the largest).
    others.sort(key=lambda m: (_reference_rank(m.quant), m.quant or "", m.path.name))
    refs = [m for m in others if m.quant in REFERENCE_TYPES]
    rest = [m for m in others if m.quant not in REFERENCE_TYPES]
    for m in refs:
        rows.append(
            _made_row(m, None, quality, is_reference=reference is not None and m is reference)
        )
    for q in LADDER:
        if q.name in made:
            rows.append(_made_row(made[q.name], q, quality))
        elif in_folder:
            path = folder / output_name(basename, q)
            rows.append(LadderRow(q.name, path, False, None, q))
    for m in rest:
        rows.append(_made_row(m, None, quality))
    return rows


def _made_row(
    m: FileFacts,
    q: QuantType | None,
    quality: dict[Path, LevelQuality],
    *,
    is_reference: bool = False,
) -> LadderRow:
    return LadderRow(
        quant=m.quant or "?",
        path=m.path,
        made=True,
        size_bytes=m.size_bytes,
        ladder=q,
        is_reference=is_reference,
        quality=quality.get(m.path),
        sha256=m.sha256,
        aliases=m.aliases,
    )


def _qualities(
    members: list[FileFacts], reference: FileFacts | None, evaluations: list[Evaluation]
) -> dict[Path, LevelQuality]:
    """Each member's measurement against this group's reference, all under one setup.

    A record counts when it was made for this very file (its sha256 as the manifest knows it,
    or, for a file the manifest does not list, a record newer than the file) and against this
    reference. Levels are compared under one setup only (text, ctx, chunks): the one most
    levels were measured with.
    """
    if reference is None:
        return {}
    valid: dict[Path, list[Evaluation]] = {}
    for m in members:
        if m is reference:
            continue
        for e in evaluations:
            if e.file != m.path.name:
                continue
            if m.sha256 is not None and e.sha256 != m.sha256:
                continue
            if m.sha256 is None and _created_before(e.created, m.mtime):
                continue
            if reference.sha256 is not None and e.reference_sha256 != reference.sha256:
                continue
            valid.setdefault(m.path, []).append(e)
    counts: dict[tuple[str, int, int], int] = {}
    for records in valid.values():
        for setup in {e.quality.setup for e in records}:
            counts[setup] = counts.get(setup, 0) + 1
    if not counts:
        return {}
    setup = max(counts, key=lambda s: (counts[s], s[2]))
    chosen: dict[Path, LevelQuality] = {}
    for path, records in valid.items():
        matching = sorted((e for e in records if e.quality.setup == setup), key=lambda e: e.created)
        if matching:
            chosen[path] = matching[-1].quality
    return chosen


def _created_before(created: str, mtime: float) -> bool:
    from datetime import datetime

    try:
        return datetime.fromisoformat(created).timestamp() < math.floor(mtime)
    except ValueError:
        return True


# -- estimates for levels not made yet ----------------------------------------------------------


def config_from_facts(facts: ModelFileInfo) -> dict[str, object]:
    """The Hugging Face config fields the planner's estimate needs, from a GGUF header."""
    output = "output.weight"
    return {
        "hidden_size": facts.n_embd,
        "intermediate_size": facts.n_ff,
        "num_hidden_layers": facts.n_layers,
        "num_attention_heads": facts.n_head,
        "num_key_value_heads": facts.n_head_kv,
        "vocab_size": facts.n_vocab,
        "head_dim": facts.head_dim,
        "tie_word_embeddings": not any(t.name == output for t in facts.tensors),
    }


def estimated_profile(
    facts: ModelFileInfo,
    quant: QuantType,
    *,
    n_ctx: int,
    kv_cache_type: str,
    flash_attn: bool,
) -> planner.MemoryProfile:
    """The memory a level not made yet would need: every matrix at the level's typical
    bits/weight (the ladder's figure), norms and biases in F32."""
    bits = quant.bits_per_weight or 8.5
    return planner.model_memory_profile(
        config_from_facts(facts),
        bits,
        n_ctx=n_ctx,
        kv_cache_type=kv_cache_type,  # type: ignore[arg-type]
        flash_attn=flash_attn,
    )


def with_quality(row: LadderRow, quality: LevelQuality | None) -> LadderRow:
    return dataclasses.replace(row, quality=quality)


# -- reading the folder -------------------------------------------------------------------------

GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class LadderListing:
    groups: list[ModelGroup]
    warning: str | None  # why manifest.json was ignored, when it was


def read_ladder(models_dir: Path, extra: Iterable[Path | None] = ()) -> LadderListing:
    """List the folder (and `extra` files from elsewhere) as models with their ladders.

    Reads the folder, each file's size and manifest.json; not the GGUF headers. Slow on a slow
    disk: call it off the GUI thread.
    """
    from convert.manifest import read_manifest

    folder = models_dir.absolute()
    listed: dict[str, tuple[str, int, str]] = {}
    evaluations: list[Evaluation] = []
    warning = None
    if folder.is_dir():
        try:
            manifest = read_manifest(folder)
        except Exception as error:  # a damaged manifest must not hide the GGUFs beside it
            warning = str(error)
        else:
            listed = {n: (e.quant_type, e.size_bytes, e.sha256) for n, e in manifest.files.items()}
            evaluations = [
                e for e in map(evaluation_from_manifest, manifest.evaluations) if e is not None
            ]
    files: dict[Path, FileFacts] = {}
    imatrices: list[Path] = []

    def add(path: Path) -> None:
        path = path.absolute()
        identity = path.resolve()
        if identity in files:
            found = files[identity]
            files[identity] = dataclasses.replace(found, aliases=(*found.aliases, path))
            return
        try:
            stat = path.stat()
        except OSError:
            return
        known = listed.get(path.name) if path.parent == folder else None
        trusted = known is not None and known[1] == stat.st_size
        files[identity] = FileFacts(
            path=path,
            size_bytes=stat.st_size,
            quant=known[0] if known else quant_from_name(path.name),
            sha256=known[2] if trusted else None,
            mtime=stat.st_mtime,
            aliases=(path, identity),
        )

    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            # Hidden names are the pipeline's unfinished outputs.
            if path.suffix.lower() != GGUF_SUFFIX or path.name.startswith("."):
                continue
            if is_imatrix_name(path.name):
                imatrices.append(path)
            else:
                add(path)
    for path in extra:
        if path is not None and Path(path).is_file():
            add(Path(path))
    groups = build_groups(files.values(), folder, evaluations, imatrices)
    return LadderListing(groups, warning)
