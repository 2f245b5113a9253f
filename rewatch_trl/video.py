"""Sample a video's frames once, the seed's way (qwen-vl-utils), and keep them for every later use.

Generation, the log-prob passes, vLLM, SFT and inference all take their frames from `sample_video`, so the
model sees the same pixels and the same fps everywhere.

Example:
```python
>>> video = sample_video("runs/tiny-world/videos/synthetic_000.mp4")  # doctest: +SKIP
>>> video.frames.shape, video.fps  # doctest: +SKIP
(torch.Size([16, 3, 56, 56]), 2.0)
```
"""

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from rewatch_trl.prompts import VideoSettings


class VideoError(ValueError):
    """A video that cannot be used: missing, empty, corrupt, or a clip outside it. The message names the file."""


class DecodeError(VideoError):
    """A video (or a clip of it) whose frames the decoder cannot read; the message carries the decoder's own."""


@dataclass
class SampledVideo:
    """Frames `(T, C, H, W)` (resized as qwen-vl-utils does; uint8, see `compact_frames`) and where they came from."""

    path: str
    frames: torch.Tensor
    frame_indices: list[int]
    total_frames: int
    video_fps: float
    backend: str

    @property
    def fps(self) -> float:
        """Frames per second of the sampled frames (what M-RoPE's `second_per_grid_ts` is made from)."""
        return len(self.frame_indices) / max(self.total_frames, 1e-6) * self.video_fps

    @property
    def duration(self) -> float:
        return self.total_frames / self.video_fps if self.video_fps else 0.0

    def metadata(self) -> dict:
        """The `video_metadata` transformers' video processor takes with pre-sampled frames."""
        return {
            "fps": self.video_fps,
            "frames_indices": list(self.frame_indices),
            "total_num_frames": self.total_frames,
            "video_backend": self.backend,
            "height": int(self.frames.shape[-2]),
            "width": int(self.frames.shape[-1]),
            "duration": self.duration,
        }

    @property
    def nbytes(self) -> int:
        return self.frames.numel() * self.frames.element_size()


@dataclass
class UndecodableVideo(SampledVideo):
    """What stands in, during a run, for a video that failed to decode: blank frames of the smallest shape the
    processor takes, and the decoder's `error`. The trainers leave its rows out of the loss."""

    error: str = ""

    @classmethod
    def blank(cls, path: str, backend: str, error: str, frames: int, side: int) -> "UndecodableVideo":
        return cls(
            path=path,
            frames=torch.zeros(frames, 3, side, side, dtype=torch.uint8),
            frame_indices=list(range(frames)),
            total_frames=frames,
            video_fps=1.0,
            backend=backend,
            error=error,
        )

    def record(self, step: int | None) -> dict:
        """Its line of `undecodable.jsonl`."""
        return undecodable_record(self.path, self.backend, self.error, step)


UNDECODABLE_LOG = "undecodable.jsonl"


def undecodable_record(path: str, backend: str, error: str, step: int | None = None) -> dict:
    """A line of `undecodable.jsonl`: the file, the decoder, its error, and the step of the run that met it (None
    before a run: `rewatch-trl data --check-decode`, or in SFT)."""
    return {"path": path, "backend": backend, "error": error, "step": step}


def write_undecodable(output_dir, records: list[dict]) -> None:
    """Append the records of videos that failed to decode to `<output_dir>/undecodable.jsonl`, each path once (a
    path already there, by an earlier run or another process, is not written again)."""
    import fcntl
    import json

    if not records:
        return
    path = Path(output_dir) / UNDECODABLE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as log:
        fcntl.flock(log, fcntl.LOCK_EX)  # processes (and DataLoader workers) that meet the same file write it once
        log.seek(0)
        known = {json.loads(line)["path"] for line in log if line.strip()}
        for record in records:
            if record["path"] not in known:
                known.add(record["path"])
                log.write(json.dumps(record) + "\n")


def _check_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"video is empty: {path}")
    return path


