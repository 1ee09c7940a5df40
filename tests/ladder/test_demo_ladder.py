"""The demo's own ladder made and measured in a child process, as a fresh install does it, and
Make/Measure/Cancel through the same child."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from convert.atomic import PARTIAL_SUFFIX
from convert.manifest import read_manifest
from fathom_desktop.demo import DEMO_LEVELS, demo_basename, demo_ladder_work
from fathom_desktop.level_jobs import CHILD_CODE, LevelWork, LevelWorker
from fathom_desktop.model_ladder import imatrix_path, read_ladder
from tests.conftest import PROJECT_ROOT


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(folder, target)
    return target


def demo_group(folder: Path):
    (group,) = read_ladder(folder).groups
    return group


def test_first_start_makes_and_measures_the_demo_ladder(demo_ladder: Path) -> None:
    group = demo_group(demo_ladder)
    assert group.is_demo and group.title == "Demo model (fathom-tiny)"
    assert group.reference is not None and group.reference.name.endswith("-BF16.gguf")
    assert group.imatrix == imatrix_path(demo_ladder, demo_basename())
    measured = {r.quant: r.quality for r in group.rows if r.quality is not None}
    assert set(measured) == set(DEMO_LEVELS)
    for quality in measured.values():
        assert quality.chunks == 8 and quality.ctx == 512 and quality.tokens == 8 * 255
        assert 0 < quality.top1 <= 1 and quality.kld_mean >= 0
    # Fewer bits lose more: the measurements order the ends of the ladder as expected.
    assert measured["Q8_0"].kld_mean < measured["Q4_K_M"].kld_mean < measured["Q2_K"].kld_mean
    assert measured["Q8_0"].top1 > measured["Q2_K"].top1
    # The manifest says which importance matrix guided each level that it helps.
    files = read_manifest(demo_ladder).files
    q4 = files[f"{demo_basename()}-Q4_K_M.gguf"]
    assert q4.imatrix is not None and q4.imatrix["file"].endswith("-imatrix.gguf")
    assert files[f"{demo_basename()}-Q8_0.gguf"].imatrix is None
    # Everything is made and measured: the next start has nothing to do.
    assert demo_ladder_work(demo_ladder) is None


def test_make_a_missing_level_records_it(demo_ladder: Path, tmp_path: Path) -> None:
    folder = copy_of(demo_ladder, tmp_path)
    group = demo_group(folder)
    row = group.row("IQ3_XXS")
    assert row is not None and not row.made
    made: list[Path] = []
    work = LevelWork(
        source=str(group.reference),
        out_dir=str(folder),
        basename=group.basename,
        make=("IQ3_XXS",),
        imatrix=str(group.imatrix),
        n_gpu_layers=0,
        n_threads=1,
    )
    outcome = LevelWorker(work, on_made=made.append).run()
    assert outcome.status == "done", outcome.message
    assert made == [row.path] and row.path.is_file()
    entry = read_manifest(folder).files[row.path.name]
    assert entry.quant_type == "IQ3_XXS" and entry.imatrix is not None
    after = demo_group(folder).row("IQ3_XXS")
    assert after is not None and after.made and after.quality is None  # made, not yet measured


def test_cancel_while_the_importance_matrix_is_made_leaves_nothing(
    demo_ladder: Path, tmp_path: Path
) -> None:
    folder = copy_of(demo_ladder, tmp_path)
    group = demo_group(folder)
    assert group.imatrix is not None
    group.imatrix.unlink()  # IQ2_M needs one: Make makes it first
    manifest_before = (folder / "manifest.json").read_bytes()
    work = LevelWork(
        source=str(group.reference),
        out_dir=str(folder),
        basename=group.basename,
        make=("IQ2_M",),
        imatrix=str(group.imatrix),
        imatrix_chunks=None,
        n_gpu_layers=0,
        n_threads=1,
    )
    steps: list[str] = []
    worker: LevelWorker

    def progress(step: str, done: int, _total: int, _message: str) -> None:
        steps.append(step)
        if step == "importance matrix" and done > 0:
            worker.cancel()

    worker = LevelWorker(work, on_progress=progress)
    outcome = worker.run()
    assert outcome.status == "cancelled"
    assert "importance matrix" in steps
    assert not group.imatrix.exists()
    assert not (folder / f"{group.basename}-IQ2_M.gguf").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert (folder / "manifest.json").read_bytes() == manifest_before


def test_a_level_of_another_model_is_refused_in_one_line(
    demo_ladder: Path, tmp_path: Path, tiny_gguf_f32: Path
) -> None:
    folder = copy_of(demo_ladder, tmp_path)
    group = demo_group(folder)
    work = LevelWork(
        source=str(group.reference),
        out_dir=str(folder),
        basename=group.basename,
        measure=(str(tiny_gguf_f32),),
        n_gpu_layers=0,
        n_threads=1,
    )
    outcome = LevelWorker(work).run()
    assert outcome.status == "error"
    assert "\n" not in outcome.message and "another vocabulary" in outcome.message


def test_the_packaged_launcher_serves_the_worker(demo_ladder: Path, tmp_path: Path) -> None:
    """Frozen, sys.executable is the launcher: it must run this child's code, as python -c."""
    folder = copy_of(demo_ladder, tmp_path)
    group = demo_group(folder)
    q4 = group.row("Q4_K_M")
    assert q4 is not None
    work = LevelWork(
        source=str(group.reference),
        out_dir=str(folder),
        basename=group.basename,
        measure=(str(q4.path),),
        chunks=8,
        n_gpu_layers=0,
        n_threads=1,
    )
    child = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT_ROOT / "packaging" / "launcher.py"),
            "-c",
            CHILD_CODE,
            work.to_json(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert child.stdout is not None and child.stdin is not None
    messages = [json.loads(line) for line in child.stdout]  # until the child closes it
    child.stdin.close()
    assert child.wait(timeout=60) == 0
    assert ["measured", str(q4.path)] in messages and messages[-1] == ["done"]


def test_measure_reuses_what_was_measured(demo_ladder: Path, tmp_path: Path) -> None:
    folder = copy_of(demo_ladder, tmp_path)
    group = demo_group(folder)
    q2 = group.row("Q2_K")
    assert q2 is not None and q2.quality is not None
    manifest_before = (folder / "manifest.json").read_bytes()
    work = LevelWork(
        source=str(group.reference),
        out_dir=str(folder),
        basename=group.basename,
        measure=(str(q2.path),),
        chunks=8,
        n_gpu_layers=0,
        n_threads=1,
    )
    outcome = LevelWorker(work).run()
    assert outcome.status == "done" and outcome.measured == [q2.path]
    # Found in the manifest under the same file, reference, text, ctx and chunks: not redone.
    assert (folder / "manifest.json").read_bytes() == manifest_before
    assert demo_group(folder).row("Q2_K").quality == q2.quality
