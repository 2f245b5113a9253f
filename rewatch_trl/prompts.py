"""The ReWatch-R1 prompt, timestamps in both directions, and the chat messages of one row.

Pure Python: imported by the rewards, so it loads no torch and no transformers.
"""

import re
from dataclasses import dataclass, field


REACT_PROMPT = """You are a video understanding expert. You are given a video and a question. You need to answer the question based on the video content. Please answer the question step by step. When you need more video details, you will re-watch the relevant clips and use <action> and </action> to mark the actions, and use <observation> and </observation> to mark the visual details you observe. When you have enough information to determine the final answer, you will wrap the final answer in <answer> and </answer>.

**Video Information and Question:**
- **Video Duration**: {video_duration}
- **Question**: {question}"""

# An image row's prompt: the seed's, said of an image (no duration). Its re-watch steps are optional: an image has no
# clip to re-watch, and `react_format_reward` does not demand one there.
IMAGE_REACT_PROMPT = """You are an image understanding expert. You are given an image and a question. You need to answer the question based on the image content. Please answer the question step by step. When you need more image details, you may look again at the relevant regions and use <action> and </action> to mark the actions, and use <observation> and </observation> to mark the visual details you observe. When you have enough information to determine the final answer, you will wrap the final answer in <answer> and </answer>.

**Image Question:**
- **Question**: {question}"""

SYSTEM_PROMPT = "You are a helpful assistant."

_TIMESTAMP = re.compile(r"^\s*(\d{1,3}):(\d{2})(?::(\d{2}))?(?:\.\d+)?\s*$")


@dataclass(frozen=True)
class VideoSettings:
    """How frames are sampled from a video: the seed's (the paper's) settings by default. Parsed from recipes by
    `TrlParser`, so each field carries its help.

    Example:
    ```python
    >>> VideoSettings().video_block("clip.mp4")["max_frames"]
    192
    ```
    """

    video_fps: float = field(default=2.0, metadata={"help": "Frames sampled per second of video."})
    video_max_frames: int = field(default=192, metadata={"help": "At most this many frames per video."})
    video_min_frames: int = field(default=4, metadata={"help": "At least this many frames per video."})
    video_min_pixels: int = field(default=128 * 28 * 28, metadata={"help": "Fewest pixels per frame."})
    video_max_pixels: int = field(default=128 * 28 * 28, metadata={"help": "Most pixels per frame."})
    video_total_pixels: int = field(default=12288 * 28 * 28, metadata={"help": "Most pixels over all frames."})
    video_backend: str = field(
        default="decord",
        metadata={"help": "Video reader: decord, pyav, torchcodec or torchvision (qwen-vl-utils' readers + PyAV)."},
    )
    video_patch_size: int | None = field(
        default=None,
        metadata={
            "help": "The vision patch in px, to which frames are resized (twice it a side: 28 px for Qwen2.5-VL, 32 "
            "for Qwen3-VL); default: the model's processor's (14 where there is none)."
        },
    )

    image_min_pixels: int = field(
        default=4 * 28 * 28, metadata={"help": "Fewest pixels of an image (Video-R1's bound: 3136)."}
    )
    image_max_pixels: int = field(
        default=512 * 28 * 28, metadata={"help": "Most pixels of an image (Video-R1's run scripts' bound: 401408)."}
    )

    def image_block(self, image: str) -> dict:
        """The `{"type": "image", ...}` content block of an image row, which qwen-vl-utils reads."""
        return {
            "type": "image",
            "image": image,
            "min_pixels": self.image_min_pixels,
            "max_pixels": self.image_max_pixels,
        }

    def video_block(self, video: str) -> dict:
        """The `{"type": "video", ...}` content block of the seed, which qwen-vl-utils reads."""
        return {
            "type": "video",
            "video": video,
            "total_pixels": self.video_total_pixels,
            "min_pixels": self.video_min_pixels,
            "max_pixels": self.video_max_pixels,
            "fps": self.video_fps,
            "max_frames": self.video_max_frames,
            "min_frames": self.video_min_frames,
        }


def _check_seconds(seconds, what: str = "duration") -> int:
    if isinstance(seconds, bool):
        raise ValueError(f"{what} must be a number of seconds, got {seconds!r}")
    if not isinstance(seconds, (int, float)):
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"{what} must be a finite, non-negative number of seconds, got {seconds!r}")
    return int(seconds)


def seconds_to_timestamp(seconds: float) -> str:
    """Seconds → `MM:SS` (the seed's format), or `HH:MM:SS` for an hour and more. Fractions are dropped.

    Example:
    ```python
    >>> seconds_to_timestamp(972)
    '16:12'
    >>> seconds_to_timestamp(3725)
    '01:02:05'
    ```
    """
    total = _check_seconds(seconds, "timestamp")
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def timestamp_to_seconds(timestamp: str) -> int:
    """`MM:SS` or `HH:MM:SS` → seconds. A malformed timestamp raises a `ValueError` naming it.

    Example:
    ```python
    >>> timestamp_to_seconds("16:12")
    972
    >>> timestamp_to_seconds("01:02:05")
    3725
    ```
    """
    match = _TIMESTAMP.match(timestamp) if isinstance(timestamp, str) else None
    if match is None:
        raise ValueError(f"malformed timestamp {timestamp!r}: expected MM:SS or HH:MM:SS")
    first, second, third = match.groups()
    if third is None:
        minutes, seconds = int(first), int(second)
        hours = 0
    else:
        hours, minutes, seconds = int(first), int(second), int(third)
        if minutes >= 60:
            raise ValueError(f"malformed timestamp {timestamp!r}: minutes must be below 60")
    if seconds >= 60:
        raise ValueError(f"malformed timestamp {timestamp!r}: seconds must be below 60")
    return hours * 3600 + minutes * 60 + seconds


def duration_string(duration: float) -> str:
    """The prompt's `00:00-MM:SS` duration string of a video of `duration` seconds.

    Example:
    ```python
    >>> duration_string(972)
    '00:00-16:12'
    ```
    """
    return f"00:00-{seconds_to_timestamp(_check_seconds(duration))}"


def react_instruction(question: str, duration: float) -> str:
    """The seed's ReAct instruction for one question about a video of `duration` seconds."""
    return REACT_PROMPT.format(video_duration=duration_string(duration), question=question)


def build_messages(
    question: str,
    video: str | None = None,
    duration: float | None = None,
    settings: VideoSettings | None = None,
    system: str = SYSTEM_PROMPT,
    image: str | None = None,
) -> list[dict]:
    """The chat messages of one row: a system turn, then the video block and the ReAct instruction; for an image row
    (`image` instead of `video` and `duration`), the image block and the instruction said of an image.

    Example:
    ```python
    >>> messages = build_messages("What happened?", "clip.mp4", 600)
    >>> [block["type"] for block in messages[1]["content"]]
    ['video', 'text']
    >>> build_messages("What is written?", image="sign.png")[1]["content"][0]["type"]
    'image'
    ```
    """
    settings = settings or VideoSettings()
    if (image is None) == (video is None):
        raise ValueError("a row's messages hold one video or one image")
    if image is not None:
        visual, instruction = settings.image_block(image), IMAGE_REACT_PROMPT.format(question=question)
    else:
        visual, instruction = settings.video_block(video), react_instruction(question, duration)
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [visual, {"type": "text", "text": instruction}]},
    ]
