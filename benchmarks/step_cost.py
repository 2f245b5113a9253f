"""Where the time of a video GRPO step goes, with the video shared across the G completions and without.

    python benchmarks/step_cost.py [--steps 4] [--generations 8]

One run, the same seed and weights for every mode: a vision-heavy tiny world (32 frames of 112x112 px per
video: 2,048 patches, 256 visual tokens per prompt), short completions (8 tokens), G = 8, beta > 0 (a
reference pass) and two iterations per generation (an old-policy pass). Phases are timed by wrapping the
trainer's own methods; "overhead" is everything but generation, the forward passes and the backward.
"""

import argparse
import os
import tempfile
import time
from collections import defaultdict


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from rewatch_trl import video as video_module  # noqa: E402
from rewatch_trl.collator import VideoCollator  # noqa: E402
from rewatch_trl.configs import GRPOConfig  # noqa: E402
from rewatch_trl.grpo import add_prompts  # noqa: E402
from rewatch_trl.prompts import VideoSettings  # noqa: E402
from rewatch_trl.rewards import get_reward_funcs  # noqa: E402
from rewatch_trl.tiny import build_tiny_world  # noqa: E402
from rewatch_trl.trainer import VideoGRPOTrainer  # noqa: E402
from rewatch_trl.video import VideoCache  # noqa: E402


def video_settings(frames: int) -> VideoSettings:
    """`frames` frames of 112x112 px a video: 64 patches a frame, 16 visual tokens per 2 frames."""
    return VideoSettings(
        video_fps=1.0,
        video_max_frames=frames,
        video_min_pixels=112 * 112,
        video_max_pixels=112 * 112,
        video_total_pixels=frames * 112 * 112,
    )


MODES = {
    "per completion (stock)": {"share_video_features": False, "share_prompt_prefix": False},
    "vision shared": {"share_video_features": True, "share_prompt_prefix": False},
    "vision + prefix shared": {"share_video_features": True, "share_prompt_prefix": True},
    "+ frozen tower": {"share_video_features": True, "share_prompt_prefix": True, "freeze_vision_tower": True},
}


def timed(times: dict, phase: str, func):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            times[phase] += time.perf_counter() - start

    return wrapper


def run(world, settings: VideoSettings, mode: dict, steps: int, generations: int, workers: int, out: str) -> dict:
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(world.root)
    collator = VideoCollator(processor, settings, world.video_dir)
    dataset = add_prompts(Dataset.from_list(world.rows), collator)
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=2 * generations,
        num_generations=generations,
        max_completion_length=8,
        max_steps=steps + 1,
        num_iterations=2,
        beta=0.04,
        learning_rate=1e-5,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=workers,
        **mode,
    )
    trainer = VideoGRPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(world.root),
        reward_funcs=get_reward_funcs(["format", "accuracy", "temporal_grounding"]),
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        video_settings=settings,
        video_root=world.video_dir,
        video_cache=VideoCache(),
    )
    times = defaultdict(float)
    trainer._generate_single_turn = timed(times, "generate", trainer._generate_single_turn)
    trainer._calculate_rewards = timed(times, "rewards", trainer._calculate_rewards)
    video_module.decode_video = timed(times, "decode", original_decode)
    # part of the overhead: the processor call that turns the prompts and their frames into model inputs
    trainer.video_collator.encode = timed(times, "processor", trainer.video_collator.encode)
    logps = trainer._get_per_token_logps_and_entropies
    in_loss = {"on": False}

    def logps_phase(*a, **k):
        phase = "loss forward" if in_loss["on"] else "old/ref log-probs"
        return timed(times, phase, logps)(*a, **k)

    trainer._get_per_token_logps_and_entropies = logps_phase
    compute_loss = trainer._compute_loss

    def loss(*a, **k):
        in_loss["on"] = True
        try:
            return compute_loss(*a, **k)
        finally:
            in_loss["on"] = False

    trainer._compute_loss = loss
    trainer.accelerator.backward = timed(times, "backward", trainer.accelerator.backward)
    step = timed(times, "step", trainer.training_step)
    warm_up = {}

    def training_step(*a, **k):
        try:
            return step(*a, **k)
        finally:
            if not warm_up:  # the first step (worker start, first decodes, allocator warm-up) is not counted
                warm_up.update(times)

    trainer.training_step = training_step
    # the wait for the next batch (the DataLoader workers decode the videos) happens between training steps
    trainer.get_batch_samples = timed(times, "data wait", trainer.get_batch_samples)
    trainer.train()
    return {phase: (value - warm_up.get(phase, 0.0)) / steps for phase, value in times.items()}


original_decode = video_module.decode_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32, help="frames a video (32: 256 visual tokens a prompt)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (they decode the videos ahead)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        world = build_tiny_world(f"{tmp}/world", num_videos=4, seconds=args.frames, fps=2, size=(224, 224), seed=0)
        settings = video_settings(args.frames)
        results = {}
        for name, mode in MODES.items():
            results[name] = run(
                world, settings, mode, args.steps, args.generations, args.workers, f"{tmp}/{len(results)}"
            )
    model_phases = ["generate", "old/ref log-probs", "loss forward", "backward"]
    for result in results.values():
        result["step"] += result["data wait"]  # a step lasts from one to the next, waits included
        result["overhead"] = result["step"] - sum(result.get(p, 0.0) for p in model_phases)
    names = list(results)
    print(
        f"G = {args.generations}, {args.steps} steps after one to warm up, 2 prompts a step, {args.frames // 2 * 16} visual tokens "
        "a prompt; seconds a step"
    )
    print(f"{'phase':<20}" + "".join(f"{n:>24}" for n in names))
    rows = ["data wait", "decode", *model_phases, "rewards", "overhead", "processor", "step"]
    labels = {"processor": "  of it, processor"}
    for phase in rows:
        print(f"{labels.get(phase, phase):<20}" + "".join(f"{results[n].get(phase, 0.0):>24.3f}" for n in names))
    base = results[names[0]]["step"]
    print(f"{'step speed-up':<20}" + "".join(f"{base / results[n]['step']:>23.2f}x" for n in names))
    shared = results[names[2]]
    print(
        f"trainer overhead (all but generate, forward and backward), shared: {shared['overhead'] / shared['step']:.1%} of the step"
    )
    print(f"step speed-up: {base / shared['step']:.2f}x")


if __name__ == "__main__":
    main()
