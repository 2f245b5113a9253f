"""What sharing did, counted at the model's modules and logged per optimizer step beside TRL's metrics.

`SharingCounter` counts with sharing on or off, so a run shows what sharing saved (`sharing/videos_encoded`,
`sharing/prompt_rows`, `sharing/videos_decoded`); `SharingCounts`, a `TrainerCallback`, hands each log the counts per
optimizer step since the last one.

Example:
```python
>>> counts = SharingCounts(counter=None, metrics={"train": {}})
>>> counts.steps
0
```
"""

from transformers import TrainerCallback

from rewatch_trl.sharing import backbone, cache_given


class SharingCounter:
    """What a run's model calls did, counted at the modules themselves (so with sharing on or off): videos through
    the vision tower (`videos_encoded`), rows through the language model that hold a prompt (`prompt_rows`: a
    forward with no cached prompt before it; decoding steps and the completions that read a shared prefix are not
    counted), and videos decoded or received from DataLoader workers (`videos_decoded`, from the collator).
    `take()` gives the counts since the last `take()`."""

    def __init__(self, models, collator=None):
        self.collator = collator
        self.counts = {"videos_decoded": 0, "videos_encoded": 0, "prompt_rows": 0}
        self._decoded = self._decoded_so_far()
        for model in models:
            inner = backbone(model)
            inner.visual.register_forward_pre_hook(self._vision, with_kwargs=True)
            inner.language_model.register_forward_pre_hook(self._language, with_kwargs=True)

    def _decoded_so_far(self) -> int:
        return 0 if self.collator is None else self.collator.cache.decodes + self.collator.received

    def _vision(self, module, args, kwargs):
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        self.counts["videos_encoded"] += len(grid)

    def _language(self, module, args, kwargs):
        cache = cache_given(kwargs)
        if cache is None or cache.get_seq_length() == 0:
            rows = kwargs.get("inputs_embeds")
            rows = rows if rows is not None else kwargs.get("input_ids", args[0] if args else None)
            self.counts["prompt_rows"] += rows.size(0)

    def take(self) -> dict[str, int]:
        decoded = self._decoded_so_far()
        self.counts["videos_decoded"], self._decoded = decoded - self._decoded, decoded
        taken, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return taken


class SharingCounts(TrainerCallback):
    """At each optimizer step's end, `sharing/<count>` per optimizer step since the last log, in the trainer's
    `metrics` (TRL's `_metrics`, which its `log` averages and clears): every log sees them, the step logs and the
    summary at the end of training alike."""

    def __init__(self, counter: SharingCounter, metrics: dict):
        self.counter, self.metrics = counter, metrics
        self.totals: dict[str, int] = {}
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        train = self.metrics["train"]
        if not any(key.startswith("sharing/") for key in train):  # a log took the last ones: count anew
            self.totals, self.steps = {}, 0
        for key, count in self.counter.take().items():
            self.totals[key] = self.totals.get(key, 0) + count
        self.steps += 1
        for key, total in self.totals.items():
            train[f"sharing/{key}"] = [total / self.steps]
