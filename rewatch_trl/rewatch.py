"""Real re-watching (`rewatch_mode: agentic`): when the model closes an `<action>`, the clip it names is sampled from
the video, shown to it as a video in the sequence, and it goes on with its `<observation>` of what it now sees.

In the paper's mode (`imagined`) the model writes the action and imagines the observation. Here a rollout stops at
each `</action>`, `sample_clip` samples the clip (denser than the whole-video sampling: `RewatchSettings`), its video
tokens are appended to the completion, and generation continues, until the completion ends (EOS or its length) or
`max_rewatches` actions were served. An action that names no clip, or one outside the video, gets a short text
reply instead. What the environment inserts is marked 0 in `Completion.model_mask` (the trainer's loss, KL and
entropy skip it); the rewards read `Completion.model_ids()`, the model's own tokens, decoded.

The loop (`Rewatcher.rollout`) is the same for every engine: it is handed a `generate` function (transformers'
`generate` or vLLM, in the trainer and in `infer --rewatch`).

Example:
```python
>>> requested_clip("<action>Re-watch [00:02-00:04]</action>", duration=8.0)
(2.0, 4.0)
>>> requested_clip("<action>Re-watch [00:12-00:14]</action>", duration=8.0)
'(no re-watch: 00:12 is past the end of the video, 00:08)'
```
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from rewatch_trl.collator import split_video_inputs
from rewatch_trl.prompts import VideoSettings, seconds_to_timestamp
from rewatch_trl.react import parse_clips
from rewatch_trl.video import DecodeError, SampledVideo, UndecodableVideo, VideoError, sample_clip


ACTION_END = "</action>"
# How a clip enters the sequence: the chat template's video block, which the processor expands to the clip's tokens.
CLIP_TEXT = "<|vision_start|><|video_pad|><|vision_end|>"
REWATCH_MODES = ("imagined", "agentic")


def check_clip_layout(processor) -> None:
    """Refuse a processor that writes a video's expansion outside `CLIP_TEXT`'s vision pair: a shown clip is masked
    out of the loss (and sent to vLLM) as the tokens inside that pair. From transformers 5.23 the Qwen3 families'
    processor drops the pair and writes each frame pair's time (`<2.1 seconds>`) before a pair of its own, so a
    clip's times would be trained on as if the model wrote them. Read off what the processor writes for a clip."""
    replace = getattr(processor, "get_text_with_replacements", None)
    if replace is None:
        return
    (text,), _ = replace([CLIP_TEXT], videos_replacements=["{clip}"])
    if text != CLIP_TEXT.replace("<|video_pad|>", "{clip}"):
        raise NotImplementedError(
            f"rewatch_mode='agentic' with {type(processor).__name__}: this transformers writes a clip as {text!r}, "
            f"outside the template's {CLIP_TEXT!r}, so its times would not be masked as shown; use transformers<5.23 "
            "for agentic Qwen3-VL (the paper's mode, rewatch_mode='imagined', is unaffected)"
        )


# An instant (`at 00:05`) is shown as this many seconds either side of it.
INSTANT_HALF_WIDTH = 1.0


