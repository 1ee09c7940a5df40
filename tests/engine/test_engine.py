"""LlamaEngine on the tiny random-weight GGUFs: events, the split, budgets, cancel, errors.

Random weights write gibberish and almost never `</think>`, so the thinking budget and
"answer now" are what force the reasoning to close; seeds make every run repeatable.
"""

from __future__ import annotations

import threading
from pathlib import Path

import llama_cpp
import pytest

from fathom_desktop.engine import LlamaEngine, gpu_support, llama_backend
from fathom_desktop.engine.errors import (
    ModelFileError,
    ModelLoadError,
    ModelNotLoadedError,
    PromptTooLongError,
    SettingsError,
)
from fathom_desktop.engine.gpu_support import CudaBuild
from fathom_desktop.engine.llama_engine import REASONING_CLOSER
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from tests.engine.conftest import SMALL_CTX
from tests.engine.tiny_models import small_qwen2

QUESTION = [ChatMessage("user", "What is 3 + 4?")]


def run(engine: LlamaEngine, sampling: SamplingParams, messages=QUESTION, control=None):
    events = list(engine.generate(messages, sampling, control))
    finished = events[-1]
    assert isinstance(finished, Finished)
    return events, finished


def deltas(events: list[StreamEvent], kind: DeltaKind) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.kind is kind)


def test_load_report_describes_the_model(engine: LlamaEngine):
    report = engine.loaded
    assert report is not None
    assert report.n_ctx == SMALL_CTX
    assert report.n_layers == 3  # two blocks and the output layer
    assert report.file_type == "F32"
    assert report.gpu_offload_supported == llama_cpp.llama_supports_gpu_offload()
    if not report.gpu_offload_supported:
        assert report.n_gpu_layers == 0
    assert report.flash_attn is True


def test_stream_shape_and_thinking_budget_close_the_reasoning(engine: LlamaEngine):
    events, finished = run(engine, SamplingParams(seed=7, max_tokens=40, thinking_budget=6))
    assert events[0] == PhaseChanged(Phase.PROMPT, prompt_tokens=finished.stats.prompt_tokens)
    phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
    assert phases == [Phase.PROMPT, Phase.REASONING, Phase.ANSWER]
    stats = finished.stats
    assert stats.thinking_closed_early
    assert stats.reasoning_tokens == 6
    assert stats.reasoning_tokens + stats.answer_tokens == 40
    assert stats.finish_reason is FinishReason.LENGTH
    # The deltas add up to the final texts, with the tag and its whitespace gone.
    assert deltas(events, DeltaKind.REASONING) == finished.reasoning
    assert deltas(events, DeltaKind.ANSWER) == finished.answer
    assert finished.answer and finished.answer == finished.answer.lstrip()
    assert "</think>" not in finished.reasoning
    assert stats.decode_tokens_per_s > 0 and stats.time_to_first_token_s > 0


def test_closing_the_reasoning_reuses_the_kv_cache(engine: LlamaEngine):
    _, finished = run(engine, SamplingParams(seed=7, max_tokens=40, thinking_budget=6))
    stats = finished.stats
    closer = engine.count_tokens(REASONING_CLOSER)
    # One unbroken sequence: prompt, 6 reasoning tokens, the closer, then the answer (all
    # evaluated except the very last sample). Re-processing the prompt would not add up.
    assert engine.n_past == stats.prompt_tokens + 40 + closer
    llama = engine._model.llama  # type: ignore[union-attr]
    start = stats.prompt_tokens + 6
    injected = llama.input_ids[start : start + closer].tolist()
    assert injected == llama.tokenize(REASONING_CLOSER.encode(), add_bos=False, special=True)


def test_same_seed_same_reply_different_seed_different_reply(engine: LlamaEngine):
    sampling = SamplingParams(seed=11, max_tokens=20, thinking_budget=5)
    first = run(engine, sampling)[1]
    again = run(engine, sampling)[1]
    other = run(engine, SamplingParams(seed=12, max_tokens=20, thinking_budget=5))[1]
    assert (first.reasoning, first.answer) == (again.reasoning, again.answer)
    assert (first.reasoning, first.answer) != (other.reasoning, other.answer)


