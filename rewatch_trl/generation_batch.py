"""What one generation, or one loss pass, knows of its rows, in one object made for it.

TRL calls the trainer's overrides one after another for a generation (`_tokenize_prompts`, `_generate`,
`_calculate_rewards`, the log-prob passes) with no room to hand anything of ours along. `GenerationBatch` is that
room: the trainer opens one when a generation starts (`VideoGRPOTrainer.generating`) and each override reads and fills
it; it is gone when the generation is scored. A loss pass opens one from the batch TRL hands it (`for_loss`). No
per-generation state is left on the trainer between two generations.

Example:
```python
>>> batch = GenerationBatch(mode="train")
>>> batch.samples is None, batch.left_out is None
(True, True)
```
"""

from dataclasses import dataclass, replace

import torch


@dataclass
class GenerationBatch:
    """The rows of a generation on this process (a prompt's G rows share one `samples` dict: one video, one vision
    pass), and what each feature wrote of them.

    Args:
        mode: "train" or "eval".
        samples: per row, its processor outputs (`pixel_values_videos`, `video_grid_thw`, ...) for the model passes.
        videos: per row, the `SampledVideo` (or, agentic, its clips) vLLM is handed; None once generated.
        clips: agentic mode: per row, the clips its completion was shown.
        paths: per row, its video's path (broken-video rows are found by it).
        left_out: per row, whether its video failed to decode: out of the loss, unscored.
        model_texts: agentic mode: what the model wrote, the clips' tokens left out, for the rewards.
        shuffled: T-GRPO: the rows shuffled and their completions.
        totals: the weighted total reward of every process's rows (NaN: unscorable), for dynamic sampling.
        old_pass_pending: the next no-grad pass over the policy is the old-policy pass (truncated-sampler correction).
        old_kept_mass: that pass's log kept mass, (rows, completion tokens).
    """

    mode: str = "train"
    samples: list[dict] | None = None
    videos: list | None = None
    clips: list[list[dict]] | None = None
    paths: list[str] | None = None
    left_out: torch.Tensor | None = None
    model_texts: list[str] | None = None
    shuffled: tuple[list[int], list[list[int]]] | None = None
    totals: torch.Tensor | None = None
    old_pass_pending: bool = False
    old_kept_mass: torch.Tensor | None = None

    @classmethod
    def for_loss(cls, inputs: dict, mode: str = "train") -> "GenerationBatch":
        """The loss pass's view of a scored batch TRL hands back: its rows' model inputs and clips."""
        return cls(mode=mode, samples=inputs.get("video_inputs"), clips=inputs.get("clip_inputs"))

    def rows(self, indices: list[int]) -> "GenerationBatch":
        """The batch of the rows `indices` alone (what their generation reads: samples, videos, clips, paths)."""

        def of(values):
            return None if values is None else [values[i] for i in indices]

        return replace(
            self, samples=of(self.samples), videos=of(self.videos), clips=of(self.clips), paths=of(self.paths)
        )
