"""`fathom-convert` as a user meets it: outputs, manifest, one-line errors, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convert.cli import EXIT_INTERRUPTED, main
from convert.download import SOURCE_MARKER
from convert.manifest import MANIFEST_NAME
from convert.quantize import LADDER
from tests.convert.cli_process import interrupt_cli
from tests.convert.test_download import serve_fake_hub
from tests.convert.test_quantize import write_ladder_model

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHA = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ladder_model(tmp_path_factory.mktemp("cli") / "Ladder-BF16.gguf")


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """Run in a child process, as a user would; returns (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "convert", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


def _manifest(folder: Path) -> dict[str, dict]:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    return {entry["file"]: entry for entry in data["files"]}


def test_python_dash_m_convert_lists_the_ladder() -> None:
    rc, out, err = run_cli("types")
    assert rc == 0, err
    for q in LADDER:
        assert q.name in out and q.purpose in out
    assert "9.03 GB" in out  # Q4_K_M for Fathom-R1-14B's 14.77 B weights


def test_inspect_json(tiny_gguf_bf16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_gguf_bf16), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["architecture"] == "qwen2"
    assert data["file_type"] == "BF16"
    assert data["n_layers"] == 2
    assert data["vocab_size"] == 152064
    assert data["pre_tokenizer"] == "deepseek-r1-qwen"
    assert data["bos"]["id"] == 151646 and data["eos"]["id"] == 151643
    assert data["reasoning_tags_ok"] is True
    assert data["chat_template"] == "opens-think"
    assert data["tensor_types"] == {"BF16": 16, "F32": 11}
    assert data["problems"] == []


def test_inspect_for_people(tiny_gguf_legacy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_gguf_legacy)]) == 0
    out = capsys.readouterr().out
    assert "Architecture   qwen2" in out
    assert "<think>        151648 '<think>' (USER_DEFINED)" in out
    assert "Chat template  the model writes <think> itself (legacy template)" in out


