"""What real re-watching buys on the tiny world: imagined (the paper's) vs agentic, the same seed, data and steps.

    .venv/bin/python benchmarks/rewatch_gain.py [--videos 40] [--held-out 10] [--sft-steps 1500] [--grpo-steps 16]

A tiny world with flashes (`rewatch-trl tiny --flashes`): each video holds a one-frame flash that the whole-video
sampling skips and a re-watch of its window shows. For each mode, an SFT cold start (the agentic traces show each
action's clip) and GRPO on the training videos, then greedy answers to the flash questions of held-out videos, in
the same mode. Printed side by side: held-out flash accuracy (multiple choice, open-ended), and as a control the
accuracy on the held-out videos' square-colour questions (answerable from the whole video's frames: it says whether
the model reads colours from frames at all), the real re-watches per answer, and GRPO's seconds a step. Chance on
the multiple-choice questions is 0.25.
"""

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")

MODES = ("imagined", "agentic")


def recipe_args(recipe: str, **settings) -> list[str]:
    root = Path(__file__).resolve().parents[1]
    arguments = ["--config", str(root / "recipes/tiny" / recipe)]
    for key, value in settings.items():
        arguments += [f"--{key}", str(value)]
    return arguments


def train(mode: str, world, train_qa: Path, out: Path, options) -> tuple[Path, Path, float]:
    """SFT then GRPO in `mode` on the training rows; both checkpoints and GRPO's seconds a step."""
    from rewatch_trl import grpo, sft

    data = {"dataset_name": train_qa, "captions": world.captions_path, "video_root": world.video_dir}
    common = data | {"rewatch_mode": mode, "seed": options.seed, "save_strategy": "no", "logging_steps": 100}
    sft_dir, grpo_dir = out / f"{mode}-sft", out / f"{mode}-grpo"
    sft.main(
        *sft.parse_args(
            recipe_args("sft_rewatch.yaml", model_name_or_path=world.root, output_dir=sft_dir, **common)
            + ["--max_steps", str(options.sft_steps), "--learning_rate", str(options.sft_learning_rate)]
        )
    )
    start = time.perf_counter()
    grpo.main(
        *grpo.parse_args(
            recipe_args("grpo_rewatch.yaml", model_name_or_path=sft_dir, output_dir=grpo_dir, **common)
            + ["--max_steps", str(options.grpo_steps)]
        )
    )
    return sft_dir, grpo_dir, (time.perf_counter() - start) / options.grpo_steps


def evaluate_mode(mode: str, model: Path, world, held_out, out: Path) -> dict:
    """The report of `model` answering the held-out rows in `mode`."""
    from rewatch_trl.eval import evaluate
    from rewatch_trl.infer import Predictor
    from rewatch_trl.tiny import TINY_REWATCH_SETTINGS, TINY_VIDEO_SETTINGS

    rewatch = dataclasses.replace(TINY_REWATCH_SETTINGS, rewatch_mode=mode)
    predictor = Predictor(str(model), TINY_VIDEO_SETTINGS, world.video_dir, max_new_tokens=96, rewatch=rewatch)
    return evaluate(predictor, held_out, out / f"{model.name}-report.json", progress=False)


def report_path(report: dict) -> Path:
    """The predictions file of a report `evaluate_mode` made."""
    from rewatch_trl.eval import predictions_path

    return predictions_path(report["model"].parent / f"{report['model'].name}-report.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40, help="videos in the world")
    parser.add_argument("--held-out", type=int, default=10, help="of which held out (their questions scored)")
    # the tiny model reads colours from frames only after long SFT (at 300 steps it answers one colour whatever it sees)
    parser.add_argument("--sft-steps", type=int, default=1500)
    parser.add_argument("--sft-learning-rate", type=float, default=1e-3)
    parser.add_argument("--grpo-steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where the worlds and runs go (default: a temporary directory)")
    options = parser.parse_args()

    from datasets import Dataset

    from rewatch_trl.tiny import build_tiny_world

    out = Path(options.out or tempfile.mkdtemp(prefix="rewatch-gain-"))
    world = build_tiny_world(out / "world", num_videos=options.videos, seed=options.seed, flashes=True)
    held_videos = {f"synthetic_{i:03d}.mp4" for i in range(options.videos - options.held_out, options.videos)}
    train_rows = [row for row in world.rows if row["videos"] not in held_videos]
    held_out = Dataset.from_list([row for row in world.rows if row["videos"] in held_videos])
    train_qa = out / "train.jsonl"
    train_qa.write_text("".join(json.dumps(row) + "\n" for row in train_rows))

    logging.getLogger("qwen_vl_utils").setLevel(logging.WARNING)  # a line per decode otherwise
    results, step_seconds = {}, {}
    for mode in MODES:
        sft_dir, grpo_dir, step_seconds[mode] = train(mode, world, train_qa, out, options)
        for stage, model in (("SFT", sft_dir), ("SFT+GRPO", grpo_dir)):
            results[mode, stage] = evaluate_mode(mode, model, world, held_out, out) | {"model": model}

    def accuracy(report, kind: str, question_type: str) -> str:
        rows = [
            p
            for p in map(json.loads, report_path(report).read_text().splitlines())
            if p["question_type"] == question_type and p["multiple_choice"] == (kind == "multiple_choice")
        ]
        return f"{sum(p['accuracy'] for p in rows) / len(rows):.3f}"

    print(f"\n{len(train_rows)} training rows ({options.videos - options.held_out} videos), {len(held_out)} held-out")
    print(
        f"rows; SFT {options.sft_steps} steps (lr {options.sft_learning_rate}), GRPO {options.grpo_steps} steps, "
        f"seed {options.seed}\n"
    )
    print(f"{'':>19}  {'flash (needs a re-watch)':>24}  {'square colour (control)':>24}")
    header = f"{'mode':>9}  {'model':>8}  {'MC acc':>11}  {'open acc':>10}  {'MC acc':>11}  {'open acc':>10}"
    print(header + f"  {'format':>6}  {'re-watches':>10}")
    for (mode, stage), report in results.items():
        overall = report["overall"]
        cells = [accuracy(report, kind, kind_of) for kind_of in ("flash", "color") for kind in ("multiple_choice", "")]
        print(
            f"{mode:>9}  {stage:>8}  {cells[0]:>11}  {cells[1]:>10}  {cells[2]:>11}  {cells[3]:>10}"
            f"  {overall['format_rate']:>6.3f}  {overall.get('mean_rewatches', 0.0):>10.3f}"
        )
    print(f"\nGRPO seconds a step: imagined {step_seconds['imagined']:.2f}, agentic {step_seconds['agentic']:.2f}")
    print(f"agentic / imagined GRPO step time: {step_seconds['agentic'] / step_seconds['imagined']:.2f}x")


if __name__ == "__main__":
    main()
