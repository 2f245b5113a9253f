import pytest
import torch
from qwen_vl_utils import process_vision_info

from rewatch_trl.collator import VideoCollator
from rewatch_trl.prompts import VideoSettings, build_messages
from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, write_synthetic_video
from rewatch_trl.video import (
    VideoCache,
    VideoError,
    compact_frames,
    decode_video,
    sample_clip,
    sample_video,
    video_duration,
)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "ten_seconds.mp4"
    write_synthetic_video(path, seconds=10, fps=6, size=(96, 64), seed=1)
    return path


def test_duration_from_container(clip_path):
    assert video_duration(clip_path) == pytest.approx(10.0, abs=0.2)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_equal_qwen_vl_utils_own(clip_path, backend):
    settings = VideoSettings(
        video_max_frames=16, video_min_pixels=28 * 28 * 4, video_max_pixels=56 * 84, video_backend="decord"
    )
    messages = build_messages("q?", str(clip_path), 10, settings)
    _, videos, _ = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True)
    (reference, reference_meta) = videos[0]
    ours = decode_video(clip_path, VideoSettings(**{**settings.__dict__, "video_backend": backend}))
    assert ours.frames.shape == reference.shape
    assert ours.frame_indices == reference_meta["frames_indices"]
    # decord and PyAV both decode with FFmpeg: the same pixels, up to the decoders' colour conversion
    tolerance = 0 if backend == "decord" else 3.0
    assert (ours.frames - reference).abs().mean() <= tolerance
    assert ours.fps == pytest.approx(len(ours.frame_indices) / 60 * 6)


def test_frames_are_compacted_only_when_exact():
    whole = torch.tensor([[0.0, 17.0], [254.0, 255.0]])
    assert torch.equal(compact_frames(whole), whole.to(torch.uint8))
    for inexact in (torch.tensor([0.0, 17.5]), torch.tensor([-1.0, 3.0]), torch.tensor([256.0])):
        assert compact_frames(inexact) is inexact


