"""The judge client against a real OpenAI-compatible HTTP server on 127.0.0.1, through the `openai` client."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewatch_trl import rewards as R
from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.judge import JudgeClient, parse_verdict


class JudgeHandler(BaseHTTPRequestHandler):
    calls: dict = {}
    requests: dict = {}  # each prompt's last request body
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def log_message(self, *args):
        pass

    def _reply(self, status, body: bytes, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions"
        prompt = request["messages"][0]["content"]
        with self.lock:
            self.calls[prompt] = self.calls.get(prompt, 0) + 1
            count = self.calls[prompt]
            self.requests[prompt] = request
        if "SLOW" in prompt:
            time.sleep(1.0)
        if "TOGETHER" in prompt:
            try:  # all 8 must be in flight at once to pass
                self.barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                return self._reply(400, b'{"error": {"message": "not concurrent"}}')
        if "BAD" in prompt:
            return self._reply(400, b'{"error": {"message": "bad request"}}')
        if "DOWN" in prompt or ("FLAKY" in prompt and count < 3):
            return self._reply(503, b'{"error": {"message": "overloaded"}}')
        if "GARBAGE" in prompt:
            return self._reply(200, b"<html>not json</html>", "text/html")
        text = "maybe" if "UNSURE" in prompt else ("Score: 0.75" if "Score" in prompt else "yes")
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        }
        self._reply(200, json.dumps(body).encode())


def serve():
    """`JudgeHandler` on a free port of 127.0.0.1 for the block: its base URL (the `server` fixture, and the
    recipes' judge in tests/test_recipes.py)."""
    JudgeHandler.calls = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


server = pytest.fixture(serve, name="server")


def make(url, **kwargs):
    return JudgeClient(base_url=url, model="judge", api_key="k", **kwargs)


def test_answers_in_order_and_concurrently(server):
    JudgeHandler.barrier = threading.Barrier(8)
    judge = make(server, max_concurrency=8, max_retries=0)
    prompts = [f"question {i}: TOGETHER" for i in range(8)]
    assert judge.ask(prompts) == ["yes"] * 8  # each request waited for the 7 others at the server
    assert judge.failures == 0


def test_a_bad_request_is_not_retried(server):
    judge = make(server, max_retries=3)
    assert judge.ask(["BAD"]) == [None]
    assert JudgeHandler.calls["BAD"] == 1
    assert judge.failures == 1


def test_retries_then_succeeds(server):
    judge = make(server, max_retries=3)
    assert judge.score(["FLAKY Score"]) == [0.75]
    assert JudgeHandler.calls["FLAKY Score"] == 3
    assert judge.failures == 0


def test_down_endpoint_garbage_and_timeouts_give_none_and_count(server):
    judge = make(server, max_retries=1, timeout=0.3)
    scores = judge.score(["DOWN", "GARBAGE", "SLOW", "UNSURE", "fine"])
    assert scores == [None, None, None, None, 1.0]
    assert judge.failures == 4
    assert JudgeHandler.calls["DOWN"] == 2  # one try + one retry, bounded


def test_verdict_requests_carry_their_fields_and_free_asks_do_not(server):
    """`verdict_request` (the recipe's `judge_verdict_request`) reaches the server in the yes/no requests only: the
    reasoning reward's free answers must stay free."""
    judge = make(server, verdict_request={"structured_outputs": {"choice": ["yes", "no"]}})
    assert judge.score(["a verdict"]) == [1.0]
    assert judge.ask(["a free answer"]) == ["yes"]
    assert JudgeHandler.requests["a verdict"]["structured_outputs"] == {"choice": ["yes", "no"]}
    assert "structured_outputs" not in JudgeHandler.requests["a free answer"]


def test_the_recipe_key_reaches_the_judge(tmp_path):
    from rewatch_trl.grpo import judge_options, parse_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text('dataset_name: x\njudge_verdict_request:\n  structured_outputs:\n    choice: ["yes", "no"]\n')
    cli = ["--config", str(recipe), "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"]
    assert judge_options(parse_args(cli)[0])["verdict_request"] == {"structured_outputs": {"choice": ["yes", "no"]}}
    recipe.write_text("dataset_name: x\n")
    assert "verdict_request" not in judge_options(parse_args(cli)[0])


def test_unreachable_endpoint_gives_none():
    judge = make("http://127.0.0.1:9/v1", max_retries=1, timeout=0.5)
    assert judge.ask(["hello"]) == [None]
    assert judge.failures == 1


def test_reward_through_the_real_judge(server):
    judge = make(server)
    completion = "<action>[00:00-00:05]</action><observation>red</observation><answer>red</answer>"
    columns = dict(answer=["red"], problem=["What colour?"], multiple_choice=[False])
    (func,) = R.get_reward_funcs(["judge_accuracy"], judge=judge)
    assert func([completion], **columns) == [1.0]
    (obs,) = R.get_reward_funcs(["observation_judge"], judge=judge)
    assert obs([completion], captions=["[00:00-00:05] a red square"]) == [0.75]


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Yes.", 1.0),
        ("No, it does not.", 0.0),
        ("Score: 0.3", 0.3),
        ("score=1", 1.0),
        ("Score: 7", None),
        ("", None),
        (None, None),
        ("It is correct", 1.0),
        ("incorrect", 0.0),
    ],
)
def test_parse_verdict(reply, score):
    assert parse_verdict(reply) == score


