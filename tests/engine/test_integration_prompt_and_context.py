"""Engine integration: prompts are NFC-normalized; the context never exceeds the trained one."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import llama_cpp
import pytest

from fathom_desktop.engine import LlamaEngine
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.types import FATHOM_N_CTX, ChatMessage, LoadOptions, SamplingParams
from tests.engine.conftest import SMALL_CTX

COMPOSED = "Caf\u00e9 r\u00e9sum\u00e9: is \u00c5ngstr\u00f6m a unit?"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


@pytest.fixture(scope="module")
def vocab(tiny_gguf_f32: Path):
    """The same GGUF's tokenizer, used bare: what llama.cpp does without the engine's help."""
    llama = llama_cpp.Llama(str(tiny_gguf_f32), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def test_the_fixture_text_really_tokenizes_differently_unnormalized(vocab):
    assert DECOMPOSED != COMPOSED
    raw = vocab.tokenize(DECOMPOSED.encode(), add_bos=False, special=False)
    assert raw != vocab.tokenize(COMPOSED.encode(), add_bos=False, special=False)


def test_a_decomposed_prompt_gives_the_same_tokens_as_the_composed_one(engine):
    composed = [ChatMessage("user", COMPOSED)]
    decomposed = [ChatMessage("user", DECOMPOSED)]
    assert engine.prompt_tokens(decomposed) == engine.prompt_tokens(composed)
    assert COMPOSED in engine.render_prompt(decomposed)
    assert engine.count_tokens(DECOMPOSED) == engine.count_tokens(COMPOSED)


def test_decomposed_history_and_system_prompt_are_normalized_too(engine):
    def chat(text: str) -> list[ChatMessage]:
        return [
            ChatMessage("system", text),
            ChatMessage("user", text),
            ChatMessage("assistant", text),
            ChatMessage("user", "And then?"),
        ]

    assert engine.prompt_tokens(chat(DECOMPOSED)) == engine.prompt_tokens(chat(COMPOSED))


def test_a_decomposed_prompt_generates_what_the_composed_one_does(engine):
    sampling = SamplingParams(temperature=0.0, max_tokens=8, seed=3)

    def reply(text: str) -> str:
        *_, finished = engine.generate([ChatMessage("user", text)], sampling)
        return finished.reasoning + finished.answer

    assert reply(DECOMPOSED) == reply(COMPOSED)


def test_the_tiny_fixture_is_trained_for_less_than_the_app_default(tiny_gguf_f32: Path):
    # The premise of the capping tests below (the demo model is trained for 4,096 too).
    assert check_model_file(tiny_gguf_f32).n_ctx_train == 4096 < FATHOM_N_CTX


def test_the_default_context_is_capped_at_what_the_model_was_trained_for(tiny_gguf_f32: Path):
    engine = LlamaEngine()
    try:
        report = engine.load(LoadOptions(tiny_gguf_f32))  # the app's default, 16,384
        assert report.n_ctx == 4096
        assert report.notes[0] == (
            "Context capped at 4,096 tokens, the most this model was trained for."
        )
        # The capped window is really usable: a reply runs at the far end of it.
        prompt = [ChatMessage("user", "word " * 3500)]
        *_, finished = engine.generate(prompt, SamplingParams(max_tokens=4, seed=1))
        assert finished.stats.prompt_tokens > 3500
        assert finished.stats.reasoning_tokens + finished.stats.answer_tokens == 4
    finally:
        engine.close()


def test_a_context_within_the_trained_length_is_kept_without_a_note(tiny_gguf_f32: Path):
    engine = LlamaEngine()
    try:
        for n_ctx in (SMALL_CTX, 4096):
            report = engine.load(LoadOptions(tiny_gguf_f32, n_ctx=n_ctx))
            assert report.n_ctx == n_ctx
            assert not any("capped" in note for note in report.notes)
    finally:
        engine.close()
