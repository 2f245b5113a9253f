"""Parse a ReAct completion: its re-watch actions (clips), their observations and the final answer.

Pure Python and linear in the completion's length: every pattern here is a flat alternation or a bounded
repeat, so a 100k-character completion of tag soup parses as fast as a clean one.

Example:
```python
>>> trace = parse_react("<action>Re-watch [01:40-01:50]</action><observation>a chain</observation><answer>D</answer>")
>>> trace.answer, trace.steps[0].clips, trace.well_formed
('D', [Clip(start=100, end=110)], True)
```
"""

import re
from dataclasses import dataclass, field

from rewatch_trl.prompts import timestamp_to_seconds


_TAG = re.compile(r"<(/?)(action|observation|answer)>", re.IGNORECASE)
# A timestamp: H:MM:SS / HH:MM:SS or M:SS / MM:SS (bounded digits: no catastrophic backtracking).
_TIME = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])")
# What may stand between the two ends of a clip: "01:00-01:10", "01:00 to 01:10", "01:00 ~ 01:10", ...
_RANGE_JOIN = re.compile(r"\s{0,3}(?:-|–|—|~|to|until|till|and|through)\s{0,3}\]?\s{0,3}\[?\s{0,3}$", re.IGNORECASE)
_CAPTION = re.compile(r"^\s*\[\s*([\d:]{4,8})\s*[-–~]\s*([\d:]{4,8})\s*\]\s*(.*)$")


@dataclass(frozen=True)
class Clip:
    """A span of the video in seconds; an instant has `start == end`."""

    start: int
    end: int


@dataclass
class Step:
    """One `<action>` with the clips it names and the `<observation>` that follows it (None if none does)."""

    action: str
    clips: list[Clip]
    observation: str | None = None


@dataclass
class ReactTrace:
    """A parsed completion. `well_formed` is the format the paper rewards: one or more action/observation
    pairs, then exactly one answer that closes the completion."""

    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    well_formed: bool = False


@dataclass(frozen=True)
class Segment:
    """One timestamped caption of the video."""

    start: int
    end: int
    text: str


def completion_text(completion) -> str:
    """The text of a completion given as a string or as chat messages (`[{"role": "assistant", "content": ...}]`)."""
    if isinstance(completion, str):
        return completion
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


def _seconds(match: re.Match) -> int | None:
    first, second, third = (int(g) if g is not None else None for g in match.groups())
    if third is None:
        return first * 60 + second if second < 60 else None
    return first * 3600 + second * 60 + third if second < 60 and third < 60 else None


def parse_clips(text: str) -> list[Clip] | None:
    """The clips an action names: ranges (`[01:00-01:10]`, `01:00 to 01:10`, `from 1:02:03 to 1:02:09`) and
    single instants (`at 05:00`). None if a timestamp is malformed (e.g. `01:75`).

    Example:
    ```python
    >>> parse_clips("from 05:00 to 05:10, then at 07:30")
    [Clip(start=300, end=310), Clip(start=450, end=450)]
    ```
    """
    times = list(_TIME.finditer(text))
    clips: list[Clip] = []
    i = 0
    while i < len(times):
        start = _seconds(times[i])
        if start is None:
            return None
        if i + 1 < len(times) and _RANGE_JOIN.match(text, times[i].end(), times[i + 1].start()):
            end = _seconds(times[i + 1])
            if end is None:
                return None
            clips.append(Clip(start, end))
            i += 2
        else:
            clips.append(Clip(start, start))
            i += 1
    return clips


def parse_react(completion) -> ReactTrace:
    """Parse a completion (string or chat messages) into its steps and answer; never raises."""
    text = completion_text(completion)
    trace = ReactTrace()
    # A flat walk over the tags: the expected next tag is a small state machine.
    expect = "action|answer"
    ok = True
    open_at = None
    answers = 0
    for tag in _TAG.finditer(text):
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        if not closing:
            if open_at is not None or name not in expect.split("|"):
                ok = False
            open_at = (name, tag.end())
            continue
        if open_at is None or open_at[0] != name:
            ok = False
            open_at = None
            continue
        body = text[open_at[1] : tag.start()].strip()
        open_at = None
        if name == "action":
            trace.steps.append(Step(action=body, clips=parse_clips(body) or []))
            expect = "observation"
        elif name == "observation":
            if trace.steps and trace.steps[-1].observation is None:
                trace.steps[-1].observation = body
            else:
                ok = False
            expect = "action|answer"
        else:
            answers += 1
            trace.answer = body if trace.answer is None else trace.answer
            expect = ""
            if text[tag.end() :].strip():
                ok = False
    trace.well_formed = (
        ok
        and open_at is None
        and answers == 1
        and bool(trace.steps)
        and all(step.observation is not None for step in trace.steps)
    )
    return trace


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
    """The caption segments that overlap a clip (an instant overlaps the segment that contains it)."""
    return [s for s in segments if s.start <= clip.end and clip.start <= s.end]
