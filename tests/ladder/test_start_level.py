"""With no model chosen, the app starts on a converted model's best level that fits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from fathom_desktop import demo, paths
from fathom_desktop.app import DemoStart, start_model
from fathom_desktop.engine import planner
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.engine.scripted import FakeEngine
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import History
from fathom_desktop.settings import SettingsStore
from fathom_desktop.start_level import choose_start_level
from tests.gui.conftest import cuda_backend
from tests.gui.test_settings_dialog import write_model_header

_T = gguf.GGMLQuantizationType
_F = gguf.LlamaFileType
CARD_12GB = GpuInfo("Fake RTX 4070", 12 * 2**30, int(11.4 * 2**30))
# What fathom-convert evaluate would have recorded (input data: the rule is what is tested).
KLD = {"Q8_0": 0.0004, "Q6_K": 0.0012, "Q4_K_M": 0.0150, "Q3_K_M": 0.0410, "Q2_K": 0.1100}
TYPES = {
    "BF16": (_T.BF16, _F.MOSTLY_BF16),
    "Q8_0": (_T.Q8_0, _F.MOSTLY_Q8_0),
    "Q6_K": (_T.Q6_K, _F.MOSTLY_Q6_K),
    "Q4_K_M": (_T.Q4_K, _F.MOSTLY_Q4_K_M),
    "Q3_K_M": (_T.Q3_K, _F.MOSTLY_Q3_K_M),
    "Q2_K": (_T.Q2_K, _F.MOSTLY_Q2_K),
}


def converted_fathom(folder: Path, measured: bool = True) -> dict[str, Path]:
    """Fathom-R1-14B's BF16 and five levels (headers, sparse weights) and their manifest."""
    files = {
        quant: write_model_header(
            folder / f"Fathom-R1-14B-{quant}.gguf", matrix_type=matrix, file_type=file_type
        )
        for quant, (matrix, file_type) in TYPES.items()
    }
    sha = {quant: f"{i:02x}" * 32 for i, quant in enumerate(files)}
    manifest = {
        "schema_version": 2,
        "files": [
            {
                "file": path.name,
                "quant_type": quant,
                "size_bytes": path.stat().st_size,
                "sha256": sha[quant],
                "source_repo": None,
                "source_revision": None,
                "tools": {},
                "created": "2026-11-30T00:00:00+00:00",
            }
            for quant, path in files.items()
        ],
        "evaluations": [
            {
                "file": files[quant].name,
                "sha256": sha[quant],
                "reference_sha256": sha["BF16"],
                "setup": {"text_sha256": "e" * 64, "ctx": 512, "chunks": 100},
                "stats": {
                    "tokens": 25500,
                    "kld_mean": kld,
                    "kld_se": kld / 50,
                    "kld_p99": kld * 9,
                    "top1": 1 - kld,
                    "top1_se": 0.001,
                    "ppl": 5.0,
                    "ppl_reference": 4.9,
                    "ln_ppl_ratio": 0.02,
                    "ln_ppl_ratio_se": 0.001,
                    "rms_dp": 0.01,
                    "rms_dp_se": 0.001,
                },
                "created": "2026-11-30T00:00:00+00:00",
            }
            for quant, kld in KLD.items()
        ]
        if measured
        else [],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return files


def fits_fully(path: Path, gpu: GpuInfo) -> bool:
    return planner.plan_offload(path, 16384, "f16", gpu.free_bytes).fits_fully


def test_the_lowest_kld_that_fits_fully(tmp_path: Path) -> None:
    files = converted_fathom(tmp_path)
    found = choose_start_level(
        tmp_path, CARD_12GB, n_ctx=16384, kv_cache_type="f16", flash_attn=True
    )
    assert found is not None
    group, choice = found
    assert group.basename == "Fathom-R1-14B"
    fitting = [q for q in KLD if fits_fully(files[q], CARD_12GB)]
    assert fitting and len(fitting) < len(KLD)  # the card makes it a real choice
    assert choice.quant == min(fitting, key=KLD.get)
    assert choice.path == files[choice.quant]
    assert "fit fully on the GPU" in choice.reason


def test_a_bigger_card_or_a_smaller_context_moves_up_the_ladder(tmp_path: Path) -> None:
    converted_fathom(tmp_path)
    small = choose_start_level(
        tmp_path, CARD_12GB, n_ctx=16384, kv_cache_type="f16", flash_attn=True
    )
    big = choose_start_level(
        tmp_path,
        GpuInfo("Fake 4090", 24 * 2**30, 23 * 2**30),
        n_ctx=16384,
        kv_cache_type="f16",
        flash_attn=True,
    )
    assert small is not None and big is not None
    assert KLD[big[1].quant] < KLD[small[1].quant]


def test_unmeasured_levels_follow_the_ladder(tmp_path: Path) -> None:
    files = converted_fathom(tmp_path, measured=False)
    found = choose_start_level(
        tmp_path, CARD_12GB, n_ctx=16384, kv_cache_type="f16", flash_attn=True
    )
    assert found is not None
    fitting = [q for q in KLD if fits_fully(files[q], CARD_12GB)]
    assert found[1].quant == fitting[0]  # the highest level that fits


def test_without_a_gpu_the_best_level_runs_on_the_cpu(tmp_path: Path) -> None:
    converted_fathom(tmp_path)
    found = choose_start_level(tmp_path, None, n_ctx=16384, kv_cache_type="f16", flash_attn=True)
    assert found is not None and found[1].quant == "Q8_0"  # not the BF16 reference


def test_only_the_demo_is_no_converted_model(tmp_path: Path, demo_ladder: Path) -> None:
    assert (
        choose_start_level(demo_ladder, CARD_12GB, n_ctx=4096, kv_cache_type="f16", flash_attn=True)
        is None
    )


@pytest.fixture
def window(qtbot, tmp_path: Path) -> Iterator[object]:
    from fathom_desktop.gui.main_window import MainWindow

    store = SettingsStore(tmp_path / "settings.json")
    history = History(tmp_path / "history.sqlite3")
    main = MainWindow(lambda: FakeEngine(tokens_per_s=None), store, history)
    qtbot.addWidget(main)
    main.show()
    yield main
    main.shutdown()
    history.close()


def test_the_app_starts_on_that_level_not_on_the_demo(qtbot, monkeypatch, window) -> None:
    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the demo was prepared although a converted model is there")

    monkeypatch.setattr(demo, "ensure_demo_model", must_not_run)
    monkeypatch.setattr(planner, "detect_gpu", lambda: CARD_12GB)
    cuda_backend(monkeypatch)
    files = converted_fathom(paths.models_dir())
    expected = choose_start_level(
        paths.models_dir(), CARD_12GB, n_ctx=16384, kv_cache_type="f16", flash_attn=True
    )
    assert expected is not None

    started = start_model(window, window.store, None)
    assert isinstance(started, DemoStart)
    try:
        qtbot.waitUntil(lambda: window.session.state is SessionState.READY, timeout=30_000)
    finally:
        started.stop()
    assert window.session.report.model_path == expected[1].path
    assert expected[1].path in files.values()
    assert window.banner.text().startswith(f"Started on Fathom-R1-14B {expected[1].quant} (")
    # Not made the user's choice: the next start chooses again (a new card, a new level).
    assert window.store.get("model_path") is None


def test_a_fresh_install_starts_the_demo_and_measures_its_ladder(qtbot, window) -> None:
    from fathom_desktop.gui.ladder_jobs import ladder_jobs
    from fathom_desktop.model_ladder import read_ladder

    started = start_model(window, window.store, None)
    assert isinstance(started, DemoStart)
    try:
        qtbot.waitUntil(lambda: window.session.state is SessionState.READY, timeout=60_000)
        assert window.session.report.model_path.name.endswith("-Q8_0.gguf")
        # Once the demo is loaded, its ladder is made and measured in the background.
        assert started.ladder_key in ladder_jobs().running()
        qtbot.waitUntil(lambda: not ladder_jobs().running(), timeout=120_000)
    finally:
        started.stop()
        ladder_jobs().cancel_all(wait_s=15)
    (group,) = read_ladder(paths.models_dir()).groups
    measured = [row.quant for row in group.rows if row.quality is not None]
    assert measured == list(demo.DEMO_LEVELS)
    assert window.store.get("model_path") is None
