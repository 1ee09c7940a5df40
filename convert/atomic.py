"""Outputs appear under their final name only when complete.

Every file the pipeline writes goes to a hidden temporary name beside its destination and is
renamed into place after it was fully written and flushed. An interrupted or failed run leaves no
file that looks finished: the temporary is deleted on any exception, including KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from convert.errors import ConversionError
from convert.units import human_size

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_output(final: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on failure it is removed."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ConversionError(f"{final} already exists; pass --force to replace it.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if not tmp.exists():
            raise ConversionError(f"Nothing was written for {final.name}.")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def require_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Refuse before writing rather than fail half-way with a full disk."""
    directory = Path(directory)
    probe = directory if directory.exists() else directory.parent
    free = shutil.disk_usage(probe).free
    # 64 MiB of slack for metadata, alignment and the filesystem's own needs.
    if free < needed_bytes + (64 << 20):
        raise ConversionError(
            f"Not enough disk space for {what}: needs {human_size(needed_bytes + (64 << 20))}, "
            f"{human_size(free)} free in {probe}."
        )
