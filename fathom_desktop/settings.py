"""Every user setting, declared once; the store that validates, persists and upgrades them.

`SETTINGS` is the one table. The settings dialog builds its editors from it, the store validates
against it, and the JSON file on disk is written from it. Adding a setting means adding one row
here (and, if it changes the file's shape, an upgrade step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import get_args

from fathom_desktop import paths
from fathom_desktop.engine.types import (
    FATHOM_EVAL_INSTRUCTION,
    FATHOM_N_CTX,
    KvCacheType,
    LoadOptions,
    SamplingParams,
)

log = logging.getLogger(__name__)

# Version of the settings file's layout. Bump it together with a step in `_UPGRADES`.
SCHEMA_VERSION = 1

# llama.cpp rejects a quantized V cache unless flash attention is on.
KV_CACHE_TYPES: tuple[str, ...] = get_args(KvCacheType)
QUANTIZED_KV_CACHE_TYPES = tuple(t for t in KV_CACHE_TYPES if t != "f16")

# Qwen2's trained context (max_position_embeddings of Fathom-R1-14B); the dialog also checks the
# chosen model's own n_ctx_train.
MAX_CONTEXT = 131072


class SettingGroup(StrEnum):
    MODEL = "Model"
    SAMPLING = "Sampling"
    PROMPT = "Prompt"
    APPEARANCE = "Appearance"


class SystemPreset(StrEnum):
    FATHOM_EVAL = "fathom_eval"
    NONE = "none"
    CUSTOM = "custom"


def describe_preset(preset: str) -> str:
    """What the preset sends and where, as the chat sends it (engine/chat_template.py:
    `with_eval_instruction` puts Fathom's instruction in the user's turn, not a system message)."""
    if preset == SystemPreset.FATHOM_EVAL:
        return (
            "No system message is sent. Your newest message is sent with this line added below "
            f"it: “{FATHOM_EVAL_INSTRUCTION}” Fathom-R1 was evaluated this way; earlier messages "
            "are sent as you wrote them."
        )
    if preset == SystemPreset.CUSTOM:
        return (
            "The text below is sent as a system message, at the start of the prompt before the "
            "conversation; your messages are sent as you wrote them."
        )
    return "No system message is sent, and your messages are sent as you wrote them."


class ModelSource(StrEnum):
    LOCAL = "local"
    SERVER = "server"


class Theme(StrEnum):
    SYSTEM = "system"
    LIGHT = "light"
    DARK = "dark"


class SettingsValueError(ValueError):
    """A value a setting cannot take; str(error) is the reason, one line, fit to show a user."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


class SettingsSaveError(OSError):
    """The settings file could not be written; str(error) is one readable line."""


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: everything the store, the dialog and the window need."""

    key: str
    type: type  # bool, int, float or str
    default: object
    label: str
    group: SettingGroup
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    # Display names for `choices`, same order; the raw value is shown when empty.
    choice_labels: tuple[str, ...] = ()
    # When set, None is a valid value and the dialog shows it under this name ("auto", "random").
    none_label: str | None = None
    multiline: bool = False
    # Decimal places a float editor shows.
    decimals: int = 2
    # The step of a number editor's arrows where the smallest change is too fine to be useful.
    step: float | None = None
    # The `LoadOptions` field this setting feeds; such a setting takes effect only by loading
    # the model again.
    load_option: str | None = None

    @property
    def reloads_model(self) -> bool:
        return self.load_option is not None

    def validate(self, value: object) -> object:
        """Return `value` in this setting's type, or raise SettingsValueError with the reason."""
        if value is None:
            if self.none_label is None:
                raise SettingsValueError(self.key, f"{self.label} needs a value.")
            return None
        value = self._coerce(value)
        if self.choices and value not in self.choices:
            allowed = ", ".join(self.choices)
            raise SettingsValueError(self.key, f"{self.label} must be one of: {allowed}.")
        if isinstance(value, int | float) and not isinstance(value, bool):
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                raise SettingsValueError(
                    self.key, f"{self.label} must be between {_show(low)} and {_show(high)}."
                )
        return value

    def _coerce(self, value: object) -> object:
        wrong = SettingsValueError(self.key, f"{self.label} must be {_TYPE_WORDS[self.type]}.")
        # bool is an int subclass in Python; a checkbox value is never a number here.
        if self.type is bool:
            if not isinstance(value, bool):
                raise wrong
            return value
        if isinstance(value, bool):
            raise wrong
        if self.type is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if not isinstance(value, int):
                raise wrong
            return value
        if self.type is float:
            if not isinstance(value, int | float) or value != value:  # NaN compares unequal
                raise wrong
            return float(value)
        if self.type is str and isinstance(value, os.PathLike):
            return os.fspath(value)  # model_path may arrive as a Path
        if not isinstance(value, self.type):
            raise wrong
        return value

    def choice_label(self, choice: str) -> str:
        if self.choice_labels:
            return self.choice_labels[self.choices.index(choice)]
        return choice


