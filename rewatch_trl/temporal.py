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
from accelerate.utils import gather_object

from rewatch_trl.collator import prompt_key, split_video_inputs
from rewatch_trl.features import Feature, accuracy_column
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


class LengthBand(Feature):
    """Video-R1's length bonus paid only to right answers of prompts whose accuracy varies (`length_band_gate`): on
    when the rewards hold `length_band` and `accuracy_reward` names the accuracy."""

    def __init__(self, accuracy: int, band: int):
        self.accuracy, self.band = accuracy, band

    @classmethod
    def attach(cls, trainer) -> "LengthBand | None":
        accuracy, names = accuracy_column(trainer), trainer.reward_func_names
        if accuracy is None or "length_band_reward" not in names:
            return None
        return cls(accuracy, names.index("length_band_reward"))

    def rewarded(self, trainer, generation, inputs, prompts, rewards):
        if generation.mode != "train":
            return
        band = rewards[:, self.band]
        gate = length_band_gate(rewards[:, self.accuracy], trainer.num_generations) | torch.isnan(band)
        rewards[:, self.band] = torch.where(gate, band, 0.0)


class TemporalContrast(Feature):
    """T-GRPO (`temporal_contrast`): in training, `rollouts` more rollouts of each video prompt with its frames
    shuffled, scored by the accuracy reward alone, and the bonus of `temporal_bonus` on the ordered rollouts."""

    def __init__(self, accuracy: int, rollouts: int):
        self.accuracy, self.rollouts = accuracy, rollouts

    @classmethod
    def attach(cls, trainer) -> "TemporalContrast | None":
        args = trainer.args
        if not getattr(args, "temporal_contrast", False):
            return None
        accuracy = accuracy_column(trainer)
        if accuracy is None:
            raise ValueError("temporal_contrast adds its bonus to the accuracy reward: name it in accuracy_reward")
        if isinstance(trainer.reward_funcs[accuracy], torch.nn.Module):
            raise ValueError("temporal_contrast scores the shuffled rollouts with accuracy_reward: a function")
        if getattr(args, "agentic", False):
            # a clip is decoded from the file at the times an action names: a shuffled rollout would be shown
            # the video's true order again, which is what the contrast takes away
            raise NotImplementedError(
                "temporal_contrast with rewatch_mode='agentic': the clips a shuffled rollout "
                "names would come from the ordered video; use the paper's mode"
            )
        rollouts = args.temporal_rollouts or trainer.num_generations // 2
        if not 1 <= rollouts <= trainer.num_generations:
            raise ValueError(f"temporal_rollouts must be 1 to num_generations ({trainer.num_generations})")
        return cls(accuracy, rollouts)

    def generated(self, trainer, generation, prompts, output):
        if generation.mode == "train":
            generation.shuffled = self.shuffled_rollouts(trainer, generation, prompts)
        return output

    def shuffled_rollouts(self, trainer, generation, prompts: list) -> tuple[list[int], list[list[int]]]:
        """The rollouts of the rows at hand with their video's frames shuffled: the rows at positions 0 to
        `rollouts` - 1 of their prompt's G (counted over all processes) each sample one; a prompt's shuffled rows
        share one order of its frames, one processor call and one vision pass. They are only scored: this returns
        the rows shuffled and their completions, and nothing of them reaches the loss."""
        G, offset = trainer.num_generations, trainer.accelerator.process_index * len(prompts)
        videos, samples, device = generation.videos, generation.samples, trainer.accelerator.device
        picked = [
            i
            for i in range(len(prompts))
            if (offset + i) % G < self.rollouts and isinstance(videos[i], SampledVideo) and not generation.left_out[i]
        ]
        counts = trainer.accelerator.gather(torch.tensor([len(picked)], device=device))
        if not counts.any():
            return [], []
        # every process generates (under ZeRO-3 generation gathers the weights, a collective): one with no video row
        # to shuffle samples its first row, unshuffled, and drops it
        rows = picked or [0]
        distinct = list({id(samples[i]): i for i in rows}.values())
        step, seed = trainer.state.global_step, trainer.args.seed
        keyed = [prompt_key(prompts[i]) for i in distinct]
        shown = [
            shuffled(videos[i], frame_order(len(videos[i].frames), key, step, seed)) if picked else videos[i]
            for i, key in zip(distinct, keyed, strict=True)
        ]
        collator = trainer.video_collator
        batch = collator.encode([collator.prompt_text(prompts[i]) for i in distinct], shown, device=device)
        keep = batch["attention_mask"].bool()
        ids = [row_ids[row].tolist() for row_ids, row in zip(batch["input_ids"], keep, strict=True)]
        types = [row_types[row].tolist() for row_types, row in zip(batch["mm_token_type_ids"], keep, strict=True)]
        encoded = [{key: value.to(device) for key, value in sample.items()} for sample in split_video_inputs(batch)]
        which = [[id(samples[j]) for j in distinct].index(id(samples[i])) for i in rows]
        ordered = generation.samples, generation.videos
        generation.samples = [encoded[d] for d in which]  # one dict a prompt: its rows share one vision pass
        generation.videos = [shown[d] for d in which]
        try:
            fields = trainer._generation_fields([types[d] for d in which])
            completion_ids, _ = trainer._generate_single_turn([ids[d] for d in which], None, fields, 1)
        finally:
            generation.samples, generation.videos = ordered
        return picked, completion_ids[: len(picked)]

    def rewarded(self, trainer, generation, inputs, prompts, rewards):
        """The bonus added to the accuracy column of `rewards` by each prompt's ordered and shuffled accuracies."""
        if generation.mode != "train":
            return
        G, a = trainer.num_generations, self.accuracy
        picked, completion_ids = generation.shuffled or ([], [])
        texts = trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": text}] for text in texts]
        rows = [inputs[i] for i in picked]
        scores = scored_by(
            trainer, trainer.reward_funcs[a], rows, [prompts[i] for i in picked], completions, completion_ids
        )
        offset = trainer.accelerator.process_index * len(prompts)
        groups = rewards.size(0) // G
        total, count = torch.zeros(groups), torch.zeros(groups)
        for i, score in gather_object([((offset + i) // G, s) for i, s in zip(picked, scores, strict=True)]):
            if score is not None:
                total[i], count[i] = total[i] + score, count[i] + 1
        shuffled_accuracy = (total / count).to(rewards.device)  # NaN: no scored shuffled rollout
        accuracy = rewards[:, a].clone()
        args = trainer.args
        bonus = temporal_bonus(accuracy, shuffled_accuracy, G, args.temporal_alpha, args.temporal_ratio)
        rewards[:, a] = accuracy + bonus
        contrasted = ~torch.isnan(shuffled_accuracy)
        ordered = torch.nanmean(accuracy.view(-1, G), dim=1)
        metrics = trainer._metrics[generation.mode]
        metrics["temporal/ordered_accuracy"].append(torch.nanmean(ordered[contrasted]).item())
        metrics["temporal/shuffled_accuracy"].append(torch.nanmean(shuffled_accuracy[contrasted]).item())
        video_rows = contrasted.repeat_interleave(G)
        metrics["temporal/bonus_fraction"].append(((bonus > 0).sum() / video_rows.sum().clamp(min=1)).item())


def scored_by(trainer, func, rows: list[dict], prompts, completions, completion_ids) -> list[float | None]:
    """`func`'s rewards of completions that are not the batch's (T-GRPO's shuffled rollouts), with their rows' columns
    as TRL hands them; what it logs through TRL's hooks is dropped (it would not match the batch's rows)."""
    if not rows:
        return []
    columns = {key: [row[key] for row in rows] for key in rows[0] if key not in ("prompt", "completion")}
    hooks = {"trainer_state": trainer.state, "log_extra": lambda *a: None, "log_metric": lambda *a: None}
    return func(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns, **hooks)
