"""The VRAM planner: how many layers fit on the GPU, predicted from the GGUF (or a config.json).

How llama.cpp places a model (src/llama-model.cpp): the token embedding always stays in host
memory; `n_gpu_layers = k` offloads the output layer first, then the last k-1 transformer blocks,
so a Qwen2 model with 48 blocks has 49 offloadable layers. Each block's KV cache lives beside it.

Predicted GPU memory for k offloaded layers (k >= 1; nothing at k = 0):

    weights(output + output_norm) + weights(last k-1 blocks)
    + (k-1) * kv_per_block,   kv_per_block = 2 * n_ctx * n_head_kv * head_dim * bytes(kv type)
    + compute buffer,         n_ubatch * 4 * (n_vocab + 3 * n_embd + 2 * n_ff)
                              + n_ubatch * n_ctx * 2              with flash attention (f16 mask)
                              + n_ubatch * n_ctx * n_head * 4     without it (f32 KQ scores)
    + RUNTIME_RESERVE         the CUDA context and cuBLAS workspace, which llama.cpp does not count

The compute-buffer term is the logits of one micro-batch plus one layer's live activations and the
attention scratch; it is an estimate (llama.cpp sizes its graph allocator at run time). A plan
uses at most SAFE_FRACTION of the free memory, leaving room for the estimate to be short.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import gguf

from fathom_desktop.engine.gguf_check import ModelFileInfo, check_model_file
from fathom_desktop.engine.quant_mix import TensorRole, tensor_bytes, tensor_type
from fathom_desktop.engine.types import FATHOM_N_CTX, KvCacheType

N_UBATCH = 512  # llama-cpp-python's default physical batch
RUNTIME_RESERVE = 512 * 1024**2
SAFE_FRACTION = 0.95

KV_CACHE_GGML_TYPE: dict[str, gguf.GGMLQuantizationType] = {
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
assert set(KV_CACHE_GGML_TYPE) == set(get_args(KvCacheType))


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_bytes: int
    free_bytes: int
    # What gpu_support checks against the llama.cpp build; None when NVML could not say.
    compute_capability: tuple[int, int] | None = None  # (8, 9) for an RTX 4090
    driver_cuda_version: int | None = None  # the newest CUDA the driver runs: 12080 = 12.8
    # Why the installed llama.cpp cannot use this GPU (gpu_support.usability_problem); None if
    # it can or nobody asked. Fit badges then say "CPU only", as the engine will run it.
    problem: str | None = None


def detect_gpu() -> GpuInfo | None:
    """The first NVIDIA GPU as NVML sees it, or None (no driver, no GPU, no nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return GpuInfo(
            name=str(name),
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            compute_capability=_nvml_optional(
                lambda: tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            ),
            driver_cuda_version=_nvml_optional(pynvml.nvmlSystemGetCudaDriverVersion),
        )
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _nvml_optional(query):
    """A query some drivers do not answer; the caller plans without it."""
    import pynvml

    try:
        return query()
    except pynvml.NVMLError:
        return None


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int
    n_layers: int  # offloadable layers: the transformer blocks plus the output layer
    vram_bytes: int  # predicted GPU memory for n_gpu_layers
    fits_fully: bool
    label: str  # "fits on GPU" | "partial: 31/49 layers" | "CPU only"
    full_vram_bytes: int  # predicted GPU memory with every layer offloaded
    free_vram_bytes: int | None  # what the plan was made for; None when no GPU was found


def offloadable_layers(n_blocks: int) -> int:
    """llama.cpp's n_gpu_layers range for a model of `n_blocks` transformer blocks: the blocks
    plus the output layer. Every "n/N layers" the app shows uses this N."""
    return n_blocks + 1


def offload_label(n_gpu_layers: int, n_layers: int) -> str:
    """A plan in a few words; `n_layers` counts the blocks plus the output layer, as llama.cpp's
    n_gpu_layers does (the same N as `LoadReport.n_layers` and the status bar)."""
    if n_gpu_layers >= n_layers:
        return "fits on GPU"
    if n_gpu_layers <= 0:
        return "CPU only"
    return f"partial: {n_gpu_layers}/{n_layers} layers"


def layers_on_gpu(n_gpu_layers: int, n_layers: int) -> str:
    """Where a loaded model runs: "GPU 31/49 layers" or "CPU only" (same N as offload_label)."""
    if n_gpu_layers <= 0:
        return "CPU only"
    return f"GPU {min(n_gpu_layers, n_layers)}/{n_layers} layers"


@dataclass(frozen=True)
class MemoryProfile:
    """Everything the placement depends on, in bytes."""

    block_bytes: tuple[int, ...]  # weights of each transformer block, in order
    output_bytes: int  # output projection + final norm (the first layer to be offloaded)
    embedding_bytes: int  # token embedding: always in host memory
    kv_bytes_per_block: int
    compute_bytes: int

    @property
    def n_layers(self) -> int:
        return offloadable_layers(len(self.block_bytes))

    @property
    def weights_bytes(self) -> int:
        return sum(self.block_bytes) + self.output_bytes + self.embedding_bytes

    def gpu_bytes(self, n_gpu_layers: int) -> int:
        """Predicted GPU memory with `n_gpu_layers` offloaded (clamped to what exists)."""
        k = max(0, min(n_gpu_layers, self.n_layers))
        if k == 0:
            return 0
        blocks = k - 1
        offloaded = sum(self.block_bytes[len(self.block_bytes) - blocks :]) if blocks else 0
        return (
            self.output_bytes
            + offloaded
            + blocks * self.kv_bytes_per_block
            + self.compute_bytes
            + RUNTIME_RESERVE
        )

    def host_bytes(self, n_gpu_layers: int) -> int:
        """Predicted host memory for weights and KV cache left on the CPU."""
        k = max(0, min(n_gpu_layers, self.n_layers))
        cpu_blocks = len(self.block_bytes) - max(0, k - 1)
        return (
            self.embedding_bytes
            + sum(self.block_bytes[:cpu_blocks])
            + (self.output_bytes if k == 0 else 0)
            + cpu_blocks * self.kv_bytes_per_block
            + (self.compute_bytes if k == 0 else 0)
        )

    def plan(self, free_vram_bytes: int | None) -> OffloadPlan:
        """The most layers whose predicted memory fits SAFE_FRACTION of the free VRAM."""
        budget = int((free_vram_bytes or 0) * SAFE_FRACTION)
        chosen = 0
        for k in range(self.n_layers, 0, -1):
            if self.gpu_bytes(k) <= budget:
                chosen = k
                break
        return OffloadPlan(
            n_gpu_layers=chosen,
            n_layers=self.n_layers,
            vram_bytes=self.gpu_bytes(chosen),
            fits_fully=chosen == self.n_layers,
            label=offload_label(chosen, self.n_layers),
            full_vram_bytes=self.gpu_bytes(self.n_layers),
            free_vram_bytes=free_vram_bytes,
        )


def kv_bytes_per_block(n_ctx: int, n_head_kv: int, head_dim: int, kv_cache_type: str) -> int:
    """K and V for one block: 2 * n_ctx * n_head_kv * head_dim elements of the cache type."""
    ggml_type = KV_CACHE_GGML_TYPE[kv_cache_type]
    return 2 * tensor_bytes(n_ctx * n_head_kv * head_dim, ggml_type)


def compute_buffer_bytes(
    *, n_ctx: int, n_vocab: int, n_embd: int, n_ff: int, n_head: int, flash_attn: bool
) -> int:
    activations = N_UBATCH * 4 * (n_vocab + 3 * n_embd + 2 * n_ff)
    attention = N_UBATCH * n_ctx * 2 if flash_attn else N_UBATCH * n_ctx * n_head * 4
    return activations + attention


def profile_from_model_file(
    info: ModelFileInfo,
    *,
    n_ctx: int = FATHOM_N_CTX,
    kv_cache_type: KvCacheType = "f16",
    flash_attn: bool = True,
) -> MemoryProfile:
    blocks = [0] * info.n_layers
    output = embedding = 0
    for tensor in info.tensors:
        if tensor.name.startswith("blk."):
            blocks[int(tensor.name.split(".")[1])] += tensor.n_bytes
        elif tensor.name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + "."):
            embedding += tensor.n_bytes
        else:  # output, output_norm
            output += tensor.n_bytes
    output_weight = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
    if not any(t.name == output_weight for t in info.tensors):
        output += embedding  # tied embeddings: llama.cpp puts a copy on the output device
    return MemoryProfile(
        block_bytes=tuple(blocks),
        output_bytes=output,
        embedding_bytes=embedding,
        kv_bytes_per_block=kv_bytes_per_block(n_ctx, info.n_head_kv, info.head_dim, kv_cache_type),
        compute_bytes=compute_buffer_bytes(
            n_ctx=n_ctx,
            n_vocab=info.n_vocab,
            n_embd=info.n_embd,
            n_ff=info.n_ff,
            n_head=info.n_head,
            flash_attn=flash_attn,
        ),
    )


