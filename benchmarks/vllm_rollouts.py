"""Rollouts per second on vLLM (its CPU build here): the G copies of a prompt as one request with `n = G` (what
`VideoLLM` sends) vs one request per row (what TRL sends), the same prompts and videos, in one run.

    .venv-vllm/bin/python benchmarks/vllm_rollouts.py [--g 8] [--tokens 32] [--rounds 3]

vLLM's prefix caching and encoder cache are on, as in a real run; both are reset before every round, as new
prompts would find them at each step of a run, so per-row requests profit from caching among a prompt's G copies
only. Each mode runs `--rounds` times, alternating; the fastest round of each is kept.
"""

import argparse
import os
import tempfile
import time


os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--g", type=int, default=8, help="completions per prompt")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per completion")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--world", help="a tiny world directory (default: built in a temporary one)")
    args = parser.parse_args()

    from transformers import AutoConfig, AutoProcessor
    from vllm import LLM, SamplingParams

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, build_tiny_world
    from rewatch_trl.vllm_video import VideoLLM, vllm_video_requests

    world = build_tiny_world(args.world or tempfile.mkdtemp(prefix="tiny-world-"), seed=0)
    config = AutoConfig.from_pretrained(world.root)
    collator = VideoCollator(AutoProcessor.from_pretrained(world.root), TINY_VIDEO_SETTINGS, world.video_dir)
    batch = collator(world.rows)
    keep = batch["attention_mask"].bool()
    prompts = [ids[mask].tolist() for ids, mask in zip(batch["input_ids"], keep, strict=True)]
    videos = collator.videos(world.rows)
    llm = VideoLLM(LLM(model=str(world.root), dtype="float32", enforce_eager=True, max_model_len=1024, seed=0), config)
    # TRL's requests: each prompt repeated G times, one row each
    requests = [{"prompt_token_ids": ids} for ids in prompts for _ in range(args.g)]
    row_videos = [video for video in videos for _ in range(args.g)]

    def params():
        return SamplingParams(n=1, temperature=1.0, max_tokens=args.tokens, ignore_eos=True)

    def grouped():  # VideoLLM: one request a prompt, n = G
        return llm.generate(requests, sampling_params=params(), videos=row_videos, use_tqdm=False)

    def per_row():  # the same requests, one a row
        sent = vllm_video_requests(requests, row_videos, config.video_token_id)
        row_params = params()
        row_params.logit_bias = dict(llm.logit_bias)
        return llm.llm.generate(sent, sampling_params=row_params, use_tqdm=False)

    best = {"n=G": float("inf"), "per-row": float("inf")}
    grouped()  # warm-up: the engine's first steps
    for _ in range(args.rounds):
        for name, run in (("n=G", grouped), ("per-row", per_row)):
            llm.reset_prefix_cache()  # and the encoder cache: a new step's prompts find neither
            start = time.perf_counter()
            outputs = run()
            best[name] = min(best[name], time.perf_counter() - start)
            assert sum(len(output.outputs) for output in outputs) == len(requests)
    rollouts = len(requests)
    print(f"{len(prompts)} prompts x G={args.g}, {args.tokens} tokens each, {args.rounds} rounds (fastest kept)")
    for name, seconds in best.items():
        print(f"{name:>8}: {rollouts / seconds:8.1f} rollouts/s ({seconds:.3f} s)")
    print(f"rollouts n=G vs per-row: {best['per-row'] / best['n=G']:.2f}x")


if __name__ == "__main__":
    main()
