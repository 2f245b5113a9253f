"""The rollouts a run logs, recorded while it trains: TRL's completion logs of each training log, handed to a
`RolloutWriter` (`<output_dir>/rollouts/`, written in the background), flushed when training ends. On with
`log_completions` and `log_rollouts`, on the main process.

Example:
```python
>>> RolloutRecorder.rows(logged=16, num_generations=8, to_print=3)  # whole prompt groups
8
```
"""

from transformers import TrainerCallback

from rewatch_trl.features import accuracy_column
from rewatch_trl.rollouts import RolloutWriter


class RolloutRecorder(TrainerCallback):
    """The first `num_completions_to_print` completions of the last generation batch (all by default), in whole prompt
    groups, with their rewards, advantages and the frames their prompts showed, at each training log."""

    def __init__(self, trainer, writer: RolloutWriter):
        self.trainer, self.writer = trainer, writer

    @classmethod
    def attach(cls, trainer, clips=None) -> "RolloutRecorder | None":
        args = trainer.args
        if not (trainer.log_completions and getattr(args, "log_rollouts", False)):
            return None
        if not trainer.accelerator.is_main_process:
            return None
        recorder = cls(trainer, RolloutWriter(args.output_dir, trainer.video_collator, clips))
        trainer.add_callback(recorder)
        return recorder

    @staticmethod
    def rows(logged: int, num_generations: int, to_print: int | None) -> int:
        """How many of the `logged` rows to record: `to_print` rounded up to whole groups, all when None."""
        return min(logged, -(-to_print // num_generations) * num_generations) if to_print else logged

    def on_log(self, args, state, control, logs=None, **kwargs):
        trainer = self.trainer
        if not trainer.model.training:
            return
        G, names, logged = trainer.num_generations, trainer.reward_func_names, trainer._logs
        rows = self.rows(len(logged["prompt"]), G, trainer.num_completions_to_print)
        column = accuracy_column(trainer)
        accuracy = names[column] if column is not None else None
        accuracy = accuracy or next((name for name in names if "accuracy" in name), None)
        self.writer.submit(
            state.global_step,
            list(logged["prompt"])[:rows],
            list(logged["completion"])[:rows],
            {name: list(logged["rewards"][name])[:rows] for name in names},
            list(logged["advantages"])[:rows],
            num_generations=G,
            weights=dict(zip(names, trainer.reward_weights.tolist(), strict=True)),
            accuracy=accuracy,
        )

    def on_train_end(self, args, state, control, **kwargs):
        self.writer.flush()
