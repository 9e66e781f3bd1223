"""The key figures of each part of ``gpu_suite.py``, read back from the files the part wrote.

One reader per kind of part: ``read`` returns the figures as a plain dict (JSON-ready) or raises
``NoFigures`` saying what is missing; ``brief`` gives one short line for the summary table and
``markdown`` the part's full table. ``latency_targets`` checks issue 26's targets at R = 0.25
against a latency run's rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.25
# Issue 26, at R = 0.25 against R = 1.0 on the same model and run.
PREFILL_CUT, GENERATION_CUT, END_TO_END_CUT = 0.75, 0.70, 0.50
COMPRESS_MS_LIMIT, COMPRESS_SHARE_LIMIT = 1.0, 0.01


class NoFigures(Exception):
    """A part ended without the files its figures come from (or with unreadable ones)."""


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise NoFigures(f"{path.name} was not written")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise NoFigures(f"{path.name} is not JSON: {error}") from None


def _mib(count: float) -> str:
    return f"{count / 2**20:,.0f} MiB"


def _change(value: float, reference: float) -> str:
    return f"{100.0 * (value / reference - 1.0):+.1f}%" if reference else "-"


# --- environment ---------------------------------------------------------------------------


def read_environment(folder: Path) -> dict[str, Any]:
    return _load_json(folder / "environment.json")


def brief_environment(figures: dict[str, Any]) -> str:
    versions = figures.get("versions", {})
    device = figures.get("gpu", {}).get("name") or "no GPU"
    problems = figures.get("problems", [])
    text = (f"{device}; torch {versions.get('torch')}, CUDA {figures.get('cuda')}, "
            f"transformers {versions.get('transformers')}")
    return text + (f"; {len(problems)} problem(s): {problems[0]}" if problems else "")


def markdown_environment(figures: dict[str, Any]) -> list[str]:
    gpu = figures.get("gpu", {})
    lines = ["| what | value |", "|---|---|",
             f"| date | {figures.get('date')} |",
             f"| GPU | {gpu.get('name', '-')} ({_mib(gpu['memory_bytes']) if gpu else '-'}, "
             f"compute capability {gpu.get('capability', '-')}, driver "
             f"{gpu.get('driver', '-')}) |",
             f"| CUDA (torch's) / cuDNN | {figures.get('cuda')} / {figures.get('cudnn')} |",
             f"| Python | {figures.get('python')} |",
             f"| FlashAttention-2 usable | {figures.get('flash_attention_2')} |"]
    lines += [f"| {name} | {version} |" for name, version in figures.get("versions", {}).items()]
    lines += [f"| problem | {problem} |" for problem in figures.get("problems", [])]
    return lines


# --- tiny checkpoints ----------------------------------------------------------------------


def read_checkpoints(folder: Path) -> dict[str, Any]:
    figures = _load_json(folder / "checkpoints.json")
    if not figures.get("families"):
        raise NoFigures("checkpoints.json lists no family")
    return figures


def brief_checkpoints(figures: dict[str, Any]) -> str:
    families = figures["families"]
    built = sum(1 for entry in families.values() if entry["built"])
    return f"{len(families)} families ({built} built, {len(families) - built} reused)"


def markdown_checkpoints(figures: dict[str, Any]) -> list[str]:
    return ["| family | built now | seconds |", "|---|---|---|"] + [
        f"| {family} | {entry['built']} | {entry['seconds']:.1f} |"
        for family, entry in figures["families"].items()]


# --- latency.py ----------------------------------------------------------------------------


def read_latency(folder: Path) -> dict[str, Any]:
    figures = _load_json(folder / "latency.json")
    if not figures.get("results"):
        raise NoFigures("latency.json holds no model")
    for result in figures["results"]:
        result["targets"] = latency_targets(result["rows"])
    return figures


def _baseline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(row for row in rows if row["ratio"] == 1.0)


def _cut(row: dict[str, Any], full: dict[str, Any], key: str) -> float:
    """How much lower ``row[key]`` is than the R = 1.0 row's, as a share of it."""
    return 1.0 - row[key] / full[key] if full[key] else 0.0


