"""llama.cpp running the converted GGUF computes what the Hugging Face weights compute.

The reference is tests/qwen2_reference.py: Qwen2 written out in numpy (float64) and run on the
checkpoint's own tensors. The F32 GGUF must agree to float32 rounding; the BF16 GGUF (activations
rounded to bf16 inside llama.cpp's matmuls) must pick the same top token at every position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from tokenizers import Tokenizer

from convert.gguf_convert import convert_checkpoint
from tests.qwen2_reference import forward
from tests.synthetic import DEMO_VOCAB_SIZE, Qwen2Shape, TokenizerKind, build_checkpoint

PROMPTS = [
    "The derivative of $x^2$ is $2x$, so the answer is \\boxed{2x}.",
    "<｜User｜>What is 7 * 8?<｜Assistant｜><think>\nSeven times eight is",
    "数学：设 x² + y² = r²。 emoji 🚀 and code `f(x)`",
]


def llama_logits(model_path: Path, ids: list[int], **kwargs) -> np.ndarray:
    llm = llama_cpp.Llama(
        str(model_path), n_ctx=64, logits_all=True, verbose=False, seed=0, **kwargs
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


# llama.cpp keeps K and V in f16 by default; F32 makes the F32 comparison exact to float32.
F32_CACHE = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}


@pytest.fixture(scope="module")
def prompt_ids(fixture_dir: Path) -> list[list[int]]:
    tokenizer = Tokenizer.from_file(
        str(fixture_dir / "r1-distill-qwen-tokenizer" / "tokenizer.json")
    )
    return [tokenizer.encode(p).ids for p in PROMPTS]


@pytest.fixture(scope="module")
def references(tiny_synthetic, prompt_ids) -> list[np.ndarray]:
    return [forward(tiny_synthetic.weights, tiny_synthetic.shape, ids) for ids in prompt_ids]


def test_f32_gguf_matches_the_reference_to_float32_rounding(
    tiny_gguf_f32: Path, prompt_ids, references
) -> None:
    for ids, reference in zip(prompt_ids, references, strict=True):
        got = llama_logits(tiny_gguf_f32, ids, **F32_CACHE)
        assert got.shape == reference.shape == (len(ids), 152064)
        # Logits span about +-9; float32 accumulation error is ~1e-6.
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4)
        assert np.array_equal(got.argmax(axis=1), reference.argmax(axis=1))


def test_bf16_gguf_predicts_the_same_token_everywhere(
    tiny_gguf_bf16: Path, prompt_ids, references
) -> None:
    for ids, reference in zip(prompt_ids, references, strict=True):
        top2 = np.sort(reference, axis=1)[:, -2:]
        # The synthetic model is built to be decisive; bf16 noise here is ~0.02 at most.
        assert (top2[:, 1] - top2[:, 0]).min() > 0.1, "reference has a near-tie; not a fair test"
        got = llama_logits(tiny_gguf_bf16, ids)
        assert got.argmax(axis=1).tolist() == reference.argmax(axis=1).tolist()
        assert np.abs(got - reference).max() < 0.1


def test_default_f16_kv_cache_stays_close(tiny_gguf_f32: Path, prompt_ids, references) -> None:
    # What the app actually runs: llama.cpp's default cache types.
    got = llama_logits(tiny_gguf_f32, prompt_ids[1])
    assert np.abs(got - references[1]).max() < 0.02
    assert np.array_equal(got.argmax(axis=1), references[1].argmax(axis=1))


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    shape = Qwen2Shape(
        n_layers=2,
        hidden_size=64,
        intermediate_size=96,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=DEMO_VOCAB_SIZE,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    )
    folder = tmp_path_factory.mktemp("tied")
    ckpt = build_checkpoint(
        folder / "ckpt", shape=shape, dtype="F32", tied=True, tokenizer=TokenizerKind.DEMO, seed=7
    )
    yield ckpt, convert_checkpoint(ckpt.path, folder / "tied-f32.gguf", "f32").path


def test_tied_head_f32_source_other_head_layout(tied_model) -> None:
    # Tied embeddings (no output tensor), F32 source weights, 4 query heads per KV head and
    # another rope_theta and epsilon: each must reach llama.cpp intact.
    ckpt, gguf_path = tied_model
    tokenizer = Tokenizer.from_file(str(ckpt.path / "tokenizer.json"))
    ids = tokenizer.encode("The answer is 42. <think>x = -4</think> \\boxed{5050}").ids
    reference = forward(ckpt.weights, ckpt.shape, ids)
    got = llama_logits(gguf_path, ids, **F32_CACHE)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-3 * np.abs(reference).max())
    assert np.array_equal(got.argmax(axis=1), reference.argmax(axis=1))
