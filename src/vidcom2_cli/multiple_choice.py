"""Multiple-choice questions: the options lettered, and the letter an answer picks.

Two kinds of rule for reading an answer live here side by side, because they must differ:

- this tool's own, which grades ``vidcom2 batch`` records (``extract_choice``,
  ``expected_choice``, ``is_correct``): made for a person's JSONL file, so it takes a letter in
  the options' range wherever it stands (skipping "A" and "I" used as words) and, with none,
  the option whose text the answer gives;
- lmms-eval's, which score ``vidcom2 eval`` (``mcq_letter`` for Video-MME and MLVU,
  ``mvbench_normal_form``, ``lvb_letter``): re-implemented from reading lmms-eval at the
  commit ``evaluation.common.LMMS_EVAL_COMMIT`` (``lmms_eval/tasks/_task_utils/
  mcq_extract.py``, ``mvbench/utils.py``, ``longvideobench/utils.py``), reproducing that
  code's behaviour quirks included (a lower case "b" is no answer for Video-MME and MLVU; an
  unparsable LongVideoBench answer is a random letter, seeded here by the question id so that
  a run can be repeated), so that scores compare with the published ones.

They read the same answer differently ("A red ball, so B" is B here and A for lmms-eval), so
neither can stand in for the other without changing a score.
"""

from __future__ import annotations

import random
import re
import string

LETTERS = string.ascii_uppercase
MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."


def option_lines(options: list[str] | tuple[str, ...], template: str) -> list[str]:
    """The options lettered A, B, ... with ``template`` ("({letter}) {text}", ...)."""
    return [template.format(letter=letter, text=text)
            for letter, text in zip(LETTERS, options, strict=False)]


def multiple_choice_prompt(question: str, options: tuple[str, ...] | list[str]) -> str:
    """The lmms-eval multiple-choice layout: question, "A. ..." lines, then the instruction."""
    return "\n".join([question.strip(), *option_lines(options, "{letter}. {text}"),
                      MULTIPLE_CHOICE_PROMPT])


# --- this tool's rule (batch records) --------------------------------------------------------

# An uppercase letter that is not part of a word: "B", "(B)", "B. blue", "answer is B."
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z])[A-Z](?![A-Za-z])")
# What follows "A" used as the article ("A red ball") or "I" as the pronoun ("I think", "I'm").
_USED_AS_WORD = re.compile(r"'|\s+[a-z]")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what free-text matching compares."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def expected_choice(expected: str, options: tuple[str, ...] | list[str]) -> str:
    """The letter an expected answer names: a letter in range, or an option's text."""
    letter = expected.strip().upper()
    if len(letter) == 1 and letter in LETTERS[:len(options)]:
        return letter
    for letter, option in zip(LETTERS, options, strict=False):
        if normalize(option) == normalize(expected):
            return letter
    raise ValueError(f"answer: {expected!r} is neither an option letter "
                     f"(A-{LETTERS[len(options) - 1]}) nor the text of an option")


def extract_choice(text: str, options: tuple[str, ...] | list[str]) -> str | None:
    """The option a model's answer picks, or None.

    The first standalone capital letter within the options' range ("B", "(B)", "B. blue",
    "The answer is B"), except "A" and "I" used as words ("A red ball", "I think"); with no
    such letter, the option whose text the answer is, or the only one whose text it contains.
    """
    last = LETTERS[len(options) - 1]
    for match in _STANDALONE_LETTER.finditer(text):
        letter = match.group()
        if letter > last or (letter in "AI" and _USED_AS_WORD.match(text, match.end())):
            continue
        return letter
    answer = normalize(text)
    texts = [normalize(option) for option in options]
    if answer in texts:
        return LETTERS[texts.index(answer)]
    contained = [index for index, option in enumerate(texts)
                 if re.search(rf"\b{re.escape(option)}\b", answer)]
    return LETTERS[contained[0]] if len(contained) == 1 else None


def is_correct(prediction: str, expected: str, options: tuple[str, ...] | list[str] | None
               ) -> bool:
    """Multiple choice: the picked letter is the expected one. Free text: equal once normalized."""
    if options is None:
        return normalize(prediction) == normalize(expected)
    return extract_choice(prediction, options) == expected_choice(expected, options)


# --- lmms-eval's shared multiple-choice extraction (Video-MME, MLVU) -------------------------

# Phrases after which the answer letter follows; checked in this order, case-insensitive.
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは",
)
# How sure each kind of match is; the highest wins, then the latest position.
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4,
         "right_paren": 3, "space": 2, "fallback": 0}
_MARKS = (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"),
          ("right_paren", "{})"), ("space", "{} "))


def mcq_letter(response: str, choices: str = "ABCD") -> str:
    """The letter lmms-eval's ``extract_mcq_answer`` reads from an answer, or "" for none."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for mark in ",.!?;:'\"":  # one after the other, as lmms-eval strips them
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter), in lmms-eval's order
    for kind, pattern in _MARKS:
        for letter in choices:
            mark = pattern.format(letter)
            if mark in text:
                found.append((_RANK[kind], text.rfind(mark), letter))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at < 0:
            continue
        for letter in choices:
            position = text.find(letter, at + len(phrase))
            if position >= 0:
                found.append((_RANK["phrase"], position, letter))
    bare = text.strip()
    for letter in choices:
        if bare.startswith(letter) and (len(bare) == 1 or not bare[1].isalpha()):
            found.append((_RANK["start"], 0, letter))
    for letter in choices:
        if bare.endswith(letter) and (len(bare) == 1 or not bare[-2].isalpha()):
            found.append((_RANK["end"], len(text) - 1, letter))
    if not found:
        found = [(_RANK["fallback"], text.rfind(letter), letter)
                 for letter in choices if letter in text]
    if not found:
        return ""
    # Highest rank, then the latest position; among equals the first found (a stable sort).
    best = max(range(len(found)), key=lambda index: (found[index][0], found[index][1],
                                                     -index))
    return found[best][2]


# --- lmms-eval's MVBench mcq_acc -------------------------------------------------------------

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_OPTION_LINE = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a full stop not before a digit
_SINGLE_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def mvbench_normal_form(answer: str) -> str:
    """What MVBench's ``mcq_acc`` compares: the letter of "B. text", else the first standalone
    A-E (any case) once punctuation is dropped, else the cleaned, lower-cased text."""
    option = _OPTION_LINE.match(answer.strip())
    if option:
        return option.group(1).upper()
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    spaced = text
    for mark in _PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or _DIGIT_COMMA.search(text):
            spaced = spaced.replace(mark, "")
        else:
            spaced = spaced.replace(mark, " ")
    text = _PERIOD.sub("", spaced, count=32)  # lmms-eval passes re.UNICODE (32) as the count
    text = text.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = _SINGLE_LETTER.search(text)
    return letter.group(1).upper() if letter else text


# --- lmms-eval's LongVideoBench parse_multi_choice_response -----------------------------------

LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                "The best option is", "The correct option is", "Best answer:", "Best option:")
_LVB_LETTER = re.compile(r"[ABCDE]")


def lvb_letter(response: str, choices: str, seed: str) -> str:
    """LongVideoBench's parse: drop the answer prefixes, take the first capital A-E; with none
    (or a long answer without one) a random choice, seeded by ``seed``."""
    text = response.strip()
    for prefix in LVB_PREFIXES:
        text = text.replace(prefix, "")
    found = _LVB_LETTER.search(text)
    if found is None:
        return random.Random(seed).choice(choices)
    return found.group()