def latency_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 26's targets at R = 0.25: each with the figure, the limit and whether it is met."""
    full = _baseline(rows)
    checks = []
    for row in rows:
        if row["ratio"] != TARGET_RATIO:
            continue
        prefill, generation = _cut(row, full, "prefill_ms"), _cut(row, full, "generation_ms")
        end_to_end = _cut(row, full, "end_to_end_ms")
        share = row["compress_ms"] / row["end_to_end_ms"] if row["end_to_end_ms"] else 0.0
        peak, full_peak = row["peak_memory_bytes"], full["peak_memory_bytes"]
        for target, value, limit, unit, met in (
                ("prefill cut vs R=1", prefill, PREFILL_CUT, "cut", prefill >= PREFILL_CUT),
                ("LLM generation cut vs R=1", generation, GENERATION_CUT, "cut",
                 generation >= GENERATION_CUT),
                ("end-to-end cut vs R=1", end_to_end, END_TO_END_CUT, "cut",
                 end_to_end >= END_TO_END_CUT),
                ("compression time", row["compress_ms"], COMPRESS_MS_LIMIT, "ms",
                 row["compress_ms"] < COMPRESS_MS_LIMIT),
                ("compression share of end to end", share, COMPRESS_SHARE_LIMIT, "share",
                 share < COMPRESS_SHARE_LIMIT),
                ("peak memory vs R=1", peak, full_peak, "bytes", peak <= full_peak)):
            checks.append({"method": row["method"], "target": target, "value": value,
                           "limit": limit, "unit": unit, "met": met})
    return checks


def short_name(model: str) -> str:
    """A preset's name or a checkpoint folder's last part."""
    return model.removeprefix("random:").rstrip("/").rsplit("/", 1)[-1]


def format_target(check: dict[str, Any]) -> tuple[str, str]:
    """(figure, what it must be) as a person reads them; cuts as changes from R = 1.0."""
    value, limit = check["value"], check["limit"]
    return {"cut": (f"{-100 * value:+.1f}%", f"<= {-100 * limit:g}%"),
            "share": (f"{100 * value:.2f}%", f"< {100 * limit:g}%"),
            "ms": (f"{value:.3f} ms", f"< {limit:g} ms"),
            "bytes": (_mib(value), f"<= {_mib(limit)}")}[check["unit"]]


def brief_latency(figures: dict[str, Any]) -> str:
    parts = []
    for result in figures["results"]:
        rows = result["rows"]
        full = _baseline(rows)
        target = next((row for row in rows if row["ratio"] == TARGET_RATIO), None)
        name = short_name(result["model"])
        if target is None:
            parts.append(f"{name}: no R={TARGET_RATIO:g} row")
            continue
        met = sum(check["met"] for check in result["targets"])
        parts.append(
            f"{name}: R={TARGET_RATIO:g} prefill "
            f"{_change(target['prefill_ms'], full['prefill_ms'])}, LLM "
            f"{_change(target['generation_ms'], full['generation_ms'])}, e2e "
            f"{_change(target['end_to_end_ms'], full['end_to_end_ms'])}, compress "
            f"{target['compress_ms']:.2f} ms; targets {met}/{len(result['targets'])}")
    return "; ".join(parts)


