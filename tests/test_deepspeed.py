"""The tiny recipes under DeepSpeed (ZeRO-2 and ZeRO-3, 2 CPU processes over gloo) against DDP from the same start.

The CPU configs (tests/deepspeed/) differ from accelerate_configs/zero*.yaml only where CPU needs it: no bf16, and,
for ZeRO-3, `stage3_param_persistence_threshold: 0`, without which the tiny model's every parameter would stay whole
(nothing gathered: the test would prove nothing).
"""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


ZERO2, ZERO3, DDP = "tests/deepspeed/zero2_cpu.yaml", "tests/deepspeed/zero3_cpu.yaml", "accelerate_configs/cpu.yaml"
SHARING = ("sharing/videos_decoded", "sharing/videos_encoded", "sharing/prompt_rows")


def grpo(launcher, world, model, out, config, **overrides):
    settings = {"model_name_or_path": model, "max_completion_length": 64, "save_strategy": "no"} | overrides
    return launcher.run(launcher.command(world, out, 2, config=config, **settings))


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / "model.safetensors"))


def max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def sharing_counts(output_dir, launcher):
    history = launcher.state(output_dir)["log_history"]
    return [tuple(entry[key] for key in SHARING) for entry in history if SHARING[0] in entry]


def logged(output_dir, launcher, key) -> list[float]:
    return [entry[key] for entry in launcher.state(output_dir)["log_history"] if key in entry and "step" in entry][:2]


@pytest.fixture(scope="module")
def ddp_run(tiny_world, sft_model, tmp_path_factory, launcher):
    """The DDP reference run: 4 steps (the resumed ZeRO-3 run's reference), a checkpoint every 2 (the 2-step runs')."""
    out = tmp_path_factory.mktemp("ddp")
    grpo(launcher, tiny_world, sft_model, out, DDP, beta=0.0, max_steps=4, save_strategy="steps", save_steps=2)
    return out


