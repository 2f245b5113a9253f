"""The tiny recipe through `accelerate launch`: one and two CPU processes, and a killed run resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewatch_trl.grpo import parse_args


ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def grpo_command(world, output_dir, num_processes=1, **overrides):
    settings = {
        "model_name_or_path": world.root,
        "dataset_name": world.qa_path,
        "captions": world.captions_path,
        "video_root": world.video_dir,
        "output_dir": output_dir,
        "max_steps": 2,
        "max_completion_length": 8,
    } | overrides
    command = [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_configs/cpu.yaml")]
    command += ["--num_processes", str(num_processes), "-m", "rewatch_trl.grpo"]
    command += ["--config", str(ROOT / "recipes/tiny/grpo.yaml")]
    for key, value in settings.items():
        command += [f"--{key}", str(value)]
    return command


def environment():
    return os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run(command, timeout=300):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def state(output_dir):
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())


def test_one_and_two_processes_reach_the_same_step(tiny_world, tmp_path):
    run(grpo_command(tiny_world, tmp_path / "one", 1))
    run(grpo_command(tiny_world, tmp_path / "two", 2))
    one_state, two_state = state(tmp_path / "one"), state(tmp_path / "two")
    assert one_state["global_step"] == two_state["global_step"] == 2
    # both ranks generated: the tokens seen (gathered over the ranks) double, the same prompts on each
    first_one = next(e for e in one_state["log_history"] if "num_tokens" in e)
    first_two = next(e for e in two_state["log_history"] if "num_tokens" in e)
    assert first_two["num_tokens"] >= 1.8 * first_one["num_tokens"]


def checkpoint_steps(output_dir):
    return sorted(int(p.name.split("-")[1]) for p in Path(output_dir).glob("checkpoint-*"))


def test_killed_run_resumes_to_the_planned_step(tiny_world, tmp_path):
    from transformers import AutoModelForImageTextToText

    output_dir = tmp_path / "run"
    command = grpo_command(tiny_world, output_dir, max_steps=24, save_steps=2, save_total_limit=30)
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while not (output_dir / "checkpoint-2" / "trainer_state.json").is_file():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within the time limit"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = checkpoint_steps(output_dir)
    assert killed_at and max(killed_at) < 24  # it really died mid-run
    assert not (output_dir / "trainer_state.json").is_file()
    run(command)
    assert state(output_dir)["global_step"] == 24
    steps = checkpoint_steps(output_dir)
    assert steps[-1] == 24 and set(killed_at) <= set(steps)
    for step in steps:
        checkpoint = output_dir / f"checkpoint-{step}"
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
        AutoModelForImageTextToText.from_pretrained(checkpoint)  # loads: not corrupt


def test_run_killed_after_its_last_checkpoint_takes_no_extra_step(tiny_world, tmp_path):
    output_dir = tmp_path / "run"
    command = grpo_command(tiny_world, output_dir, max_steps=2, save_steps=2)
    run(command)
    # as if killed between the last checkpoint and the final save
    (output_dir / "trainer_state.json").unlink()
    (output_dir / "model.safetensors").unlink()
    run(command)
    assert state(output_dir)["global_step"] == 2
    assert checkpoint_steps(output_dir) == [2]
    assert (output_dir / "model.safetensors").is_file()


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "recipes/tiny/grpo.yaml").read_text() + "\nnum_generationz: 4\n")
    with pytest.raises(ValueError, match="num_generationz"):
        parse_args(["--config", str(recipe)])


def test_every_recipe_parses():
    for recipe in sorted((ROOT / "recipes").rglob("*.yaml")):
        module = "rewatch_trl.sft" if recipe.stem.startswith("sft") else "rewatch_trl.grpo"
        parse = __import__(module, fromlist=["parse_args"]).parse_args
        # every key is checked; bf16 is switched off only because transformers refuses it on a machine without GPU
        script_args, training_args, model_args, video_args = parse(["--config", str(recipe), "--bf16", "false"])
        assert model_args.model_name_or_path, recipe
        assert script_args.dataset_name, recipe
