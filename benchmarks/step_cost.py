"""Where the time of a video GRPO step goes, with the video shared across the G completions and without.

    python benchmarks/step_cost.py [--steps 4] [--generations 8] [--frames 32] [--family qwen3_vl]
    python benchmarks/step_cost.py --model qwen2.5-vl-7b --device cuda --paper-video --frames 192 --steps 3 --rounds 1
    python benchmarks/gpu/check.py   # the prepared GPU check: both published shapes, 64 and 192 frames

One run, the same seed and weights for every mode. By default a vision-heavy tiny world (32 frames of 112x112 px
per video: 2,048 patches, 256 visual tokens per prompt), short completions (8 tokens), G = 8, beta > 0 (a
reference pass) and two iterations per generation (an old-policy pass); `--family` picks the tiny world's model
family (`rewatch_trl/families.py`; frames of 4 pixel units a side: 112 px for Qwen2.5-VL, 128 for the Qwen3
families, the same visual tokens). The second form is the GPU run: a random-weight model of a published shape
(`tiny.PUBLISHED_SHAPES`: Qwen2.5-VL-7B, Qwen3-VL-8B) built from its config (no download), the paper's frame size
(192 frames: ~12k visual tokens a prompt), bf16, sdpa, beta 0 and SGD, with tokens/s and peak memory; a mode that
runs out of memory says so. Phases are timed by wrapping the trainer's own methods; "overhead" is everything but
generation, the forward passes and the backward.
"""

import argparse
import dataclasses
import gc
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from rewatch_trl import video as video_module  # noqa: E402
from rewatch_trl.collator import VideoCollator  # noqa: E402
from rewatch_trl.configs import GRPOConfig  # noqa: E402
from rewatch_trl.families import FAMILIES  # noqa: E402
from rewatch_trl.grpo import add_prompts  # noqa: E402
from rewatch_trl.prompts import VideoSettings  # noqa: E402
from rewatch_trl.rewards import get_reward_funcs  # noqa: E402
from rewatch_trl.tiny import PUBLISHED_SHAPES, build_tiny_tokenizer, build_tiny_world, tiny_config  # noqa: E402
from rewatch_trl.trainer import VideoGRPOTrainer  # noqa: E402
from rewatch_trl.video import VideoCache  # noqa: E402


