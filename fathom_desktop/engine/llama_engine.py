"""LlamaEngine: the real ChatEngine, on llama-cpp-python.

One engine serves one request at a time and lives in one worker thread; only the events in
GenerationControl cross threads. Generation drives llama.cpp token by token (eval + sampler, not
create_completion, which re-detokenizes the whole output per token) so the cost per token stays
flat across the 16k-token context.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace

from fathom_desktop.engine import gpu_support
from fathom_desktop.engine import llama_backend as backend
from fathom_desktop.engine.batched import BatchedConsensus, Prompt, sequence_cells
from fathom_desktop.engine.chat_template import ChatTemplate
from fathom_desktop.engine.consensus import (
    ConsensusResult,
    check_sample_count,
    consensus,
    majority_vote,
)
from fathom_desktop.engine.context import fit_to_context, reply_reserve
from fathom_desktop.engine.errors import (
    DecodeError,
    EngineError,
    ModelLoadError,
    ModelNotLoadedError,
    SettingsError,
)
from fathom_desktop.engine.generation import Reply, ReplySetup
from fathom_desktop.engine.gguf_check import ModelFileInfo, check_model_file
from fathom_desktop.engine.native import llama_cpp
from fathom_desktop.engine.planner import (
    ParallelPlan,
    available_host_bytes,
    choose_parallel,
    detect_gpu,
    profile_from_model_file,
    sequence_memory,
)
from fathom_desktop.engine.reasoning import THINK_CLOSE, prompt_opens_reasoning
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    GenerationControl,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
)

# Fed after the last reasoning token when the thinking budget runs out (or "answer now"):
# the conventional end of an R1 reasoning, so the model continues with its answer.
REASONING_CLOSER = f"\n{THINK_CLOSE}\n\n"
MIN_CONTEXT = 64


@dataclass(frozen=True)
class _Loaded:
    llama: llama_cpp.Llama
    report: LoadReport
    info: ModelFileInfo
    template: ChatTemplate
    bos: int
    add_bos: bool
    setup: ReplySetup


class LlamaEngine:
    """ChatEngine over llama.cpp. Not thread-safe: one worker thread owns it."""

    def __init__(
        self, *, stop_at_end_of_generation: bool = True, interleave_samples: bool = False
    ) -> None:
        # Benchmarks switch the end-of-generation stop off to force a fixed length.
        self._stop_at_eog = stop_at_end_of_generation
        # Consensus events as the samples decode together, rather than sample after sample
        # (what a front end written for the sequential path expects).
        self._interleave_samples = interleave_samples
        self._model: _Loaded | None = None
        self._active: Generator[StreamEvent, None, None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def loaded(self) -> LoadReport | None:
        return self._model.report if self._model else None

    @property
    def n_past(self) -> int:
        """Tokens currently held in the KV cache (what the next prompt can reuse)."""
        return self._model.llama.n_tokens if self._model else 0

    def load(self, options: LoadOptions) -> LoadReport:
        info = check_model_file(options.model_path)  # before the old model goes
        notes: list[str] = []
        options = _cap_context(options, info, notes)
        _validate(options)
        self.close()
        gpu_supported = backend.gpu_offload_supported()
        n_gpu_layers = self._initial_gpu_layers(options, info, gpu_supported, notes)
        flash_attn = True if options.flash_attn is None else options.flash_attn
        llama = self._open_with_fallbacks(options, n_gpu_layers, flash_attn, notes)
        n_gpu_layers, flash_attn = llama.model_params.n_gpu_layers, _flash_attn_on(llama)
        report = LoadReport(
            model_path=options.model_path,
            # llama.cpp may round the context up; llama-cpp-python's buffers hold what we asked.
            n_ctx=min(options.n_ctx, llama.n_ctx()),
            n_gpu_layers=min(n_gpu_layers, info.n_layers + 1),
            n_layers=info.n_layers + 1,
            flash_attn=flash_attn,
            kv_cache_type=options.kv_cache_type,
            gpu_offload_supported=gpu_supported,
            file_type=info.file_type,
            notes=tuple(notes),
        )
        try:
            self._model = _prepare(llama, report, info, notes, self._stop_at_eog)
        except BaseException:
            llama.close()
            raise
        return self._model.report

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._model is not None:
            self._model.llama.close()
            self._model = None

    def _initial_gpu_layers(
        self, options: LoadOptions, info: ModelFileInfo, gpu_supported: bool, notes: list[str]
    ) -> int:
        n_layers = info.n_layers + 1
        wanted: int | None = None  # None: let the planner choose
        if options.n_gpu_layers is not None:
            wanted = n_layers if options.n_gpu_layers < 0 else min(options.n_gpu_layers, n_layers)
            if wanted == 0:
                return 0
        if not gpu_support.current_build().is_cuda:
            if wanted:
                notes.append("This llama-cpp-python build has no GPU offload; running on the CPU.")
            return 0
        gpu = detect_gpu()
        if gpu is None:
            if gpu_supported and wanted is not None:
                return wanted  # the user's choice; NVML may be missing while CUDA works
            notes.append("No NVIDIA GPU found; running on the CPU.")
            return 0
        # Checked for the user's own layer count too: an unsupported GPU aborts the process.
        # A CUDA build whose CUDA did not start (an old driver) reports no offload at all.
        problem = gpu_support.usability_problem(gpu)
        if problem is not None:
            notes.append(problem)
            return 0
        if wanted is not None:
            return wanted
        profile = profile_from_model_file(
            info,
            n_ctx=options.n_ctx,
            kv_cache_type=options.kv_cache_type,
            flash_attn=options.flash_attn is not False,
        )
        plan = profile.plan(gpu.free_bytes)
        notes.append(
            f"{gpu.name}: {plan.label} (about {plan.vram_bytes / 2**30:.1f} GiB of "
            f"{gpu.free_bytes / 2**30:.1f} GiB free)."
        )
        return plan.n_gpu_layers

    def _open_with_fallbacks(
        self, options: LoadOptions, n_gpu_layers: int, flash_attn: bool, notes: list[str]
    ) -> llama_cpp.Llama:
        first_error: str | None = None
        wanted_gpu_layers = n_gpu_layers
        while True:
            params = backend.OpenParams(
                model_path=str(options.model_path),
                n_ctx=options.n_ctx,
                n_gpu_layers=n_gpu_layers,
                flash_attn=flash_attn,
                kv_cache_type=options.kv_cache_type,
                n_threads=options.n_threads,
            )
            try:
                llama = backend.open_llama(params)
            except backend.LlamaOpenError as error:
                first_error = first_error or str(error)
                if n_gpu_layers > 0:
                    # Most load failures with layers on the GPU are out-of-memory: step down.
                    n_gpu_layers = max(0, n_gpu_layers - max(1, n_gpu_layers // 6))
                    continue
                if flash_attn and options.flash_attn is None and options.kv_cache_type == "f16":
                    flash_attn = False
                    notes.append("Flash attention is unavailable here; running without it.")
                    continue
                raise ModelLoadError(
                    f"llama.cpp could not load {options.model_path.name}: {first_error}"
                ) from None
            if n_gpu_layers < wanted_gpu_layers:
                notes.append(
                    f"Retried with {n_gpu_layers} GPU layers after {wanted_gpu_layers} failed "
                    f"to load ({first_error})."
                )
            return llama

    # -- tokens ----------------------------------------------------------------------------

    def _require(self) -> _Loaded:
        if self._model is None:
            raise ModelNotLoadedError("No model is loaded; load a GGUF model first.")
        return self._model

    def _tokenize(self, text: str) -> list[int]:
        model = self._require()
        return model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(_nfc(text)))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        # The model was trained on NFC text (tokenizer.json normalizes to NFC); llama.cpp's
        # tokenizer does not normalize, so decomposed input (macOS file names, some pastes)
        # would otherwise reach the model as token sequences it has never seen.
        normalized = [replace(m, content=_nfc(m.content)) for m in messages]
        return self._require().template.render(normalized)

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The tokens the engine would send for `messages` (rendered, before any trimming)."""
        return self._prompt_tokens(self.render_prompt(messages))

    def _prompt_tokens(self, prompt: str) -> list[int]:
        model = self._require()
        tokens = self._tokenize(prompt)
        # The R1 templates write BOS themselves; add it only for a template that does not.
        if model.add_bos and (not tokens or tokens[0] != model.bos):
            tokens.insert(0, model.bos)
        return tokens

    # -- generation ------------------------------------------------------------------------

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        """Validate and fit the prompt now (errors raise here), then stream events."""
        model = self._require()
        if self._active is not None:  # a stream left unfinished gives way to the new one
            self._active.close()
            self._active = None
        _validate_sampling(sampling)
        n_ctx = model.report.n_ctx
        fitted = fit_to_context(
            messages,
            lambda candidate: len(self._prompt_tokens(self.render_prompt(candidate))),
            n_ctx=n_ctx,
            reserve=reply_reserve(n_ctx, sampling.max_tokens),
        )
        prompt = self.render_prompt(fitted.messages)
        tokens = self._prompt_tokens(prompt)
        stream = self._stream(
            model,
            tokens,
            starts_in_reasoning=prompt_opens_reasoning(prompt),
            dropped=fitted.dropped_messages,
            sampling=sampling,
            control=control or GenerationControl(),
        )
        self._active = stream
        return stream

    def consensus(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl | None = None,
        on_event: Callable[[int, StreamEvent], None] | None = None,
        *,
        parallel: int | None = None,
    ) -> ConsensusResult:
        """Up to `parallel` samples decode together in one llama.cpp batch (see engine/batched);
        the planner picks how many fit in memory. One at a time runs the sequential path."""
        model = self._require()
        check_sample_count(k)
        _validate_sampling(sampling)
        if parallel is not None and parallel < 1:
            raise SettingsError("The number of parallel samples must be at least 1.")
        prompt = self._consensus_prompt(model, messages, sampling)
        plan = self.plan_parallel(len(prompt.tokens), sampling, k, parallel)
        if plan.parallel <= 1:
            result = consensus(self, messages, sampling, k, control, on_event)
            return replace(result, parallel=1, parallel_reason=plan.reason)
        if self._active is not None:  # the sample context shares the model, not the stream
            self._active.close()
            self._active = None
        run = BatchedConsensus(
            model.setup,
            prompt,
            sampling,
            k=k,
            n_parallel=plan.parallel,
            control=control or GenerationControl(),
            on_event=on_event,
            in_sample_order=not self._interleave_samples,
        )
        result = majority_vote(run.run())
        return replace(result, parallel=plan.parallel, parallel_reason=plan.reason)

    def plan_parallel(
        self, prompt_tokens: int, sampling: SamplingParams, k: int, cap: int | None = None
    ) -> ParallelPlan:
        """How many samples of a `prompt_tokens` prompt decode at once, and why."""
        model = self._require()
        report = model.report
        closer = len(model.setup.closer_tokens)
        reply = sequence_cells(prompt_tokens, report.n_ctx, sampling, closer)
        gpu = detect_gpu() if report.n_gpu_layers > 0 else None
        return choose_parallel(
            lambda cells: sequence_memory(
                model.info,
                kv_cache_type=report.kv_cache_type,
                n_gpu_layers=report.n_gpu_layers,
                flash_attn=report.flash_attn,
                n_cells=cells,
            ),
            k=k,
            cap=cap,
            prompt_tokens=prompt_tokens,
            reply_cells=reply,
            free_vram_bytes=gpu.free_bytes if gpu is not None else None,
            free_host_bytes=available_host_bytes(),
        )

    def _consensus_prompt(
        self, model: _Loaded, messages: list[ChatMessage], sampling: SamplingParams
    ) -> Prompt:
        """The prompt as generate() would send it: fitted to the context, then tokenized."""
        fitted = fit_to_context(
            messages,
            lambda candidate: len(self._prompt_tokens(self.render_prompt(candidate))),
            n_ctx=model.report.n_ctx,
            reserve=reply_reserve(model.report.n_ctx, sampling.max_tokens),
        )
        text = self.render_prompt(fitted.messages)
        return Prompt(
            tokens=tuple(self._prompt_tokens(text)),
            starts_in_reasoning=prompt_opens_reasoning(text),
            dropped_messages=fitted.dropped_messages,
        )

    def _stream(
        self,
        model: _Loaded,
        tokens: list[int],
        *,
        starts_in_reasoning: bool,
        dropped: int,
        sampling: SamplingParams,
        control: GenerationControl,
    ) -> Generator[StreamEvent, None, None]:
        llama = model.llama
        started = time.perf_counter()
        sampler = backend.Sampler(sampling, llama.n_vocab())
        try:
            if dropped:
                yield ContextTrimmed(dropped_messages=dropped)
            yield PhaseChanged(Phase.PROMPT, prompt_tokens=len(tokens))
            backend.reset_perf(llama)
            _evaluate_prompt(llama, tokens)
            prompt_perf = backend.read_perf(llama)
            reply = Reply(
                model.setup, sampler, sampling, control, starts_in_reasoning=starts_in_reasoning
            )
            finish = yield from reply.events()
            yield reply.finished(
                finish,
                prompt_tokens=len(tokens),
                started=started,
                prompt_perf=prompt_perf,
                dropped=dropped,
            )
        finally:
            sampler.close()


