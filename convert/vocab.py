"""The checkpoint's tokenizer, turned into the GGUF metadata llama.cpp tokenizes with.

llama.cpp does not run tokenizer.json: it re-implements each known pre-tokenizer and picks one by
the ``tokenizer.ggml.pre`` name. That name must therefore be right, so it is chosen from what the
tokenizer *is* (a byte-level BPE with Qwen2's split regex, and which special tokens it carries),
and anything else is refused rather than guessed. The `tokenizers` library is not needed.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from convert.errors import ConversionError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Qwen2's pre-tokenizer regex exactly as tokenizer.json spells it.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
R1_MARKERS = ("<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
QWEN2_MARKERS = ("<|endoftext|>", "<|im_start|>")
# Normalizers llama.cpp's BPE path can stand in for: none, or NFC. llama.cpp skips NFC, so NFC
# text (the normal case) tokenizes the same, and whoever feeds it text must NFC-normalize first.
_ACCEPTED_NORMALIZERS = (None, "NFC")
# U+2581, SentencePiece's visible space; llama.cpp expects real spaces in user-defined tokens.
_SPM_SPACE = "\u2581"


class PreTokenizer(enum.StrEnum):
    """Names llama.cpp maps to its pre-tokenizer implementations (``tokenizer.ggml.pre``)."""

    DEEPSEEK_R1_QWEN = "deepseek-r1-qwen"
    QWEN2 = "qwen2"


TOKENIZER_MODEL = "gpt2"  # llama.cpp's name for byte-level BPE


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[gguf.TokenType]
    merges: list[str]
    pre: PreTokenizer
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    chat_template: str | list[dict[str, str]] | None


def load_vocab(model_dir: Path, vocab_size: int, config: Mapping[str, Any]) -> Vocab:
    try:
        return _load_vocab(Path(model_dir), vocab_size, config)
    except (AttributeError, TypeError, KeyError) as e:  # a field of the wrong JSON type
        raise ConversionError(f"The tokenizer files are malformed: {e!r}.") from e


def _load_vocab(model_dir: Path, vocab_size: int, config: Mapping[str, Any]) -> Vocab:
    tokenizer = _read_json(model_dir / TOKENIZER_FILE, required=True)
    tokenizer_config = _read_json(model_dir / TOKENIZER_CONFIG_FILE, required=False) or {}
    pre = identify_pre_tokenizer(tokenizer)
    tokens, token_types = _token_table(tokenizer, vocab_size)
    ids = {token: i for i, token in enumerate(tokens)}

    def special_id(kind: str) -> int | None:
        value = tokenizer_config.get(f"{kind}_token")
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str):
            if content not in ids:
                raise ConversionError(
                    f"{TOKENIZER_CONFIG_FILE} names {content!r} as the {kind.upper()} token, but "
                    f"the tokenizer has no such token."
                )
            return ids[content]
        fallback = config.get(f"{kind}_token_id")
        if isinstance(fallback, list):  # some configs list several EOS ids; the first is primary
            fallback = fallback[0] if fallback else None
        if isinstance(fallback, int) and 0 <= fallback < vocab_size:
            return fallback
        return None

    return Vocab(
        tokens=tokens,
        token_types=token_types,
        merges=_merges(tokenizer),
        pre=pre,
        bos_id=special_id("bos"),
        eos_id=special_id("eos"),
        pad_id=special_id("pad"),
        add_bos=_add_flag(tokenizer_config, tokenizer, "bos"),
        add_eos=_add_flag(tokenizer_config, tokenizer, "eos"),
        chat_template=_chat_template(model_dir, tokenizer_config),
    )


def _read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise ConversionError(
                f"{path.parent} has no {path.name}; the converter needs the fast (JSON) tokenizer."
            )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConversionError(f"Cannot read {path.name}: {e}.") from e
    if not isinstance(data, dict):
        raise ConversionError(f"{path.name} is not a JSON object.")
    return data


def identify_pre_tokenizer(tokenizer: Mapping[str, Any]) -> PreTokenizer:
    """Fingerprint tokenizer.json structurally and name llama.cpp's matching pre-tokenizer."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(
            f"Unknown tokenizer: model type {model.get('type')!r}; only Qwen2's byte-level BPE "
            f"is supported."
        )
    normalizer = (tokenizer.get("normalizer") or {}).get("type")
    if normalizer not in _ACCEPTED_NORMALIZERS:
        raise ConversionError(
            f"Unknown tokenizer: normalizer {normalizer!r} is not Qwen2's (NFC); llama.cpp would "
            f"tokenize differently."
        )
    steps = _pre_tokenizer_steps(tokenizer.get("pre_tokenizer"))
    if not _is_qwen2_pre_tokenizer(steps):
        raise ConversionError(
            f"Unknown tokenizer: its pre-tokenizer is {_describe(steps)}, not Qwen2's byte-level "
            f"split; llama.cpp would tokenize it differently."
        )
    added = {t.get("content") for t in tokenizer.get("added_tokens") or []}
    if all(marker in added for marker in R1_MARKERS):
        return PreTokenizer.DEEPSEEK_R1_QWEN
    if all(marker in added for marker in QWEN2_MARKERS):
        return PreTokenizer.QWEN2
    raise ConversionError(
        f"Unknown tokenizer: Qwen2's pre-tokenizer, but its special tokens are neither "
        f"DeepSeek-R1's ({_presence(R1_MARKERS, added)}) nor Qwen2's "
        f"({_presence(QWEN2_MARKERS, added)})."
    )


