"""A reward that differs between any two texts, for launched GRPO runs of an untrained tiny model: its ReAct rewards
are all 0, and GRPO's advantages (and gradients) with them. A run takes it by import path, with tests/ on its
`PYTHONPATH`: `--reward_funcs varied_reward.characters --reward_weights 1.0`."""

import zlib

from rewatch_trl.react import completion_text


def characters(completions, **kwargs) -> list[float]:
    """The completion's length in characters, over 100, plus under 0.001 from its text's CRC-32: two texts of one
    length (8 random tokens of the tiny model's often are) still differ."""
    texts = [completion_text(completion) for completion in completions]
    return [len(text) / 100 + zlib.crc32(text.encode()) / 2**32 / 1000 for text in texts]


def characters_but_on_the_first_video(completions, videos, **kwargs) -> list[float]:
    """`characters`, but 1.0 on every completion about synthetic_000.mp4: its prompts' rewards never vary."""
    flat = [str(video).endswith("synthetic_000.mp4") for video in videos]
    return [1.0 if f else c for f, c in zip(flat, characters(completions), strict=True)]


def right_on_open_questions(completions, multiple_choice, **kwargs) -> list[float]:
    """1.0 on the open-ended rows, 0.0 on the multiple-choice ones: an accuracy that marks some answers wrong."""
    return [0.0 if mc else 1.0 for mc in multiple_choice]


def characters_noting_the_engine(completions, videos, **kwargs) -> list[float]:
    """`characters`, each call noted as a line of `$ENGINE_NOTES/rank<R>.jsonl`: the process's rank, the size of the
    colocated vLLM engine's tensor parallel group in it, and the videos of its rows."""
    import json
    import os
    from pathlib import Path

    import torch.distributed as dist
    from vllm.distributed import parallel_state

    rank = dist.get_rank()
    note = {
        "rank": rank,
        "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
        "videos": sorted({str(video) for video in videos}),
    }
    with open(Path(os.environ["ENGINE_NOTES"]) / f"rank{rank}.jsonl", "a") as notes:
        notes.write(json.dumps(note) + "\n")
    return characters(completions)