def _evaluate_prompt(llama: llama_cpp.Llama, tokens: list[int]) -> None:
    """Evaluate the prompt, reusing the longest cached prefix (at least one token is new)."""
    cached = llama.input_ids[: llama.n_tokens].tolist()
    reuse = 0
    for cached_token, token in zip(cached, tokens, strict=False):
        if cached_token != token:
            break
        reuse += 1
    reuse = min(reuse, len(tokens) - 1)  # the last prompt token must run to give logits
    if not backend.truncate_cache(llama, reuse):
        reuse = 0
    try:
        llama.eval(tokens[reuse:])
    except RuntimeError as error:
        raise DecodeError(f"llama.cpp failed while reading the prompt ({error}).") from None


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _cap_context(options: LoadOptions, info: ModelFileInfo, notes: list[str]) -> LoadOptions:
    """Never ask for more context than the model was trained for; say so when it is cut.

    The app's default (Fathom-R1-14B's 16k) is more than smaller models such as the 4k demo
    were trained for; positions past the trained length give garbage, so use the most it can.
    """
    if options.n_ctx <= info.n_ctx_train:
        return options
    notes.append(
        f"Context capped at {info.n_ctx_train:,} tokens, the most this model was trained for."
    )
    return replace(options, n_ctx=info.n_ctx_train)