@dataclass
class RewatchSettings:
    """How re-watching works in a rollout. Parsed from recipes by `TrlParser` (part of the GRPO config).

    Example:
    ```python
    >>> RewatchSettings(rewatch_mode="agentic", rewatch_fps=4.0).clip_settings(VideoSettings()).video_fps
    4.0
    ```
    """

    rewatch_mode: str = field(
        default="imagined",
        metadata={
            "help": "`imagined` (the paper's: the model writes its observations) or `agentic` (the clip an action "
            "names is decoded and shown to the model before it goes on).",
            "choices": list(REWATCH_MODES),
        },
    )
    rewatch_fps: float = field(default=2.0, metadata={"help": "Agentic mode: frames sampled per second of a clip."})
    rewatch_max_frames: int = field(default=16, metadata={"help": "Agentic mode: at most this many frames a clip."})
    rewatch_max_pixels: int = field(
        default=128 * 28 * 28, metadata={"help": "Agentic mode: most pixels per frame of a clip."}
    )
    max_rewatches: int = field(
        default=3, metadata={"help": "Agentic mode: at most this many actions served (clips or replies) a completion."}
    )

    def __post_init__(self):
        if self.rewatch_mode not in REWATCH_MODES:
            raise ValueError(f"rewatch_mode must be one of {REWATCH_MODES}, got {self.rewatch_mode!r}")
        for name in ("rewatch_fps", "rewatch_max_frames", "rewatch_max_pixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_rewatches < 0:
            raise ValueError(f"max_rewatches must be >= 0, got {self.max_rewatches!r}")
        # a config that adds these fields to another dataclass (the GRPO config) runs that one's checks next
        if hasattr(super(), "__post_init__"):
            super().__post_init__()

    @property
    def agentic(self) -> bool:
        return self.rewatch_mode == "agentic"

    def clip_settings(self, video: VideoSettings) -> VideoSettings:
        """The frame sampling of a clip: the video's settings at the clip's fps, frame count and pixels."""
        return dataclasses.replace(
            video,
            video_fps=self.rewatch_fps,
            video_max_frames=self.rewatch_max_frames,
            video_min_frames=min(video.video_min_frames, self.rewatch_max_frames),
            video_min_pixels=min(video.video_min_pixels, self.rewatch_max_pixels),
            video_max_pixels=self.rewatch_max_pixels,
            video_total_pixels=self.rewatch_max_frames * self.rewatch_max_pixels,
        )


def requested_clip(text: str, duration: float) -> tuple[float, float] | str:
    """The clip `[start, end]` (seconds, within the video) that the last `<action>` of `text` names (its first
    clip), or the reply the model reads when there is none: no or malformed timestamps, a start past the end. An end
    past the video's end is cut to it; an instant becomes the seconds around it."""
    start_tag = text.rfind("<action>")
    action = text[start_tag + len("<action>") : text.rfind(ACTION_END)] if start_tag >= 0 else ""
    clips = parse_clips(action)
    if not clips:
        return "(no re-watch: the action names no clip [MM:SS-MM:SS])"
    start, end = clips[0]
    if start >= duration:
        return f"(no re-watch: {seconds_to_timestamp(start)} is past the end of the video, {_stamp(duration)})"
    if end < start:
        return f"(no re-watch: the clip ends at {seconds_to_timestamp(end)}, before it starts)"
    if start == end:
        start, end = start - INSTANT_HALF_WIDTH, end + INSTANT_HALF_WIDTH
    return float(max(start, 0)), float(min(end, duration))


def shown_clips(trace: str, duration: float, max_rewatches: int) -> tuple[str, list[tuple[float, float]]]:
    """A written trace (an SFT target) as the model meets it in agentic mode: the clip of each of its first
    `max_rewatches` actions shown after it (`CLIP_TEXT`, where the processor puts the clip's tokens), and those
    clips in order. An action that names no clip in the video gets nothing inserted.

    Example:
    ```python
    >>> shown_clips("<action>Re-watch [00:02-00:04]</action><observation>red</observation>", 8.0, 3)
    ('<action>Re-watch [00:02-00:04]</action><|vision_start|><|video_pad|><|vision_end|><observation>red</observation>', [(2.0, 4.0)])
    ```
    """
    parts, clips, start = [], [], 0
    end = trace.find(ACTION_END)
    for _ in range(max_rewatches):
        if end < 0:
            break
        end += len(ACTION_END)
        clip = requested_clip(trace[:end], duration)
        if isinstance(clip, tuple):
            parts.append(trace[start:end] + CLIP_TEXT)
            clips.append(clip)
            start = end
        end = trace.find(ACTION_END, end)
    return "".join(parts) + trace[start:], clips


def _stamp(seconds: float) -> str:
    return seconds_to_timestamp(int(seconds + 0.5))


@dataclass
class Completion:
    """One completion of an agentic rollout: its tokens, which of them the model wrote, and the clips it was shown.

    `clips[k]` holds the processor's video inputs of the k-th clip in the sequence (the trainer's loss passes feed
    them to the model), `clip_videos[k]` its frames, `rewatched[k]` where it is in the video.
    """

    ids: list[int] = field(default_factory=list)
    model_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)
    clip_videos: list[SampledVideo] = field(default_factory=list)
    rewatched: list[dict] = field(default_factory=list)
    actions_served: int = 0
    done: bool = False

    def add(self, ids: list[int], by_model: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.model_mask += [int(by_model)] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)

    def model_ids(self) -> list[int]:
        """The tokens the model wrote, in order (what the rewards read, decoded)."""
        return [t for t, m in zip(self.ids, self.model_mask, strict=True) if m]


# generate(sequences, videos, samples, stop, max_tokens) → per sequence (new token ids, their log-probs or None):
# `videos[i]` / `samples[i]` are sequence i's videos (the prompt's, then its clips) as frames / processor inputs.
Generate = Callable[
    [list[list[int]], list[list[SampledVideo]], list[list[dict]], list[str] | None, int],
    list[tuple[list[int], list[float] | None]],
]


