"""The settings dialog: the model list with fit badges, refusals with reasons, and persistence."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
from PySide6.QtWidgets import QComboBox, QDialogButtonBox, QSpinBox

from fathom_desktop import paths
from fathom_desktop.engine import llama_backend, planner
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.engine.types import FATHOM_EVAL_INSTRUCTION, LoadOptions
from fathom_desktop.gui import model_list
from fathom_desktop.gui.settings_dialog import SettingsDialog, apply_theme
from fathom_desktop.settings import SettingsStore, describe_preset
from tests.gui.conftest import cuda_backend

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FAKE_GPU = GpuInfo(name="Fake RTX 4060", total_bytes=8 * 2**30, free_bytes=int(7.6 * 2**30))
VOCAB = 152064
_T = gguf.GGMLQuantizationType


def write_model_header(
    path: Path,
    *,
    n_layers: int = 48,
    n_embd: int = 5120,
    n_ff: int = 13824,
    n_head: int = 40,
    n_head_kv: int = 8,
    matrix_type: gguf.GGMLQuantizationType = _T.Q4_K,
    file_type: gguf.LlamaFileType = gguf.LlamaFileType.MOSTLY_Q4_K_M,
    n_ctx_train: int = 131072,
) -> Path:
    """A Qwen2 GGUF with real metadata and tensor table whose weights are a sparse hole.

    The planner and the model check read only the header, so a 9 GB Fathom-shaped model costs a
    few hundred kilobytes of disk and a fraction of a second.
    """
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name(path.stem)
    writer.add_file_type(file_type)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(VOCAB)])
    writer.add_eos_token_id(VOCAB - 1)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    head_dim = n_embd // n_head
    kv = n_head_kv * head_dim

    def add(name: str, rows: int, cols: int | None = None) -> None:
        if cols is None:  # norms and biases stay F32, as llama.cpp's quantizer leaves them
            writer.add_tensor_info(name, (rows,), np.dtype(np.float32), rows * 4)
            return
        block, size = gguf.GGML_QUANT_SIZES[matrix_type]
        nbytes = rows * cols // block * size
        writer.add_tensor_info(name, (rows, cols), np.dtype(np.float32), nbytes, matrix_type)

    add("token_embd.weight", VOCAB, n_embd)
    for i in range(n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", n_embd)
        add(p + "attn_q.weight", n_embd, n_embd)
        add(p + "attn_q.bias", n_embd)
        add(p + "attn_k.weight", kv, n_embd)
        add(p + "attn_k.bias", kv)
        add(p + "attn_v.weight", kv, n_embd)
        add(p + "attn_v.bias", kv)
        add(p + "attn_output.weight", n_embd, n_embd)
        add(p + "ffn_norm.weight", n_embd)
        add(p + "ffn_gate.weight", n_ff, n_embd)
        add(p + "ffn_up.weight", n_ff, n_embd)
        add(p + "ffn_down.weight", n_embd, n_ff)
    add("output_norm.weight", n_embd)
    add("output.weight", VOCAB, n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    end_of_header = writer.fout[0].tell()
    writer.close()
    data_start = gguf.GGUFWriter.ggml_pad(end_of_header, writer.data_alignment)
    data_bytes = sum(
        gguf.GGUFWriter.ggml_pad(t.nbytes, writer.data_alignment)
        for t in writer.tensors[0].values()
    )
    os.truncate(path, data_start + data_bytes)
    return path


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(paths.HOME_ENV_VAR, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> GpuInfo:
    monkeypatch.setattr(planner, "detect_gpu", lambda: FAKE_GPU)
    # A CUDA build that supports it; this machine's own llama.cpp is the CPU build.
    cuda_backend(monkeypatch)
    return FAKE_GPU


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "q4": write_model_header(folder / "Fathom-R1-14B-Q4_K_M.gguf"),
        "q8": write_model_header(
            folder / "Fathom-R1-14B-Q8_0.gguf",
            matrix_type=_T.Q8_0,
            file_type=gguf.LlamaFileType.MOSTLY_Q8_0,
        ),
        "tiny": write_model_header(
            folder / "tiny.gguf",
            n_layers=2,
            n_embd=256,
            n_ff=512,
            n_head=4,
            n_head_kv=2,
            matrix_type=_T.F32,
            file_type=gguf.LlamaFileType.ALL_F32,
            n_ctx_train=16384,
        ),
    }


@pytest.fixture
def models_dir(model_files: dict[str, Path]) -> Path:
    folder = paths.models_dir()
    for name in ("q4", "q8"):
        (folder / model_files[name].name).symlink_to(model_files[name])
    (folder / ".Fathom-R1-14B-Q2_K.gguf.partial").write_bytes(b"unfinished")
    manifest = {
        "schema_version": 1,
        "files": [
            {
                "file": "Fathom-R1-14B-Q4_K_M.gguf",
                "quant_type": "Q4_K_M",
                "size_bytes": model_files["q4"].stat().st_size,
                "sha256": "ab" * 32,
                "source_repo": "FractalAIResearch/Fathom-R1-14B",
                "source_revision": None,
                "tools": {},
                "created": "2026-11-27T00:00:00+00:00",
            }
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _open(qtbot, store: SettingsStore) -> SettingsDialog:
    """A dialog whose files and GPU have been checked (in the background)."""
    dialog = SettingsDialog(store)
    qtbot.addWidget(dialog)
    _settle(qtbot, dialog)
    return dialog


def _settle(qtbot, dialog: SettingsDialog) -> None:
    qtbot.waitUntil(lambda: not dialog.model_list.busy(), timeout=10_000)


def _rows(dialog: SettingsDialog) -> dict[str, tuple[str, str, str]]:
    """The files listed (levels made), by name: (level, size, fit)."""
    rows = {}
    for _group, row, item in dialog.model_list.level_rows():
        if row.made:
            rows[row.path.name] = (item.text(0), item.text(1), item.text(2))
    return rows


def _partial_layers(badge: str) -> int:
    match = re.fullmatch(r"partial: (\d+)/49 layers", badge)
    assert match, badge
    return int(match.group(1))


def _shot(dialog: SettingsDialog, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    dialog.resize(760, 560)
    assert dialog.grab().save(str(ARTIFACTS / name))


def test_lists_every_gguf_with_size_and_fit_badge(
    qtbot, fake_gpu: GpuInfo, models_dir: Path, model_files: dict[str, Path]
) -> None:
    store = SettingsStore.load()
    store.set("model_path", str(model_files["tiny"]))  # the current model, outside the folder
    dialog = _open(qtbot, store)
    dialog.show()

    assert dialog.gpu_label.text() == "GPU: Fake RTX 4060, 7.6 GiB free of 8.0 GiB"
    rows = _rows(dialog)
    assert set(rows) == {"Fathom-R1-14B-Q4_K_M.gguf", "Fathom-R1-14B-Q8_0.gguf", "tiny.gguf"}
    quant, size, q4_fit = rows["Fathom-R1-14B-Q4_K_M.gguf"]
    assert quant == "Q4_K_M" and re.fullmatch(r"\d+\.\d GiB", size)
    assert rows["Fathom-R1-14B-Q8_0.gguf"][0] == "Q8_0"  # from the file name
    assert rows["tiny.gguf"][0] == "F32"  # from the file's header
    assert rows["tiny.gguf"][2] == "fits on GPU"
    q8_fit = rows["Fathom-R1-14B-Q8_0.gguf"][2]
    # A 14B model does not fit 8 GB whole; the bigger quantization fits fewer layers.
    assert _partial_layers(q8_fit) < _partial_layers(q4_fit)
    assert dialog.model_list.selected_path() == model_files["tiny"]
    # The GPU layers editor counts the selected model's layers as the badges and status bar do.
    layers = dialog.editor("n_gpu_layers")
    assert layers.text() == "auto"
    layers.setValue(2)
    assert layers.text() == "2 / 3 layers"  # two blocks and the output layer
    dialog.model_list.select_path(models_dir / "Fathom-R1-14B-Q4_K_M.gguf")
    assert layers.text() == "2 / 49 layers"
    # What the manifest says about a file shows too.
    q4_item = dialog.model_list.item_for(models_dir / "Fathom-R1-14B-Q4_K_M.gguf")
    assert "sha256 " + "ab" * 32 in q4_item.toolTip(0)
    _shot(dialog, "settings_dialog_models.png")

    # The badges follow the context length and KV cache type shown, before anything is applied.
    dialog.editor("n_ctx").setValue(4096)
    q4_small_context = _rows(dialog)["Fathom-R1-14B-Q4_K_M.gguf"][2]
    assert _partial_layers(q4_small_context) > _partial_layers(q4_fit)
    dialog.editor("n_ctx").setValue(16384)
    dialog.editor("kv_cache_type").setCurrentIndex(2)  # q4_0
    assert _partial_layers(_rows(dialog)["Fathom-R1-14B-Q4_K_M.gguf"][2]) > _partial_layers(q4_fit)


def test_without_a_gpu_everything_runs_on_the_cpu(
    qtbot, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    monkeypatch.setattr(planner, "detect_gpu", lambda: None)
    dialog = _open(qtbot, SettingsStore.load())
    assert dialog.gpu_label.text() == "No GPU detected: models run on the CPU."
    assert {row[2] for row in _rows(dialog).values()} == {"CPU only"}


def test_a_gpu_this_llama_cpp_cannot_use_is_named_and_nothing_promises_it(
    qtbot, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    # This machine's llama.cpp is the CPU build (as the CPU package is on a gaming PC).
    monkeypatch.setattr(planner, "detect_gpu", lambda: FAKE_GPU)
    dialog = _open(qtbot, SettingsStore.load())
    assert dialog.gpu_label.text() == (
        "GPU: Fake RTX 4060. This is the CPU build of Fathom Desktop: models run on the CPU only."
    )
    assert {row[2] for row in _rows(dialog).values()} == {"CPU only"}

    # A CUDA build on a GPU older than its kernels: the same, with the reason.
    monkeypatch.setattr(llama_backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(
        planner,
        "detect_gpu",
        lambda: GpuInfo("NVIDIA GeForce GTX 1080", 8 * 2**30, 7 * 2**30, (6, 1), 13000),
    )
    cuda_backend(monkeypatch, archs=(750, 860))
    dialog = _open(qtbot, SettingsStore.load())
    assert "compute capability 6.1) is older than this build supports" in dialog.gpu_label.text()
    assert {row[2] for row in _rows(dialog).values()} == {"CPU only"}


def test_a_damaged_manifest_does_not_hide_the_models(
    qtbot, fake_gpu: GpuInfo, models_dir: Path
) -> None:
    (models_dir / "manifest.json").write_text("{ not json")
    dialog = _open(qtbot, SettingsStore.load())
    assert len(_rows(dialog)) == 2
    assert dialog.manifest_label.text().startswith("manifest.json ignored:")


def test_choosing_a_model_and_sampling_persists_and_announces(
    qtbot, fake_gpu: GpuInfo, models_dir: Path
) -> None:
    store = SettingsStore.load()
    dialog = _open(qtbot, store)
    q8 = models_dir / "Fathom-R1-14B-Q8_0.gguf"
    dialog.model_list.select_path(q8)
    dialog.editor("temperature").setValue(0.75)
    dialog.editor("n_gpu_layers").setValue(20)
    dialog.editor("seed").setValue(7)
    with qtbot.waitSignal(dialog.applied) as applied:
        dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
    assert sorted(applied.args[0]) == ["model_path", "n_gpu_layers", "seed", "temperature"]
    assert dialog.result() == SettingsDialog.DialogCode.Accepted

    reopened = SettingsStore.load()
    assert reopened.load_options().model_path == q8
    assert reopened.load_options().n_gpu_layers == 20
    assert reopened.sampling().temperature == 0.75 and reopened.sampling().seed == 7


def test_special_values_read_as_words(qtbot, fake_gpu: GpuInfo, models_dir: Path) -> None:
    dialog = _open(qtbot, SettingsStore.load())
    layers = dialog.editor("n_gpu_layers")
    assert isinstance(layers, QSpinBox) and layers.text() == "auto"
    assert dialog.editor("seed").text() == "random"
    assert dialog.editor("max_tokens").text() == "unlimited"
    flash = dialog.editor("flash_attn")
    assert isinstance(flash, QComboBox) and flash.currentText() == "auto"
    assert dialog.values()["n_gpu_layers"] is None and dialog.values()["seed"] is None


def test_quantized_kv_without_flash_attention_is_refused(
    qtbot, fake_gpu: GpuInfo, models_dir: Path
) -> None:
    store = SettingsStore.load()
    dialog = _open(qtbot, store)
    dialog.show()
    dialog.editor("kv_cache_type").setCurrentIndex(dialog.editor("kv_cache_type").findData("q8_0"))
    dialog.editor("flash_attn").setCurrentIndex(dialog.editor("flash_attn").findData(False))
    dialog.editor("temperature").setValue(1.1)
    with qtbot.assertNotEmitted(dialog.applied):
        dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
    assert dialog.isVisible()  # OK did not close it
    assert "q8_0 KV cache needs flash attention" in dialog.error_text()
    # Nothing was applied, not even the valid temperature.
    assert store.get("kv_cache_type") == "f16" and store.get("temperature") == 0.6
    assert not paths.settings_file().exists()
    _shot(dialog, "settings_dialog_refused.png")

    dialog.editor("flash_attn").setCurrentIndex(dialog.editor("flash_attn").findData(True))
    assert dialog.apply()
    assert dialog.error_text() == ""
    assert SettingsStore.load().get("kv_cache_type") == "q8_0"


def test_context_beyond_the_models_training_is_refused(
    qtbot, fake_gpu: GpuInfo, model_files: dict[str, Path]
) -> None:
    store = SettingsStore.load()
    store.set("model_path", str(model_files["tiny"]))
    dialog = _open(qtbot, store)
    dialog.editor("n_ctx").setValue(32768)
    assert not dialog.apply()
    assert dialog.error_text() == (
        "tiny.gguf was trained for at most 16384 tokens of context; "
        "choose 16384 or less (not 32768)."
    )
    assert store.get("n_ctx") == 16384


def test_a_bad_model_file_is_refused_with_its_reason(
    qtbot, fake_gpu: GpuInfo, models_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    dialog = _open(qtbot, SettingsStore.load())
    dialog.add_model_file(bad)
    qtbot.waitUntil(lambda: dialog.error_text() != "")
    assert dialog.error_text().startswith("broken.gguf is damaged or incomplete")
    assert "broken.gguf" not in _rows(dialog)


def test_adding_a_good_file_from_elsewhere_selects_it(
    qtbot, fake_gpu: GpuInfo, models_dir: Path, model_files: dict[str, Path]
) -> None:
    dialog = _open(qtbot, SettingsStore.load())
    with qtbot.waitSignal(dialog.model_list.file_added):
        dialog.add_model_file(model_files["tiny"])
    _settle(qtbot, dialog)
    assert _rows(dialog)["tiny.gguf"][2] == "fits on GPU"
    assert dialog.values()["model_path"] == str(model_files["tiny"])


def test_restore_defaults_and_cancel_change_nothing_until_applied(
    qtbot, fake_gpu: GpuInfo, models_dir: Path
) -> None:
    store = SettingsStore.load()
    store.update({"top_k": 5, "theme": "dark"})
    dialog = _open(qtbot, store)
    assert dialog.editor("top_k").value() == 5
    dialog.buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults).click()
    assert dialog.values()["top_k"] == 40 and dialog.values()["theme"] == "system"
    assert store.get("top_k") == 5
    dialog.buttons.button(QDialogButtonBox.StandardButton.Cancel).click()
    assert store.get("top_k") == 5 and store.get("theme") == "dark"


def test_custom_system_prompt_is_editable_only_when_chosen(
    qtbot, fake_gpu: GpuInfo, models_dir: Path
) -> None:
    store = SettingsStore.load()
    dialog = _open(qtbot, store)
    prompt = dialog.editor("system_prompt")
    assert not prompt.isEnabled()
    # Fathom's instruction goes into your message, not a system message, and the dialog says so.
    assert dialog.preset_preview.text().startswith("No system message is sent.")
    assert f"added below it: “{FATHOM_EVAL_INSTRUCTION}”" in dialog.preset_preview.text()
    preset = dialog.editor("system_preset")
    preset.setCurrentIndex(preset.findData("none"))
    assert dialog.preset_preview.text() == describe_preset("none")
    assert "as you wrote them" in dialog.preset_preview.text()
    preset.setCurrentIndex(preset.findData("custom"))
    assert prompt.isEnabled()
    prompt.setPlainText("Answer briefly.")
    assert dialog.apply()
    assert store.system_prompt() == "Answer briefly."
    dialog._tabs.setCurrentIndex(2)
    _shot(dialog, "settings_dialog_prompt.png")
    dialog._tabs.setCurrentIndex(1)
    _shot(dialog, "settings_dialog_sampling.png")


def test_fit_badge_of_a_missing_file() -> None:
    entry = model_list.ModelEntry(Path("/nowhere/x.gguf"), None, None, None, False)
    inputs = model_list.FitInputs(16384, "f16", True)
    assert model_list.fit_from_facts(entry, None, inputs, FAKE_GPU) == "file missing"
    assert model_list.quant_from_name("Fathom-R1-14B-IQ4_XS.gguf") == "IQ4_XS"
    assert model_list.quant_from_name("fathom-q5_k_m.gguf") == "Q5_K_M"
    assert model_list.quant_from_name("fathom.gguf") is None


def test_theme_switches_the_palette_and_back(qtbot, fake_gpu: GpuInfo, models_dir: Path) -> None:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    original = app.palette().window().color().name()
    try:
        apply_theme("dark")
        assert app.palette().window().color().lightness() < 60
        dialog = _open(qtbot, SettingsStore.load())
        _shot(dialog, "settings_dialog_dark.png")
        apply_theme("light")
        assert app.palette().window().color().lightness() > 200
    finally:
        apply_theme("system")
    assert app.palette().window().color().name() == original


def test_unchanged_dialog_applies_nothing(qtbot, fake_gpu: GpuInfo, models_dir: Path) -> None:
    store = SettingsStore.load()
    # A models-folder symlink: the list shows it, and applying must not count it as a new model.
    store.set("model_path", str(models_dir / "Fathom-R1-14B-Q4_K_M.gguf"))
    dialog = _open(qtbot, store)
    assert dialog.model_list.selected_path() == models_dir / "Fathom-R1-14B-Q4_K_M.gguf"
    with qtbot.assertNotEmitted(dialog.applied):
        assert dialog.apply()


def test_a_converted_model_is_checked_against_its_own_context(
    qtbot, fake_gpu: GpuInfo, models_dir: Path, tiny_gguf_f32: Path
) -> None:
    store = SettingsStore.load()
    dialog = _open(qtbot, store)
    with qtbot.waitSignal(dialog.model_list.file_added):
        dialog.add_model_file(tiny_gguf_f32)
    _settle(qtbot, dialog)
    row = _rows(dialog)[tiny_gguf_f32.name]
    # Unquantized, it is its model's reference (levels would be made from it).
    assert row[0] == "F32 (reference)" and row[2] == "fits on GPU"
    # The tiny test model was trained with a 4,096-token context; the default 16,384 is refused.
    assert not dialog.apply()
    assert "trained for at most 4096 tokens" in dialog.error_text()
    assert store.get("model_path") is None
    dialog.editor("n_ctx").setValue(4096)
    assert dialog.apply()
    assert store.load_options() == LoadOptions(model_path=tiny_gguf_f32, n_ctx=4096)


def test_a_slow_disk_or_driver_never_blocks_the_dialog(
    qtbot, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    # Header reads and the NVML query hang until released, as on a sleeping disk or a sick driver.
    release = threading.Event()
    real_check = model_list.check_model_file

    def slow_check(path: Path):
        release.wait(30)
        return real_check(path)

    def slow_gpu() -> GpuInfo:
        release.wait(30)
        return FAKE_GPU

    monkeypatch.setattr(model_list, "check_model_file", slow_check)
    monkeypatch.setattr(planner, "detect_gpu", slow_gpu)
    cuda_backend(monkeypatch)
    store = SettingsStore.load()
    dialog = SettingsDialog(store)  # returns while every read is still hanging
    qtbot.addWidget(dialog)
    dialog.show()
    assert not release.is_set()
    assert dialog.gpu_label.text() == "GPU: checking…"
    qtbot.waitUntil(lambda: len(_rows(dialog)) == 2)  # listing the folder reads no header
    assert {row[2] for row in _rows(dialog).values()} == {"checking…"}
    # Named by the manifest or the file name, the quantization needs no header.
    assert _rows(dialog)["Fathom-R1-14B-Q8_0.gguf"][0] == "Q8_0"
    _shot(dialog, "settings_dialog_checking.png")

    # The dialog works meanwhile, and never waits for a header to apply a choice.
    dialog.editor("n_ctx").setValue(8192)
    dialog.model_list.select_path(models_dir / "Fathom-R1-14B-Q8_0.gguf")
    assert not dialog.apply()
    assert dialog.error_text() == "Still checking Fathom-R1-14B-Q8_0.gguf; apply again in a moment."
    assert store.get("model_path") is None

    release.set()
    _settle(qtbot, dialog)
    assert dialog.gpu_label.text() == "GPU: Fake RTX 4060, 7.6 GiB free of 8.0 GiB"
    for _quant, _size, fit in _rows(dialog).values():
        assert fit.startswith("partial: ")
    assert dialog.apply()
    assert store.get("n_ctx") == 8192
    assert store.get("model_path") == str(models_dir / "Fathom-R1-14B-Q8_0.gguf")
