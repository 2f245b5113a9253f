"""What the options from video-RL peers cost a GRPO step: T-GRPO's shuffled rollouts, Video-R1's length band, DAPO's
dynamic sampling.

    python benchmarks/peer_options.py [--steps 4] [--generations 8] [--rounds 2]

One run on the vision-heavy tiny world of `step_cost.py` (the same seed and weights in every mode, the fastest of
`--rounds` runs a mode kept): seconds a step by phase, the refill batches a generation batch, and each mode's step
time over the default's. The untrained tiny model earns no ReAct reward: every group is flat, so dynamic sampling
refills `max_resample_rounds` times each generation and finds nothing to keep, its worst case; where no group is
flat it costs nothing.
"""

import os
import tempfile

import torch
from step_cost import REWARDS, fastest_runs, parse_options


MODES = {
    "default": {},
    "T-GRPO": {"temporal_contrast": True, "accuracy_reward": "accuracy"},
    "length band": {"reward_funcs": [*REWARDS, "length_band"], "accuracy_reward": "accuracy"},
    "dynamic, 1 round": {"dynamic_sampling": True, "max_resample_rounds": 1},
    "dynamic, 3 rounds": {"dynamic_sampling": True, "max_resample_rounds": 3},
}


def main() -> None:
    options = parse_options(__doc__)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        results = fastest_runs(MODES, options, tmp)
    print(
        f"tiny ({options.family}) on {options.device}, G = {options.generations}, 2 prompts a step, {options.frames} "
        f"frames a video, {options.steps} steps after one to warm up, fastest of {options.rounds} runs; seconds a step"
    )
    names = list(MODES)
    print(f"{'':<24}" + "".join(f"{name:>20}" for name in names))
    phases = ["generate", "old/ref log-probs", "loss forward", "backward", "rewards", "step", "resample rounds"]
    for phase in phases:
        print(f"{phase:<24}" + "".join(f"{results[name].get(phase, 0.0):>20.3f}" for name in names))
    base = results["default"]["step"]
    print(f"{'step time over default':<24}" + "".join(f"{results[name]['step'] / base:>19.2f}x" for name in names))


if __name__ == "__main__":
    main()
