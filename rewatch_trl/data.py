"""Load the seed's QA JSONL (+ captions) into a `datasets.Dataset`, validated row by row; load a prepared one
from disk or the Hub; save or push one.

Every problem names its file, line and field. By default the first bad row raises `DataError`; with
`skip_invalid=True` bad rows are left out and listed in the `LoadReport`, and nothing else is dropped.

Example:
```python
>>> dataset, report = load_qa("qa.jsonl", captions_path="captions.jsonl", video_root="videos")  # doctest: +SKIP
>>> report.kept, report.skipped  # doctest: +SKIP
(8, [])
```
"""

import contextlib
import functools
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rewatch_trl.formats import FORMAT_FIELDS, FORMATS, converted, detect_format, kind_problems
from rewatch_trl.prompts import duration_string, seconds_to_timestamp
from rewatch_trl.react import parse_captions, parse_clips
from rewatch_trl.rewards import parse_options


logger = logging.getLogger(__name__)

# The seed's fields and their types; `answer_str` and `duration_str` may be absent.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "problem_id": str,
    "question_type": str,
    "multiple_choice": bool,
    "problem": str,
    "data_type": str,
    "videos": str,
    "answer": str,
    "duration": (int, float),
}
OPTIONAL_FIELDS: dict[str, type] = {"answer_str": str, "duration_str": str}
# A video may be a little shorter than the `duration` its rows give (containers round differently).
DURATION_TOLERANCE = 2.0


class DataError(ValueError):
    """A problem with the input data. The message starts with `file:line:` and names the field."""


@dataclass
class LoadReport:
    """What `load_qa` kept and what it left out (only with `skip_invalid=True`)."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"kept {self.kept} rows, skipped {len(self.skipped)}"]
        return "\n".join(lines + [f"  {problem}" for problem in self.skipped])


def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, object) for each record of a JSONL file, or of a JSON list (the line its element starts on:
    Video-R1's files); a record that is not a JSON object raises naming its line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        records = _json_list(path, text, start + 1)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: invalid JSON: {error.msg} (column {error.colno})") from None
    for number, row in records:
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return records


def _json_list(path: Path, text: str, index: int) -> list[tuple[int, object]]:
    """The elements of the JSON list whose `[` ends before `index`, each with the line it starts on."""
    decoder, records, line, counted = json.JSONDecoder(), [], 1, 0

    def line_at(position: int) -> int:
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, position), position
        return line

    while True:
        index = _after_space(text, index)
        if text[index : index + 1] == "]" and not records:
            return records
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_at(error.pos)}: invalid JSON: {error.msg}") from None
        records.append((line_at(index), value))
        index = _after_space(text, end)
        if text[index : index + 1] == "]":
            return records
        if text[index : index + 1] != ",":
            raise DataError(f"{path}:{line_at(index)}: invalid JSON: expected ',' or ']' after a list element")
        index += 1


def _after_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def load_captions(path) -> dict[str, str]:
    """Captions by video: lines of `{"videos": NAME, "captions": "[MM:SS-MM:SS] text\\n..." or [{start, end, text}]}`.
    Lists are turned into the paper's text form."""
    captions = {}
    for number, row in read_jsonl(path):
        video, text = row.get("videos"), row.get("captions")
        if not isinstance(video, str) or not video:
            raise DataError(f"{path}:{number}: field 'videos': expected the video's file name, got {video!r}")
        segments = parse_captions(text)
        if not segments:
            raise DataError(f"{path}:{number}: field 'captions': no '[MM:SS-MM:SS] text' caption found")
        if video in captions:
            raise DataError(f"{path}:{number}: field 'videos': captions of {video!r} given twice")
        captions[video] = "\n".join(
            f"[{seconds_to_timestamp(s.start)}-{seconds_to_timestamp(s.end)}] {s.text}" for s in segments
        )
    return captions


