"""Hugging Face Qwen2 tensor names -> the names llama.cpp's qwen2 loader looks up.

The targets come from gguf's own tables (``gguf.TENSOR_NAMES``), so a rename upstream shows up as a
failing test rather than as a GGUF that llama.cpp refuses to load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

ARCH = gguf.MODEL_ARCH.QWEN2
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]

_T = gguf.MODEL_TENSOR
GLOBAL_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "model.embed_tokens": _T.TOKEN_EMBD,
    "model.norm": _T.OUTPUT_NORM,
    "lm_head": _T.OUTPUT,
}
BLOCK_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "input_layernorm": _T.ATTN_NORM,
    "self_attn.q_proj": _T.ATTN_Q,
    "self_attn.k_proj": _T.ATTN_K,
    "self_attn.v_proj": _T.ATTN_V,
    "self_attn.o_proj": _T.ATTN_OUT,
    "post_attention_layernorm": _T.FFN_NORM,
    "mlp.gate_proj": _T.FFN_GATE,
    "mlp.up_proj": _T.FFN_UP,
    "mlp.down_proj": _T.FFN_DOWN,
}
SUFFIXES = ("weight", "bias")

# Buffers some exporters save next to the weights; llama.cpp recomputes them from rope_theta.
IGNORED_PATTERN = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

_BLOCK_NAME = re.compile(r"model\.layers\.(?P<bid>\d+)\.(?P<module>.+)\.(?P<suffix>weight|bias)")
_GLOBAL_NAME = re.compile(r"(?P<module>.+)\.(?P<suffix>weight|bias)")


@dataclass(frozen=True)
class TensorName:
    hf: str
    gguf: str
    kind: gguf.MODEL_TENSOR
    block: int | None


def to_gguf_name(hf_name: str) -> TensorName | None:
    """The llama.cpp name for a Qwen2 tensor, or None when it is not part of a Qwen2 LM."""
    if match := _BLOCK_NAME.fullmatch(hf_name):
        kind = BLOCK_TENSORS.get(match["module"])
        if kind is None:
            return None
        bid = int(match["bid"])
        return TensorName(
            hf_name, f"{gguf.TENSOR_NAMES[kind].format(bid=bid)}.{match['suffix']}", kind, bid
        )
    if match := _GLOBAL_NAME.fullmatch(hf_name):
        kind = GLOBAL_TENSORS.get(match["module"])
        if kind is None:
            return None
        return TensorName(hf_name, f"{gguf.TENSOR_NAMES[kind]}.{match['suffix']}", kind, None)
    return None


def is_ignored(hf_name: str) -> bool:
    return IGNORED_PATTERN.fullmatch(hf_name) is not None
