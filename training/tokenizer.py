"""Trains fathom-tiny's small byte-level BPE: Qwen2's pre-tokenizer, R1's added tokens, ~1k entries.

The shared R1 tokenizer has 152,064 rows; at hidden size 192 its embedding and output matrices alone
would be 2 x 152,064 x 192 x 2 bytes = 117 MB in bf16, far past the 8 MB budget. A vocabulary
trained on the corpus keeps every structural property the app and the converter rely on (NFC, the
Qwen2 split regex that puts every digit in a token of its own, ByteLevel bytes, the same added
tokens with the same special / non-special flags, BOS prepended) at 1,024 rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre
from tokenizers.trainers import BpeTrainer

from training.chat_format import BOS, EOS

# Qwen2's pre-tokenizer pattern, exactly as in the R1 tokenizer.json (and llama.cpp's
# deepseek-r1-qwen pre-tokenizer): contractions, letter runs, single digits, punctuation runs.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# R1's 22 added tokens in their order; (content, special). <think>, </think> and the tool-call tags
# are not special: they must survive detokenization as text.
R1_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (EOS, True),
    ("<｜User｜>", True),
    ("<｜Assistant｜>", True),
    (BOS, True),
    ("<|EOT|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
)

VOCAB_SIZE = 1024  # base BPE entries + the added tokens; a multiple of 64 so no padding rows


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(R1_ADDED_TOKENS),
        min_frequency=2,
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    base = tok.get_vocab_size()
    # Added one by one so that they keep R1's relative order after the base vocabulary.
    for content, special in R1_ADDED_TOKENS:
        token = AddedToken(content, normalized=not special, special=special)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0",
        pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    if tok.get_vocab_size() != base + len(R1_ADDED_TOKENS):
        raise RuntimeError("an added token collided with a learned one")
    return tok


def tokenizer_config(template_source: Path) -> dict:
    """R1's tokenizer_config.json (chat template, BOS/EOS names) with our context length."""
    config = json.loads(template_source.read_text(encoding="utf-8"))
    config["model_max_length"] = 4096
    return config
