"""The settings table and store: validation with reasons, persistence, upgrades, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fathom_desktop import paths
from fathom_desktop.engine import llama_backend, planner
from fathom_desktop.engine.prompt import with_eval_instruction
from fathom_desktop.engine.types import (
    FATHOM_EVAL_INSTRUCTION,
    ChatMessage,
    LoadOptions,
    SamplingParams,
)
from fathom_desktop.settings import (
    LOAD_KEYS,
    SCHEMA_VERSION,
    SETTINGS,
    SETTINGS_BY_KEY,
    SettingsSaveError,
    SettingsStore,
    SettingsValueError,
    defaults,
    describe_preset,
    load_settings,
)

# The issue names these; the table may grow but must keep them.
REQUIRED_KEYS = {
    "model_path", "n_gpu_layers", "n_ctx", "kv_cache_type", "flash_attn", "n_threads",
    "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens",
    "thinking_budget", "system_prompt", "system_preset", "collapse_reasoning_when_answering",
    "theme",
}  # fmt: skip


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(paths.HOME_ENV_VAR, str(tmp_path / "home"))
    return tmp_path / "home"


def test_table_declares_every_setting_once_with_a_valid_default() -> None:
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    assert set(keys) >= REQUIRED_KEYS
    for setting in SETTINGS:
        assert setting.validate(setting.default) == setting.default, setting.key
        assert setting.label and setting.group


def test_defaults_follow_fathom_and_the_engine() -> None:
    store = SettingsStore()
    assert store.get("n_ctx") == 16384
    assert store.get("n_gpu_layers") is None  # auto
    assert store.get("theme") == "system"
    assert store.sampling() == SamplingParams()
    # Fathom's evaluation preset sends no system message: its instruction is in the user's turn.
    assert store.get("system_preset") == "fathom_eval" and store.system_prompt() == ""


def test_settings_persist_across_a_restart(fathom_home: Path) -> None:
    store = SettingsStore.load()
    store.set("temperature", 0.8)
    store.set("model_path", "/models/Fathom-R1-14B-Q4_K_M.gguf")
    store.update({"kv_cache_type": "q8_0", "flash_attn": True, "seed": 1234, "theme": "dark"})
    store.save()
    assert store.path == fathom_home / "config" / "settings.json"

    reopened = SettingsStore.load()
    assert reopened.warnings == []
    assert reopened.as_dict() == store.as_dict()
    assert reopened.get("temperature") == 0.8
    assert reopened.load_options() == LoadOptions(
        model_path=Path("/models/Fathom-R1-14B-Q4_K_M.gguf"),
        kv_cache_type="q8_0",
        flash_attn=True,
    )
    assert reopened.sampling().seed == 1234


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("temperature", 5.0, "Temperature must be between 0 and 2."),
        ("top_p", -0.1, "Top-p must be between 0 and 1."),
        ("n_ctx", 100, "Context length must be between 512 and 131072."),
        ("top_k", 2.5, "Top-k must be a whole number."),
        ("flash_attn", "yes", "Flash attention must be on or off."),
        ("theme", "purple", "Theme must be one of: system, light, dark."),
        ("temperature", None, "Temperature needs a value."),
        ("seed", True, "Seed must be a whole number."),
    ],
)
def test_bad_values_are_refused_with_a_reason(key: str, value: object, reason: str) -> None:
    store = SettingsStore()
    before = store.as_dict()
    with pytest.raises(SettingsValueError) as refused:
        store.set(key, value)
    assert str(refused.value) == reason
    assert refused.value.key == key
    assert store.as_dict() == before


def test_quantized_kv_cache_needs_flash_attention() -> None:
    store = SettingsStore()
    with pytest.raises(SettingsValueError, match="q4_0 KV cache needs flash attention"):
        store.update({"kv_cache_type": "q4_0", "flash_attn": False})
    assert store.get("kv_cache_type") == "f16" and store.get("flash_attn") is None
    # Auto turns flash attention on where the build has it, so it is accepted.
    store.update({"kv_cache_type": "q4_0", "flash_attn": None})
    with pytest.raises(SettingsValueError, match="needs flash attention"):
        store.set("flash_attn", False)


def test_rules_between_lengths() -> None:
    store = SettingsStore()
    with pytest.raises(SettingsValueError, match=r"Max tokens \(20000\) cannot exceed"):
        store.set("max_tokens", 20000)
    with pytest.raises(SettingsValueError, match="leave room for the answer"):
        store.update({"max_tokens": 4000, "thinking_budget": 4000})
    store.update({"max_tokens": 4000, "thinking_budget": 3000})
    assert store.sampling().thinking_budget == 3000


def test_update_reports_only_real_changes() -> None:
    store = SettingsStore()
    assert store.update({"temperature": 0.6, "top_k": 20}) == ["top_k"]


def test_load_options_need_a_model() -> None:
    with pytest.raises(SettingsValueError, match="No model file is chosen yet."):
        SettingsStore().load_options()


def test_custom_system_prompt() -> None:
    store = SettingsStore()
    store.update({"system_preset": "custom", "system_prompt": "  Answer in French.\n"})
    assert store.system_prompt() == "Answer in French."
    store.set("system_preset", "none")
    assert store.system_prompt() == ""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_hand_edited_bad_value_falls_back_for_that_setting_only(fathom_home: Path) -> None:
    path = paths.settings_file()
    document = {
        "schema_version": SCHEMA_VERSION,
        "settings": {"temperature": "hot", "top_k": 7, "theme": "dark", "n_ctx": 8192},
    }
    _write(path, json.dumps(document))
    store = SettingsStore.load()
    assert len(store.warnings) == 1
    warning = store.warnings[0]
    assert "\n" not in warning
    assert "temperature (Temperature must be a number)" in warning
    assert store.get("temperature") == defaults()["temperature"]
    assert (store.get("top_k"), store.get("theme"), store.get("n_ctx")) == (7, "dark", 8192)
    # The file as the user wrote it is kept beside the one the next save writes.
    assert json.loads(path.with_name("settings.json.bad").read_text()) == document


def test_hand_edited_conflicting_values_fall_back(fathom_home: Path) -> None:
    settings = {"kv_cache_type": "q8_0", "flash_attn": False, "top_p": 0.5}
    _write(paths.settings_file(), json.dumps({"schema_version": 1, "settings": settings}))
    store = SettingsStore.load()
    assert store.get("kv_cache_type") == "f16"
    assert store.get("flash_attn") is False and store.get("top_p") == 0.5
    assert "kv_cache_type" in store.warnings[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"schema_version": 1, "settings": {"top_k": 7', "is not valid JSON (line 1"),
        ("[1, 2, 3]", "does not hold a JSON object"),
        ('{"schema_version": "one"}', "could not be upgraded"),
        ('{"schema_version": 1, "settings": 3}', 'has no "settings" object'),
    ],
)
def test_unusable_file_gives_one_line_and_defaults(text: str, problem: str) -> None:
    path = paths.settings_file()
    _write(path, text)
    store = SettingsStore.load()
    assert store.as_dict() == defaults()
    assert len(store.warnings) == 1 and "\n" not in store.warnings[0]
    assert problem in store.warnings[0]
    assert "A copy was kept as settings.json.bad" in store.warnings[0]
    assert path.with_name("settings.json.bad").read_text() == text
    # Saving afterwards writes a good file; the next start is clean.
    store.save()
    assert SettingsStore.load().warnings == []


def test_version_0_file_is_upgraded() -> None:
    # A bare {key: value} object with no version: what a hand-written file looks like.
    _write(paths.settings_file(), json.dumps({"temperature": 0.7, "theme": "light"}))
    store = SettingsStore.load()
    assert store.warnings == []
    assert (store.get("temperature"), store.get("theme")) == (0.7, "light")
    store.save()
    saved = json.loads(paths.settings_file().read_text())
    assert saved["schema_version"] == SCHEMA_VERSION
    assert saved["settings"]["theme"] == "light"


def test_settings_it_does_not_know_are_kept() -> None:
    document = {"schema_version": SCHEMA_VERSION + 1, "settings": {"top_k": 9, "ui_zoom": 1.25}}
    _write(paths.settings_file(), json.dumps(document))
    store = SettingsStore.load()
    assert store.get("top_k") == 9
    assert any("newer Fathom Desktop" in w for w in store.warnings)
    assert any("ui_zoom" in w for w in store.warnings)
    store.set("top_k", 11)
    store.save()
    saved = json.loads(paths.settings_file().read_text())["settings"]
    assert saved["ui_zoom"] == 1.25 and saved["top_k"] == 11


def test_save_is_atomic_and_reports_failure_in_one_line(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "cfg" / "settings.json")
    store.set("top_k", 5)
    store.save()
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["settings.json"]

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    store.path = blocked / "settings.json"
    with pytest.raises(SettingsSaveError) as failed:
        store.save()
    assert str(failed.value).startswith("Could not save settings to")
    assert "\n" not in str(failed.value)


def test_unreadable_file_gives_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.mkdir()  # unreadable as a file, even for root
    store = SettingsStore.load(path)
    assert store.as_dict() == defaults()
    assert "could not be read (is a directory)" in store.warnings[0]


def test_table_bounds_match_the_types() -> None:
    for setting in SETTINGS:
        if setting.minimum is not None and setting.maximum is not None:
            assert setting.minimum <= setting.maximum, setting.key
        if setting.choice_labels:
            assert len(setting.choice_labels) == len(setting.choices), setting.key
    assert SETTINGS_BY_KEY["kv_cache_type"].choices == ("f16", "q8_0", "q4_0")


def test_the_table_says_which_settings_reload_the_model() -> None:
    wanted = {"model_path", "n_gpu_layers", "n_ctx", "kv_cache_type", "flash_attn", "n_threads"}
    assert wanted == LOAD_KEYS
    # Going back to a model that loaded restores exactly the settings that loaded it.
    options = LoadOptions(
        Path("/models/m.gguf"), n_ctx=4096, n_gpu_layers=20, flash_attn=True,
        kv_cache_type="q8_0", n_threads=3,
    )  # fmt: skip
    store = SettingsStore()
    assert set(store.update(load_settings(options))) == LOAD_KEYS
    assert store.load_options() == options


def test_every_kv_cache_type_offered_is_one_the_engine_and_planner_know() -> None:
    offered = set(SETTINGS_BY_KEY["kv_cache_type"].choices)
    assert offered == set(llama_backend.KV_TYPES) == set(planner.KV_CACHE_GGML_TYPE)
    for name in offered:  # the same ggml type on both sides
        assert llama_backend.KV_TYPES[name] == planner.KV_CACHE_GGML_TYPE[name].value


def test_the_eval_preset_is_described_as_it_is_sent() -> None:
    sent = with_eval_instruction([ChatMessage("user", "What is 3+4?")])
    assert [m.role for m in sent] == ["user"]  # no system message
    assert sent[0].content == f"What is 3+4?\n{FATHOM_EVAL_INSTRUCTION}"
    text = describe_preset("fathom_eval")
    assert "No system message is sent" in text
    assert f"added below it: “{FATHOM_EVAL_INSTRUCTION}”" in text
    assert "sent as a system message" in describe_preset("custom")
