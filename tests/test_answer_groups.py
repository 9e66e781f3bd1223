"""`Engine.answer_groups`: whole work in one call (questions about encoded videos, each under
its own compression setting), as the batch runner hands it, on a tiny offline checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.work import Answer, Question, QuestionGroup, Request

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
COLOR, SCENE = (str(SAMPLES / name) for name in ("color_change.mp4", "scene_cut.mp4"))
SAMPLING = SamplingOptions(frames=6)
GENERATION = GenerationOptions(max_new_tokens=6)
QUARTER = CompressionOptions(ratio=0.25)
HALF_RANDOM = CompressionOptions(ratio=0.5, method="random")
TOO_LONG = "what happens next " * 1500  # past the tiny model's 4096-token context


@pytest.fixture(scope="module")
def engine(tiny_checkpoints) -> Engine:
    return Engine.load(str(tiny_checkpoints("qwen2_vl")),
                       LoadOptions(device="cpu", attention="sdpa"))


def comparable(answer: Answer) -> tuple:
    tokens = answer.tokens
    return (answer.answer, answer.method, answer.ratio, tokens.prompt_full, tokens.prompt_kept,
            tokens.visual_kept, tokens.generated, tuple(tokens.per_frame_kept))


def group(engine: Engine, video: str, asked: list[tuple[str, CompressionOptions]]
          ) -> QuestionGroup:
    """The questions about ``video``, encoded once with the first question's prompt."""
    questions = tuple(Question(Request(video, text, f"{video}|{index}"), setting)
                      for index, (text, setting) in enumerate(asked))
    return QuestionGroup(engine.encode(questions[0].request, SAMPLING), questions)


def test_each_question_gets_the_answer_it_gets_alone(engine, monkeypatch):
    groups = [group(engine, SCENE, [("What happens?", QUARTER),
                                    ("Describe the colours.", HALF_RANDOM),
                                    ("Is there a square?", QUARTER)]),
              group(engine, COLOR, [("What colour is the ball?", HALF_RANDOM)])]
    prefilled: list[int] = []
    real_prefill = engine.open_contexts

    def prefill(contexts):
        prefilled.append(len(contexts))
        return real_prefill(contexts)

    monkeypatch.setattr(engine, "open_contexts", prefill)
    outcomes = engine.answer_groups(groups, GENERATION, batch_size=2)
    # one prefix per (video, setting), two of them per prefill: (scene, 0.25) with
    # (scene, random 0.5), then (colour, random 0.5)
    assert prefilled == [2, 1]
    assert [len(answers) for answers in outcomes] == [3, 1]
    for work, answers in zip(groups, outcomes, strict=True):
        for question, answer in zip(work.questions, answers, strict=True):
            assert isinstance(answer, Answer)
            assert answer.request == question.request
            alone = engine.ask(question.request, SAMPLING, question.compression, GENERATION)
            assert comparable(answer) == comparable(alone)


def test_a_question_that_cannot_run_is_its_own_error(engine):
    work = group(engine, SCENE, [("What happens?", QUARTER), (TOO_LONG, QUARTER),
                                 ("Is there a square?", QUARTER)])
    first, too_long, last = engine.answer_groups([work], GENERATION, batch_size=3)[0]
    assert isinstance(too_long, str) and len(too_long.splitlines()) == 1
    assert too_long.startswith(SCENE) and "context is 4096 tokens" in too_long
    for outcome, question in ((first, work.questions[0]), (last, work.questions[2])):
        assert isinstance(outcome, Answer)
        alone = engine.ask(question.request, SAMPLING, QUARTER, GENERATION)
        assert comparable(outcome) == comparable(alone)


def test_without_prefix_reuse_each_group_is_its_prepared_question(engine):
    works = [group(engine, video, [(text, setting)]) for video, text, setting in
             ((SCENE, "What happens?", QUARTER), (COLOR, "What colour?", HALF_RANDOM))]
    outcomes = engine.answer_groups(works, GENERATION, batch_size=2, reuse_prefix=False)
    for work, (answer,) in zip(works, outcomes, strict=True):
        assert answer.tokens.prefix_reused == answer.tokens.prefix_tokens == 0
        expected = engine.answer([work.video], work.questions[0].compression, GENERATION)[0]
        assert comparable(answer) == comparable(expected)
    two = group(engine, SCENE, [("What happens?", QUARTER), ("Why?", QUARTER)])
    with pytest.raises(ValueError, match="one question its video was prepared with"):
        engine.answer_groups([two], GENERATION, reuse_prefix=False)