_TYPE_WORDS = {bool: "on or off", int: "a whole number", float: "a number", str: "text"}


def _show(bound: float | None) -> str:
    if bound is None:
        return "any"
    return str(int(bound)) if float(bound).is_integer() else str(bound)


_SAMPLING = SamplingParams()
_LOAD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LoadOptions)}
_M, _S, _P, _A = (
    SettingGroup.MODEL,
    SettingGroup.SAMPLING,
    SettingGroup.PROMPT,
    SettingGroup.APPEARANCE,
)

SETTINGS: tuple[Setting, ...] = (
    # Model
    Setting("model_path", str, None, "Model file", _M,
            "The GGUF file to chat with.", none_label="none chosen", load_option="model_path"),
    Setting("n_gpu_layers", int, _LOAD_DEFAULTS["n_gpu_layers"], "GPU layers", _M,
            "Layers to run on the GPU, counted as llama.cpp counts them: the transformer blocks "
            "plus the output layer (49 for Fathom-R1-14B). Auto offloads as many as fit in free "
            "VRAM.", minimum=0, maximum=999, none_label="auto", load_option="n_gpu_layers"),
    # The minimum: below 512 tokens the R1 chat template plus one short exchange no longer fits.
    Setting("n_ctx", int, FATHOM_N_CTX, "Context length", _M,
            "Tokens the model can see at once (prompt, history, reasoning and answer). "
            "More needs more memory.", minimum=512, maximum=MAX_CONTEXT, step=1024,
            load_option="n_ctx"),
    Setting("kv_cache_type", str, _LOAD_DEFAULTS["kv_cache_type"], "KV cache type", _M,
            "q8_0 and q4_0 halve or quarter the cache's memory; they need flash attention.",
            choices=KV_CACHE_TYPES, load_option="kv_cache_type"),
    Setting("flash_attn", bool, _LOAD_DEFAULTS["flash_attn"], "Flash attention", _M,
            "Faster, leaner attention; auto turns it on when this build of llama.cpp supports it.",
            none_label="auto", load_option="flash_attn"),
    Setting("n_threads", int, _LOAD_DEFAULTS["n_threads"], "CPU threads", _M,
            "Threads for the layers that run on the CPU.", minimum=1, maximum=512,
            none_label="auto", load_option="n_threads"),
    # Where the model runs (gui/remote_settings.py edits these; the server's key is in the keyring)
    Setting("model_source", str, ModelSource.LOCAL.value, "Model", _M,
            "Chat with a GGUF file on this computer, or with a model an OpenAI-compatible server "
            "runs (vLLM, llama.cpp's server, fathom-serve).",
            choices=tuple(m.value for m in ModelSource),
            choice_labels=("A local GGUF", "An OpenAI-compatible server")),
    Setting("server_url", str, "", "Server URL", _M,
            "The server's API address, e.g. http://gpu-box:8000/v1."),
    Setting("server_model", str, None, "Server model", _M,
            "The model to use on the server.", none_label="the first it lists"),
    # The app's own API server (off by default; its key is in the keyring)
    Setting("api_server_enabled", bool, False, "Local API server", _M,
            "Serve the loaded model to other programs through an OpenAI-compatible API while "
            "the app is open."),
    Setting("api_server_host", str, "127.0.0.1", "API server address", _M,
            "127.0.0.1 serves this computer only; any other address needs an API key."),
    Setting("api_server_port", int, 8080, "API server port", _M, minimum=1, maximum=65535),
    # Sampling
    Setting("temperature", float, _SAMPLING.temperature, "Temperature", _S,
            "Randomness; Fathom-R1 is tuned for 0.6. Low values can make it loop.",
            minimum=0.0, maximum=2.0, step=0.05),
    Setting("top_p", float, _SAMPLING.top_p, "Top-p", _S,
            "Sample only from the most likely tokens whose probabilities add up to this.",
            minimum=0.0, maximum=1.0),
    Setting("top_k", int, _SAMPLING.top_k, "Top-k", _S,
            "Sample only from this many most likely tokens; 0 turns the limit off.",
            minimum=0, maximum=1000),
    Setting("min_p", float, _SAMPLING.min_p, "Min-p", _S,
            "Drop tokens less likely than this fraction of the most likely one.",
            minimum=0.0, maximum=1.0),
    Setting("repeat_penalty", float, _SAMPLING.repeat_penalty, "Repeat penalty", _S,
            "Values above 1 discourage repeating recent tokens.", minimum=1.0, maximum=2.0),
    Setting("seed", int, _SAMPLING.seed, "Seed", _S,
            "The same seed, prompt and settings give the same reply.",
            minimum=0, maximum=2**31 - 1, none_label="random"),
    Setting("max_tokens", int, _SAMPLING.max_tokens, "Max tokens", _S,
            "Longest reply, reasoning included; unlimited runs until the context is full.",
            minimum=1, maximum=MAX_CONTEXT, none_label="unlimited", step=256),
    Setting("thinking_budget", int, _SAMPLING.thinking_budget, "Thinking budget", _S,
            "Reasoning tokens after which the model is told to answer.",
            minimum=0, maximum=MAX_CONTEXT, none_label="unlimited", step=256),
    Setting("consensus_parallel", int, None, "Samples at once", _S,
            "Consensus ×K decodes this many samples together at most; auto takes as many as "
            "fit in memory next to the model.",
            minimum=1, maximum=64, none_label="auto"),
    # Prompt
    Setting("system_preset", str, SystemPreset.FATHOM_EVAL.value, "Prompt preset", _P,
            "Fathom's evaluation instruction asks for step-by-step reasoning and a boxed answer "
            "in your message; a custom preset sends a system message of your own.",
            choices=tuple(p.value for p in SystemPreset),
            choice_labels=("Fathom evaluation instruction", "None", "Custom")),
    Setting("system_prompt", str, "", "Custom system prompt", _P,
            "Used when the system prompt is set to Custom.", multiline=True),
    # Appearance
    Setting("theme", str, Theme.SYSTEM.value, "Theme", _A,
            choices=tuple(t.value for t in Theme), choice_labels=("System", "Light", "Dark")),
    Setting("collapse_reasoning_when_answering", bool, True, "Collapse reasoning when answering",
            _A,
            "Fold the reasoning pane away once the answer starts."),
)  # fmt: skip

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
# Settings that take effect only by loading the model again.
LOAD_KEYS = frozenset(s.key for s in SETTINGS if s.reloads_model)
assert {s.load_option for s in SETTINGS if s.reloads_model} == set(_LOAD_DEFAULTS)