# ZeRO-2: agentic GRPO under it equals DDP (`tests/test_rewatch.py::test_agentic_sft_then_grpo_then_infer_rewatch`)
@pytest.mark.parametrize("config", [ZERO3])
def test_zero_run_equals_ddp(tiny_world, sft_model, ddp_run, tmp_path, launcher, config):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "run"
    result = grpo(launcher, tiny_world, sft_model, out, config, beta=0.0, save_strategy="steps", save_steps=2)
    if config == ZERO3:
        assert "ZeRO-3: 57 of the policy's 57 parameters are partitioned" in result.stderr
    reference = ddp_run
    assert max_difference(weights(out), weights(reference / "checkpoint-2")) <= 1e-5
    # Adam's first steps move each weight by about lr · sign(g), whatever the gradient's scale: the weights cannot
    # see a mis-scaled gradient, the logged loss and gradient norm of each step can
    for key in ("loss", "grad_norm"):
        ours, theirs = logged(out, launcher, key), logged(reference, launcher, key)
        assert len(ours) == 2 and ours == pytest.approx(theirs, rel=1e-4, abs=1e-7), key
    assert min(logged(out, launcher, "grad_norm")) > 0
    assert max_difference(weights(out), weights(sft_model)) > 1e-5  # the 2 steps moved the weights
    # both ranks reached step 2: each wrote its own shard (and RNG state) of the step-2 checkpoint
    checkpoint = out / "checkpoint-2"
    for rank in (0, 1):
        assert (checkpoint / f"rng_state_{rank}.pth").is_file()
        assert (checkpoint / "global_step2" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert launcher.state(out)["global_step"] == 2
    assert sharing_counts(out, launcher) == sharing_counts(reference, launcher)[:2]
    assert sharing_counts(out, launcher)  # counted at all
    AutoModelForImageTextToText.from_pretrained(out)  # the saved (gathered) model loads


def test_zero3_killed_after_a_checkpoint_resumes_to_the_same_weights(
    tiny_world, sft_model, ddp_run, tmp_path, launcher
):
    """Killed after its step-2 checkpoint and launched again, a ZeRO-3 run ends with the weights of the same run
    never interrupted (DDP's, which ZeRO-3's equal: `test_zero_run_equals_ddp`)."""
    settings = {"model_name_or_path": sft_model, "max_completion_length": 64, "max_steps": 4}
    settings |= {"save_strategy": "steps", "save_steps": 2}
    whole = ddp_run
    assert launcher.state(whole)["global_step"] == 4
    killed = tmp_path / "killed"
    command = launcher.command(tiny_world, killed, 2, config=ZERO3, **settings)
    launcher.kill_after_checkpoint(command, killed)
    assert not (killed / "checkpoint-4").exists()  # it died mid-run
    launcher.run(command)
    assert launcher.state(killed)["global_step"] == 4
    assert max_difference(weights(killed), weights(whole)) <= 1e-5
    # the control: steps 3 and 4 moved the weights (a resumed run that lost them would not end there)
    assert max_difference(weights(whole), weights(whole / "checkpoint-2")) > 1e-5


@pytest.mark.parametrize(("stage", "family"), [("sft", "qwen3_5"), ("grpo", "qwen3_vl_moe")])
def test_zero3_on_the_qwen3_families_equals_ddp(stage, family, family_world, tmp_path, launcher):
    """SFT on Qwen3.5 (its Gated DeltaNet layers partitioned), and GRPO with a reference model (beta 0.04) on
    Qwen3-VL-MoE (its fused experts and deepstack mergers, loaded from the published layout; generation gathers
    them; Qwen3-VL's dense model is the MoE but for its MLPs), under ZeRO-3 (every parameter partitioned) end with
    DDP's weights, loss and gradient norm. Qwen2.5-VL under ZeRO-3: the GRPO runs above."""
    world = family_world(family)
    settings, env = {"save_strategy": "no", "logging_steps": 1}, None
    if stage == "grpo":  # the untrained model's ReAct rewards are all 0: a reward that varies (tests/varied_reward.py)
        settings |= {"beta": 0.04, "max_completion_length": 64, "reward_funcs": "varied_reward.characters"}
        settings |= {"reward_weights": 1.0}
        env = {"PYTHONPATH": str(launcher.root / "tests")}
    runs = {}
    for name, config in (("ddp", DDP), ("zero3", ZERO3)):
        runs[name] = tmp_path / name
        command = launcher.command(world, runs[name], 2, stage=stage, config=config, **settings)
        result = launcher.run(command, env=env)
    if stage == "grpo":  # the trainer counts the partitioned parameters (the SFT trainer does not)
        assert re.search(r"ZeRO-3: (\d+) of the policy's \1 parameters are partitioned", result.stderr)
    # Adam divides each gradient by its own size: an element whose gradient is near its eps (1e-8) moves by a share
    # of the learning rate that the summation order (DDP's all-reduce, ZeRO's reduce-scatter) decides; on Qwen3.5 and
    # transformers 5.25, one element of layers.0.mlp.gate_proj differs by 1.3e-5, every other weight by < 1.5e-6
    assert max_difference(weights(runs["zero3"]), weights(runs["ddp"])) <= 3e-5
    # the control: the runs moved the weights by ten times that at least (Qwen3.5's SFT: 6e-3)
    assert max_difference(weights(runs["ddp"]), weights(world.root)) > 3e-4
    for key in ("loss", "grad_norm"):
        ours, theirs = logged(runs["zero3"], launcher, key), logged(runs["ddp"], launcher, key)
        assert len(ours) == 2 and ours == pytest.approx(theirs, rel=1e-4, abs=1e-7), key


def test_zero3_grpo_on_images_and_videos_equals_ddp(tiny_world, tmp_path, launcher):
    """GRPO under ZeRO-3 with process 0 on image rows and process 1 on video rows (Video-R1's; 2 prompts a process a
    step, G = 2, unshuffled) ends with DDP's weights: every process runs the vision tower once a pass and shares its
    prompt prefix alike, whatever its rows hold. Before, a process with an image took the model's own path (one
    language-model call) while one with videos alone shared its prefix (two), and one with both gathered the tower
    twice: the known hang of mixed-modality ZeRO-3 runs (gloo: "collective mismatch")."""
    import json

    source = json.loads(tiny_world.video_r1_path.read_text())
    images = [row for row in source if row["data_type"] == "image"]
    videos = [row for row in source if row["data_type"] == "video"]
    ordered = [rows[i] for step in range(2) for rows in (images, videos) for i in (2 * step, 2 * step + 1)]
    data = tmp_path / "video_r1.json"
    data.write_text(json.dumps(ordered))
    settings = {
        "dataset_name": data,
        "dataset_format": "video-r1",
        "video_root": tiny_world.root,
        "captions": "",
        "shuffle_dataset": "false",  # process 0 gets each step's first 2 prompts, process 1 the next 2
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 16,
        "reward_funcs": "varied_reward.characters",
        "reward_weights": 1.0,
        "save_strategy": "no",
    }
    env = {"PYTHONPATH": str(launcher.root / "tests")}
    runs = {}
    for name, config in (("ddp", DDP), ("zero3", ZERO3)):
        runs[name] = tmp_path / name
        launcher.run(launcher.command(tiny_world, runs[name], 2, config=config, **settings), env=env, timeout=400)
    assert max_difference(weights(runs["zero3"]), weights(runs["ddp"])) <= 1e-5
    assert max_difference(weights(runs["ddp"]), weights(tiny_world.root)) > 1e-5
    history = launcher.state(runs["zero3"])["log_history"]
    assert [entry["data/image_rows"] for entry in history if "data/image_rows" in entry] == [4, 4]  # 2 prompts x G
