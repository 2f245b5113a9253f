"""Sequence parallelism (`sequence_parallel.py`): a group of 2 processes splitting each row computes what one
process computes on the whole row."""

import json

import pytest
from conftest import VARIED_RUN

from rewatch_trl.sequence_parallel import GroupSampler, Shard


def world_file(world, path):
    fields = ("root", "video_dir", "qa_path", "captions_path")
    record = {key: str(getattr(world, key)) for key in fields} | {"rows": world.rows, "family": world.family}
    path.write_text(json.dumps(record))
    return path


def test_shards_cover_the_sequence_in_order():
    for length, size in [(10, 2), (11, 2), (7, 4), (4, 4)]:
        shards = [Shard.of(length, size, rank) for rank in range(size)]
        assert [s.start for s in shards] == [0, *[s.end for s in shards[:-1]]]
        assert shards[-1].end == length and max(shards[0].sizes) - min(shards[0].sizes) <= 1


def test_the_group_sampler_gives_each_group_its_rows_once_per_process():
    # accelerate deals batch k to process k mod W: W = 4 processes, groups of 2, batches of 3 rows
    stream = list(GroupSampler(range(12), rows=3, times=2))
    batches = [stream[i : i + 3] for i in range(0, len(stream), 3)]
    per_process = {p: [b for k, b in enumerate(batches) if k % 4 == p] for p in range(4)}
    assert per_process[0] == per_process[1] == [[0, 1, 2], [6, 7, 8]]
    assert per_process[2] == per_process[3] == [[3, 4, 5], [9, 10, 11]]
    assert len(GroupSampler(range(12), rows=3, times=2)) == 24


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_split_rows_equal_the_whole_model(family, family_world, tmp_path, launcher):
    """Log-probs (the old-policy pass TRL ran, and again) within 1e-5 and gradients within 1e-4 of the whole model's,
    with 2 frame pairs and half of every row's tokens on each process, the prompt prefix shared and not,
    checkpointed and not; the controls (rank 1's positions a token late, the other process's frame features left
    out) move the log-probs by more than 10 times their tolerance and the gradients by more than 100 times theirs."""
    world = family_world(family)
    command = [launcher.accelerate, "launch", "--config_file", str(launcher.root / "accelerate_configs/cpu.yaml")]
    command += ["--num_processes", "2", str(launcher.root / "tests/sequence_parallel_run.py")]
    launcher.run(command + [str(world_file(world, tmp_path / "world.json")), str(tmp_path)])
    for rank in range(2):
        result = json.loads((tmp_path / f"process-{rank}.json").read_text())
        for setting in ("exact", "unshared", "checkpointed", "checkpointed_unshared"):
            found = result[setting]
            assert found["logps"] <= 1e-5 and found["old_logps"] <= 1e-5, (setting, found)
            assert found["grads"] <= 1e-4 and found["visual_grads"], (setting, found)
        assert result["prefix_rows"] > 0  # the shared prefix's passes ran
        for control in ("late_positions", "no_visual_gather"):
            assert result[control]["logps"] > 1e-4 and result[control]["grads"] > 1e-2, (control, result[control])
        start, end, length = result["shards"][0]
        assert (start, end) == ((0, length // 2) if rank == 0 else (length // 2, length))
        assert result["frames"][0] >= 4  # the frame pairs of the pass's videos, half of them encoded here
        split = result["split"]
        assert split["generated_rows"] == [2] and split["rows"] == 4  # 2 prompts, G = 2: half of the rows sampled here
        assert split["same_on_both"] and split["copies_differ"]  # gathered alike; the G copies sampled apart
        assert split["seed_shared_after"]  # what the group samples next, it samples alike
        assert split["exact"]["logps"] <= 1e-5 and split["exact"]["grads"] <= 1e-4


one_process_runs = {}


@pytest.mark.parametrize(
    ("share_prefix", "config"),
    [
        (True, "accelerate_configs/cpu.yaml"),
        (False, "accelerate_configs/cpu.yaml"),
        (True, "tests/deepspeed/zero3_cpu.yaml"),  # ZeRO-2 gave the same figures, checked once by hand
    ],
)
def test_the_tiny_recipe_on_a_group_of_two_ends_where_one_process_ends(
    share_prefix, config, tiny_world, tmp_path, launcher
):
    """`--sequence_parallel_size 2 --sequence_parallel_generation whole` on 2 processes (DDP, ZeRO-3)
    against the same recipe on 1 (a reference model too, beta 0.04; a reward that varies on the untrained model):
    the logged loss and grad norm of each step within 1e-4 (relative), the tokens counted once, the saved weights
    within 1e-5."""
    settings = VARIED_RUN | dict(max_steps=2, share_prompt_prefix=str(share_prefix).lower(), beta=0.04)
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    one, two = one_process_runs.get(share_prefix), tmp_path / "two"
    if one is None:  # the run on 1 process, once for the module's tests of the same setting
        one = one_process_runs[share_prefix] = tmp_path / "one"
        launcher.run(launcher.command(tiny_world, one, 1, **settings), env=tests)
    launcher.run(
        launcher.command(
            tiny_world,
            two,
            2,
            config=config,
            sequence_parallel_size=2,
            sequence_parallel_generation="whole",
            **settings,
        ),
        env=tests,
    )
    assert_the_same_run(launcher, one, two, steps=2)


def assert_the_same_run(launcher, one, two, steps: int, also: tuple[str, ...] = ()) -> list[dict]:
    """Runs `one` (1 process) and `two` (a group of 2) logged `steps` steps alike: loss and grad norm within 1e-4
    (relative), the tokens counted once, the metrics `also` equal; their saved weights within 1e-5. Returns the
    steps of `two`."""
    logged = [[entry for entry in launcher.state(run)["log_history"] if "loss" in entry] for run in (one, two)]
    assert len(logged[0]) == len(logged[1]) == steps
    assert any(alone["grad_norm"] > 0 for alone in logged[0])
    for alone, split in zip(*logged, strict=True):
        for key in ("loss", "grad_norm"):
            assert split[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-9), key
        assert split["num_tokens"] == alone["num_tokens"]
        for key in also:
            assert split[key] == pytest.approx(alone[key], rel=1e-5), key
    from safetensors.torch import load_file

    alone, split = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert alone.keys() == split.keys()
    assert max(float((alone[k] - split[k]).abs().max()) for k in alone) <= 1e-5
    return logged[1]


@pytest.mark.parametrize("features", ["t_grpo_and_dynamic_sampling", "agentic_and_dynamic_sampling"])
def test_the_features_on_a_group_of_two_end_where_one_process_ends(
    features, tiny_world, sft_model, tmp_path, launcher
):
    """T-GRPO and dynamic sampling, and agentic re-watching (the clips' rounds) and dynamic sampling, on a group of 2
    (`whole`) end where 1 process ends: the same steps, refills, shuffled rollouts and clips. Then agentic on 2
    processes with `split` (each round's rows shared out, one row a prompt, as T-GRPO's shuffled rollouts are): it
    trains, on clips."""
    settings = dict(
        model_name_or_path=sft_model,
        save_strategy="no",
        per_device_train_batch_size=8,
        num_generations=4,
        reward_funcs="varied_reward.characters_but_on_the_first_video",  # flat groups: refills
        reward_weights="1.0",
        dynamic_sampling="true",
        max_resample_rounds=1,
    )
    if features == "agentic_and_dynamic_sampling":
        settings |= dict(recipe="grpo_rewatch", max_completion_length=48)
        also = ("dynamic/zero_variance_groups", "rewatch/clips_per_completion", "rewatch/clip_frames")
    else:  # a prompt a step: synthetic_000.mp4's is flat at step 2
        settings |= dict(temporal_contrast="true", accuracy_reward="characters_but_on_the_first_video")
        settings |= dict(max_completion_length=16, per_device_train_batch_size=4)
        also = ("dynamic/zero_variance_groups", "temporal/shuffled_accuracy", "temporal/bonus_fraction")
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    one, whole, split = tmp_path / "one", tmp_path / "whole", tmp_path / "split"
    launcher.run(launcher.command(tiny_world, one, 1, **settings), env=tests)
    grouped = dict(sequence_parallel_size=2, **settings)
    launcher.run(launcher.command(tiny_world, whole, 2, sequence_parallel_generation="whole", **grouped), env=tests)
    steps = assert_the_same_run(launcher, one, whole, steps=2, also=also)
    assert sum(entry["dynamic/zero_variance_groups"] for entry in steps) > 0
    if features == "agentic_and_dynamic_sampling":  # T-GRPO's shuffled rows go through the same split as a round's
        launcher.run(
            launcher.command(tiny_world, split, 2, sequence_parallel_generation="split", **grouped), env=tests
        )
        steps = [entry for entry in launcher.state(split)["log_history"] if "loss" in entry]
        assert len(steps) == 2 and all(entry["grad_norm"] > 0 for entry in steps)
        assert all(entry["rewatch/clips_per_completion"] > 0 for entry in steps)


def test_the_tiny_sft_recipe_on_a_group_of_two_ends_where_one_process_ends(tiny_world, tmp_path, launcher):
    """SFT with `--sequence_parallel_size 2` on 2 processes against 1: each step's loss and grad norm within 1e-4
    (relative), the tokens counted once, the saved weights within 1e-5; the group's processes trained on the same
    rows, each on half of every row's frames and tokens."""
    settings = dict(max_steps=3, logging_steps=1, save_strategy="no", per_device_train_batch_size=4)
    one, two = tmp_path / "one", tmp_path / "two"
    launcher.run(launcher.command(tiny_world, one, 1, stage="sft", **settings))
    launcher.run(launcher.command(tiny_world, two, 2, stage="sft", sequence_parallel_size=2, **settings))
    assert_the_same_run(launcher, one, two, steps=3)


def test_a_shards_masks_give_the_whole_attentions_rows():
    """The masks a shard's queries get where the model relies on the causal flag: the additive rows (CPU, eager),
    torch's bottom-right causal bias (sdpa on a GPU) and none for the first shard each give the rows of the whole
    sequence's causal attention; the control, sdpa's own causal flag on a later shard, does not."""
    import torch
    from torch.nn.attention.bias import causal_lower_right
    from torch.nn.functional import scaled_dot_product_attention as attention

    from rewatch_trl.sequence_parallel import SequenceGroup, SequenceParallel

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=generator) for _ in range(3))
    whole = attention(q, k, v, is_causal=True)
    parallel = SequenceParallel.__new__(SequenceParallel)
    parallel.group, parallel.attention = SequenceGroup(), "sdpa"
    for rank in range(2):
        shard = Shard.of(10, 2, rank)
        rows = slice(shard.start, shard.end)
        keys, values = k[:, :, : shard.end], v[:, :, : shard.end]
        mask = parallel._mask_rows(None, shard, q)
        assert (mask is None) == (rank == 0)
        got = attention(q[:, :, rows], keys, values, attn_mask=mask, is_causal=mask is None)
        assert (got - whole[:, :, rows]).abs().max() <= 1e-6
        bias = attention(q[:, :, rows], keys, values, attn_mask=causal_lower_right(shard.end - shard.start, shard.end))
        assert (bias - whole[:, :, rows]).abs().max() <= 1e-6
    flagged = attention(q[:, :, 5:], k, v, is_causal=True)  # top-left: the control
    assert (flagged - whole[:, :, 5:]).abs().max() > 1e-2


