"""The tiny recipe through `accelerate launch`: a killed run resumed (two processes: tests/test_deepspeed.py)."""

import json
from pathlib import Path

import pytest

from rewatch_trl.grpo import parse_args


def checkpoint_steps(output_dir):
    return sorted(int(p.name.split("-")[1]) for p in Path(output_dir).glob("checkpoint-*"))


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path, launcher):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((launcher.root / "recipes/tiny/grpo.yaml").read_text() + "\nnum_generationz: 4\n")
    with pytest.raises(ValueError, match="num_generationz"):
        parse_args(["--config", str(recipe)])


def test_every_recipe_parses(launcher):
    from rewatch_trl.mixture import DatasetMixture

    for recipe in sorted((launcher.root / "recipes").rglob("*.yaml")):
        module = "rewatch_trl.sft" if recipe.stem.startswith("sft") else "rewatch_trl.grpo"
        parse = __import__(module, fromlist=["parse_args"]).parse_args
        # every key is checked; bf16 is switched off only because transformers refuses it on a machine without GPU
        script_args, training_args, model_args, video_args = parse(["--config", str(recipe), "--bf16", "false"])
        assert model_args.model_name_or_path, recipe
        if script_args.dataset_mixture is None:
            assert script_args.dataset_name, recipe
        else:  # a mixture's keys are checked as the run checks them
            mixture = DatasetMixture.from_dict(script_args.dataset_mixture)
            assert script_args.dataset_name is None and len(mixture.datasets) == 3, recipe


