"""The points of a generation where a feature acts, and the base class of a feature.

`VideoGRPOTrainer` wires videos through TRL; everything else a run may do (leave out broken videos' rows, watch the
judge, gate the length band, T-GRPO's contrast, dynamic sampling) is a `Feature`, attached at trainer start when its
config key asks for it (`attach`, by each class) and called at three points of every generation, on every process, in
the order of `VideoGRPOTrainer.FEATURES`:

1. `generated`: completions exist, rewards not yet; a feature may change TRL's `_generate` output (the loss mask) or
   run rollouts of its own, and writes what it learnt in the `GenerationBatch`;
2. `rewarded`: every process's per-function rewards gathered, advantages not yet; a feature changes them in place;
3. `scored`: TRL's batch built; a feature may hand back another (dynamic sampling re-scores refill rows).

What happens at step, log, save and train ends is TRL's `TrainerCallback` (`JudgeWatch`, `RolloutRecorder`,
`SharingCounts`). Adding a feature is a module with its class and a line in `FEATURES`.

Example:
```python
>>> class CountRows(Feature):
...     def rewarded(self, trainer, generation, inputs, prompts, rewards):
...         trainer._metrics[generation.mode]["rows"].append(rewards.size(0))
```
"""


def accuracy_column(trainer) -> int | None:
    """The column of the reward `accuracy_reward` names (T-GRPO's contrast and the length band's gate read it), or
    None when it names none; an error naming the rewards when it is not among them."""
    from rewatch_trl.rewards import reward_func_name

    name = getattr(trainer.args, "accuracy_reward", None)
    if not name:
        return None
    names = trainer.reward_func_names
    if reward_func_name(name) not in names:
        raise ValueError(f"accuracy_reward {name!r} is not among the rewards {names}")
    return names.index(reward_func_name(name))


class Feature:
    """A part of a run that acts at the points of each generation; the default of each hook does nothing."""

    @classmethod
    def attach(cls, trainer) -> "Feature | None":
        """The feature for `trainer` when its settings ask for it (refusing, with the reason, what it cannot run
        with), else None. Called once, at the end of the trainer's `__init__`."""
        return cls()

    def generated(self, trainer, generation, prompts: list, output: tuple) -> tuple:
        """After TRL's `_generate` on this process's `prompts`: its output (`prompt_ids`, `completion_ids`,
        `tool_mask`, `completions`, ...), changed or not."""
        return output

    def rewarded(self, trainer, generation, inputs: list[dict], prompts: list, rewards) -> None:
        """After TRL's `_calculate_rewards`: `rewards` (every process's rows × reward functions, NaN where a reward
        gave None) changed in place."""

    def scored(self, trainer, batch: dict, totals, rows: int) -> dict:
        """After a generation is scored: TRL's batch (this process's `rows`), changed or another; `totals`: the
        weighted total reward of every process's rows."""
        return batch
