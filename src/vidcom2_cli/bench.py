"""Compare compression ratios and methods on one video: same model, same encoded video."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from .compression import spread_method_options
from .engine import Engine
from .errors import InputError
from .models.loop_state import LLMTokens
from .options import CompressionOptions, GenerationOptions, check_options
from .timing import PeakMemory, peak_memory, reset_peak_memory
from .work import EncodedRequest, PreparedRequest


@dataclass(frozen=True)
class BenchRow:
    method: str
    ratio: float
    visual_kept: int
    visual_full: int
    prompt_length: int
    video_decode_ms: float  # decoding the sampled frames, measured once for all rows
    preprocess_ms: float  # processor + copy to the device, measured once for all rows
    vision_ms: float  # the vision encoder, the same work at every ratio (median of its own runs)
    compress_ms: float
    prefill_ms: float
    decode_ms: float
    decode_ms_per_token: float
    generation_ms: float  # prefill + decode: the language model's share
    end_to_end_ms: float  # video decode + preprocess + vision + compress + LLM
    speedup: float  # LLM generation time at ratio 1.0 / this row's, same run
    peak_memory_bytes: int
    memory_source: str
    answer: str
    same_answer: bool  # equals the ratio-1.0 answer
    merged_tokens: int = 0  # dropped tokens whose content a merging method folded into kept ones
    feature_cache: str | None = None  # "hit": the encoder output came from the cache (vision 0)
    run: dict[str, object] = field(default_factory=dict)  # Engine.run_info()
    # in-LLM stages: per stage, its name, layer and the visual tokens left after it (a decode
    # stage: the visual KV entries a pruned step attends, and its steps pruned / all)
    llm_stages: list[dict[str, object]] = field(default_factory=list)
    # visual KV entries per layer once the answer is done, and attended by a decoding step
    # (means over layers and steps); visual_kept when no in-LLM stage runs
    visual_kv_cached: float = 0.0
    visual_kv_attended: float = 0.0


def parse_floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def check_bench_options(ratios: list[float], methods: list[str],
                        generation: GenerationOptions, repeats: int, warmup: int,
                        seed: int = 0, method_options: tuple[tuple[str, float], ...] = ()
                        ) -> None:
    """InputError naming the option, for every (method, ratio) before any work is done."""
    if repeats < 1 or warmup < 0:
        raise InputError("--repeats must be at least 1 and --warmup at least 0")
    if not ratios or not methods:
        raise InputError("--ratios and --methods need at least one value each")
    for method in methods:
        for ratio in ratios:
            check_options(CompressionOptions(ratio, method, seed), generation)
    method_shares(methods, method_options)


def method_shares(methods: list[str], method_options: tuple[tuple[str, float], ...],
                  profile: str | None = None) -> dict[str, tuple[tuple[str, float], ...]]:
    """Each method's share of the ``--method-option`` values (InputError naming the option)."""
    try:
        return spread_method_options(methods, method_options, profile)
    except ValueError as error:
        raise InputError(f"--method-option: {error}") from None


