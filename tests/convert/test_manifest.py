"""manifest.json: one entry per produced file, hashed, traced to its source, merged over runs."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest

from convert.errors import ConversionError
from convert.manifest import (
    MANIFEST_NAME,
    describe_file,
    gguf_source,
    read_manifest,
    update_manifest,
)

SHA = "0123456789abcdef0123456789abcdef01234567"


def _entry(path: Path, quant: str = "Q4_K_M"):
    return describe_file(
        path, quant, source_repo="FractalAIResearch/Fathom-R1-14B", source_revision=SHA
    )


def test_an_entry_describes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Fathom-R1-14B-Q4_K_M.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4000)
    entry = _entry(path)
    assert entry.file == path.name
    assert entry.quant_type == "Q4_K_M"
    assert entry.size_bytes == path.stat().st_size
    assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (entry.source_repo, entry.source_revision) == ("FractalAIResearch/Fathom-R1-14B", SHA)
    assert entry.tools["gguf"] == metadata.version("gguf")
    assert entry.tools["llama-cpp-python"] == metadata.version("llama-cpp-python")
    assert entry.tools["fathom-desktop"]


def test_the_manifest_is_written_and_merged(tmp_path: Path) -> None:
    q4 = tmp_path / "m-Q4_K_M.gguf"
    q8 = tmp_path / "m-Q8_0.gguf"
    q4.write_bytes(b"four")
    q8.write_bytes(b"eight")
    path = update_manifest(tmp_path, [_entry(q4)])
    assert path == tmp_path / MANIFEST_NAME
    update_manifest(tmp_path, [_entry(q8, "Q8_0")])

    data = json.loads(path.read_text())
    assert data["schema_version"] == 2
    by_name = {e["file"]: e for e in data["files"]}
    assert set(by_name) == {q4.name, q8.name}
    assert by_name[q8.name]["quant_type"] == "Q8_0"
    assert by_name[q8.name]["sha256"] == hashlib.sha256(b"eight").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_NAME, q4.name, q8.name])


def test_a_redone_file_replaces_its_entry_and_deleted_files_drop_out(tmp_path: Path) -> None:
    q4 = tmp_path / "m-Q4_K_M.gguf"
    q8 = tmp_path / "m-Q8_0.gguf"
    q4.write_bytes(b"old")
    q8.write_bytes(b"eight")
    update_manifest(tmp_path, [_entry(q4), _entry(q8, "Q8_0")])
    q4.write_bytes(b"new and longer")
    q8.unlink()
    update_manifest(tmp_path, [_entry(q4)])
    files = read_manifest(tmp_path).files
    assert list(files) == [q4.name]
    assert files[q4.name].sha256 == hashlib.sha256(b"new and longer").hexdigest()
    assert files[q4.name].size_bytes == len(b"new and longer")


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"schema_version": 99, "files": []}), json.dumps({"files": [{}]})],
)
def test_a_foreign_manifest_is_not_overwritten(tmp_path: Path, content: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(content)
    q4 = tmp_path / "m-Q4_K_M.gguf"
    q4.write_bytes(b"x")
    with pytest.raises(ConversionError, match="move it aside"):
        update_manifest(tmp_path, [_entry(q4)])
    assert (tmp_path / MANIFEST_NAME).read_text() == content


def test_the_source_recorded_by_the_converter_is_read_back(
    tiny_gguf_bf16: Path, tmp_path: Path
) -> None:
    # The session fixture was converted with source_repo only.
    assert gguf_source(tiny_gguf_bf16) == ("fathom-tests/Tiny-Qwen2", None)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"nope")
    assert gguf_source(not_gguf) == (None, None)


def test_a_converted_revision_is_read_back(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from convert.gguf_convert import convert_checkpoint

    out = convert_checkpoint(
        tiny_checkpoint,
        tmp_path / "t-F32.gguf",
        "f32",
        source_repo="FractalAIResearch/Fathom-R1-14B",
        source_revision=SHA,
    ).path
    assert gguf_source(out) == ("FractalAIResearch/Fathom-R1-14B", SHA)
