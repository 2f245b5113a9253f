"""How the cost of a video GRPO step grows with the frames and with G: step time and peak memory, the stock
path (sharing off) against the shared one (the default), each point in a fresh process.

    python benchmarks/scaling.py [--steps 2]

The vision-heavy tiny world of `step_cost.py` (112x112 px frames: 16 visual tokens a frame pair, completions of 8
tokens, beta > 0, two iterations a generation), frames in {8, 32, 64, 128, 192} at G = 8 and G in {2, 4, 8, 16} at
64 frames. Peak memory is that of the tensors one step allocates (`step_cost.peak_memory`: the profiler's memory
timeline on CPU, the allocator's peak on a GPU), measured on a step after the timed ones. Writes
`benchmarks/scaling.png` (matplotlib) and prints the table; the last line is the headline.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


FRAMES = [8, 32, 64, 128, 192]
GENERATIONS = [2, 4, 8, 16]
MODES = {
    "stock": {"share_video_features": False, "share_prompt_prefix": False},
    "shared": {"share_video_features": True, "share_prompt_prefix": True},
}


def point(frames: int, generations: int, mode: str, steps: int, device: str = "cpu") -> dict:
    """One point, in this process: seconds a step (after a warm-up step) and the peak MiB of one more step."""
    from argparse import Namespace

    from step_cost import parse_options, run, video_settings

    from rewatch_trl.tiny import build_tiny_world

    with tempfile.TemporaryDirectory() as tmp:
        world = build_tiny_world(f"{tmp}/world", num_videos=4, seconds=frames, fps=2, size=(224, 224))
        options = parse_options(__doc__, ["--steps", str(steps), "--generations", str(generations), "--workers", "0"])
        options.out = f"{tmp}/t"
        timed = run(world, video_settings(frames), MODES[mode], options)
        options = Namespace(**vars(options) | {"steps": 1, "out": f"{tmp}/m", "measure_memory": True})
        measured = run(world, video_settings(frames), MODES[mode], options)
    return {"seconds": timed["step"], "peak_mib": measured["peak MiB"]}


def measure_all(steps: int, device: str) -> dict:
    results = {}
    points = sorted({(f, 8) for f in FRAMES} | {(64, g) for g in GENERATIONS})
    for frames, generations in points:
        for mode in MODES:
            command = [sys.executable, __file__, "--point", str(frames), str(generations), mode]
            command += ["--steps", str(steps), "--device", device]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[(frames, generations, mode)] = json.loads(output.strip().splitlines()[-1])
            print(
                f"frames {frames:>3} G {generations:>2} {mode:>6}: {results[(frames, generations, mode)]}",
                file=sys.stderr,
            )
    return results


def growth(xs, ys) -> float:
    """The exponent b of y ~ x^b, least squares on logs (1: linear, 2: quadratic)."""
    import math

    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, (key, label) in enumerate([("seconds", "seconds a step"), ("peak_mib", "peak MiB a step")]):
        for column, (xs, axis_label, select) in enumerate(
            [(FRAMES, "frames a video (G = 8)", lambda x: (x, 8)), (GENERATIONS, "G (64 frames)", lambda x: (64, x))]
        ):
            axis = axes[row][column]
            for mode, style in (("stock", "o-"), ("shared", "s-")):
                axis.plot(xs, [results[(*select(x), mode)][key] for x in xs], style, label=mode)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel(axis_label)
            axis.set_ylabel(label)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
    figure.suptitle("Video GRPO step, tiny vision-heavy model on CPU: stock vs shared")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps a point, after one warm-up step")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.point:
        frames, generations, mode = int(options.point[0]), int(options.point[1]), options.point[2]
        print(json.dumps(point(frames, generations, mode, options.steps, options.device)))
        return
    results = measure_all(options.steps, options.device)
    print("point                  stock s   shared s   speed-up   stock MiB  shared MiB   memory")
    keys = [(f, 8) for f in FRAMES] + [(64, g) for g in GENERATIONS if g != 8]
    for frames, generations in keys:
        stock, shared = results[(frames, generations, "stock")], results[(frames, generations, "shared")]
        print(
            f"frames {frames:>3}, G {generations:>2}   {stock['seconds']:>7.3f}   {shared['seconds']:>8.3f}"
            f"   {stock['seconds'] / shared['seconds']:>7.2f}x   {stock['peak_mib']:>9.1f}  {shared['peak_mib']:>10.1f}"
            f"   {stock['peak_mib'] / shared['peak_mib']:>5.2f}x"
        )
    for mode in MODES:
        by_frames = [results[(f, 8, mode)] for f in FRAMES]
        by_g = [results[(64, g, mode)] for g in GENERATIONS]
        print(
            f"growth, {mode}: time ~ frames^{growth(FRAMES, [r['seconds'] for r in by_frames]):.2f}, "
            f"memory ~ frames^{growth(FRAMES, [r['peak_mib'] for r in by_frames]):.2f}; "
            f"time ~ G^{growth(GENERATIONS, [r['seconds'] for r in by_g]):.2f}, "
            f"memory ~ G^{growth(GENERATIONS, [r['peak_mib'] for r in by_g]):.2f}"
        )
    plot(results, Path(__file__).with_name("scaling.png"))
    stock, shared = results[(192, 8, "stock")]["peak_mib"], results[(192, 8, "shared")]["peak_mib"]
    print(f"peak memory at G=8, 192 frames: stock {stock:.0f} MiB, shared {shared:.0f} MiB ({stock / shared:.2f}x)")


if __name__ == "__main__":
    main()