def test_the_families_sequence_parallelism_cannot_split_are_refused_by_name():
    from rewatch_trl.families import FAMILIES

    for family in ("qwen3_5", "qwen3_vl_moe"):
        with pytest.raises(NotImplementedError, match=f"sequence_parallel_size > 1 does not run {family}"):
            FAMILIES[family].check("sequence_parallel")
    FAMILIES["qwen3_vl"].check("sequence_parallel")


def test_the_config_sizes_the_generation_batch_for_the_groups(monkeypatch):
    """On 4 processes in groups of 2, the generation batch is that of 2 data-parallel processes; settings that
    cannot split are refused, naming the keys."""
    from transformers import TrainingArguments

    from rewatch_trl.configs import GRPOConfig

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 4))
    common = dict(output_dir="unused", use_cpu=True, bf16=False, report_to="none")
    config = GRPOConfig(**common, per_device_train_batch_size=4, num_generations=4, sequence_parallel_size=2)
    assert config.generation_batch_size == 4 * 2 and config.steps_per_generation == 1
    with pytest.raises(ValueError, match=r"per_device_train_batch_size \* steps_per_generation \(2\)"):
        GRPOConfig(**common, per_device_train_batch_size=2, num_generations=4, sequence_parallel_size=2)
    with pytest.raises(ValueError, match=r"num_generations \(6\) must be a multiple of 4"):
        GRPOConfig(**common, per_device_train_batch_size=6, num_generations=6, sequence_parallel_size=4)
    with pytest.raises(ValueError, match=r"must divide the number of processes \(4\)"):
        GRPOConfig(**common, per_device_train_batch_size=6, num_generations=6, sequence_parallel_size=3)
    whole = GRPOConfig(
        **common,
        per_device_train_batch_size=6,
        num_generations=6,
        sequence_parallel_size=4,
        sequence_parallel_generation="whole",
    )
    assert whole.generation_batch_size == 6
    # one engine for several processes' rows, which a group's processes each hold: not run, refused by key
    for engine in (dict(vllm_mode="server"), dict(vllm_mode="colocate", vllm_tensor_parallel_size=2)):
        with pytest.raises(ValueError, match="sequence_parallel_size > 1 generates with vllm_mode='colocate' and vll"):
            GRPOConfig(**common, per_device_train_batch_size=4, sequence_parallel_size=2, use_vllm=True, **engine)


