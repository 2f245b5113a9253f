"""Rows whose video failed to decode mid-run leave the run's loss and its scores, not the run.

The collator hands a video that fails to decode (or a clip of it) as a blank of the right shape and records it
(`VideoCollator.undecodable`); `LeaveOutUndecodable` then makes every row of that video, on every process, out of the
loss (TRL's `tool_mask`, the mask of the tokens the model wrote, 0 over it) and unscorable (its rewards NaN: TRL gives
it advantage 0, out of its group's baselines), counts them (`data/undecodable`), and the main process writes each
file once to `<output_dir>/undecodable.jsonl`.

Example:
```python
>>> import torch
>>> leave_out = LeaveOutUndecodable()
>>> leave_out.masked([[1, 1], [1, 1, 1]], [False, True])
[[1, 1], [0, 0, 0]]
```
"""

import torch
from accelerate.utils import gather_object

from rewatch_trl.features import Feature
from rewatch_trl.video import write_undecodable


class LeaveOutUndecodable(Feature):
    """Every run's: the rows of the videos that failed to decode on any process so far."""

    def __init__(self):
        self.paths: set[str] = set()  # the same on every process

    @staticmethod
    def masked(tool_mask: list[list[int]], left_out: list[bool]) -> list[list[int]]:
        """`tool_mask` with the rows `left_out` all 0."""
        return [[0] * len(mask) if out else mask for mask, out in zip(tool_mask, left_out, strict=True)]

    def generated(self, trainer, generation, prompts, output):
        # every process learns of every failure here: the G copies of a prompt may sit on several
        step = trainer.state.global_step
        collator = trainer.video_collator
        new = [video.record(step) for path, video in collator.undecodable.items() if path not in self.paths]
        records = list({record["path"]: record for record in gather_object(new)}.values())
        self.paths |= {record["path"] for record in records}
        if trainer.accelerator.is_main_process:
            write_undecodable(trainer.args.output_dir, records)
        # rows a custom `rollout_func` made hold no video of ours
        left_out = [path in self.paths for path in generation.paths or [None] * len(output[1])]
        generation.left_out = torch.tensor(left_out, device=trainer.accelerator.device)
        if not any(left_out):
            return output
        completion_ids, tool_mask = output[1], output[2]
        tool_mask = tool_mask or [[1] * len(ids) for ids in completion_ids]
        return (*output[:2], self.masked(tool_mask, left_out), *output[3:])

    def rewarded(self, trainer, generation, inputs, prompts, rewards):
        left_out = trainer.accelerator.gather(generation.left_out)
        rewards[left_out] = torch.nan
        trainer._metrics[generation.mode]["data/undecodable"].append(left_out.sum().item())
