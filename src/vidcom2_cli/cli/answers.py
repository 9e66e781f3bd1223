"""Printing answers as ``ask`` and ``chat`` do: streamed in a terminal, JSON lines, only the
answers, or the human report (for several questions, the shared summary once)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from . import console
from .runtime import run_line

if TYPE_CHECKING:
    import numpy as np

    from ..engine import Engine
    from ..options import SamplingOptions
    from ..work import Answer


class AnswerStreamer:
    """Writes the answer as it is generated, in place of the status line."""

    def __init__(self, stop_status: Callable[[], None]) -> None:
        self.stop_status = stop_status
        self.started = False

    def __call__(self, text: str) -> None:
        if not self.started:
            self.started = True
            self.stop_status()
            sys.stdout.write("answer: ")
        sys.stdout.write(text)
        sys.stdout.flush()


def print_answers(engine: Engine, answers: Iterable[Answer], json_output: bool, quiet: bool,
                  heatmap: Path | None = None, sampling: SamplingOptions | None = None,
                  several: bool = False, streamed: bool = False) -> None:
    """Each answer as it comes: a JSON line, the bare answer, or the human report (for
    several questions of one video, the shared summary once and then each answer)."""
    from ..heatmap import save_contact_sheet
    from ..report import answer_to_json, render_answer, render_question_answer, render_summary

    stdout = console.stdout
    for index, result in enumerate(answers):
        if index == 0 and heatmap is not None:
            save_contact_sheet(heatmap, frames_of(result, sampling), result.plan,
                               frames_per_unit=result.frames_per_unit)
        if json_output:
            payload = answer_to_json(result)
            payload["heatmap"] = str(heatmap) if heatmap is not None else None
            console.print_json(payload)
        elif quiet:
            console.print_plain(result.answer)
        elif several:
            if index == 0:
                stdout.print(render_summary(result))
            stdout.print(render_question_answer(result, index))
        else:
            stdout.print(render_answer(result, with_text=not streamed))
    if not (json_output or quiet):
        console.print_plain(run_line(engine.run_info()))
        if heatmap is not None:
            console.print_plain(f"heatmap written to {heatmap}")


def frames_of(answer: Answer, sampling: SamplingOptions | None) -> np.ndarray:
    """The sampled frames, decoded again (the same sampling picks the same frames) when a
    feature-cache hit skipped decoding (or a server answered)."""
    from ..video import load_video

    if len(answer.video.frames):
        return answer.video.frames
    if sampling is None:
        from ..options import SamplingOptions

        sampling = SamplingOptions()
    return load_video(Path(answer.request.video), num_frames=sampling.frames, fps=sampling.fps,
                      max_frames=sampling.max_frames,
                      multiple_of=answer.frames_per_unit).frames