def test_a_run_killed_mid_checkpoint_resumes_to_the_uninterrupted_runs_weights(
    tiny_world, sft_model, tmp_path, launcher
):
    """A real run killed (SIGKILL) while checkpoint-4 is half written (its model and optimizer there, its trainer
    state not yet: `tests/slow_checkpoint.py` widens that moment): the relaunch skips it, says so, resumes from
    checkpoint-2 and ends with the weights of the same run never interrupted (a resume that restarted from its
    checkpoint's weights wrongly, or lost the optimizer's or the sampler's state, would not), checkpoint-4 rewritten
    whole. Killed again between that last checkpoint and the final save, a relaunch finishes without an extra step."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    # from the SFT cold start: its completions earn rewards with spread, so every step moves the weights
    settings = dict(
        model_name_or_path=sft_model, max_completion_length=64, max_steps=4, save_steps=2, save_total_limit=5
    )
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    launcher.run(launcher.command(tiny_world, whole, **settings))
    slow = [launcher.accelerate, "launch", "--config_file", str(launcher.root / "accelerate_configs/cpu.yaml")]
    slow += ["--num_processes", "1", str(launcher.root / "tests/slow_checkpoint.py")]
    slow += launcher.recipe_args(tiny_world, resumed, **settings)
    launcher.kill_when(slow, (resumed / "writing-checkpoint-4").is_file, env={"SLOW_CHECKPOINT_STEP": "4"})
    half = resumed / "checkpoint-4"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()  # killed mid-write
    assert not (resumed / "trainer_state.json").is_file()
    command = launcher.command(tiny_world, resumed, **settings)
    result = launcher.run(command)
    (skipped,) = [line for line in result.stderr.splitlines() if "not resuming from" in line]
    assert str(half) in skipped and "trainer_state.json" in skipped
    assert f"resuming from {resumed / 'checkpoint-2'}" in result.stderr
    expected, received = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    start = load_file(sft_model / "model.safetensors")
    moved = max((expected[name] - start[name]).abs().max().item() for name in expected)
    assert moved > 1e-4  # the control: training moved the weights this much
    difference = max((expected[name] - received[name]).abs().max().item() for name in expected)
    assert difference <= 1e-6, f"resumed vs uninterrupted: {difference:.2e} (training moved them {moved:.2e})"
    assert launcher.state(resumed)["global_step"] == 4
    assert checkpoint_steps(resumed) == [2, 4]
    for step in (2, 4):  # every checkpoint complete and loadable, the half-written one rewritten whole
        checkpoint = resumed / f"checkpoint-{step}"
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
        AutoModelForImageTextToText.from_pretrained(checkpoint)
    whole_losses = [e["loss"] for e in launcher.state(whole)["log_history"] if "loss" in e]
    resumed_losses = [e["loss"] for e in launcher.state(resumed)["log_history"] if "loss" in e]
    assert resumed_losses[-2:] == whole_losses[-2:]
    # as if killed between the last checkpoint and the final save
    (resumed / "trainer_state.json").unlink()
    (resumed / "model.safetensors").unlink()
    launcher.run(command)
    assert launcher.state(resumed)["global_step"] == 4
    assert checkpoint_steps(resumed) == [2, 4]
    again = load_file(resumed / "model.safetensors")
    assert max((expected[name] - again[name]).abs().max().item() for name in expected) <= 1e-6


@pytest.mark.parametrize("schedule", [{"steps_per_generation": 4}, {"num_iterations": 4}])
def test_a_resume_inside_a_generation_ends_where_the_uninterrupted_run_ends(
    tiny_world, sft_model, tmp_path, launcher, schedule
):
    """A checkpoint saved inside a generation (TRL generates once every `steps_per_generation × num_iterations`
    micro-steps and trains on its buffer in between): relaunched from a copy of `checkpoint-2`, the run trains steps
    3 and 4 on the generation the uninterrupted run buffered, and ends with its weights (a resume that generated
    anew at step 3 ended 1e-3 away)."""
    import shutil

    from safetensors.torch import load_file

    settings = dict(model_name_or_path=sft_model, max_completion_length=64, max_steps=4, save_steps=2) | schedule
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    launcher.run(launcher.command(tiny_world, whole, **settings))
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    result = launcher.run(launcher.command(tiny_world, resumed, **settings))
    assert f"resuming from {resumed / 'checkpoint-2'}" in result.stderr
    expected, received = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    at_two = load_file(whole / "checkpoint-2" / "model.safetensors")
    moved = max((expected[name] - at_two[name]).abs().max().item() for name in expected)
    assert moved > 1e-4  # the control: steps 3 and 4 moved the weights this much
    difference = max((expected[name] - received[name]).abs().max().item() for name in expected)
    assert difference <= 1e-6, f"resumed vs uninterrupted: {difference:.2e} (steps 3-4 moved them {moved:.2e})"


def test_resuming_skips_a_checkpoint_not_written_whole(tmp_path, caplog):
    """transformers writes a checkpoint's `trainer_state.json` last: a checkpoint without it (killed while writing
    its weights), or with it cut short, is skipped, with the reason, and the run resumes from the last whole one."""
    import logging
    from types import SimpleNamespace

    from rewatch_trl.training import resume_checkpoint

    whole = tmp_path / "checkpoint-2"
    whole.mkdir()
    (whole / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"\0" * 16)
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hist')
    args = SimpleNamespace(resume_from_checkpoint=None, output_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="rewatch_trl.training"):
        assert resume_checkpoint(args) == str(whole)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "checkpoint-6" in messages[0] and "cut short" in messages[0]
    assert "checkpoint-4" in messages[1] and "no trainer_state.json" in messages[1]
    (whole / "trainer_state.json").unlink()  # nothing whole left: a fresh start
    assert resume_checkpoint(args) is None


def test_a_checkpoint_inside_a_generation_without_its_buffer_is_refused_saying_why(tmp_path):
    """A checkpoint saved inside a generation with no buffer (an older run's, or `save_only_model`) is refused at
    resume, with the schedule that resumes exactly; one between generations needs none and writes none."""
    from types import SimpleNamespace

    from rewatch_trl.generation_buffer import BUFFER_FILE, restore_generation_buffer, save_generation_buffer

    def trainer(global_step, micro_steps, steps_per_generation=4, num_iterations=1):
        args = SimpleNamespace(
            gradient_accumulation_steps=1, steps_per_generation=steps_per_generation, save_only_model=False
        )
        accelerator = SimpleNamespace(process_index=0, num_processes=1, device="cpu")
        return SimpleNamespace(
            args=args, accelerator=accelerator, num_iterations=num_iterations, state=SimpleNamespace(
                global_step=global_step), _step=micro_steps, _buffered_inputs=[{"x": 1}],
        )  # fmt: skip

    with pytest.raises(ValueError, match=r"checkpoint-2 was saved inside a generation .* multiple of 4 optimizer"):
        restore_generation_buffer(trainer(2, 0), str(tmp_path / "checkpoint-2"))
    restore_generation_buffer(trainer(4, 0), str(tmp_path / "checkpoint-4"))  # between generations: nothing to do
    save_generation_buffer(trainer(4, 4), str(tmp_path / "checkpoint-4"))
    assert not (tmp_path / "checkpoint-4").exists()
    saved = trainer(2, 2)
    save_generation_buffer(saved, str(tmp_path / "checkpoint-2"))
    assert (tmp_path / "checkpoint-2" / BUFFER_FILE.format(0)).is_file()
    resumed = trainer(2, 0)
    restore_generation_buffer(resumed, str(tmp_path / "checkpoint-2"))
    assert (resumed._step, resumed._buffered_inputs) == (2, [{"x": 1}])
    resumed.accelerator.num_processes = 2
    with pytest.raises(ValueError, match="saved by 1 processes inside a generation; resuming it on 2"):
        restore_generation_buffer(resumed, str(tmp_path / "checkpoint-2"))
