"""Fetch the files a conversion needs from the Hugging Face Hub, pinned to one commit.

The revision is resolved to a commit sha first and everything is downloaded at that sha, so a
branch that moves mid-download cannot mix two versions, and the manifest can name exactly what
was converted. `hf_hub_download` with `local_dir` skips files already complete at that commit,
so rerunning after an interruption fetches only what is missing (and huggingface-hub resumes a
dropped transfer with HTTP Range requests within a run; a stopped run's half-downloaded file is
deleted and starts over). A small marker file records repo and commit beside the checkpoint for
later steps that are given only the folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from convert.atomic import atomic_output, require_free_space
from convert.errors import ConversionError

# Top-level files a conversion reads; everything else in a repo (README, figures, training
# artefacts, other weight formats) is skipped.
NEEDED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
WEIGHTS_SUFFIX = ".safetensors"
SOURCE_MARKER = ".fathom-source.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def is_needed(filename: str) -> bool:
    """The filter: top-level weights in safetensors and the config/tokenizer files."""
    if "/" in filename:
        return False
    return filename.endswith(WEIGHTS_SUFFIX) or filename in NEEDED_FILES


class DownloadStarted(Protocol):
    """Told once, before any transfer: the needed files' total size, and how much of it is
    already complete in the destination (so that progress can be shown against the total)."""

    def __call__(self, total_bytes: int, present_bytes: int, /) -> None: ...


@dataclass(frozen=True)
class CheckpointSource:
    """Where a local checkpoint came from, as recorded by `download_checkpoint`."""

    repo_id: str
    revision: str  # a commit sha


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    source: CheckpointSource
    files: tuple[str, ...]
    n_bytes: int


def read_source(folder: Path) -> CheckpointSource | None:
    """The repo and commit of a folder this tool downloaded; None for any other folder."""
    try:
        data = json.loads((Path(folder) / SOURCE_MARKER).read_text(encoding="utf-8"))
        return CheckpointSource(repo_id=str(data["repo_id"]), revision=str(data["revision"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_source(folder: Path, source: CheckpointSource) -> None:
    with atomic_output(Path(folder) / SOURCE_MARKER) as tmp:
        tmp.write_text(json.dumps(asdict(source), indent=2) + "\n", encoding="utf-8")


def _is_network_error(error: BaseException) -> bool:
    # requests, httpx and httpx2 (whichever huggingface-hub uses) name their transport errors alike.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(
        names & {"ConnectError", "ConnectionError", "TimeoutException", "Timeout", "TransportError"}
    )


def _underlying(error: BaseException) -> BaseException:
    """huggingface-hub wraps an HTTP or connection error into "not in the local cache either";
    the wrapped one says what happened."""
    from huggingface_hub import errors

    cause, seen = error.__cause__, {id(error)}
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, errors.HfHubHTTPError) or _is_network_error(cause):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return error


def _explain(error: BaseException, repo_id: str, revision: str | None) -> ConversionError:
    from huggingface_hub import errors

    if isinstance(error, errors.LocalEntryNotFoundError) and "HF_HUB_OFFLINE" not in str(error):
        error = _underlying(error)
    at = f" at revision {revision!r}" if revision else ""
    if isinstance(error, errors.OfflineModeIsEnabled) or (
        isinstance(error, errors.LocalEntryNotFoundError) and "HF_HUB_OFFLINE" in str(error)
    ):
        message = (
            f"Cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE=1). Unset it, or "
            f"pass a local checkpoint folder instead of a repo id."
        )
    elif isinstance(error, errors.GatedRepoError):
        message = (
            f"{repo_id} is gated: accept its terms on huggingface.co and log in "
            f"(`hf auth login` or HF_TOKEN)."
        )
    elif isinstance(error, errors.RevisionNotFoundError):
        message = f"{repo_id} has no revision {revision!r}."
    elif isinstance(error, errors.RepositoryNotFoundError):
        message = f"No model repo {repo_id} on the Hub (or it is private and no token was given)."
    elif _is_network_error(error) or isinstance(error, errors.LocalEntryNotFoundError):
        message = (
            f"Cannot reach the Hugging Face Hub to download {repo_id}{at}: no network "
            f"connection. Check it and rerun (finished files are kept), or pass a local "
            f"checkpoint folder instead."
        )
    elif isinstance(error, errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", "?")
        message = f"The Hub refused the download of {repo_id}{at} (HTTP {status})."
    else:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        message = f"Downloading {repo_id}{at} failed: {first_line}"
    return ConversionError(message)


def _existing_download(dest: Path, repo_id: str, revision: str | None) -> DownloadResult | None:
    """A complete earlier download in `dest`, for use when the Hub cannot be asked."""
    source = read_source(dest)
    if source is None or source.repo_id != repo_id:
        return None
    if revision is not None and revision != source.revision:
        return None
    files = sorted(p.name for p in dest.iterdir() if p.is_file() and is_needed(p.name))
    if "config.json" not in files or not any(f.endswith(WEIGHTS_SUFFIX) for f in files):
        return None
    n_bytes = sum((dest / f).stat().st_size for f in files)
    return DownloadResult(dest, source, tuple(files), n_bytes)


def _complete_bytes(dest: Path, sizes: dict[str, int | None]) -> int:
    """Bytes of the files already in `dest` at their expected size (unknown sizes count as 0)."""
    complete = 0
    for name, size in sizes.items():
        path = dest / name
        if size is not None and path.is_file() and path.stat().st_size == size:
            complete += size
    return complete


def download_checkpoint(
    repo_id: str,
    dest: Path,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    show_progress: bool = True,
    on_start: DownloadStarted | None = None,
) -> DownloadResult:
    """Download the safetensors checkpoint `repo_id` into `dest`; returns the resolved commit.

    `on_start` hears the total and already-complete byte counts once the files are known; it is
    not called when an earlier complete download is reused offline.
    """
    import huggingface_hub
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    # huggingface-hub reads HF_ENDPOINT once, at import; read it now so a mirror set later (or
    # a test's local server) is honoured by every request, the file downloads included.
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise ConversionError(f"{dest} exists and is not a folder.")
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    try:
        info: Any = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as e:
        if isinstance(e, huggingface_hub.errors.OfflineModeIsEnabled) or _is_network_error(e):
            existing = _existing_download(dest, repo_id, revision)
            if existing is not None:
                return existing
        raise _explain(e, repo_id, revision) from e

    sha: str = info.sha
    sizes = {s.rfilename: s.size for s in info.siblings or [] if is_needed(s.rfilename)}
    if not any(name.endswith(WEIGHTS_SUFFIX) for name in sizes) or "config.json" not in sizes:
        raise ConversionError(
            f"{repo_id} has no safetensors weights with a config.json at its top level; "
            f"fathom-convert needs a Hugging Face transformers checkpoint."
        )
    dest.mkdir(parents=True, exist_ok=True)
    total = sum(size or 0 for size in sizes.values())
    complete = _complete_bytes(dest, sizes)
    require_free_space(dest, total - complete, f"the {repo_id} checkpoint")
    if on_start is not None:
        on_start(total, complete)

    if show_progress:
        enable_progress_bars()
    else:
        disable_progress_bars()
    # One file at a time, in this thread: snapshot_download's thread pool finishes every
    # running transfer before a Ctrl-C gets through (minutes for 5 GB shards), while here the
    # interrupt stops the transfer at once and huggingface-hub deletes its temporary file.
    # Small files first, so a broken config is found before gigabytes are fetched.
    try:
        for name in sorted(sizes, key=lambda n: (sizes[n] or 0, n)):
            huggingface_hub.hf_hub_download(
                repo_id,
                name,
                revision=sha,
                local_dir=dest,
                endpoint=endpoint,
                token=token,
            )
    except Exception as e:
        raise _explain(e, repo_id, revision) from e
    finally:
        enable_progress_bars()

    absent = [name for name in sizes if not (dest / name).is_file()]
    if absent:
        raise ConversionError(
            f"The download of {repo_id} is incomplete ({', '.join(absent[:3])} missing); rerun it."
        )
    source = CheckpointSource(repo_id=repo_id, revision=sha)
    _write_source(dest, source)
    n_bytes = sum((dest / name).stat().st_size for name in sizes)
    return DownloadResult(dest, source, tuple(sorted(sizes)), n_bytes)
