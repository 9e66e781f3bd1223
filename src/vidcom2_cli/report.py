"""Results as JSON-ready dicts and as rich renderables; no computation beyond formatting."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .heatmap import budget_sparkline, favoured_units, spatial_heatmap
from .sheet_layout import frame_span
from .wording import counted

if TYPE_CHECKING:  # no torch at run time: a server's client renders answers it received
    from .bench import BenchRow
    from .compression.plan import KeepPlan
    from .models.items import PrefixCache
    from .work import Answer, VideoContext

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
            "size": [video.info.width, video.info.height],  # of every frame handed out
            # frames scaled to that size (a stream that changes size mid-way)
            "resized": video.resized,
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


def heatmap_summary(plan: KeepPlan, frames_per_unit: int) -> Group:
    """The retained-token summary: the budget of each temporal unit over time, the units that
    got the most (named by their frames, numbered from 1 as on the contact sheet), merges, and
    how often each grid position survived. A unit of several frames has one budget for all of
    them, so nothing here is per frame unless a unit is one frame."""
    counts = plan.counts
    unit = "frame" if frames_per_unit == 1 else f"{frames_per_unit}-frame unit"
    top = favoured_units(counts)
    noun = "frame" if len(top) == 1 and frames_per_unit == 1 else "frames"
    favoured = ", ".join(f"{frame_span(index, frames_per_unit)} ({counts[index]})"
                         for index in top)
    lines: list[RenderableType] = [
        Text("Retained tokens", style="bold"),
        Text(f"per {unit} over time (█ = {max(counts)} of {plan.tokens_per_unit}): ")
        + Text(budget_sparkline(counts, max(counts), width=64), style="cyan"),
        Text(f"largest budgets: {noun} {favoured}"),
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
    frames = counted(count, "frame") + (
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
    if answer.video.resized:
        info = answer.video.info
        notes.append(Text(f"the video changes size: {answer.video.resized} of "
                          f"{len(answer.video.indices)} frames scaled to "
                          f"{info.width}x{info.height}", style="dim"))
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
    parts += [token_table(answer), heatmap_summary(answer.plan, answer.frames_per_unit),
              timing_table(answer)]
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
    parts += [token_table(answer), heatmap_summary(answer.plan, answer.frames_per_unit),
              Text(f"done once for all questions: {shared}"),
              Text(f"peak memory {megabytes(answer.memory.bytes)} ({answer.memory.source})",
                   style="dim")]
    return Group(*parts)


def question_footer(answer: Answer) -> str:
    """One line of a question's own cost: the prefill of its own tokens and its decode. The
    video's prefix, prefilled once for all its questions, is reported apart (the shared work
    of ``render_summary``, chat's ready line), never again here."""
    timing, tokens = answer.timing_ms, answer.tokens
    own_prefill = timing["prefill"] - timing.get("prefix_prefill", 0.0)
    prefix = tokens.prefix_reused or tokens.prefix_tokens
    steps = max(tokens.generated - 1, 0)
    if tokens.prefix_reused:
        source = f"; {prefix} reused from the cached prefix"
    elif prefix:
        source = f"; {prefix} in the shared prefix"
    else:
        source = ""
    return (f"prefill {own_prefill:,.1f} ms ({tokens.prompt_kept - prefix} prompt tokens"
            f"{source}) · decode {timing['decode']:,.1f} ms ({steps} tokens, "
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
            f"{plan.total_full} video tokens kept ({plan.method} R={plan.ratio:g}); video decode "
            f"{timing.get('video_decode', 0.0):,.0f} ms, vision {timing.get('vision', 0.0):,.0f} "
            f"ms{cached}, prefix prefill {prefix.prefill_ms:,.0f} ms "
            f"({prefix.lengths[0]} tokens). Ask a question; an empty line or Ctrl-D ends.")


