"""The judged rewards against vLLM's own OpenAI server (its CPU build) serving the tiny world's model: concurrent
verdicts, the server killed in the middle of a batch and while down, then started again. The run goes on, every
failure is counted, and nothing is scored wrong: a row the judge could not score is None, a row it scored has the
verdicts of the server that was never killed."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from rewatch_trl import rewards as R
from rewatch_trl.judge import JudgeClient


pytestmark = pytest.mark.vllm

VERDICTS = {"structured_outputs": {"choice": ["yes", "no"]}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m vllm.entrypoints.openai.api_server` on the tiny model, as a user starts a judge; killable."""

    def __init__(self, model: str, log_path):
        self.model, self.log_path, self.port = model, log_path, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300.0):
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        command += ["--served-model-name", "judge", "--port", str(self.port), "--max-model-len", "2048"]
        command += ["--enforce-eager", "--max-num-seqs", "16"]
        # its own process group: a kill takes the engine core with the API server
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1.0)
        self.kill()
        raise RuntimeError(f"the vLLM server did not come up in {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)
        self.process = None

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture(scope="module")
def server(tiny_world, tmp_path_factory):
    served = Server(str(tiny_world.root), tmp_path_factory.mktemp("judge-server") / "server.log")
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
