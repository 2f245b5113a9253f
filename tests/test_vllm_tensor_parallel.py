"""Colocated generation with `vllm_tensor_parallel_size: 2`: TRL's own grouping of processes (its `tp_group`, one
engine a group under vLLM's `external_launcher`), on vLLM's CPU build, with videos."""

import json

import pytest
from conftest import VARIED_RUN


pytestmark = pytest.mark.vllm


def two_head_model(world, out):
    """The model of a tiny Qwen3-VL `world` with 2 attention (and key-value) heads in its text model, saved with the
    world's processor under `out`: a model tensor parallelism of 2 can split (the tiny one has 1 head)."""
    import torch
    from transformers import AutoConfig, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    config = AutoConfig.from_pretrained(world.root)
    config.text_config.num_attention_heads = config.text_config.num_key_value_heads = 2
    torch.manual_seed(0)
    model = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)](config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(world.root).save_pretrained(out)
    return out


def test_the_tiny_recipe_generates_with_tensor_parallelism_of_two(qwen3_world, tmp_path, launcher):
    """2 processes, one engine split over both (TRL's `tp_group`; each process notes the engine's tensor parallel
    size, 2): each process's rows go with their own videos (gathered in the group as TRL gathers their prompts, and
    handed back by rank), so every step's sampled log-probs are the trainer's within 1e-5 (fp32) on each process's
    own rows, with the weights synced into both shards each step. The processes' rows hold different videos (noted),
    so a video sent with the other process's prompt would show: the control, the group's videos gathered in reverse
    rank order, gave 1.4e-2."""
    model = two_head_model(qwen3_world, tmp_path / "model")
    # a row a video: each step's 2 prompts (a process's each) are of different videos
    rows, firsts = tmp_path / "qa.jsonl", {}
    for line in qwen3_world.qa_path.read_text().splitlines():
        firsts.setdefault(json.loads(line)["videos"], line)
    rows.write_text("".join(line + "\n" for line in firsts.values()))
    assert len(firsts) == 2
    settings = VARIED_RUN | dict(
        model_name_or_path=model,
        dataset_name=rows,
        max_steps=2,
        per_device_train_batch_size=4,  # a prompt a process
        reward_funcs="varied_reward.characters_noting_the_engine",
        use_vllm="true",
        vllm_mode="colocate",
        vllm_tensor_parallel_size=2,
        vllm_max_model_length=1024,
    )
    out, notes = tmp_path / "run", tmp_path / "notes"
    notes.mkdir()
    environment = {"PYTHONPATH": str(launcher.root / "tests"), "ENGINE_NOTES": str(notes)}
    launcher.run(launcher.command(qwen3_world, out, 2, **settings), env=environment, timeout=600)
    steps = [entry for entry in launcher.state(out)["log_history"] if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert entry["sampling/sampling_logp_difference/max"] <= 1e-5, entry
        assert entry["grad_norm"] > 0
    noted = [[json.loads(line) for line in (notes / f"rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)]
    assert len(noted[0]) == len(noted[1]) == 2
    assert all(note["tensor_parallel"] == 2 for note in noted[0] + noted[1])
    assert all(zero["videos"] != one["videos"] for zero, one in zip(*noted, strict=True))
