"""A synthetic checkpoint at Fathom-R1-14B's width, for measuring quantization where the rows are
as wide as the real model's.

Every matrix has Fathom's shape (hidden 5,120, FFN 13,824, 40 query and 8 KV heads, 152,064
vocabulary rows, the real R1-distill tokenizer); only the number of blocks is cut (one by
default) so that a 2-core machine can evaluate it. The weights follow tests/synthetic.py's
layout (the LM head row of token j holds the embedding of a fixed predecessor, so the model has
clear, varied predictions; here with a realistic tail, see SUCCESSOR_LOGIT) with one property of
trained transformers added,
because it is what an importance matrix exploits: a few hidden channels carry much larger
activations than the rest (here 1 % of the RMSNorm gains are 6-10x the others), so the columns
of every matrix that reads the residual stream differ in how much their errors cost.

The tensors are generated and stored as bf16 one slice at a time: the 3.7 GB checkpoint never
exists as float32 in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tests.synthetic import (
    FATHOM_WIDTH,
    ORDINARY_TOKENS,
    TOKENIZER_DIR,
    ChatTemplate,
    Qwen2Shape,
    qwen2_config,
    write_shards,
)
from training.safetensors_io import bf16_bits_to_float32, float32_to_bf16_bits

ROWS_PER_SLICE = 8192
# The LM head: the predicted token's logit stands about SUCCESSOR_LOGIT above a spread of
# standard deviation NOISE_LOGIT_STD over the whole vocabulary, so a prediction is clear but its
# distribution has a real tail, as a trained model's has (a head that is all signal makes every
# level agree 100 % and the KL divergences meaninglessly small).
SUCCESSOR_LOGIT = 8.0
NOISE_LOGIT_STD = 1.5
OUTLIER_SHARE = 0.01
BLOCK_GAIN = 0.2


def _gains(rng: np.random.Generator, width: int) -> np.ndarray:
    gains = 1.0 + 0.1 * rng.standard_normal(width, dtype=np.float32)
    outliers = rng.choice(width, size=max(1, int(width * OUTLIER_SHARE)), replace=False)
    gains[outliers] *= rng.uniform(6.0, 10.0, size=outliers.size).astype(np.float32)
    return float32_to_bf16_bits(gains)


def _normal_bf16(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    out = np.empty((rows, cols), dtype=np.uint16)
    for start in range(0, rows, ROWS_PER_SLICE):
        stop = min(rows, start + ROWS_PER_SLICE)
        values = rng.standard_normal((stop - start, cols), dtype=np.float32)
        values *= scale
        out[start:stop] = float32_to_bf16_bits(values)
    return out


def _head_bf16(
    rng: np.random.Generator, embed: np.ndarray, shape: Qwen2Shape
) -> np.ndarray:
    """Row r = noise + embedding of the token whose successor is r (a fixed permutation)."""
    h = shape.hidden_size
    # The final norm's output has about sqrt(h * E[gain^2]) of length; the gains' outliers
    # (1 % at 6-10x) make E[gain^2] about 1.6.
    hidden_norm = (h * 1.6) ** 0.5
    noise_scale = NOISE_LOGIT_STD / hidden_norm
    signal_scale = SUCCESSOR_LOGIT / h
    successor = rng.permutation(ORDINARY_TOKENS)
    predecessor = np.full(shape.vocab_size, -1, dtype=np.int64)
    predecessor[successor] = np.arange(ORDINARY_TOKENS)
    out = np.empty((shape.vocab_size, h), dtype=np.uint16)
    for start in range(0, shape.vocab_size, ROWS_PER_SLICE):
        stop = min(shape.vocab_size, start + ROWS_PER_SLICE)
        values = rng.standard_normal((stop - start, h), dtype=np.float32) * noise_scale
        rows = predecessor[start:stop]
        known = rows >= 0
        values[known] += bf16_bits_to_float32(embed[rows[known]]) * signal_scale
        out[start:stop] = float32_to_bf16_bits(values)
    return out


def write_fathom_width_checkpoint(out_dir: Path, blocks: int = 1, seed: int = 0) -> Path:
    """config.json, the real tokenizer files and one bf16 model.safetensors in `out_dir`."""
    shape = Qwen2Shape(**{**FATHOM_WIDTH.__dict__, "n_layers": blocks, "context_length": 16384})
    out_dir.mkdir(parents=True, exist_ok=True)
    config = qwen2_config(shape, tied=False, dtype="BF16")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(TOKENIZER_DIR / ChatTemplate.CURRENT.value, out_dir / "tokenizer_config.json")
    shutil.copyfile(TOKENIZER_DIR / "tokenizer.json", out_dir / "tokenizer.json")

    rng = np.random.default_rng(seed)
    h, f, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.n_heads * hd, shape.n_kv_heads * hd
    embed = _normal_bf16(rng, shape.vocab_size, h, 1.0)
    tensors: dict[str, tuple[str, np.ndarray]] = {"model.embed_tokens.weight": ("BF16", embed)}

    def add(name: str, bits: np.ndarray) -> None:
        tensors[name] = ("BF16", bits)

    def vector(width: int, scale: float) -> np.ndarray:
        return float32_to_bf16_bits(rng.standard_normal(width, dtype=np.float32) * scale)

    for i in range(blocks):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", _gains(rng, h))
        add(p + "self_attn.q_proj.weight", _normal_bf16(rng, q, h, h**-0.5))
        add(p + "self_attn.q_proj.bias", vector(q, 0.5))
        add(p + "self_attn.k_proj.weight", _normal_bf16(rng, kv, h, h**-0.5))
        add(p + "self_attn.k_proj.bias", vector(kv, 0.5))
        add(p + "self_attn.v_proj.weight", _normal_bf16(rng, kv, h, h**-0.5))
        add(p + "self_attn.v_proj.bias", vector(kv, 0.1))
        add(p + "self_attn.o_proj.weight", _normal_bf16(rng, h, q, BLOCK_GAIN * q**-0.5))
        add(p + "post_attention_layernorm.weight", _gains(rng, h))
        add(p + "mlp.gate_proj.weight", _normal_bf16(rng, f, h, h**-0.5))
        add(p + "mlp.up_proj.weight", _normal_bf16(rng, f, h, h**-0.5))
        add(p + "mlp.down_proj.weight", _normal_bf16(rng, h, f, BLOCK_GAIN * f**-0.5))
    add("model.norm.weight", _gains(rng, h))
    add("lm_head.weight", _head_bf16(rng, embed, shape))
    write_shards(out_dir, tensors, 1)
    return out_dir
