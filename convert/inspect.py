"""What a GGUF holds, checked against what Fathom Desktop needs from it.

Read with convert.gguf_header (gguf-py's constants, no llama.cpp): a 30 GB file is mapped, not
loaded, and the 152k-entry vocabulary takes well under a second.
The checks that matter to the app: `<think>`/`</think>` must be USER_DEFINED tokens or llama.cpp
drops them from detokenized text, and the chat template decides whether the prompt already opens
the reasoning (the current R1 template) or the model writes `<think>` itself (the legacy one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from convert.errors import ConversionError
from convert.gguf_header import GgufFormatError, GgufHeader, file_type_name, read_gguf_header
from convert.units import human_size

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ChatTemplateVariant(StrEnum):
    ABSENT = "absent"
    # Current R1 templates end the prompt with "<｜Assistant｜><think>\n": the output has
    # only </think>.
    OPENS_THINK = "opens-think"
    # The legacy template ends with "<｜Assistant｜>": the model writes <think> itself.
    MODEL_OPENS_THINK = "model-opens-think"
    UNRECOGNIZED = "unrecognized"

    @property
    def description(self) -> str:
        return {
            ChatTemplateVariant.ABSENT: "no chat template",
            ChatTemplateVariant.OPENS_THINK: "opens <think> in the prompt (current R1 template)",
            ChatTemplateVariant.MODEL_OPENS_THINK: (
                "the model writes <think> itself (legacy template)"
            ),
            ChatTemplateVariant.UNRECOGNIZED: "present, but it could not be rendered",
        }[self]


@dataclass(frozen=True)
class TokenInfo:
    id: int
    text: str
    type: str  # gguf.TokenType name, e.g. "USER_DEFINED", "CONTROL"


@dataclass(frozen=True)
class GgufInfo:
    path: str
    size_bytes: int
    architecture: str | None
    name: str | None
    file_type: str
    n_params: int
    n_layers: int | None
    context_length: int | None
    embedding_length: int | None
    n_heads: int | None
    n_kv_heads: int | None
    vocab_size: int
    tokenizer_model: str | None
    pre_tokenizer: str | None
    bos: TokenInfo | None
    eos: TokenInfo | None
    # Keyed "<think>" and "</think>"; None where the vocabulary lacks the token.
    reasoning_tokens: dict[str, TokenInfo | None]
    chat_template: ChatTemplateVariant
    tensor_types: dict[str, int]
    n_tensors: int
    problems: list[str] = field(default_factory=list)

    @property
    def reasoning_tags_ok(self) -> bool:
        tokens = self.reasoning_tokens.values()
        return all(t is not None and t.type == "USER_DEFINED" for t in tokens)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["chat_template"] = self.chat_template.value
        data["reasoning_tags_ok"] = self.reasoning_tags_ok
        return data


def open_gguf(path: Path, keep_string_arrays: frozenset[str] = frozenset()) -> GgufHeader:
    """read_gguf_header, with every failure turned into one readable ConversionError."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file.")
    try:
        return read_gguf_header(path, keep_string_arrays=keep_string_arrays)
    except GgufFormatError as e:
        raise ConversionError(f"{path.name} is not a usable GGUF file: {e}.") from e
    except OSError as e:
        raise ConversionError(f"Cannot read {path}: {e.strerror or e}.") from e


def _token_type_name(value: int) -> str:
    try:
        return gguf.TokenType(value).name
    except ValueError:
        return f"UNKNOWN({value})"


def _token(tokens: list[bytes], types: np.ndarray, token_id: int | None) -> TokenInfo | None:
    if token_id is None or not 0 <= token_id < len(tokens):
        return None
    kind = _token_type_name(int(types[token_id])) if token_id < len(types) else "UNKNOWN"
    return TokenInfo(token_id, tokens[token_id].decode("utf-8", errors="replace"), kind)


def template_variant(template: str | None, bos: str = "", eos: str = "") -> ChatTemplateVariant:
    """Render a one-question prompt and see whether it ends by opening the reasoning."""
    if not template:
        return ChatTemplateVariant.ABSENT
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        prompt = env.from_string(template).render(
            messages=[{"role": "user", "content": "What is 1+1?"}],
            add_generation_prompt=True,
            bos_token=bos,
            eos_token=eos,
        )
    except Exception:  # any template error means "we cannot tell", not a broken file
        return ChatTemplateVariant.UNRECOGNIZED
    if prompt.rstrip().endswith(THINK_OPEN):
        return ChatTemplateVariant.OPENS_THINK
    return ChatTemplateVariant.MODEL_OPENS_THINK


