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