class Rewatcher:
    """Runs agentic rollouts: generation to each `</action>`, the clip it names (or a reply), and on.

    Args:
        collator: the `VideoCollator` (its processor encodes the clips, its cache keeps their frames).
        settings: the re-watch settings.
        eos_token_ids: the tokens that end a completion.
    """

    def __init__(self, collator, settings: RewatchSettings, eos_token_ids: list[int]):
        check_clip_layout(collator.processor)
        self.collator = collator
        self.settings = settings
        self.clip_video_settings = settings.clip_settings(collator.settings)
        self.tokenizer = collator.processor.tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self._clips: dict[tuple, tuple[list[int], dict, SampledVideo]] = {}  # this rollout's clips

    def clip(self, video: SampledVideo, start: float, end: float, device=None) -> tuple[list[int], dict, SampledVideo]:
        """A clip of `video` as it enters the sequence: its tokens, its processor inputs, its frames. Within a
        rollout, completions that ask for the same clip get the same processor inputs (one dict: the trainer's
        passes then encode the clip once, `sharing.SharedRows`)."""
        key = (video.path, start, end)
        if key not in self._clips:
            self._clips[key] = self._encode_clip(video, start, end, device)
        return self._clips[key]

    def _encode_clip(self, video: SampledVideo, start: float, end: float, device=None):
        frames = sample_clip(video.path, start, end, self.clip_video_settings, self.collator.cache)
        batch = self.collator.encode([CLIP_TEXT], [frames], device=device)
        (sample,) = split_video_inputs(batch)
        sample = {key: value.to(device) for key, value in sample.items()} if device is not None else sample
        return batch["input_ids"][0].tolist(), sample, frames

    def model_turn(self, new_ids: list[int], budget: int, stops: bool = True) -> tuple[list[int], bool]:
        """The tokens of one generation round that belong to the completion (to its EOS, to `budget` and, with
        `stops`, to the first `</action>`), and whether it stopped at an `</action>`."""
        ids = new_ids[:budget]
        end = next((i + 1 for i, token in enumerate(ids) if token in self.eos_token_ids), len(ids))
        ids = ids[:end]
        # one decode a round; token by token only to place the cut of a round that holds an action
        if not stops or ACTION_END not in self.tokenizer.decode(ids):
            return ids, False
        text = ""
        for i, token in enumerate(ids):
            text += self.tokenizer.decode([token])
            if ACTION_END in text:
                return ids[: i + 1], True
        return ids, False

    def serve(self, completion: Completion, video: SampledVideo, budget: int, device=None) -> None:
        """After an `</action>`: append the clip it names (or a reply) if it fits in `budget` tokens, else end."""
        completion.actions_served += 1
        text = self.tokenizer.decode(completion.model_ids())
        clip = requested_clip(text, video.duration)
        if isinstance(video, UndecodableVideo):
            clip = "(no re-watch: the video does not decode)"
        if isinstance(clip, tuple):
            try:
                ids, sample, frames = self.clip(video, *clip, device=device)
            except VideoError as error:  # a clip the decoder cannot cut (too short for one frame, say)
                if isinstance(error, DecodeError) and self.collator.tolerate_undecodable:
                    self.collator.failed(video.path, error)  # the file is broken: its rows are left out
                clip = f"(no re-watch: {error})"
            else:
                if len(ids) > budget:
                    clip = "(no re-watch: the clip does not fit in the rest of the completion)"
                else:
                    completion.add(ids, by_model=False)
                    completion.clips.append(sample)
                    completion.clip_videos.append(frames)
                    completion.rewatched.append(
                        {"start": clip[0], "end": clip[1], "frames": len(frames.frame_indices)}
                    )
                    return
        completion.add(self.tokenizer(clip, add_special_tokens=False)["input_ids"][:budget], by_model=False)

    def rollout(
        self,
        prompt_ids: list[list[int]],
        videos: list[SampledVideo],
        samples: list[dict],
        generate: Generate,
        max_tokens: int,
        device=None,
        anywhere: Callable[[bool], bool] = bool,
    ) -> list[Completion]:
        """One completion per prompt (`prompt_ids[i]` holds `videos[i]`, processor inputs `samples[i]`), at most
        `max_tokens` tokens each, inserted ones included. `anywhere(has)`: whether any of the processes whose rounds
        run together has rows (`has`): a process whose completions are done goes on calling `generate` with none
        while another's are not (one engine serves them all: a vLLM server, a tensor parallel group)."""
        completions = [Completion() for _ in prompt_ids]
        self._clips = {}
        while anywhere(bool(active := [i for i, c in enumerate(completions) if not c.done])):
            # a completion with actions left stops at `</action>`; one without goes on to its end
            left = [completions[i].actions_served < self.settings.max_rewatches for i in active]
            for stops in (True, False):
                rows = [i for i, has_left in zip(active, left, strict=True) if has_left == stops]
                if not anywhere(bool(rows)):
                    continue
                budgets = {i: max_tokens - len(completions[i].ids) for i in rows}
                outputs = generate(
                    [prompt_ids[i] + completions[i].ids for i in rows],
                    [[videos[i], *completions[i].clip_videos] for i in rows],
                    [[samples[i], *completions[i].clips] for i in rows],
                    [ACTION_END] if stops else None,
                    max(budgets.values(), default=0),
                )
                for i, (new_ids, logprobs) in zip(rows, outputs, strict=True):
                    completion = completions[i]
                    ids, at_action = self.model_turn(list(new_ids), budgets[i], stops)
                    completion.add(ids, by_model=True, logprobs=None if logprobs is None else logprobs[: len(ids)])
                    budget = budgets[i] - len(ids)
                    if at_action and budget > 0:
                        self.serve(completion, videos[i], budget, device)
                    completion.done = not at_action or len(completion.ids) >= max_tokens
        return completions