BENCH_CAPTION = ("times in ms (medians); speed-up = LLM time at R=1 / LLM time; same = answer "
                 "equals the R=1 answer")
STAGES_CAPTION = ("in-LLM stages: visual tokens left after a prefill stage (merge@K, prune@K), "
                  "or the visual KV entries a pruned decoding step attends (kv-prune@L, pruned "
                  "steps of all); vis KV = visual KV entries a decoding step attends per layer, "
                  "mean over layers and steps")
# Every column in one table needs about this many terminal columns; narrower, two tables.
_ONE_TABLE_WIDTH = 132


def _llm_stages_cell(row: BenchRow) -> str:
    parts = []
    for stage in row.llm_stages:
        steps = "" if stage["steps"] is None else (
            f" ({stage['pruned_steps']}/{stage['steps']})")
        parts.append(f"{stage['stage']}: {stage['visual']:,.0f}{steps}")
    return ", ".join(parts) or "-"


def _bench_cells(row: BenchRow) -> dict[str, str]:
    return {"R": f"{row.ratio:g}", "visual": f"{row.visual_kept}/{row.visual_full}",
            "prompt": str(row.prompt_length), "vision": f"{row.vision_ms:.1f}",
            "compress": f"{row.compress_ms:.2f}", "prefill": f"{row.prefill_ms:.1f}",
            "decode": f"{row.decode_ms:.1f}", "ms/tok": f"{row.decode_ms_per_token:.2f}",
            "LLM": f"{row.generation_ms:.1f}", "e2e": f"{row.end_to_end_ms:.1f}",
            "speed-up": f"{row.speedup:.2f}x", "peak mem": megabytes(row.peak_memory_bytes),
            "same": "yes" if row.same_answer else "no",
            "vis KV": f"{row.visual_kv_attended:,.0f}", "in-LLM stages": _llm_stages_cell(row)}


def _bench_table(rows: list[BenchRow], columns: tuple[str, ...], **table: Any) -> Table:
    # one space between columns (the rule's gap) and one of padding: 80 columns hold 8 columns
    result = Table(box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, **table)
    for column in ("method", *columns):
        result.add_column(column, justify="left" if column == "method" else "right",
                          no_wrap=True)
    for row in rows:
        cells = _bench_cells(row)
        # R = 1.0 runs the stock model, whatever the method: one row says so
        method = "(stock model)" if row.ratio == 1.0 else row.method
        result.add_row(Text(method), *(cells[column] for column in columns))
    return result


def render_bench(rows: list[BenchRow], title: str, width: int) -> Group:
    """The bench rows as one table where the terminal is wide enough, else as two tables
    (the LLM figures, then the other stages) that each fit 80 columns. The R = 1.0 baseline,
    the same run for every method, is shown once. Rows of methods with in-LLM stages add a
    table of what the language model kept."""
    shown = [row for index, row in enumerate(rows)
             if row.ratio != 1.0 or all(other.ratio != 1.0 for other in rows[:index])]
    title_text = Text(title)
    if width >= _ONE_TABLE_WIDTH:
        tables = [_bench_table(shown, (
            "R", "visual", "prompt", "vision", "compress", "prefill", "decode", "ms/tok", "LLM",
            "e2e", "speed-up", "peak mem", "same"))]
    else:
        tables = [_bench_table(shown, ("R", "visual", "prefill", "LLM", "e2e", "speed-up",
                                       "same")),
                  _bench_table(shown, ("R", "prompt", "vision", "compress", "decode", "ms/tok",
                                       "peak mem"))]
    captions = [Text(BENCH_CAPTION)]
    staged = [row for row in shown if row.llm_stages]
    if staged:
        tables.append(_bench_table(staged, ("R", "visual", "vis KV", "in-LLM stages")))
        captions.append(Text(STAGES_CAPTION))
    parts: list[RenderableType] = [title_text, Text()]
    for table in tables:
        parts += [table, Text()]
    return Group(*parts, *captions)
