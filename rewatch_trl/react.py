"""Parse a ReAct completion: its re-watch actions (clips), their observations and the final answer.

Pure Python and linear in the completion's length: every pattern here is a flat alternation or a bounded
repeat, so a 100k-character completion of tag soup parses as fast as a clean one.

Example:
```python
>>> trace = parse_react("<action>Re-watch [01:40-01:50]</action><observation>a chain</observation><answer>D</answer>")
>>> trace.answer, trace.clips[0], trace.well_formed
('D', [Clip(start=100, end=110)], True)
```
"""

import re
from typing import NamedTuple

from rewatch_trl.prompts import timestamp_to_seconds


# The grammar, in C-speed regexes. Tags are lower case, as the seed's prompt writes them (a case-blind
# match would be several times slower: no fast literal search). FREE is text without any ReAct tag; its quantifiers are possessive, so
# matching never backtracks and stays linear in the completion's length.
_TAG_WORD = r"(?:action|observation|answer)"
_FREE = rf"[^<]*+(?:<(?!/?{_TAG_WORD}>)[^<]*+)*+"
# A step: a closed action, and the observation that follows it if only free text stands between them.
_STEP = re.compile(rf"<action>({_FREE})</action>(?:{_FREE}<observation>({_FREE})</observation>)?")
_ANSWER = re.compile(rf"<answer>({_FREE})</answer>")
# In a well-formed completion (only its pairs' and answer's tags): an action, then (free text and) its
# observation; and its actions alone. Flat scans, faster than `_STEP`, which must also skip stray tags.
_PAIR = re.compile(rf"<action>({_FREE})</action>{_FREE}<observation>({_FREE})</observation>")
_ACTION = re.compile(rf"<action>({_FREE})</action>")
# The format the paper rewards: action/observation pairs (free text around them), then one closing answer.
_WELL_FORMED = re.compile(
    rf"{_FREE}(?:<action>{_FREE}</action>{_FREE}<observation>{_FREE}</observation>{_FREE})++"
    rf"<answer>({_FREE})</answer>\s*+"
)
# An image row's format: the same with no pair needed (an image has no clip to re-watch).
_WELL_FORMED_WITHOUT_STEPS = re.compile(
    rf"{_FREE}(?:<action>{_FREE}</action>{_FREE}<observation>{_FREE}</observation>{_FREE})*+"
    rf"<answer>({_FREE})</answer>\s*+"
)
# A clip: a timestamp (M:SS / MM:SS / H:MM:SS / HH:MM:SS), optionally joined to a second one by "-", "to", "~",
# "until", ... (with brackets and spaces around). Bounded repeats only: no catastrophic backtracking.
_TS = r"\b(?<!:)(\d{1,2}:\d{2}(?::\d{2})?)(?![\d:])"
_JOIN = r"\s{0,3}\]?\s{0,3}(?:-|–|—|~|(?i:to|until|till|and|through))\s{0,3}\[?\s{0,3}"
_CLIP = re.compile(f"{_TS}(?:{_JOIN}{_TS})?")
_CAPTION = re.compile(r"^\s*\[\s*([\d:]{4,8})\s*[-–~]\s*([\d:]{4,8})\s*\]\s*(.*)$")


class Clip(NamedTuple):
    """A span of the video in seconds; an instant has `start == end`."""

    start: int
    end: int


class Step(NamedTuple):
    """One `<action>` and the `<observation>` that follows it (None if none does)."""

    action: str
    observation: str | None = None


class ReactTrace:
    """A parsed completion: its `answer` (the first, stripped; None if none) and `well_formed`, the format the paper
    rewards — one or more action/observation pairs, then exactly one answer that closes the completion. `steps`
    and `clips` (`clips[i]`: the clips `steps[i]`'s action names, [] when none or a malformed one) are parsed on
    first use: the format and accuracy rewards never pay for them, the grounding reward only for the clips."""

    __slots__ = ("_clips", "_steps", "answer", "text", "well_formed")

    def __init__(self, text: str, answer: str | None = None, well_formed: bool = False):
        self.text = text
        self.answer = answer
        self.well_formed = well_formed
        self._steps = None
        self._clips = None

    @property
    def steps(self) -> list[Step]:
        if self._steps is None:
            if self.well_formed:
                pairs = _PAIR.findall(self.text)
                self._steps = [Step._make((action.strip(), observation.strip())) for action, observation in pairs]
            else:
                self._steps = [
                    Step(m[1].strip(), None if m[2] is None else m[2].strip()) for m in _STEP.finditer(self.text)
                ]
        return self._steps

    @property
    def clips(self) -> list[list[Clip]]:
        if self._clips is None:
            if self._steps is None and self.well_formed:
                # a well-formed completion's actions are its steps' (each has its observation): no steps to build
                actions = _ACTION.findall(self.text)
            else:
                actions = [step.action for step in self.steps]
            self._clips = [parse_clips(action) or [] for action in actions]
        return self._clips

    def __repr__(self) -> str:
        return f"ReactTrace(steps={self.steps!r}, answer={self.answer!r}, well_formed={self.well_formed!r})"


