"""T-GRPO's temporal contrast (Video-R1, arXiv 2503.21776) and the gate of Video-R1's length bonus, as rules on the
rewards of a generation batch (all processes' rows, TRL's order: the G rollouts of a prompt consecutive).

T-GRPO samples more rollouts of a video prompt with its frames in a random order; they only measure. With p the mean
accuracy of the G ordered rollouts and p̃ that of the shuffled ones, if p ≥ ratio · p̃ each ordered rollout whose
accuracy is above 0.1 gets +alpha on its accuracy: the model is paid for answers that need the frames' order.
Video-R1 applies it to a batch of one prompt; here, to each prompt (`VideoGRPOTrainer` with `temporal_contrast`).

Example:
```python
>>> import torch
>>> temporal_bonus(torch.tensor([1.0, 0.0, 0.05, 1.0]), torch.tensor([0.0, float("nan")]), 2, alpha=0.3).tolist()
[0.30000001192092896, 0.0, 0.0, 0.0]
```
"""

import dataclasses
import hashlib

import torch

from rewatch_trl.rewards import RIGHT
from rewatch_trl.video import SampledVideo


def keyed_generator(*key) -> torch.Generator:
    """A random generator seeded by `key` alone: the same draws on every process (and on a resumed run)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def frame_order(frames: int, key: str, step: int, seed: int) -> torch.Tensor:
    """A random order of `frames` frames (`torch.randperm`, as Video-R1 shuffles), the same on every process for the
    same prompt `key`, training step and seed: the shuffled rollouts of a prompt may sit on several processes."""
    return torch.randperm(frames, generator=keyed_generator("frames", seed, step, key))


def shuffled(video: SampledVideo, order: torch.Tensor) -> SampledVideo:
    """`video` with its frames in `order`; the timestamps (metadata) stay those of the ordered frames."""
    return dataclasses.replace(video, frames=video.frames[order])


def temporal_bonus(
    accuracy: torch.Tensor,
    shuffled_accuracy: torch.Tensor,
    num_generations: int,
    alpha: float = 0.3,
    ratio: float = 0.8,
) -> torch.Tensor:
    """What T-GRPO adds to each ordered rollout's accuracy.

    Args:
        accuracy: the ordered rollouts' accuracy rewards, (prompts × G,); NaN where unscored.
        shuffled_accuracy: per prompt, the mean accuracy of its shuffled rollouts; NaN where it has none (an image
            row, a video left out): no temporal term.
        num_generations: G.
        alpha, ratio: the bonus, and how much of the shuffled accuracy the ordered one must reach.
    """
    grouped = accuracy.view(-1, num_generations)
    ordered = torch.nanmean(grouped, dim=1)
    paid = ~torch.isnan(shuffled_accuracy) & (ordered >= ratio * shuffled_accuracy)
    right = torch.nan_to_num(grouped, nan=0.0) > RIGHT
    return (alpha * (paid[:, None] & right)).flatten().to(accuracy.dtype)


def length_band_gate(accuracy: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Where Video-R1 pays its length bonus: rollouts whose accuracy is above 0.1, in prompts where more than one
    rollout's is (`rewards.length_band_reward` holds the band itself).

    Example:
    ```python
    >>> length_band_gate(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2).tolist()
    [False, False, False, False]
    >>> length_band_gate(torch.tensor([1.0, 0.5, 1.0, 0.1]), 2).tolist()
    [True, True, False, False]
    ```
    """
    right = torch.nan_to_num(accuracy, nan=0.0).view(-1, num_generations) > RIGHT
    return (right & (right.sum(dim=1, keepdim=True) > 1)).flatten()
