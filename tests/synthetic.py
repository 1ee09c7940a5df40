"""Synthetic Hugging Face Qwen2 checkpoints for tests and benchmarks, written without torch.

The safetensors files are written by hand (8-byte header length, JSON header, raw bytes) with the
project's one writer, training/safetensors_io.py, so the tests exercise the converter's reader
against the format itself rather than against a library that shares its assumptions. Weights are
random but deterministic; the float32 values of what was stored are kept so that a reference
forward pass can run on exactly the checkpoint's numbers.
"""

from __future__ import annotations

import enum
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.safetensors_io import bf16_bits_to_float32 as bf16_to_f32
from training.safetensors_io import float32_to_bf16_bits as bf16_bits

# Re-exported for the tests and bench scripts that build files by hand.
from training.safetensors_io import safetensors_header as safetensors_header
from training.safetensors_io import write_safetensors

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "r1-distill-qwen-tokenizer"
FATHOM_CONFIG = FIXTURES / "fathom-r1-14b" / "config.json"

# Ids below this are the fixture tokenizer's byte-level BPE tokens; special tokens follow.
ORDINARY_TOKENS = 151643
# Storage of each safetensors dtype (bf16 travels as its raw uint16 bits).
STORAGE = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


class ChatTemplate(enum.Enum):
    """Which of the two R1 tokenizer_config.json variants a checkpoint ships."""

    CURRENT = "tokenizer_config.json"  # prompt ends "<｜Assistant｜><think>\n"
    LEGACY = "tokenizer_config.legacy-template.json"  # prompt ends "<｜Assistant｜>"


@dataclass(frozen=True)
class Qwen2Shape:
    n_layers: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    # The fixture tokenizer has 151,665 tokens; the real config pads the embedding to 152,064.
    vocab_size: int = 152064
    context_length: int = 4096
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


FATHOM_WIDTH = Qwen2Shape(
    n_layers=48,
    hidden_size=5120,
    intermediate_size=13824,
    n_heads=40,
    n_kv_heads=8,
    vocab_size=152064,
    context_length=131072,
    rope_theta=1000000.0,
    rms_norm_eps=1e-5,
)