def test_the_environment_configures_the_judge(server, monkeypatch):
    """Without arguments, the judge is the one `REWATCH_JUDGE_BASE_URL` / `REWATCH_JUDGE_MODEL` name (before the
    OpenAI client's own variables); the key falls back to `OPENAI_API_KEY`; none set is an error saying what to set."""
    for name in ("REWATCH_JUDGE_BASE_URL", "REWATCH_JUDGE_MODEL", "REWATCH_JUDGE_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai")
    with pytest.raises(ValueError, match="REWATCH_JUDGE_BASE_URL and REWATCH_JUDGE_MODEL"):
        JudgeClient()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the OpenAI variable loses to ours
    monkeypatch.setenv("REWATCH_JUDGE_BASE_URL", server)
    monkeypatch.setenv("REWATCH_JUDGE_MODEL", "judge-from-env")
    judge = JudgeClient()
    assert (judge.base_url, judge.model, judge.api_key) == (server, "judge-from-env", "sk-from-openai")
    assert judge.ask(["fine"]) == ["yes"]  # it reached the server ours names
    monkeypatch.setenv("REWATCH_JUDGE_API_KEY", "sk-ours")
    assert JudgeClient().api_key == "sk-ours"


def test_each_failure_is_a_counted_warning(server, caplog):
    import logging

    judge = make(server, max_retries=1, timeout=2)
    with caplog.at_level(logging.WARNING, logger="rewatch_trl.judge"):
        assert judge.score(["GARBAGE", "UNSURE", "fine"]) == [None, None, 1.0]
    messages = [record.getMessage() for record in caplog.records]
    assert judge.failures == 2 and len(messages) == 2
    assert "(1 failures so far)" in messages[0] or "(1 failures so far)" in messages[1]
    assert any("(2 failures so far)" in message for message in messages)
    assert any("unparsable judge reply" in message and "maybe" in message for message in messages)


