"""The quantizer: llama.cpp's own quantization, driven and checked from Python.

The ladder test model has every row length a multiple of 256 (hidden 256, FFN 512) so that no
tensor falls back to another type and the sizes must fall in ladder order; the converter's tiny
model (hidden 64) cannot show that, because every k-quant falls back to a 32-block type there.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.errors import ConversionError
from convert.gguf_header import read_gguf_header
from convert.imatrix import compute_imatrix
from convert.llama_forward import ForwardSettings
from convert.quantize import (
    LADDER,
    ImatrixUse,
    QuantizationCancelled,
    QuantizeResult,
    _check_output,
    basename_of,
    capture_llama_log,
    estimate_output_bytes,
    known_types,
    output_name,
    quant_type,
    quantize,
    read_input,
)

# --- a small Qwen2 GGUF whose dimensions suit every k-quant --------------------------------


def _byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, as byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


THINK_TAGS = ("<think>", "</think>")
CONTROL_TOKENS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
)


def write_ladder_model(
    path: Path,
    *,
    hidden: int = 256,
    ffn: int = 512,
    n_layers: int = 2,
    think_type: gguf.TokenType = gguf.TokenType.USER_DEFINED,
    chat_template: str | None = None,
    seed: int = 0,
) -> Path:
    """A random-weight BF16 Qwen2 GGUF with a 512-token byte-level vocabulary."""
    tokens = [*_byte_level_alphabet(), "Ġt", "he"]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for text in CONTROL_TOKENS:
        tokens.append(text)
        types.append(gguf.TokenType.CONTROL)
    for text in THINK_TAGS:
        tokens.append(text)
        types.append(think_type)
    while len(tokens) % 256:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(gguf.TokenType.UNUSED)
    n_heads, n_kv_heads = 4, 2
    head_dim = hidden // n_heads

    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_name("Ladder-Test")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_block_count(n_layers)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(tokens.index(CONTROL_TOKENS[0]))
    writer.add_eos_token_id(tokens.index(CONTROL_TOKENS[1]))
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    rng = np.random.default_rng(seed)

    def matrix(name: str, rows: int, cols: int) -> None:
        values = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation is fine for tests
        writer.add_tensor(name, bf16, raw_dtype=gguf.GGMLQuantizationType.BF16)

    def vector(name: str, size: int, value: float | None = None) -> None:
        data = (
            np.full(size, value, np.float32)
            if value is not None
            else (rng.standard_normal(size).astype(np.float32) * 0.05)
        )
        writer.add_tensor(name, data)

    matrix("token_embd.weight", len(tokens), hidden)
    for i in range(n_layers):
        block = f"blk.{i}"
        vector(f"{block}.attn_norm.weight", hidden, 1.0)
        matrix(f"{block}.attn_q.weight", hidden, hidden)
        vector(f"{block}.attn_q.bias", hidden)
        matrix(f"{block}.attn_k.weight", n_kv_heads * head_dim, hidden)
        vector(f"{block}.attn_k.bias", n_kv_heads * head_dim)
        matrix(f"{block}.attn_v.weight", n_kv_heads * head_dim, hidden)
        vector(f"{block}.attn_v.bias", n_kv_heads * head_dim)
        matrix(f"{block}.attn_output.weight", hidden, hidden)
        vector(f"{block}.ffn_norm.weight", hidden, 1.0)
        matrix(f"{block}.ffn_gate.weight", ffn, hidden)
        matrix(f"{block}.ffn_up.weight", ffn, hidden)
        matrix(f"{block}.ffn_down.weight", hidden, ffn)
    vector("output_norm.weight", hidden, 1.0)
    matrix("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class RecordingProgress:
    def __init__(self, on_advance: threading.Event | None = None) -> None:
        self.steps: list[tuple[str, int]] = []
        self.advanced = 0
        self.messages: list[str] = []
        self._on_advance = on_advance

    def start(self, step: str, total_bytes: int) -> None:
        self.steps.append((step, total_bytes))

    def advance(self, n_bytes: int) -> None:
        self.advanced += n_bytes
        if self._on_advance is not None:
            self._on_advance.set()

    def message(self, text: str) -> None:
        self.messages.append(text)

    def finish(self) -> None:
        pass


@pytest.fixture(scope="session")
def ladder_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ladder_model(tmp_path_factory.mktemp("ladder") / "Ladder-Test-BF16.gguf")


@pytest.fixture(scope="session")
def ladder(
    ladder_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, QuantizeResult]:
    out_dir = tmp_path_factory.mktemp("ladder-out")
    # The levels made only with an importance matrix get one, calibrated on two chunks.
    imatrix = compute_imatrix(
        ladder_model, out_dir / "ladder.imatrix.gguf", ctx=128, chunks=2,
        settings=ForwardSettings(n_gpu_layers=0, n_threads=2),
    ).path
    return {
        q.name: quantize(
            ladder_model, out_dir / output_name("Ladder-Test", q), q, n_threads=2,
            imatrix=imatrix if q.imatrix is ImatrixUse.REQUIRED else None,
        )
        for q in LADDER
    }


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- the ladder ------------------------------------------------------------------------------


def test_ladder_is_the_recommended_types_largest_first() -> None:
    assert [q.name for q in LADDER] == [
        "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_XXS", "Q2_K", "IQ2_M"
    ]  # fmt: skip
    needs = {q.name for q in LADDER if q.imatrix is ImatrixUse.REQUIRED}
    assert needs == {"IQ3_XXS", "IQ2_M"}
    bits = [q.bits_per_weight for q in LADDER]
    assert bits == sorted(bits, reverse=True)
    assert all(q.purpose for q in LADDER)
    assert "12 GB" in quant_type("Q4_K_M").purpose


def test_file_types_match_llama_cpp_constants() -> None:
    """The table uses gguf's LlamaFileType; llama.cpp must read the same numbers."""
    import llama_cpp

    checked = 0
    for name, q in known_types().items():
        constant = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}", None)
        if name == "F32":
            constant = llama_cpp.LLAMA_FTYPE_ALL_F32
        if constant is not None:
            assert int(q.file_type) == constant, name
            checked += 1
    assert all(hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{q.name}") for q in LADDER)
    assert checked >= 20


def test_type_names_are_forgiving_about_case_and_aliases() -> None:
    assert quant_type("q4_k_m") is quant_type("Q4_K_M")
    assert quant_type("Q4_K").name == "Q4_K_M"
    assert quant_type("Q4_0").bits_per_weight is None  # a valid type outside the ladder


def test_unknown_type_is_refused_naming_the_ladder() -> None:
    with pytest.raises(ConversionError) as err:
        quant_type("Q4_KM")
    assert "'Q4_KM'" in str(err.value)
    assert "Q4_K_M" in str(err.value)


def test_output_names() -> None:
    assert output_name("Fathom-R1-14B", quant_type("Q4_K_M")) == "Fathom-R1-14B-Q4_K_M.gguf"
    assert basename_of(Path("x/Fathom-R1-14B-BF16.gguf")) == "Fathom-R1-14B"
    assert basename_of(Path("Fathom-R1-14B-f16.gguf")) == "Fathom-R1-14B"
    assert basename_of(Path("model.gguf")) == "model"


def test_ladder_sizes_fall_in_ladder_order(ladder: dict[str, QuantizeResult]) -> None:
    sizes = [ladder[q.name].n_bytes for q in LADDER]
    assert sizes == sorted(sizes, reverse=True)
    assert len(set(sizes)) == len(sizes), sizes
    # On this model no tensor needed a fallback type, so the order above is the real ladder.
    assert all(not r.fallbacks for r in ladder.values())


def test_the_disk_space_estimate_covers_each_output_without_hoarding(
    ladder_model: Path, ladder: dict[str, QuantizeResult]
) -> None:
    summary = read_input(ladder_model)
    for q in LADDER:
        actual = ladder[q.name].n_bytes
        assert actual <= estimate_output_bytes(summary, q) <= 1.6 * actual, q.name


def test_each_output_says_what_it_is(ladder: dict[str, QuantizeResult]) -> None:
    for q in LADDER:
        result = ladder[q.name]
        assert result.path.name == f"Ladder-Test-{q.name}.gguf"
        assert result.path.stat().st_size == result.n_bytes
        header = read_gguf_header(result.path)
        assert header.integer(gguf.Keys.General.FILE_TYPE) == q.file_type
        # 1-D norms and biases stay F32; every matrix was quantized.
        kinds = {t.ggml_type for t in header.tensors if len(t.shape) > 1}
        assert gguf.GGMLQuantizationType.BF16 not in kinds
        assert gguf.GGMLQuantizationType.F32 not in kinds
    q4 = ladder["Q4_K_M"].tensor_types
    assert q4["blk.0.attn_q.weight"] == "q4_K"
    assert "q6_K" in q4.values()  # the "M" mix keeps some tensors at higher precision


_DECODE = r"""
import json, sys
import numpy as np
import llama_cpp

results = {}
for path in sys.argv[1:]:
    llm = llama_cpp.Llama(path, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    prompt = llm.tokenize(b"the theme", add_bos=False)
    llm.eval(prompt)
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    generated = []
    for token in llm.generate(prompt, temp=0.0):
        generated.append(int(token))
        if len(generated) == 4:
            break
    llm.close()
    results[path] = {"logits": logits.tolist(), "generated": generated}
print(json.dumps(results))
"""


def test_every_ladder_type_decodes_on_cpu_close_to_the_original(
    ladder_model: Path, ladder: dict[str, QuantizeResult]
) -> None:
    """Regression test for the AMX crash: quantized models must decode on this CPU build.

    Runs in a child process so that a crash fails this test instead of killing the suite.
    """
    paths = [str(ladder_model)] + [str(ladder[q.name].path) for q in LADDER]
    done = subprocess.run(
        [sys.executable, "-c", _DECODE, *paths], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"decoding crashed (rc {done.returncode}): {done.stderr[-2000:]}"
    results = json.loads(done.stdout)
    reference = np.array(results[str(ladder_model)]["logits"])

    similarity = {}
    for q in LADDER:
        result = results[str(ladder[q.name].path)]
        assert len(result["generated"]) == 4
        logits = np.array(result["logits"])
        assert np.isfinite(logits).all()
        similarity[q.name] = float(
            logits @ reference / np.linalg.norm(logits) / np.linalg.norm(reference)
        )
    # Same model, fewer bits: near-identical at 8 bits, recognisably the same at 2-3 bits.
    assert similarity["Q8_0"] > 0.99, similarity
    assert similarity["Q6_K"] > 0.98, similarity
    assert min(similarity.values()) > 0.4, similarity
    assert similarity["Q8_0"] > similarity["Q4_K_M"] > similarity["Q2_K"], similarity


def test_progress_follows_llama_cpp_tensor_by_tensor(ladder_model: Path, tmp_path: Path) -> None:
    progress = RecordingProgress()
    quantize(ladder_model, tmp_path / "out.gguf", "Q8_0", progress=progress, n_threads=1)
    header = read_gguf_header(ladder_model)
    total = sum(t.n_bytes for t in header.tensors)
    assert progress.steps == [("Q8_0", total)]
    assert progress.advanced == total
    assert any("blk.1.ffn_down.weight" in m for m in progress.messages)
    assert progress.messages[-1].startswith(f"{len(header.tensors)}/{len(header.tensors)} ")


def test_fallback_types_are_reported(tmp_path: Path) -> None:
    """Rows of 64 do not split into 256-blocks: llama.cpp stores them as Q5_0, and says so."""
    narrow = write_ladder_model(tmp_path / "narrow-BF16.gguf", hidden=64, ffn=128)
    result = quantize(narrow, tmp_path / "narrow-Q4_K_M.gguf", "Q4_K_M", n_threads=1)
    assert result.fallbacks
    by_name = {f.tensor: f for f in result.fallbacks}
    attn_q = by_name["blk.0.attn_q.weight"]
    assert (attn_q.n_cols, attn_q.block_size, attn_q.wanted, attn_q.used) == (
        64,
        256,
        "q4_K",
        "q5_0",
    )
    assert result.tensor_types["blk.0.attn_q.weight"] == "q5_0"
    assert "64 columns not divisible by 256" in str(attn_q)


# --- refusals and failures leave nothing behind ----------------------------------------------


def test_requantizing_is_refused_unless_allowed(
    ladder: dict[str, QuantizeResult], tmp_path: Path
) -> None:
    q8 = ladder["Q8_0"].path
    with pytest.raises(ConversionError) as err:
        quantize(q8, tmp_path / "again.gguf", "Q4_K_M")
    assert "already quantized (Q8_0)" in str(err.value)
    assert "--allow-requantize" in str(err.value)
    assert _files(tmp_path) == []

    result = quantize(q8, tmp_path / "again.gguf", "Q4_K_M", allow_requantize=True, n_threads=1)
    assert result.path.is_file()
    assert read_gguf_header(result.path).integer(gguf.Keys.General.FILE_TYPE) == int(
        gguf.LlamaFileType.MOSTLY_Q4_K_M
    )


def test_a_type_that_needs_an_imatrix_fails_with_llama_cpps_reason(
    ladder_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConversionError) as err:
        quantize(ladder_model, tmp_path / "iq2.gguf", "IQ2_XXS", n_threads=1)
    message = str(err.value)
    assert "importance matrix" in message
    assert "llama.cpp: this quantization requires an imatrix" in message
    assert "\n" not in message
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"definitely not a model" * 10, "GGUF magic number"),
        (b"", "too short"),
    ],
)
def test_a_bad_input_is_refused_before_llama_cpp_runs(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    bad = tmp_path / "in" / "bad.gguf"
    bad.parent.mkdir()
    bad.write_bytes(content)
    out_dir = tmp_path / "out"
    with pytest.raises(ConversionError) as err:
        quantize(bad, out_dir / "x.gguf", "Q4_K_M")
    assert reason in str(err.value)
    assert not out_dir.exists() or _files(out_dir) == []


def test_a_truncated_input_is_refused(ladder_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut-BF16.gguf"
    cut.write_bytes(ladder_model.read_bytes()[: ladder_model.stat().st_size // 2])
    with pytest.raises(ConversionError) as err:
        quantize(cut, tmp_path / "cut-Q4_K_M.gguf", "Q4_K_M")
    assert "truncated" in str(err.value)
    assert _files(tmp_path) == ["cut-BF16.gguf"]


def test_a_missing_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        quantize(tmp_path / "nope.gguf", tmp_path / "out.gguf", "Q8_0")


def test_the_output_may_not_replace_the_input(ladder_model: Path) -> None:
    with pytest.raises(ConversionError, match="overwrite the input"):
        quantize(ladder_model, ladder_model, "Q8_0")


def test_an_existing_output_is_kept_without_overwrite(ladder_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ConversionError, match="already exists"):
        quantize(ladder_model, out, "Q8_0", overwrite=False)
    assert out.read_bytes() == b"keep me"


def test_not_enough_disk_space_is_refused_before_writing(
    ladder_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(
        "convert.atomic.shutil.disk_usage", lambda p: real(p)._replace(free=10 << 20)
    )
    with pytest.raises(ConversionError, match="Not enough disk space"):
        quantize(ladder_model, tmp_path / "out.gguf", "Q8_0")
    assert _files(tmp_path) == []


def test_cancelling_removes_the_partial_output(ladder_model: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    progress = RecordingProgress(on_advance=cancel)  # cancel as soon as one tensor is done
    with pytest.raises(QuantizationCancelled):
        quantize(ladder_model, tmp_path / "out.gguf", "IQ4_XS", progress=progress, cancel=cancel)
    assert progress.advanced > 0
    assert _files(tmp_path) == []


def test_a_short_output_from_llama_cpp_is_not_passed_off_as_done(
    ladder: dict[str, QuantizeResult], ladder_model: Path, tmp_path: Path
) -> None:
    """llama.cpp does not check its writes; a file cut short (full disk) must be caught."""
    whole = ladder["Q8_0"].path.read_bytes()
    short = tmp_path / "short.gguf"
    short.write_bytes(whole[: len(whole) - 4096])
    with pytest.raises(ConversionError, match="is the disk full"):
        _check_output(short, tmp_path / "x.gguf", read_input(ladder_model))


def test_works_from_a_script_without_a_main_guard(ladder_model: Path, tmp_path: Path) -> None:
    """The child is a fresh interpreter, so a caller's unguarded or stdin script is fine."""
    out = tmp_path / "out.gguf"
    script = (
        "from convert.quantize import quantize\n"
        f"print(quantize({str(ladder_model)!r}, {str(out)!r}, 'Q8_0').n_bytes)\n"
    )
    done = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == out.stat().st_size


@pytest.mark.slow
def test_a_killed_caller_leaves_no_partial_file(tmp_path: Path) -> None:
    """If the calling process dies without cleaning up, the child removes its own output."""
    source = write_ladder_model(tmp_path / "Slow-BF16.gguf", hidden=512, ffn=2048)
    out_dir = tmp_path / "out"
    script = (
        "from convert.quantize import quantize\n"
        f"quantize({str(source)!r}, {str(out_dir / 'x.gguf')!r}, 'IQ4_XS', n_threads=1)\n"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2]
    )
    try:
        deadline = time.monotonic() + 120
        while not any(out_dir.glob(".*.partial")):
            assert caller.poll() is None, "the quantization ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + 30
        while any(out_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out_dir.iterdir()) == []
    finally:
        if caller.poll() is None:
            caller.kill()


def test_threads_must_be_positive(ladder_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="at least 1"):
        quantize(ladder_model, tmp_path / "out.gguf", "Q8_0", n_threads=0)


# --- llama.cpp's log ------------------------------------------------------------------------


def test_log_capture_sees_llama_cpp_and_restores_the_previous_logger(tmp_path: Path) -> None:
    import llama_cpp

    def current() -> int | None:
        callback = llama_cpp.llama_log_callback()
        data = ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(data))
        return ctypes.cast(callback, ctypes.c_void_p).value

    before = current()
    seen: list[str] = []
    params = llama_cpp.llama_model_quantize_default_params()
    with capture_llama_log(lambda level, text: seen.append(text)):
        assert current() != before
        rc = llama_cpp.llama_model_quantize(
            str(tmp_path / "missing.gguf").encode(),
            str(tmp_path / "out.gguf").encode(),
            ctypes.byref(params),
        )
    assert rc != 0
    assert "failed to quantize" in "".join(seen)
    assert current() == before
    assert not (tmp_path / "out.gguf").exists()


def test_a_failed_write_is_explained_and_leaves_nothing(ladder_model: Path, tmp_path: Path) -> None:
    """A write llama.cpp cannot complete (here: a file-size limit) is said in the user's terms.

    llama.cpp's C++ streams report it only as "basic_ios::clear: iostream error"; Python ignores
    SIGXFSZ, so the limit makes the quantizer's write fail instead of killing the process.
    """
    import resource

    limit = 200_000  # below the Q8_0 output, above anything the CLI writes before it

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "convert", "quantize", str(ladder_model), "--types", "Q8_0",
         "--out-dir", str(out_dir)],
        capture_output=True, text=True, preexec_fn=limit_file_size, timeout=120,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fathom-convert:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "iostream" not in errors[0] and "basic_ios" not in errors[0]
    assert f"writing the output to {out_dir} failed" in errors[0]
    assert _files(out_dir) == []
