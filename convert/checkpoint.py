"""A Hugging Face Qwen2 checkpoint on disk: its hyper-parameters, its shards, and their tensors.

Everything is checked before conversion starts: the set of shards against the index, every
tensor's presence and shape against config.json. A checkpoint that would produce a GGUF llama.cpp
cannot load (or, worse, loads and talks nonsense) is refused here with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convert.errors import ConversionError
from convert.safetensors import SafetensorsHeader, TensorEntry, read_header
from convert.tensor_names import BLOCK_TENSORS, TensorName, is_ignored, to_gguf_name

SUPPORTED_ARCHITECTURE = "Qwen2ForCausalLM"
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.safetensors")
# Far beyond any Qwen2 (Fathom-R1-14B: 48 layers, 40 heads, 5,120 wide, 152,064 tokens) and low
# enough that the expected-tensor list and shape arithmetic stay cheap: a config past these is
# refused before a single shard header is read.
_LIMITS = {
    "num_hidden_layers": 1024,
    "hidden_size": 1 << 20,
    "intermediate_size": 1 << 20,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 24,
}


@dataclass(frozen=True)
class Qwen2HParams:
    """The hyper-parameters llama.cpp's qwen2 graph needs, read from config.json."""

    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen2HParams:
        architectures = config.get("architectures") or []
        if SUPPORTED_ARCHITECTURE not in architectures:
            found = ", ".join(map(str, architectures)) or config.get("model_type") or "none given"
            raise ConversionError(
                f"Unsupported architecture in config.json: {found}; only {SUPPORTED_ARCHITECTURE} "
                f"(Fathom-R1-14B and the Qwen2 family) can be converted."
            )
        rope_parameters = config.get("rope_parameters") or {}
        hp = cls(
            n_layers=_positive_int(config, "num_hidden_layers"),
            hidden_size=_positive_int(config, "hidden_size"),
            intermediate_size=_positive_int(config, "intermediate_size"),
            n_heads=_positive_int(config, "num_attention_heads"),
            # Qwen2 without grouped-query attention leaves the KV head count out.
            n_kv_heads=_positive_int(
                config, "num_key_value_heads", config.get("num_attention_heads")
            ),
            vocab_size=_positive_int(config, "vocab_size"),
            context_length=_positive_int(config, "max_position_embeddings"),
            rope_theta=_positive_float(
                config, "rope_theta", rope_parameters.get("rope_theta", 10000.0)
            ),
            rms_norm_eps=_positive_float(config, "rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
        if hp.hidden_size % hp.n_heads:
            raise ConversionError(
                f"config.json is inconsistent: hidden_size {hp.hidden_size} is not a multiple of "
                f"num_attention_heads {hp.n_heads}."
            )
        if hp.n_heads % hp.n_kv_heads:
            raise ConversionError(
                f"config.json is inconsistent: num_attention_heads {hp.n_heads} is not a multiple "
                f"of num_key_value_heads {hp.n_kv_heads}."
            )
        if "head_dim" in config and config["head_dim"] != hp.head_dim:
            raise ConversionError(
                f"config.json sets head_dim {config['head_dim']}, but Qwen2 in llama.cpp needs "
                f"hidden_size / num_attention_heads = {hp.head_dim}."
            )
        _refuse_unsupported_rope(config.get("rope_scaling") or rope_parameters)
        if config.get("use_sliding_window"):
            raise ConversionError(
                "config.json enables use_sliding_window; llama.cpp's qwen2 attends over the full "
                "context, so the converted model would not match the checkpoint."
            )
        return hp


def _refuse_unsupported_rope(scaling: dict[str, Any]) -> None:
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ConversionError(
            f"config.json uses RoPE scaling {rope_type!r}, which this converter does not support."
        )


def _positive_int(config: dict[str, Any], key: str, default: Any = None) -> int:
    value = config.get(key, default)
    if type(value) is not int or value <= 0:
        raise ConversionError(f"config.json: {key} must be a positive integer, got {value!r}.")
    limit = _LIMITS.get(key)
    if limit is not None and value > limit:
        raise ConversionError(
            f"config.json: {key} is {value:,}, beyond any real model (at most {limit:,}); "
            f"the file is damaged."
        )
    return value


def _positive_float(config: dict[str, Any], key: str, default: Any) -> float:
    value = config.get(key, default)
    if type(value) not in (int, float) or not value > 0:
        raise ConversionError(f"config.json: {key} must be a positive number, got {value!r}.")
    return float(value)


def load_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConversionError(
            f"{model_dir} has no {CONFIG_FILE}; is it a Hugging Face checkpoint folder?"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConversionError(f"Cannot read {path}: {e}.") from e
    if not isinstance(config, dict):
        raise ConversionError(f"{path} is not a JSON object.")
    return config


def expected_shapes(hp: Qwen2HParams) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen2ForCausalLM checkpoint holds, in HF (row-major, [out, in]) shape."""
    q_width = hp.n_heads * hp.head_dim
    kv_width = hp.n_kv_heads * hp.head_dim
    per_block = {
        "input_layernorm.weight": (hp.hidden_size,),
        "self_attn.q_proj.weight": (q_width, hp.hidden_size),
        "self_attn.q_proj.bias": (q_width,),
        "self_attn.k_proj.weight": (kv_width, hp.hidden_size),
        "self_attn.k_proj.bias": (kv_width,),
        "self_attn.v_proj.weight": (kv_width, hp.hidden_size),
        "self_attn.v_proj.bias": (kv_width,),
        "self_attn.o_proj.weight": (hp.hidden_size, q_width),
        "post_attention_layernorm.weight": (hp.hidden_size,),
        "mlp.gate_proj.weight": (hp.intermediate_size, hp.hidden_size),
        "mlp.up_proj.weight": (hp.intermediate_size, hp.hidden_size),
        "mlp.down_proj.weight": (hp.hidden_size, hp.intermediate_size),
    }
    assert {k.rsplit(".", 1)[0] for k in per_block} == set(BLOCK_TENSORS)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (hp.vocab_size, hp.hidden_size)
    }
    for bid in range(hp.n_layers):
        shapes.update({f"model.layers.{bid}.{name}": shape for name, shape in per_block.items()})
    shapes["model.norm.weight"] = (hp.hidden_size,)
    if not hp.tie_word_embeddings:
        shapes["lm_head.weight"] = (hp.vocab_size, hp.hidden_size)
    return shapes


@dataclass(frozen=True)
class CheckpointTensor:
    name: TensorName
    source: TensorEntry


@dataclass(frozen=True)
class Checkpoint:
    model_dir: Path
    config: dict[str, Any]
    hparams: Qwen2HParams
    shards: list[SafetensorsHeader]
    # In conversion order: embeddings, blocks in order, final norm, output head.
    tensors: list[CheckpointTensor]

    @property
    def n_parameters(self) -> int:
        return sum(t.source.n_elements for t in self.tensors)


def open_checkpoint(model_dir: Path) -> Checkpoint:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConversionError(f"Checkpoint folder {model_dir} does not exist.")
    config = load_config(model_dir)
    try:
        hp = Qwen2HParams.from_config(config)
    except (AttributeError, TypeError) as e:  # a field of the wrong JSON type
        raise ConversionError(f"config.json is malformed: {e}.") from e
    layout = discover_shards(model_dir)
    shards = [read_header(path) for path in layout.paths]
    found: dict[str, TensorEntry] = {}
    for shard in shards:
        for name, entry in shard.tensors.items():
            if name in found:
                raise ConversionError(
                    f"Tensor {name!r} appears in both {found[name].path.name} "
                    f"and {shard.path.name}."
                )
            found[name] = entry
    if layout.weight_map is not None:
        _check_against_index(found, layout.weight_map)
    return Checkpoint(model_dir, config, hp, shards, _match_tensors(found, hp))


@dataclass(frozen=True)
class ShardLayout:
    paths: list[Path]
    # tensor name -> shard file name, from model.safetensors.index.json; None when unsharded.
    weight_map: dict[str, str] | None


def discover_shards(model_dir: Path) -> ShardLayout:
    """The safetensors files that make up the checkpoint, checked against the index if sharded."""
    index_path = model_dir / INDEX_FILE
    on_disk = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
    if index_path.is_file():
        return _shards_from_index(index_path, on_disk)
    if (model_dir / SINGLE_FILE).is_file():
        return ShardLayout([model_dir / SINGLE_FILE], None)
    if any(_SHARD_NAME.fullmatch(p.name) for p in on_disk):
        raise ConversionError(
            f"{model_dir} holds sharded weights ({on_disk[0].name}, ...) but no {INDEX_FILE}; "
            f"download the index too."
        )
    if len(on_disk) == 1:
        return ShardLayout(on_disk, None)
    if on_disk:
        raise ConversionError(
            f"{model_dir} holds several safetensors files but no {INDEX_FILE} saying how they "
            f"fit together."
        )
    legacy = next((p.name for p in model_dir.glob("pytorch_model*.bin")), None)
    hint = f" (found {legacy}: PyTorch .bin checkpoints are not supported)" if legacy else ""
    raise ConversionError(f"No safetensors weights in {model_dir}{hint}.")


def _shards_from_index(index_path: Path, on_disk: list[Path]) -> ShardLayout:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise TypeError("weight_map must map tensor names to file names")
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as e:
        raise ConversionError(f"{index_path.name} is unreadable or malformed: {e}.") from e
    listed = sorted(set(weight_map.values()))
    model_dir = index_path.parent
    missing = [name for name in listed if not (model_dir / name).is_file()]
    if missing:
        raise ConversionError(
            f"Missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(listed in {index_path.name}); the download is incomplete."
        )
    extra = [p.name for p in on_disk if p.name not in listed]
    if extra:
        raise ConversionError(
            f"Extra shard{'s' if len(extra) > 1 else ''} {', '.join(extra)} not listed in "
            f"{index_path.name}; the folder mixes two checkpoints. Remove the extra files."
        )
    _check_shard_numbering(listed, index_path.name)
    return ShardLayout([model_dir / name for name in listed], dict(weight_map))


def _check_against_index(found: dict[str, TensorEntry], weight_map: dict[str, str]) -> None:
    for name, entry in found.items():
        listed = weight_map.get(name)
        if listed != entry.path.name:
            where = f"places it in {listed}" if listed else "does not list it"
            raise ConversionError(
                f"Tensor {name!r} is in {entry.path.name}, but {INDEX_FILE} {where}; "
                f"the shards and the index come from different uploads."
            )
    for name, listed in weight_map.items():
        if name not in found:
            raise ConversionError(
                f"{INDEX_FILE} places tensor {name!r} in {listed}, which does not contain it; "
                f"that shard is damaged or from another upload."
            )


def _check_shard_numbering(names: list[str], index_name: str) -> None:
    # An index from a broken upload can omit a whole shard; the "-of-N" names still tell.
    numbered = [m for m in map(_SHARD_NAME.fullmatch, names) if m]
    if len(numbered) != len(names) or not numbered:
        return
    counts = {int(m["count"]) for m in numbered}
    indices = {int(m["index"]) for m in numbered}
    if len(counts) == 1 and indices != set(range(1, counts.pop() + 1)):
        raise ConversionError(
            f"{index_name} lists shards {', '.join(names)}, which skip part of the numbering; "
            f"a shard is missing."
        )


def _match_tensors(found: dict[str, TensorEntry], hp: Qwen2HParams) -> list[CheckpointTensor]:
    expected = expected_shapes(hp)
    unknown = [n for n in found if n not in expected and not is_ignored(n)]
    if hp.tie_word_embeddings and "lm_head.weight" in unknown:
        # HF ties the head to the embeddings and ignores a saved copy; so does llama.cpp.
        unknown.remove("lm_head.weight")
    if unknown:
        raise ConversionError(
            f"Unexpected tensor{'s' if len(unknown) > 1 else ''} for a {hp.n_layers}-layer "
            f"{SUPPORTED_ARCHITECTURE}: {_sample(unknown)}; the checkpoint does not match "
            f"config.json."
        )
    missing = [n for n in expected if n not in found]
    if missing:
        raise ConversionError(
            f"The checkpoint is missing {len(missing)} tensor{'s' if len(missing) > 1 else ''}: "
            f"{_sample(missing)}."
        )
    tensors = []
    for name, shape in expected.items():
        entry = found[name]
        if entry.shape != shape:
            raise ConversionError(
                f"Tensor {name!r} in {entry.path.name} has shape {list(entry.shape)}, but "
                f"config.json implies {list(shape)}."
            )
        gguf_name = to_gguf_name(name)
        assert gguf_name is not None, name
        tensors.append(CheckpointTensor(gguf_name, entry))
    return tensors


def _sample(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