def defaults() -> dict[str, object]:
    return {s.key: s.default for s in SETTINGS}


def load_settings(options: LoadOptions) -> dict[str, object]:
    """The settings that give `options` (to go back to a model that loaded)."""
    values = {s.key: getattr(options, s.load_option) for s in SETTINGS if s.load_option}
    values["model_path"] = str(options.model_path)
    return values


def _label(key: str) -> str:
    return SETTINGS_BY_KEY[key].label


# Rules that involve more than one setting. Each returns the offending key and the reason.
def _quantized_kv_needs_flash_attn(values: Mapping[str, object]) -> SettingsValueError | None:
    kv = values["kv_cache_type"]
    if kv in QUANTIZED_KV_CACHE_TYPES and values["flash_attn"] is False:
        return SettingsValueError(
            "kv_cache_type",
            f"A {kv} KV cache needs flash attention: set flash attention to on or auto, "
            "or use an f16 KV cache.",
        )
    return None


def _max_tokens_within_context(values: Mapping[str, object]) -> SettingsValueError | None:
    max_tokens, n_ctx = values["max_tokens"], values["n_ctx"]
    if isinstance(max_tokens, int) and isinstance(n_ctx, int) and max_tokens > n_ctx:
        return SettingsValueError(
            "max_tokens",
            f"{_label('max_tokens')} ({max_tokens}) cannot exceed the "
            f"{_label('n_ctx').lower()} ({n_ctx}).",
        )
    return None


