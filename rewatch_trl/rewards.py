"""Reward functions of ReWatch-R1, for `trl.GRPOTrainer` or any trainer that calls `f(completions, **columns)`.

Pure Python: importing this module loads no torch and no transformers. Every function takes the completions
(strings or chat messages) and the dataset columns it needs as keyword lists, ignores the rest, and returns
one `float` per completion, or `None` where the reward does not apply to that row (TRL then ignores it).
None of them raises on any completion text.

Example:
```python
>>> from trl import GRPOTrainer  # doctest: +SKIP
>>> from rewatch_trl.rewards import react_format_reward, mcq_accuracy_reward
>>> trainer = GRPOTrainer(model=..., reward_funcs=[react_format_reward, mcq_accuracy_reward], ...)  # doctest: +SKIP
```
"""

import functools
import importlib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from rewatch_trl.answer_kinds import KINDS, answer_in_tags, kind_score
from rewatch_trl.react import (
    ReactTrace,
    Step,
    completion_text,
    overlapping,
    parse_captions,
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


OBSERVATION_PROMPT = """You check a video model's observation against the reference captions of the same clip.

Clip: {clip}
Reference captions of this clip:
{captions}

The model's observation:
{observation}

Does the observation agree with the captions (no invented objects, actions or events)? Reply with "Score: X" where X is between 0 and 1."""

REASONING_PROMPT = """Answer the question using only the observations below, which were made while re-watching clips of a video.

Question: {question}

{steps}

Reply with the final answer only."""

ACCURACY_PROMPT = """Decide whether a predicted answer to a question about a video matches the ground-truth answer.

Question: {question}
Ground truth: {truth}
Prediction: {prediction}

Reply "yes" if they mean the same, otherwise "no"."""


def _default_judge(judge):
    return judge if judge is not None else _environment_judge()


@functools.lru_cache(maxsize=1)
def _environment_judge():
    # One client per process for rewards called without a judge (configured by the environment), not one a call.
    from rewatch_trl.judge import JudgeClient

    return JudgeClient()


def _observed_pairs(trace: ReactTrace, segments) -> list[tuple[Step, list]]:
    return [
        (step, [seg for clip in clips for seg in overlapping(segments, clip)])
        for step, clips in zip(trace.steps, trace.clips, strict=True)
        if step.observation
    ]


def observation_reward(completions, captions=None, judge=None, **kwargs) -> list[float | None]:
    """The paper's observation reward: each (re-watched clip, observation) pair scored against the captions of
    that clip, then averaged. Without a `judge` the score is the token F1 of the observation and the overlapping
    captions (offline); with a `JudgeClient` it is the judge's verdict. 0.0 without observations; None on rows
    without captions, and on a row one of whose verdicts the judge failed to give.

    Example:
    ```python
    >>> observation_reward(["<action>[00:00-00:05]</action><observation>a red square</observation>"],
    ...                    captions=["[00:00-00:05] a red square\\n[00:05-00:10] a blue circle"])
    [1.0]
    ```
    """
    n = len(completions)
    rows = []  # per completion: None (no captions) or a list of (prompt or score) per pair
    prompts: list[str] = []
    for trace, caption in zip(_traces(completions), _column({"c": captions}, "c", n), strict=True):
        segments = parse_captions(caption)
        if not segments:
            rows.append(None)
            continue
        pairs = []
        for step, hits in _observed_pairs(trace, segments):
            if not hits:
                pairs.append(0.0)
            elif judge is None:
                pairs.append(token_f1(step.observation, " ".join(seg.text for seg in hits)))
            else:
                prompts.append(
                    OBSERVATION_PROMPT.format(
                        clip=step.action,
                        captions="\n".join(f"[{s.start}s-{s.end}s] {s.text}" for s in hits),
                        observation=step.observation,
                    )
                )
                pairs.append(len(prompts) - 1)
        rows.append(pairs)
    verdicts = judge.score(prompts) if prompts else []
    rewards = []
    for pairs in rows:
        if pairs is None:
            rewards.append(None)
            continue
        scores = [p if isinstance(p, float) else verdicts[p] for p in pairs]
        # a verdict the judge failed to give is no verdict of 0: the row is unscored (None), not scored wrong
        rewards.append(None if None in scores else sum(scores) / len(scores) if scores else 0.0)
    return rewards


def _answers_match(predictions, problem, answer, multiple_choice, judge, problem_type=None) -> list[float | None]:
    """Per row: MCQ rows by the chosen letter (1.0/0.0), rows of a Video-R1 kind by its rule (`accuracy_reward`),
    open-ended rows by the judge (1.0/0.0); None where the judge failed."""
    n = len(predictions)
    problems, flags = _column({"p": problem}, "p", n), _column({"m": multiple_choice}, "m", n)
    kinds = _column({"k": problem_type}, "k", n)
    results: list[float | None] = []
    asks: list[tuple[int, str]] = []
    rows = zip(predictions, problems, answer, flags, kinds, strict=True)
    for i, (prediction, text, truth, flag, kind) in enumerate(rows):
        if prediction is None:
            results.append(0.0)
        elif _is_mcq(flag, truth):
            results.append(_choice_score(prediction, truth, text))
        elif _ruled_kind(kind):
            results.append(kind_score(kind, prediction, str(truth)))
        else:
            results.append(None)
            asks.append((i, ACCURACY_PROMPT.format(question=text, truth=truth, prediction=prediction)))
    if asks:
        for (i, _), verdict in zip(asks, _default_judge(judge).score([p for _, p in asks]), strict=True):
            results[i] = None if verdict is None else float(verdict >= 0.5)
    return results


def judge_accuracy_reward(
    completions, problem, answer, multiple_choice=None, judge=None, problem_type=None, **kwargs
) -> list[float | None]:
    """The paper's accuracy reward: MCQ answers by their letter, open-ended answers by an LLM judge that says
    whether they match `answer`. None where the judge failed."""
    predictions = [trace.answer for trace in _traces(completions)]
    return _answers_match(predictions, problem, answer, multiple_choice, judge, problem_type)


def reasoning_reward(
    completions, problem, answer, multiple_choice=None, judge=None, problem_type=None, **kwargs
) -> list[float | None]:
    """The paper's reasoning reward: the judge answers the question from the question and the completion's
    action/observation pairs alone; 1.0 when that answer matches the ground truth, 0.0 when not or when
    there is nothing to reason from, None where the judge failed."""
    judge = _default_judge(judge)
    traces = _traces(completions)
    asks = []
    for i, (trace, question) in enumerate(zip(traces, problem, strict=True)):
        steps = [s for s in trace.steps if s.observation]
        if steps:
            lines = "\n".join(f"Re-watched: {s.action}\nObserved: {s.observation}" for s in steps)
            asks.append((i, REASONING_PROMPT.format(question=question, steps=lines)))
    predictions: list[str | None] = [None] * len(completions)
    for (i, _), reply in zip(asks, judge.ask([p for _, p in asks]), strict=True):
        predictions[i] = reply
    matched = _answers_match(predictions, problem, answer, multiple_choice, judge, problem_type)
    failed = {i for (i, _) in asks if predictions[i] is None}
    return [None if i in failed else m for i, m in enumerate(matched)]


def rewatch_reward(
    completions,
    answer,
    problem=None,
    multiple_choice=None,
    captions=None,
    judge=None,
    problem_type=None,
    data_type=None,
    **kwargs,
) -> list[float | None]:
    """The paper's Observation & Reasoning reward in one function: `acc · (1 + obs + rea) + fmt`.

    With a `judge`, `acc`, `obs` and `rea` are the judge's (`judge_accuracy_reward`, `observation_reward`,
    `reasoning_reward`). Without one everything is offline: `acc` is `accuracy_reward`, `obs` the token-F1
    `observation_reward`, and `rea` is 0 (it needs a judge). A row any of whose parts the judge failed to give is
    None (unscored: a judge outage is not a wrong answer); `obs` on a row without captions counts 0.

    Example:
    ```python
    >>> c = "<action>[00:00-00:05]</action><observation>a red square</observation><answer>B</answer>"
    >>> rewatch_reward([c], answer=["B"], multiple_choice=[True], captions=["[00:00-00:05] a red square"])
    [3.0]
    ```
    """
    n = len(completions)
    if judge is None:
        acc = accuracy_reward(completions, answer, multiple_choice, problem, problem_type)
        rea = [0.0] * n
    else:
        acc = judge_accuracy_reward(completions, problem, answer, multiple_choice, judge, problem_type)
        rea = reasoning_reward(completions, problem, answer, multiple_choice, judge, problem_type)
    obs = observation_reward(completions, captions, judge)
    fmt = react_format_reward(completions, data_type)
    # `obs` is None on a row without captions (it counts 0 there) and on one whose verdict the judge failed to give
    rows = zip(obs, _column({"c": captions}, "c", n), strict=True)
    failed_obs = [o is None and bool(parse_captions(caption)) for o, caption in rows]
    return [
        None if a is None or r is None or failed else a * (1.0 + (o or 0.0) + r) + f
        for a, o, r, f, failed in zip(acc, obs, rea, fmt, failed_obs, strict=True)
    ]


# Registry: the names recipes use. Rewards marked True take a judge.
REWARDS: dict[str, tuple[Callable, bool]] = {
    "format": (react_format_reward, False),
    "mcq_accuracy": (mcq_accuracy_reward, False),
    "open_ended_accuracy": (open_ended_accuracy_reward, False),
    "accuracy": (accuracy_reward, False),
    "temporal_grounding": (temporal_grounding_reward, False),
    "observation": (observation_reward, False),
    "observation_judge": (observation_reward, True),
    "judge_accuracy": (judge_accuracy_reward, True),
    "reasoning": (reasoning_reward, True),
    "rewatch": (rewatch_reward, False),
    "rewatch_judge": (rewatch_reward, True),
    "video_r1_accuracy": (video_r1_accuracy_reward, False),
    "length_band": (length_band_reward, False),
}


def _imported(name: str) -> Callable:
    """The function at the import path `name`; an error naming it, and the registry, if there is none."""
    module_name, _, attribute = name.rpartition(".")
    why = "not a registry name or an import path"
    if module_name:
        try:
            func = getattr(importlib.import_module(module_name), attribute, None)
            why = f"no function {attribute!r} in module {module_name!r}" if not callable(func) else why
        except ImportError as error:
            func, why = None, str(error)
        if callable(func):
            return func
    raise ValueError(f"unknown reward {name!r} ({why}); known rewards: {', '.join(sorted(REWARDS))}")


def reward_func_name(name: str) -> str:
    """The function name TRL logs (`rewards/<name>/mean`) for the reward a recipe calls `name`.

    Example:
    ```python
    >>> reward_func_name("rewatch_judge"), reward_func_name("accuracy_reward")
    ('rewatch_reward_judge', 'accuracy_reward')
    ```
    """
    if name not in REWARDS:
        return name.rpartition(".")[2]
    func = REWARDS[name][0].__name__
    return f"{func}_judge" if name.endswith("_judge") else func


def get_reward_funcs(
    names: Sequence[str], judge=None, reward_kwargs: dict[str, dict] | None = None, **judge_options
) -> list[Callable]:
    """Reward functions by their recipe names (or function names), or, as TRL's `grpo` script takes them, by import
    path (`my_lib.rewards.custom_reward`). Judge rewards share one `JudgeClient`, `judge` or one built from
    `judge_options` (`base_url`, `model`, `api_key`, ...) and the environment. `reward_kwargs` binds keyword
    arguments to rewards by the name given (`{"length_band": {"low": 256}}`).

    Example:
    ```python
    >>> [f.__name__ for f in get_reward_funcs(["format", "mcq_accuracy"])]
    ['react_format_reward', 'mcq_accuracy_reward']
    ```
    """
    by_function = {f.__name__: (f, j) for f, j in REWARDS.values() if not j}
    reward_kwargs = dict(reward_kwargs or {})
    unknown = set(reward_kwargs) - set(names)
    if unknown:
        raise ValueError(f"reward_kwargs names {sorted(unknown)}, which are not among the rewards {list(names)}")
    funcs = []
    for name in names:
        entry = REWARDS.get(name) or by_function.get(name) or (_imported(name), False)
        func, needs_judge = entry
        bound_kwargs = dict(reward_kwargs.get(name, {}))
        if needs_judge:
            if judge is None:
                from rewatch_trl.judge import JudgeClient

                judge = JudgeClient(**judge_options)
            bound_kwargs["judge"] = judge
        if bound_kwargs:
            bound = functools.partial(func, **bound_kwargs)
            functools.update_wrapper(bound, func)
            bound.__name__ = reward_func_name(name) if name in REWARDS else func.__name__
            func = bound
        funcs.append(func)
    return funcs
