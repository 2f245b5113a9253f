import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def letter_share(completions, **kwargs):
    """A reward with spread on random text, so that advantages are non-zero."""
    texts = [c[0]["content"] for c in completions]
    return [sum(ch.isalpha() for ch in t) / max(len(t), 1) for t in texts]


def build_trainer(world, tmp_path, rows=None, peft_config=None, **config):
    """A `VideoGRPOTrainer` on the tiny world; `config` sets `GRPOConfig` fields, its `__init__` entry the
    trainer's own keyword arguments (`reward_funcs` too)."""
    init = dict(config.pop("__init__", {}))
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.configs import GRPOConfig
    from rewatch_trl.grpo import add_prompts
    from rewatch_trl.rewards import get_reward_funcs
    from rewatch_trl.trainer import VideoGRPOTrainer
    from rewatch_trl.video import VideoCache

    processor = AutoProcessor.from_pretrained(world.root)
    model = AutoModelForImageTextToText.from_pretrained(world.root)
    collator = VideoCollator(processor, world.video_settings, world.video_dir)
    dataset = add_prompts(Dataset.from_list(rows or world.rows), collator)
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        bf16=False,  # TRL's default is bf16 autocast, also on CPU: the exactness checks are in fp32
        save_strategy="no",
        seed=0,
    )
    args = GRPOConfig(**(settings | config))
    return VideoGRPOTrainer(
        model=model,
        reward_funcs=init.pop("reward_funcs", None) or [letter_share, *get_reward_funcs(["format", "accuracy"])],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        video_settings=world.video_settings,
        video_root=world.video_dir,
        video_cache=VideoCache(),
        peft_config=peft_config,
        **init,
    ), dataset


@pytest.fixture(scope="session")
def make_trainer():
    """`build_trainer`: `make_trainer(tiny_world, tmp_path, **config)` in a test."""
    return build_trainer


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The offline world, built once per test session: uniform (every video 8 s at 4 fps, 64x48 px; grids (4, 4, 4),
    `second_per_grid_ts` 2.0), which the demo and the benchmarks use. For variety: `varied_world`."""
    from rewatch_trl.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"), seed=0)


@pytest.fixture(scope="session")
def family_world(tiny_world, tmp_path_factory):
    """`family_world(name)`: the tiny world of a model family (`families.py`), built once per session; Qwen2.5-VL's
    is `tiny_world`, the others hold 2 videos (Qwen3 families: frames of 64x64 px, their 32-px unit)."""
    from rewatch_trl.tiny import build_tiny_world

    worlds = {"qwen2_5_vl": tiny_world}

    def world(family: str):
        if family not in worlds:
            out = tmp_path_factory.mktemp(f"{family}-world")
            worlds[family] = build_tiny_world(out, num_videos=2, seed=0, family=family)
        return worlds[family]

    return world


@pytest.fixture(scope="session")
def qwen3_world(family_world):
    """The tiny Qwen3-VL world: 2 videos, frames of 64x64 px (its 32-px unit), timestamps in the text."""
    return family_world("qwen3_vl")


@pytest.fixture(scope="session")
def varied_world(tmp_path_factory):
    """The offline world with variety (`build_tiny_world(varied=True)`): videos of different lengths, frame rates and
    sizes, so that grids differ between rows and `second_per_grid_ts` is fractional (2.75 s, 1.75 s, 3.25 s), and
    prompts of different lengths. `tiny_world` is uniform: every video the same shape."""
    from rewatch_trl.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("varied-world"), seed=0, varied=True)


@pytest.fixture(scope="session")
def tiny_model_and_processor(tiny_world):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_world.root).eval()
    return model, AutoProcessor.from_pretrained(tiny_world.root)


@pytest.fixture
def received(monkeypatch):
    """The positions every call of a Qwen2.5-VL language model receives (its last three rows: a generation
    prefill also carries the text positions in front)."""
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

    calls = []
    forward = qwen.Qwen2_5_VLTextModel.forward

    def spy(self, *args, position_ids=None, **kwargs):
        calls.append(None if position_ids is None else position_ids[-3:].clone())
        return forward(self, *args, position_ids=position_ids, **kwargs)

    monkeypatch.setattr(qwen.Qwen2_5_VLTextModel, "forward", spy)
    return calls


@pytest.fixture
def vllm_positions(monkeypatch):
    """The M-RoPE positions vLLM's own model computes for each prompt it prefills: `(tokens, positions)`. Qwen2.5-VL's
    rule and Qwen3-VL's (which its MoE and Qwen3.5 inherit) are both watched."""
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    seen = []
    for model_class in (Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration):

        def spy(self, input_tokens, mm_features, original=model_class.get_mrope_input_positions):
            result = original(self, input_tokens, mm_features)
            seen.append((list(input_tokens), result[0].clone()))
            return result

        monkeypatch.setattr(model_class, "get_mrope_input_positions", spy)
    return seen


# The vLLM tier (`make test-vllm`): the real engine's CPU build, in-process, with a small KV cache (otherwise the
# CPU build sizes it from the machine's RAM, and takes half a minute to start).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# vLLM's CPU build cannot load its own ahead-of-time compiled models back ("'function' object has no attribute
# 'finalize_loading'") and compiles each engine again (~40 s); its plain torch.compile path reuses inductor's cache
# (~25 s for a model's first engine, ~10 s for the next): the same compiled model, built sooner
os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: runs the real vLLM engine (its CPU build): `make test-vllm`")
    config.addinivalue_line(
        "markers", "both_tiers: runs in both tiers (the newest transformers, and the older one of `make test-vllm`)"
    )


