"""Rollouts as a researcher reads them: what each prompt's video gave the model, what each of its G completions wrote
and re-watched, and what it was paid. `RolloutWriter` records them while training (`<output_dir>/rollouts/`: one
JSONL a logged step, a line a prompt, and small JPEG thumbnails of the frames); `read_rollouts` reads them back, or an
evaluation's predictions (`rewatch-trl eval`), for the page of `rollout_page.py`.

Example:
```python
>>> steps = read_rollouts("runs/tiny-grpo")  # doctest: +SKIP
>>> steps[0]["step"], len(steps[0]["groups"][0]["rollouts"])  # doctest: +SKIP
(1, 8)
```
"""

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path

from rewatch_trl.react import parse_react
from rewatch_trl.rewards import RIGHT


logger = logging.getLogger(__name__)
THUMBNAIL_SIDE = 96  # px, the longer side


def media_block(prompt) -> dict | None:
    """The video (or image) block of a chat prompt, or None."""
    for message in prompt if isinstance(prompt, list) else []:
        for block in message.get("content") if isinstance(message.get("content"), list) else []:
            if isinstance(block, dict) and block.get("type") in ("video", "image"):
                return block
    return None


def question_text(prompt) -> str:
    """The text of the prompt's last user turn (the question and its instruction)."""
    if isinstance(prompt, str):
        return prompt
    content = prompt[-1].get("content") if prompt else ""
    if isinstance(content, str):
        return content
    return "\n".join(
        block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
    )


def _key(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def _save_thumbnails(images, folder: Path) -> list[str]:
    """Each PIL image as a small JPEG in `folder` (written once: a folder already there is kept); their names."""
    names = [f"{i}.jpg" for i in range(len(images))]
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for image, name in zip(images, names, strict=True):
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            image.save(partial / name, quality=70)
        partial.rename(folder)
    return names


def _frames_as_images(video) -> list:
    from PIL import Image

    return [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in video.frames]


def _thumbs(folder: Path, root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))]


def media_record(block: dict, settings, root: Path, cache=None) -> dict:
    """What a prompt's video (or image) block gave the model, as the page shows it: its kind, path, duration, and
    each sampled frame's time and thumbnail (written under `root/frames/` once a video); a video that does not
    decode has no frames and its decoder's `error`."""
    from rewatch_trl.image import load_image
    from rewatch_trl.video import VideoError, sample_video

    if block["type"] == "image":
        folder = root / "frames" / _key(block["image"], settings.image_min_pixels, settings.image_max_pixels)
        if not folder.is_dir():
            _save_thumbnails([load_image(block["image"], settings).image], folder)
        return {
            "kind": "image",
            "path": block["image"],
            "duration": None,
            "frames": [{"time": None, "thumb": t} for t in _thumbs(folder, root)],
        }
    path = block["video"]
    folder = root / "frames" / _key(path, settings)
    if not folder.is_dir():
        try:
            video = sample_video(path, settings, cache)
        except VideoError as error:  # its rows were left out of the step; the page says why, the step is kept
            return {"kind": "video", "path": path, "duration": None, "frames": [], "error": str(error)}
        times = [index / video.video_fps if video.video_fps else 0.0 for index in video.frame_indices]
        _save_thumbnails(_frames_as_images(video), folder)
        (folder / "times.json").write_text(json.dumps({"duration": video.duration, "times": times}))
    meta = json.loads((folder / "times.json").read_text())
    frames = [{"time": t, "thumb": thumb} for t, thumb in zip(meta["times"], _thumbs(folder, root), strict=True)]
    return {"kind": "video", "path": path, "duration": meta["duration"], "frames": frames}


def clip_records(path: str, text: str, root: Path, clip_settings=None, cache=None) -> list[dict]:
    """The clips a completion's actions name (seconds); with agentic mode's `clip_settings`, the thumbnails of the
    frames each showed (under `root/clips/`), or the error the model was replied (a clip outside the video)."""
    from rewatch_trl.video import VideoError, sample_clip

    clips = []
    for clip in (clip for step in parse_react(text).clips for clip in step):
        entry = {"start": clip.start, "end": clip.end}
        if clip_settings is not None:
            folder = root / "clips" / _key(path, clip.start, clip.end, clip_settings)
            try:
                if not folder.is_dir():
                    _save_thumbnails(
                        _frames_as_images(sample_clip(path, clip.start, clip.end, clip_settings, cache)), folder
                    )
                entry["thumbs"] = _thumbs(folder, root)
            except VideoError as error:
                entry["error"] = str(error)
        clips.append(entry)
    return clips


