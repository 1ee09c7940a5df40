"""LlamaEngine: the real ChatEngine, on llama-cpp-python.

One engine serves one request at a time and lives in one worker thread; only the events in
GenerationControl cross threads. Generation drives llama.cpp token by token (eval + sampler, not
create_completion, which re-detokenizes the whole output per token) so the cost per token stays
flat across the 16k-token context.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace

from fathom_desktop.engine import gpu_support
from fathom_desktop.engine import llama_backend as backend
from fathom_desktop.engine.batched import BatchedConsensus, Prompt, sequence_cells
from fathom_desktop.engine.chat_template import ChatTemplate, ChatTemplateError, RenderedPrompt
from fathom_desktop.engine.consensus import (
    ConsensusResult,
    check_sample_count,
    consensus,
    majority_vote,
)
from fathom_desktop.engine.context import FittedPrompt, fit_to_context, reply_reserve
from fathom_desktop.engine.errors import (
    DecodeError,
    EngineError,
    ModelFileError,
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
from fathom_desktop.engine.prompt import Continuation, split_continuation
from fathom_desktop.engine.reasoning import THINK_CLOSE, prompt_opens_reasoning
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
    TextDelta,
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
    # Control-token text -> id: only the template's markup may produce these.
    control_ids: dict[str, int]
    bos: int
    add_bos: bool
    setup: ReplySetup
    prompt_abort: backend.PromptAbort


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
        _probe_template(info)  # before the weights are read
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
        """Tokens of `text` read as text: a control token's text in it stays text."""
        model = self._require()
        return model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(_nfc(_valid_text(text))))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self._render(messages).text

    def _render(self, messages: Sequence[ChatMessage]) -> RenderedPrompt:
        # The model was trained on NFC text (tokenizer.json normalizes to NFC); llama.cpp's
        # tokenizer does not normalize, so decomposed input (macOS file names, some pastes)
        # would otherwise reach the model as token sequences it has never seen.
        normalized = [replace(m, content=_nfc(_valid_text(m.content))) for m in messages]
        return self._require().template.render_pieces(normalized)

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The tokens the engine would send for `messages` (rendered, before any trimming)."""
        return self._prompt_tokens(self._render(messages))

    def _prompt_tokens(self, prompt: RenderedPrompt) -> list[int]:
        """Markup's control tokens by id, everything else tokenized as text.

        Text pieces run from one control token to the next, so markup text and message text
        between them are tokenized together, exactly as a whole-prompt tokenization would.
        """
        model = self._require()
        tokens: list[int] = []
        for piece in prompt.pieces:
            if piece.control:
                tokens.append(model.control_ids[piece.text])
            else:
                tokens += self._tokenize(piece.text)
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
        """Validate and fit the prompt now (errors raise here), then stream events.

        A `partial` assistant message at the end is continued: its text is written after the
        prompt (prefill) and decoding goes on from there; the events carry only the new text.
        """
        model = self._require()
        if self._active is not None:  # a stream left unfinished gives way to the new one
            self._active.close()
            self._active = None
        _validate_sampling(sampling)
        n_ctx = model.report.n_ctx
        history, partial = split_continuation(messages)
        continuation: Continuation | None = None
        prefill: list[int] = []
        if partial is not None:
            opens = prompt_opens_reasoning(self._render(history).text)
            continuation = Continuation.of(partial, prompt_opens_reasoning=opens)
            # The saved reply is the model's own text: tokenized as text, never as markup.
            prefill = self._tokenize(_nfc(continuation.text)) if continuation.text else []
        fitted, prompt, prompt_tokens = self._fit_prompt(
            history, n_ctx, reply_reserve(n_ctx, sampling.max_tokens) + len(prefill)
        )
        tokens = prompt_tokens + prefill
        stream = self._stream(
            model,
            tokens,
            starts_in_reasoning=(
                continuation.in_reasoning
                if continuation is not None
                else prompt_opens_reasoning(prompt.text)
            ),
            continued=continuation is not None and bool(continuation.text),
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

    def _fit_prompt(
        self, messages: list[ChatMessage], n_ctx: int, reserve: int
    ) -> tuple[FittedPrompt, RenderedPrompt, list[int]]:
        """The messages that fit `n_ctx` with `reserve` tokens left, rendered and tokenized."""
        # Each candidate is rendered and tokenized once; the chosen one is not done again.
        prepared: dict[tuple[ChatMessage, ...], tuple[RenderedPrompt, list[int]]] = {}

        def count(candidate: Sequence[ChatMessage]) -> int:
            rendered = self._render(candidate)
            prepared[tuple(candidate)] = (rendered, self._prompt_tokens(rendered))
            return len(prepared[tuple(candidate)][1])

        fitted = fit_to_context(messages, count, n_ctx=n_ctx, reserve=reserve)
        rendered, tokens = prepared[tuple(fitted.messages)]
        return fitted, rendered, tokens

    def _consensus_prompt(
        self, model: _Loaded, messages: list[ChatMessage], sampling: SamplingParams
    ) -> Prompt:
        """The prompt as generate() would send it: fitted to the context, then tokenized."""
        n_ctx = model.report.n_ctx
        fitted, rendered, tokens = self._fit_prompt(
            messages, n_ctx, reply_reserve(n_ctx, sampling.max_tokens)
        )
        return Prompt(
            tokens=tuple(tokens),
            starts_in_reasoning=prompt_opens_reasoning(rendered.text),
            dropped_messages=fitted.dropped_messages,
        )

    def _stream(
        self,
        model: _Loaded,
        tokens: list[int],
        *,
        starts_in_reasoning: bool,
        continued: bool,
        dropped: int,
        sampling: SamplingParams,
        control: GenerationControl,
    ) -> Generator[StreamEvent, None, None]:
        llama = model.llama
        started = time.perf_counter()
        sampler = _RecordingSampler(backend.Sampler(sampling, llama.n_vocab()))
        try:
            if dropped:
                yield ContextTrimmed(dropped_messages=dropped)
            yield PhaseChanged(Phase.PROMPT, prompt_tokens=len(tokens))
            backend.reset_perf(llama)
            with model.prompt_abort.watching(control.cancel):
                read = _evaluate_prompt(llama, tokens, control)
            prompt_perf = backend.read_perf(llama)
            reply = Reply(
                model.setup,
                sampler,  # type: ignore[arg-type]  # records what it samples, else a Sampler
                sampling,
                control,
                starts_in_reasoning=starts_in_reasoning,
            )
            seam = None
            if continued:
                seam = _Seam(
                    llama,
                    sampler,
                    DeltaKind.REASONING if starts_in_reasoning else DeltaKind.ANSWER,
                )
            # Stop while the prompt was read ends the reply before its first token.
            if read:
                events = reply.events() if seam is None else seam.events(reply.events())
                finish = yield from events
            else:
                finish = FinishReason.CANCELLED
            finished = reply.finished(
                finish,
                prompt_tokens=len(tokens),
                started=started,
                prompt_perf=prompt_perf,
                dropped=dropped,
            )
            yield finished if seam is None else seam.finished(finished)
        finally:
            sampler.close()


class _RecordingSampler:
    """A Sampler that remembers the first tokens it sampled (what `_Seam` needs to look at)."""

    KEPT = 16

    def __init__(self, sampler: backend.Sampler) -> None:
        self._sampler = sampler
        self.first: list[int] = []

    def sample(self, ctx: llama_cpp.llama_context_p) -> int:
        token = self._sampler.sample(ctx)
        if len(self.first) < self.KEPT:
            self.first.append(token)
        return token

    def accept(self, token: int) -> None:
        self._sampler.accept(token)

    def close(self) -> None:
        self._sampler.close()


class _Seam:
    """Where a continued reply meets its saved text: keep the whitespace the model put there.

    The reasoning splitter drops whitespace at the start of a section, which is right for a new
    reply but would glue a continued one to its saved text ("Let me check" + "the sum"). The
    whitespace the model sampled before its first visible text goes back in front of it, when
    that text goes on in the same part (`continues`) as the saved text ended in.
    """

    def __init__(
        self, llama: llama_cpp.Llama, sampler: _RecordingSampler, continues: DeltaKind
    ) -> None:
        self._llama = llama
        self._sampler = sampler
        self._continues = continues
        self._kind: DeltaKind | None = None
        self._space = ""

    def events(
        self, events: Generator[StreamEvent, None, FinishReason]
    ) -> Generator[StreamEvent, None, FinishReason]:
        first = True
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                return stop.value
            if first and isinstance(event, TextDelta):
                first = False
                event = self._restore(event)
            yield event

    def _restore(self, delta: TextDelta) -> TextDelta:
        if delta.kind is not self._continues:
            return delta  # the reasoning closed at once: the answer starts a new part
        sampled = self._llama.detokenize(self._sampler.first).decode("utf-8", "replace")
        space = sampled[: len(sampled) - len(sampled.lstrip())]
        if not space or delta.text.startswith(space):
            return delta
        self._kind, self._space = delta.kind, space
        return replace(delta, text=space + delta.text)

    def finished(self, finished: Finished) -> Finished:
        if self._kind is DeltaKind.REASONING:
            return replace(finished, reasoning=self._space + finished.reasoning)
        if self._kind is DeltaKind.ANSWER:
            return replace(finished, answer=self._space + finished.answer)
        return finished


def _evaluate_prompt(llama: llama_cpp.Llama, tokens: list[int], control: GenerationControl) -> bool:
    """Evaluate the prompt, reusing the longest cached prefix (at least one token is new);
    False when Stop aborted it."""
    cached = llama.input_ids[: llama.n_tokens].tolist()
    reuse = 0
    for cached_token, token in zip(cached, tokens, strict=False):
        if cached_token != token:
            break
        reuse += 1
    reuse = min(reuse, len(tokens) - 1)  # the last prompt token must run to give logits
    if not backend.truncate_cache(llama, reuse):
        reuse = 0
    # One batch at a time with Stop checked between them too: the abort callback acts only on
    # the CPU backend's graph, and a fully offloaded model would otherwise read to the end.
    new_tokens = tokens[reuse:]
    for start in range(0, len(new_tokens), llama.n_batch):
        if control.cancel.is_set():
            return False
        try:
            llama.eval(new_tokens[start : start + llama.n_batch])
        except RuntimeError as error:
            if control.cancel.is_set():
                return False
            raise DecodeError(f"llama.cpp failed while reading the prompt ({error}).") from None
    return True


def _valid_text(text: str) -> str:
    """Refuse a lone surrogate (undecodable bytes smuggled into a str), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise EngineError(
            f"A message holds something that is not text (an unpaired surrogate, "
            f"U+{ord(text[error.start]):04X}, at character {error.start + 1}); remove it and "
            "send again."
        ) from None
    return text


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