def row_problems(row: dict, video_root=None, captions: str | None = None, durations: dict | None = None) -> list[str]:
    """What is wrong with one project-format row (the seed's fields; an image row has `image_path` for `videos` and no
    `duration`), each as `field 'NAME': message`; empty when it is valid. `video_root` is where its media are;
    `durations` memoises the videos' durations (path → seconds or error) across the rows of a file."""
    problems = []
    image = row.get("data_type") == "image"
    fields = {name: kind for name, kind in FIELDS.items() if not image or name not in ("videos", "duration")}
    for name, kind in (fields | ({"image_path": str} if image else {})).items():
        value = row.get(name)
        if value is None:
            problems.append(f"field '{name}': missing")
        elif not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            problems.append(f"field '{name}': expected {getattr(kind, '__name__', 'a number')}, got {value!r}")
    for name, kind in OPTIONAL_FIELDS.items():
        if row.get(name) is not None and not isinstance(row[name], kind):
            problems.append(f"field '{name}': expected {kind.__name__}, got {row[name]!r}")
    if problems:
        return problems
    if row["data_type"] not in ("video", "image"):
        problems.append(f"field 'data_type': expected 'video' or 'image', got {row['data_type']!r}")
        return problems
    if row["multiple_choice"]:
        options = parse_options(row["problem"])
        if not options:
            problems.append("field 'problem': a multiple-choice problem needs options ('A: ...' lines)")
        elif row["answer"].strip() not in options:
            letters = ", ".join(options)
            problems.append(f"field 'answer': {row['answer']!r} is not one of the options {letters} of 'problem'")
    elif not row["answer"].strip():
        problems.append("field 'answer': empty")
    if image:
        if video_root is not None:
            problems += [
                f"field 'image_path': {why}" for why in [_image_problem(Path(video_root) / row["image_path"])] if why
            ]
        return problems
    duration = row["duration"]
    if duration <= 0:
        problems.append(f"field 'duration': must be positive, got {duration!r}")
        return problems
    if row.get("duration_str") is not None and row["duration_str"] != duration_string(duration):
        problems.append(
            f"field 'duration_str': {row['duration_str']!r} disagrees with duration {duration} "
            f"({duration_string(duration)!r})"
        )
    for clip in parse_clips(row["problem"]) or []:
        if clip.end > duration:
            problems.append(
                f"field 'problem': timestamp {seconds_to_timestamp(clip.end)} is past the end of the video "
                f"({seconds_to_timestamp(duration)})"
            )
            break
    for segment in parse_captions(captions):
        if segment.end > duration + DURATION_TOLERANCE:
            problems.append(
                f"field 'captions': caption [{seconds_to_timestamp(segment.start)}-{seconds_to_timestamp(segment.end)}]"
                f" is past the end of the video ({seconds_to_timestamp(duration)})"
            )
            break
    if video_root is not None:
        path = Path(video_root) / row["videos"]
        real = _file_duration(path, durations)
        if isinstance(real, Exception):
            problems.append(f"field 'videos': {real}")
        elif duration > real + DURATION_TOLERANCE:
            problems.append(f"field 'duration': {duration} s, but video {path} lasts {real:.1f} s")
    return problems


def _file_duration(path: Path, durations: dict | None):
    """The video's duration in seconds, or the `VideoError` that says why it has none; memoised in `durations`."""
    from rewatch_trl.video import VideoError, video_duration

    durations = {} if durations is None else durations
    if path not in durations:
        try:
            durations[path] = video_duration(path)
        except VideoError as error:
            durations[path] = error
    return durations[path]


def _image_problem(path: Path) -> str | None:
    """Why the image at `path` cannot be read (its header), or None."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return f"image not found: {path}"
    try:
        Image.open(path).close()  # reads the header: what a file that is no image lacks
    except (UnidentifiedImageError, OSError) as error:
        return f"cannot read image {path}: {error}"
    return None


def converted_row(row: dict, format: str, media_root=None, durations: dict | None = None) -> tuple[dict, list[str]]:
    """A row of `format` (`formats.FORMATS`) as the project's row, and what is wrong with its kind of answer; a
    video row of a format without durations gets its video's (which needs `media_root`)."""
    if format == "rewatch":
        return row, []
    row = converted(row, format)
    problems = kind_problems(row)
    if row["data_type"] == "video" and isinstance(row.get("videos"), str) and row.get("duration") is None:
        if media_root is None:
            problems.append(f"field 'duration': {format} rows give none: it is read from the video (--media-root DIR)")
        else:
            real = _file_duration(Path(media_root) / row["videos"], durations)
            if isinstance(real, Exception):
                problems.append(f"field 'videos': {real}")
            else:
                row["duration"] = round(real, 3)
    return row, problems


