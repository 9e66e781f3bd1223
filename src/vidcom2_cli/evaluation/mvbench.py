"""MVBench (the 20 ``mvbench_*`` tasks) as lmms-eval runs it, read from the files of the hub
dataset ``OpenGVLab/MVBench``: ``json/<task>.json`` (lists of {video, question, candidates,
answer}) and the videos under ``video/<source folder>/`` (the unzipped archives; the folder
itself, without ``video/``, is accepted too). The source folder of each task is lmms-eval's
``DATA_LIST``; like lmms-eval at this commit every task is read as a video file (the
episodic_reasoning frame-folder variant is commented out there).

Followed: ``lmms_eval/tasks/mvbench/_default_template_yaml``, the 20 task yamls and
``utils.py`` at lmms-eval commit 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3: "Question:" +
question + "\\nOption:\\n" + "(A) ...\\n" lines + "Only give the best option.\\n", 16 new
tokens, ``mcq_acc`` scoring, and an empty answer left out of the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..multiple_choice import mvbench_normal_form, option_lines
from .common import DatasetError, EvalQuestion, checked_rows, find_video

NAME = "mvbench"
MAX_NEW_TOKENS = 16
POST_PROMPT = "Only give the best option.\n"
# lmms-eval's DATA_LIST: the folder each task's videos are in.
SOURCES = {
    "action_sequence": "star/Charades_segment",
    "moving_count": "clevrer/video_validation",
    "action_prediction": "star/Charades_segment",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "action_antonym": "ssv2_video_mp4",
    "action_count": "perception/videos",
    "scene_transition": "scene_qa/video",
    "object_shuffle": "perception/videos",
    "object_existence": "clevrer/video_validation",
    "fine_grained_pose": "nturgbd_convert",
    "unexpected_action": "FunQA_test/test",
    "moving_direction": "clevrer/video_validation",
    "state_change": "perception/videos",
    "object_interaction": "star/Charades_segment",
    "character_order": "perception/videos",
    "action_localization": "sta/sta_video_segment",
    "counterfactual_inference": "clevrer/video_validation",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "moving_attribute": "clevrer/video_validation",
    "egocentric_navigation": "vlnqa",
}
SUBTASKS = tuple(SOURCES)
EXPECTED = ("json/<task>.json for the 20 MVBench tasks and the videos under video/, as in the "
            "hub dataset OpenGVLab/MVBench")


def prompt(question: str, candidates: list[str]) -> str:
    options = "".join(line + "\n" for line in option_lines(candidates, "({letter}) {text}"))
    return "Question:" + question + "\nOption:\n" + options + POST_PROMPT


def read(root: Path, subtask: str | None = None, limit: int | None = None
         ) -> list[EvalQuestion]:
    """Every subtask (or one), at most ``limit`` questions each (lmms-eval's --limit is per
    task, and each subtask is a task there)."""
    if not (root / "json").is_dir():
        raise DatasetError(f"mvbench: {root} is not MVBench: expected {EXPECTED}")
    questions = []
    for name in ([subtask] if subtask else SUBTASKS):
        path = root / "json" / f"{name}.json"
        if not path.is_file():
            raise DatasetError(f"mvbench: {path} is missing: expected {EXPECTED}")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"mvbench: cannot read {path} ({error})") from None
        rows = checked_rows(rows, path, NAME, ("video", "question", "candidates", "answer"),
                            EXPECTED)
        for index, row in enumerate(rows[:limit]):
            candidates = [str(text) for text in row["candidates"]]
            source = SOURCES[name]
            video, error = find_video([root / "video" / source / row["video"],
                                       root / source / row["video"]])
            answer = str(row["answer"])
            letter = (option_lines(candidates, "{letter}")[candidates.index(answer)]
                      if answer in candidates else "")
            questions.append(EvalQuestion(
                NAME, f"{name}-{index}", video, prompt(str(row["question"]), candidates),
                tuple(candidates), letter, MAX_NEW_TOKENS, {"subtask": name},
                error if letter else error or f"answer {answer!r} is not a candidate"))
    return questions


def score(question: EvalQuestion, text: str) -> tuple[str, bool, bool]:
    """(the answer's normal form, whether it is right, whether it counts: an empty answer
    does not, as in lmms-eval's aggregation)."""
    read = mvbench_normal_form(text)
    return read, read == mvbench_normal_form(question.answer), text != ""