def side_by_side_engine() -> LlamaEngine:
    """The window's engine: consensus samples reported as they decode together, so that each
    sample's lane moves as its sample does (the engine host makes it by this name)."""
    return LlamaEngine(interleave_samples=True)


def _validate_sampling(sampling: SamplingParams) -> None:
    # NaN passes every comparison (nan < 0 is False) and reaches llama.cpp's samplers as garbage,
    # so finiteness is checked first.
    for name, value in (
        ("temperature", sampling.temperature),
        ("top_p", sampling.top_p),
        ("min_p", sampling.min_p),
        ("repeat_penalty", sampling.repeat_penalty),
    ):
        if not math.isfinite(value):
            raise SettingsError(f"The {name} must be a finite number, not {value}.")
    if sampling.temperature < 0:
        raise SettingsError("The temperature cannot be negative.")
    if not 0.0 < sampling.top_p <= 1.0:
        raise SettingsError("top_p must be in (0, 1].")
    if not 0.0 <= sampling.min_p <= 1.0:
        raise SettingsError("min_p must be in [0, 1].")
    if sampling.repeat_penalty <= 0:
        raise SettingsError("The repeat penalty must be above 0.")
    if sampling.top_k < 0:
        raise SettingsError("top_k cannot be negative.")
    if sampling.max_tokens is not None and sampling.max_tokens < 1:
        raise SettingsError("max_tokens must be at least 1.")
    if sampling.thinking_budget is not None and sampling.thinking_budget < 0:
        raise SettingsError("The thinking budget cannot be negative.")


