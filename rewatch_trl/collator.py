"""Rows of the seed's format (+ their sampled frames, or an image row's image) → processor inputs. The one place that
calls the processor on videos and images: generation, the log-prob passes, SFT and inference all build their inputs
here.

Example:
```python
>>> collator = VideoCollator(processor, VideoSettings(), video_root="runs/tiny-world/videos")  # doctest: +SKIP
>>> batch = collator(rows)  # doctest: +SKIP
>>> sorted(batch)  # doctest: +SKIP
['attention_mask', 'input_ids', 'mm_token_type_ids', 'pixel_values_videos', 'second_per_grid_ts', 'video_grid_thw']
```
"""

import dataclasses
import json
import logging
from pathlib import Path

import torch

from rewatch_trl.image import LoadedImage, load_image
from rewatch_trl.prompts import VideoSettings, build_messages
from rewatch_trl.sharing import MODALITIES, SharedRows, concat_rows, first_rows
from rewatch_trl.video import (
    SampledVideo,
    UndecodableVideo,
    VideoCache,
    VideoError,
    default_video_cache,
    sample_video,
)


logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
# How the processor (and vLLM's copy of it) must treat frames that qwen-vl-utils already sampled and resized.
PROCESSOR_VIDEO_KWARGS = {
    "do_sample_frames": False,
    "do_resize": False,
    "cap_pixels_per_frame": True,  # qwen-vl-utils' (the reference) behaviour; frames are already within it
}


def video_block(messages: list[dict]) -> dict:
    """The one `{"type": "video", ...}` (or `{"type": "image", ...}`) block of a chat prompt; an error if there is
    none or more than one."""
    blocks = [
        block
        for message in messages
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") in ("video", "image")
    ]
    if len(blocks) != 1:
        raise ValueError(f"a prompt must hold exactly one video (or image) block, found {len(blocks)}")
    return blocks[0]