class RefusingHandler(BaseHTTPRequestHandler):
    """A judge endpoint that refuses every request (400: not retried), and counts them."""

    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        body = b'{"error": {"message": "refused"}}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_run_stops_with_a_checkpoint_when_every_judge_call_fails(tiny_world, sft_model, tmp_path, launcher):
    """`judge_max_failed_steps: 2` and a judge that refuses everything: the steps that asked it log
    `judge/failed_fraction` 1.0, and at the second such step the run saves a checkpoint and stops, naming the
    endpoint, instead of training on to max_steps on unscorable rows."""
    import subprocess

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RefusingHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    out = tmp_path / "run"
    # 1 prompt a step, 8 steps: the 4 open-ended rows ask the judge (the SFT cold start answers), the others do not
    settings = dict(model_name_or_path=sft_model, max_completion_length=64, max_steps=8)
    settings |= dict(per_device_train_batch_size=2, num_generations=2)
    command = launcher.command(
        tiny_world, out, **settings, judge_base_url=url, judge_model="judge", judge_max_failed_steps=2
    )
    command += ["--reward_funcs", "format", "judge_accuracy", "--reward_weights", "1.0", "1.0"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env=launcher.environment(), cwd=launcher.root
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode != 0
    assert RefusingHandler.calls > 0  # the control: the judge was asked
    (line,) = [line for line in result.stderr.splitlines() if "failed every call" in line]
    assert f"the judge at {url}" in line and "2 steps" in line
    (checkpoint,) = out.glob("checkpoint-*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert 2 <= state["global_step"] < 8 and checkpoint.name in line
    fractions = [entry["judge/failed_fraction"] for entry in state["log_history"] if "judge/failed_fraction" in entry]
    assert fractions == [1.0, 1.0]
    assert not (out / "model.safetensors").exists()  # not saved as a finished run: a relaunch resumes it


def test_a_judge_failure_leaves_its_row_unscored_not_wrong(server, tiny_world, tmp_path, make_trainer):
    """A judge that fails the calls about one completion of four (its observation's verdict, the reasoning from
    it): `rewatch_reward` gives that
    row None, not a total without `obs`; the trainer makes the row unscorable (every reward NaN, so TRL gives it
    advantage 0 out of its group's baselines) and logs `judge/unscored_rows` 1. The control: the same completion
    with an observation the judge answers is scored (a group none of whose rows a reward applies to: `judge_watch.py`)."""
    import torch

    captions = "[00:00-00:04] a red square\n[00:04-00:08] a blue square"
    trace = "<action>[00:00-00:04]</action><observation>{}</observation><answer>A</answer>"
    completions = [trace.format(text) for text in ("a red square", "a BAD square", "red", "a square")]
    columns = dict(answer=["A"] * 4, problem=["What color?\nA: red\nB: blue"] * 4, multiple_choice=[True] * 4)
    judge = make(server)
    scored = R.rewatch_reward(completions, captions=[captions] * 4, judge=judge, **columns)
    assert judge.failures == 2  # the observation's verdict and the reasoning from it
    assert scored[1] is None and all(isinstance(value, float) for i, value in enumerate(scored) if i != 1)
    fixed = R.rewatch_reward([trace.format("a fine square")], captions=[captions], judge=make(server), **{
        key: value[:1] for key, value in columns.items()})  # fmt: skip
    assert fixed == [scored[0]]  # the judge said yes to both: the same total

    funcs = R.get_reward_funcs(["format", "rewatch_judge"], judge=judge)
    trainer, dataset = make_trainer(tiny_world, tmp_path, __init__={"reward_funcs": funcs})
    rows = [dataset[0]] * 2 + [dataset[1]] * 2
    rows = [row | {"captions": captions if i < 2 else None} for i, row in enumerate(rows)]
    rows = [row | {"answer": "A", "problem": columns["problem"][0], "multiple_choice": True} for row in rows]
    trainer.model.train()
    trainer.generation = GenerationBatch(left_out=torch.zeros(4, dtype=torch.bool))
    texts = [completions[0], completions[1], completions[0], completions[3]]
    rewards = trainer._calculate_rewards(rows, [row["prompt"] for row in rows], texts, [[1]] * 4)
    assert torch.isnan(rewards[1]).all()  # the failed row: unscorable in every column
    assert not torch.isnan(rewards[0]).any()  # its group-mate: scored
    assert trainer._metrics["train"]["judge/unscored_rows"] == [1]
