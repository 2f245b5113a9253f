"""Rows a judge failed to score. A judged reward gives None on a row whose verdict the judge could not give (a
timeout, an outage); a None that only some rows of a prompt's group get is such a failure, since what makes a reward
apply (captions, the kind of answer) is the prompt's and the same for all G rows. Left as it is, the row's total
would lack that part beside its group-mates' and its advantage would fall as if its answer were wrong; the trainer
makes such a row unscorable instead (every reward NaN: TRL gives it advantage 0, out of its group's baselines). A
part no row of the group got shifts every row alike and moves no advantage.

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


def unscored_rows(judged: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per row of `judged` (rows × judged reward functions, a prompt's G rows contiguous, NaN where a reward gave
    None): whether some judged reward is NaN on it while a group-mate has a value."""
    missing = torch.isnan(judged).view(-1, num_generations, judged.size(1))
    some_scored = (~missing).any(dim=1, keepdim=True)
    return (missing & some_scored).any(dim=2).view(-1)
