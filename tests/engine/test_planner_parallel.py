"""The planner's choice of how many consensus samples decode at once, from memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fathom_desktop.engine.gguf_check import ModelFileInfo
from fathom_desktop.engine.planner import (
    MAX_PARALLEL,
    SAFE_FRACTION,
    choose_parallel,
    sequence_memory,
)

GIB = 2**30
KV_PER_TOKEN_F16 = 48 * 2 * 8 * 128 * 2  # Fathom-R1-14B: 48 blocks, 8 KV heads of 128, f16


@pytest.fixture(scope="module")
def fathom(fixture_dir: Path) -> ModelFileInfo:
    config = json.loads((fixture_dir / "fathom-r1-14b" / "config.json").read_text("utf-8"))
    return ModelFileInfo(
        path=Path("Fathom-R1-14B-Q4_K_M.gguf"),
        arch="qwen2",
        name="Fathom-R1-14B",
        file_type="Q4_K_M",
        n_layers=config["num_hidden_layers"],
        n_ctx_train=config["max_position_embeddings"],
        size_bytes=9 * 10**9,
        chat_template="",
        n_embd=config["hidden_size"],
        n_ff=config["intermediate_size"],
        n_head=config["num_attention_heads"],
        n_head_kv=config["num_key_value_heads"],
        head_dim=config["hidden_size"] // config["num_attention_heads"],
        n_vocab=config["vocab_size"],
        tensors=(),
    )


def plan(info, *, kv="f16", gpu_layers=49, k=8, cap=None, vram=None, host=None, reply=16_000):  # noqa: ANN001
    return choose_parallel(
        lambda cells: sequence_memory(
            info, kv_cache_type=kv, n_gpu_layers=gpu_layers, flash_attn=True, n_cells=cells
        ),
        k=k,
        cap=cap,
        prompt_tokens=300,
        reply_cells=reply,
        free_vram_bytes=vram,
        free_host_bytes=host,
    )


def test_kv_per_position_is_fathoms(fathom: ModelFileInfo):
    all_gpu = sequence_memory(
        fathom, kv_cache_type="f16", n_gpu_layers=49, flash_attn=True, n_cells=1
    )
    assert all_gpu.kv_bytes_per_cell_gpu == KV_PER_TOKEN_F16 and all_gpu.kv_bytes_per_cell_host == 0
    # 25 offloaded layers = the output layer and the last 24 blocks: half the cache on each side.
    half = sequence_memory(fathom, kv_cache_type="f16", n_gpu_layers=25, flash_attn=True, n_cells=1)
    assert half.kv_bytes_per_cell_gpu == half.kv_bytes_per_cell_host == KV_PER_TOKEN_F16 // 2


def test_the_largest_p_that_fits_the_free_vram(fathom: ModelFileInfo):
    # A 24 GB card with the Q4_K_M model loaded leaves about 11 GiB; a 16k reply is 2.9 GiB of KV.
    chosen = plan(fathom, vram=11 * GIB)
    p = chosen.parallel
    # Each sample's KV stream holds the prompt and its reply, rounded up to 256 cells.
    stream = 16_384  # 300 + 16,000
    need = [n * stream * KV_PER_TOKEN_F16 for n in (p, p + 1)]
    assert need[0] < 11 * GIB * SAFE_FRACTION < need[1]
    assert p == 3
    assert chosen.reason.startswith("3 at once (4 would need") and "GiB of VRAM" in chosen.reason
    # A q8_0 cache is 34/64 of f16: nearly twice the samples in the same memory.
    assert plan(fathom, kv="q8_0", vram=11 * GIB).parallel == 6
    # Shorter replies (--max-tokens) leave room for more.
    assert plan(fathom, vram=11 * GIB, reply=4_000).parallel == 8


def test_k_and_the_users_cap_bound_p(fathom: ModelFileInfo):
    roomy = plan(fathom, vram=200 * GIB, host=500 * GIB, reply=1000)
    assert roomy.parallel == 8 and "all 8 samples" in roomy.reason
    capped = plan(fathom, vram=200 * GIB, cap=2, reply=1000)
    assert capped.parallel == 2 and "capped at 2" in capped.reason
    many = plan(fathom, k=64, vram=None, host=None, reply=100)
    assert many.parallel == MAX_PARALLEL


def test_cpu_only_plans_against_ram_and_one_sample_when_nothing_fits(fathom: ModelFileInfo):
    cpu = plan(fathom, gpu_layers=0, vram=None, host=8 * GIB)
    assert cpu.parallel == 2 and "GiB of RAM" in cpu.reason
    tight = plan(fathom, vram=2 * GIB)
    assert tight.parallel == 1 and tight.kv_bytes == 0
    assert tight.reason.startswith("one after another (2 would need")
