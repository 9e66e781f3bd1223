"""Results as JSON-ready dicts and as rich renderables; no computation beyond formatting."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .bench import BenchRow
from .engine import Answer, VideoContext
from .heatmap import budget_sparkline, favoured_units, spatial_heatmap
from .models.base import PrefixCache

RANDOM_WEIGHTS_NOTE = "random weights: the answer is meaningless; timings and shapes are real"


def answer_to_json(answer: Answer) -> dict[str, Any]:
    """The stable machine-readable form of one answer (the keys scripts rely on)."""
    video = answer.video
    return {
        "id": answer.request.id,
        "video": answer.request.video,
        "question": answer.request.question,
        "answer": answer.answer,
        "model": answer.model,
        "random_weights": answer.random_weights,
        "method": answer.method,
        "ratio": answer.ratio,
        "kept_ratio": answer.plan.kept_ratio,
        "merged_tokens": answer.plan.total_merged,
        "frames": {
            "indices": list(video.indices),
            "count": len(video.indices),
            "padded": video.padded,
            "per_unit": answer.frames_per_unit,
            "source_frames": video.info.frame_count,
            "source_fps": video.info.fps,
            "decoder": video.info.decoder,
            "stream_index": video.info.stream_index,
            # sampled index -> index of the nearest decodable frame used in its place
            "substituted": {str(k): v for k, v in video.substituted_frames.items()},
        },
        "tokens": {**asdict(answer.tokens),
                   "text": answer.tokens.prompt_full - answer.tokens.visual_full,
                   "grid": list(answer.plan.grid) if answer.plan.grid else None},
        "timing_ms": {key: round(value, 3) for key, value in answer.timing_ms.items()},
        "memory": {"peak_bytes": answer.memory.bytes, "source": answer.memory.source},
        "feature_cache": answer.feature_cache,
        "run": answer.run,
    }


def bench_rows_to_json(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [{key: round(value, 3) if isinstance(value, float) else value
             for key, value in asdict(row).items()} for row in rows]


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def megabytes(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB"


def _per_second(tokens: int, milliseconds: float) -> str:
    return f"{1000.0 * tokens / milliseconds:,.1f}" if milliseconds > 0 and tokens else "-"


def token_table(answer: Answer) -> Table:
    tokens = answer.tokens
    table = Table(title="Tokens", title_justify="left", show_edge=False)
    table.add_column("")
    table.add_column("full", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("kept %", justify="right")
    table.add_row("visual", str(tokens.visual_full), str(tokens.visual_kept),
                  _percent(tokens.visual_kept, tokens.visual_full))
    text = tokens.prompt_full - tokens.visual_full
    table.add_row("text", str(text), str(text), "100.0%")
    table.add_row("prompt", str(tokens.prompt_full), str(tokens.prompt_kept),
                  _percent(tokens.prompt_kept, tokens.prompt_full))
    table.add_row("generated", "", str(tokens.generated), "")
    if tokens.llm is not None:
        for stage in tokens.llm.stages:
            label = (f"visual, {stage.stage}" if stage.steps is None else
                     f"visual KV, {stage.stage} ({stage.pruned_steps}/{stage.steps} steps)")
            table.add_row(label, str(tokens.visual_kept), f"{stage.visual:,.0f}",
                          _percent(round(stage.visual), tokens.visual_kept))
        table.add_row("visual KV per layer", str(tokens.visual_kept),
                      f"{tokens.llm.visual_kv_attended:,.1f}",
                      _percent(round(tokens.llm.visual_kv_attended), tokens.visual_kept))
        table.caption = ("inside the language model, % of the visual tokens sent; KV per "
                         "layer: entries a decoding step attends, mean over layers and steps")
    return table


def heatmap_summary(answer: Answer) -> Group:
    plan = answer.plan
    counts = plan.counts
    unit = "frame" if answer.frames_per_unit == 1 else f"{answer.frames_per_unit}-frame unit"
    favoured = ", ".join(f"#{index} ({counts[index]})" for index in favoured_units(counts))
    lines: list[RenderableType] = [
        Text("Retained tokens", style="bold"),
        Text(f"per {unit} over time (█ = {max(counts)} of {plan.tokens_per_unit}): ")
        + Text(budget_sparkline(counts, max(counts), width=64), style="cyan"),
        Text(f"largest budgets: {favoured}"),
    ]
    if plan.merges is not None:
        lines.append(Text(f"merged: {plan.total_merged} dropped tokens folded into "
                          f"{plan.total_merge_targets} of the {plan.total_kept} kept ones"))
    if plan.grid is not None:
        lines.append(Text(f"how often each of the {plan.grid[0]}x{plan.grid[1]} positions "
                          "was kept (blank never, █ always):"))
        lines.extend(Text("  │" + row + "│", style="green") for row in spatial_heatmap(plan))
    return Group(*lines)


def timing_table(answer: Answer) -> Table:
    """Stage times in the llama.cpp convention: prompt eval (prefill) vs eval (decode)."""
    timing = answer.timing_ms
    tokens = answer.tokens
    table = Table(title="Timing", title_justify="left", show_edge=False)
    for column in ("stage", "ms", "tokens", "ms/token", "tokens/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for key, label in (("video_decode", "video decode"), ("preprocess", "preprocess"),
                       ("vision", "vision encoder"), ("compress", "compression")):
        table.add_row(label, f"{timing[key]:,.1f}", "", "", "")
    prefill = timing["prefill"]
    table.add_row("prefill (time to first token)", f"{prefill:,.1f}", str(tokens.prompt_kept),
                  f"{prefill / tokens.prompt_kept:.2f}" if tokens.prompt_kept else "-",
                  _per_second(tokens.prompt_kept, prefill))
    steps = max(tokens.generated - 1, 0)
    table.add_row("decode", f"{timing['decode']:,.1f}", str(steps),
                  f"{timing['decode_per_token']:.2f}" if steps else "-",
                  _per_second(steps, timing["decode"]))
    table.add_row("total", f"{timing['total']:,.1f}", "", "", "", style="bold")
    table.caption = f"peak memory {megabytes(answer.memory.bytes)} ({answer.memory.source})"
    return table


def _header(answer: Answer) -> Text:
    count, padded = len(answer.video.indices), answer.video.padded
    frames = f"{count} frame{'s' if count != 1 else ''}" + (
        f" ({padded} padded)" if padded else "")
    return Text(f"{answer.method} R={answer.ratio:g} · {frames} of "
                f"{answer.video.info.frame_count} · {Path(answer.model).name or answer.model}")


def _notes(answer: Answer) -> list[RenderableType]:
    notes: list[RenderableType] = []
    if answer.random_weights:
        notes.append(Text(RANDOM_WEIGHTS_NOTE, style="bold yellow"))
    if answer.video.padded:
        notes.append(Text(f"last frame repeated {answer.video.padded}x to fill the model's "
                          f"{answer.frames_per_unit}-frame temporal units", style="dim"))
    if answer.feature_cache == "hit":
        notes.append(Text("vision encoder output read from the feature cache (no decoding, "
                          "no encoder)", style="dim"))
    return notes


def render_answer(answer: Answer, with_text: bool = True) -> Group:
    """The report of one answer; ``with_text=False`` when the answer was streamed already (the
    header line stands in for its panel)."""
    parts: list[RenderableType] = [Panel(Text(answer.answer or "(empty answer)"),
                                         title=_header(answer), title_align="left")
                                   if with_text else _header(answer)]
    parts += _notes(answer)
    parts += [token_table(answer), heatmap_summary(answer), timing_table(answer)]
    return Group(*parts)


def render_summary(answer: Answer) -> Group:
    """What several questions about one video share, shown once: the compression and the
    work done once for all of them."""
    timing = answer.timing_ms
    shared = ", ".join(f"{label} {timing[key]:,.1f} ms" for key, label in (
        ("video_decode", "video decode"), ("preprocess", "preprocess"),
        ("vision", "vision encoder"), ("compress", "compression"),
        ("prefix_prefill", "prefix prefill")))
    parts: list[RenderableType] = [Text.assemble(("Video ", "bold"), _header(answer))]
    parts += _notes(answer)
    parts += [token_table(answer), heatmap_summary(answer),
              Text(f"done once for all questions: {shared}"),
              Text(f"peak memory {megabytes(answer.memory.bytes)} ({answer.memory.source})",
                   style="dim")]
    return Group(*parts)


def question_footer(answer: Answer) -> str:
    """One line of a question's own cost: its prefill (reused prefix tokens apart) and decode."""
    timing, tokens = answer.timing_ms, answer.tokens
    prefilled = tokens.prompt_kept - tokens.prefix_reused
    steps = max(tokens.generated - 1, 0)
    reused = f", {tokens.prefix_reused} reused from the cached prefix" if (
        tokens.prefix_reused) else ""
    return (f"prefill {timing['prefill']:,.1f} ms ({prefilled} prompt tokens{reused}) · "
            f"decode {timing['decode']:,.1f} ms ({steps} tokens, "
            f"{_per_second(steps, timing['decode'])} tokens/s)")