class Segment(NamedTuple):
    """One timestamped caption of the video."""

    start: int
    end: int
    text: str


def completion_text(completion) -> str:
    """The text of a completion given as a string or as chat messages (`[{"role": "assistant", "content": ...}]`)."""
    if isinstance(completion, str):
        return completion
    # TRL's usual form: one assistant message with string content.
    if type(completion) is list and len(completion) == 1 and type(completion[0]) is dict:
        content = completion[0].get("content")
        if type(content) is str:
            return content
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion or []:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                block.get("text") or "" for block in content if isinstance(block, dict) and block.get("type") == "text"
            )
    return "".join(parts)


# M:SS and MM:SS timestamps (the usual ones) to seconds by one table lookup; a miss is H:MM:SS or malformed.
_SECONDS = {f"{m:0{width}d}:{sec:02d}": m * 60 + sec for width in (1, 2) for m in range(100) for sec in range(60)}


def _slow_seconds(timestamp: str) -> int | None:
    """Seconds of a timestamp the table misses (H:MM:SS), None when it is malformed (minutes or seconds past 59)."""
    try:
        return timestamp_to_seconds(timestamp)
    except ValueError:
        return None


def parse_clips(text: str) -> list[Clip] | None:
    """The clips an action names: ranges (`[01:00-01:10]`, `01:00 to 01:10`, `from 1:02:03 to 1:02:09`) and
    single instants (`at 05:00`). None if a timestamp is malformed (e.g. `01:75`).

    Example:
    ```python
    >>> parse_clips("from 05:00 to 05:10, then at 07:30")
    [Clip(start=300, end=310), Clip(start=450, end=450)]
    ```
    """
    clips = []
    for first, second in _CLIP.findall(text):
        start = _SECONDS.get(first)
        if start is None and (start := _slow_seconds(first)) is None:
            return None
        end = start
        if second and (end := _SECONDS.get(second)) is None and (end := _slow_seconds(second)) is None:
            return None
        clips.append(Clip._make((start, end)))  # _make: the C constructor, without the keyword handling
    return clips


def parse_react(completion) -> ReactTrace:
    """Parse a completion (string or chat messages) into its steps and answer; never raises."""
    text = completion_text(completion)
    # A well-formed completion's match holds its (only) answer; only the others need a search for their first.
    answer = _WELL_FORMED.fullmatch(text)
    if answer is not None:
        return ReactTrace(text, answer[1].strip(), well_formed=True)
    answer = _ANSWER.search(text)
    return ReactTrace(text, answer[1].strip() if answer else None)


def well_formed_without_steps(completion) -> bool:
    """The format rewarded on an image row: any action/observation pairs (none needed), then exactly one answer that
    closes the completion.

    Example:
    ```python
    >>> well_formed_without_steps("The sign reads STOP. <answer>STOP</answer>"), parse_react("<answer>x</answer>").well_formed
    (True, False)
    ```
    """
    return _WELL_FORMED_WITHOUT_STEPS.fullmatch(completion_text(completion)) is not None


def parse_captions(captions) -> list[Segment]:
    """Timestamped captions as the paper writes them (`[MM:SS-MM:SS] text`, one a line) or as a list of
    `{"start", "end", "text"}` (seconds or timestamps). Lines that are not captions are ignored.

    Example:
    ```python
    >>> parse_captions("[00:00-00:05] a red square\\n[00:05-00:10] a blue circle")[1]
    Segment(start=5, end=10, text='a blue circle')
    ```
    """
    if not captions:
        return []
    segments = []
    if isinstance(captions, str):
        for line in captions.splitlines():
            match = _CAPTION.match(line)
            if match is None:
                continue
            try:
                start, end = timestamp_to_seconds(match.group(1)), timestamp_to_seconds(match.group(2))
            except ValueError:
                continue
            segments.append(Segment(start, end, match.group(3).strip()))
        return segments
    for item in captions:
        if not isinstance(item, dict):
            continue
        try:
            start, end = (
                timestamp_to_seconds(v) if isinstance(v, str) else int(v) for v in (item["start"], item["end"])
            )
        except (KeyError, TypeError, ValueError):
            continue
        segments.append(Segment(start, end, str(item.get("text") or "")))
    return segments


def overlapping(segments: list[Segment], clip: Clip) -> list[Segment]:
    """The caption segments that share time with a clip; an instant falls in the segments that contain it.

    Example:
    ```python
    >>> segments = parse_captions("[00:00-00:05] red\\n[00:05-00:10] blue")
    >>> [s.text for s in overlapping(segments, Clip(0, 5))], [s.text for s in overlapping(segments, Clip(7, 7))]
    (['red'], ['blue'])
    ```
    """
    if clip.start == clip.end:
        return [s for s in segments if s.start <= clip.start <= s.end]
    return [s for s in segments if s.start < clip.end and clip.start < s.end]
