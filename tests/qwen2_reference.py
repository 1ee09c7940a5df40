"""A plain numpy forward pass of Qwen2ForCausalLM, written from the architecture, for logit parity.

It runs on the Hugging Face tensors (HF names, [out, in] layout) in float64, so it is independent
of everything the converter does: names, layouts, dtypes. If llama.cpp's logits on the converted
GGUF match it, the conversion preserved the model.

Qwen2, as transformers implements it: RMSNorm before attention and before the MLP; q/k/v
projections with bias, o_proj without; rotary embeddings in the "rotate half" (NEOX) layout with
base `rope_theta`; grouped-query attention (each KV head serves n_heads / n_kv_heads query heads);
a causal mask; a SwiGLU MLP (down(silu(gate(x)) * up(x))); a final RMSNorm; the LM head (the
embedding matrix itself when tie_word_embeddings is set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tests.synthetic import Qwen2Shape


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotary(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate [seq, heads, head_dim] by position; dimension i pairs with i + head_dim/2."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [seq, half]
    cos = np.cos(angles)[:, None, :]
    sin = np.sin(angles)[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def attention(
    x: np.ndarray, w: Mapping[str, np.ndarray], prefix: str, shape: Qwen2Shape
) -> np.ndarray:
    seq = x.shape[0]
    hd = shape.head_dim

    def project(name: str, heads: int) -> np.ndarray:
        y = x @ w[f"{prefix}{name}.weight"].T + w[f"{prefix}{name}.bias"]
        return y.reshape(seq, heads, hd)

    positions = np.arange(seq)
    q = rotary(project("q_proj", shape.n_heads), positions, shape.rope_theta)
    k = rotary(project("k_proj", shape.n_kv_heads), positions, shape.rope_theta)
    v = project("v_proj", shape.n_kv_heads)
    group = shape.n_heads // shape.n_kv_heads
    k = np.repeat(k, group, axis=1)  # query head h reads KV head h // group
    v = np.repeat(v, group, axis=1)

    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    future = np.triu(np.ones((seq, seq), dtype=bool), k=1)
    scores = np.where(future[None], -np.inf, scores)
    out = np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(seq, shape.n_heads * hd)
    return out @ w[f"{prefix}o_proj.weight"].T


def mlp(x: np.ndarray, w: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    gate = x @ w[f"{prefix}gate_proj.weight"].T
    up = x @ w[f"{prefix}up_proj.weight"].T
    return (silu(gate) * up) @ w[f"{prefix}down_proj.weight"].T


def forward(
    weights: Mapping[str, np.ndarray], shape: Qwen2Shape, token_ids: Sequence[int]
) -> np.ndarray:
    """Logits [len(token_ids), vocab] for every position, in float64."""
    w = {name: np.asarray(t, dtype=np.float64) for name, t in weights.items()}
    eps = shape.rms_norm_eps
    h = w["model.embed_tokens.weight"][np.asarray(token_ids)]
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        h = h + attention(x, w, p + "self_attn.", shape)
        h = h + mlp(rms_norm(h, w[p + "post_attention_layernorm.weight"], eps), w, p + "mlp.")
    h = rms_norm(h, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return h @ head.T
