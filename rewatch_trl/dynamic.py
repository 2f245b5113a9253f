"""Dynamic sampling (DAPO, arXiv 2503.14476): a prompt whose G rewards are all equal gives each rollout advantage 0;
it cost a generation and teaches nothing. DAPO samples further prompts and keeps the groups that vary until the
batch is full. `VideoGRPOTrainer` with `dynamic_sampling` generates refill batches (`refill_prompts`) and puts their
varied groups in the place of the batch's zero-variance ones (`replace_groups`), at most `max_resample_rounds` times.

Example:
```python
>>> import torch
>>> zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), float("nan")]), 2).tolist()
[True, False, True]
```
"""

import torch
import torch.nn.functional as F
from trl.trainer.utils import nanstd

from rewatch_trl.temporal import keyed_generator


def zero_variance_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per prompt (G consecutive rows of the batch's total rewards), whether its rewards do not vary, as TRL tells it
    (`frac_reward_zero_std`: the group's std close to 0); a group with no scored row teaches nothing either."""
    grouped = rewards.view(-1, num_generations)
    std = torch.nan_to_num(nanstd(grouped, dim=1), nan=0.0)
    return torch.isclose(std, torch.zeros_like(std)) | torch.isnan(grouped).all(dim=1)


def refill_prompts(dataset_size: int, prompts: int, step: int, round_: int, seed: int) -> list[int]:
    """The dataset rows of refill round `round_` at training step `step`: `prompts` distinct rows, drawn the same on
    every process (and again on a resumed run) from the seed, the step and the round."""
    return torch.randperm(dataset_size, generator=keyed_generator("refill", seed, step, round_))[:prompts].tolist()


# The rows' tensors of a scored generation batch (`GRPOTrainer._generate_and_score_completions`) and how to pad them.
PROMPT_KEYS = {"prompt_ids": "pad", "prompt_mask": 0}
COMPLETION_KEYS = {
    "completion_ids": "pad",
    "completion_mask": 0,
    "tool_mask": 1,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "importance_sampling_ratio": 0.0,  # (rows, tokens) in TRL's token modes, (rows, 1) in its sequence modes
}
ROW_KEYS = {"advantages", "video_inputs", "clip_inputs"}


def _padded(a: torch.Tensor, b: torch.Tensor, value, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.dim() < 2:
        return a, b
    width = max(a.size(1), b.size(1))
    return tuple(
        F.pad(t, (width - t.size(1), 0) if side == "left" else (0, width - t.size(1)), value=value) for t in (a, b)
    )


def replace_groups(batch: dict, refill: dict, pairs: list[tuple[int, int]], num_generations: int, pad_id: int) -> dict:
    """`batch` with group `slot` (G consecutive rows) replaced by `refill`'s group `source`, for each pair; both are
    this process's rows of scored generation batches. Prompts are left-padded, completions right-padded to the wider
    of the two. `num_items_in_batch` spans all processes: the caller counts it again."""
    rows = [
        (slot * num_generations + i, source * num_generations + i)
        for slot, source in pairs
        for i in range(num_generations)
    ]
    into = torch.tensor([row for row, _ in rows], dtype=torch.long)
    taken = torch.tensor([row for _, row in rows], dtype=torch.long)
    unknown = set(batch) - set(PROMPT_KEYS) - set(COMPLETION_KEYS) - ROW_KEYS - {"num_items_in_batch"}
    if unknown:
        raise NotImplementedError(f"dynamic sampling cannot replace rows of the batch's {sorted(unknown)}")
    merged = dict(batch)
    for key, value in batch.items():
        if key == "num_items_in_batch" or not rows:
            continue
        if isinstance(value, list):
            merged[key] = list(value)
            for row, source in rows:
                merged[key][row] = refill[key][source]
            continue
        fill = {**PROMPT_KEYS, **COMPLETION_KEYS}.get(key, 0)
        fill = pad_id if fill == "pad" else fill
        side = "left" if key in PROMPT_KEYS else "right"
        mine, theirs = _padded(value, refill[key], fill, side)
        mine = mine.clone()
        mine[into.to(mine.device)] = theirs[taken.to(theirs.device)]
        merged[key] = mine
    return merged
