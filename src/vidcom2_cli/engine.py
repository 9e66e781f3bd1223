"""A loaded model answering questions about videos: decode -> encode -> compress -> generate.

The engine owns the order of the stages and their timings; what each stage does lives in
``encoding`` (decoding, preprocessing, the vision encoder, the feature cache), ``models`` (the
family adapters) and ``compression`` (the selectors). Callers hand it whole work:

- ``ask`` and ``ask_many``: questions about one video (the ``ask`` and ``chat`` commands);
- ``answer_stream``: groups of questions about many videos, decoded ahead on worker threads and
  answered in batches (the batch runner; the pipeline is ``group_stream``);
- ``answer_groups``: questions about videos encoded already (``prepare`` is the CPU half that
  may run on any thread, ``encode_prepared`` the device half);
- ``open``, ``video_context``, ``open_contexts`` and ``ask_open``: videos compressed and
  prefilled once and kept open for questions to come (the chat loop, the server's cache).

Compression, the context check, prefix prefill and generate calls are the engine's own
phases, private to it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence

import torch

from . import __version__
from .answer_figures import answer_timing, token_counts
from .compression import KeepPlan, get_method, llm_stages, select
from .encoding import VideoEncoder, as_input_error
from .errors import InputError
from .feature_cache import FeatureCache
from .group_stream import answer_in_order
from .models import LoadedModel, LoadOptions, VideoAdapter, load_adapter
from .models.items import (
    CompressedItem,
    GenerationResult,
    PrefixCache,
    PreparedItem,
    QuestionError,
    TextCallbacks,
)
from .models.sizing import PixelBounds
from .options import (
    CompressionOptions,
    GenerationOptions,
    SamplingOptions,
    check_compression,
    check_generation,
)
from .retries import together_or_alone
from .timing import PeakMemory, StageTimer, peak_memory, reset_peak_memory
from .work import (
    Answer,
    EncodedRequest,
    OpenVideos,
    PreparedRequest,
    Question,
    QuestionGroup,
    Request,
    VideoContext,
    VideoQuestions,
)

OPENING_QUESTION = "Describe this video."


# Per item of a generate call, whether to end its generation now (see VideoAdapter.generate).
StopChecks = Sequence[Callable[[], bool] | None] | None


class Engine:
    """A loaded model and its adapter, answering requests."""

    def __init__(self, loaded: LoadedModel, adapter: VideoAdapter,
                 feature_cache: FeatureCache | None = None, load_seconds: float = 0.0) -> None:
        self.loaded = loaded
        self.adapter = adapter
        self.load_seconds = load_seconds
        self._encoder = VideoEncoder(loaded, adapter, feature_cache)

    @property
    def feature_cache(self) -> FeatureCache | None:
        return self._encoder.feature_cache

    @feature_cache.setter
    def feature_cache(self, cache: FeatureCache | None) -> None:
        self._encoder.feature_cache = cache

    @property
    def vision_signals(self) -> frozenset[str]:
        """What the vision encoder reads besides the features, for the methods to be run."""
        return self._encoder.vision_signals

    def accept(self, compression: CompressionOptions) -> None:
        """Check compression options against this model (InputError naming the option) and
        expect the vision signals its method needs."""
        profile = self.adapter.compression_profile
        check_compression(compression, profile)
        try:
            self.adapter.check_llm_stages(llm_stages(compression.method, profile,
                                                     dict(compression.method_options)))
        except ValueError as error:
            raise InputError(f"--method {compression.method}: {error}; `vidcom2 methods "
                             f"{compression.method}` names the options that move or turn off "
                             "its in-LLM stage") from None
        self.expect_methods([compression.method])

    def expect_methods(self, methods: Iterable[str]) -> None:
        """Make every later encoding carry the vision signals ``methods`` need (on top of the
        ones already expected). Methods that need none (VidCom2) leave the encoder unhooked."""
        needed = {signal for method in methods for signal in get_method(method).signals}
        self._encoder.vision_signals = self.vision_signals | needed

    @classmethod
    def load(cls, model: str, options: LoadOptions = LoadOptions(),
             feature_cache: FeatureCache | None = None) -> Engine:
        start = time.perf_counter()
        loaded, adapter = load_adapter(model, options)
        return cls(loaded, adapter, feature_cache, time.perf_counter() - start)

    def run_info(self) -> dict[str, object]:
        """What answers: the tool's version, the model's load time, device, dtype, attention."""
        return {"version": __version__, "model_load_s": round(self.load_seconds, 3),
                "device": str(self.device),
                "dtype": str(self.loaded.dtype).removeprefix("torch."),
                "attention": self.loaded.attention}

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model's memory is on (several GPUs with a device_map)."""
        return self.loaded.devices

    @property
    def random_weights(self) -> bool:
        return self.loaded.reference.startswith("random:")

    def pixel_bounds(self, sampling: SamplingOptions) -> PixelBounds | None:
        """The per-frame pixel bounds ``sampling`` asks of this model (InputError when the
        model's family has none)."""
        return self._encoder.pixel_bounds(sampling)

    @property
    def fingerprint(self) -> str:
        """What makes this model's encoder output what it is (``VideoEncoder.fingerprint``)."""
        return self._encoder.fingerprint

    def prepare(self, request: Request, sampling: SamplingOptions) -> PreparedRequest:
        """Decode the sampled frames and run the processor, timed: the CPU half of encoding,
        safe on any thread (``VideoEncoder.prepare``)."""
        return self._encoder.prepare(request, sampling)

    def encode_prepared(self, prepared: PreparedRequest) -> EncodedRequest:
        """A prepared request through the vision encoder, timed: the device half of encoding
        (``VideoEncoder.encode_prepared``)."""
        return self._encoder.encode_prepared(prepared)

    def encode(self, request: Request, sampling: SamplingOptions) -> EncodedRequest:
        """Decode the sampled frames, run the processor and the vision encoder, timed."""
        return self.encode_prepared(self.prepare(request, sampling))

    # --- whole work ---------------------------------------------------------------------------

    def ask(self, request: Request, sampling: SamplingOptions = SamplingOptions(),
            compression: CompressionOptions = CompressionOptions(),
            generation: GenerationOptions = GenerationOptions(),
            on_text: Callable[[str], None] | None = None) -> Answer:
        self.accept(compression)
        check_generation(generation)
        reset_peak_memory(self.devices)
        return self.answer([self.encode(request, sampling)], compression, generation,
                           on_text)[0]

    def ask_many(self, video: str, questions: list[str], sampling: SamplingOptions,
                 compression: CompressionOptions, generation: GenerationOptions,
                 on_text: Callable[[str], None] | None = None) -> Iterator[Answer]:
        """Answer several questions about one video from one decode, one encode, one
        compression and one prefix prefill; yields each answer as soon as it is ready."""
        self.accept(compression)
        check_generation(generation)
        if not questions:
            raise InputError("question: give at least one question")
        for question in questions:
            if not question.strip():
                raise InputError("question: a question is empty")
        opened = self.open(video, sampling, compression)
        for question in questions:
            yield self.ask_open(opened, [(0, Request(video, question))], generation,
                                on_text)[0]

    def answer_groups(self, groups: Sequence[QuestionGroup], generation: GenerationOptions,
                      batch_size: int = 1, reuse_prefix: bool = True
                      ) -> list[list[Answer | str]]:
        """Answer every question of ``groups``: for each group, in its questions' order, the
        ``Answer`` or the one-line error of that question.

        With ``reuse_prefix`` each video is compressed once per setting its questions ask for,
        ``batch_size`` (video, setting) prompt prefixes are prefilled in one batch, and the
        questions are answered ``batch_size`` per generate call, each on a copy of its video's
        prefix. Without, each group must be the one question its video was prepared with,
        answered on its whole prompt (one generate call per setting): the reference path.

        A failed call is tried again part by part before anyone gets its error: a failed
        prefill, each video alone; a failed generate call, each question alone (after an
        out-of-memory error the cached memory is released first). So one bad question never
        costs its neighbours their answers.
        """
        if not reuse_prefix:
            return self._answer_whole(list(groups), generation)
        parts = [(index, rows, setting) for index, group in enumerate(groups)
                 for setting, rows in _by_setting(group.questions)]
        outcomes: list[list[Answer | str]] = [["" for _ in group.questions] for group in groups]
        for start in range(0, len(parts), batch_size):
            chunk = parts[start:start + batch_size]
            answered = self._answer_shared(
                [(groups[index].video, setting, [groups[index].questions[row] for row in rows])
                 for index, rows, setting in chunk], generation, batch_size)
            for (index, rows, _), results in zip(chunk, answered, strict=True):
                for row, result in zip(rows, results, strict=True):
                    outcomes[index][row] = result
        return outcomes

    def answer_stream(self, groups: Sequence[VideoQuestions], sampling: SamplingOptions,
                      generation: GenerationOptions, batch_size: int = 1,
                      reuse_prefix: bool = True, prefetch: int = 0
                      ) -> Generator[list[Answer | str], None, None]:
        """Each group's outcomes (per question, the ``Answer`` or its one-line error), in the
        groups' order: videos decoded up to ``prefetch`` groups ahead on worker threads, encoded
        one at a time here, and every ``batch_size`` encoded groups answered together by
        ``answer_groups`` (see ``group_stream``). Close the iterator to stop early."""
        return answer_in_order(
            groups, lambda request: self.prepare(request, sampling),
            lambda prepared: self.encode_prepared(prepared),
            lambda work: self.answer_groups(work, generation, batch_size,
                                            reuse_prefix=reuse_prefix),
            batch_size, prefetch, lambda: reset_peak_memory(self.devices))

    def answer(self, encoded: list[EncodedRequest], compression: CompressionOptions,
               generation: GenerationOptions,
               on_text: Callable[[str], None] | None = None) -> list[Answer]:
        """Answer encoded videos, each compressed with its own plan, in one generate call
        (``on_text``: the answer's text as it is generated, for a batch of one)."""
        self.accept(compression)
        check_generation(generation)
        compressed = [self._compress(request, compression) for request in encoded]
        for request, (_, item, _) in zip(encoded, compressed, strict=True):
            self._check_context(request, item, generation)
        result = self._generate([item for _, item, _ in compressed], generation,
                                on_text=on_text)
        memory = peak_memory(self.devices)
        return [self._answer(request, plan, request.item, item, result, index,
                             {**request.stages_ms, "compress": compress_ms}, memory)
                for index, (request, (plan, item, compress_ms)) in enumerate(
                    zip(encoded, compressed, strict=True))]

    # --- videos kept open for questions to come -----------------------------------------------

    def open(self, video: str, sampling: SamplingOptions, compression: CompressionOptions
             ) -> OpenVideos:
        """Decode, encode, compress and prefill one video's prompt prefix, once for all the
        questions to come (each stage is announced to ``timing.stage_listener``).

        The processor needs a prompt, so it gets ``OPENING_QUESTION``; only the prefix of that
        prompt is kept, which is the same whatever the question.
        """
        self.accept(compression)
        reset_peak_memory(self.devices)
        prepared = self.prepare(Request(video, OPENING_QUESTION), sampling)
        return self.open_contexts([self.video_context(prepared, compression)])

    def video_context(self, prepared: PreparedRequest, compression: CompressionOptions
                      ) -> VideoContext:
        """A prepared video encoded and compressed once for every question to be asked about
        it, ready for ``open_contexts``."""
        return self._context(self.encode_prepared(prepared), compression)

    def open_contexts(self, contexts: list[VideoContext]) -> OpenVideos:
        """Prefill the prompt prefixes of several videos in one batch (left-padded)."""
        return OpenVideos(contexts, self.adapter.prefill([context.prefix
                                                          for context in contexts]))

    def ask_open(self, opened: OpenVideos, asked: list[tuple[int, Request]],
                 generation: GenerationOptions, on_text: TextCallbacks = None,
                 stop: StopChecks = None) -> list[Answer]:
        """Answer questions in one generate call, each on a copy of its video's prefilled
        prefix: ``asked`` pairs a row of ``opened`` with a question (``on_text`` and ``stop``,
        one callback or one per question: see ``VideoAdapter.generate``).

        A video's first answer carries the times of the work shared by all its questions
        (decoding, encoding, compression, the prefix prefill); later ones carry only their own
        and report the prefix tokens they reused.
        """
        check_generation(generation)
        contexts, prefix = opened.contexts, opened.prefix
        built = []
        for row, request in asked:
            context = contexts[row]
            timer = StageTimer(torch.device("cpu"))
            with timer.stage("preprocess"), as_input_error(QuestionError):
                item = self.adapter.to_device(self.adapter.with_question(
                    context.encoded.host_item, request.question))
            with timer.stage("compress"):
                compressed = self.adapter.compress(item, context.encoded.encoded, context.plan)
            encoded = dataclasses.replace(context.encoded, request=request)
            self._check_context(encoded, compressed, generation)
            built.append((row, encoded, item, compressed, timer.stages_ms))
        result = self._generate([compressed for *_, compressed, _ in built], generation,
                                prefix=prefix, rows=[row for row, *_ in built], on_text=on_text,
                                stop=stop)
        memory = peak_memory(self.devices)
        answers = []
        for index, (row, encoded, item, compressed, own_ms) in enumerate(built):
            context = contexts[row]
            if context.reported:
                stages, reused = own_ms, prefix.lengths[row]
            else:
                stages = {**context.encoded.stages_ms,
                          "compress": context.compress_ms + own_ms["compress"],
                          "prefix_prefill": prefix.prefill_ms}
                stages["preprocess"] = stages.get("preprocess", 0.0) + own_ms["preprocess"]
                reused = 0
                context.reported = True
            answers.append(self._answer(encoded, context.plan, item, compressed, result, index,
                                        stages, memory, reused, prefix.lengths[row]))
        return answers

    # --- the phases ------------------------------------------------------------------------------

    def _context(self, encoded: EncodedRequest, compression: CompressionOptions) -> VideoContext:
        """Compress an encoded video once for every question to be asked about it."""
        self.accept(compression)
        plan, item, compress_ms = self._compress(encoded, compression)
        split = self.adapter.prefix_length(encoded.item.inputs["input_ids"][0].tolist())
        kept = split - (plan.total_full - plan.total_kept)  # every video token is in the prefix
        prefix = CompressedItem(
            input_ids=item.input_ids[:kept],
            mm_token_type_ids=None if item.mm_token_type_ids is None
            else item.mm_token_type_ids[:kept],
            position_ids=item.position_ids[:, :kept], output=item.output, full_length=split,
            stages=item.stages)
        return VideoContext(encoded, plan, compress_ms, prefix)

    def _compress(self, encoded: EncodedRequest, options: CompressionOptions
                  ) -> tuple[KeepPlan, CompressedItem, float]:
        """Choose and apply a plan; returns it with the compressed item and its time in ms."""
        timer = StageTimer(self.device)
        with timer.stage("compress"):
            plan = select(encoded.encoded.features, options.ratio, options.method,
                          seed=options.seed, grid=encoded.encoded.grid,
                          signals=encoded.encoded.signals, options=dict(options.method_options),
                          profile=self.adapter.compression_profile)
            item = self.adapter.compress(encoded.item, encoded.encoded, plan)
        return plan, item, timer.stages_ms["compress"]

    def _check_context(self, request: EncodedRequest, item: CompressedItem,
                       generation: GenerationOptions) -> None:
        """InputError when the compressed prompt and the answer cannot fit the model's context.

        The limit is on positions: with Qwen's M-RoPE a video's tokens share temporal
        positions, so its prompt reaches a lower position than its token count.
        """
        prompt_positions = int(item.position_ids.max()) + 1
        context = self.adapter.context_length
        if prompt_positions + generation.max_new_tokens > context:
            raise InputError(
                f"{request.request.video}: the prompt is {item.length} tokens after compression "
                f"(reaching position {prompt_positions}) and up to {generation.max_new_tokens} "
                f"more are generated, but the model's context is {context} tokens; lower "
                "--frames or --ratio, shorten the question, or lower --max-new-tokens")

    def _generate(self, items: list[CompressedItem], options: GenerationOptions,
                  prefix: PrefixCache | None = None, rows: list[int] | None = None,
                  on_text: TextCallbacks = None, stop: StopChecks = None) -> GenerationResult:
        """One generate call (``on_text`` and ``stop``: see ``VideoAdapter.generate``)."""
        if options.do_sample:
            torch.manual_seed(options.seed)
        return self.adapter.generate(items, max_new_tokens=options.max_new_tokens,
                                     min_new_tokens=options.min_new_tokens,
                                     do_sample=options.do_sample, prefix=prefix, rows=rows,
                                     on_text=on_text, stop=stop, **options.sampling_kwargs())

    def _answer(self, encoded: EncodedRequest, plan: KeepPlan, item: PreparedItem,
                compressed: CompressedItem, result: GenerationResult, index: int,
                stages_ms: dict[str, float], memory: PeakMemory, prefix_reused: int = 0,
                prefix_tokens: int = 0) -> Answer:
        """One item of a generate call's result as an ``Answer``; ``stages_ms`` has the times
        before prefill (stages this answer does not carry count 0)."""
        return Answer(
            request=encoded.request, answer=result.texts[index], model=self.loaded.reference,
            method=plan.method, ratio=plan.ratio, plan=plan, video=encoded.video,
            frames_per_unit=self.adapter.frames_multiple,
            tokens=token_counts(item, plan, compressed, len(result.token_ids[index]),
                                prefix_reused, prefix_tokens,
                                None if result.llm_tokens is None else result.llm_tokens[index]),
            timing_ms=answer_timing(stages_ms, result.timing), memory=memory,
            random_weights=self.random_weights,
            feature_cache=encoded.feature_cache, run=self.run_info())

    def _answer_shared(self, parts: list[tuple[EncodedRequest, CompressionOptions,
                                               list[Question]]],
                       generation: GenerationOptions, batch_size: int
                       ) -> list[list[Answer | str]]:
        """Each (video, setting, questions) part's outcomes: the parts' prefixes prefilled in
        one batch, their questions asked ``batch_size`` per generate call."""

        def run(chunk: list[tuple[EncodedRequest, CompressionOptions, list[Question]]]
                ) -> list[list[Answer | str]]:
            opened = self.open_contexts([self._context(video, setting)
                                         for video, setting, _ in chunk])
            asked = [(row, question.request) for row, (_, _, questions) in enumerate(chunk)
                     for question in questions]
            answers = iter([outcome for start in range(0, len(asked), batch_size)
                            for outcome in together_or_alone(
                                lambda pairs: self.ask_open(opened, pairs, generation),
                                asked[start:start + batch_size], lambda _, failure: failure)])
            return [[next(answers) for _ in questions] for _, _, questions in chunk]

        return together_or_alone(run, parts, lambda part, failure: [failure] * len(part[2]),
                                 before_alone=lambda: reset_peak_memory(self.devices))

    def _answer_whole(self, groups: list[QuestionGroup], generation: GenerationOptions
                      ) -> list[list[Answer | str]]:
        """``answer_groups`` without a shared prefix: one generate call per setting for the
        groups together, each on the prompt its video was prepared with."""
        for group in groups:
            if len(group.questions) != 1 or group.questions[0].request != group.video.request:
                raise ValueError("without prefix reuse a group is the one question its video "
                                 "was prepared with")

        def run(chunk: list[QuestionGroup]) -> list[list[Answer | str]]:
            outcomes: list[list[Answer | str]] = [[] for _ in chunk]
            for setting, rows in _by_setting([group.questions[0] for group in chunk]):
                answers = self.answer([chunk[row].video for row in rows], setting, generation)
                for row, answer in zip(rows, answers, strict=True):
                    outcomes[row] = [answer]
            return outcomes

        return together_or_alone(run, groups, lambda _, failure: [failure],
                                 # each retried group reports its own peak
                                 before_alone=lambda: reset_peak_memory(self.devices))


def _by_setting(questions: Sequence[Question]) -> list[tuple[CompressionOptions, list[int]]]:
    """Each compression setting of the questions with their positions, in order of first use
    (settings compared by value: their repr, as an option may hold an unhashable dict)."""
    settings: dict[str, tuple[CompressionOptions, list[int]]] = {}
    for row, question in enumerate(questions):
        settings.setdefault(repr(question.compression), (question.compression, []))[1].append(row)
    return list(settings.values())
