"""llama.cpp, reading the converted GGUF, tokenizes exactly as Hugging Face `tokenizers` does."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
from tokenizers import Tokenizer

import convert.vocab
from convert.gguf_convert import convert_checkpoint
from convert.vocab import PreTokenizer

VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"

MATH_AND_MIXED = [
    r"Let $f(x) = \frac{x^2 - 1}{x + 1}$. Then $f(x) = x - 1$ for $x \neq -1$.",
    r"\int_0^{\pi} \sin^2 \theta \, d\theta = \frac{\pi}{2}, so the answer is "
    r"\boxed{\frac{\pi}{2}}.",
    r"$$\sum_{k=1}^{n} k^3 = \left(\frac{n(n+1)}{2}\right)^2$$",
    "Compute 12345 * 6789 = 83810205; 3.14159 ≈ π; 1e-10 < ε ≤ 0.001.",
    r"\begin{align} a &= b + c \\ d &= \sqrt{e^2 + f^2} \end{align}",
    "Matrix [[1, 2], [3, 4]] has det = -2 and trace = 5.\n\n\tIndented\r\nCRLF line",
    "数学：设 x² + y² = r²，求面积。答案是 πr²。 日本語とEnglishの混在 🚀🦙 👩‍👩‍👧",
    "  leading spaces, trailing spaces   ",
    "Ünïcödé àccents, Привет мир, مرحبا, שלום, नमस्ते",
    "```python\ndef f(x):\n    return x ** 2  # square\n```",
]

WITH_SPECIAL_TOKENS = [
    "<think>\nLet me compute 7 * 8.\n</think>\n\nThe answer is \\boxed{56}.",
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>What is 2+2?<｜Assistant｜><think>\n",
    "<｜User｜>Prove it.<｜Assistant｜><think>\nOk.</think>Done.<｜end▁of▁sentence｜>",
    " <think> spaced </think> and<think>glued</think>x",
    "<|EOT|><|fim_prefix|>code<|fim_middle|><|fim_suffix|><tool_call>{}</tool_call>",
]


def llama_cpp_vectors(fixture_dir: Path) -> Iterator[tuple[str, list[int]]]:
    folder = fixture_dir / "tokenizer-vectors"
    inputs = (folder / "qwen2.inp").read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    outputs = (folder / "qwen2.out").read_text(encoding="utf-8").split("\n")
    assert inputs[-1] == "" and outputs[-1] == ""  # each file ends with its separator
    assert len(inputs) == len(outputs) == 47
    for text, ids in zip(inputs[:-1], outputs[:-1], strict=True):
        yield text, [int(i) for i in ids.split()]


def open_vocab(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def hf(fixture_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(
        str(fixture_dir / "r1-distill-qwen-tokenizer" / "tokenizer.json")
    )


@pytest.fixture(scope="module")
def llama(tiny_gguf_bf16: Path) -> Iterator[llama_cpp.Llama]:
    model = open_vocab(tiny_gguf_bf16)
    assert model.metadata["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    yield model
    model.close()


def test_llama_cpp_test_vectors(hf: Tokenizer, llama: llama_cpp.Llama, fixture_dir) -> None:
    mismatches = []
    for text, expected in llama_cpp_vectors(fixture_dir):
        ours = llama.tokenize(text.encode(), add_bos=False, special=False)
        theirs = hf.encode(text, add_special_tokens=False).ids
        if not ours == theirs == expected:
            mismatches.append((text, expected, theirs, ours))
    assert mismatches == []


@pytest.mark.parametrize("text", MATH_AND_MIXED)
def test_math_latex_and_mixed_scripts(hf: Tokenizer, llama: llama_cpp.Llama, text: str) -> None:
    assert llama.tokenize(text.encode(), add_bos=True, special=False) == hf.encode(text).ids


@pytest.mark.parametrize("text", WITH_SPECIAL_TOKENS)
def test_special_and_reasoning_tokens(hf: Tokenizer, llama: llama_cpp.Llama, text: str) -> None:
    ids = hf.encode(text, add_special_tokens=False).ids
    assert llama.tokenize(text.encode(), add_bos=False, special=True) == ids
    # A user typing the marker text must not produce the control token (special=False).
    plain = llama.tokenize(text.encode(), add_bos=False, special=False)
    assert 151644 not in plain and 151646 not in plain


def test_reasoning_tags_stay_visible_when_detokenized(
    hf: Tokenizer, llama: llama_cpp.Llama
) -> None:
    text = "<｜Assistant｜><think>\nFirst, 2+2=4.\n</think>\n\n\\boxed{4}<｜end▁of▁sentence｜>"
    ids = hf.encode(text, add_special_tokens=False).ids
    assert 151648 in ids and 151649 in ids
    shown = llama.detokenize(ids).decode()
    assert shown == "<think>\nFirst, 2+2=4.\n</think>\n\n\\boxed{4}"
    assert shown == hf.decode(ids, skip_special_tokens=True)
    # Token by token, as a streaming UI sees them.
    assert [llama.detokenize([i]).decode() for i in (151648, 151649)] == ["<think>", "</think>"]
    assert llama.detokenize(ids, special=True).decode() == text


def test_bos_and_eos_as_hf_adds_them(hf: Tokenizer, llama: llama_cpp.Llama) -> None:
    assert llama.token_bos() == hf.token_to_id("<｜begin▁of▁sentence｜>") == 151646
    assert llama.token_eos() == hf.token_to_id("<｜end▁of▁sentence｜>") == 151643
    assert llama.tokenize(b"Hi", add_bos=True)[0] == hf.encode("Hi").ids[0] == 151646


def test_non_nfc_input_needs_normalizing_first(hf: Tokenizer, llama: llama_cpp.Llama) -> None:
    """A real gap: tokenizer.json normalizes to NFC, llama.cpp's BPE path does not.

    Decomposed text (macOS file names, some pasted text) then tokenizes differently; NFC-
    normalizing before llama.cpp sees it restores parity. The engine must do that.
    """
    decomposed = "Cafe\u0301 re\u0301sume\u0301, \u212bngstro\u0308m"
    assert unicodedata.normalize("NFC", decomposed) != decomposed
    raw = llama.tokenize(decomposed.encode(), add_bos=False, special=False)
    assert raw != hf.encode(decomposed, add_special_tokens=False).ids
    normalized = unicodedata.normalize("NFC", decomposed).encode()
    assert (
        llama.tokenize(normalized, add_bos=False, special=False)
        == hf.encode(decomposed, add_special_tokens=False).ids
    )


def test_qwen2_and_deepseek_r1_qwen_pre_tokenizers_agree(
    tiny_checkpoint: Path,
    llama: llama_cpp.Llama,
    tmp_path_factory: pytest.TempPathFactory,
    fixture_dir: Path,
) -> None:
    """The same vocabulary under tokenizer.ggml.pre = "qwen2" tokenizes identically.

    llama.cpp (as vendored by llama-cpp-python 0.3.36) maps both names to its QWEN2 split regex,
    so the R1 name costs nothing; this would catch a future llama.cpp giving it another regex.
    """
    out = tmp_path_factory.mktemp("qwen2-pre") / "as-qwen2.gguf"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert.vocab, "identify_pre_tokenizer", lambda _: PreTokenizer.QWEN2)
        assert convert_checkpoint(tiny_checkpoint, out).pre_tokenizer == "qwen2"
    as_qwen2 = open_vocab(out)
    try:
        assert as_qwen2.metadata["tokenizer.ggml.pre"] == "qwen2"
        texts = [t for t, _ in llama_cpp_vectors(fixture_dir)] + MATH_AND_MIXED
        for text in texts:
            assert as_qwen2.tokenize(text.encode(), special=False) == llama.tokenize(
                text.encode(), special=False
            ), text
        for text in WITH_SPECIAL_TOKENS:
            assert as_qwen2.tokenize(text.encode(), special=True) == llama.tokenize(
                text.encode(), special=True
            ), text
    finally:
        as_qwen2.close()
