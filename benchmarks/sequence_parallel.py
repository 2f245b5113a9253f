"""Sequence parallelism's memory: measured on CPU (a long prompt on a tiny model scaled so the prompt dominates), and
predicted for the published 7B and 8B shapes on one 8-GPU node.

    python benchmarks/sequence_parallel.py                 # measure SP 1 and 2 (512 frames), then the prediction
    python benchmarks/sequence_parallel.py --predict-only  # the prediction table alone

Measured: each setting is launched as its own job (`torchrun`, gloo, one process per group member): the processor's
inputs for one video of `--frames` frames of 112x112 px (16 visual tokens a frame pair), a completion of 64 tokens,
one forward and backward of the policy's log-prob pass (a warm-up pass first), with the language model and the vision
tower split across the group (`rewatch_trl/sequence_parallel.py`) at SP 2. Each process samples its resident memory
every 2 ms; the figure is the peak above what it held before the pass. The log-probs of both settings are compared.

Predicted (`predict`): the bytes a GPU holds for one prompt of G = 8 completions of 2,048 tokens at the paper's frame
size (64 visual tokens a frame), bf16, gradient checkpointing, ZeRO-3 over the node's 8 GPUs, vLLM's share 0.4, the
prompt prefix shared; the largest frame count that fits, at SP 1, 2, 4, 8, with the vision tower trained or frozen.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FRAME_SIDE = 112
COMPLETION = 64
# the scaled tiny model: a language model wide enough that the prompt's activations dominate the fixed costs
TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
}
VISION = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "out_hidden_size": 768,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}


class PeakMemory:
    """The peak resident memory of this process while the block runs, above what it held when it started."""

    def __enter__(self):
        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def worker(frames: int, out: Path) -> None:
    """One process of a measured setting (`torchrun`): the pass, its peak memory and log-probs into `out`."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    from rewatch_trl.sequence_parallel import SequenceGroup, SequenceParallel
    from rewatch_trl.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_config

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    processor = build_tiny_processor(tokenizer)
    config = tiny_config(tokenizer, sizes={"text": TEXT, "vision": VISION})
    model = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)](config).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    video = np.random.default_rng(0).integers(0, 255, (frames, FRAME_SIDE, FRAME_SIDE, 3), dtype=np.uint8)
    text = (
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
    )
    pixels = FRAME_SIDE * FRAME_SIDE
    inputs = processor(
        text=[text],
        videos=[video],
        return_tensors="pt",
        videos_kwargs={"do_sample_frames": False, "min_pixels": pixels, "max_pixels": pixels, "fps": 2.0},
    )
    completion = torch.randint(10, len(tokenizer) // 2, (1, COMPLETION), generator=torch.Generator().manual_seed(1))
    inputs["input_ids"] = torch.cat([inputs["input_ids"], completion], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion)], 1)
    parallel = SequenceParallel(model, SequenceGroup.build(size)) if size > 1 else None

    def log_probs():
        model.zero_grad()
        with parallel.splitting() if parallel else contextlib.nullcontext():
            logits = model(**inputs, logits_to_keep=COMPLETION + 1).logits[:, :-1]
        logps = logits.log_softmax(-1).gather(-1, completion[..., None])[..., 0]
        (-logps.mean()).backward()
        return logps.detach()

    log_probs()  # warm-up: the allocator's and the kernels' first-call costs out of the measured pass
    with PeakMemory() as peak:
        logps = log_probs()
    tokens = inputs["input_ids"].size(1)
    record = {"peak_mib": peak.mib, "tokens": tokens, "logps": logps[0].tolist()}
    rank = dist.get_rank() if size > 1 else 0
    (out / f"sp{size}-rank{rank}.json").write_text(json.dumps(record))
    if size > 1:
        dist.barrier()
        dist.destroy_process_group()