def _flash_attn_on(llama: llama_cpp.Llama) -> bool:
    return llama.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED


def _validate(options: LoadOptions) -> None:
    if options.kv_cache_type not in backend.KV_TYPES:
        choices = ", ".join(backend.KV_TYPES)
        raise SettingsError(
            f"Unknown KV cache type '{options.kv_cache_type}'; use one of {choices}."
        )
    if options.kv_cache_type != "f16" and options.flash_attn is False:
        raise SettingsError(
            f"A {options.kv_cache_type} KV cache needs flash attention; turn flash attention on "
            "or use the f16 KV cache."
        )
    if options.n_ctx < MIN_CONTEXT:
        raise SettingsError(
            f"A context of {options.n_ctx} tokens is too small; use at least {MIN_CONTEXT}."
        )
    if options.n_threads is not None and options.n_threads < 1:
        raise SettingsError("The thread count must be at least 1.")


def _validate_sampling(sampling: SamplingParams) -> None:
    if sampling.temperature < 0:
        raise SettingsError("The temperature cannot be negative.")
    if not 0.0 < sampling.top_p <= 1.0:
        raise SettingsError("top_p must be in (0, 1].")
    if sampling.max_tokens is not None and sampling.max_tokens < 1:
        raise SettingsError("max_tokens must be at least 1.")
    if sampling.thinking_budget is not None and sampling.thinking_budget < 0:
        raise SettingsError("The thinking budget cannot be negative.")