def load_qa(
    qa_path,
    captions_path=None,
    video_root=None,
    skip_invalid: bool = False,
    progress: bool = True,
    format: str = "rewatch",
):
    """A QA file as a validated `Dataset` of project rows (+ a `captions` column when a captions file is given).

    `format`: one of `formats.FORMATS`, or `"auto"` (told by the first row's fields). `video_root`: where the rows'
    videos (and images) are; each must exist and be readable (None skips that check; Video-R1 and LongVideo-Reason
    video rows need it, for their duration). Returns `(dataset, report)`.
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    captions = load_captions(captions_path) if captions_path else None
    lines = read_jsonl(qa_path)
    format = _format_of(qa_path, lines, format)
    report = LoadReport()
    rows, seen, durations = [], {}, {}
    for number, row in tqdm(lines, desc=f"validating {Path(qa_path).name}", unit="row", disable=not progress):
        row, problems = converted_row(row, format, video_root, durations)
        row_captions = captions.get(row.get("videos")) if captions is not None else None
        # a duration the conversion could not read is said once, by the conversion
        problems += [
            problem
            for problem in row_problems(row, video_root, row_captions, durations)
            if not (problems and problem.startswith("field 'duration'"))
        ]
        if captions is not None and row_captions is None and isinstance(row.get("videos"), str):
            problems.append(f"field 'videos': no captions for {row['videos']!r} in {captions_path}")
        problem_id = row.get("problem_id")
        if isinstance(problem_id, str) and problem_id in seen:
            problems.append(f"field 'problem_id': {problem_id!r} repeats line {seen[problem_id]}")
        if problems:
            message = f"{qa_path}:{number}: " + "; ".join(problems)
            if not skip_invalid:
                raise DataError(message)
            report.skipped.append(message)
            continue
        seen[problem_id] = number
        # The seed's fields in their order, then any others the file carries (e.g. an SFT `response`), as they are.
        row = {name: row.get(name) for name in [*FIELDS, *OPTIONAL_FIELDS]} | {
            key: value for key, value in row.items() if key not in FIELDS and key not in OPTIONAL_FIELDS
        }
        if row["duration"] is not None:
            row["duration_str"] = row["duration_str"] or duration_string(row["duration"])
        row["answer_str"] = row["answer_str"] or row["answer"]
        if captions is not None:
            row["captions"] = row_captions
        rows.append(row)
    if not rows:
        raise DataError(f"{qa_path}: no valid rows" + (f"\n{report}" if report.skipped else ""))
    report.kept = len(rows)
    if report.skipped:
        logger.warning("%s", report)
    # every column of any row (`from_list` would keep the first row's alone: a video row has no `image_path`)
    columns = list(dict.fromkeys(name for row in rows for name in row))
    return Dataset.from_list([{name: row.get(name) for name in columns} for row in rows]), report


def _format_of(path, records: list[tuple[int, dict]], format: str) -> str:
    """`format`, or with `"auto"` the one the first record's fields tell; an unknown or untellable one is an error."""
    if format != "auto":
        if format not in FORMATS:
            raise DataError(f"unknown format {format!r}; known: {', '.join(FORMATS)}, auto")
        return format
    number, first = records[0] if records else (0, {})
    found = detect_format(first)
    if found is None:
        marks = "; ".join(f"{name}: {', '.join(sorted(fields))}" for name, fields in FORMAT_FIELDS.items())
        raise DataError(
            f"{path}:{number}: cannot tell the format from the fields {', '.join(sorted(first)) or '(none)'}: "
            f"each format's rows have ({marks}); say which with --format"
        )
    return found


def load_prepared(
    name_or_path,
    split: str = "train",
    captions_path=None,
    video_root=None,
    skip_invalid: bool = False,
    format: str = "auto",
):
    """A prepared dataset: a `save_to_disk` directory, a Hub dataset id, or a QA file of `format` (validated by
    `load_qa` with `captions_path`, `video_root` and `skip_invalid`)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(name_or_path)
    if path.is_dir():
        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise DataError(f"{path}: no split {split!r}; it has {', '.join(dataset)}")
            dataset = dataset[split]
        return dataset
    if path.suffix in {".jsonl", ".json"}:
        return load_qa(path, captions_path, video_root, skip_invalid, format=format)[0]
    return load_dataset(str(name_or_path), split=split)


def prepared_record(dataset) -> dict:
    """What `save_prepared` wrote into a dataset's info: `video_root` (absolute, or relative to the saved dataset
    when its videos went along) and `videos_included`. Empty for a dataset prepared elsewhere."""
    try:
        return json.loads(dataset.info.description or "{}").get("rewatch_trl", {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def video_root_of(name_or_path, video_root=None, dataset=None):
    """Where a prepared dataset's videos are: `video_root` if given; else the `videos/` folder beside the data (in
    a saved dataset's directory, or next to a JSONL file); else the root recorded when it was prepared."""
    if video_root is not None:
        return Path(video_root)
    path = Path(name_or_path)
    folder = path if path.is_dir() else path.parent if path.suffix in {".jsonl", ".json"} else None
    if folder is not None and (folder / "videos").is_dir():
        return folder / "videos"
    recorded = prepared_record(dataset).get("video_root") if dataset is not None else None
    if recorded is not None and Path(recorded).is_absolute():  # a relative one is the `videos/` beside it
        return Path(recorded)
    return None


