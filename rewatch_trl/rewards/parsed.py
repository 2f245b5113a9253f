"""The rewards read from the completion and the row alone: the ReAct format, the answer (a multiple-choice letter,
open-ended text, a Video-R1 kind by its rule), the re-watched clips' timestamps, the length band. Pure Python.

Example:
```python
>>> react_format_reward(["<action>[00:01-00:03]</action><observation>red</observation><answer>A</answer>"])
[1.0]
```
"""

import functools
import re
import string
from collections import Counter

from rewatch_trl.answer_kinds import KINDS, answer_in_tags, kind_score
from rewatch_trl.react import (
    ReactTrace,
    completion_text,
    parse_react,
    well_formed_without_steps,
)


_OPTION = re.compile(r"^\s{0,8}\(?([A-Z])[\):.]\s{0,8}(\S.*?)\s*$")
_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])(?:[.:)]|\s*$))")
_ANSWER_IS = re.compile(r"\b(?:answer|option|choice)\s{0,3}(?:is|:)?\s{0,3}:?\s{0,3}\(?([A-Z])\b\)?", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MAX_TOKENS = 2048
# Video-R1's threshold: an accuracy above it counts as a right answer (T-GRPO's bonus, the length band, the viewer)
RIGHT = 0.1


@functools.lru_cache(maxsize=8192)
def _trace(text: str) -> ReactTrace:
    # TRL hands the same completions to every reward of a step: parse each text once.
    return parse_react(text)


def _traces(completions) -> list[ReactTrace]:
    return [_trace(completion_text(c)) for c in completions]


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    return [None] * n if values is None else list(values)


def normalize_text(text: str) -> list[str]:
    """Lower-case tokens without punctuation or articles (SQuAD's normalisation), at most 2048 of them."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return text.split()[:_MAX_TOKENS]


def token_f1(prediction: str, reference: str) -> float:
    """Token-level F1 of two texts after `normalize_text`.

    Example:
    ```python
    >>> token_f1("A silver chain.", "a silver chain")
    1.0
    >>> round(token_f1("silver necklace", "a silver chain"), 2)
    0.5
    ```
    """
    pred, ref = normalize_text(prediction), normalize_text(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@functools.lru_cache(maxsize=4096)
def parse_options(problem: str | None) -> dict[str, str]:
    """The lettered options of a multiple-choice `problem` (`A: text` / `(A) text` / `A. text`, one a line).
    Cached (the G completions of a prompt share it): treat the result as read-only."""
    options = {}
    for line in (problem or "").splitlines()[1:]:
        match = _OPTION.match(line)
        if match:
            options[match.group(1)] = match.group(2)
    return options


def extract_choice(answer: str | None, options: dict[str, str] | None = None) -> str | None:
    """The letter an answer chooses: `D`, `(D)`, `D.`, `D: text`, `The answer is D`, or an option's exact text.

    Example:
    ```python
    >>> extract_choice("The answer is (D).")
    'D'
    >>> extract_choice("A silver chain", {"A": "A beaded necklace", "D": "A silver chain"})
    'D'
    ```
    """
    if not answer:
        return None
    answer = answer.strip()[:1000]
    # A letter form first: "A silver chain" is no letter form (a letter must stand alone or before . : or )),
    # so trying it first cannot mistake an option's text for the letter A.
    match = _LETTER.match(answer)
    if match:
        return match.group(1) or match.group(2)
    if options:
        wanted = normalize_text(answer)
        for letter, text in options.items():
            if normalize_text(text) == wanted:
                return letter
    match = _ANSWER_IS.search(answer)
    return match.group(1).upper() if match else None


@functools.lru_cache(maxsize=4096)
def _right_choice(truth: str, problem: str | None) -> str | None:
    return extract_choice(truth, parse_options(problem))


def _choice_score(prediction: str | None, truth, problem: str | None) -> float:
    """1.0 when a multiple-choice prediction picks the same option as the ground truth, else 0.0."""
    chosen = extract_choice(prediction, parse_options(problem))
    return float(chosen is not None and chosen == _right_choice(str(truth), problem))


def _is_mcq(flag, answer) -> bool:
    if flag is None:
        return isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha()
    return bool(flag)


def react_format_reward(completions, data_type=None, **kwargs) -> list[float]:
    """1.0 when the completion is a ReAct trace: one or more `<action>` each followed by its `<observation>`,
    then exactly one `<answer>` that closes the completion; else 0.0. On an image row (`data_type` "image"), which
    has no clip to re-watch, the pairs are optional.

    Example:
    ```python
    >>> react_format_reward(["<action>[00:01-00:03]</action><observation>red</observation><answer>A</answer>", "A"])
    [1.0, 0.0]
    >>> react_format_reward(["<answer>STOP</answer>"] * 2, data_type=["image", "video"])
    [1.0, 0.0]
    ```
    """
    kinds = _column({"d": data_type}, "d", len(completions))
    return [
        float(trace.well_formed or (kind == "image" and well_formed_without_steps(trace.text)))
        for trace, kind in zip(_traces(completions), kinds, strict=True)
    ]


def mcq_accuracy_reward(completions, answer, multiple_choice=None, problem=None, **kwargs) -> list[float | None]:
    """1.0 when the `<answer>` picks the right option (any letter form, or the option's exact text), 0.0 when
    not, None on open-ended rows.

    Example:
    ```python
    >>> problem = "Which jewelry?\\nA: A beaded necklace\\nD: A silver chain"
    >>> mcq_accuracy_reward(["<answer>(D)</answer>", "<answer>A silver chain</answer>", "<answer>A</answer>"],
    ...                     answer=["D"] * 3, multiple_choice=[True] * 3, problem=[problem] * 3)
    [1.0, 1.0, 0.0]
    ```
    """
    n = len(completions)
    flags, problems = _column({"m": multiple_choice}, "m", n), _column({"p": problem}, "p", n)
    rewards = []
    for trace, truth, flag, text in zip(_traces(completions), answer, flags, problems, strict=True):
        if not _is_mcq(flag, truth):
            rewards.append(None)
            continue
        rewards.append(_choice_score(trace.answer, truth, text))
    return rewards


def open_ended_accuracy_reward(completions, answer, multiple_choice=None, **kwargs) -> list[float | None]:
    """Token F1 of the `<answer>` against the reference `answer` (offline, no judge); None on MCQ rows.

    Example:
    ```python
    >>> open_ended_accuracy_reward(["<answer>A silver chain</answer>"], answer=["a silver chain"], multiple_choice=[False])
    [1.0]
    ```
    """
    flags = _column({"m": multiple_choice}, "m", len(completions))
    return [
        None if _is_mcq(flag, truth) else (token_f1(trace.answer, str(truth)) if trace.answer is not None else 0.0)
        for trace, truth, flag in zip(_traces(completions), answer, flags, strict=True)
    ]


def _ruled_kind(problem_type) -> str | None:
    """The Video-R1 kind a row's answer is scored by rule (`answer_kinds`), or None: multiple choice (by the letter)
    and open-ended answers are scored here."""
    return problem_type if problem_type in KINDS and problem_type != "multiple choice" else None


def accuracy_reward(
    completions, answer, multiple_choice=None, problem=None, problem_type=None, **kwargs
) -> list[float]:
    """Offline accuracy of every row by its kind: `mcq_accuracy_reward` on MCQ rows, Video-R1's rule on a row whose
    `problem_type` is numerical, OCR, free-form or regression (`answer_kinds.kind_score`, the `<answer>` against
    `answer`), `open_ended_accuracy_reward` on the rest.

    Example:
    ```python
    >>> accuracy_reward(["<answer>1,024</answer>", "<answer>B</answer>"], answer=["1024", "B"],
    ...                 multiple_choice=[False, True], problem_type=["numerical", "multiple choice"])
    [0.0, 1.0]
    ```
    """
    mcq = mcq_accuracy_reward(completions, answer, multiple_choice, problem)
    open_ended = open_ended_accuracy_reward(completions, answer, multiple_choice)
    kinds = _column({"k": problem_type}, "k", len(completions))
    rewards = []
    for trace, truth, kind, m, o in zip(_traces(completions), answer, kinds, mcq, open_ended, strict=True):
        if m is None and _ruled_kind(kind):
            o = kind_score(kind, trace.answer or "", str(truth)) if trace.answer is not None else 0.0
        rewards.append(m if m is not None else o)
    return rewards


def video_r1_accuracy_reward(completions, problem_type, solution, **kwargs) -> list[float | None]:
    """Video-R1's accuracy reward, each row by its own `problem_type` (`answer_kinds.KINDS`): the text of the
    completion's `<answer>` against the one of `solution` (`"<answer>A</answer>"`); no `<answer>` is "". None on a
    row without a `problem_type` or `solution` (a ReWatch row of a mixture) and on one whose `problem_type` is none of
    those kinds (LongVideo-Reason's reasoning perspective: `accuracy_reward` scores it by its row).

    Example:
    ```python
    >>> video_r1_accuracy_reward(["<think>...</think><answer>A</answer>", "<answer>the cat</answer>"],
    ...                          problem_type=["multiple choice", "OCR"], solution=["<answer>A</answer>"] * 2)
    [1.0, 0.0]
    ```
    """
    return [
        None
        if kind not in KINDS or reference is None
        else kind_score(kind, answer_in_tags(completion_text(completion)), answer_in_tags(reference))
        for completion, kind, reference in zip(completions, problem_type, solution, strict=True)
    ]


def length_band_reward(completions, completion_ids=None, low=320, high=512, bonus=0.2, **kwargs) -> list[float]:
    """Video-R1's length bonus: `bonus` for a completion of `low` to `high` tokens (both included), else 0. Video-R1
    pays it to right answers only, in prompts with more than one: `VideoGRPOTrainer` applies that gate when its
    `accuracy_reward` is named (`temporal.length_band_gate`); another trainer gets the band alone. The band and bonus
    are set with `functools.partial`, or a recipe's `reward_kwargs: {length_band: {low: 256, high: 768}}`.

    Example:
    ```python
    >>> length_band_reward(["a", "b", "c"], completion_ids=[[1] * 319, [1] * 320, [1] * 513])
    [0.0, 0.2, 0.0]
    ```
    """
    if completion_ids is None:
        raise ValueError("length_band_reward counts tokens: it needs `completion_ids` (TRL's GRPOTrainer passes them)")
    return [bonus if low <= len(ids) <= high else 0.0 for ids in completion_ids]


def temporal_grounding_reward(completions, duration=None, data_type=None, **kwargs) -> list[float | None]:
    """Fraction of the `<action>`s whose clips parse, run forwards (start < end) and lie inside the video's
    `duration` (seconds); 0.0 for a completion without actions; None on an image row (`data_type` "image").

    Example:
    ```python
    >>> temporal_grounding_reward(["<action>[00:10-00:20]</action><action>[09:00-09:30]</action>"], duration=[60])
    [0.5]
    ```
    """
    durations = _column({"d": duration}, "d", len(completions))
    kinds = _column({"k": data_type}, "k", len(completions))
    rewards = []
    for trace, limit, kind in zip(_traces(completions), durations, kinds, strict=True):
        if kind == "image":
            rewards.append(None)
            continue
        clips_per_step = trace.clips
        if not clips_per_step:
            rewards.append(0.0)
            continue
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            limit = float("inf")
        grounded = 0
        for clips in clips_per_step:
            if clips:
                grounded += 1
                for start, end in clips:
                    if not 0 <= start < end <= limit:
                        grounded -= 1
                        break
        rewards.append(grounded / len(clips_per_step))
    return rewards