def _thinking_leaves_room_to_answer(values: Mapping[str, object]) -> SettingsValueError | None:
    budget, max_tokens = values["thinking_budget"], values["max_tokens"]
    if isinstance(budget, int) and isinstance(max_tokens, int) and budget >= max_tokens:
        return SettingsValueError(
            "thinking_budget",
            f"The thinking budget ({budget}) must be below max tokens ({max_tokens}) "
            "to leave room for the answer.",
        )
    return None


def _server_needs_url(values: Mapping[str, object]) -> SettingsValueError | None:
    if values["model_source"] != ModelSource.SERVER:
        return None
    url = str(values["server_url"] or "").strip()
    if not url:
        return SettingsValueError(
            "server_url", "Enter the server's URL, e.g. http://gpu-box:8000/v1."
        )
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        return SettingsValueError(
            "server_url", f"The server URL must start with http:// or https:// (not {url!r})."
        )
    return None


CROSS_RULES: tuple[Callable[[Mapping[str, object]], SettingsValueError | None], ...] = (
    _quantized_kv_needs_flash_attn,
    _max_tokens_within_context,
    _thinking_leaves_room_to_answer,
    _server_needs_url,
)


def validate_all(values: Mapping[str, object]) -> dict[str, object]:
    """Check a complete set of values; return them typed or raise the first problem found."""
    checked = {s.key: s.validate(values[s.key]) for s in SETTINGS}
    for rule in CROSS_RULES:
        problem = rule(checked)
        if problem is not None:
            raise problem
    return checked


# Upgrade steps: _UPGRADES[n] turns a version-n document into a version-(n+1) one.
def _upgrade_0_to_1(document: dict) -> dict:
    # Version 0 is a bare {key: value} object with no version field, which is also what a
    # hand-written file most likely looks like.
    return {"schema_version": 1, "settings": dict(document)}


_UPGRADES: dict[int, Callable[[dict], dict]] = {0: _upgrade_0_to_1}


def upgrade(document: dict) -> dict:
    version = document.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"schema_version {version!r} is not a version number")
    while version < SCHEMA_VERSION:
        document = _UPGRADES[version](document)
        version = document["schema_version"]
    return document