@dataclass(frozen=True)
class SyntheticCheckpoint:
    path: Path
    config: dict[str, Any]
    dtype: str
    # Every tensor's values as float32, exactly as stored (bf16/f16 widened without rounding).
    weights: dict[str, np.ndarray] = field(repr=False)
    files: tuple[Path, ...] = ()

    @property
    def shape(self) -> Qwen2Shape:
        c = self.config
        return Qwen2Shape(
            n_layers=c["num_hidden_layers"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            n_heads=c["num_attention_heads"],
            n_kv_heads=c["num_key_value_heads"],
            vocab_size=c["vocab_size"],
            context_length=c["max_position_embeddings"],
            rope_theta=c["rope_theta"],
            rms_norm_eps=c["rms_norm_eps"],
        )


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the array whose bytes a safetensors file of `dtype` stores."""
    if dtype == "BF16":
        return bf16_bits(values)
    return np.ascontiguousarray(values, dtype=STORAGE[dtype])


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_to_f32(stored)
    return stored.astype(np.float32)


def qwen2_config(shape: Qwen2Shape, *, tied: bool, dtype: str) -> dict[str, Any]:
    config = json.loads(FATHOM_CONFIG.read_text())
    config.update(
        num_hidden_layers=shape.n_layers,
        max_window_layers=shape.n_layers,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.context_length,
        sliding_window=shape.context_length,
        rope_theta=shape.rope_theta,
        rms_norm_eps=shape.rms_norm_eps,
        tie_word_embeddings=tied,
        torch_dtype={"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
    )
    return config


def random_weights(
    shape: Qwen2Shape, *, tied: bool, seed: int, ordinary_tokens: int = 151643
) -> dict[str, np.ndarray]:
    """float32 weights of a Qwen2ForCausalLM, in HF names and checkpoint order.

    Random, but shaped like a confident model so that parity tests have decisive predictions: the
    blocks add about a third of the embedding's norm to the residual stream (they change every
    logit, yet the input token stays recognisable), and the LM head row of token j is the
    embedding of token succ^-1(j) plus noise, for a fixed random permutation `succ` of the
    ordinary tokens. So after token t the model predicts succ(t) with a wide margin, never a
    special or padding token, and a greedy generation walks through varied ordinary tokens.
    With a tied head, the model predicts the token it just read.
    """
    rng = np.random.default_rng(seed)
    h, f, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.n_heads * hd, shape.n_kv_heads * hd
    block_gain = 0.2

    def normal(*dims: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * scale).astype(np.float32)

    embed = normal(shape.vocab_size, h, scale=1.0)
    weights = {"model.embed_tokens.weight": embed}
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = 1.0 + normal(h, scale=0.1)
        weights[p + "self_attn.q_proj.weight"] = normal(q, h, scale=h**-0.5)
        weights[p + "self_attn.q_proj.bias"] = normal(q, scale=0.5)
        weights[p + "self_attn.k_proj.weight"] = normal(kv, h, scale=h**-0.5)
        weights[p + "self_attn.k_proj.bias"] = normal(kv, scale=0.5)
        weights[p + "self_attn.v_proj.weight"] = normal(kv, h, scale=h**-0.5)
        weights[p + "self_attn.v_proj.bias"] = normal(kv, scale=0.1)
        weights[p + "self_attn.o_proj.weight"] = normal(h, q, scale=block_gain * q**-0.5)
        weights[p + "post_attention_layernorm.weight"] = 1.0 + normal(h, scale=0.1)
        weights[p + "mlp.gate_proj.weight"] = normal(f, h, scale=h**-0.5)
        weights[p + "mlp.up_proj.weight"] = normal(f, h, scale=h**-0.5)
        weights[p + "mlp.down_proj.weight"] = normal(h, f, scale=block_gain * f**-0.5)
    weights["model.norm.weight"] = 1.0 + normal(h, scale=0.1)
    if not tied:
        ordinary = min(ordinary_tokens, shape.vocab_size)
        head = normal(shape.vocab_size, h, scale=0.05 * h**-0.5)
        successor = rng.permutation(ordinary)
        head[successor] += embed[:ordinary] * h**-0.5
        weights["lm_head.weight"] = head
    return weights


class TokenizerKind(enum.Enum):
    FIXTURE = "fixture"  # the real R1-distill tokenizer: 151,665 tokens, realistic, slow to pack
    DEMO = "demo"  # a 400-token BPE trained here: same pre-tokenizer and specials, instant


def build_checkpoint(
    out_dir: Path,
    *,
    dtype: str = "BF16",
    shards: int = 1,
    tied: bool = False,
    template: ChatTemplate = ChatTemplate.CURRENT,
    shape: Qwen2Shape = Qwen2Shape(),  # noqa: B008 -- frozen dataclass, safe as a default
    seed: int = 0,
    tokenizer: TokenizerKind = TokenizerKind.FIXTURE,
) -> SyntheticCheckpoint:
    """A complete checkpoint folder: config.json, tokenizer files, and 1 or more shards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = qwen2_config(shape, tied=tied, dtype=dtype)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(TOKENIZER_DIR / template.value, out_dir / "tokenizer_config.json")
    if tokenizer is TokenizerKind.FIXTURE:
        shutil.copyfile(TOKENIZER_DIR / "tokenizer.json", out_dir / "tokenizer.json")
        ordinary = ORDINARY_TOKENS
    else:
        demo = demo_tokenizer()
        (out_dir / "tokenizer.json").write_text(json.dumps(demo, ensure_ascii=False))
        ordinary = len(demo["model"]["vocab"])

    raw = random_weights(shape, tied=tied, seed=seed, ordinary_tokens=ordinary)
    stored = {name: encode(w, dtype) for name, w in raw.items()}
    weights = {name: decode(arr, dtype) for name, arr in stored.items()}
    files = write_shards(out_dir, {name: (dtype, arr) for name, arr in stored.items()}, shards)
    return SyntheticCheckpoint(out_dir, config, dtype, weights, tuple(files))


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def write_shards(
    out_dir: Path, tensors: Mapping[str, tuple[str, np.ndarray]], shards: int
) -> list[Path]:
    """Write one model.safetensors, or `shards` files plus model.safetensors.index.json."""
    if shards == 1:
        path = out_dir / "model.safetensors"
        write_safetensors(path, tensors)
        return [path]
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    weight_map: dict[str, str] = {}
    paths = []
    for i, group in enumerate(groups, start=1):
        path = out_dir / shard_name(i, shards)
        write_safetensors(path, {name: tensors[name] for name in group})
        weight_map.update(dict.fromkeys(group, path.name))
        paths.append(path)
    total = sum(arr.nbytes for _, arr in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


# --- A small byte-level BPE trained here ------------------------------------------------------
# The shape of a project-trained demo tokenizer: Qwen2's pre-tokenizer and the R1 special tokens
# around a vocabulary small enough that a GGUF's metadata is written and read back in no time.

DEMO_MERGES = 144
DEMO_CORPUS = (
    "The answer is 42. Let me think about the problem step by step. "
    "We have x^2 + 3x - 4 = 0, so (x + 4)(x - 1) = 0 and x = 1 or x = -4. "
    "Therefore the final answer is \\boxed{1}. The integral of sin x is -cos x + C. "
    "Hello world! This is the reasoning of a small model that thinks before it answers. "
    "Then the sum of the first n integers is n(n + 1)/2, which for n = 100 gives 5050."
)
DEMO_SPECIALS = (  # (content, special): the fixture's R1 set, in the fixture's order
    ("<｜end▁of▁sentence｜>", True),
    ("<｜User｜>", True),
    ("<｜Assistant｜>", True),
    ("<｜begin▁of▁sentence｜>", True),
    ("<|EOT|>", True),
    ("<think>", False),
    ("</think>", False),
)
DEMO_VOCAB_SIZE = 512  # the embedding is padded past the tokenizer, as in the real model


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def demo_tokenizer() -> dict[str, Any]:
    """tokenizer.json of a byte-level BPE trained on DEMO_CORPUS with the R1 special tokens."""
    import re

    alphabet = byte_alphabet()
    words: dict[tuple[str, ...], int] = {}
    # A coarse stand-in for Qwen2's split (letters with an optional leading space, digits singly,
    # punctuation runs); the merges only need to be plausible, not optimal.
    for piece in re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^A-Za-z0-9\s]+|\s+", DEMO_CORPUS):
        word = tuple(alphabet[b] for b in piece.encode("utf-8"))
        words[word] = words.get(word, 0) + 1
    vocab = {alphabet[b]: i for i, b in enumerate(sorted(alphabet))}
    merges: list[list[str]] = []
    while len(merges) < DEMO_MERGES:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(list(best))
        vocab.setdefault(best[0] + best[1], len(vocab))
        words = {_merge(word, best): count for word, count in words.items()}
    fixture = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    added = [
        {
            "id": len(vocab) + i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": not special,
            "special": special,
        }
        for i, (content, special) in enumerate(DEMO_SPECIALS)
    ]
    bos = "<｜begin▁of▁sentence｜>"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": fixture["normalizer"],
        "pre_tokenizer": fixture["pre_tokenizer"],
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [added[3]["id"]], "tokens": [bos]}},
        },
        "decoder": fixture["decoder"],
        # The newer [left, right] spelling of merges, where the fixture uses "left right".
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
