"""The GGUF's chat template, as llama-cpp-python renders it, gives the prompt tokens HF would.

HF side: the fixture's tokenizer_config.json template rendered the way transformers does
(sandboxed jinja2, trim_blocks, lstrip_blocks) and encoded by `tokenizers` without extra specials.
llama.cpp side: the template and BOS/EOS text read back from the converted GGUF, rendered by
llama-cpp-python's Jinja2ChatFormatter and tokenized as its chat handler does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jinja2
import jinja2.sandbox
import llama_cpp
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from tokenizers import Tokenizer

CONVERSATIONS = {
    "one-question": [{"role": "user", "content": "What is $\\int_0^1 x^2\\,dx$?"}],
    "system-prompt": [
        {"role": "system", "content": "Reason step by step; put the answer in \\boxed{}."},
        {"role": "user", "content": "Solve 3x + 5 = 20."},
    ],
    "follow-up": [
        {"role": "user", "content": "2 + 2?"},
        # The template drops the reasoning of earlier turns; both sides must agree on that.
        {"role": "assistant", "content": "<think>\nTrivial.\n</think>\n\n\\boxed{4}"},
        {"role": "user", "content": "And 数学 × 3? 🚀"},
    ],
}
VARIANTS = {
    # fixture config, GGUF fixture, how the prompt must end
    "current": ("tokenizer_config.json", "tiny_gguf_bf16", [151645, 151648, 198]),
    "legacy": ("tokenizer_config.legacy-template.json", "tiny_gguf_legacy", [151645]),
}


@pytest.fixture(scope="module")
def hf_tokenizer(fixture_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(fixture_dir / "r1-distill-qwen-tokenizer" / "tokenizer.json"))


@pytest.fixture(scope="module")
def vocab_models() -> Iterator[dict[Path, llama_cpp.Llama]]:
    opened: dict[Path, llama_cpp.Llama] = {}
    yield opened
    for llm in opened.values():
        llm.close()


def hf_prompt_ids(
    tokenizer: Tokenizer, fixture_dir: Path, config_name: str, messages: list[dict]
) -> list[int]:
    folder = fixture_dir / "r1-distill-qwen-tokenizer"
    config = json.loads((folder / config_name).read_text(encoding="utf-8"))
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(config["chat_template"]).render(
        messages=messages,
        bos_token=config["bos_token"]["content"],
        eos_token=config["eos_token"]["content"],
        add_generation_prompt=True,
    )
    return tokenizer.encode(text, add_special_tokens=False).ids


def llama_prompt_ids(llm: llama_cpp.Llama, messages: list[dict]) -> list[int]:
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
    )
    result = formatter(messages=messages)
    return llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_prompt_tokens_match(
    request: pytest.FixtureRequest,
    fixture_dir: Path,
    hf_tokenizer: Tokenizer,
    vocab_models: dict[Path, llama_cpp.Llama],
    variant: str,
    conversation: str,
) -> None:
    config_name, gguf_fixture, ending = VARIANTS[variant]
    messages = CONVERSATIONS[conversation]
    gguf_path = request.getfixturevalue(gguf_fixture)
    if gguf_path not in vocab_models:
        vocab_models[gguf_path] = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    expected = hf_prompt_ids(hf_tokenizer, fixture_dir, config_name, messages)
    got = llama_prompt_ids(vocab_models[gguf_path], messages)
    assert got == expected
    assert got[0] == 151646 and got.count(151646) == 1  # one BOS, from the template
    assert got[-len(ending) :] == ending
    if conversation == "follow-up":
        assert 151649 not in got  # earlier reasoning stripped: no </think> in the prompt


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[Path, object]]:
    opened: dict[Path, object] = {}
    yield opened
    for engine in opened.values():
        engine.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_prompt_tokens_match(
    request: pytest.FixtureRequest,
    fixture_dir: Path,
    hf_tokenizer: Tokenizer,
    engines: dict[Path, object],
    variant: str,
    conversation: str,
) -> None:
    """The engine's own prompt (markup's control tokens, messages as text) is HF's prompt."""
    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import ChatMessage, LoadOptions

    config_name, gguf_fixture, _ = VARIANTS[variant]
    gguf_path = request.getfixturevalue(gguf_fixture)
    if gguf_path not in engines:
        engine = LlamaEngine()
        engine.load(LoadOptions(gguf_path, n_ctx=256, n_gpu_layers=0))
        engines[gguf_path] = engine
    messages = CONVERSATIONS[conversation]
    expected = hf_prompt_ids(hf_tokenizer, fixture_dir, config_name, messages)
    chat = [ChatMessage(m["role"], m["content"]) for m in messages]
    assert engines[gguf_path].prompt_tokens(chat) == expected  # type: ignore[attr-defined]