def peak_memory(func, device: str = "cpu") -> tuple[object, float]:
    """`func()` and the peak, in MiB, of the memory its tensors held at once while it ran: on a GPU the caching
    allocator's own count; on CPU the profiler's memory timeline (every allocation and free during the call,
    categorised by tensor; a process's RSS would drown it in Python's and torch's baseline)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        output = func()
        torch.cuda.synchronize()
        return output, (torch.cuda.max_memory_allocated() - before) / 2**20
    import json
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        output = func()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA's snapshots, which CPU has not
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        _, sizes = json.loads(Path(tmp, "timeline.json").read_text())
    return output, max((sum(at_time) for at_time in sizes), default=0) / 2**20


def video_settings(frames: int, side: int = 112) -> VideoSettings:
    """`frames` frames of `side` x `side` px a video (4 pixel units: 64 patches a frame, 16 visual tokens per 2
    frames)."""
    return VideoSettings(
        video_fps=1.0,
        video_max_frames=frames,
        video_min_pixels=side * side,
        video_max_pixels=side * side,
        video_total_pixels=frames * side * side,
    )


# `--model`: the tiny world's own model, or (family, sizes) of a model built from its config with random weights: a
# published shape, or `tiny-<family>` (the family's tiny sizes: the published shapes' path, on CPU)
MODELS = {"tiny": None, **PUBLISHED_SHAPES, **{f"tiny-{family}": (family, None) for family in FAMILIES}}
# `--rollouts`: what writing the logged rollouts to <output_dir>/rollouts/ adds to a step that logs its completions
ROLLOUT_MODES = {
    "TRL's log_completions": {
        "log_completions": True,
        "log_rollouts": False,
        "logging_strategy": "steps",
        "logging_steps": 1,
    },
    "+ rollouts/ written": {
        "log_completions": True,
        "log_rollouts": True,
        "logging_strategy": "steps",
        "logging_steps": 1,
    },
}
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


def build_model(world, shape: tuple[str, dict] | None, device: str):
    """The tiny world's model, or (with `shape`, one of `MODELS`) a random model of that family and sizes built on
    `device` from its config, bf16 on a GPU, sdpa attention."""
    if shape is None:
        return AutoModelForImageTextToText.from_pretrained(world.root)
    family, sizes = shape
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = tiny_config(build_tiny_tokenizer(), sizes, family=family)
    with torch.device(device):
        return AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")


REWARDS = ["format", "accuracy", "temporal_grounding"]


def run(world, settings: VideoSettings, mode: dict, options) -> dict:
    """One timed training run of `mode` (GRPOConfig fields; `reward_funcs` the reward names, `REWARDS` by default):
    seconds a step per phase, tokens a generation batch, and the dynamic sampling rounds a generation batch."""
    mode = dict(mode)
    rewards = mode.pop("reward_funcs", REWARDS)
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(world.root)
    collator = VideoCollator(processor, settings, world.video_dir)
    dataset = add_prompts(Dataset.from_list(world.rows), collator)
    shape = MODELS[options.model]
    gpu = options.device == "cuda"
    config = dict(
        output_dir=options.out,
        per_device_train_batch_size=options.prompts * options.generations,
        num_generations=options.generations,
        max_completion_length=options.completion_tokens,
        max_steps=options.steps + 1,
        num_iterations=options.iterations,
        # a random model built from its config has no checkpoint for TRL to load a reference model from: the
        # paper's beta (0) then, and plain SGD (AdamW's states for 8.3B parameters do not fit beside them on 80 GB)
        beta=0.04 if shape is None else 0.0,
        optim="adamw_torch" if shape is None else "sgd",
        learning_rate=1e-5,
        logging_strategy="no",
        report_to="none",
        use_cpu=not gpu,
        bf16=gpu,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=options.workers,
        dataloader_persistent_workers=options.workers > 0,
    )
    args = GRPOConfig(**(config | mode))
    if gpu:  # the last run's model and trainer (reference cycles) are gone before this one's are built
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    trainer = VideoGRPOTrainer(
        model=build_model(world, shape, options.device),
        reward_funcs=get_reward_funcs(rewards),
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
            if warm_up and getattr(options, "measure_memory", False):  # a step after the warm-up, profiled
                output, result["peak MiB"] = peak_memory(lambda: step(*a, **k), options.device)
                return output
            return step(*a, **k)
        finally:
            if not warm_up:  # the first step (worker start, first decodes, allocator warm-up) is not counted
                warm_up.update(times)

    result = {}
    trainer.training_step = training_step
    # the wait for the next batch (the DataLoader workers decode the videos) happens between training steps
    trainer.get_batch_samples = timed(times, "data wait", trainer.get_batch_samples)
    tokens = []  # prompt and completion tokens of each generation batch (every step trains on one)
    generate_and_score = trainer._generate_and_score_completions

    def count_tokens(*a, **k):
        output = generate_and_score(*a, **k)
        tokens.append(int(output["prompt_mask"].sum() + output["completion_mask"].sum()))
        return output

    trainer._generate_and_score_completions = count_tokens
    trainer.train()
    result |= {phase: (value - warm_up.get(phase, 0.0)) / options.steps for phase, value in times.items()}
    result["tokens"] = sum(tokens) / len(tokens)
    # TRL's last log holds the means of its metrics over the run
    result["resample rounds"] = trainer.state.log_history[-1].get("dynamic/resample_rounds", 0.0)
    result["videos encoded"] = trainer.state.log_history[-1].get("sharing/videos_encoded", 0.0)
    if gpu:  # the run's own tensors at their peak: weights, gradients, activations, the generation's cache
        result["peak GiB"] = (torch.cuda.max_memory_allocated() - before) / 2**30
    return result


original_decode = video_module.decode_video


def world_and_settings(options, out: str):
    """The vision-heavy tiny world of `options` (`--family`, `--frames`, `--paper-video`) and how it is sampled."""
    unit = FAMILIES[options.family].pixel_unit
    if options.paper_video:  # 16 x 8 units a frame: the paper's 128 visual tokens a frame pair (448x224 px)
        world_options = dict(seconds=options.frames / 2, size=(16 * unit, 8 * unit))
        pixels = 128 * unit * unit
        settings = VideoSettings(
            video_max_frames=options.frames,
            video_min_pixels=pixels,
            video_max_pixels=pixels,
            video_total_pixels=12288 * unit * unit,
        )
    else:
        world_options = dict(seconds=options.frames, size=(8 * unit, 8 * unit))
        settings = video_settings(options.frames, 4 * unit)
    settings = dataclasses.replace(settings, video_backend=options.video_backend)
    world = build_tiny_world(f"{out}/world", num_videos=4, fps=2, family=options.family, **world_options)
    return world, settings


def fastest_runs(modes: dict, options, out: str) -> dict:
    """Each of `modes` run `options.rounds` times on the world of `options`, its fastest run kept (None: out of
    memory). Each mode runs once a round, the order reversed every other round: a slow phase of a shared machine
    (seconds long) then cannot decide a ratio."""
    world, settings = world_and_settings(options, out)
    results = dict.fromkeys(modes)
    for round_ in range(options.rounds):
        names = list(modes) if round_ % 2 == 0 else list(reversed(modes))
        for name in names:
            options.out = f"{out}/{round_}-{list(modes).index(name)}"
            try:
                result = run(world, settings, modes[name], options)
            except torch.OutOfMemoryError:
                result = None  # the per-completion mode may not fit where the shared ones do
            if options.device == "cuda":
                torch.cuda.empty_cache()
            if result is not None:
                result["step"] += result["data wait"]  # a step lasts from one to the next, waits included
                if results[name] is None or result["step"] < results[name]["step"]:
                    results[name] = result
    return results


def arguments(description: str) -> argparse.ArgumentParser:
    """The options of a timed run (`run`, `fastest_runs`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32, help="frames a video (32: 256 visual tokens a prompt)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts a step (each G completions)")
    parser.add_argument("--completion-tokens", type=int, default=8, help="max_completion_length")
    parser.add_argument("--iterations", type=int, default=2, help="num_iterations (2: an old-policy pass)")
    parser.add_argument("--video-backend", default="decord", help="VideoSettings.video_backend")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (they decode the videos ahead)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode; the fastest is kept")
    parser.add_argument(
        "--model", choices=list(MODELS), default="tiny", help="a published shape: random weights, its family's world"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), help="the tiny world's family (default qwen2_5_vl; a shape's own)"
    )
    parser.add_argument(
        "--paper-video", action="store_true", help="the paper's frame size (128 visual tokens a frame pair)"
    )
    parser.add_argument("--rollouts", action="store_true", help="the cost of writing the logged rollouts, instead")
    return parser