def refuse_images(dataset, source, why: str = "GRPO does not train them yet (SFT, infer and eval do)") -> None:
    """A `DataError` naming how many image rows `dataset` holds and `why` they cannot be taken, when it holds any."""
    if "data_type" not in dataset.column_names:
        return
    images = sum(kind == "image" for kind in dataset["data_type"])
    if images:
        raise DataError(
            f"{source}: {images} of its {len(dataset)} rows are images, and {why}: keep its video rows, e.g. "
            "`data_types: [video]` in a `dataset_mixture`, or `dataset.filter(lambda row: row['data_type'] == "
            "'video')`"
        )


def check_videos(dataset, video_root, source) -> None:
    """Every row's video (an image row's image) exists (relative names under `video_root`): else a `DataError` that
    names the dataset, the first rows whose file is missing and the flag that says where the media are."""
    videos = dataset["videos"]
    images = dataset["image_path"] if "image_path" in dataset.column_names else [None] * len(videos)
    names = [
        name[0] if isinstance(name, (list, tuple)) and len(name) == 1 else name
        for name in (video if video is not None else image for video, image in zip(videos, images, strict=True))
    ]
    paths = {
        name: Path(name) if Path(name).is_absolute() or video_root is None else Path(video_root) / name
        for name in set(names)
    }
    absent = {name for name, path in paths.items() if not path.is_file()}  # one look a video, not a row
    missing = [f"row {index}: {paths[name]}" for index, name in enumerate(names) if name in absent]
    if not missing:
        return
    record = prepared_record(dataset)
    why = ""
    if record.get("videos_included") is False:
        why = " It was prepared without its videos (`rewatch-trl data --embed-videos` takes them along)."
    shown = "; ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
    raise DataError(
        f"{source}: {len(missing)} row(s) name a video that is not there: {shown}.{why} Say where the videos are "
        "with --video-root DIR (a recipe's `video_root`)."
    )


def _decode_error(path: str, settings) -> str | None:
    from rewatch_trl.video import VideoError, decode_video

    try:
        decode_video(path, settings)
    except VideoError as error:
        return str(error)
    return None


