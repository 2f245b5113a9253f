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

import datasets
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from trl.trainer.utils import nanstd

from rewatch_trl.features import Feature
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
    # TRL sets `tool_mask` only on a batch with a masked row (a broken video's, a clip's); absent, it is all ones
    if ("tool_mask" in batch) != ("tool_mask" in refill):
        batch, refill = (
            {**b, "tool_mask": b.get("tool_mask", torch.ones_like(b["completion_mask"]))} for b in (batch, refill)
        )
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


class DynamicSampling(Feature):
    """`dynamic_sampling`: in training, a batch's zero-variance groups replaced, on each process, by varied groups of
    refill batches; every process generates as many refill batches (until none is left anywhere, or
    `max_resample_rounds`). TRL's completion logs (its table, the rollout page) then hold the rows trained on."""

    @classmethod
    def attach(cls, trainer) -> "DynamicSampling | None":
        args = trainer.args
        if not getattr(args, "dynamic_sampling", False):
            return None
        rows = args.per_device_train_batch_size * args.steps_per_generation
        if rows % trainer.num_generations:
            raise ValueError(
                f"dynamic_sampling replaces whole prompts on each process: per_device_train_batch_size × "
                f"steps_per_generation ({rows}) must be a multiple of num_generations ({trainer.num_generations})"
            )
        if not isinstance(trainer.train_dataset, datasets.Dataset):
            raise ValueError("dynamic_sampling draws refill prompts by index: it needs a map-style dataset")
        return cls()

    def scored(self, trainer, batch, totals, rows):
        if not trainer.model.training:
            return batch
        G, accelerator = trainer.num_generations, trainer.accelerator
        index, metrics = accelerator.process_index, trainer._metrics["train"]
        mine = slice(index * rows // G, (index + 1) * rows // G)
        zero = zero_variance_groups(totals, G)
        # the processes of a sequence-parallel group hold the same groups: each is counted once
        copies = trainer.sequence_group.size
        metrics["dynamic/zero_variance_groups"].append(zero.sum().item() / copies)
        waiting = zero[mine].clone()
        rounds = 0
        logged, moves = [logged_rows(trainer._logs, zero.numel() * G)], []
        while zero.any() and rounds < trainer.args.max_resample_rounds:
            rounds += 1
            refill, refill_totals = trainer._scored_batch(refill_rows(trainer, rows, rounds))
            logged.append(logged_rows(trainer._logs, zero.numel() * G))
            varied = (~zero_variance_groups(refill_totals, G)[mine]).nonzero().flatten().tolist()
            pairs = list(zip(waiting.nonzero().flatten().tolist(), varied, strict=False))  # as many as both have
            batch = replace_groups(batch, refill, pairs, G, trainer._tokenizer.pad_token_id)
            moves += [(mine.start + slot, rounds, mine.start + source) for slot, source in pairs]
            for slot, _ in pairs:
                waiting[slot] = False
            zero = accelerator.gather(waiting.int()).bool()
        if rounds:
            loss_mask = batch["completion_mask"] * batch.get("tool_mask", 1)
            batch["num_items_in_batch"] = accelerator.gather(loss_mask.sum()).sum()
            log_trained_rows(trainer._logs, logged, gather_object(moves), G)
        metrics["dynamic/resample_rounds"].append(rounds)
        metrics["dynamic/kept_zero_variance_groups"].append(zero.sum().item() / copies)
        return batch


def refill_rows(trainer, rows: int, round_: int) -> list[dict]:
    """This process's `rows` of refill round `round_`: newly drawn prompts, each G times (TRL's layout); the
    processes of a sequence-parallel group get the same ones, as the sampler gives them the same batch."""
    G, group = trainer.num_generations, trainer.sequence_group
    prompts = rows * group.data_size // G
    drawn = refill_prompts(len(trainer.train_dataset), prompts, trainer.state.global_step, round_, trainer.args.seed)
    every = [i for i in drawn for _ in range(G)]
    return [trainer.train_dataset[i] for i in every[group.data_rank * rows : (group.data_rank + 1) * rows]]


def logged_rows(logs: dict, rows: int) -> dict:
    """The last `rows` rows of what TRL logs of the completions (`_logs`: every process's rows, in order)."""
    plain = {key: list(logs[key])[-rows:] for key in ("prompt", "completion", "advantages", "images")}
    return plain | {key: {name: list(v)[-rows:] for name, v in logs[key].items()} for key in ("rewards", "extra")}


def log_trained_rows(logs: dict, logged: list[dict], moves: list[tuple[int, int, int]], num_generations: int) -> None:
    """TRL's completion `logs` made to hold the rows trained on: the first batch's, each group moved in from a refill
    batch (`moves`: slot, round, the refill's group, over all processes)."""
    G = num_generations
    groups = len(logged[0]["prompt"]) // G
    source = {slot: (round_, group) for slot, round_, group in moves}
    rows = [(r, g * G + i) for slot in range(groups) for r, g in [source.get(slot, (0, slot))] for i in range(G)]

    def merged(column: list[list]) -> list:
        return [column[r][row] for r, row in rows] if all(len(c) == groups * G for c in column) else column[0]

    for key in ("prompt", "completion", "advantages", "images"):
        values = merged([entry[key] for entry in logged])
        logs[key].clear()
        logs[key].extend(values)
    for key in ("rewards", "extra"):
        for name in logged[0][key]:
            values = merged([entry[key].get(name, []) for entry in logged])
            logs[key][name].clear()
            logs[key][name].extend(values)