@pytest.mark.vllm
def test_the_tiny_recipe_with_vllm_on_a_group_of_two(tiny_world, tmp_path, launcher):
    """With vLLM colocated: `whole` on a group of 2 ends where 1 process ends (each process's engine seeded by its
    group: the same completions), the sampler's log-probs within 1e-5 of the trainer's on every step; `split` (each
    engine sampling G / 2 of a prompt's completions, gathered) trains with them as close."""
    settings = VARIED_RUN | dict(max_steps=2, use_vllm="true", vllm_mode="colocate", vllm_max_model_length=1024)
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    one, whole, split = tmp_path / "one", tmp_path / "whole", tmp_path / "split"
    launcher.run(launcher.command(tiny_world, one, 1, **settings), env=tests, timeout=600)
    for out, mode in ((whole, "whole"), (split, "split")):
        command = launcher.command(
            tiny_world, out, 2, sequence_parallel_size=2, sequence_parallel_generation=mode, **settings
        )
        launcher.run(command, env=tests, timeout=600)
    steps = {run: [e for e in launcher.state(run)["log_history"] if "loss" in e] for run in (one, whole, split)}
    for alone, grouped in zip(steps[one], steps[whole], strict=True):
        assert grouped["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-4)
        # completions of one length at ratio 1: TRL's loss is the rounding left of advantages that sum to 0 (~5e-7)
        assert grouped["loss"] == pytest.approx(alone["loss"], abs=1e-6)
        assert grouped["num_tokens"] == alone["num_tokens"] and grouped["reward"] == alone["reward"]
    for entry in steps[whole] + steps[split]:
        assert entry["sampling/sampling_logp_difference/max"] <= 1e-5, entry
    assert len(steps[split]) == 2 and all(e["grad_norm"] > 0 for e in steps[split])
    from safetensors.torch import load_file

    alone, grouped = load_file(one / "model.safetensors"), load_file(whole / "model.safetensors")
    assert max(float((alone[k] - grouped[k]).abs().max()) for k in alone) <= 1e-5