class VideoCollator:
    """Builds prompts (for generation) or prompt + answer with a label mask (for SFT) from seed-format rows.

    With `tolerate_undecodable` (the trainers' setting), a video that fails to decode raises nothing: it is kept in
    `undecodable` (with the decoder's error, said once in a warning) and a blank `UndecodableVideo` stands in for it
    from then on; the trainers leave its rows out of the loss. Without it (inference, evaluation), it raises.
    """

    def __init__(
        self,
        processor,
        settings: VideoSettings | None = None,
        video_root=None,
        cache: VideoCache | None = None,
        chat_template_kwargs: dict | None = None,
        tolerate_undecodable: bool = False,
    ):
        self.processor = processor
        self.tolerate_undecodable = tolerate_undecodable
        self.undecodable: dict[str, UndecodableVideo] = {}  # by path: the videos that failed to decode
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.settings = settings or VideoSettings()
        if self.settings.video_patch_size is None:  # frames resized in the model's pixel unit
            self.settings = dataclasses.replace(self.settings, video_patch_size=processor.video_processor.patch_size)
        self.video_root = Path(video_root) if video_root else None
        self.cache = cache if cache is not None else default_video_cache()
        self._sent: set[str] = set()  # videos this process's `decode_ahead` has handed out
        self.received = 0  # videos `keep` took from DataLoader workers

    def _resolve(self, video: str) -> str:
        # Absolute, so that resolving a prompt's (already resolved) path again changes nothing.
        path = Path(video)
        return str((path if path.is_absolute() or self.video_root is None else self.video_root / path).absolute())

    @staticmethod
    def is_image(row: dict) -> bool:
        """An image row (Video-R1's `data_type: "image"`): its `image_path` is the file."""
        return row.get("data_type") == "image"

    def video_path(self, row: dict) -> str:
        video = row["videos"]
        if isinstance(video, (list, tuple)):
            if len(video) != 1:
                raise ValueError(f"row {row.get('problem_id')!r}: expected one video, got {len(video)}")
            video = video[0]
        return self._resolve(video)

    def messages(self, row: dict) -> list[dict]:
        """The seed's chat messages of a row: system, then the video (or image) and the ReAct instruction."""
        if self.is_image(row):
            return build_messages(row["problem"], settings=self.settings, image=self._resolve(row["image_path"]))
        return build_messages(row["problem"], self.video_path(row), row["duration"], self.settings)

    def videos(self, rows: list[dict]) -> list[SampledVideo]:
        """The sampled frames of each row's video (each distinct video decoded once, through the cache); an image
        row is an error naming it (`visuals` takes both)."""
        images = [row.get("problem_id") for row in rows if self.is_image(row)]
        if images:
            raise ValueError(f"rows {images} are image rows: this path takes video rows only")
        return [self.sample(self.video_path(row)) for row in rows]

    def visuals(self, rows: list[dict]) -> list[SampledVideo | LoadedImage]:
        """Each row's video frames (`videos`) or resized image (`image.load_image`), in order."""
        return [
            load_image(self._resolve(row["image_path"]), self.settings)
            if self.is_image(row)
            else self.sample(self.video_path(row))
            for row in rows
        ]

    def sample(self, path: str) -> SampledVideo:
        """The sampled frames of the video at `path` (resolved); with `tolerate_undecodable`, its blank stand-in if it
        does not decode."""
        if path in self.undecodable:
            return self.undecodable[path]
        try:
            return sample_video(path, self.settings, self.cache)
        except VideoError as error:
            if not self.tolerate_undecodable:
                raise
            return self.failed(path, error)

    def failed(self, path: str, error: BaseException | str) -> UndecodableVideo:
        """Record that the video at `path` failed to decode (whole, or a clip of it): it is left out from now on."""
        if path not in self.undecodable:
            processor = self.processor.video_processor
            self.undecodable[path] = UndecodableVideo.blank(
                path,
                self.settings.video_backend,
                str(error),
                frames=getattr(processor, "temporal_patch_size", 2),
                side=processor.patch_size * processor.merge_size,
            )
            logger.warning("leaving out the rows of %s: %s", path, error)
        return self.undecodable[path]

    def decode_ahead(self, batch: dict[str, list]) -> dict[str, list]:
        """A `datasets` transform that adds each row's sampled video (column `sampled_video`). Set on the training
        set when DataLoader workers run (`dataloader_num_workers > 0`), it decodes in them, ahead of the step that
        needs the frames; `keep` then hands those frames to this process's cache. A worker sends each video once
        (later rows of it get `None`): the training process keeps it, and a repeat of the batch (GRPO's
        `num_iterations`) or another question on the same video costs no second transfer. Should the training
        process's cache have let it go by then, it decodes the video itself.

        Example:
        ```python
        >>> loader = DataLoader(dataset.with_transform(collator.decode_ahead), num_workers=2)  # doctest: +SKIP
        ```
        """
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        # an image row's image is read where it is needed (a small file, no decoding ahead)
        videos = [None if self.is_image(row) else self.sample(self.video_path(row)) for row in rows]
        new = {video.path for video in videos if video is not None} - self._sent
        self._sent |= new
        return batch | {
            "sampled_video": [video if video is not None and video.path in new else None for video in videos]
        }

    def keep(self, videos: list[SampledVideo | None]) -> None:
        """Put videos sampled with these settings elsewhere (by `decode_ahead`) in this process's cache."""
        # the G rows of a prompt arrive holding one object: each is put (its file looked up) once
        for video in {id(video): video for video in videos if video is not None}.values():
            if isinstance(video, UndecodableVideo):
                self.undecodable.setdefault(video.path, video)
            else:
                self.cache.put(video, self.settings)
            self.received += 1

    def prompt_text(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def encode(self, texts: list[str], visuals: list[SampledVideo | LoadedImage], **kwargs):
        """Tokenize texts with their videos' frames and images (`visuals`, in the order of their placeholders
        through the texts): the processor call."""
        videos = [visual for visual in visuals if not isinstance(visual, LoadedImage)]
        images = [visual.image for visual in visuals if isinstance(visual, LoadedImage)]
        media = {"images": images} if images else {}
        if videos or not images:
            media |= {"videos": [video.frames for video in videos]}
            media |= {"video_metadata": [video.metadata() for video in videos]}
        return self.processor(
            text=texts, **media, padding=True, return_tensors="pt", **PROCESSOR_VIDEO_KWARGS, **kwargs
        )

    def encode_messages(self, conversations: list[list[dict]], **kwargs):
        """Chat prompts that each hold one video block → (processor inputs, the sampled videos in order); `kwargs`
        go to the processor (`device=` normalises and patchifies the frames there)."""
        blocks = [video_block(messages) for messages in conversations]
        videos = [
            load_image(self._resolve(block["image"]), self.settings)
            if block["type"] == "image"
            else self.sample(self._resolve(block["video"]))
            for block in blocks
        ]
        return self.encode([self.prompt_text(messages) for messages in conversations], videos, **kwargs), videos

    def __call__(
        self, rows: list[dict], answers: list[str] | None = None, clips: list[list[SampledVideo]] | None = None
    ):
        """Prompts only, or with `answers` (assistant turns) and `labels` that cover the answer tokens alone; an
        answer may show `clips` (agentic SFT: `clips[i]` fill, in order, the video blocks of answer i), whose
        tokens are not labels."""
        prompts = [self.prompt_text(self.messages(row)) for row in rows]
        videos = self.visuals(rows)
        if answers is None:
            return self.encode(prompts, videos)
        end = "<|im_end|>\n"
        shown = videos
        if clips is not None:
            shown = [
                video for row_video, row_clips in zip(videos, clips, strict=True) for video in (row_video, *row_clips)
            ]
        batch = self.encode([p + a + end for p, a in zip(prompts, answers, strict=True)], shown)
        # The answer is what follows the last `<|im_start|>assistant\n`: its tokens, and the closing <|im_end|>.
        tokenizer = self.processor.tokenizer
        header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        tail = tokenizer("\n", add_special_tokens=False)["input_ids"]
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        start, end = (tokenizer.convert_tokens_to_ids(token) for token in ("<|vision_start|>", "<|vision_end|>"))
        labels[within_vision_blocks(batch["input_ids"], start, end)] = (
            IGNORE_INDEX  # a clip shown is read, not written
        )
        for i, video in enumerate(videos):
            if isinstance(video, UndecodableVideo):  # the answer is about frames no one could see
                labels[i] = IGNORE_INDEX
        for i, ids in enumerate(batch["input_ids"].tolist()):
            start = _last_index(ids, header)
            if start < 0:
                raise ValueError(f"row {i}: no assistant turn found in the collated text")
            labels[i, : start + len(header)] = IGNORE_INDEX
            last = max(j for j, m in enumerate(batch["attention_mask"][i].tolist()) if m)
            if ids[last - len(tail) + 1 : last + 1] == tail:
                labels[i, last - len(tail) + 1 : last + 1] = IGNORE_INDEX
        batch["labels"] = labels
        return batch


def within_vision_blocks(input_ids: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Where the tokens of `input_ids` lie within a vision block, its markers included: Qwen2.5-VL's
    `<|vision_start|>` pads `<|vision_end|>`, or Qwen3's, which nests a marked block per frame pair inside the
    outer pair, each after its time written as text (`<2.1 seconds>`).

    Example:
    ```python
    >>> within_vision_blocks(torch.tensor([7, 1, 8, 1, 5, 2, 8, 1, 5, 2, 2, 7]), start=1, end=2).int().tolist()
    [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    ```
    """
    depth = ((input_ids == start).long() - (input_ids == end).long()).cumsum(-1)
    return (depth > 0) | (input_ids == end)


def prompt_key(prompt) -> str:
    """A chat prompt as a string, the same for the G copies of a prompt on every process: rows with the same key hold
    the same prompt and video."""
    return json.dumps(prompt, sort_keys=True, default=str)


def split_video_inputs(batch) -> list[dict[str, torch.Tensor]]:
    """Processor visual inputs of a batch (one video or one image a sample) → one dict per sample, so that TRL's
    shuffle and split of a generation batch (which index lists and tensors by sample) keep each video (image) with
    its sample. A video's dict holds `pixel_values_videos` and `video_grid_thw` (and `second_per_grid_ts`), an
    image's `pixel_values` and `image_grid_thw` (`sharing.MODALITIES`)."""
    kinds = ["image" if (types == 1).any() else "video" for types in batch["mm_token_type_ids"]]
    per_kind = {}
    for kind, (pixels_key, grid_key) in MODALITIES.items():
        if grid_key not in batch:
            continue
        grids = batch[grid_key]
        pixels = torch.split(batch[pixels_key], grids.prod(-1).tolist())
        items = [{pixels_key: pixel, grid_key: grid[None]} for pixel, grid in zip(pixels, grids, strict=True)]
        if kind == "video" and "second_per_grid_ts" in batch:  # a family that times its grids so
            seconds = torch.as_tensor(batch["second_per_grid_ts"]).reshape(-1)
            for item, second in zip(items, seconds, strict=True):
                item["second_per_grid_ts"] = second[None]
        per_kind[kind] = iter(items)
    return [next(per_kind[kind]) for kind in kinds]


def video_fields(
    samples: list[dict[str, torch.Tensor]], distinct_pixels: bool = False, clips: list[list[dict]] | None = None
) -> dict[str, torch.Tensor]:
    """The processor's video and image tensors for rows whose samples are `samples` (and, in agentic mode, whose
    completions show `clips`), in the model's order: each row's prompt video (or image), then its clips; each
    modality's tensors in its own keys (`sharing.MODALITIES`). With `distinct_pixels`, the pixels hold each distinct
    item (rows that share a sample dict) once, in order of first appearance: the layout `SharedVideoFeatures`
    reads, G times fewer bytes copied for G rows a prompt."""
    rows = SharedRows(samples, clips=clips)
    fields = {}
    for kind, (pixels_key, grid_key) in MODALITIES.items():
        items = rows.of(kind)
        if not items:
            continue
        keys = [key for key in (grid_key, "second_per_grid_ts") if key in items[0]]
        fields |= {key: torch.cat([item[key] for item in items]) for key in keys}
        pixel_items = [items[i] for i in first_rows(items).values()] if distinct_pixels else items
        fields[pixels_key] = concat_rows([item[pixels_key] for item in pixel_items])
    return fields


def video_forward_kwargs(
    samples: list[dict[str, torch.Tensor]],
    input_ids: torch.Tensor,
    config,
    distinct_pixels: bool = False,
    clips: list[list[dict]] | None = None,
) -> dict:
    """The model's video keyword arguments for rows `input_ids` whose samples are `samples` (in order)."""
    return video_fields(samples, distinct_pixels, clips) | {"mm_token_type_ids": token_types(input_ids, config)}


def token_types(input_ids: torch.Tensor, config) -> torch.Tensor:
    """`mm_token_type_ids` of token ids: 1 for an image's placeholder tokens, 2 for a video's, 0 for text."""
    types = torch.zeros_like(input_ids)
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    return types


def _last_index(sequence: list[int], pattern: list[int]) -> int:
    for start in range(len(sequence) - len(pattern), -1, -1):
        if sequence[start : start + len(pattern)] == pattern:
            return start
    return -1
