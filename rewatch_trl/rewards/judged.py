"""The rewards that ask an LLM judge (`judge.JudgeClient`, any OpenAI-compatible endpoint), and the paper's
Observation & Reasoning total that combines them with the parsed ones. Without a judge, the observation reward is
the token F1 against the captions (offline). A verdict the judge failed to give is None: the row is unscored, never
scored wrong. Pure Python.

Example:
```python
>>> observation_reward(["<action>[00:00-00:05]</action><observation>a red square</observation>"],
...                    captions=["[00:00-00:05] a red square"])
[1.0]
```
"""

import functools

from rewatch_trl.answer_kinds import kind_score
from rewatch_trl.react import ReactTrace, Step, overlapping, parse_captions
from rewatch_trl.rewards.parsed import (
    _choice_score,
    _column,
    _is_mcq,
    _ruled_kind,
    _traces,
    accuracy_reward,
    react_format_reward,
    token_f1,
)


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
