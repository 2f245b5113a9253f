"""The QA formats rewatch-trl reads, each turned into the project's row (the seed's fields) that keeps its source's
own columns: ReWatch's JSONL (the seed's), Video-R1's (`Video-R1-260k.json`, `Video-R1-COT-165k.json`: a JSON list)
and LongVideo-Reason's (JSONL). `data.load_qa` validates the converted rows.

| project field | ReWatch | Video-R1 | LongVideo-Reason |
| --- | --- | --- | --- |
| `problem` | `problem` | `problem`, then `Options:` and one option a line (as Video-R1 asks) | `problem` (options inside) |
| `answer` | `answer` | the text of `solution`'s `<answer>` | the text of `answer`'s `<answer>` |
| `multiple_choice` | `multiple_choice` | `problem_type == "multiple choice"` | a letter among the problem's options |
| `question_type` | `question_type` | `problem_type` | `problem_type` (the reasoning perspective) |
| `problem_id` | `problem_id` | `problem_id` | `problem_id`, else `lvr-` and a hash of `videos` and `problem` |
| `videos` / `image_path` | `videos` | `path` (`./` dropped), by `data_type` | `videos` |
| `duration` | `duration` | read from the video | read from the video |

A converted row also holds `solution` (LongVideo-Reason's `answer`, tags and all), which `video_r1_accuracy_reward`
reads beside `problem_type`. LongVideo-Reason's released `problem_type` is a reasoning perspective (temporal, spatial,
goal and purpose, plot and narrative), kept as `perspective` for per-perspective metrics; a row whose `problem_type`
is one of Video-R1's kinds is read by its kind. A Video-R1 row with a `process` (the COT file) gets the SFT target
Video-R1 trains on, `response = process + "\\n" + solution`.

Example:
```python
>>> row = {"problem_id": 7, "problem": "How many cups?", "data_type": "video", "problem_type": "numerical",
...        "options": [], "solution": "<answer>3</answer>", "path": "./clips/a.mp4", "data_source": "x"}
>>> detect_format(row), {k: v for k, v in converted(row, "video-r1").items() if k in ("answer", "videos")}
('video-r1', {'answer': '3', 'videos': 'clips/a.mp4'})
```
"""

import hashlib

from rewatch_trl.answer_kinds import KINDS, answer_in_tags
from rewatch_trl.rewards import extract_choice, parse_options


FORMATS = ("rewatch", "video-r1", "longvideo-reason")
# The fields that tell a format: its rows have more of its own than of any other's
FORMAT_FIELDS = {
    "rewatch": {"multiple_choice", "question_type", "videos", "duration"},
    "video-r1": {"problem_type", "solution", "path", "options"},
    "longvideo-reason": {"problem_type", "videos", "answer"},
}


def detect_format(row: dict) -> str | None:
    """The format whose telling fields (`FORMAT_FIELDS`) `row` has the most of, or None on a tie: a row that lacks
    one of them is still told (and validation names the missing field)."""
    overlaps = sorted(((len(fields & row.keys()), name) for name, fields in FORMAT_FIELDS.items()), reverse=True)
    (best, name), (second, _) = overlaps[0], overlaps[1]
    return name if best > second else None


def converted(row: dict, format: str) -> dict:
    """`row` of `format` as the project's row, beside its own columns (the table above). Fields a format needs and
    lacks are left out, for validation to name."""
    if format == "rewatch":
        return row
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}, auto")
    kind = row.get("problem_type")
    multiple_choice = kind == "multiple choice" if isinstance(kind, str) else None
    ours = {
        "problem_id": str(row["problem_id"]) if row.get("problem_id") is not None else None,
        "question_type": kind,
        "multiple_choice": multiple_choice,
        "problem": row.get("problem"),
        "data_type": row.get("data_type", "video"),
    }
    if format == "video-r1":
        options = row.get("options") or []
        if multiple_choice and isinstance(ours["problem"], str) and isinstance(options, list):
            ours["problem"] += "Options:\n" + "".join(f"{option}\n" for option in options)
        solution = row.get("solution")
        path = row.get("path")
        media = path.removeprefix("./") if isinstance(path, str) else path
        ours |= {"videos": media} if ours["data_type"] == "video" else {"image_path": media}
        if isinstance(row.get("process"), str) and isinstance(solution, str):
            ours["response"] = row["process"] + "\n" + solution
    else:
        solution = row.get("answer")
        ours["videos"] = row.get("videos")
    ours["answer"] = answer_in_tags(solution) if isinstance(solution, str) else None
    ours["solution"] = solution
    if format == "longvideo-reason" and kind not in KINDS:
        # The released rows' `problem_type` is the reasoning perspective (temporal, spatial, goal and purpose, plot
        # and narrative): the kind of answer is the row's own, a letter among the options its problem lists or text
        options = parse_options(ours["problem"]) if isinstance(ours["problem"], str) else {}
        ours["multiple_choice"] = bool(options) and extract_choice(ours["answer"], options) in options
        ours["perspective"] = kind
        if ours["problem_id"] is None and isinstance(ours["problem"], str):  # they carry no id: one from the row
            ours["problem_id"] = (
                "lvr-" + hashlib.sha1(f"{ours['videos']}\n{ours['problem']}".encode()).hexdigest()[:12]
            )
    kept = {key: value for key, value in row.items() if key not in ours}
    return ours | kept


def kind_problems(row: dict) -> list[str]:
    """What is wrong with a converted row's kind of answer (empty for a ReWatch row, which has none)."""
    kind = row.get("problem_type")
    if "solution" not in row:
        return []
    if kind not in KINDS and not isinstance(row.get("perspective"), str):
        return [f"field 'problem_type': expected one of {', '.join(KINDS)}, got {kind!r}"]
    if not row.get("answer"):
        return [f"field 'solution': no '<answer>…</answer>' text in {row.get('solution')!r}"]
    return []
