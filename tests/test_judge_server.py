"""The judged rewards against vLLM's own OpenAI server (its CPU build) serving the tiny world's model: concurrent
verdicts, the server killed in the middle of a batch and while down, then started again. The run goes on, every
failure is counted, and nothing is scored wrong: a row the judge could not score is None, a row it scored has the
verdicts of the server that was never killed."""

import threading
import time

import pytest
from conftest import VLLMServer

from rewatch_trl import rewards as R
from rewatch_trl.judge import JudgeClient


pytestmark = pytest.mark.vllm

VERDICTS = {"structured_outputs": {"choice": ["yes", "no"]}}


@pytest.fixture(scope="module")
def server(tiny_world, tmp_path_factory):
    # as a user starts a judge
    arguments = ["--model", str(tiny_world.root), "--served-model-name", "judge", "--max-model-len", "2048"]
    arguments += ["--enforce-eager", "--max-num-seqs", "16"]
    served = VLLMServer(arguments, tmp_path_factory.mktemp("judge-server") / "server.log")
    served.start()
    yield served
    served.kill()


def rows(n: int):
    """`n` rows with re-watched clips and captions, in three kinds: a right multiple-choice letter, a wrong one, and
    an open-ended answer (the judge's accuracy verdict). Each asks the judge for its observation verdict and the
    reasoning answer; the tiny judge's verdicts are all alike, the kinds make the rows' rewards differ."""
    batch = {"completions": [], "answer": [], "problem": [], "captions": [], "multiple_choice": []}
    for i in range(n):
        kind = i % 3
        answer = ["B", "C", f"it moves {i}"][kind]
        batch["completions"].append(
            f"<action>[00:0{i % 4}-00:0{i % 4 + 3}]</action><observation>shape {i} moves</observation>"
            f"<answer>{'B' if kind < 2 else answer}</answer>"
        )
        batch["problem"].append(f"What does shape {i} do?" + ("\nA. stops\nB. moves\nC. spins" if kind < 2 else ""))
        batch["answer"].append(answer)
        batch["multiple_choice"].append(kind < 2)
        batch["captions"].append(f"[00:00-00:04] shape {i} moves left\n[00:04-00:08] shape {i} stops")
    return batch


def score(judge, batch):
    return R.rewatch_reward(judge=judge, **batch)


def test_judged_rewards_survive_the_server_killed_and_restarted(server):
    judge = JudgeClient(
        base_url=server.url,
        model="judge",
        api_key="k",
        max_concurrency=8,
        max_retries=1,
        timeout=30.0,
        max_tokens=16,
        verdict_request=VERDICTS,
    )
    batch = rows(48)
    reference = score(judge, batch)
    asked = judge.calls
    assert None not in reference and judge.failures == 0
    assert len(set(reference)) >= 2 and all(1.0 <= r <= 4.0 for r in reference), reference  # fmt 1 + acc (...)

    # killed while the batch is in flight (in its last part, the observation verdicts): each row is unscored, or
    # scored as the server that stayed up scored it
    results: dict = {}
    worker = threading.Thread(target=lambda: results.update(scores=score(judge, batch)))
    worker.start()
    while judge.calls < asked + asked * 3 // 4:
        time.sleep(0.005)
    server.kill()
    worker.join(timeout=300)
    assert not worker.is_alive()
    mid_run = results["scores"]
    assert all(s is None or s == r for s, r in zip(mid_run, reference, strict=True)), (mid_run, reference)
    assert judge.failures > 0 and None in mid_run, "the kill failed no request"

    # down: every call fails, is counted, and every row is unscored (never 0)
    before = (judge.calls, judge.failures)
    assert score(judge, batch) == [None] * 48
    assert judge.calls - before[0] == judge.failures - before[1] > 0

    # back: the same rows get the rewards they got before the kill, with as many calls and no failure
    server.start()
    before = (judge.calls, judge.failures)
    assert score(judge, batch) == reference
    assert (judge.calls - before[0], judge.failures - before[1]) == (asked, 0)


def test_without_constrained_verdicts_the_tiny_judge_is_counted_unreadable(server):
    """The control of `verdict_request`: the same server, free replies; a small judge's words are mostly not a
    verdict, and each such reply is a counted failure, not a score."""
    if server.process is None:
        server.start()
    free = JudgeClient(base_url=server.url, model="judge", api_key="k", max_concurrency=8, max_tokens=16)
    constrained = JudgeClient(
        base_url=server.url, model="judge", api_key="k", max_concurrency=8, max_tokens=16, verdict_request=VERDICTS
    )
    prompts = [R.ACCURACY_PROMPT.format(question=f"q{i}", truth="a", prediction=f"b{i}") for i in range(8)]
    assert None not in constrained.score(prompts) and constrained.failures == 0
    free_scores = free.score(prompts)
    assert free.failures == free_scores.count(None) > 0
