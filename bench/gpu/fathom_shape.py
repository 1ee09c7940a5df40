"""A stand-in for Fathom-R1-14B on a GPU machine that cannot download it.

Writes a GGUF with the model's exact tensor shapes (read from Fathom-R1-14B's config.json in
tests/fixtures) and random quantized weights laid out as llama.cpp's Q4_K_M mix lays them out
(Q6_K for the output matrix, the value projections and every other FFN down projection, Q4_K for
the rest), about 9 GB for all 48 blocks. Tokens/s, prefill speed and VRAM use do not depend on
the weights' values, so this measures what a user's card does with the real Q4_K_M file.

    python3 bench/gpu/fathom_shape.py OUT.gguf [--blocks 48]

The tokenizer is the real R1-distill one (tests/fixtures), written by the converter's own code,
so prompts tokenize exactly as they do for Fathom-R1-14B.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from convert.vocab import add_vocab_to_gguf, load_vocab  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CONFIG = FIXTURES / "fathom-r1-14b" / "config.json"
TOKENIZER = FIXTURES / "r1-distill-qwen-tokenizer"
Q4_K = gguf.GGMLQuantizationType.Q4_K
Q6_K = gguf.GGMLQuantizationType.Q6_K
# A small, finite fp16 block scale: random scale bytes can decode to NaN or Inf, which would
# make llama.cpp's kernels take slow paths (or produce NaN logits) that the real model never hits.
SCALE = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)


class RandomBlocks:
    """Quantized tensors cut from one pool of random bytes, with every block scale made sane."""

    def __init__(self, pool_bytes: int, seed: int = 0) -> None:
        self._pool = np.random.default_rng(seed).integers(0, 256, pool_bytes, dtype=np.uint8)

    def tensor(self, rows: int, cols: int, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block_elems
        blocks = self._pool[: n_blocks * block_bytes].reshape(n_blocks, block_bytes).copy()
        if qtype == Q4_K:  # block_q4_K starts with d and dmin
            blocks[:, 0:2] = SCALE
            blocks[:, 2:4] = SCALE
        else:  # block_q6_K ends with d
            blocks[:, -2:] = SCALE
        return blocks.reshape(rows, cols // block_elems * block_bytes)


def write_stand_in(out: Path, blocks: int | None = None) -> None:
    config = json.loads(CONFIG.read_text("utf-8"))
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    vocab, kv_width = config["vocab_size"], config["num_key_value_heads"] * hidden // heads
    n_blocks = blocks or config["num_hidden_layers"]

    writer = gguf.GGUFWriter(out, "qwen2")
    writer.add_name("Fathom-R1-14B shape stand-in (random weights)")
    writer.add_block_count(n_blocks)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    add_vocab_to_gguf(writer, load_vocab(TOKENIZER, vocab, config))

    # Every tensor is a prefix of one pool as large as the largest (the Q6_K output matrix).
    q6_elems, q6_bytes = gguf.GGML_QUANT_SIZES[Q6_K]
    weights = RandomBlocks(pool_bytes=vocab * hidden // q6_elems * q6_bytes)

    def norm(name: str, width: int) -> None:
        writer.add_tensor(name, np.ones(width, dtype=np.float32))

    def bias(name: str, width: int) -> None:
        writer.add_tensor(name, np.zeros(width, dtype=np.float32))

    def matrix(name: str, rows: int, cols: int, qtype: gguf.GGMLQuantizationType) -> None:
        writer.add_tensor(name, weights.tensor(rows, cols, qtype), raw_dtype=qtype)

    matrix("token_embd.weight", vocab, hidden, Q4_K)
    norm("output_norm.weight", hidden)
    matrix("output.weight", vocab, hidden, Q6_K)
    for i in range(n_blocks):
        block = f"blk.{i}."
        norm(block + "attn_norm.weight", hidden)
        norm(block + "ffn_norm.weight", hidden)
        matrix(block + "attn_q.weight", hidden, hidden, Q4_K)
        bias(block + "attn_q.bias", hidden)
        matrix(block + "attn_k.weight", kv_width, hidden, Q4_K)
        bias(block + "attn_k.bias", kv_width)
        matrix(block + "attn_v.weight", kv_width, hidden, Q6_K)
        bias(block + "attn_v.bias", kv_width)
        matrix(block + "attn_output.weight", hidden, hidden, Q4_K)
        matrix(block + "ffn_gate.weight", ffn, hidden, Q4_K)
        matrix(block + "ffn_up.weight", ffn, hidden, Q4_K)
        matrix(block + "ffn_down.weight", hidden, ffn, Q6_K if i % 2 == 0 else Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--blocks", type=int, default=None, help="default: all of Fathom's 48")
    args = parser.parse_args()
    write_stand_in(args.out, args.blocks)


if __name__ == "__main__":
    main()