def test_answer_now_before_any_reasoning(engine: LlamaEngine):
    control = GenerationControl()
    control.answer_now.set()
    _, finished = run(engine, SamplingParams(seed=3, max_tokens=15), control=control)
    assert finished.stats.thinking_closed_early
    assert finished.stats.reasoning_tokens == 1
    assert finished.answer


def test_answer_now_from_another_thread_mid_reasoning(engine: LlamaEngine):
    control = GenerationControl()
    seen_reasoning = threading.Event()

    def press_answer_now() -> None:
        seen_reasoning.wait(timeout=30)
        control.answer_now.set()

    presser = threading.Thread(target=press_answer_now)
    presser.start()
    events = []
    for event in engine.generate(QUESTION, SamplingParams(seed=5, max_tokens=60), control):
        events.append(event)
        if isinstance(event, TextDelta) and event.kind is DeltaKind.REASONING:
            seen_reasoning.set()
            presser.join()  # the press lands before the next token is decided
    finished = events[-1]
    assert finished.stats.thinking_closed_early
    assert 0 < finished.stats.reasoning_tokens < 60
    assert deltas(events, DeltaKind.ANSWER) == finished.answer != ""


def test_cancel_mid_stream_then_the_next_reply_is_unaffected(engine: LlamaEngine):
    sampling = SamplingParams(seed=21, max_tokens=30, thinking_budget=8)
    reference = run(engine, sampling)[1]

    control = GenerationControl()
    events = []
    for event in engine.generate(QUESTION, SamplingParams(seed=99, max_tokens=200), control):
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == 5:
            control.cancel.set()
    cancelled = events[-1]
    assert cancelled.stats.finish_reason is FinishReason.CANCELLED
    assert cancelled.stats.reasoning_tokens + cancelled.stats.answer_tokens < 200

    after = run(engine, sampling)[1]
    assert (after.reasoning, after.answer) == (reference.reasoning, reference.answer)


def test_cancel_from_another_thread_ends_the_stream(engine: LlamaEngine):
    control = GenerationControl()
    started = threading.Event()
    canceller = threading.Thread(target=lambda: started.wait(30) and control.cancel.set())
    canceller.start()
    finished = None
    for event in engine.generate(QUESTION, SamplingParams(seed=1), control):
        if isinstance(event, TextDelta):
            started.set()
        if isinstance(event, Finished):
            finished = event
    canceller.join()
    assert finished is not None
    assert finished.stats.finish_reason is FinishReason.CANCELLED


def test_generation_stops_when_the_context_is_full(tiny_gguf_f32: Path):
    engine = LlamaEngine()
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=128))
    _, finished = run(engine, SamplingParams(seed=2))
    engine_filled = engine.n_past
    engine.close()
    assert finished.stats.finish_reason is FinishReason.CONTEXT
    assert engine_filled == 128
    stats = finished.stats
    assert stats.prompt_tokens + stats.reasoning_tokens + stats.answer_tokens == 128


def test_old_turns_are_dropped_and_reported(engine: LlamaEngine):
    long_turn = "word " * 120
    history = []
    for index in range(4):
        history += [
            ChatMessage("user", f"{index}: {long_turn}"),
            ChatMessage("assistant", long_turn, reasoning=long_turn * 3),
        ]
    messages = [ChatMessage("system", "Be brief."), *history, ChatMessage("user", "And now?")]
    events, finished = run(engine, SamplingParams(seed=4, max_tokens=200), messages)
    assert isinstance(events[0], ContextTrimmed) and events[0].dropped_messages > 0
    assert finished.stats.dropped_messages == events[0].dropped_messages
    # Room kept for the reply: a quarter of this small context.
    assert finished.stats.prompt_tokens + SMALL_CTX // 4 <= SMALL_CTX


def test_a_message_larger_than_the_context_is_refused_up_front(engine: LlamaEngine):
    with pytest.raises(PromptTooLongError) as raised:
        engine.generate([ChatMessage("user", "token " * 2000)], SamplingParams())
    assert f"{SMALL_CTX:,}" in str(raised.value)
    # The engine is still fine afterwards.
    assert (
        run(engine, SamplingParams(seed=1, max_tokens=3))[1].stats.finish_reason
        is FinishReason.LENGTH
    )