def video_duration(path) -> float:
    """A video's duration in seconds, read from its container (PyAV); a corrupt file raises `VideoError`."""
    import av

    path = _check_file(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            return float(stream.frames / stream.average_rate)
    except (av.FFmpegError, IndexError, ZeroDivisionError, TypeError) as error:
        raise VideoError(f"cannot read video {path}: {error}") from error


def frame_time_drift(path) -> float:
    """How far, in seconds, a video's frames are from where a reader places them: both backends (as qwen-vl-utils)
    place frame i at i / average rate, which is its own time only at a constant frame rate. 0.0 for a constant-rate
    video; a variable-rate one (a phone's, a screen recording) drifts, and its clips' times with it. Reads packet
    times only, decoding nothing; a corrupt file raises `VideoError`.

    Example:
    ```python
    >>> frame_time_drift("videos/phone.mp4")  # doctest: +SKIP
    0.75
    ```
    """
    import av

    path = _check_file(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            times = sorted(float(p.pts * p.time_base) for p in container.demux(stream) if p.size and p.pts is not None)
            rate = float(stream.average_rate or stream.guessed_rate or 0)
    except (av.FFmpegError, IndexError, TypeError) as error:
        raise VideoError(f"cannot read video {path}: {error}") from error
    if len(times) < 2 or rate <= 0:
        return 0.0
    return max(abs(t - times[0] - i / rate) for i, t in enumerate(times))


def _frame_count(container, stream) -> int:
    """A video stream's frames: the count its container keeps (mp4, mov, avi), else its packets counted, as decord
    counts them (WebM and Matroska keep no count, nor a duration of the stream: only the container's, which is its
    longest stream's, the audio's where that outlasts the video)."""
    if stream.frames:
        return stream.frames
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def _read_video_pyav(ele: dict):
    """A qwen-vl-utils reader on PyAV (FFmpeg), for where decord has no wheel: same contract and the same frame
    choice (`calculate_video_frame_range`, `smart_nframes`, evenly spaced indices) as its decord reader, and, as
    decord does, frames turned upright by the stream's rotation (a phone's display matrix)."""
    import av
    import numpy as np
    from qwen_vl_utils.vision_process import calculate_video_frame_range, smart_nframes

    with av.open(ele["video"]) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        video_fps = float(stream.average_rate or stream.guessed_rate or 0)
        total = _frame_count(container, stream)
        start, end, count = calculate_video_frame_range(ele, total, video_fps)
        nframes = smart_nframes(ele, total_frames=count, video_fps=video_fps)
        indices = torch.linspace(start, end, nframes).round().long().tolist()
        wanted, frames = set(indices), {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                # display rotation, counter-clockwise degrees (-90: a phone held upright); decord applies it too
                turns = round(getattr(frame, "rotation", 0) / 90) % 4
                frames[i] = np.rot90(frame.to_ndarray(format="rgb24"), turns)
            if i >= end:
                break
    if not frames:
        raise ValueError(f"no frames decoded from {ele['video']}")
    last = max(frames)  # a container may promise more frames than it holds
    video = torch.from_numpy(np.stack([frames.get(i, frames[last]) for i in indices]))
    metadata = {"fps": video_fps, "frames_indices": indices, "total_num_frames": count, "video_backend": "pyav"}
    return video.permute(0, 3, 1, 2), metadata, nframes / max(count, 1e-6) * video_fps


def _use_backend(backend: str) -> None:
    # qwen-vl-utils picks its reader once per process from an environment variable; we choose it per call.
    from qwen_vl_utils import vision_process

    vision_process.VIDEO_READER_BACKENDS.setdefault("pyav", _read_video_pyav)
    if backend not in vision_process.VIDEO_READER_BACKENDS:
        known = ", ".join(sorted(vision_process.VIDEO_READER_BACKENDS))
        raise ValueError(f"unknown video_backend {backend!r}; known: {known}")
    if backend != vision_process.FORCE_QWENVL_VIDEO_READER:
        vision_process.FORCE_QWENVL_VIDEO_READER = backend
        vision_process.get_video_reader_backend.cache_clear()


def compact_frames(frames: torch.Tensor) -> torch.Tensor:
    """qwen-vl-utils resizes the decoder's uint8 frames and returns them as float32: whole numbers 0–255. Kept as
    uint8 they take a quarter of the memory in the cache and between processes (DataLoader workers), and the video
    processor makes the same pixels of them; frames that are not whole numbers stay as they are.

    Example:
    ```python
    >>> compact_frames(torch.tensor([0.0, 255.0])).dtype, compact_frames(torch.tensor([0.5])).dtype
    (torch.uint8, torch.float32)
    ```
    """
    if frames.dtype == torch.uint8:
        return frames
    small = frames.clamp(0, 255).to(torch.uint8)
    return small if torch.equal(small.to(frames.dtype), frames) else frames


def decoder_error(error: BaseException) -> BaseException:
    """The chosen decoder's own error. qwen-vl-utils retries a video its decoder failed on with torchvision, whose
    failure (torchvision 0.29 has no `read_video`) would otherwise stand for the decoder's: the error raised while
    handling the decoder's is skipped back to it."""
    import traceback

    while error.__context__ is not None and any(
        frame.name == "_read_video_torchvision" for frame in traceback.extract_tb(error.__traceback__)
    ):
        error = error.__context__
    return error


def decode_video(path, settings: VideoSettings, start: float | None = None, end: float | None = None) -> SampledVideo:
    """Decode and sample one video (or the clip `[start, end]` seconds of it) with qwen-vl-utils, uncached."""
    from qwen_vl_utils import fetch_video

    path = _check_file(path)
    block = settings.video_block(str(path))
    if start is not None or end is not None:
        duration = video_duration(path)
        start, end = start or 0.0, duration if end is None else end
        if not 0 <= start < end <= duration + 1e-3:
            raise VideoError(f"clip [{start}, {end}] s is outside video {path} of {duration:.2f} s")
        block |= {"video_start": start, "video_end": end}
    _use_backend(settings.video_backend)
    try:
        (frames, meta), _ = fetch_video(
            block,
            image_patch_size=settings.video_patch_size or 14,
            return_video_sample_fps=True,
            return_video_metadata=True,
        )
    except Exception as error:  # decoders raise anything from RuntimeError to their own types
        cause = decoder_error(error)
        raise DecodeError(f"cannot decode video {path} with {settings.video_backend}: {cause}") from cause
    return SampledVideo(
        path=str(path),
        frames=compact_frames(frames),
        frame_indices=[int(i) for i in meta["frames_indices"]],
        total_frames=int(meta["total_num_frames"]),
        video_fps=float(meta["fps"]),
        backend=settings.video_backend,
    )


class VideoCache:
    """Sampled videos by (file, mtime, size, settings, clip), least recently used first out, bounded in bytes.

    `decodes` counts the decodes it had to do, so a test (or a benchmark) can see each video decoded once.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self.decodes = 0
        self._items: OrderedDict[tuple, SampledVideo] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(path, settings: VideoSettings, start: float | None, end: float | None) -> tuple:
        path = _check_file(path)
        stat = path.stat()
        return str(path.resolve()), stat.st_mtime_ns, stat.st_size, dataclasses.astuple(settings), start, end

    def get(self, path, settings: VideoSettings, start: float | None = None, end: float | None = None) -> SampledVideo:
        key = self._key(path, settings, start, end)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        video = decode_video(path, settings, start, end)
        with self._lock:
            self.decodes += 1
        self._insert(key, video)
        return video

    def put(self, video: SampledVideo, settings: VideoSettings, start: float | None = None, end: float | None = None):
        """Keep a video sampled elsewhere with `settings` (by a DataLoader worker): `get` then returns it."""
        self._insert(self._key(video.path, settings, start, end), video)

    def _insert(self, key: tuple, video: SampledVideo) -> None:
        with self._lock:
            if key not in self._items:
                self._items[key] = video
                self._bytes += video.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_default_cache = VideoCache()


def default_video_cache() -> VideoCache:
    """The process-wide cache of `sample_video` and `sample_clip` when they are given none."""
    return _default_cache


def sample_video(path, settings: VideoSettings | None = None, cache: VideoCache | None = None) -> SampledVideo:
    """The frames of a whole video with `settings` (the seed's by default), decoded once per process."""
    return (cache or _default_cache).get(path, settings or VideoSettings())


def sample_clip(
    path, start: float, end: float, settings: VideoSettings | None = None, cache: VideoCache | None = None
) -> SampledVideo:
    """The frames of the clip `[start, end]` seconds (for re-watching); a clip outside the video raises."""
    return (cache or _default_cache).get(path, settings or VideoSettings(), float(start), float(end))


def decoded_video_bytes(settings) -> int:
    """The most bytes one sampled video takes (uint8 RGB frames at the settings' frame and pixel caps): what a
    DataLoader worker sends through shared memory for each video it decodes ahead.

    Example:
    ```python
    >>> decoded_video_bytes(VideoSettings())  # the paper's 192 frames of 128 * 28 * 28 px: 58 MB
    57802752
    ```
    """
    frames = settings.video_max_frames
    # qwen-vl-utils' total budget counts temporal pairs of frames (two frames a token)
    per_frame = min(
        settings.video_max_pixels, max(2 * settings.video_total_pixels / frames, settings.video_min_pixels)
    )
    return 3 * frames * int(per_frame)


def check_shared_memory(needed: int, path: str = "/dev/shm") -> str | None:
    """A warning when `path` (where DataLoader workers hand their tensors to the training process) holds less than
    `needed` bytes: the workers' decoded videos would then end the run with a bus error. None when it fits."""
    import shutil

    try:
        size = shutil.disk_usage(path).total
    except OSError:
        return None
    if size >= needed:
        return None
    return (
        f"{path} holds {size / 2**20:.0f} MiB, but the DataLoader workers may hold {needed / 2**20:.0f} MiB of decoded "
        "videos there at once: the run would die with a bus error. Give the container more shared memory (docker: "
        "--shm-size=16g), or lower dataloader_num_workers / dataloader_prefetch_factor (0 workers decode in the "
        "training process)."
    )
