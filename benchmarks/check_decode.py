"""Videos/s of `rewatch-trl data --check-decode` (`data.check_decode`): every video decoded once with the seed's
settings (192 frames of a 10-minute 640x360 video), in 1 and in 2 worker processes, side by side.

    python benchmarks/check_decode.py [--video PATH] [--videos 8]

Without `--video` it writes the synthetic 10-minute video of `benchmarks/decode.py` under runs/bench/ once; the
folder checked holds `--videos` links to it (distinct paths: each is decoded).
"""

import argparse
import time
from pathlib import Path

from rewatch_trl.data import check_decode
from rewatch_trl.prompts import VideoSettings
from rewatch_trl.tiny import write_synthetic_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=Path("runs/bench/ten_minutes_640x360.mp4"))
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--backend", default="decord")
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"writing {args.video} (10 min, 640x360, 24 fps) ...")
        write_synthetic_video(args.video, seconds=600, fps=24, size=(640, 360), segment=10, seed=0)
    folder = args.video.parent / "check_decode"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(args.videos):
        link = folder / f"video_{i:03d}.mp4"
        if not link.exists():
            link.symlink_to(args.video.absolute())
        paths.append(str(link))
    settings = VideoSettings(video_backend=args.backend)
    rates = {}
    for num_proc in (1, 2):
        start = time.perf_counter()
        failures = check_decode(paths, settings, num_proc, progress=False)
        seconds = time.perf_counter() - start
        assert not failures, failures
        rates[num_proc] = len(paths) / seconds
        print(f"num_proc {num_proc}: {len(paths)} videos in {seconds:6.2f} s, {rates[num_proc]:.2f} videos/s")
    print(f"2 processes vs 1: {rates[2] / rates[1]:.2f}x ({args.backend}, {settings.video_max_frames} frames a video)")


if __name__ == "__main__":
    main()