def markdown_latency(figures: dict[str, Any]) -> list[str]:
    lines = [f"{figures.get('machine', '')}", "",
             "| model | R | visual tokens | vision | compress | prefill | prefill vs R=1 "
             "| decode | LLM | LLM vs R=1 | end to end | e2e vs R=1 | peak memory | ready s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in figures["results"]:
        full = _baseline(result["rows"])
        for row in result["rows"]:
            same = row["ratio"] == 1.0
            lines.append(
                f"| {short_name(result['model'])} | {row['ratio']:g} "
                f"| {row['visual_kept']}/{row['visual_full']} | {row['vision_ms']:.1f} "
                f"| {row['compress_ms']:.2f} | {row['prefill_ms']:.1f} "
                f"| {'-' if same else _change(row['prefill_ms'], full['prefill_ms'])} "
                f"| {row['decode_ms']:.1f} | {row['generation_ms']:.1f} "
                f"| {'-' if same else _change(row['generation_ms'], full['generation_ms'])} "
                f"| {row['end_to_end_ms']:.1f} "
                f"| {'-' if same else _change(row['end_to_end_ms'], full['end_to_end_ms'])} "
                f"| {_mib(row['peak_memory_bytes'])} ({row['memory_source']}) "
                f"| {result['load_s']:.1f} |")
    return lines


# --- compressor.py -------------------------------------------------------------------------


def read_compressor(folder: Path) -> dict[str, Any]:
    figures = _load_json(folder / "compressor.json")
    if not figures.get("rows"):
        raise NoFigures("compressor.json holds no shape")
    return figures


def brief_compressor(figures: dict[str, Any]) -> str:
    return "; ".join(f"{row['label']}: {row['vectorised_ms']:.2f} ms ({row['speedup']:.1f}x "
                     f"the loop)" for row in figures["rows"])


def markdown_compressor(figures: dict[str, Any]) -> list[str]:
    lines = [f"{figures['device']}, {figures['dtype']} features, R = {figures['ratio']:g}, "
             f"medians of {figures['repeats']}", "",
             "| shape | loop ms | vectorised ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {row['label']} {'x'.join(map(str, row['shape']))} | {row['loop_ms']:.2f} "
              f"| {row['vectorised_ms']:.3f} | {row['speedup']:.1f}x |" for row in figures["rows"]]
    return lines


# --- vidcom2 ask --json --------------------------------------------------------------------


def read_ask(folder: Path) -> dict[str, Any]:
    stdout = folder / "stdout.txt"
    lines = stdout.read_text().splitlines() if stdout.is_file() else []
    if not lines:
        raise NoFigures("vidcom2 ask printed no JSON")
    try:
        answer = json.loads(lines[-1])
    except ValueError as error:
        raise NoFigures(f"vidcom2 ask printed no JSON: {error}") from None
    run = answer["run"]
    return {"device": run["device"], "dtype": run["dtype"], "attention": run["attention"],
            "peak_memory_bytes": answer["memory"]["peak_bytes"],
            "memory_source": answer["memory"]["source"],
            "visual_full": answer["tokens"]["visual_full"],
            "visual_kept": answer["tokens"]["visual_kept"],
            "total_ms": answer["timing_ms"]["total"], "model_load_s": run["model_load_s"],
            "decoder": answer["frames"]["decoder"]}


def brief_ask(figures: dict[str, Any]) -> str:
    return (f"{figures['device']} {figures['dtype']} {figures['attention']}, peak "
            f"{_mib(figures['peak_memory_bytes'])} ({figures['memory_source']})")


def markdown_asks(parts: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| family | device | dtype | attention | peak memory (source) | visual kept/full "
             "| total ms | decoder |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name.removeprefix('ask-')} | {f['device']} | {f['dtype']} | {f['attention']} "
              f"| {_mib(f['peak_memory_bytes'])} ({f['memory_source']}) "
              f"| {f['visual_kept']}/{f['visual_full']} | {f['total_ms']:.1f} | {f['decoder']} |"
              for name, f in parts]
    return lines


# --- methods.py ----------------------------------------------------------------------------


def read_methods(folder: Path) -> dict[str, Any]:
    results = _load_json(folder / "methods.json")
    if not results:
        raise NoFigures("methods.json holds no model")
    return {"results": results}


def _method_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in result["rows"] if row["ratio"] == TARGET_RATIO]