def test_next_turn_reuses_the_cached_prefix_and_matches_a_fresh_engine(
    engine: LlamaEngine, tiny_gguf_f32: Path
):
    sampling = SamplingParams(seed=8, max_tokens=12, thinking_budget=4)
    first = run(engine, sampling)[1]
    follow_up = [
        *QUESTION,
        ChatMessage("assistant", first.answer, reasoning=first.reasoning),
        ChatMessage("user", "Are you sure?"),
    ]
    llama = engine._model.llama  # type: ignore[union-attr]
    stream = engine.generate(follow_up, sampling)
    prompt_event = next(stream)
    next(stream)  # the prompt has been evaluated once the first event after it arrives
    evaluated = llama_backend.read_perf(llama).prompt_tokens
    rest = list(stream)
    second = rest[-1]
    # Only the part after the shared prefix ("<bos><｜User｜>What is 3 + 4?<｜Assistant｜>") ran.
    before, after = engine.prompt_tokens(QUESTION), engine.prompt_tokens(follow_up)
    shared = next(i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
    assert shared >= 9
    assert evaluated == prompt_event.prompt_tokens - shared

    fresh = LlamaEngine()
    try:
        fresh.load(LoadOptions(tiny_gguf_f32, n_ctx=SMALL_CTX))
        from_scratch = run(fresh, sampling, follow_up)[1]
    finally:
        fresh.close()
    assert (second.reasoning, second.answer) == (from_scratch.reasoning, from_scratch.answer)


def test_end_of_generation_token_stops_the_reply(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
):
    model = engine._model  # type: ignore[union-attr]
    eos = model.llama.token_eos()
    assert llama_backend.is_end_of_generation(model.setup.vocab, eos)
    think_close = model.llama.tokenize(b"</think>", add_bos=False, special=True)
    assert not llama_backend.is_end_of_generation(model.setup.vocab, think_close[0])

    calls = 0

    def eog_on_fifth(vocab: object, token: int) -> bool:
        nonlocal calls
        calls += 1
        return calls == 5

    monkeypatch.setattr(llama_backend, "is_end_of_generation", eog_on_fifth)
    _, finished = run(engine, SamplingParams(seed=1, max_tokens=50))
    assert finished.stats.finish_reason is FinishReason.STOP
    assert finished.stats.reasoning_tokens + finished.stats.answer_tokens == 4


def test_count_tokens_knows_the_reasoning_tags(engine: LlamaEngine):
    assert engine.count_tokens("<think>") == 1
    assert engine.count_tokens("</think>") == 1
    assert engine.count_tokens("hello world") == 2


def test_detokenizer_keeps_characters_split_across_tokens(engine: LlamaEngine):
    text = "数学 🦜🦜 ∮ café 𝔽"
    model = engine._model  # type: ignore[union-attr]
    tokens = model.llama.tokenize(text.encode(), add_bos=False, special=False)
    detokenizer = llama_backend.Detokenizer(model.setup.vocab, render_special=False)
    pieces = [detokenizer.piece(t) for t in tokens]
    # The test only means something if some token carries part of a character.
    assert any(_broken_utf8(piece) for piece in pieces)
    detokenizer = llama_backend.Detokenizer(model.setup.vocab, render_special=False)
    assert "".join(detokenizer.push(t) for t in tokens) + detokenizer.flush() == text


def _broken_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_legacy_template_without_think_is_all_answer(tiny_gguf_legacy: Path):
    engine = LlamaEngine()
    try:
        engine.load(LoadOptions(tiny_gguf_legacy, n_ctx=SMALL_CTX))
        assert engine.render_prompt(QUESTION).endswith("<｜Assistant｜>")
        events, finished = run(engine, SamplingParams(seed=9, max_tokens=20, thinking_budget=3))
        # The random model does not open <think>, so there is no reasoning to budget.
        assert finished.reasoning == "" and finished.answer
        assert not finished.stats.thinking_closed_early
        assert finished.stats.answer_tokens == 20
        assert [e.phase for e in events if isinstance(e, PhaseChanged)] == [
            Phase.PROMPT,
            Phase.ANSWER,
        ]
    finally:
        engine.close()


def test_quantized_kv_cache_needs_flash_attention(wide_head_gguf: Path):
    engine = LlamaEngine()
    with pytest.raises(SettingsError) as raised:
        engine.load(LoadOptions(wide_head_gguf, n_ctx=256, kv_cache_type="q8_0", flash_attn=False))
    assert "flash attention" in str(raised.value)
    report = engine.load(LoadOptions(wide_head_gguf, n_ctx=256, kv_cache_type="q8_0"))
    assert report.kv_cache_type == "q8_0" and report.flash_attn
    stats = run(engine, SamplingParams(seed=1, max_tokens=5))[1].stats
    assert stats.reasoning_tokens + stats.answer_tokens == 5
    engine.close()


def test_bad_file_keeps_the_loaded_model_and_close_frees_it(tiny_gguf_f32: Path, tmp_path: Path):
    engine = LlamaEngine()
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf_f32.read_bytes()[:1_000_000])
    with pytest.raises(ModelFileError):
        engine.load(LoadOptions(broken, n_ctx=256))
    assert engine.loaded is not None  # checked before the old model was let go
    engine.close()
    assert engine.loaded is None
    with pytest.raises(ModelNotLoadedError):
        engine.generate(QUESTION, SamplingParams())
    engine.close()  # twice is fine


