"""The names recipes give rewards (`reward_funcs: [format, accuracy, ...]`), and the functions they stand for,
judged ones bound to one shared judge; an import path names any other function, as TRL's own `grpo` script takes it.

Example:
```python
>>> reward_func_name("rewatch_judge")
'rewatch_reward_judge'
```
"""

import functools
import importlib
from collections.abc import Callable, Sequence

from rewatch_trl.rewards.judged import judge_accuracy_reward, observation_reward, reasoning_reward, rewatch_reward
from rewatch_trl.rewards.parsed import (
    accuracy_reward,
    length_band_reward,
    mcq_accuracy_reward,
    open_ended_accuracy_reward,
    react_format_reward,
    temporal_grounding_reward,
    video_r1_accuracy_reward,
)


# Registry: the names recipes use. Rewards marked True take a judge.
REWARDS: dict[str, tuple[Callable, bool]] = {
    "format": (react_format_reward, False),
    "mcq_accuracy": (mcq_accuracy_reward, False),
    "open_ended_accuracy": (open_ended_accuracy_reward, False),
    "accuracy": (accuracy_reward, False),
    "temporal_grounding": (temporal_grounding_reward, False),
    "observation": (observation_reward, False),
    "observation_judge": (observation_reward, True),
    "judge_accuracy": (judge_accuracy_reward, True),
    "reasoning": (reasoning_reward, True),
    "rewatch": (rewatch_reward, False),
    "rewatch_judge": (rewatch_reward, True),
    "video_r1_accuracy": (video_r1_accuracy_reward, False),
    "length_band": (length_band_reward, False),
}


def _imported(name: str) -> Callable:
    """The function at the import path `name`; an error naming it, and the registry, if there is none."""
    module_name, _, attribute = name.rpartition(".")
    why = "not a registry name or an import path"
    if module_name:
        try:
            func = getattr(importlib.import_module(module_name), attribute, None)
            why = f"no function {attribute!r} in module {module_name!r}" if not callable(func) else why
        except ImportError as error:
            func, why = None, str(error)
        if callable(func):
            return func
    raise ValueError(f"unknown reward {name!r} ({why}); known rewards: {', '.join(sorted(REWARDS))}")


def reward_func_name(name: str) -> str:
    """The function name TRL logs (`rewards/<name>/mean`) for the reward a recipe calls `name`.

    Example:
    ```python
    >>> reward_func_name("rewatch_judge"), reward_func_name("accuracy_reward")
    ('rewatch_reward_judge', 'accuracy_reward')
    ```
    """
    if name not in REWARDS:
        return name.rpartition(".")[2]
    func = REWARDS[name][0].__name__
    return f"{func}_judge" if name.endswith("_judge") else func


def get_reward_funcs(
    names: Sequence[str], judge=None, reward_kwargs: dict[str, dict] | None = None, **judge_options
) -> list[Callable]:
    """Reward functions by their recipe names (or function names), or, as TRL's `grpo` script takes them, by import
    path (`my_lib.rewards.custom_reward`). Judge rewards share one `JudgeClient`, `judge` or one built from
    `judge_options` (`base_url`, `model`, `api_key`, ...) and the environment. `reward_kwargs` binds keyword
    arguments to rewards by the name given (`{"length_band": {"low": 256}}`).

    Example:
    ```python
    >>> [f.__name__ for f in get_reward_funcs(["format", "mcq_accuracy"])]
    ['react_format_reward', 'mcq_accuracy_reward']
    ```
    """
    by_function = {f.__name__: (f, j) for f, j in REWARDS.values() if not j}
    reward_kwargs = dict(reward_kwargs or {})
    unknown = set(reward_kwargs) - set(names)
    if unknown:
        raise ValueError(f"reward_kwargs names {sorted(unknown)}, which are not among the rewards {list(names)}")
    funcs = []
    for name in names:
        entry = REWARDS.get(name) or by_function.get(name) or (_imported(name), False)
        func, needs_judge = entry
        bound_kwargs = dict(reward_kwargs.get(name, {}))
        if needs_judge:
            if judge is None:
                from rewatch_trl.judge import JudgeClient

                judge = JudgeClient(**judge_options)
            bound_kwargs["judge"] = judge
        if bound_kwargs:
            bound = functools.partial(func, **bound_kwargs)
            functools.update_wrapper(bound, func)
            bound.__name__ = reward_func_name(name) if name in REWARDS else func.__name__
            func = bound
        funcs.append(func)
    return funcs
