"""How many sequences TRL's importance-sampling correction masks when vLLM and the trainer both run in bf16: the
engines' rounding alone, summed over a completion's tokens, at the recipe's sampling (temperature 0.8) and lengths.

    .venv-vllm/bin/python benchmarks/importance_sampling.py [--lengths 64 512 2048] [--prompts 4]

vLLM's CPU build and the trainer (`VideoGRPOTrainer`, colocated vLLM, as a recipe builds them) on the tiny world,
G = 8, completions of exactly each length (`ignore_eos`), top_p 1.0 and 0.9 (the paper's; the trainer's side of the
correction on the sampler's support), weights and compute in bf16 (the recipes' `dtype: bfloat16`, `bf16: true`),
then in fp32 as the control. For each: the per-sequence log-ratio sum (TRL's `sequence_*` modes), the share of
sequences TRL's default `sequence_mask` (ratio above `vllm_importance_sampling_clip_max` 3.0) zeroes, and the
share of tokens `token_mask` would zero; one table, side by side.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def trainer_for(world, dtype, length, top_p, prompts, out):
    """A `VideoGRPOTrainer` with colocated vLLM as a recipe builds it, at the recipe's temperature."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.configs import GRPOConfig
    from rewatch_trl.grpo import add_prompts
    from rewatch_trl.rewards import get_reward_funcs
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS
    from rewatch_trl.trainer import VideoGRPOTrainer

    processor = AutoProcessor.from_pretrained(world.root, padding_side="left")
    model = AutoModelForImageTextToText.from_pretrained(world.root, dtype=getattr(torch, dtype))
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, world.video_dir)
    dataset = add_prompts(Dataset.from_list(world.rows[:prompts]), collator)
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=length,
        temperature=0.8,
        top_p=top_p,
        generation_kwargs={"ignore_eos": True},
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=length + 512,
        bf16=dtype == "bfloat16",
        use_cpu=True,
        report_to="none",
        seed=0,
    )
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(["format"]),
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        video_settings=TINY_VIDEO_SETTINGS,
        video_root=world.video_dir,
    )
    return trainer, dataset


def measure(trainer, dataset, prompts):
    import torch

    rows = [dataset[i] for i in range(prompts) for _ in range(8)]
    log_ratios, token_masked, tokens = [], 0, 0
    for start in range(0, len(rows), 8):
        output = trainer._generate_and_score_completions(rows[start : start + 8])
        mask = output["completion_mask"].bool()
        # the trainer's old-policy log-probs on the sampler's support, as the correction compared them
        kept = 0.0 if trainer._old_kept_mass is None else trainer._old_kept_mass
        difference = ((output["old_per_token_logps"] - kept) - output["sampling_per_token_logps"]).masked_fill(
            ~mask, 0
        )
        log_ratios.append(difference.sum(-1))
        token_masked += int((difference.exp() > 3.0)[mask].sum())
        tokens += int(mask.sum())
    log_ratios = torch.cat(log_ratios)
    return {
        "sequences": len(log_ratios),
        "log_ratio_std": log_ratios.std().item(),
        "log_ratio_max_abs": log_ratios.abs().max().item(),
        "sequence_mask": (log_ratios.exp() > 3.0).float().mean().item(),
        "token_mask": token_masked / tokens,
    }


def settings_of(trainer, top_p, length):
    """One engine a dtype (an engine's memory is not given back within a process): the sampling settings set on the
    trainer and on TRL's generation, as a recipe would have set them."""
    from rewatch_trl.sampling import truncates

    for holder in (trainer, trainer.vllm_generation):
        holder.top_p, holder.max_completion_length = top_p, length
    trainer._sampler_truncates = truncates(top_p=top_p)


def run_dtype(dtype, lengths, prompts):
    from rewatch_trl.tiny import build_tiny_world

    world = build_tiny_world(tempfile.mkdtemp(prefix="tiny-world-"), seed=0)
    trainer, dataset = trainer_for(world, dtype, max(lengths), 1.0, prompts, tempfile.mkdtemp())
    results = []
    for top_p in (1.0, 0.9):
        for length in lengths:
            settings_of(trainer, top_p, length)
            results.append((dtype, top_p, length, measure(trainer, dataset, prompts)))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 512, 2048])
    parser.add_argument("--prompts", type=int, default=4, help="prompts a setting (G = 8 sequences each)")
    parser.add_argument("--dtype", help=argparse.SUPPRESS)  # one dtype, in a process of its own
    args = parser.parse_args()
    if args.dtype:
        print("RESULTS " + json.dumps(run_dtype(args.dtype, args.lengths, args.prompts)))
        return
    results = []
    for dtype in ("bfloat16", "float32"):
        command = [sys.executable, __file__, "--dtype", dtype, "--prompts", str(args.prompts), "--lengths"]
        done = subprocess.run(command + [str(n) for n in args.lengths], capture_output=True, text=True, check=True)
        (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
        results += json.loads(line.removeprefix("RESULTS "))
    print(
        "| dtype | top_p | tokens | sequences | log-ratio sum std | max abs | sequence_mask zeroes | token_mask zeroes |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dtype, top_p, length, r in results:
        print(
            f"| {dtype} | {top_p} | {length} | {r['sequences']} | {r['log_ratio_std']:.3f} | "
            f"{r['log_ratio_max_abs']:.3f} | {100 * r['sequence_mask']:.1f} % | {100 * r['token_mask']:.3f} % |"
        )


if __name__ == "__main__":
    main()
