"""Write tiny random-weight Qwen2 GGUFs with the real R1 tokenizer, straight from gguf.GGUFWriter.

The converter's session fixtures (tests/conftest.py) are the main source of tiny models; this
writer covers what they do not: other architectures, odd tensors, and bench models of a chosen
width. It needs nothing but gguf and numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "r1-distill-qwen-tokenizer"
ORDINARY_TOKENS = 151643  # byte-level BPE tokens; R1's added tokens follow
VOCAB_SIZE = 152064  # Fathom's config.json: padded beyond the tokenizer's 151,665 tokens


@dataclass(frozen=True)
class TinyShape:
    n_embd: int = 64
    n_ff: int = 128
    n_layers: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ctx_train: int = 16384


def _vocab() -> tuple[list[str], list[int], list[str], int, int]:
    data = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = [f"[PAD{i}]" for i in range(VOCAB_SIZE)]
    types = [gguf.TokenType.UNUSED] * VOCAB_SIZE
    for text, token_id in data["model"]["vocab"].items():
        tokens[token_id] = text
        types[token_id] = gguf.TokenType.NORMAL
    special_ids: dict[str, int] = {}
    for added in data["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = (
            gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        )
        special_ids[added["content"]] = added["id"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    bos = special_ids["<｜begin▁of▁sentence｜>"]
    eos = special_ids["<｜end▁of▁sentence｜>"]
    return tokens, [int(t) for t in types], merges, bos, eos


def chat_template(legacy: bool) -> str:
    name = "tokenizer_config.legacy-template.json" if legacy else "tokenizer_config.json"
    config = json.loads((TOKENIZER_DIR / name).read_text(encoding="utf-8"))
    return config["chat_template"]


def write_tiny_qwen2(
    path: Path,
    *,
    shape: TinyShape = TinyShape(),
    legacy_template: bool = False,
    architecture: str = "qwen2",
    seed: int = 0,
    embedding_dtype: type = np.float32,
    with_tokenizer: bool = True,
    template_source: str | None = None,
    embedding: np.ndarray | None = None,
    output: np.ndarray | None = None,
) -> Path:
    """A random-weight Qwen2 model llama.cpp can load; `architecture` lets tests lie about it.

    `template_source` replaces the R1 chat template.
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), architecture)
    head_dim = shape.n_embd // shape.n_head
    writer.add_name("tiny-qwen2-test")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if with_tokenizer:
        tokens, types, merges, bos, eos = _vocab()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("deepseek-r1-qwen")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(bos)
        writer.add_eos_token_id(eos)
        writer.add_pad_token_id(eos)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(template_source or chat_template(legacy_template))

    def weight(rows: int, cols: int, dtype: type = np.float32) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(dtype)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    kv_width = shape.n_head_kv * head_dim
    if embedding is None:
        embedding = weight(VOCAB_SIZE, shape.n_embd, embedding_dtype)
    writer.add_tensor("token_embd.weight", embedding)
    for layer in range(shape.n_layers):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", ones(shape.n_embd))
        writer.add_tensor(prefix + "attn_q.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(prefix + "attn_q.bias", zeros(shape.n_embd))
        writer.add_tensor(prefix + "attn_k.weight", weight(kv_width, shape.n_embd))
        writer.add_tensor(prefix + "attn_k.bias", zeros(kv_width))
        writer.add_tensor(prefix + "attn_v.weight", weight(kv_width, shape.n_embd))
        writer.add_tensor(prefix + "attn_v.bias", zeros(kv_width))
        writer.add_tensor(prefix + "attn_output.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(prefix + "ffn_norm.weight", ones(shape.n_embd))
        writer.add_tensor(prefix + "ffn_gate.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(prefix + "ffn_up.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(prefix + "ffn_down.weight", weight(shape.n_embd, shape.n_ff))
    writer.add_tensor("output_norm.weight", ones(shape.n_embd))
    if output is None:
        output = weight(VOCAB_SIZE, shape.n_embd, embedding_dtype)
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def successor_qwen2(path: Path, *, shape: TinyShape = TinyShape(n_embd=128), seed: int = 0) -> Path:
    """A Qwen2 whose greedy choice is never a near-tie: after token t it says successor(t).

    The output row of successor(t) is the embedding of t, scaled: with random 128-wide
    embeddings, a vector's product with itself (~128) stands far above its product with any of
    the other 151k (at most ~55), and the small random blocks only nudge the residual stream.
    The successor is a random permutation of the ordinary tokens, so the model never ends its
    turn, never writes a special token, and different prompts give different replies.
    """
    rng = np.random.default_rng(seed + 1)
    embedding = np.zeros((VOCAB_SIZE, shape.n_embd), dtype=np.float32)
    embedding[:ORDINARY_TOKENS] = rng.standard_normal((ORDINARY_TOKENS, shape.n_embd))
    successor = rng.permutation(ORDINARY_TOKENS)
    output = np.zeros_like(embedding)
    output[successor] = embedding[:ORDINARY_TOKENS] * 0.5
    return write_tiny_qwen2(path, shape=shape, seed=seed, embedding=embedding, output=output)


def small_qwen2(
    path: Path,
    *,
    chat_template: bool | str = True,
    tokenizer: bool = True,
    drop: str | None = None,
    n_layers: int = 2,
    architecture: str = "qwen2",
    claims: dict[str, int] | None = None,
) -> Path:
    """A structurally complete Qwen2 GGUF with a 16-token vocabulary and mixed tensor types.

    `chat_template` may be the template's source; `claims` overrides hyper-parameters in the
    metadata ("block_count", "context_length", "embedding_length", "attention.head_count",
    "attention.head_count_kv") without changing the tensors.
    """
    n_embd, n_ff, n_vocab, n_head, n_kv = 32, 64, 16, 2, 1
    kv = n_kv * n_embd // n_head
    writer = gguf.GGUFWriter(str(path), architecture)
    metadata = {
        "block_count": n_layers,
        "context_length": 256,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_kv,
        **(claims or {}),
    }
    for key, value in metadata.items():
        writer.add_uint32(f"{architecture}.{key}", value)
    writer.add_layer_norm_rms_eps(1e-6)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"t{i}" for i in range(n_vocab)])
        writer.add_eos_token_id(1)
    if chat_template:
        writer.add_chat_template(
            chat_template if isinstance(chat_template, str) else "{{ messages }}"
        )
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    for i in range(n_layers):
        shapes.update(
            {
                f"blk.{i}.attn_norm.weight": (n_embd,),
                f"blk.{i}.ffn_norm.weight": (n_embd,),
                f"blk.{i}.attn_q.weight": (n_embd, n_embd),
                f"blk.{i}.attn_q.bias": (n_embd,),
                f"blk.{i}.attn_k.weight": (kv, n_embd),
                f"blk.{i}.attn_k.bias": (kv,),
                f"blk.{i}.attn_v.weight": (kv, n_embd),
                f"blk.{i}.attn_v.bias": (kv,),
                f"blk.{i}.attn_output.weight": (n_embd, n_embd),
                f"blk.{i}.ffn_gate.weight": (n_ff, n_embd),
                f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
                f"blk.{i}.ffn_down.weight": (n_embd, n_ff),
            }
        )
    for index, (name, shape) in enumerate(shapes.items()):
        if name == drop:
            continue
        data = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 2 and index % 3 == 1:
            writer.add_tensor(
                name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        elif len(shape) == 2 and index % 3 == 2:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
