"""`manifest.json`: what the pipeline produced in a folder, so a file can be checked and traced.

One entry per GGUF: quant type, size, sha256, the checkpoint it came from (repo and commit) and the
versions of the tools that wrote it. Later runs merge into the existing manifest rather than
replace it, and the manifest itself is written atomically like every other output.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import gguf

from convert.atomic import atomic_output
from convert.errors import ConversionError
from convert.gguf_header import GgufFormatError, read_gguf_header
from convert.progress import NullProgress, Progress

MANIFEST_NAME = "manifest.json"
# 2 added "evaluations"; a version-1 manifest reads as one without any.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
_HASH_CHUNK = 8 << 20
# Distribution names as pip knows them.
TOOL_DISTRIBUTIONS = ("fathom-desktop", "gguf", "llama-cpp-python")


def tool_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for dist in TOOL_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    if versions["fathom-desktop"] == "not installed":
        # Running from a checkout without `pip install -e .`; the package still knows its version.
        from fathom_desktop import __version__

        versions["fathom-desktop"] = __version__
    return versions


# The converter records its source as Hub URLs (general.source.repo_url, general.source.url).
_HUB_REPO = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/?$")
_HUB_TREE = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")


def gguf_source(path: Path) -> tuple[str | None, str | None]:
    """(repo id, revision) a GGUF was converted from, as the converter recorded them."""
    try:
        f = read_gguf_header(path)
    except (GgufFormatError, OSError):
        return None, None
    repo = revision = None
    if m := _HUB_REPO.match(f.string(gguf.Keys.General.SOURCE_REPO_URL) or ""):
        repo = m.group("repo")
    if m := _HUB_TREE.match(f.string(gguf.Keys.General.SOURCE_URL) or ""):
        repo, revision = repo or m.group("repo"), m.group("rev")
    return repo, revision


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    progress = progress or NullProgress()
    digest = hashlib.sha256()
    progress.start(f"sha256 {Path(path).name}", Path(path).stat().st_size)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                progress.advance(len(chunk))
    finally:
        progress.finish()
    return digest.hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    file: str  # the name inside the manifest's folder
    quant_type: str
    size_bytes: int
    sha256: str
    source_repo: str | None
    source_revision: str | None
    tools: dict[str, str]
    created: str  # ISO 8601, UTC
    # The importance matrix that guided the quantization: {"file", "sha256", "datasets",
    # "chunks"}; None for files made without one.
    imatrix: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        names = {f.name for f in fields(cls)}
        missing = names - data.keys() - {"imatrix"}
        if missing:
            raise ValueError(f"entry lacks {', '.join(sorted(missing))}")
        return cls(**{k: data[k] for k in names if k in data})


@dataclass(frozen=True)
class EvaluationEntry:
    """One measured comparison of a file with its reference (fathom-convert evaluate)."""

    file: str
    sha256: str
    reference_sha256: str
    # What was measured on: text_sha256, ctx, chunks.
    setup: dict[str, Any]
    stats: dict[str, Any]
    created: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationEntry:
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        if missing:
            raise ValueError(f"evaluation lacks {', '.join(sorted(missing))}")
        return cls(**{k: data[k] for k in names})


@dataclass
class Manifest:
    files: dict[str, ManifestEntry] = field(default_factory=dict)
    evaluations: list[EvaluationEntry] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "files": [asdict(self.files[name]) for name in sorted(self.files)],
            "evaluations": [asdict(e) for e in self.evaluations],
        }


def describe_file(
    path: Path,
    quant_type: str,
    *,
    source_repo: str | None,
    source_revision: str | None,
    progress: Progress | None = None,
    imatrix: Path | None = None,
) -> ManifestEntry:
    """Hash and describe one finished output (and the imatrix that guided it, if any)."""
    path = Path(path)
    return ManifestEntry(
        file=path.name,
        quant_type=quant_type,
        size_bytes=path.stat().st_size,
        sha256=sha256_file(path, progress),
        source_repo=source_repo,
        source_revision=source_revision,
        tools=tool_versions(),
        created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        imatrix=_describe_imatrix(imatrix) if imatrix is not None else None,
    )


def _describe_imatrix(path: Path) -> dict[str, Any]:
    from convert.imatrix import Imatrix

    matrix = Imatrix.read(path)
    return {
        "file": Path(path).name,
        "sha256": sha256_file(path),
        "datasets": list(matrix.datasets),
        "chunks": matrix.chunks,
    }


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return Manifest()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"schema version {version!r}, expected {SCHEMA_VERSION}")
        entries = [ManifestEntry.from_json(item) for item in data["files"]]
        evaluations = [EvaluationEntry.from_json(item) for item in data.get("evaluations", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConversionError(
            f"{path} is not a manifest this tool can update ({e}); move it aside and rerun."
        ) from e
    return Manifest(files={e.file: e for e in entries}, evaluations=evaluations)


def update_manifest(directory: Path, entries: list[ManifestEntry]) -> Path:
    """Merge `entries` into the folder's manifest (same name: replaced); write it atomically.

    Entries whose file has since been deleted are dropped: the manifest describes the folder.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    for entry in entries:
        manifest.files[entry.file] = entry
    manifest.files = {n: e for n, e in manifest.files.items() if (directory / n).is_file()}
    return _write(directory, manifest)


def _write(directory: Path, manifest: Manifest) -> Path:
    manifest.evaluations = [e for e in manifest.evaluations if (directory / e.file).is_file()]
    path = directory / MANIFEST_NAME
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """The file's sha256, from its folder's manifest when that is known to describe this file
    (same size, manifest written after the file), else computed: a 29 GB BF16 file takes a
    minute to hash."""
    path = Path(path)
    entry = read_manifest(path.parent).files.get(path.name)
    stat = path.stat()
    manifest_file = path.parent / MANIFEST_NAME
    if (
        entry is not None
        and entry.size_bytes == stat.st_size
        and manifest_file.stat().st_mtime_ns >= stat.st_mtime_ns
    ):
        return entry.sha256
    return sha256_file(path, progress)


def read_evaluation(
    path: Path, sha: str, reference_sha256: str, setup: dict[str, Any]
) -> dict[str, Any] | None:
    """The stats measured before for exactly this file (by content), reference and setup."""
    path = Path(path)
    manifest = read_manifest(path.parent)
    for entry in manifest.evaluations:
        if (
            entry.file == path.name
            and entry.sha256 == sha
            and entry.reference_sha256 == reference_sha256
            and entry.setup == setup
        ):
            return entry.stats
    return None


def record_evaluation(
    path: Path, sha: str, reference_sha256: str, setup: dict[str, Any], stats: dict[str, Any]
) -> None:
    """Keep a measurement in the file's folder's manifest (replacing one of the same key)."""
    path = Path(path)
    manifest = read_manifest(path.parent)
    manifest.evaluations = [
        e
        for e in manifest.evaluations
        if not (e.file == path.name and e.reference_sha256 == reference_sha256 and e.setup == setup)
    ]
    manifest.evaluations.append(
        EvaluationEntry(
            file=path.name,
            sha256=sha,
            reference_sha256=reference_sha256,
            setup=dict(setup),
            stats=dict(stats),
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        )
    )
    _write(path.parent, manifest)