def _lowest_priority() -> None:
    """The calling thread runs only where training leaves a core idle (Linux: a thread's own nice value)."""
    # not Linux, or not allowed: it runs at the process's priority
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class RolloutWriter:
    """Writes the completions TRL logs (`log_completions`) to `<output_dir>/rollouts/`, on the main process, in a
    background thread: the training step only copies the lists. Each video's sampled frames (and each re-watched
    clip's, in agentic mode) become thumbnails once; `step-NNNNNN.jsonl` holds a line a prompt group.

    Args:
        output_dir: the run's output directory.
        collator: the trainer's `VideoCollator`: its frame sampling and its cache (thread-safe).
        clip_settings: agentic mode's clip sampling, or None (clips are then only marked on the video's strip).
    """

    def __init__(self, output_dir, collator, clip_settings=None):
        self.root = Path(output_dir) / "rollouts"
        self.collator = collator
        self.clip_settings = clip_settings
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rollouts", initializer=_lowest_priority
        )
        self._pending: list[concurrent.futures.Future] = []
        self._seen: dict[str, dict] = {}  # media records by their prompt block

    def submit(self, step: int, prompts, completions, rewards: dict[str, list], advantages, **fields) -> None:
        """Record one logged step (TRL's `_logs` lists, all processes' rows in order, the G of a prompt together);
        `fields`: `num_generations`, `weights` (per reward), `accuracy` (the reward telling right answers, or None)."""
        copied = (list(prompts), list(completions), {k: list(v) for k, v in rewards.items()}, list(advantages))
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        self._report(done)
        self._pending.append(self._executor.submit(self._write, step, *copied, **fields))

    def flush(self) -> None:
        """Wait until every submitted step is written; an error of the writer is logged, not raised."""
        pending, self._pending = self._pending, []
        self._report(pending)

    @staticmethod
    def _report(futures) -> None:
        for future in futures:
            try:
                future.result()
            except Exception as error:  # a viewer's file must never stop a run
                logger.warning("rollouts: a logged step was not written: %r", error)

    def _media(self, block: dict) -> dict:
        key = json.dumps(block, sort_keys=True, default=str)
        if key not in self._seen:  # a video's frames and thumbnails, once a run
            self._seen[key] = media_record(block, self.collator.settings, self.root, self.collator.cache)
        return self._seen[key]

    def _write(self, step, prompts, completions, rewards, advantages, num_generations, weights, accuracy=None):
        from rewatch_trl.react import completion_text

        self.root.mkdir(parents=True, exist_ok=True)
        names = list(rewards)
        lines = []
        for start in range(0, len(prompts) - num_generations + 1, num_generations):
            rows = range(start, start + num_generations)
            block = media_block(prompts[start])
            cache = self.collator.cache
            media = self._media(block) if block is not None else None
            rollouts = []
            for row in rows:
                text = completion_text(completions[row])
                paid = {name: _number(rewards[name][row]) for name in names}
                scored = [(paid[name], weights.get(name, 1.0)) for name in names if paid[name] is not None]
                right = paid.get(accuracy) if accuracy else None
                rollouts.append(
                    {
                        "text": text,
                        "rewards": paid,
                        "total": sum(value * weight for value, weight in scored) if scored else None,
                        "advantage": _number(advantages[row]),
                        "right": None if right is None else right > RIGHT,
                        "clips": clip_records(media["path"], text, self.root, self.clip_settings, cache)
                        if media and media["kind"] == "video"
                        else [],
                    }
                )
            totals = [r["total"] for r in rollouts if r["total"] is not None]
            lines.append(
                {
                    "step": step,
                    "question": question_text(prompts[start]),
                    "media": media,
                    "zero_variance": len(set(totals)) <= 1,
                    "rollouts": rollouts,
                }
            )
        path = self.root / f"step-{step:06d}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def rollouts_root(source) -> Path:
    """Where the thumbnails of `source` (a run directory, or a predictions file) are."""
    source = Path(source)
    return source.with_name(source.name + ".rollouts") if source.is_file() else source / "rollouts"


def read_rollouts(source, settings=None) -> list[dict]:
    """The recorded steps of a run directory (its `rollouts/step-*.jsonl`), oldest first, each `{"step", "groups"}`;
    or an evaluation's predictions (`*.predictions.jsonl`), as one step whose groups hold one rollout each (their
    frames sampled with `settings`, the seed's by default, into `rollouts_root(source)`). A missing source, or a run
    that recorded nothing, is an error that says what to do."""
    source = Path(source)
    if source.is_file():
        from rewatch_trl.prompts import VideoSettings

        settings, root = settings or VideoSettings(), rollouts_root(source)
        groups = [_prediction_group(json.loads(line), settings, root) for line in _lines(source)]
        return [{"step": None, "groups": groups}]
    files = sorted((source / "rollouts").glob("step-*.jsonl"))
    if not files:
        raise FileNotFoundError(
            f"{source}: no rollouts/step-*.jsonl (train with `log_completions: true`, or give a predictions file)"
        )
    return [
        {"step": int(path.stem.split("-")[1]), "groups": [json.loads(line) for line in _lines(path)]} for path in files
    ]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _prediction_group(prediction: dict, settings, root: Path) -> dict:
    """An evaluation's prediction (`eval.score`) as a group of one rollout; the clips it re-watched (agentic mode), or
    those its actions name."""
    scores = {"accuracy": prediction.get("accuracy"), "format": prediction.get("format")}
    block = prediction.get("media")
    media = media_record(block, settings, root) if block else None
    clips = [{"start": c["start"], "end": c["end"]} for c in prediction.get("rewatched") or []]
    if not clips and media and media["kind"] == "video":
        clips = clip_records(media["path"], prediction["completion"], root)
    return {
        "step": None,
        "question": prediction.get("problem") or prediction.get("problem_id", ""),
        "answer": prediction.get("answer"),
        "media": media,
        "zero_variance": False,
        "rollouts": [
            {
                "text": prediction["completion"],
                "rewards": scores,
                "total": None,
                "advantage": None,
                "right": None if scores["accuracy"] is None else scores["accuracy"] > RIGHT,
                "clips": clips,
            }
        ],
    }
