"""`vidcom2 eval` sweeps: methods x ratios from one encoding per video, against running each
setting on its own, on a Video-MME-layout fixture task with a real-size random-weight model.

    python benchmarks/eval_sweep.py [--model random:llava-onevision-0.5b] [--videos 3]
        [--questions 3] [--frames 4] [--ratios 0.5,0.25,0.15] [--methods vidcom2,random]
        [--max-new-tokens 4] [--device auto] [--dtype auto]

The fixture is a Video-MME folder as lmms-eval/Video-MME ships it (``videomme/test-*.parquet``
and ``data/<videoID>.mp4``), ``--videos`` videos of ``--questions`` questions each (Video-MME
asks 3), made from the sample clips (byte-altered copies fill up, so that every video is its
own file). After one unmeasured warm-up, the whole sweep runs twice in one process with the
same model: once shared (every question under every setting in one ``run_batch``: each video
decoded and encoded once, compressed and prefilled once per setting) and once per setting
(one ``run_batch`` per setting, as separate ``eval`` runs would do, minus the model load).
Prints the wall times, the vision-encoder runs of each, and the ratio. Random-weight presets
generate every one of ``--max-new-tokens`` (forced), so the decode share is equal in both.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from machine import cpu_model

from vidcom2_cli.batch.local import BatchOptions, run_batch
from vidcom2_cli.batch.output import ResultWriter
from vidcom2_cli.engine import Engine
from vidcom2_cli.evaluation import TASKS, read_questions
from vidcom2_cli.evaluation.common import EvalQuestion
from vidcom2_cli.evaluation.sweep import ScoringSink, Setting, settings, sweep_items
from vidcom2_cli.evaluation.videomme import COLUMNS
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.models.base import VideoAdapter
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions

ROOT = Path(__file__).resolve().parents[1]


def fixture(folder: Path, videos: int, questions: int) -> Path:
    clips = sorted((ROOT / "sample_videos").glob("*.mp4"))
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    (folder / "data").mkdir(parents=True)
    (folder / "videomme").mkdir()
    for number in range(videos):
        video_id = f"video{number:03d}"
        target = folder / "data" / f"{video_id}.mp4"
        shutil.copy(clips[number % len(clips)], target)
        with target.open("ab") as handle:  # other bytes: another file for any cache
            handle.write(b"\0" * (number // len(clips)))
        for question in range(questions):
            values = {"video_id": f"{number:03d}", "duration": "short", "domain": "Knowledge",
                      "sub_category": "Astronomy", "url": "", "videoID": video_id,
                      "question_id": f"{number:03d}-{question + 1}", "task_type": "Counting",
                      "question": f"Question {question + 1} about the clip?",
                      "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
                      "answer": "ABCD"[question % 4]}
            for name in COLUMNS:
                columns[name].append(values[name])
    pq.write_table(pa.table(columns), folder / "videomme" / "test-00000-of-00001.parquet")
    return folder


class EncoderCount:
    def __init__(self) -> None:
        self.calls = 0
        real = VideoAdapter.encode

        def counted(adapter, item, *args, **kwargs):
            self.calls += 1
            return real(adapter, item, *args, **kwargs)

        VideoAdapter.encode = counted  # type: ignore[method-assign]


# Stages each setting runs for itself in both modes (a record also carries its video's
# decoding and encoding, once per setting, even where they ran once for the whole sweep).
STAGES = ("compress", "prefill", "decode")


def run(engine: Engine, questions: list[EvalQuestion], chosen: list[Setting],
        options: BatchOptions, out: Path, stages: dict[str, float] | None = None) -> int:
    items, index = sweep_items(questions, chosen)
    with ResultWriter.open(str(out)) as writer:
        sink = ScoringSink(writer, index)
        summary = run_batch(engine, items, options, sink)
    for record in sink.records:
        for stage in STAGES if stages is not None and "error" not in record else ():
            stages[stage] = stages.get(stage, 0.0) + record["timing_ms"][stage] / 1000.0
    return summary.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llava-onevision-0.5b")
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--ratios", default="0.5,0.25,0.15")
    parser.add_argument("--methods", default="vidcom2,random")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    chosen = settings([float(part) for part in args.ratios.split(",")],
                      [part.strip() for part in args.methods.split(",")])
    torch.manual_seed(0)
    counter = EncoderCount()
    engine = Engine.load(args.model, LoadOptions(device=args.device, dtype=args.dtype))
    options = BatchOptions(
        SamplingOptions(frames=args.frames), CompressionOptions(),
        GenerationOptions(max_new_tokens=args.max_new_tokens,
                          min_new_tokens=args.max_new_tokens))
    with tempfile.TemporaryDirectory() as scratch:
        folder = fixture(Path(scratch) / "Video-MME", args.videos, args.questions)
        questions = read_questions(TASKS["videomme"], None, folder)
        run(engine, questions[:1], chosen[:1], options, Path(scratch) / "warm.jsonl")
        counter.calls = 0
        shared_stages: dict[str, float] = {}
        start = time.perf_counter()
        errors = run(engine, questions, chosen, options, Path(scratch) / "shared.jsonl",
                     shared_stages)
        shared, shared_calls = time.perf_counter() - start, counter.calls
        counter.calls = 0
        alone_stages: dict[str, float] = {}
        start = time.perf_counter()
        for number, setting in enumerate(chosen):
            errors += run(engine, questions, [setting], options,
                          Path(scratch) / f"alone-{number}.jsonl", alone_stages)
        alone, alone_calls = time.perf_counter() - start, counter.calls
    asked = len(questions) * len(chosen)
    print(f"{args.model} on {engine.device} ({cpu_model()}, {torch.get_num_threads()} threads), "
          f"{args.frames} frames, {args.videos} videos x {args.questions} questions, "
          f"{len(chosen)} settings ({', '.join(s.label for s in chosen)}): {asked} answers, "
          f"{errors} errors")
    print("| run | vision encoder runs | wall s | s / answer | "
          + " | ".join(f"{stage} s" for stage in STAGES) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(STAGES))
    for name, calls, wall, stages in (("shared encoding (one sweep)", shared_calls, shared,
                                       shared_stages),
                                      ("each setting separately", alone_calls, alone,
                                       alone_stages)):
        print(f"| {name} | {calls} | {wall:.1f} | {wall / asked:.2f} | "
              + " | ".join(f"{stages.get(stage, 0.0):.1f}" for stage in STAGES) + " |")
    print(f"separately / shared: {alone / shared:.2f}x")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