def _token_text(vocab: llama_cpp.llama_vocab_p, token: int) -> str:
    if token < 0:
        return ""
    return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")


def _prepare(
    llama: llama_cpp.Llama,
    report: LoadReport,
    info: ModelFileInfo,
    notes: list[str],
    stop_at_eog: bool,
) -> _Loaded:
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    bos = llama.token_bos()
    eos = llama.token_eos()
    template = ChatTemplate(
        info.chat_template,
        bos_token=_token_text(vocab, bos),
        eos_token=_token_text(vocab, eos),
    )
    closer = llama.tokenize(REASONING_CLOSER.encode("utf-8"), add_bos=False, special=True)
    # `</think>` must come out of the detokenizer as text. As a USER_DEFINED token it does; if a
    # converter marked it CONTROL, render special tokens rather than lose the split.
    think_close = llama.tokenize(THINK_CLOSE.encode("utf-8"), add_bos=False, special=True)
    render_special = len(think_close) == 1 and backend.token_is_control(vocab, think_close[0])
    if render_special:
        notes.append("</think> is a control token in this file; special tokens will be shown.")
        report = replace(report, notes=tuple(notes))
    setup = ReplySetup(
        llama=llama,
        vocab=vocab,
        n_ctx=report.n_ctx,
        closer_tokens=tuple(closer),
        render_special=render_special,
        stop_at_end_of_generation=stop_at_eog,
    )
    return _Loaded(
        llama=llama,
        report=report,
        info=info,
        template=template,
        bos=bos,
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        setup=setup,
    )


__all__ = ["REASONING_CLOSER", "EngineError", "LlamaEngine"]