def plan_offload(
    gguf_path: Path | str,
    n_ctx: int = FATHOM_N_CTX,
    kv_cache_type: KvCacheType = "f16",
    free_vram_bytes: int | None = None,
    *,
    flash_attn: bool = True,
) -> OffloadPlan:
    """Recommend n_gpu_layers for a model file; free VRAM from NVML when not given (none → CPU)."""
    profile = profile_from_model_file(
        check_model_file(gguf_path), n_ctx=n_ctx, kv_cache_type=kv_cache_type, flash_attn=flash_attn
    )
    if free_vram_bytes is None:
        gpu = detect_gpu()
        free_vram_bytes = gpu.free_bytes if gpu is not None else None
    return profile.plan(free_vram_bytes)


def _file_type(name: str) -> gguf.LlamaFileType:
    for prefix in ("MOSTLY_", "ALL_"):
        try:
            return gguf.LlamaFileType[prefix + name.upper()]
        except KeyError:
            continue
    raise ValueError(f"unknown llama.cpp file type '{name}'")


def model_memory_profile(
    config: Path | str | dict[str, Any],
    quant: str | float,
    *,
    n_ctx: int = FATHOM_N_CTX,
    kv_cache_type: KvCacheType = "f16",
    flash_attn: bool = True,
) -> MemoryProfile:
    """Predict a model's memory from its Hugging Face config.json, before any GGUF exists.

    `quant` is a llama.cpp file type name ("Q4_K_M": llama.cpp's per-tensor mix, see quant_mix)
    or a flat number of bits per weight applied to every matrix. Norms and biases stay F32.
    """
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    n_embd = int(config["hidden_size"])
    n_ff = int(config["intermediate_size"])
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads", n_head))
    n_vocab = int(config["vocab_size"])
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    q_width, kv_width = n_head * head_dim, n_head_kv * head_dim
    sizes = {
        TensorRole.ATTN_Q: n_embd * q_width,
        TensorRole.ATTN_K: n_embd * kv_width,
        TensorRole.ATTN_V: n_embd * kv_width,
        TensorRole.ATTN_OUT: q_width * n_embd,
        TensorRole.FFN_GATE: n_embd * n_ff,
        TensorRole.FFN_UP: n_embd * n_ff,
        TensorRole.FFN_DOWN: n_ff * n_embd,
    }

    if isinstance(quant, str):
        ftype = _file_type(quant)

        def matrix_bytes(role: TensorRole, n_elements: int, layer: int = 0) -> int:
            ggml_type = tensor_type(ftype, role, layer, n_layers, n_head // n_head_kv)
            return tensor_bytes(n_elements, ggml_type)
    else:
        bits = float(quant)

        def matrix_bytes(role: TensorRole, n_elements: int, layer: int = 0) -> int:
            return int(n_elements * bits / 8)

    f32_per_block = 4 * (2 * n_embd + q_width + 2 * kv_width)  # two norms, q/k/v biases
    blocks = tuple(
        f32_per_block + sum(matrix_bytes(role, n, layer) for role, n in sizes.items())
        for layer in range(n_layers)
    )
    output_matrix = TensorRole.OUTPUT if not config.get("tie_word_embeddings") else None
    embedding = matrix_bytes(TensorRole.TOKEN_EMBD, n_vocab * n_embd)
    output = 4 * n_embd + (
        matrix_bytes(output_matrix, n_vocab * n_embd) if output_matrix else embedding
    )
    return MemoryProfile(
        block_bytes=blocks,
        output_bytes=output,
        embedding_bytes=embedding,
        kv_bytes_per_block=kv_bytes_per_block(n_ctx, n_head_kv, head_dim, kv_cache_type),
        compute_bytes=compute_buffer_bytes(
            n_ctx=n_ctx,
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_ff=n_ff,
            n_head=n_head,
            flash_attn=flash_attn,
        ),
    )


# -- samples decoded at once (self-consistency) -----------------------------------------------

MAX_PARALLEL = 64  # the most samples a consensus takes, so the most sequences worth planning for
KV_STREAM_PADDING = 256  # llama.cpp rounds a sequence's KV stream up to a multiple of this


@dataclass(frozen=True)
class ParallelPlan:
    parallel: int  # samples decoded at once; 1 means one after another
    reason: str  # one line for the user: what was chosen and why
    kv_bytes: int  # predicted KV cache of the sample context at that P (0 when P is 1)


@dataclass(frozen=True)
class SequenceMemory:
    """What each sample context cell and its compute buffer cost, per device."""

    kv_bytes_per_cell_gpu: int  # K and V of one position in every offloaded block
    kv_bytes_per_cell_host: int  # ... in every block left on the CPU
    compute_bytes: int  # the sample context's compute buffer (on the GPU when any layer is)
    on_gpu: bool


def sequence_memory(
    info: ModelFileInfo,
    *,
    kv_cache_type: KvCacheType,
    n_gpu_layers: int,
    flash_attn: bool,
    n_cells: int,
) -> SequenceMemory:
    per_block = kv_bytes_per_block(1, info.n_head_kv, info.head_dim, kv_cache_type)
    # The output layer is offloaded first, then the last blocks (see the module docstring).
    gpu_blocks = max(0, min(n_gpu_layers - 1, info.n_layers))
    compute = compute_buffer_bytes(
        n_ctx=n_cells,
        n_vocab=info.n_vocab,
        n_embd=info.n_embd,
        n_ff=info.n_ff,
        n_head=info.n_head,
        flash_attn=flash_attn,
    )
    return SequenceMemory(
        kv_bytes_per_cell_gpu=per_block * gpu_blocks,
        kv_bytes_per_cell_host=per_block * (info.n_layers - gpu_blocks),
        compute_bytes=compute,
        on_gpu=n_gpu_layers > 0,
    )


def choose_parallel(
    memory: Callable[[int], SequenceMemory],
    *,
    k: int,
    cap: int | None,
    prompt_tokens: int,
    reply_cells: int,
    free_vram_bytes: int | None,
    free_host_bytes: int | None,
) -> ParallelPlan:
    """The largest P (<= k, <= the user's cap) whose sample context fits the free memory.

    The sample context gives each sample a KV stream for the prompt and `reply_cells` (see
    engine/batched.py); `memory(n_cells)` prices it. Free memory is what the device has now,
    with the model already loaded beside it; a plan uses at most SAFE_FRACTION of it. None means
    "unknown": not a limit.
    """
    limit = min(k, MAX_PARALLEL)
    why_limit = f"all {k} samples" if k <= MAX_PARALLEL else f"at most {MAX_PARALLEL}"
    if k == 1:
        why_limit = "a single sample"
    if cap is not None and cap < limit:
        limit, why_limit = cap, f"capped at {cap}"

    def need(p: int) -> tuple[int, int, int]:
        cells = p * _stream_cells(prompt_tokens + reply_cells)
        sizes = memory(cells)
        gpu = cells * sizes.kv_bytes_per_cell_gpu + (sizes.compute_bytes if sizes.on_gpu else 0)
        host = cells * sizes.kv_bytes_per_cell_host + (0 if sizes.on_gpu else sizes.compute_bytes)
        return gpu, host, cells * (sizes.kv_bytes_per_cell_gpu + sizes.kv_bytes_per_cell_host)

    def fits(p: int) -> str | None:
        """None when P fits; otherwise which memory it overflows."""
        gpu, host, _ = need(p)
        if free_vram_bytes is not None and gpu > free_vram_bytes * SAFE_FRACTION:
            return f"{gpu / 2**30:.1f} GiB of VRAM ({free_vram_bytes / 2**30:.1f} GiB free)"
        if free_host_bytes is not None and host > free_host_bytes * SAFE_FRACTION:
            return f"{host / 2**30:.1f} GiB of RAM ({free_host_bytes / 2**30:.1f} GiB free)"
        return None

    chosen = 1
    for p in range(limit, 1, -1):
        if fits(p) is None:
            chosen = p
            break
    per_sample = f"{prompt_tokens:,}-token prompt + {reply_cells:,} reply per sample"
    if chosen == limit:
        reason = f"{chosen} at once ({why_limit}; KV cache for {per_sample} fits)"
    else:
        overflow = fits(chosen + 1)
        reason = f"{chosen} at once ({chosen + 1} would need {overflow}; {per_sample})"
    if chosen == 1:
        reason = reason.replace("1 at once", "one after another", 1)
    return ParallelPlan(
        parallel=chosen, reason=reason, kv_bytes=need(chosen)[2] if chosen > 1 else 0
    )


def _stream_cells(cells: int) -> int:
    """llama.cpp rounds each sequence's KV stream up to a multiple of 256 cells."""
    return -(-cells // KV_STREAM_PADDING) * KV_STREAM_PADDING


def available_host_bytes() -> int | None:
    """Memory the system can give without swapping (MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
