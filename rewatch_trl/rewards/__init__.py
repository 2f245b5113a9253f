"""Reward functions of ReWatch-R1, for `trl.GRPOTrainer` or any trainer that calls `f(completions, **columns)`.

Pure Python: importing this module loads no torch and no transformers. Every function takes the completions
(strings or chat messages) and the dataset columns it needs as keyword lists, ignores the rest, and returns
one `float` per completion, or `None` where the reward does not apply to that row (TRL then ignores it).
None of them raises on any completion text.

Example:
```python
>>> from trl import GRPOTrainer  # doctest: +SKIP
>>> from rewatch_trl.rewards import react_format_reward, mcq_accuracy_reward
>>> trainer = GRPOTrainer(model=..., reward_funcs=[react_format_reward, mcq_accuracy_reward], ...)  # doctest: +SKIP
```

The package holds `parsed.py` (what the completion and the row tell), `judged.py` (what asks an LLM judge, and the
paper's O&R total) and `registry.py` (the names recipes use); everything is imported from here.
"""

from rewatch_trl.rewards.judged import (
    ACCURACY_PROMPT,
    OBSERVATION_PROMPT,
    REASONING_PROMPT,
    judge_accuracy_reward,
    observation_reward,
    reasoning_reward,
    rewatch_reward,
)
from rewatch_trl.rewards.parsed import (
    RIGHT,
    accuracy_reward,
    extract_choice,
    length_band_reward,
    mcq_accuracy_reward,
    normalize_text,
    open_ended_accuracy_reward,
    parse_options,
    react_format_reward,
    temporal_grounding_reward,
    token_f1,
    video_r1_accuracy_reward,
)
from rewatch_trl.rewards.registry import REWARDS, get_reward_funcs, reward_func_name


__all__ = [
    "ACCURACY_PROMPT",
    "OBSERVATION_PROMPT",
    "REASONING_PROMPT",
    "REWARDS",
    "RIGHT",
    "accuracy_reward",
    "extract_choice",
    "get_reward_funcs",
    "judge_accuracy_reward",
    "length_band_reward",
    "mcq_accuracy_reward",
    "normalize_text",
    "observation_reward",
    "open_ended_accuracy_reward",
    "parse_options",
    "react_format_reward",
    "reasoning_reward",
    "reward_func_name",
    "rewatch_reward",
    "temporal_grounding_reward",
    "token_f1",
    "video_r1_accuracy_reward",
]