def run_bench(engine: Engine, prepared: PreparedRequest, ratios: list[float], methods: list[str],
              generation: GenerationOptions, repeats: int = 3, warmup: int = 1,
              seed: int = 0, method_options: tuple[tuple[str, float], ...] = ()
              ) -> list[BenchRow]:
    """Measure each (method, ratio) on one decoded and preprocessed video, encoded once (with
    the vision signals every method needs); ratio 1.0 is always measured first as the
    baseline. ``method_options`` apply to every method that has them."""
    check_bench_options(ratios, methods, generation, repeats, warmup, seed, method_options)
    shares = method_shares(methods, method_options, engine.adapter.compression_profile)

    def options_for(method: str, ratio: float) -> CompressionOptions:
        return CompressionOptions(ratio, method, seed, shares[method])

    for method in methods:
        engine.accept(options_for(method, 0.5))
    encoded, vision_ms = _encode(engine, prepared, repeats, warmup)
    video_decode_ms = encoded.stages_ms["video_decode"]
    preprocess_ms = encoded.stages_ms["preprocess"]
    shared_ms = video_decode_ms + preprocess_ms + vision_ms
    baseline = _measure(engine, encoded, options_for(methods[0], 1.0), generation, repeats,
                        warmup)
    rows = []
    for method in methods:
        for ratio in ratios:
            measured = baseline if ratio == 1.0 else _measure(
                engine, encoded, options_for(method, ratio), generation, repeats, warmup)
            rows.append(BenchRow(
                method=method, ratio=ratio, visual_kept=measured.visual_kept,
                visual_full=measured.visual_full, prompt_length=measured.prompt_length,
                video_decode_ms=video_decode_ms, preprocess_ms=preprocess_ms,
                vision_ms=vision_ms, compress_ms=measured.compress_ms,
                prefill_ms=measured.prefill_ms, decode_ms=measured.decode_ms,
                decode_ms_per_token=measured.decode_ms_per_token,
                generation_ms=measured.generation_ms,
                end_to_end_ms=shared_ms + measured.compress_ms + measured.generation_ms,
                speedup=baseline.generation_ms / measured.generation_ms
                if measured.generation_ms else 0.0,
                peak_memory_bytes=measured.memory.bytes, memory_source=measured.memory.source,
                answer=measured.answer, same_answer=measured.answer == baseline.answer,
                merged_tokens=measured.merged_tokens,
                feature_cache=encoded.feature_cache, run=engine.run_info(),
                **_llm_fields(measured.llm, measured.visual_kept)))
    return rows


def _llm_fields(llm: LLMTokens | None, visual_kept: int) -> dict[str, object]:
    """A row's in-LLM fields: what the stages left, or the stock model's (every kept visual
    token cached and attended in every layer)."""
    if llm is None:
        return {"llm_stages": [], "visual_kv_cached": float(visual_kept),
                "visual_kv_attended": float(visual_kept)}
    return {"llm_stages": [asdict(stage) for stage in llm.stages],
            "visual_kv_cached": llm.visual_kv_cached,
            "visual_kv_attended": llm.visual_kv_attended}


@dataclass(frozen=True)
class _Measurement:
    compress_ms: float
    prefill_ms: float
    decode_ms: float
    decode_ms_per_token: float
    generation_ms: float
    answer: str
    visual_kept: int
    visual_full: int
    prompt_length: int
    memory: PeakMemory
    merged_tokens: int
    llm: LLMTokens | None


def _measure(engine: Engine, encoded: EncodedRequest, compression: CompressionOptions,
             generation: GenerationOptions, repeats: int, warmup: int) -> _Measurement:
    """Medians over ``repeats`` answers after ``warmup`` unmeasured ones."""
    reset_peak_memory(engine.devices)
    compress_times, prefills, decodes, per_token, totals = [], [], [], [], []
    for run in range(warmup + repeats):
        answer = engine.answer([encoded], compression, generation)[0]
        if run < warmup:
            continue
        compress_times.append(answer.timing_ms["compress"])
        prefills.append(answer.timing_ms["prefill"])
        decodes.append(answer.timing_ms["decode"])
        per_token.append(answer.timing_ms["decode_per_token"])
        totals.append(answer.timing_ms["llm_generation"])
    return _Measurement(
        compress_ms=statistics.median(compress_times), prefill_ms=statistics.median(prefills),
        decode_ms=statistics.median(decodes),
        decode_ms_per_token=statistics.median(per_token),
        generation_ms=statistics.median(totals), answer=answer.answer,
        visual_kept=answer.tokens.visual_kept, visual_full=answer.tokens.visual_full,
        prompt_length=answer.tokens.prompt_kept, memory=peak_memory(engine.devices),
        merged_tokens=answer.plan.total_merged, llm=answer.tokens.llm)


def _encode(engine: Engine, prepared: PreparedRequest, repeats: int, warmup: int
            ) -> tuple[EncodedRequest, float]:
    """The video through the vision encoder ``warmup + repeats`` times: the last encoding, and
    the encoder's median ms over the measured runs."""
    times = []
    for run in range(warmup + repeats):
        encoded = engine.encode_prepared(prepared)
        if run >= warmup:
            times.append(encoded.stages_ms["vision"])
    return encoded, statistics.median(times)
