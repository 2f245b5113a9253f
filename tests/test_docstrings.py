"""The short examples in the docstrings run, and print what they say (TRL-style ``` fences are dropped)."""

import doctest
import importlib

import pytest


MODULES = [
    "rewatch_trl.prompts",
    "rewatch_trl.react",
    "rewatch_trl.rewards.parsed",
    "rewatch_trl.rewards.judged",
    "rewatch_trl.rewards.registry",
    "rewatch_trl.judge",
    "rewatch_trl.sharing",
    "rewatch_trl.vllm_video",
    "rewatch_trl.sampling",
    "rewatch_trl.video",
    "rewatch_trl.features",
    "rewatch_trl.generation_batch",
    "rewatch_trl.undecodable",
    "rewatch_trl.judge_watch",
    "rewatch_trl.temporal",
    "rewatch_trl.dynamic",
    "rewatch_trl.agentic",
    "rewatch_trl.sharing_counts",
    "rewatch_trl.rollout_recorder",
    "rewatch_trl.data",
    "rewatch_trl.sequence_parallel",
]


def _examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    for test in finder.find(module):
        for example in test.examples:
            example.want = "\n".join(line for line in example.want.splitlines() if line.strip() != "```")
            if example.want:
                example.want += "\n"
        yield test


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = list(_examples(module_name))
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0
    assert results.failed == 0
