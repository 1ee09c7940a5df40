"""The VRAM planner: placement maths, recommendations, and Fathom's quant ladder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fathom_desktop.engine import planner
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.planner import (
    RUNTIME_RESERVE,
    model_memory_profile,
    plan_offload,
    profile_from_model_file,
)

GIB = 2**30
LADDER = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K"]


@pytest.fixture(scope="module")
def fathom_config(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "fathom-r1-14b" / "config.json").read_text("utf-8"))


def test_kv_cache_follows_the_formula(fathom_config: dict):
    f16 = model_memory_profile(fathom_config, "Q4_K_M", n_ctx=16384, kv_cache_type="f16")
    # 2 (K and V) x 16384 positions x 8 KV heads x 128 dims x 2 bytes, per block: 64 MiB.
    assert f16.kv_bytes_per_block == 2 * 16384 * 8 * 128 * 2
    q8 = model_memory_profile(fathom_config, "Q4_K_M", n_ctx=16384, kv_cache_type="q8_0")
    assert q8.kv_bytes_per_block == f16.kv_bytes_per_block * 34 // 64  # 34 bytes per 32 values
    half = model_memory_profile(fathom_config, "Q4_K_M", n_ctx=8192)
    assert half.kv_bytes_per_block * 2 == f16.kv_bytes_per_block


def test_ladder_file_sizes_are_plausible_and_ordered(fathom_config: dict):
    sizes = [model_memory_profile(fathom_config, q).weights_bytes for q in LADDER]
    assert sizes == sorted(sizes, reverse=True)
    q8, q4 = sizes[0], sizes[3]
    params = 14.77e9
    assert 8.4 < q8 * 8 / params < 8.6  # Q8_0 is 8.5 bits per weight throughout
    assert 4.7 < q4 * 8 / params < 5.0  # Q4_K_M's mix lands near 4.85


def test_more_layers_never_need_less_vram(fathom_config: dict):
    profile = model_memory_profile(fathom_config, "Q4_K_M")
    needs = [profile.gpu_bytes(k) for k in range(profile.n_layers + 1)]
    assert needs[0] == 0
    assert all(a < b for a, b in zip(needs, needs[1:], strict=False))
    assert profile.n_layers == 49  # 48 blocks and the output layer


def test_plan_picks_the_most_layers_that_fit(fathom_config: dict):
    profile = model_memory_profile(fathom_config, "Q4_K_M")
    for free in (4 * GIB, 8 * GIB, 10 * GIB, 24 * GIB):
        plan = profile.plan(free)
        assert plan.vram_bytes <= free * planner.SAFE_FRACTION
        if plan.n_gpu_layers < plan.n_layers:
            assert profile.gpu_bytes(plan.n_gpu_layers + 1) > free * planner.SAFE_FRACTION
    assert profile.plan(24 * GIB).label == "fits on GPU"
    partial = profile.plan(8 * GIB)
    assert partial.label == f"partial: {partial.n_gpu_layers}/49 layers"
    assert 0 < partial.n_gpu_layers < 49
    assert profile.plan(None).label == "CPU only"
    assert profile.plan(RUNTIME_RESERVE // 2).n_gpu_layers == 0


def test_flash_attention_shrinks_the_compute_buffer(fathom_config: dict):
    with_fa = model_memory_profile(fathom_config, "Q4_K_M", flash_attn=True)
    without = model_memory_profile(fathom_config, "Q4_K_M", flash_attn=False)
    assert without.compute_bytes > with_fa.compute_bytes + GIB


def test_profile_from_a_gguf_matches_the_config_prediction(tiny_gguf_f32: Path):
    info = check_model_file(tiny_gguf_f32)
    from_file = profile_from_model_file(info, n_ctx=4096)
    config = {
        "hidden_size": info.n_embd,
        "intermediate_size": info.n_ff,
        "num_hidden_layers": info.n_layers,
        "num_attention_heads": info.n_head,
        "num_key_value_heads": info.n_head_kv,
        "vocab_size": info.n_vocab,
    }
    predicted = model_memory_profile(config, 32.0, n_ctx=4096)
    assert from_file == predicted
    assert from_file.weights_bytes < info.size_bytes  # plus the header and tokenizer


def test_plan_offload_reads_the_file_and_respects_free_vram(tiny_gguf_f32: Path):
    roomy = plan_offload(tiny_gguf_f32, n_ctx=512, free_vram_bytes=8 * GIB)
    assert roomy.fits_fully and roomy.n_gpu_layers == roomy.n_layers == 3
    assert plan_offload(tiny_gguf_f32, n_ctx=512, free_vram_bytes=0).label == "CPU only"


def test_no_gpu_means_cpu_only(tiny_gguf_f32: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(planner, "detect_gpu", lambda: None)
    assert plan_offload(tiny_gguf_f32, n_ctx=512).label == "CPU only"


def test_detect_gpu_survives_a_missing_driver():
    gpu = planner.detect_gpu()  # no NVIDIA driver on the test machines: None, not an exception
    assert gpu is None or gpu.total_bytes >= gpu.free_bytes > 0
