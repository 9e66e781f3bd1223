"""An answer's statistics as the ``vidcom2`` field of a response, and back.

The server writes what ``ask --json`` prints (``report.answer_to_json``) plus the kept-token
masks of the plan and the sampling it used; a client rebuilds from it an answer that
``report`` renders and ``heatmap`` draws exactly as for a local answer, with numpy alone (no
torch, so that ``ask --server`` starts in a fraction of a second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy too is imported where used: ask --server --json needs none of it
    import numpy as np

    from ..compression import KeepPlan
    from ..options import SamplingOptions
    from ..work import Answer

# Keys of the field that ``ask --json`` does not print.
SERVER_KEYS = ("plan", "sampling", "server")


def answer_fields(answer: Answer, video_label: str, sampling: SamplingOptions,
                  server: dict[str, Any]) -> dict[str, Any]:
    """``ask --json``'s object for ``answer`` (its video as the request named it), the plan's
    masks, the sampling used (to decode the same frames for a heatmap) and the server's own
    figures (queue wait, batch size, prefix cache)."""
    from ..heatmap import as_array
    from ..report import answer_to_json

    fields = answer_to_json(answer)
    fields["video"] = video_label
    plan = answer.plan
    merged = as_array(plan.merged_mask()) if plan.merges is not None else None
    fields["plan"] = {"grid": list(plan.grid) if plan.grid is not None else None,
                      "mask": [_bits(row) for row in as_array(plan.mask)],
                      "merged": None if merged is None else [_bits(row) for row in merged],
                      "merge_targets": plan.total_merge_targets}
    fields["sampling"] = {"frames": sampling.frames, "fps": sampling.fps,
                          "max_frames": sampling.max_frames}
    fields["server"] = server
    return fields


def ask_json(fields: dict[str, Any], video: str) -> dict[str, Any]:
    """What a local ``ask --json`` prints for the same answer (``video`` as typed)."""
    payload = {key: value for key, value in fields.items() if key not in SERVER_KEYS}
    payload["video"] = video
    return payload


def _bits(row: np.ndarray) -> str:
    return "".join("1" if value else "0" for value in row.tolist())


def _mask(rows: list[str]) -> np.ndarray:
    import numpy as np

    return np.array([[char == "1" for char in row] for row in rows], dtype=bool).reshape(
        len(rows), -1)


# --- the client's view of an answer ----------------------------------------------------------

@dataclass(frozen=True)
class PlanView:
    """A ``KeepPlan`` rebuilt from its masks: what the report and the heatmap read of it."""

    mask: np.ndarray  # (T units, N tokens) bool
    method: str
    ratio: float
    grid: tuple[int, int] | None
    merged: np.ndarray | None  # (T, N) dropped tokens folded into a kept one; None: no merging
    merge_targets: int = 0

    @property
    def merges(self) -> np.ndarray | None:
        """Not None exactly when the method merges (all the report asks of it)."""
        return self.merged

    @property
    def num_units(self) -> int:
        return self.mask.shape[0]

    @property
    def tokens_per_unit(self) -> int:
        return self.mask.shape[1]

    @property
    def counts(self) -> list[int]:
        return [int(count) for count in self.mask.sum(axis=1)]

    @property
    def total_full(self) -> int:
        return int(self.mask.size)

    @property
    def total_kept(self) -> int:
        return int(self.mask.sum())

    @property
    def kept_ratio(self) -> float:
        return self.total_kept / self.total_full

    @property
    def total_merged(self) -> int:
        return 0 if self.merged is None else int(self.merged.sum())

    @property
    def total_merge_targets(self) -> int:
        return self.merge_targets

    def merged_mask(self) -> np.ndarray:
        return self.mask & False if self.merged is None else self.merged

    def spatial_frequency(self) -> np.ndarray:
        import numpy as np

        frequency = self.mask.astype(np.float32).sum(axis=0) / np.float32(self.num_units)
        return frequency.reshape(self.grid) if self.grid is not None else frequency


@dataclass(frozen=True)
class RequestView:
    video: str
    question: str
    id: str | None = None


@dataclass(frozen=True)
class InfoView:
    frame_count: int
    fps: float
    decoder: str
    stream_index: int | None
    width: int
    height: int


@dataclass(frozen=True)
class VideoView:
    indices: list[int]
    info: InfoView
    padded: int = 0
    resized: int = 0
    substituted_frames: dict[int, int] = field(default_factory=dict)
    frames: tuple[()] = ()  # none: a heatmap decodes them again (answers.frames_of)


@dataclass(frozen=True)
class TokensView:
    visual_full: int
    visual_kept: int
    per_frame_kept: list[int]
    visual_structural: int
    prompt_full: int
    prompt_kept: int
    generated: int
    prefix_reused: int = 0
    prefix_tokens: int = 0


@dataclass(frozen=True)
class MemoryView:
    bytes: int
    source: str


@dataclass(frozen=True)
class SamplingView:
    frames: int
    fps: float | None
    max_frames: int


@dataclass(frozen=True)
class AnswerView:
    """An ``engine.Answer`` as a client gets it back: the fields the report reads."""

    request: RequestView
    answer: str
    model: str
    method: str
    ratio: float
    plan: PlanView | KeepPlan
    video: VideoView
    frames_per_unit: int
    tokens: TokensView
    timing_ms: dict[str, float]
    memory: MemoryView
    random_weights: bool
    feature_cache: str | None
    run: dict[str, Any]
    sampling: SamplingView


def answer_view(fields: dict[str, Any], video: str) -> AnswerView:
    """The answer a response's ``vidcom2`` field describes (``video``: the path as typed)."""
    plan = fields["plan"]
    tokens = fields["tokens"]
    frames = fields["frames"]
    sampling = fields["sampling"]
    return AnswerView(
        request=RequestView(video, fields["question"], fields.get("id")),
        answer=fields["answer"], model=fields["model"], method=fields["method"],
        ratio=fields["ratio"],
        plan=PlanView(_mask(plan["mask"]), fields["method"], fields["ratio"],
                      tuple(plan["grid"]) if plan["grid"] is not None else None,
                      None if plan["merged"] is None else _mask(plan["merged"]),
                      plan["merge_targets"]),
        video=VideoView(list(frames["indices"]), InfoView(
            frames["source_frames"], frames["source_fps"], frames["decoder"],
            frames["stream_index"], *frames["size"]), frames["padded"], frames["resized"],
            {int(index): used for index, used in frames["substituted"].items()}),
        frames_per_unit=frames["per_unit"],
        tokens=TokensView(**{key: tokens[key] for key in TokensView.__dataclass_fields__
                             if key in tokens}),
        timing_ms=dict(fields["timing_ms"]),
        memory=MemoryView(fields["memory"]["peak_bytes"], fields["memory"]["source"]),
        random_weights=fields["random_weights"], feature_cache=fields["feature_cache"],
        run=dict(fields["run"]),
        sampling=SamplingView(sampling["frames"], sampling["fps"], sampling["max_frames"]))
