"""Which ggml type llama.cpp's quantizer gives each tensor of a dense Qwen2 model.

A file type such as Q4_K_M is a mix: llama.cpp (src/llama-quant.cpp, llama_tensor_get_type)
spends more bits on attn_v and some ffn_down layers, and puts the output projection in Q6_K.
This reproduces those rules for the ladder Fathom ships (dense model, no importance matrix),
so that the memory planner can predict sizes from a config.json before any file exists.
"""

from __future__ import annotations

from enum import Enum

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

Q = GGMLQuantizationType


class TensorRole(Enum):
    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    ATTN_Q = "attn_q"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"
    ATTN_OUT = "attn_output"
    FFN_GATE = "ffn_gate"
    FFN_UP = "ffn_up"
    FFN_DOWN = "ffn_down"


# The type every matrix gets unless a rule below says otherwise.
BASE_TYPE: dict[LlamaFileType, GGMLQuantizationType] = {
    LlamaFileType.ALL_F32: Q.F32,
    LlamaFileType.MOSTLY_F16: Q.F16,
    LlamaFileType.MOSTLY_BF16: Q.BF16,
    LlamaFileType.MOSTLY_Q8_0: Q.Q8_0,
    LlamaFileType.MOSTLY_Q6_K: Q.Q6_K,
    LlamaFileType.MOSTLY_Q5_K_M: Q.Q5_K,
    LlamaFileType.MOSTLY_Q4_K_M: Q.Q4_K,
    LlamaFileType.MOSTLY_IQ4_XS: Q.IQ4_XS,
    LlamaFileType.MOSTLY_Q3_K_M: Q.Q3_K,
    LlamaFileType.MOSTLY_Q2_K: Q.Q2_K,
}
_FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)


def _more_bits(layer: int, n_layers: int) -> bool:
    # llama.cpp's use_more_bits: the first and last eighth, and every third layer between.
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def tensor_type(
    ftype: LlamaFileType, role: TensorRole, layer: int, n_layers: int, n_gqa: int
) -> GGMLQuantizationType:
    """The ggml type of one weight matrix; `layer` is ignored for token_embd and output."""
    base = BASE_TYPE[ftype]
    if base in _FLOAT_TYPES or role is TensorRole.TOKEN_EMBD:
        return base
    if role is TensorRole.OUTPUT:
        return Q.Q8_0 if base is Q.Q8_0 else Q.Q6_K
    if role is TensorRole.ATTN_V:
        return _attn_v(ftype, base, layer, n_layers, n_gqa)
    if role is TensorRole.FFN_DOWN:
        return _ffn_down(ftype, base, layer, n_layers)
    if role is TensorRole.ATTN_OUT:
        return {LlamaFileType.MOSTLY_Q2_K: Q.Q3_K, LlamaFileType.MOSTLY_Q3_K_M: Q.Q4_K}.get(
            ftype, base
        )
    return base


def _attn_v(
    ftype: LlamaFileType, base: GGMLQuantizationType, layer: int, n_layers: int, n_gqa: int
) -> GGMLQuantizationType:
    if ftype is LlamaFileType.MOSTLY_Q2_K:
        return Q.Q4_K if n_gqa >= 4 else Q.Q3_K
    if ftype is LlamaFileType.MOSTLY_Q3_K_M:
        return Q.Q5_K if layer < 2 else Q.Q4_K
    if ftype is LlamaFileType.MOSTLY_IQ4_XS and n_gqa >= 4:
        return Q.Q5_K
    if ftype in (LlamaFileType.MOSTLY_Q4_K_M, LlamaFileType.MOSTLY_Q5_K_M) and _more_bits(
        layer, n_layers
    ):
        return Q.Q6_K
    return base


def _ffn_down(
    ftype: LlamaFileType, base: GGMLQuantizationType, layer: int, n_layers: int
) -> GGMLQuantizationType:
    if ftype is LlamaFileType.MOSTLY_Q2_K:
        return Q.Q3_K
    if ftype is LlamaFileType.MOSTLY_Q3_K_M:
        return Q.Q5_K if layer < n_layers // 16 else Q.Q4_K
    if ftype in (LlamaFileType.MOSTLY_Q4_K_M, LlamaFileType.MOSTLY_Q5_K_M) and _more_bits(
        layer, n_layers
    ):
        return Q.Q6_K
    if ftype is LlamaFileType.MOSTLY_IQ4_XS and layer < n_layers // 8:
        return Q.Q5_K
    return base


def tensor_bytes(n_elements: int, ggml_type: GGMLQuantizationType) -> int:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return -(-n_elements // block_size) * type_size


def bits_per_weight(ggml_type: GGMLQuantizationType) -> float:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return type_size * 8 / block_size