def failure_report(stderr: str, tail: int = 3000) -> str:
    """What a failed launch said: each fatal error's block (faulthandler's thread stacks, `terminate called ...`),
    which the other process's later output would push out of the tail, then the tail."""
    lines = stderr.splitlines()
    fatal = [
        "\n".join(lines[i : i + 40])
        for i, line in enumerate(lines)
        if line.startswith(("Fatal Python error", "terminate called"))
    ]
    return "\n...\n".join([*fatal, stderr[-tail:]])


class Launcher:
    """`accelerate launch` of the tiny recipes in subprocesses, as a user runs them."""

    root = Path(__file__).resolve().parents[1]
    accelerate = str(Path(sys.executable).with_name("accelerate"))

    def recipe_args(self, world, output_dir, stage="grpo", recipe=None, **overrides) -> list[str]:
        """The arguments of a tiny `stage` recipe (`recipes/tiny/{recipe or stage}.yaml`) run on `world` (`--config`
        and recipe keys), as `parse_args` and the entry points take them; `overrides` are recipe keys."""
        settings = (
            world.recipe_keys()
            | {"output_dir": output_dir, "max_steps": 2}
            | ({"max_completion_length": 8} if stage == "grpo" else {})
            | overrides
        )
        arguments = ["--config", str(self.root / f"recipes/tiny/{recipe or stage}.yaml")]
        for key, value in settings.items():
            arguments += [f"--{key}", str(value)]
        return arguments

    def command(
        self,
        world,
        output_dir,
        num_processes=1,
        stage="grpo",
        config="accelerate_configs/cpu.yaml",
        recipe=None,
        **overrides,
    ):
        """The command line of a tiny `stage` run on `world` under the accelerate `config`."""
        command = [self.accelerate, "launch", "--config_file", str(self.root / config)]
        command += ["--num_processes", str(num_processes), "-m", f"rewatch_trl.{stage}"]
        return command + self.recipe_args(world, output_dir, stage, recipe, **overrides)

    @staticmethod
    def environment():
        # faulthandler: a process that aborts (a C++ thread destroyed while joinable, a decoder's crash) prints every
        # thread's Python stack, so a rare abort names where it happened
        return os.environ | {
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONFAULTHANDLER": "1",
        }

    def run(self, command, timeout=300, env: dict | None = None):
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment() | (env or {}),
            cwd=self.root,
        )
        assert result.returncode == 0, failure_report(result.stderr)
        return result

    def kill_after_checkpoint(self, command, output_dir, step: int = 2, timeout: float = 240) -> None:
        """Start `command` and kill -9 its whole process group as soon as its step-`step` checkpoint is written."""
        written = Path(output_dir) / f"checkpoint-{step}" / "trainer_state.json"
        self.kill_when(command, written.is_file, timeout)

    def kill_when(self, command, condition, timeout: float = 240, env: dict | None = None) -> None:
        """Start `command` and kill -9 it and every process below it as soon as `condition()` holds: `accelerate
        launch` starts its training processes in sessions of their own, which a kill of its process group misses
        (the run would go on beside its relaunch)."""
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.environment() | (env or {}),
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        try:
            while not condition():
                assert process.poll() is None, "the run ended before it was killed"
                assert time.time() < deadline, "not killed within the time limit"
                time.sleep(0.05)
        finally:
            import psutil

            try:  # the whole tree, taken before any of it dies (an orphan is no longer a child)
                launched = psutil.Process(process.pid)
                tree = [launched, *launched.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()
            process.wait()
            psutil.wait_procs(tree, timeout=30)

    @staticmethod
    def state(output_dir):
        return json.loads((Path(output_dir) / "trainer_state.json").read_text())


@pytest.fixture(scope="session")
def launcher():
    return Launcher()


@pytest.fixture(scope="session")
def sft_model(tiny_world, tmp_path_factory, launcher):
    """The tiny model after the demo's SFT: its completions follow the video and earn varied rewards."""
    out = tmp_path_factory.mktemp("sft")
    launcher.run(launcher.command(tiny_world, out, 1, stage="sft", max_steps=60, save_strategy="no"))
    return out


@pytest.fixture
def refusing_hub():
    """A Hub on 127.0.0.1 that creates repos and refuses every upload (403): the requests it got, and its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    requests = []

    class Hub(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            requests.append((self.command, self.path))
            if self.command == "POST" and self.path == "/api/repos/create":
                status, body = 200, json.dumps({"url": f"{url}/me/x", "name": "me/x"})
            else:
                status, body = 403, json.dumps({"error": "this repo refuses uploads"})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = do_PUT = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield requests, url
    server.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VLLMServer:
    """vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, its CPU build) with `arguments` on a free
    port of 127.0.0.1, in its own process group (a kill takes the engine core with it); `env`: added to the
    environment. Killable and startable again on the same port."""

    def __init__(self, arguments: list[str], log_path, env: dict | None = None):
        self.arguments, self.log_path, self.env, self.port = arguments, log_path, env or {}, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300.0):
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *self.arguments]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ | self.env
            )
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


# A launched GRPO run of the untrained tiny model whose advantages (and gradients) are not all 0: 2 prompts of G = 4
# a process, 16 completion tokens, a reward that differs between any two texts (`varied_reward.py`: tests/ on the
# run's PYTHONPATH). Tests add their own keys.
VARIED_RUN = dict(
    save_strategy="no",
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=16,
    reward_funcs="varied_reward.characters",
    reward_weights="1.0",
)