def parse_options(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The options of a timed run (`arguments`) from `argv` (the command line by default), with `family` resolved:
    a published shape's own, or the tiny world's (`--family`, qwen2_5_vl by default)."""
    parser = arguments(description)
    options = parser.parse_args(argv)
    if options.model == "tiny":
        options.family = options.family or "qwen2_5_vl"
        return options
    family = MODELS[options.model][0]
    if options.family not in (None, family):
        parser.error(f"--model {options.model} is a {family} shape: --family {options.family} takes --model tiny")
    options.family = family
    return options


def rollout_cost(options) -> None:
    """Steps that log their completions (TRL's `log_completions`, every step), with and without `rollouts/`."""
    from rewatch_trl.rollouts import RolloutWriter

    write, spent = RolloutWriter._write, []

    def timed_write(*args, **kwargs):  # the writer thread's own CPU time, each logged step
        start = time.thread_time()
        try:
            return write(*args, **kwargs)
        finally:
            spent.append(time.thread_time() - start)

    RolloutWriter._write = timed_write
    with tempfile.TemporaryDirectory() as tmp:
        results = fastest_runs(ROLLOUT_MODES, options, tmp)
    base, written = (results[name]["step"] for name in ROLLOUT_MODES)
    print(f"{'':<24}" + "".join(f"{name:>24}" for name in ROLLOUT_MODES))
    print(f"{'step':<24}{base:>24.3f}{written:>24.3f}")
    print(f"step time with rollouts/ written: {written / base:.3f}x ({(written - base) / base:+.1%})")
    print(
        f"the writer thread's CPU time a logged step: {sum(spent) / len(spent) * 1e3:.1f} ms on average (its first "
        f"steps write each video's thumbnails), {sum(spent) / len(spent) / base:.1%} of a step"
    )


def main() -> None:
    options = parse_options(__doc__)
    if options.rollouts:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        rollout_cost(options)
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        results = fastest_runs(MODES, options, tmp)
    model_phases = ["generate", "old/ref log-probs", "loss forward", "backward"]
    for result in filter(None, results.values()):
        result["overhead"] = result["step"] - sum(result.get(p, 0.0) for p in model_phases)
        result["tokens/s"] = result["tokens"] / result["step"]
    names = list(results)
    print(
        f"{options.model} ({options.family}) on {options.device}, G = {options.generations}, {options.steps} steps after one to warm up, "
        f"2 prompts a step, {options.frames} frames a video, fastest of {options.rounds} runs; seconds a step"
    )
    print(f"{'phase':<20}" + "".join(f"{n:>24}" for n in names))
    rows = ["data wait", "decode", *model_phases, "rewards", "overhead", "processor", "step", "tokens/s"]
    rows += ["peak GiB"] if options.device == "cuda" else []
    labels = {"processor": "  of it, processor"}
    for phase in rows:
        cells = [f"{results[n].get(phase, 0.0):>24.3f}" if results[n] else f"{'out of memory':>24}" for n in names]
        print(f"{labels.get(phase, phase):<20}" + "".join(cells))
    base, shared = results[names[0]], results[names[2]]
    if base is None or shared is None:
        print("step speed-up: n/a (a mode ran out of memory)")
        return
    print(f"{'step speed-up':<20}" + "".join(f"{base['step'] / results[n]['step']:>23.2f}x" for n in names))
    print(
        f"trainer overhead (all but generate, forward and backward), shared: {shared['overhead'] / shared['step']:.1%} of the step"
    )
    print(f"step speed-up: {base['step'] / shared['step']:.2f}x")


if __name__ == "__main__":
    main()