def test_quantize_several_types_into_a_folder(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["-q", "quantize", str(model), "--types", "Q8_0,Q4_K_M", "--out-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    q8, q4 = tmp_path / "Ladder-Q8_0.gguf", tmp_path / "Ladder-Q4_K_M.gguf"
    assert f"Q8_0    {q8}" in out and f"Q4_K_M  {q4}" in out
    manifest = _manifest(tmp_path)
    assert set(manifest) == {q8.name, q4.name}
    for path in (q8, q4):
        assert manifest[path.name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest[path.name]["size_bytes"] == path.stat().st_size
    assert manifest[q4.name]["quant_type"] == "Q4_K_M"

    # A later run adds to the manifest instead of replacing it.
    assert main(["-q", "quantize", str(model), "--type", "Q2_K", "--out-dir", str(tmp_path)]) == 0
    assert set(_manifest(tmp_path)) == {q8.name, q4.name, "Ladder-Q2_K.gguf"}
    # Outputs are not replaced unless asked.
    assert main(["-q", "quantize", str(model), "--type", "Q2_K", "--out-dir", str(tmp_path)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err


def test_quantize_one_type_to_a_named_file(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.gguf"
    rc = main(["quantize", str(model), "--type", "q4_k_m", "-o", str(out), "--no-manifest", "-q"])
    assert rc == 0
    assert out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.gguf"]


def test_gguf_names_the_output_after_the_downloaded_repo(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "some-folder"
    shutil.copytree(tiny_checkpoint, checkpoint)
    marker = {"repo_id": "FractalAIResearch/Fathom-R1-14B", "revision": SHA}
    (checkpoint / SOURCE_MARKER).write_text(json.dumps(marker))
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "gguf", str(checkpoint), "--outtype", "f16"]) == 0
    out = tmp_path / "Fathom-R1-14B-F16.gguf"
    assert out.is_file()
    entry = _manifest(tmp_path)[out.name]
    assert (entry["quant_type"], entry["source_revision"]) == ("F16", SHA)


@pytest.mark.slow
def test_all_from_a_downloaded_folder_then_more_types(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "Fathom-R1-14B-hf"
    shutil.copytree(tiny_checkpoint, checkpoint)
    marker = {"repo_id": "FractalAIResearch/Fathom-R1-14B", "revision": SHA}
    (checkpoint / SOURCE_MARKER).write_text(json.dumps(marker))
    out_dir = tmp_path / "gguf"

    rc = main(["-q", "all", str(checkpoint), "--out-dir", str(out_dir), "--types", "Q8_0,Q4_K_M",
               "--imatrix-chunks", "2"])
    assert rc == 0, capsys.readouterr().err
    names = ["Fathom-R1-14B-BF16.gguf", "Fathom-R1-14B-Q8_0.gguf", "Fathom-R1-14B-Q4_K_M.gguf"]
    imatrix = "Fathom-R1-14B-imatrix.gguf"  # made because Q4_K_M is better with one
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*names, imatrix, MANIFEST_NAME])
    manifest = _manifest(out_dir)
    assert set(manifest) == set(names)
    guided = manifest["Fathom-R1-14B-Q4_K_M.gguf"]["imatrix"]
    assert guided["file"] == imatrix and guided["chunks"] == 2
    assert guided["datasets"] == ["calibration.txt"]
    assert guided["sha256"] == hashlib.sha256((out_dir / imatrix).read_bytes()).hexdigest()
    assert manifest["Fathom-R1-14B-Q8_0.gguf"]["imatrix"] is None
    for name in names:
        entry = manifest[name]
        assert entry["source_repo"] == "FractalAIResearch/Fathom-R1-14B"
        assert entry["source_revision"] == SHA
        assert entry["sha256"] == hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
        assert set(entry["tools"]) == {"fathom-desktop", "gguf", "llama-cpp-python"}
    # The tiny model's 64-wide rows cannot hold 256-blocks: the CLI says what it did instead.
    assert "were stored in another type" in capsys.readouterr().out

    first_q8 = manifest["Fathom-R1-14B-Q8_0.gguf"]
    rc = main(
        ["-q", "all", str(checkpoint), "--out-dir", str(out_dir), "--types", "Q8_0,Q6_K"]
        + ["--discard-bf16"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "Fathom-R1-14B-Q8_0.gguf  already there, kept" in out
    assert _manifest(out_dir)["Fathom-R1-14B-Q8_0.gguf"] == first_q8  # kept, not re-described
    assert set(_manifest(out_dir)) == {
        "Fathom-R1-14B-Q8_0.gguf",
        "Fathom-R1-14B-Q4_K_M.gguf",
        "Fathom-R1-14B-Q6_K.gguf",
    }
    assert not (out_dir / "Fathom-R1-14B-BF16.gguf").exists()


@pytest.mark.slow
def test_all_from_the_hub(
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Repo id in, quantized GGUFs and a manifest naming the exact commit out (fake Hub)."""
    files = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir() if p.is_file()}
    files["README.md"] = b"not needed"
    repo = "FractalAIResearch/Fathom-R1-14B"
    with serve_fake_hub(monkeypatch, repo, files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        out_dir = tmp_path / "gguf"
        rc = main(["-q", "all", repo, "--out-dir", str(out_dir), "--types", "Q8_0"])
        assert rc == 0, capsys.readouterr().err
    assert f"download {repo} @ {hub.sha}" in capsys.readouterr().out
    assert not (out_dir / "Fathom-R1-14B-hf" / "README.md").exists()
    manifest = _manifest(out_dir)
    assert set(manifest) == {"Fathom-R1-14B-BF16.gguf", "Fathom-R1-14B-Q8_0.gguf"}
    assert {e["source_revision"] for e in manifest.values()} == {hub.sha}
    assert {e["source_repo"] for e in manifest.values()} == {repo}


# --- errors: one readable line ---------------------------------------------------------------


def _bad_cases(model: Path, tmp: Path) -> list[tuple[list[str], int, str]]:
    not_gguf = tmp / "notes.gguf"
    not_gguf.write_text("hello")
    a_file = tmp / "a-file"
    a_file.write_text("x")
    return [
        (["inspect", str(not_gguf)], 1, "notes.gguf is not a usable GGUF file"),
        (["inspect", str(tmp / "missing.gguf")], 1, "does not exist"),
        (["quantize", str(tmp / "missing.gguf"), "--type", "Q8_0"], 1, "does not exist"),
        (["quantize", str(model), "--type", "Q4_KM"], 2, "Unknown quantization type 'Q4_KM'"),
        (["quantize", str(model), "--type", "Q8_0", "--threads", "0"], 2, "must be at least 1"),
        (["quantize", str(model)], 1, "Choose --type TYPE or --types LIST"),
        (["quantize", str(model), "--types", "Q8_0,Q2_K", "-o", "x.gguf"], 1, "-o names one file"),
        (["quantize", str(model), "--type", "IQ2_XXS", "-o", str(tmp / "o.gguf")], 1, "imatrix"),
        (["quantize", str(model), "--type", "Q8_0", "-o", str(a_file / "o.gguf")], 1, "a-file"),
        (["all", "no-such-thing", "--out-dir", str(tmp)], 1, "neither a checkpoint folder"),
        (["download", "FractalAIResearch/Fathom-R1-14B", "--dest", str(tmp / "d")], 1, "offline"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ]


def test_every_error_is_one_line_and_leaves_nothing(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, code, text in _bad_cases(model, tmp_path):
        before = sorted(tmp_path.rglob("*"))
        try:
            rc = main(["-q", *argv])
        except SystemExit as stop:  # argparse's own exit for usage errors
            rc = stop.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == code, (argv, err)
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("fathom-convert"), argv
        assert text in lines[0], (argv, lines[0])
        assert "Traceback" not in err
        assert sorted(tmp_path.rglob("*")) == before, argv


def test_requantizing_is_refused_at_the_command_line(model: Path, tmp_path: Path) -> None:
    q8 = tmp_path / "Ladder-Q8_0.gguf"
    assert run_cli("-q", "quantize", model, "--type", "Q8_0", "-o", q8)[0] == 0
    rc, _, err = run_cli("quantize", q8, "--type", "Q4_K_M", "--out-dir", tmp_path)
    assert rc == 1
    assert err.strip().splitlines() == [
        "fathom-convert: error: Ladder-Q8_0.gguf is already quantized (Q8_0); quantizing it "
        "again compounds the error. Start from the BF16/F16 GGUF, or pass --allow-requantize."
    ]
    rc, _, err = run_cli(
        "-q", "quantize", q8, "--type", "Q4_K_M", "--out-dir", tmp_path, "--allow-requantize"
    )
    assert rc == 0, err
    assert (tmp_path / "Ladder-Q4_K_M.gguf").is_file()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    rc, _, err = run_cli("--debug", "inspect", bad)
    assert rc == 1
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("fathom-convert: error:")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path: Path) -> None:
    # Big enough that one-thread IQ4_XS takes seconds, so the interrupt lands mid-write.
    source = write_ladder_model(tmp_path / "Slow-BF16.gguf", hidden=512, ffn=2048)
    out_dir = tmp_path / "out"
    rc, err = interrupt_cli(
        ["-q", "quantize", str(source), "--type", "IQ4_XS", "--threads", "1"]
        + ["--out-dir", str(out_dir)],
        when=lambda: any(out_dir.glob(".*.partial")),
        waiting_for="llama.cpp starting to write",
        start_timeout=120,
        exit_timeout=60,
    )
    assert rc == EXIT_INTERRUPTED, err
    assert err.strip().splitlines() == ["fathom-convert: interrupted; no partial output was left."]
    assert list(out_dir.iterdir()) == []
