"""`download`: tested against a fake Hub on 127.0.0.1 (fake_hub.py), never the network."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from convert.download import (
    SOURCE_MARKER,
    download_checkpoint,
    is_needed,
    looks_like_repo_id,
    read_source,
)
from convert.errors import ConversionError
from tests.convert.cli_process import interrupt_cli
from tests.convert.fake_hub import (
    REPO,
    SHA,
    WEIGHTS,
    FakeHub,
    needed_bytes,
    repo_files,
    serve_fake_hub,
)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with serve_fake_hub(monkeypatch, REPO, repo_files()) as fake:
        yield fake


NEEDED = sorted(n for n in repo_files() if is_needed(n))


def _fetch(hub: FakeHub, dest: Path, **kwargs: object):
    return download_checkpoint(REPO, dest, endpoint=hub.url, show_progress=False, **kwargs)


def test_the_filter_keeps_what_a_conversion_reads() -> None:
    assert NEEDED == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert is_needed("chat_template.jinja")
    assert not is_needed("original/model.safetensors")


def test_repo_ids_and_folders_are_told_apart(tmp_path: Path) -> None:
    assert looks_like_repo_id(REPO)
    assert not looks_like_repo_id("just-a-name")
    assert not looks_like_repo_id(str(tmp_path))


def test_download_fetches_only_the_needed_files_at_one_commit(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "Fathom-R1-14B"
    result = _fetch(hub, dest)
    assert result.source.revision == SHA
    assert result.source.repo_id == REPO
    assert list(result.files) == NEEDED
    assert sorted(hub.downloads()) == NEEDED
    for name in NEEDED:
        assert (dest / name).read_bytes() == hub.files[name]
    assert not (dest / "README.md").exists()
    assert not (dest / "pytorch_model.bin").exists()
    assert result.n_bytes == sum(len(hub.files[n]) for n in NEEDED)
    # Later steps given only the folder still know where it came from.
    assert read_source(dest) == result.source
    assert (dest / SOURCE_MARKER).is_file()


def test_a_cut_transfer_resumes_where_it_stopped(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # huggingface-hub resumes from the last whole chunk it wrote (10 MB); 64 KiB chunks let a
    # 512 KiB test file show the same thing.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 << 10)
    hub.faults["model-00001-of-00002.safetensors"] = "cut-once"
    dest = tmp_path / "ckpt"
    _fetch(hub, dest)
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith("00001-of-00002.safetensors")]
    assert ranges == [None, f"bytes={len(WEIGHTS) // 2}-"]
    assert (dest / "model-00001-of-00002.safetensors").read_bytes() == WEIGHTS


def test_a_failed_run_is_finished_by_rerunning_without_refetching(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.faults["model-00002-of-00002.safetensors"] = "forbidden"
    dest = tmp_path / "ckpt"
    with pytest.raises(ConversionError) as err:
        _fetch(hub, dest)
    assert "HTTP 403" in str(err.value) and "\n" not in str(err.value)
    assert read_source(dest) is None  # not marked complete
    assert not (dest / "model-00002-of-00002.safetensors").exists()
    fetched_before = set(hub.downloads())

    del hub.faults["model-00002-of-00002.safetensors"]
    hub.log.clear()
    result = _fetch(hub, dest)
    assert list(result.files) == NEEDED
    # Only what the first run did not finish was fetched again.
    assert "model-00002-of-00002.safetensors" in hub.downloads()
    assert not set(hub.downloads()) & (fetched_before - {"model-00002-of-00002.safetensors"})
    assert (dest / "model-00002-of-00002.safetensors").read_bytes() == WEIGHTS[::-1]


def test_on_start_hears_the_total_and_what_is_already_there(hub: FakeHub, tmp_path: Path) -> None:
    total = needed_bytes(hub.files)
    heard: list[tuple[int, int, list[str]]] = []

    def on_start(total_bytes: int, present_bytes: int) -> None:
        heard.append((total_bytes, present_bytes, hub.downloads()))

    hub.faults["model-00002-of-00002.safetensors"] = "forbidden"
    dest = tmp_path / "ckpt"
    with pytest.raises(ConversionError):
        _fetch(hub, dest, on_start=on_start)
    assert heard == [(total, 0, [])]  # once, before any transfer

    # The rerun starts from everything but the refused shard; a third run from all of it.
    del hub.faults["model-00002-of-00002.safetensors"]
    _fetch(hub, dest, on_start=on_start)
    _fetch(hub, dest, on_start=on_start)
    assert [(t, present) for t, present, _ in heard[1:]] == [
        (total, total - len(WEIGHTS)),
        (total, total),
    ]


def test_a_finished_download_is_not_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    _fetch(hub, tmp_path / "ckpt")
    hub.log.clear()
    again = _fetch(hub, tmp_path / "ckpt")
    assert again.source.revision == SHA
    assert hub.downloads() == []


def test_an_unknown_repo_or_revision_is_one_clear_line(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="No model repo nobody/nothing"):
        download_checkpoint("nobody/nothing", tmp_path / "x", endpoint=hub.url)
    with pytest.raises(ConversionError, match="has no revision 'v9'"):
        _fetch(hub, tmp_path / "y", revision="v9")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_repo_without_safetensors_is_refused_before_downloading(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.files = {"config.json": b"{}", "pytorch_model.bin": b"pickle"}
    with pytest.raises(ConversionError, match="no safetensors weights"):
        _fetch(hub, tmp_path / "ckpt")
    assert hub.downloads() == []


def test_no_network_is_one_clear_line(hub: FakeHub, tmp_path: Path) -> None:
    # Nothing listens on port 9 of 127.0.0.1 ("discard"): the connection is refused at once.
    with pytest.raises(ConversionError) as err:
        download_checkpoint(REPO, tmp_path / "ckpt", endpoint="http://127.0.0.1:9")
    assert "Cannot reach the Hugging Face Hub" in str(err.value)
    assert "\n" not in str(err.value)


def test_offline_mode_is_one_clear_line(tmp_path: Path) -> None:
    # The suite runs with HF_HUB_OFFLINE=1 (conftest), as a user without network might.
    with pytest.raises(ConversionError) as err:
        download_checkpoint(REPO, tmp_path / "ckpt")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in str(err.value)
    assert not (tmp_path / "ckpt").exists()


def test_offline_an_earlier_complete_download_is_reused(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    first = _fetch(hub, tmp_path / "ckpt")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    again = download_checkpoint(REPO, tmp_path / "ckpt")
    assert again.source == first.source
    assert list(again.files) == NEEDED


def test_ctrl_c_during_a_download_exits_130_and_leaves_no_partial_file(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.faults["model-00001-of-00002.safetensors"] = "slow"
    dest = tmp_path / "ckpt"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    rc, err = interrupt_cli(
        ["-q", "download", REPO, "--dest", str(dest)],
        when=lambda: bool(list(dest.glob(".cache/**/*.incomplete"))),
        waiting_for="the slow file starting",
        env=env,
    )
    assert rc == 130, err
    assert (
        err.strip().splitlines()[-1] == "fathom-convert: interrupted; no partial output was left."
    )
    assert list(dest.rglob("*.incomplete")) == []
    assert not (dest / "model-00001-of-00002.safetensors").exists()
    assert read_source(dest) is None
