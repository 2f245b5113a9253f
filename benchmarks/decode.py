"""Frames/s of sampling 192 frames (the seed's settings) from a 10-minute 640x360 video, per backend, and warm.

    python benchmarks/decode.py [--video PATH]

Without `--video` it writes a synthetic one (H.264, 24 fps) under runs/bench/ once and reuses it.
"""

import argparse
import time
from pathlib import Path

from rewatch_trl.prompts import VideoSettings
from rewatch_trl.tiny import write_synthetic_video
from rewatch_trl.video import VideoCache, decode_video


def available_backends() -> list[str]:
    backends = []
    for name, module in [("decord", "decord"), ("pyav", "av"), ("torchcodec", "torchcodec.decoders")]:
        try:
            __import__(module)
        except Exception as error:  # torchcodec fails to load without system FFmpeg
            print(f"{name}: not available ({type(error).__name__}: {str(error).splitlines()[0][:80]})")
            continue
        backends.append(name)
    return backends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=Path("runs/bench/ten_minutes_640x360.mp4"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"writing {args.video} (10 min, 640x360, 24 fps) ...")
        write_synthetic_video(args.video, seconds=600, fps=24, size=(640, 360), segment=10, seed=0)
    results = {}
    for backend in available_backends():
        settings = VideoSettings(video_backend=backend)
        try:
            best, video = float("inf"), None
            for _ in range(args.repeats):
                start = time.perf_counter()
                video = decode_video(args.video, settings)
                best = min(best, time.perf_counter() - start)
        except Exception as error:
            print(f"{backend}: failed ({str(error).splitlines()[0][:100]})")
            continue
        results[backend] = len(video.frame_indices) / best
        print(f"{backend:<12}{len(video.frame_indices):>5} frames {tuple(video.frames.shape[1:])} in {best:6.2f} s")
    if not results:
        raise SystemExit("no backend could decode the video")
    fastest = max(results, key=results.get)
    cache = VideoCache()
    settings = VideoSettings(video_backend=fastest)
    cache.get(args.video, settings)
    start = time.perf_counter()
    for _ in range(100):
        video = cache.get(args.video, settings)
    warm = len(video.frame_indices) * 100 / (time.perf_counter() - start)
    print(f"\n{'backend':<14}{'frames/s':>12}{'vs fastest':>12}")
    for backend, rate in results.items():
        print(f"{backend:<14}{rate:>12,.0f}{rate / results[fastest]:>11.2f}x")
    print(f"{'cache (warm)':<14}{warm:>12,.0f}{warm / results[fastest]:>11.0f}x")
    print(f"fastest backend: {fastest} {results[fastest]:.0f} frames/s")


if __name__ == "__main__":
    main()