def _presence(markers: Sequence[str], added: set[Any]) -> str:
    found = [m for m in markers if m in added]
    missing = [m for m in markers if m not in added]
    parts = [f"has {', '.join(found)}"] if found else []
    return "; ".join([*parts, f"lacks {', '.join(missing)}"])


def _pre_tokenizer_steps(pre: Any) -> list[dict[str, Any]]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for p in pre.get("pretokenizers") or [] if isinstance(p, dict)]
    return [pre]


def _is_qwen2_pre_tokenizer(steps: list[dict[str, Any]]) -> bool:
    if len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and (split.get("pattern") or {}).get("Regex") == QWEN2_SPLIT_REGEX
        and split.get("behavior") == "Isolated"
        and not split.get("invert", False)
        and byte_level.get("type") == "ByteLevel"
        # The split already happened; a second GPT-2 regex pass would change the pieces.
        and not byte_level.get("use_regex", True)
        and not byte_level.get("add_prefix_space", False)
    )


def _describe(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "missing"
    parts = []
    for step in steps:
        regex = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        parts.append(f"{step.get('type')}({regex[:40]!r}...)" if regex else str(step.get("type")))
    return " + ".join(parts)


def _looks_special(text: str) -> bool:
    # Same reading as llama.cpp's converter: <|...|> and DeepSeek's full-width <｜...｜> are control
    # tokens even when a tokenizer forgets to mark them special.
    return (text.startswith("<|") and text.endswith("|>")) or (
        text.startswith("<｜") and text.endswith("｜>")
    )


def _token_table(
    tokenizer: Mapping[str, Any], vocab_size: int
) -> tuple[list[str], list[gguf.TokenType]]:
    base = (tokenizer.get("model") or {}).get("vocab")
    if not isinstance(base, dict) or not base:
        raise ConversionError(f"{TOKENIZER_FILE} has no BPE vocabulary.")
    by_id: dict[int, tuple[str, gguf.TokenType]] = {}
    for text, token_id in base.items():
        by_id[token_id] = (text, gguf.TokenType.NORMAL)
    for added in tokenizer.get("added_tokens") or []:
        text, token_id = added.get("content"), added.get("id")
        if not isinstance(text, str) or type(token_id) is not int:
            raise ConversionError(f"{TOKENIZER_FILE} has a malformed added token: {added!r}.")
        if added.get("special") or _looks_special(text):
            by_id[token_id] = (text, gguf.TokenType.CONTROL)
        else:
            by_id[token_id] = (text.replace(_SPM_SPACE, " "), gguf.TokenType.USER_DEFINED)
    highest = max(by_id)
    if highest >= vocab_size or min(by_id) < 0:
        raise ConversionError(
            f"The tokenizer has token id {highest}, but config.json's vocab_size is {vocab_size}; "
            f"the tokenizer does not belong to this model."
        )
    tokens: list[str] = []
    types: list[gguf.TokenType] = []
    for i in range(vocab_size):
        # The embedding matrix is padded past the tokenizer (to a multiple of 128 or so); llama.cpp
        # needs a token for every row, and these must never be produced.
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(kind)
    return tokens, types


def _merges(tokenizer: Mapping[str, Any]) -> list[str]:
    merges = (tokenizer.get("model") or {}).get("merges")
    if not isinstance(merges, list) or not merges:
        raise ConversionError(f"{TOKENIZER_FILE} has no BPE merges.")
    if all(isinstance(m, str) for m in merges):
        return list(merges)
    if all(
        isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m) for m in merges
    ):
        # The newer pair spelling allows spaces inside a part; llama.cpp splits "a b" on the space,
        # so a literal space is written as its byte-level stand-in U+0120, as gguf-py does.
        return [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
    raise ConversionError(f"{TOKENIZER_FILE} has merges in an unknown format.")


def _add_flag(
    tokenizer_config: Mapping[str, Any], tokenizer: Mapping[str, Any], kind: str
) -> bool | None:
    value = tokenizer_config.get(f"add_{kind}_token")
    if isinstance(value, bool):
        return value
    # Without an explicit flag, the post-processor says whether encoding adds the token.
    post = tokenizer.get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        if not single:
            return False
        edge = single[0] if kind == "bos" else single[-1]
        return isinstance(edge, dict) and "SpecialToken" in edge
    if post.get("type") == "ByteLevel":
        return False
    return None


def _chat_template(
    model_dir: Path, tokenizer_config: Mapping[str, Any]
) -> str | list[dict[str, str]] | None:
    # transformers lets chat_template.jinja override the config's copy; so do we.
    template_file = model_dir / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        try:
            return template_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConversionError(f"Cannot read {CHAT_TEMPLATE_FILE}: {e}.") from e
    template = tokenizer_config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, Sequence) and all(
        isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("template"), str)
        for t in template
    ):
        return [{"name": t["name"], "template": t["template"]} for t in template]
    raise ConversionError(f"{TOKENIZER_CONFIG_FILE} has a chat_template in an unknown format.")


def add_vocab_to_gguf(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(vocab.pre.value)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