class SettingsStore:
    """The current settings, validated against `SETTINGS`, saved as JSON in the config folder.

    `warnings` holds one-line messages about a settings file that could not be used as it was.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._values = defaults()
        # Keys this version does not know (a newer version's, or a typo) are written back as found.
        self._unknown: dict[str, object] = {}
        self.warnings: list[str] = []

    @classmethod
    def load(cls, path: Path | None = None) -> SettingsStore:
        """Read the settings file (default: the user's); a bad file never stops the app."""
        store = cls(Path(path) if path is not None else paths.settings_file())
        store._read()
        for warning in store.warnings:
            log.warning("%s", warning)
        return store

    # -- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as error:
            self._whole_file_unusable(f"could not be read ({_reason(error)})")
            return
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            self._whole_file_unusable(f"is not valid JSON (line {error.lineno}: {error.msg})")
            return
        if not isinstance(document, dict):
            self._whole_file_unusable("does not hold a JSON object")
            return
        version = document.get("schema_version", 0)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            self.warnings.append(
                f"Settings file {self.path} is from a newer Fathom Desktop (schema {version}); "
                "using the settings this version understands."
            )
        else:
            try:
                document = upgrade(document)
            except (ValueError, KeyError, TypeError) as error:
                self._whole_file_unusable(f"could not be upgraded ({error})")
                return
        raw = document.get("settings")
        if not isinstance(raw, dict):
            self._whole_file_unusable('has no "settings" object')
            return
        self._take(raw)

    def _take(self, raw: dict) -> None:
        rejected: list[str] = []
        values = defaults()
        for key, value in raw.items():
            setting = SETTINGS_BY_KEY.get(key)
            if setting is None:
                self._unknown[key] = value
                continue
            try:
                values[key] = setting.validate(value)
            except SettingsValueError as error:
                rejected.append(f"{key} ({error.reason.rstrip('.')})")
        for rule in CROSS_RULES:
            problem = rule(values)
            if problem is not None:
                rejected.append(f"{problem.key} ({problem.reason.rstrip('.')})")
                values[problem.key] = SETTINGS_BY_KEY[problem.key].default
        self._values = values
        if rejected:
            self._keep_copy_of_bad_file()
            self.warnings.append(
                f"Settings file {self.path}: using the default for {'; '.join(rejected)}; "
                "every other setting was kept."
            )
        if self._unknown:
            names = ", ".join(sorted(self._unknown))
            self.warnings.append(
                f"Settings file {self.path} has settings this version does not know ({names}); "
                "they are left as they are."
            )

    def _whole_file_unusable(self, what: str) -> None:
        backup = self._keep_copy_of_bad_file()
        kept = f" A copy was kept as {backup.name}." if backup else ""
        self.warnings.append(f"Settings file {self.path} {what}; using the defaults.{kept}")

    def _keep_copy_of_bad_file(self) -> Path | None:
        # The next save overwrites the file, so the user's hand edits are copied aside first.
        assert self.path is not None
        backup = self.path.with_name(self.path.name + ".bad")
        try:
            shutil.copyfile(self.path, backup)
        except OSError:
            return None
        return backup

    # -- values ------------------------------------------------------------------------------

    def get(self, key: str) -> object:
        return self._values[key]

    def as_dict(self) -> dict[str, object]:
        return dict(self._values)

    def set(self, key: str, value: object) -> None:
        """Validate and apply one value (not saved until save()); raises SettingsValueError."""
        self.update({key: value})

    def check(self, changes: Mapping[str, object]) -> dict[str, object]:
        """Return the complete settings `changes` would produce, or raise SettingsValueError."""
        for key in changes:
            if key not in SETTINGS_BY_KEY:
                raise SettingsValueError(key, f"There is no setting called {key!r}.")
        return validate_all({**self._values, **changes})

    def update(self, changes: Mapping[str, object]) -> list[str]:
        """Apply several values together (all or none); return the keys whose value changed."""
        candidate = self.check(changes)
        changed = [key for key, value in candidate.items() if self._values[key] != value]
        self._values = candidate
        return changed

    def reset(self) -> list[str]:
        return self.update(defaults())

    # -- writing -----------------------------------------------------------------------------

    def save(self) -> None:
        """Write the file atomically: a crash mid-write leaves the previous file intact."""
        path = self.path if self.path is not None else paths.settings_file()
        document = {
            "schema_version": SCHEMA_VERSION,
            "settings": {**self._unknown, **self._values},
        }
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        try:
            paths.write_text_atomically(path, text)
        except OSError as error:
            raise SettingsSaveError(
                f"Could not save settings to {path}: {_reason(error)}."
            ) from error
        self.path = path

    # -- what the engine and the chat need -----------------------------------------------

    def load_options(self, model_path: Path | None = None) -> LoadOptions:
        """The engine's load options; `model_path` stands in when none is configured (the demo)."""
        if model_path is None:
            model_path = self._values["model_path"]
        if not isinstance(model_path, str | Path) or not str(model_path):
            raise SettingsValueError("model_path", "No model file is chosen yet.")
        fields = {s.load_option: self._values[s.key] for s in SETTINGS if s.load_option}
        return LoadOptions(**{**fields, "model_path": Path(model_path)})  # type: ignore[arg-type]

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=float(self._values["temperature"]),  # type: ignore[arg-type]
            top_p=float(self._values["top_p"]),  # type: ignore[arg-type]
            top_k=self._int("top_k"),
            min_p=float(self._values["min_p"]),  # type: ignore[arg-type]
            repeat_penalty=float(self._values["repeat_penalty"]),  # type: ignore[arg-type]
            seed=self._optional_int("seed"),
            max_tokens=self._optional_int("max_tokens"),
            thinking_budget=self._optional_int("thinking_budget"),
        )

    def system_prompt(self) -> str:
        """The system message to send ("" for none), following the chosen preset.

        Fathom's evaluation preset sends none: its instruction goes into the user's message.
        """
        if self._values["system_preset"] == SystemPreset.CUSTOM:
            return str(self._values["system_prompt"]).strip()
        return ""

    def _int(self, key: str) -> int:
        value = self._values[key]
        assert isinstance(value, int)
        return value

    def _optional_int(self, key: str) -> int | None:
        value = self._values[key]
        assert value is None or isinstance(value, int)
        return value


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__
