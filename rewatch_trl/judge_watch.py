"""What a judge's failures do to training, in one place: the rows it failed to score, and the outage that stops a run.

A judged reward gives None on a row whose verdict the judge could not give (a timeout, an outage). A None that only
some rows of a prompt's group get is such a failure, since what makes a reward apply (captions, the kind of answer)
is the prompt's and the same for all G rows. Left as it is, the row's total would lack that part beside its
group-mates' and its advantage would fall as if its answer were wrong; `unscored_rows` finds such rows, which the
trainer makes unscorable (every reward NaN: TRL gives it advantage 0, out of its group's baselines). A part no row of
the group got shifts every row alike and moves no advantage.

`JudgeWatch` counts each generation's judge calls and failures on every process (`judge/failed_fraction`,
`judge/unscored_rows`); after `judge_max_failed_steps` generations in a row whose every call failed, it saves a
checkpoint and stops the run at the end of that step, and `outage` says why.

Example:
```python
>>> import torch
>>> nan = float("nan")
>>> judged = torch.tensor([[1.0], [nan], [nan], [nan]])  # group 1: one row failed; group 2: no row applies
>>> unscored_rows(judged, num_generations=2).tolist()
[False, True, False, False]
```
"""

import torch
from transformers import TrainerCallback

from rewatch_trl.features import Feature


def unscored_rows(judged: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per row of `judged` (rows × judged reward functions, a prompt's G rows contiguous, NaN where a reward gave
    None): whether some judged reward is NaN on it while a group-mate has a value."""
    missing = torch.isnan(judged).view(-1, num_generations, judged.size(1))
    some_scored = (~missing).any(dim=1, keepdim=True)
    return (missing & some_scored).any(dim=2).view(-1)


class JudgeWatch(Feature, TrainerCallback):
    """The judges of a trainer's reward functions (those `get_reward_funcs` bound a `judge` to), watched.

    Args:
        reward_funcs: the trainer's reward functions, in the order of its rewards' columns.
        max_failed_steps: generations in a row whose every judge call failed that stop the run (0: never).
    """

    def __init__(self, reward_funcs: list, max_failed_steps: int = 0):
        judges = [getattr(func, "keywords", {}).get("judge") for func in reward_funcs]
        self.columns = [i for i, judge in enumerate(judges) if judge is not None]
        self.judges = list({id(judges[i]): judges[i] for i in self.columns}.values())
        self.max_failed_steps = max_failed_steps
        self.counts = (0, 0)  # calls and failures of the judges until the last generation
        self.failed_steps = 0  # consecutive generations whose every judge call failed
        self.outage: str | None = None  # why the run stopped, once the judges are found down

    @classmethod
    def attach(cls, trainer) -> "JudgeWatch | None":
        """A watch of `trainer`'s judges, its step-end stop added as a callback; None when no reward asks a judge."""
        watch = cls(trainer.reward_funcs, getattr(trainer.args, "judge_max_failed_steps", 0))
        if not watch.judges:
            return None
        trainer.add_callback(watch)
        return watch

    def rewarded(self, trainer, generation, inputs, prompts, rewards):
        # a judge failure is no wrong answer: its row is unscorable too
        metrics = trainer._metrics[generation.mode]
        metrics["judge/unscored_rows"].append(self.unscore(rewards, trainer.num_generations))
        calls, failed = trainer.accelerator.gather(self.new_counts().to(trainer.accelerator.device)[None]).sum(0)
        step, output_dir = trainer.state.global_step + 1, trainer.args.output_dir
        failed_fraction = self.record(int(calls), int(failed), step, output_dir, generation.mode == "train")
        if failed_fraction is not None:
            metrics["judge/failed_fraction"].append(failed_fraction)

    def unscore(self, rewards_per_func: torch.Tensor, num_generations: int) -> int:
        """Make the rows a judge failed beside scored group-mates unscorable (NaN) in place; how many."""
        unscored = unscored_rows(rewards_per_func[:, self.columns], num_generations)
        rewards_per_func[unscored] = torch.nan
        return int(unscored.sum().item())

    def new_counts(self) -> torch.Tensor:
        """This process's judge calls and failures since the last call, as a tensor to sum over processes."""
        counts = (sum(judge.calls for judge in self.judges), sum(judge.failures for judge in self.judges))
        new = torch.tensor([now - before for now, before in zip(counts, self.counts, strict=True)])
        self.counts = counts
        return new

    def record(self, calls: int, failed: int, step: int, output_dir: str, training: bool) -> float | None:
        """Every process's calls and failures of this generation: their failed fraction (None when no row asked);
        in training, the outage once `max_failed_steps` generations in a row failed every call (`step`: the step
        at hand, whose end saves the checkpoint)."""
        if not calls:  # no row asked the judge: says nothing of it
            return None
        self.failed_steps = self.failed_steps + 1 if failed == calls else 0
        if training and self.max_failed_steps and self.failed_steps >= self.max_failed_steps:
            endpoints = ", ".join(sorted({f"{judge.base_url} ({judge.model})" for judge in self.judges}))
            self.outage = (
                f"the judge at {endpoints} failed every call of the last {self.failed_steps} steps that asked "
                f"it: training stopped at step {step}, saved in {output_dir}/checkpoint-{step}; bring the "
                "judge back and launch the same command to resume (judge_max_failed_steps: 0 never stops)"
            )
        return failed / calls

    def on_step_end(self, args, state, control, **kwargs):
        if self.outage is not None:
            control.should_save = control.should_training_stop = True