def test_loading_another_file_replaces_the_model(tiny_gguf_f32: Path, tiny_gguf_legacy: Path):
    engine = LlamaEngine()
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256))
    assert engine.render_prompt(QUESTION).endswith("<think>\n")
    report = engine.load(LoadOptions(tiny_gguf_legacy, n_ctx=256))
    assert report.model_path == tiny_gguf_legacy and report.file_type == "BF16"
    assert engine.render_prompt(QUESTION).endswith("<｜Assistant｜>")
    engine.close()


def test_settings_the_model_cannot_honour(tiny_gguf_f32: Path):
    engine = LlamaEngine()
    with pytest.raises(SettingsError):
        engine.load(LoadOptions(tiny_gguf_f32, n_ctx=16))  # too long is capped, too short is not
    with pytest.raises(SettingsError):
        engine.load(LoadOptions(tiny_gguf_f32, kv_cache_type="q5_1"))  # type: ignore[arg-type]
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256))
    with pytest.raises(SettingsError):
        engine.generate(QUESTION, SamplingParams(temperature=-1))
    engine.close()


def test_gpu_out_of_memory_retries_with_fewer_layers(
    tiny_gguf_f32: Path, monkeypatch: pytest.MonkeyPatch
):
    real_open = llama_backend.open_llama
    tried: list[int] = []

    def open_with_small_gpu(params: llama_backend.OpenParams):
        tried.append(params.n_gpu_layers)
        if params.n_gpu_layers > 1:
            raise llama_backend.LlamaOpenError("CUDA error: out of memory")
        return real_open(params)

    monkeypatch.setattr(llama_backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(gpu_support, "current_build", lambda: CudaBuild((860,), 13000))
    monkeypatch.setattr(llama_backend, "open_llama", open_with_small_gpu)
    engine = LlamaEngine()
    report = engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256, n_gpu_layers=3))
    engine.close()
    assert tried[0] == 3 and tried[-1] <= 1 and tried == sorted(tried, reverse=True)
    assert report.n_gpu_layers == tried[-1]
    assert any("Retried with" in note for note in report.notes)


def test_a_load_failure_is_one_readable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf_f32: Path
):
    def refuse(params: llama_backend.OpenParams):
        raise llama_backend.LlamaOpenError("llama_model_load: error loading model: bad tensor")

    monkeypatch.setattr(llama_backend, "open_llama", refuse)
    with pytest.raises(ModelLoadError) as raised:
        LlamaEngine().load(LoadOptions(tiny_gguf_f32, n_ctx=256, flash_attn=False))
    assert str(raised.value) == (
        f"llama.cpp could not load {tiny_gguf_f32.name}: "
        "llama_model_load: error loading model: bad tensor"
    )


def test_llama_cpp_refusal_carries_its_reason_every_time(tmp_path: Path):
    # Passes our checks, but its byte-level BPE tokenizer has no merges: llama.cpp refuses it.
    path = small_qwen2(tmp_path / "refused.gguf")
    engine = LlamaEngine()
    for _ in range(2):  # the second failure must not lose the reason to the first one
        with pytest.raises(ModelLoadError) as raised:
            engine.load(LoadOptions(path, n_ctx=128))
        message = str(raised.value)
        assert message.startswith("llama.cpp could not load refused.gguf: ")
        assert "merges" in message and "\n" not in message
    assert engine.loaded is None
