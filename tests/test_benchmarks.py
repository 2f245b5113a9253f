"""The benchmarks' own measurements measure what they say."""

import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_peak_memory_sees_a_tensor_allocated_inside_the_call():
    from step_cost import peak_memory

    kept = torch.ones(256, 1024)  # 1 MiB from before: not the call's

    def step(mib: int):
        scratch = torch.ones(mib, 256, 1024)  # mib MiB, freed before the call returns
        return float(scratch.sum()) + float(kept.sum())

    _, small = peak_memory(lambda: step(4))
    _, large = peak_memory(lambda: step(12))
    assert 4 <= small < 6
    assert 12 <= large < 14
