"""Sequence parallelism (`sequence_parallel.py`): a group of 2 processes splitting each row computes what one
process computes on the whole row."""

import json

import pytest

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


@pytest.mark.parametrize(
    ("family", "share_prefix"), [("qwen2_5_vl", True), ("qwen2_5_vl", False), ("qwen3_vl", True), ("qwen3_vl", False)]
)
def test_split_rows_equal_the_whole_model(family, share_prefix, family_world, tmp_path, launcher):
    """Log-probs (the old-policy pass TRL ran, and again) within 1e-5 and gradients within 1e-4 of the whole model's,
    with 2 frame pairs and half of every row's tokens on each process; the controls (rank 1's positions a token
    late, the other process's frame features left out) move the log-probs by more than 10 times their tolerance and the gradients by more than 100 times theirs."""
    world = family_world(family)
    command = [launcher.accelerate, "launch", "--config_file", str(launcher.root / "accelerate_configs/cpu.yaml")]
    command += ["--num_processes", "2", str(launcher.root / "tests/sequence_parallel_run.py")]
    launcher.run(command + [str(world_file(world, tmp_path / "world.json")), str(tmp_path), str(int(share_prefix))])
    for rank in range(2):
        result = json.loads((tmp_path / f"process-{rank}.json").read_text())
        for exact in (result["exact"], result["checkpointed"]):
            assert exact["logps"] <= 1e-5 and exact["old_logps"] <= 1e-5, exact
            assert exact["grads"] <= 1e-4 and exact["visual_grads"], exact
        for control in ("late_positions", "no_visual_gather"):
            assert result[control]["logps"] > 1e-4 and result[control]["grads"] > 1e-2, (control, result[control])
        start, end, length = result["shards"][0]
        assert (start, end) == ((0, length // 2) if rank == 0 else (length // 2, length))
        assert result["frames"][0] >= 4  # the frame pairs of the pass's videos, half of them encoded here
        split = result["split"]
        assert split["generated_rows"] == [2] and split["rows"] == 4  # 2 prompts, G = 2: half of the rows sampled here
        assert split["same_on_both"] and split["copies_differ"]  # gathered alike; the G copies sampled apart
        assert split["exact"]["logps"] <= 1e-5 and split["exact"]["grads"] <= 1e-4


@pytest.mark.parametrize("share_prefix", [True, False])
def test_the_tiny_recipe_on_a_group_of_two_ends_where_one_process_ends(share_prefix, tiny_world, tmp_path, launcher):
    """`--sequence_parallel_size 2 --sequence_parallel_generation whole` on 2 processes against the same recipe on 1
    (a reference model too, beta 0.04; a reward that varies on the untrained model): the logged loss and grad norm
    of each step within 1e-4 (relative), the tokens counted once, the saved weights within 1e-5."""
    settings = dict(
        max_steps=3,
        save_strategy="no",
        share_prompt_prefix=str(share_prefix).lower(),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        beta=0.04,
        reward_funcs="varied_reward.characters",
        reward_weights="1.0",
    )
    tests = {"PYTHONPATH": str(launcher.root / "tests")}
    one, two = tmp_path / "one", tmp_path / "two"
    launcher.run(launcher.command(tiny_world, one, 1, **settings), env=tests)
    launcher.run(
        launcher.command(
            tiny_world, two, 2, sequence_parallel_size=2, sequence_parallel_generation="whole", **settings
        ),
        env=tests,
    )
    steps = [[entry for entry in launcher.state(run)["log_history"] if "loss" in entry] for run in (one, two)]
    assert len(steps[0]) == len(steps[1]) == 3
    for alone, split in zip(*steps, strict=True):
        assert alone["grad_norm"] > 0
        for key in ("loss", "grad_norm"):
            assert split[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-9), key
        assert split["num_tokens"] == alone["num_tokens"]
    from safetensors.torch import load_file

    alone, split = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert alone.keys() == split.keys()
    assert max(float((alone[k] - split[k]).abs().max()) for k in alone) <= 1e-5
