"""``vidcom2 eval``: Video-MME, MVBench, MLVU (dev) and LongVideoBench (val, video only) read
from the files their publishers distribute, asked and scored as the lmms-eval task
definitions that produced the published numbers (lmms-eval commit
75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3, ``lmms_eval/tasks/<task>/``).

One module per task (reader, prompt, scoring); ``sweep`` turns questions into batch items for
every (method, ratio) and scores the records; ``summary`` makes the tables. Nothing here
imports torch: the batch runner answers the items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import longvideobench, mlvu, mvbench, videomme
from .common import LMMS_EVAL_COMMIT, DatasetError, EvalQuestion

__all__ = ["LMMS_EVAL_COMMIT", "TASKS", "DatasetError", "EvalQuestion", "Task", "parse_task",
           "read_questions", "score", "task_names"]


@dataclass(frozen=True)
class Task:
    name: str
    variants: tuple[str, ...]  # the per-model prompt variants of the task's yaml
    score: Callable[[EvalQuestion, str], tuple[str, bool, bool]]
    # The breakdowns the task reports (keys of EvalQuestion.groups), and whether its overall
    # score is the mean of the first breakdown's accuracies (MLVU's task types; MVBench's
    # subtasks, as the papers report it) rather than the accuracy over all questions.
    breakdowns: tuple[str, ...]
    max_new_tokens: int  # the generation length of the task's yaml
    macro: bool = False
    # The natural order of each breakdown's values (the summary's row order); values not
    # listed follow, in numeric order where they are numbers (LongVideoBench's durations).
    orders: dict[str, tuple[str, ...]] = field(default_factory=dict)


TASKS = {
    "videomme": Task("videomme", tuple(videomme.VARIANTS), videomme.score, ("duration",),
                     videomme.MAX_NEW_TOKENS, orders={"duration": videomme.DURATIONS}),
    "mvbench": Task("mvbench", ("default",), mvbench.score, ("subtask",),
                    mvbench.MAX_NEW_TOKENS, macro=True, orders={"subtask": mvbench.SUBTASKS}),
    "mlvu": Task("mlvu", tuple(mlvu.VARIANTS), mlvu.score, ("task_type",),
                 mlvu.MAX_NEW_TOKENS, macro=True, orders={"task_type": mlvu.TASK_TYPES}),
    "longvideobench": Task("longvideobench", ("default",), longvideobench.score,
                           ("duration_group", "question_category"),
                           longvideobench.MAX_NEW_TOKENS),
}


def task_names() -> list[str]:
    return [*TASKS, *(f"mvbench_{name}" for name in mvbench.SUBTASKS)]


def parse_task(name: str) -> tuple[Task, str | None]:
    """The task and, for ``mvbench_<subtask>`` (lmms-eval's task names), the subtask."""
    if name in TASKS:
        return TASKS[name], None
    if name.startswith("mvbench_") and name[len("mvbench_"):] in mvbench.SUBTASKS:
        return TASKS["mvbench"], name[len("mvbench_"):]
    raise DatasetError(f"TASK: unknown task {name!r}; one of videomme, mvbench, "
                       "mvbench_<subtask> (e.g. mvbench_action_antonym), mlvu, longvideobench")


def resolve_variant(task: Task, variant: str, model_type: str | None,
                    model: str = "") -> str:
    """``auto``: the variant lmms-eval would use for this model, else ``default``.

    lmms-eval picks a yaml's per-model variant by its model wrapper's name: ``qwen3_vl`` for
    the Qwen3-VL family, ``llava_vid`` for LLaVA-NeXT-Video and LLaVA-Video (whose Hugging Face
    checkpoints say ``llava_onevision``, so the ``--model`` name tells them apart).
    """
    if variant == "auto":
        if "qwen3_vl" in task.variants and model_type and model_type.startswith("qwen3_vl"):
            return "qwen3_vl"
        if "llava_vid" in task.variants and (model_type == "llava_next_video"
                                             or "llava-video" in model.lower()):
            return "llava_vid"
        return "default"
    if variant not in task.variants:
        raise DatasetError(f"--prompt-variant: {task.name} defines {', '.join(task.variants)} "
                           f"(or auto), not {variant!r}")
    return variant


def read_questions(task: Task, subtask: str | None, root: Path, variant: str = "default",
                   limit: int | None = None) -> list[EvalQuestion]:
    """The task's questions from DIR (DatasetError naming what was expected there)."""
    if not root.is_dir():
        raise DatasetError(f"--data: {root} is not a folder")
    if task.name == "videomme":
        return videomme.read(root, variant, limit)
    if task.name == "mvbench":
        return mvbench.read(root, subtask, limit)
    if task.name == "mlvu":
        return mlvu.read(root, variant, limit)
    return longvideobench.read(root, limit)


def score(question: EvalQuestion, text: str) -> tuple[str, bool, bool]:
    return TASKS[question.task].score(question, text)