def _per_video(func, paths: list[str], num_proc: int, desc: str, progress: bool) -> list:
    """`func(path)` of each of `paths`, in order, in `num_proc` worker processes, with a progress bar."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    bar = functools.partial(tqdm, total=len(paths), desc=desc, unit="video", disable=not progress)
    if num_proc <= 1:
        return list(bar(map(func, paths)))
    # spawned, not forked: a decoder's or torch's threads in this process would not survive a fork
    with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(bar(pool.map(func, paths)))


def check_decode(paths: list[str], settings, num_proc: int = 1, progress: bool = True) -> list[dict]:
    """Decode each video of `paths` once, as a run with `settings` samples it, in `num_proc` worker processes: the
    records (`undecodable.jsonl`'s) of those that do not decode, with their decoder's error. Row validation reads
    the headers only; a file whose header reads and whose frames do not passes it, and would cost its rows mid-run.

    Example:
    ```python
    >>> check_decode(["videos/a.mp4", "videos/b.mp4"], VideoSettings(), num_proc=2)  # doctest: +SKIP
    [{'path': 'videos/b.mp4', 'backend': 'decord', 'error': 'cannot decode video videos/b.mp4 with decord: ...', 'step': None}]
    ```
    """
    from rewatch_trl.video import undecodable_record

    decode = functools.partial(_decode_error, settings=settings)
    errors = _per_video(decode, paths, num_proc, "decoding videos", progress)
    return [
        undecodable_record(path, settings.video_backend, error)
        for path, error in zip(paths, errors, strict=True)
        if error is not None
    ]


def _drift(path: str) -> float | None:
    from rewatch_trl.video import VideoError, frame_time_drift

    try:
        return frame_time_drift(path)
    except VideoError:  # unreadable: `check_decode` says so
        return None


def variable_rate_videos(
    paths: list[str], tolerance: float = 0.5, num_proc: int = 1, progress: bool = True
) -> dict[str, float]:
    """The videos of `paths` whose frames drift more than `tolerance` seconds from where the readers place them
    (`video.frame_time_drift`, packet times only; half a second: the prompts' times are whole seconds), with their
    drift, read in `num_proc` worker processes: their clips' times are off by as much."""
    drifts = _per_video(_drift, paths, num_proc, "reading frame times", progress)
    return {path: drift for path, drift in zip(paths, drifts, strict=True) if drift is not None and drift > tolerance}


def failures_by_container(paths: list[str], failures: list[dict]) -> dict[str, tuple[int, int]]:
    """Per file extension among `paths`: (videos that do not decode, videos), for the extensions that have failures.

    Example:
    ```python
    >>> failures_by_container(["a.mp4", "b.webm", "c.webm"], [{"path": "b.webm"}])
    {'.webm': (1, 2)}
    ```
    """
    from collections import Counter

    total = Counter(Path(p).suffix.lower() for p in paths)
    failed = Counter(Path(f["path"]).suffix.lower() for f in failures)
    return {suffix: (failed[suffix], total[suffix]) for suffix in sorted(failed)}


def drop_rows_of(dataset, paths: set[str], video_root):
    """`dataset` without the rows whose video is one of `paths` (as `video_root / videos`)."""
    return dataset.filter(
        lambda row: row["videos"] is None or str(Path(video_root) / row["videos"]) not in paths, desc="dropping rows"
    )


def save_prepared(dataset, video_root=None, save_to_disk=None, push_to_hub=None, embed_videos: bool = False) -> None:
    """Write a prepared dataset to a directory and/or the Hub; with `embed_videos`, its videos (and images) go
    alongside (copied into `OUT/videos/`, or uploaded to `videos/` of the Hub dataset repo)."""
    media = [column for column in ("videos", "image_path") if column in dataset.column_names]
    names = sorted({name for column in media for name in dataset[column] if name is not None})
    if embed_videos and video_root is None:
        raise DataError("--embed-videos needs --video-root")
    # the dataset remembers where its videos are (`video_root_of`), or that they are not with it
    root = "videos" if embed_videos else (str(Path(video_root).absolute()) if video_root is not None else None)
    dataset.info.description = json.dumps({"rewatch_trl": {"video_root": root, "videos_included": embed_videos}})
    if save_to_disk:
        dataset.save_to_disk(str(save_to_disk))
        if embed_videos:
            target = Path(save_to_disk) / "videos"
            for name in names:
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(video_root) / name, target / name)
    if push_to_hub:
        with hub_failures(f"the Hub dataset {push_to_hub}", save_to_disk):
            dataset.push_to_hub(push_to_hub)
            if embed_videos:
                from huggingface_hub import HfApi

                HfApi().upload_folder(
                    repo_id=push_to_hub,
                    repo_type="dataset",
                    folder_path=str(video_root),
                    path_in_repo="videos",
                    allow_patterns=names,
                )


class HubError(DataError):
    """A push to the Hub that failed: what failed, why, and what to do, in one line."""


@contextlib.contextmanager
def hub_failures(target: str, saved=None, what: str = "the dataset"):
    """Within the block, a failed Hub call (no network, offline mode, no or a bad token, a refused repo) becomes a
    `HubError` of one line that names `target`, the reason, what to do, and where `what` was `saved` first."""
    try:
        yield
    except Exception as error:  # the Hub client raises httpx's, requests' and its own errors
        from huggingface_hub import constants

        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        name = type(error).__name__
        if constants.HF_HUB_OFFLINE:
            hint = "HF_HUB_OFFLINE=1 is set: unset it to push"
        elif "401" in reason or "403" in reason or "Token" in name:
            hint = "log in (`hf auth login`) or set HF_TOKEN to a token that may write there"
        else:
            hint = f"the Hub at {constants.ENDPOINT} did not answer: check the network (and HF_ENDPOINT)"
        kept = f"; {what} is saved in {saved}" if saved else "; nothing was saved (add --save-to-disk DIR)"
        raise HubError(f"could not push to {target}: {name}: {reason}; {hint}{kept}") from None