def render_question_answer(answer: Answer, index: int) -> Group:
    title = Text(f"Q{index + 1}: {answer.request.question}")
    return Group(Panel(Text(answer.answer or "(empty answer)"), title=title,
                       title_align="left"),
                 Text(question_footer(answer), style="dim"))


def chat_ready_line(context: VideoContext, prefix: PrefixCache) -> str:
    """What ``chat`` says once the video is ready for questions."""
    encoded, plan = context.encoded, context.plan
    timing = encoded.stages_ms
    cached = " (from the feature cache)" if encoded.feature_cache == "hit" else ""
    return (f"ready: {len(encoded.video.indices)} frames, {plan.total_kept} of "
            f"{plan.total_full} video tokens kept ({plan.method} R={plan.ratio:g}); decode "
            f"{timing.get('video_decode', 0.0):,.0f} ms, vision {timing.get('vision', 0.0):,.0f} "
            f"ms{cached}, prefix prefill {prefix.prefill_ms:,.0f} ms "
            f"({prefix.lengths[0]} tokens). Ask a question; an empty line or Ctrl-D ends.")


def render_bench(rows: list[BenchRow], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD,
                  caption="times in ms (medians); speed-up = LLM time at R=1 / LLM time; "
                          "same = answer equals the R=1 answer; (n KV) = visual KV entries a "
                          "decoding step attends per layer after in-LLM stages",
                  caption_justify="left")
    columns = ("method", "R", "visual", "prompt", "vision", "compress", "prefill", "decode",
               "ms/tok", "LLM", "e2e", "speed-up", "peak mem", "same")
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        visual = f"{row.visual_kept}/{row.visual_full}"
        if row.llm_stages:
            visual += f" ({row.visual_kv_attended:,.0f} KV)"
        table.add_row(row.method, f"{row.ratio:g}", visual,
                      str(row.prompt_length), f"{row.vision_ms:.1f}", f"{row.compress_ms:.2f}",
                      f"{row.prefill_ms:.1f}", f"{row.decode_ms:.1f}",
                      f"{row.decode_ms_per_token:.2f}", f"{row.generation_ms:.1f}",
                      f"{row.end_to_end_ms:.1f}", f"{row.speedup:.2f}x",
                      megabytes(row.peak_memory_bytes), "yes" if row.same_answer else "no")
    return table