def _token_text(vocab: llama_cpp.llama_vocab_p, token: int) -> str:
    if token < 0:
        return ""
    return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")


def _probe_template(info: ModelFileInfo) -> None:
    """Refuse a model whose chat template is broken or runs away, before its weights load.

    BOS/EOS texts are stand-ins here (the vocabulary is not read yet); they only fill slots.
    """
    try:
        ChatTemplate(info.chat_template, bos_token="<s>", eos_token="</s>").probe()
    except ChatTemplateError as error:
        raise ModelFileError(f"{info.path.name}: its chat template {error.cause}.") from None


# The token kinds llama.cpp reads from text only when asked to parse special tokens.
_PARSED_ONLY_AS_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN


def _control_ids(llama: llama_cpp.Llama, vocab: llama_cpp.llama_vocab_p) -> dict[str, int]:
    """The vocabulary's control tokens (CONTROL or UNKNOWN: what parse_special alone reads).

    Each text maps to the id llama.cpp itself gives it, should two ids share a text.
    """
    texts = {
        _token_text(vocab, token)
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
        if llama_cpp.llama_vocab_get_attr(vocab, token) & _PARSED_ONLY_AS_SPECIAL
    }
    ids: dict[str, int] = {}
    for text in filter(None, texts):
        tokens = llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(tokens) == 1:
            ids[text] = tokens[0]
    return ids


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
    control_ids = _control_ids(llama, vocab)
    try:
        template = ChatTemplate(
            info.chat_template,
            bos_token=_token_text(vocab, bos),
            eos_token=_token_text(vocab, eos),
            control_texts=control_ids,
        )
        template.probe()
    except ChatTemplateError as error:
        raise ModelFileError(f"{info.path.name}: its chat template {error.cause}.") from None
    # `</think>` must come out of the detokenizer as text. As a USER_DEFINED token it does; if a
    # converter marked it CONTROL, render special tokens rather than lose the split.
    think_close = llama.tokenize(THINK_CLOSE.encode("utf-8"), add_bos=False, special=True)
    render_special = len(think_close) == 1 and backend.token_is_control(vocab, think_close[0])
    if render_special:
        notes.append("</think> is a control token in this file; special tokens will be shown.")
        report = replace(report, notes=tuple(notes))
    # The closer is text; only in such a file is its `</think>` the control token it must be.
    closer = llama.tokenize(REASONING_CLOSER.encode("utf-8"), add_bos=False, special=render_special)
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
        control_ids=control_ids,
        bos=bos,
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        setup=setup,
        prompt_abort=backend.PromptAbort(llama),
    )


__all__ = ["REASONING_CLOSER", "EngineError", "LlamaEngine"]