def test_collator_frames_and_grid_times_match_sampling(clip_path, tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    settings = TINY_VIDEO_SETTINGS
    cache = VideoCache()
    collator = VideoCollator(processor, settings, cache=cache)
    row = {"problem": "What colour?", "videos": str(clip_path), "duration": 10}
    batch = collator([row])
    video = sample_video(clip_path, settings, cache)
    # the processor's own pixels of the frames qwen-vl-utils sampled, through the same message
    _, reference, _ = process_vision_info(collator.messages(row), return_video_kwargs=True, return_video_metadata=True)
    frames, meta = reference[0]
    # kept as uint8, the same whole numbers qwen-vl-utils returns as float; the processor's pixels below are those
    # of qwen-vl-utils' float frames
    assert video.frames.dtype == torch.uint8 and torch.equal(video.frames.to(frames.dtype), frames)
    expected = processor.video_processor(
        videos=[frames],
        video_metadata=[meta],
        do_sample_frames=False,
        do_resize=False,
        cap_pixels_per_frame=True,
        return_tensors="pt",
    )
    assert torch.equal(batch["pixel_values_videos"], expected["pixel_values_videos"])
    t, _, h, w = video.frames.shape
    assert batch["video_grid_thw"].tolist() == [[t // 2, h // 14, w // 14]]
    # 8 frames (the cap) from 60 frames at 6 fps: sampled at 0.8 fps, so one 2-frame grid step is 2.5 s
    assert video.fps == pytest.approx(8 / 60 * 6)
    assert batch["second_per_grid_ts"].tolist() == [pytest.approx(2 / video.fps)]


def test_a_video_used_n_times_is_decoded_once(tiny_world, tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    cache = VideoCache()
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=tiny_world.video_dir, cache=cache)
    rows = [r for r in tiny_world.rows if r["videos"] == tiny_world.rows[0]["videos"]] * 4
    collator(rows)
    collator(rows)
    assert cache.decodes == 1
    other = next(r for r in tiny_world.rows if r["videos"] != rows[0]["videos"])
    collator([other, *rows])
    assert cache.decodes == 2


def test_cache_is_bounded_in_bytes(tiny_world):
    one = sample_video(tiny_world.video_dir / "synthetic_000.mp4", TINY_VIDEO_SETTINGS, VideoCache())
    cache = VideoCache(max_bytes=one.nbytes * 2)
    for name in ["synthetic_000.mp4", "synthetic_001.mp4", "synthetic_002.mp4", "synthetic_000.mp4"]:
        cache.get(tiny_world.video_dir / name, TINY_VIDEO_SETTINGS)
    assert cache.decodes == 4  # the first was evicted before it came back
    assert cache._bytes <= cache.max_bytes


def test_clip_frames(clip_path):
    clip = sample_clip(clip_path, 2, 6, TINY_VIDEO_SETTINGS, VideoCache())
    assert min(clip.frame_indices) >= 12 and max(clip.frame_indices) <= 36
    assert clip.frames.shape[0] == 8


@pytest.mark.parametrize(("start", "end"), [(5, 30), (8, 4), (-1, 3)])
def test_clip_outside_the_video_raises_naming_it(clip_path, start, end):
    with pytest.raises(VideoError, match="ten_seconds.mp4"):
        sample_clip(clip_path, start, end, TINY_VIDEO_SETTINGS, VideoCache())


def test_missing_empty_and_corrupt_videos_raise_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for path, message in [(tmp_path / "missing.mp4", "not found"), (empty, "empty"), (corrupt, "corrupt.mp4")]:
        with pytest.raises(VideoError, match=message):
            sample_video(path, TINY_VIDEO_SETTINGS, VideoCache())
        with pytest.raises(VideoError, match=path.name):
            video_duration(path)


def test_unknown_backend_names_the_known_ones(clip_path):
    with pytest.raises(ValueError, match="known: decord"):
        decode_video(clip_path, VideoSettings(video_backend="nope"))


def test_a_small_dev_shm_is_said_before_the_workers_start(tiny_world, tmp_path, make_trainer, monkeypatch, caplog):
    """Docker's 64 MB /dev/shm cannot hold the decoded videos DataLoader workers hand over (58 MB a video at the
    paper's settings): the run says so at its start, with what to change; a large enough one says nothing."""
    import logging
    import shutil
    from collections import namedtuple

    from rewatch_trl.prompts import VideoSettings
    from rewatch_trl.video import decoded_video_bytes

    assert decoded_video_bytes(VideoSettings()) == 192 * 128 * 28 * 28 * 3
    usage = namedtuple("usage", "total used free")
    trainer, _ = make_trainer(tiny_world, tmp_path, dataloader_num_workers=2)
    needed = 2 * 2 * 2 * decoded_video_bytes(trainer.video_collator.settings)  # workers, prefetch, 2 prompts
    for size, warned in ((needed - 1, True), (needed, False)):
        monkeypatch.setattr(shutil, "disk_usage", lambda path, size=size: usage(size, 0, size))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rewatch_trl.trainer"):
            trainer.get_train_dataloader()
        messages = [r.getMessage() for r in caplog.records if "/dev/shm" in r.getMessage()]
        assert bool(messages) == warned, messages
    assert "--shm-size" in messages[0] if messages else True


def corrupt_frames(path):
    """Zero the frame data (`mdat` payload) of an mp4: its header still reads (duration, size), its frames do not."""
    data = bytearray(path.read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 : at - 4 + size] = bytes(size - 8)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_an_undecodable_video_names_its_decoders_own_error(tmp_path, backend):
    """A video whose frames do not decode: the error names the backend and carries that decoder's own message, not
    that of qwen-vl-utils' torchvision fallback (torchvision 0.29 has no `read_video`)."""
    import dataclasses

    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, write_synthetic_video
    from rewatch_trl.video import VideoError, decode_video, video_duration

    path = tmp_path / "broken.mp4"
    write_synthetic_video(path)
    corrupt_frames(path)
    assert video_duration(path) > 0  # the header still reads
    settings = dataclasses.replace(TINY_VIDEO_SETTINGS, video_backend=backend)
    with pytest.raises(VideoError) as caught:
        decode_video(path, settings)
    message = str(caught.value)
    assert f"cannot decode video {path} with {backend}" in message
    assert "read_video" not in message and "torchvision" not in message, message


def write_container(path, codec: str, audio: str | None = None, rotate_90: bool = False, size=(96, 64), frames=32):
    """A 4 s, 8 fps video in any container PyAV writes (frame i: gray 16 + 6 i), with `audio` (a codec) that outlasts
    the video by a second, and with `rotate_90` a phone's display matrix (turn 90° clockwise to show)."""
    import struct

    import av
    import numpy as np

    width, height = size
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(codec, rate=8)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if codec == "mpeg4":  # its default bit rate blurs an edge by 1.6 gray levels; a camera's AVI keeps more
            video.bit_rate = 4_000_000
        if audio:
            sound = container.add_stream(audio, rate=48000)
            sound.layout = "mono"
        for i in range(frames):
            frame = np.full((height, width, 3), 16 + 6 * i, dtype=np.uint8)
            frame[:8, 2 * i : 2 * i + 4] = 255
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if audio:
            for start in range(0, 5 * 48000, 960):
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
                samples.sample_rate, samples.pts = 48000, start
                container.mux(sound.encode(samples))
            container.mux(sound.encode())
    if rotate_90:  # the mp4 track header's matrix, as phones write it
        data = bytearray(path.read_bytes())
        at = data.find(b"tkhd")
        matrix = at + 8 + (32 if data[at + 4] == 1 else 20) + 16
        struct.pack_into(">9i", data, matrix, 0, 1 << 16, 0, -(1 << 16), 0, 0, height << 16, 0, 1 << 30)
        path.write_bytes(bytes(data))


def write_variable_rate(path, slow: int = 16):
    """An H.264 MP4 of 16 frames 1/8 s apart, then `slow` frames 1/4 s apart (frame i: gray 16 + 6 i): with 16,
    about 6 s, an average rate of 5.7 fps, frame 16 at 2.0 s where the average rate places it at 2.8 s."""
    import fractions

    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        video.time_base = fractions.Fraction(1, 1000)
        time = 0
        for i in range(16 + slow):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 16 + 6 * i, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = time, video.time_base
            container.mux(video.encode(frame))
            time += 125 if i < 16 else 250
        container.mux(video.encode())


def test_a_variable_rate_video_reads_alike_on_every_backend_and_its_drift_is_measured(tmp_path):
    """Both backends place a variable-rate video's frames at its average rate (qwen-vl-utils' rule): the same indices
    and frames on each, whole and clipped. `frame_time_drift` says how far that is from the frames' own times; a
    constant-rate video (the control) drifts by nothing."""
    import dataclasses

    from rewatch_trl.video import frame_time_drift

    path, constant = tmp_path / "vfr.mp4", tmp_path / "cfr.mp4"
    write_variable_rate(path)
    write_container(constant, "libx264")
    settings = VideoSettings(video_max_frames=16, video_min_pixels=28 * 28 * 4, video_max_pixels=56 * 84)
    for clip in ((None, None), (1.0, 3.0), (4.0, 5.5)):
        decord = decode_video(path, settings, *clip)
        pyav = decode_video(path, dataclasses.replace(settings, video_backend="pyav"), *clip)
        assert decord.frame_indices == pyav.frame_indices and decord.total_frames == pyav.total_frames
        assert (decord.frames.float() - pyav.frames.float()).abs().mean() <= 0.5
    assert decord.frame_indices == [23, 26, 28, 31]  # 4.0-5.5 s at 5.69 fps: frames 23-31, in truth 3.75-5.75 s
    assert frame_time_drift(path) == pytest.approx(16 / (32 / 5.625) - 2.0, abs=0.02)  # frame 16: 2.0 s, not 2.81
    assert frame_time_drift(constant) < 1e-6


@pytest.mark.parametrize(
    "name, codec, audio, rotate_90",
    [
        ("vp9.webm", "libvpx-vp9", None, False),
        ("vp8.webm", "libvpx", None, False),
        ("h264.mkv", "libx264", None, False),
        ("h264.mov", "libx264", None, False),
        ("mpeg4.avi", "mpeg4", None, False),
        ("long_audio.webm", "libvpx-vp9", "libopus", False),
        ("long_audio.mkv", "libx264", "aac", False),
        ("phone.mp4", "libx264", None, True),
    ],
)
def test_pyav_reads_what_decord_reads(tmp_path, name, codec, audio, rotate_90):
    """WebM and Matroska keep no frame count nor duration of the video stream (only the container's, the audio's where
    that is longer), and a phone's video is turned by its display matrix: PyAV samples the frames decord does."""
    import dataclasses

    path = tmp_path / name
    write_container(path, codec, audio, rotate_90)
    settings = VideoSettings(video_max_frames=16, video_min_pixels=28 * 28 * 4, video_max_pixels=56 * 84)
    twin = tmp_path / "twin.mp4"  # the same frames as H.264 in MP4
    write_container(twin, "libx264", rotate_90=rotate_90)
    for clip in ((None, None), (1.0, 3.0)):
        reference = decode_video(path, settings, *clip)
        ours = decode_video(path, dataclasses.replace(settings, video_backend="pyav"), *clip)
        mp4 = decode_video(twin, settings, *clip)
        for decoded in (reference, ours):  # every backend: the MP4 twin's frames, within codec error
            assert decoded.frame_indices == mp4.frame_indices
            assert (decoded.frames.float() - mp4.frames.float()).abs().mean() <= 1.0
        # the control: the twin's frames one sampled frame late differ by far more (6 gray levels a frame index)
        late = torch.cat([mp4.frames[1:], mp4.frames[-1:]])
        assert (ours.frames.float() - late.float()).abs().mean() > 5.0
        assert ours.frame_indices == reference.frame_indices
        assert (
            (ours.total_frames, ours.video_fps)
            == (reference.total_frames, reference.video_fps)
            == ((32, 8.0) if clip == (None, None) else (17, 8.0))
        )
        assert ours.frames.shape == reference.frames.shape
        assert (ours.frames.float() - reference.frames.float()).abs().mean() <= 0.5