def brief_methods(figures: dict[str, Any]) -> str:
    parts = []
    for result in figures["results"]:
        rows = _method_rows(result)
        fastest = min(rows, key=lambda row: row["compress_ms"], default=None)
        slowest = max(rows, key=lambda row: row["compress_ms"], default=None)
        if fastest is None or slowest is None:
            parts.append(f"{short_name(result['model'])}: no R={TARGET_RATIO:g} row")
            continue
        parts.append(f"{len(rows)} methods at R={TARGET_RATIO:g}: compress "
                     f"{fastest['compress_ms']:.2f} ms ({fastest['method']}) to "
                     f"{slowest['compress_ms']:.2f} ms ({slowest['method']})")
    return "; ".join(parts)


def markdown_methods(figures: dict[str, Any]) -> list[str]:
    lines = ["| model | method | visual tokens sent | merged | compress ms | compress share "
             "| prefill ms | prefill vs R=1 | end to end ms | peak memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in figures["results"]:
        full = _baseline(result["rows"])
        for row in [full, *_method_rows(result)]:
            same = row is full
            lines.append(
                f"| {short_name(result['model'])} | {'(R=1, full)' if same else row['method']} "
                f"| {row['visual_kept']}/{row['visual_full']} | {row['merged_tokens']} "
                f"| {row['compress_ms']:.2f} "
                f"| {100 * row['compress_ms'] / row['end_to_end_ms']:.2f}% "
                f"| {row['prefill_ms']:.1f} "
                f"| {'-' if same else _change(row['prefill_ms'], full['prefill_ms'])} "
                f"| {row['end_to_end_ms']:.1f} | {_mib(row['peak_memory_bytes'])} |")
    return lines


# --- reuse.py ------------------------------------------------------------------------------


def read_reuse(folder: Path) -> dict[str, Any]:
    results = _load_json(folder / "reuse.json")
    if not results:
        raise NoFigures("reuse.json holds no model")
    return {"results": results}


def brief_reuse(figures: dict[str, Any]) -> str:
    return "; ".join(f"prefix reuse {r['reuse_speedup']:.2f}x (target {r['reuse_target']:g}x), "
                     f"warm-cache sweep {r['sweep_speedup']:.2f}x (target {r['sweep_target']:g}x)"
                     for r in figures["results"])


def markdown_reuse(figures: dict[str, Any]) -> list[str]:
    lines = []
    for result in figures["results"]:
        lines += [f"{short_name(result['model'])} on {result['device']}, {result['dtype']}: "
                  f"{result['videos']} videos x {result['questions']} questions, "
                  f"{result['frames']} frames, R={result['ratio']:g}, "
                  f"{result['max_new_tokens']} new tokens", "",
                  "| mode | ms per question |", "|---|---|"]
        lines += [f"| {mode} | {ms:,.1f} |" for mode, ms in result["ms_per_question"].items()]
        lines += [f"| {mode} (ratios {', '.join(f'{r:g}' for r in result['ratios'])}) "
                  f"| {ms:,.1f} |" for mode, ms in result["sweep_ms_per_question"].items()]
        lines += ["", f"prefix reuse {result['reuse_speedup']:.2f}x faster than no reuse "
                  f"(target {result['reuse_target']:g}x); warm-cache sweep "
                  f"{result['sweep_speedup']:.2f}x faster (target {result['sweep_target']:g}x)",
                  ""]
    return lines


@dataclass(frozen=True)
class Reader:
    """How to read one kind of part: its figures, a line for the summary table, and its own
    table (None for ``ask``, whose parts share one table, ``markdown_asks``)."""

    read: Callable[[Path], dict[str, Any]]
    brief: Callable[[dict[str, Any]], str]
    markdown: Callable[[dict[str, Any]], list[str]] | None


READERS: dict[str, Reader] = {
    "environment": Reader(read_environment, brief_environment, markdown_environment),
    "checkpoints": Reader(read_checkpoints, brief_checkpoints, markdown_checkpoints),
    "latency": Reader(read_latency, brief_latency, markdown_latency),
    "compressor": Reader(read_compressor, brief_compressor, markdown_compressor),
    "ask": Reader(read_ask, brief_ask, None),
    "methods": Reader(read_methods, brief_methods, markdown_methods),
    "reuse": Reader(read_reuse, brief_reuse, markdown_reuse),
}