def inspect_gguf(path: Path) -> GgufInfo:
    K = gguf.Keys
    f = open_gguf(path, keep_string_arrays=frozenset({K.Tokenizer.LIST}))
    arch = f.string(K.General.ARCHITECTURE)
    ftype = f.integer(K.General.FILE_TYPE)
    raw_tokens = f.get(K.Tokenizer.LIST)
    tokens: list[bytes] = raw_tokens if isinstance(raw_tokens, list) else []
    raw_types = f.get(K.Tokenizer.TOKEN_TYPE)
    token_types = raw_types if isinstance(raw_types, np.ndarray) else np.zeros(0, np.int32)
    bos = _token(tokens, token_types, f.integer(K.Tokenizer.BOS_ID))
    eos = _token(tokens, token_types, f.integer(K.Tokenizer.EOS_ID))

    ids: dict[bytes, int | None] = {THINK_OPEN.encode(): None, THINK_CLOSE.encode(): None}
    for i, text in enumerate(tokens):
        if text in ids and ids[text] is None:
            ids[text] = i
    reasoning = {tag.decode(): _token(tokens, token_types, i) for tag, i in ids.items()}

    def arch_key(template: str) -> int | None:
        return f.integer(template.format(arch=arch)) if arch else None

    template = f.string(K.Tokenizer.CHAT_TEMPLATE)
    variant = template_variant(template, bos.text if bos else "", eos.text if eos else "")
    histogram = Counter(t.ggml_type.name for t in f.tensors)

    problems: list[str] = []
    if arch is None:
        problems.append("no general.architecture: llama.cpp cannot load this file")
    if not f.tensors:
        problems.append("no tensors: this is a vocabulary-only file, not a model")
    for tag, info in reasoning.items():
        if info is None:
            problems.append(f"{tag} is not in the vocabulary: reasoning cannot be separated")
        elif info.type != "USER_DEFINED":
            problems.append(
                f"{tag} (id {info.id}) is {info.type}, not USER_DEFINED: reasoning tags would "
                f"vanish from the detokenized text"
            )
    if variant is ChatTemplateVariant.ABSENT:
        problems.append("no chat template: the app falls back to its built-in R1 template")

    return GgufInfo(
        path=str(f.path),
        size_bytes=f.file_size,
        architecture=arch,
        name=f.string(K.General.NAME),
        file_type=file_type_name(ftype) if ftype is not None else "unknown",
        n_params=sum(t.n_elements for t in f.tensors),
        n_layers=arch_key(K.LLM.BLOCK_COUNT),
        context_length=arch_key(K.LLM.CONTEXT_LENGTH),
        embedding_length=arch_key(K.LLM.EMBEDDING_LENGTH),
        n_heads=arch_key(K.Attention.HEAD_COUNT),
        n_kv_heads=arch_key(K.Attention.HEAD_COUNT_KV),
        vocab_size=len(tokens),
        tokenizer_model=f.string(K.Tokenizer.MODEL),
        pre_tokenizer=f.string(K.Tokenizer.PRE),
        bos=bos,
        eos=eos,
        reasoning_tokens=reasoning,
        chat_template=variant,
        tensor_types=dict(histogram.most_common()),
        n_tensors=len(f.tensors),
        problems=problems,
    )


def _human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n:,}"


def _token_text(info: TokenInfo | None) -> str:
    return "missing" if info is None else f"{info.id} {info.text!r} ({info.type})"


def format_info(info: GgufInfo) -> str:
    """The human-readable report `fathom-convert inspect` prints."""

    def known(value: object) -> str:
        return "unknown" if value is None else str(value)

    rows = [
        ("File", f"{Path(info.path).name} ({human_size(info.size_bytes)})"),
        ("Architecture", known(info.architecture)),
        ("Name", known(info.name)),
        ("File type", info.file_type),
        ("Parameters", _human_count(info.n_params)),
        ("Layers", known(info.n_layers)),
        ("Context", f"{known(info.context_length)} tokens"),
        ("Heads", f"{known(info.n_heads)} query / {known(info.n_kv_heads)} KV"),
        ("Vocabulary", f"{info.vocab_size} tokens ({known(info.tokenizer_model)})"),
        ("Pre-tokenizer", known(info.pre_tokenizer)),
        ("BOS", _token_text(info.bos)),
        ("EOS", _token_text(info.eos)),
    ]
    for tag, token in info.reasoning_tokens.items():
        rows.append((tag, _token_text(token)))
    rows.append(("Chat template", info.chat_template.description))
    types = ", ".join(f"{name} x{count}" for name, count in info.tensor_types.items())
    rows.append(("Tensors", f"{info.n_tensors}: {types}"))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines += [f"WARNING: {problem}" for problem in info.problems]
    return "\n".join(lines)