def measure(frames: int, sizes: list[int]) -> dict:
    """Launch each setting and collect its processes' records."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for size in sizes:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(size)]
            command += ["--master_port", str(29400 + size), __file__, "--worker", str(frames), str(out)]
            env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"SP {size} failed:\n{done.stderr[-3000:]}")
            results[size] = [json.loads((out / f"sp{size}-rank{r}.json").read_text()) for r in range(size)]
    return results


# bytes a token or a patch holds in bf16 (`predict`)
BF16 = 2


def predict(name: str, frames: int, size: int, frozen: bool, generations: int = 8, completion: int = 2048) -> float:
    """The bytes one GPU of a group of `size` holds in a step's log-prob pass (the text below `predict_table`)."""
    from rewatch_trl.tiny import PUBLISHED_SHAPES

    family, sizes = PUBLISHED_SHAPES[name]
    text, vision = sizes["text"], sizes["vision"]
    hidden, layers, mlp = text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"]
    head = text.get("head_dim", hidden // text["num_attention_heads"])
    prefix = frames * 64 + 200  # 64 visual tokens a frame at the paper's size, ~200 text tokens
    patches = frames * 256
    # each layer's input kept (checkpointing), and one layer's intermediates while it is recomputed
    per_token = hidden * BF16 * layers + (4 * mlp + 6 * hidden) * BF16
    language = (prefix / size + generations * completion) * per_token
    # the shared prefix's keys and values, every layer's, gathered whole on each process; the prompt's embeddings
    # and the gathered last hidden states, whole
    keys = prefix * layers * 2 * text["num_key_value_heads"] * head * BF16
    whole = 2 * prefix * hidden * BF16
    vision_width, blocks = vision["hidden_size"], vision["depth"]
    per_patch = vision_width * BF16 * blocks + (4 * vision["intermediate_size"] + 6 * vision_width) * BF16
    tower = 0 if frozen else patches / size * per_patch
    pixel_values = patches * 3 * 2 * vision.get("patch_size", 14) ** 2 * BF16
    return language + keys + whole + tower + pixel_values


def budget(name: str, frozen: bool, gpus: int = 8, memory: float = 80e9, vllm_share: float = 0.4) -> float:
    """What a GPU has for a step: its memory, less vLLM's share and its ZeRO-3 part of the weights, gradients and
    AdamW state (16 bytes a trained parameter, 2 a frozen one) over the node's `gpus`."""
    total, tower = parameters(name)
    state = (total - tower) * 16 + tower * (2 if frozen else 16)
    return memory * (1 - vllm_share) - state / gpus


def parameters(name: str) -> tuple[int, int]:
    """The parameters of a published shape, and of its vision tower (built on the meta device: no memory)."""
    import torch
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    from rewatch_trl.tiny import PUBLISHED_SHAPES, build_tiny_tokenizer, tiny_config

    family, sizes = PUBLISHED_SHAPES[name]
    config = tiny_config(build_tiny_tokenizer(), sizes=sizes, family=family)
    with torch.device("meta"):
        model = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)](config)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.model.visual.parameters())


def largest_fit(name: str, size: int, frozen: bool, vllm_share: float) -> int:
    room = budget(name, frozen, vllm_share=vllm_share)
    frames = 0
    while predict(name, frames + 8, size, frozen) <= room:
        frames += 8
    return frames


def predict_table(vllm_share: float) -> str:
    lines = [
        "| shape | tower | SP 1 | SP 2 | SP 4 | SP 8 | a step at SP 8, 1,024 frames |",
        "| --- | --- |" + " ---: |" * 5,
    ]
    for name in ("qwen2.5-vl-7b", "qwen3-vl-8b"):
        for frozen in (False, True):
            fits = [largest_fit(name, size, frozen, vllm_share) for size in (1, 2, 4, 8)]
            step = predict(name, 1024, 8, frozen) / 1e9
            cells = " | ".join(f"{f:,}" for f in fits)
            lines.append(f"| {name} | {'frozen' if frozen else 'trained'} | {cells} | {step:.1f} GB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--predict-only", action="store_true")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), Path(args.worker[1]))
        return
    if not args.predict_only:
        results = measure(args.frames, [1, 2])
        alone, split = results[1][0], results[2]
        difference = max(abs(a - b) for r in split for a, b in zip(alone["logps"], r["logps"], strict=True))
        print(
            f"{args.frames} frames, {alone['tokens']:,} tokens a row; log-probs of SP 2 within {difference:.1e} of SP 1"
        )
        print("| setting | peak MiB a process (above the model) |\n| --- | ---: |")
        print(f"| SP 1 | {alone['peak_mib']:.0f} |")
        for rank, record in enumerate(split):
            print(f"| SP 2, rank {rank} | {record['peak_mib']:.0f} |")
        most = max(record["peak_mib"] for record in split)
        print(f"sequence parallelism, 2 processes: {alone['peak_mib'] / most:.2f}x less peak memory a process")
    for share, generation in ((0.4, "vLLM colocated at 0.4"), (0.0, "transformers generation (no vLLM share)")):
        print(f"\nlargest frame count that fits a GPU of 80 GB at G = 8, {generation}:")
        print(predict_table(share))


if __name__ == "__main__":
    main()
