"""Dynamic sampling (DAPO): exactly the groups whose rewards do not vary are replaced, by varied groups of refill
batches, on 1 and on 2 processes."""

import json

import pytest
import torch

from rewatch_trl.dynamic import refill_prompts, replace_groups, zero_variance_groups


NAN = float("nan")


def test_zero_variance_is_told_as_trl_tells_it():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, NAN, NAN, 0.5, NAN, 0.3, 0.3 + 1e-9])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True, True, True]


def test_refill_prompts_are_drawn_alike_everywhere_and_anew_each_round():
    drawn = refill_prompts(10, 4, step=3, round_=1, seed=0)
    assert len(set(drawn)) == 4 and drawn == refill_prompts(10, 4, step=3, round_=1, seed=0)
    assert drawn != refill_prompts(10, 4, step=3, round_=2, seed=0)
    assert drawn != refill_prompts(10, 4, step=4, round_=1, seed=0)


def test_replacing_a_group_pads_prompts_left_and_completions_right():
    batch = {
        "prompt_ids": torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]]),
        "prompt_mask": torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]),
        "completion_ids": torch.tensor([[1, 0], [2, 3], [4, 0], [5, 0]]),
        "completion_mask": torch.tensor([[1, 0], [1, 1], [1, 0], [1, 0]]),
        "advantages": torch.tensor([0.0, 0.0, 1.0, -1.0]),
        "video_inputs": ["a", "a", "b", "b"],
        "num_items_in_batch": torch.tensor(5),
    }
    refill = {
        "prompt_ids": torch.tensor([[3, 3, 3, 3], [3, 3, 3, 3]]),
        "prompt_mask": torch.ones(2, 4, dtype=torch.long),
        "completion_ids": torch.tensor([[6, 6, 6], [7, 0, 0]]),
        "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "advantages": torch.tensor([0.5, -0.5]),
        "video_inputs": ["c", "c"],
        "num_items_in_batch": torch.tensor(4),
    }
    merged = replace_groups(batch, refill, [(0, 0)], 2, pad_id=0)
    assert merged["prompt_ids"].tolist() == [[3, 3, 3, 3], [3, 3, 3, 3], [0, 7, 8, 9], [0, 7, 8, 9]]
    assert merged["prompt_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
    assert merged["completion_ids"].tolist() == [[6, 6, 6], [7, 0, 0], [4, 0, 0], [5, 0, 0]]
    assert merged["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert merged["advantages"].tolist() == [0.5, -0.5, 1.0, -1.0]
    assert merged["video_inputs"] == ["c", "c", "b", "b"] and batch["video_inputs"] == ["a", "a", "b", "b"]
    with pytest.raises(NotImplementedError, match=r"\['pixel_values'\]"):
        replace_groups(batch | {"pixel_values": torch.zeros(1)}, refill, [(0, 0)], 2, pad_id=0)


def test_a_tool_mask_on_one_side_only_is_merged_with_the_others_ones():
    """TRL sets `tool_mask` only on a batch with a masked row (a broken video's, an agentic clip's): a refill group
    moved in keeps its masked rows masked, and a batch's masked rows stay masked beside a refill without one."""
    batch = {
        "prompt_ids": torch.tensor([[5], [5], [6], [6]]),
        "prompt_mask": torch.ones(4, 1, dtype=torch.long),
        "completion_ids": torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]),
        "completion_mask": torch.ones(4, 2, dtype=torch.long),
        "advantages": torch.zeros(4),
    }
    refill = {key: value[:2].clone() for key, value in batch.items()}
    masked = torch.tensor([[0, 0], [0, 0]])
    merged = replace_groups(batch, refill | {"tool_mask": masked}, [(0, 0)], 2, pad_id=0)
    assert merged["tool_mask"].tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]  # the refill's masked rows moved in
    own = torch.tensor([[1, 1], [1, 1], [0, 0], [0, 0]])
    merged = replace_groups(batch | {"tool_mask": own}, refill, [(0, 0)], 2, pad_id=0)
    assert merged["tool_mask"].tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]  # the batch's stay masked


def expected_groups(record: dict) -> list:
    """The groups the batch must end with: each zero-variance group of the first batch, in order, takes the next
    varied group of the refill batch at hand; what a refill has left over goes."""
    first, *refills = record["scored"]
    final = list(first["groups"])
    waiting = [slot for slot, zero in enumerate(first["zero"]) if zero]
    for refill in refills:
        varied = [group for group, zero in zip(refill["groups"], refill["zero"], strict=True) if not zero]
        for slot, group in zip(list(waiting), varied, strict=False):
            final[slot] = group
            waiting.remove(slot)
    return final


def assert_exact_replacement(record: dict, zero_slots: list[int]) -> None:
    first = record["scored"][0]
    assert [slot for slot, zero in enumerate(first["zero"]) if zero] == zero_slots
    assert record["final"] == expected_groups(record)
    for slot, group in enumerate(record["final"]):
        if slot not in zero_slots:
            assert group == first["groups"][slot]  # untouched
        else:
            assert group != first["groups"][slot]
    assert record["tokens"] == sum(len(row) - row.index(-1) - 1 for group in record["final"] for row in group)


def test_dynamic_sampling_replaces_exactly_the_zero_variance_groups(tiny_world, tmp_path):
    from peer_options_run import dynamic_trainer, process_rows, recorded_dynamic_batch

    trainer, dataset = dynamic_trainer(tiny_world, tmp_path)
    record = recorded_dynamic_batch(trainer, process_rows(dataset, 0))
    assert_exact_replacement(record, zero_slots=[0])
    rounds = len(record["scored"]) - 1
    assert record["metrics"] == {
        "dynamic/zero_variance_groups": 1,
        "dynamic/resample_rounds": rounds,
        "dynamic/kept_zero_variance_groups": 0,
    }
    assert rounds >= 1 and record["num_items_in_batch"] == record["tokens"]
    assert record["logged_advantages"] == pytest.approx(record["advantages"])  # the logs hold the rows trained on
    assert all(a != 0 for a in record["advantages"])  # every group now teaches
    # the control: without dynamic sampling the group on synthetic_000.mp4 stays, advantage 0
    from rewatch_trl.dynamic import DynamicSampling

    trainer.features = [feature for feature in trainer.features if not isinstance(feature, DynamicSampling)]
    plain = recorded_dynamic_batch(trainer, process_rows(dataset, 0))
    assert len(plain["scored"]) == 1 and plain["advantages"][:2] == [0.0, 0.0]


def test_dynamic_sampling_replaces_the_zero_variance_group_on_qwen3_vl(qwen3_world, tmp_path):
    """Qwen3-VL's batches (no `second_per_grid_ts`, timestamps in the prompt's text) merge as Qwen2.5-VL's do."""
    from peer_options_run import G, dynamic_trainer, recorded_dynamic_batch

    trainer, dataset = dynamic_trainer(qwen3_world, tmp_path)
    videos = [str(row["videos"]) for row in dataset]
    first = next(i for i, v in enumerate(videos) if "synthetic_000.mp4" in v)  # its rewards never vary
    other = next(i for i, v in enumerate(videos) if "synthetic_001.mp4" in v)
    record = recorded_dynamic_batch(trainer, [dataset[i] for i in (first, other) for _ in range(G)])
    assert_exact_replacement(record, zero_slots=[0])
    assert all(a != 0 for a in record["advantages"])
    assert record["num_items_in_batch"] == record["tokens"]


def test_dynamic_sampling_and_t_grpo_on_two_processes(tiny_world, tmp_path, launcher):
    """Dynamic sampling refills as often on every process, each replacing its own zero-variance groups; T-GRPO's
    shuffled rollouts of a prompt on both processes see one order of its frames, and its bonus is the rule's on all of
    its rollouts."""
    world = {
        "root": str(tiny_world.root),
        "video_dir": str(tiny_world.video_dir),
        "qa_path": str(tiny_world.qa_path),
        "captions_path": str(tiny_world.captions_path),
        "rows": tiny_world.rows,
    }
    (tmp_path / "world.json").write_text(json.dumps(world))
    command = [launcher.accelerate, "launch", "--config_file", str(launcher.root / "accelerate_configs/cpu.yaml")]
    command += ["--num_processes", "2", str(launcher.root / "tests/peer_options_run.py")]
    launcher.run(command + [str(tmp_path / "world.json"), str(tmp_path)])
    first, second = (json.loads((tmp_path / f"process-{i}.json").read_text()) for i in range(2))
    assert_exact_replacement(first, zero_slots=[0])
    assert_exact_replacement(second, zero_slots=[])  # nothing to replace, yet it generated every refill batch too
    assert len(first["scored"]) == len(second["scored"]) >= 2
    assert first["metrics"] == second["metrics"]
    assert first["metrics"]["dynamic/zero_variance_groups"] == 1
    assert first["num_items_in_batch"] == second["num_items_in_batch"] == first["tokens"] + second["tokens"]
    trained = first["advantages"] + second["advantages"]
    assert first["logged_advantages"] == pytest.approx(trained) == second["logged_advantages"]
    # T-GRPO: p = 0.375 against p̃ = 1/3 (3 shuffled rollouts): paid; against p̃ = 0.5 (2, all on process 0): not
    for record in (first, second):
        assert record["temporal"]["3"]["rewards"] == pytest.approx([1.3, 0.0, 0.8, 0.0])
        assert record["temporal"]["2"]["rewards"] == pytest.approx([1.0, 0.0, 0.5, 0.0])
    shuffled = first["temporal"]["3"]["shuffled"] + second["temporal"]["3"]["shuffled"]
    ordered = first["temporal"]["3"]["ordered"]
    assert len(shuffled) == 3 and all(s == shuffled[0] for s in shuffled)  # one order on both processes
    assert sorted(shuffled[0]) == sorted(ordered) and shuffled[0] != ordered  # the same frames, another order
    # with 2, process 1 sampled a stand-in (its own video, unshuffled) and scored nothing of it
    assert second["temporal"]["2"]["shuffled"] == [second["temporal"]["2"]["ordered"]]
    assert first["temporal"]["2"]["scored"] == [2, 2] and second["temporal"]["2"]["scored"] == [1, 2]


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_loss_trains_on_the_replaced_groups_across_steps_and_iterations(dynamic, tiny_world, tmp_path):
    """`steps_per_generation` 2 and `num_iterations` 2: the 4 micro-steps of a generation batch train on its rows
    after the replacement (every advantage non-zero); the control, without dynamic sampling, trains on the two flat
    groups of synthetic_000.mp4 (advantage 0). T-GRPO is on beside it."""
    from peer_options_run import dynamic_trainer

    rows = [tiny_world.rows[i] for i in (0, 1, 2, 4)]  # 2 prompts on synthetic_000.mp4, 2 on other videos
    trainer, _ = dynamic_trainer(
        tiny_world,
        tmp_path,
        rows=rows,
        dynamic_sampling=dynamic,
        steps_per_generation=2,
        gradient_accumulation_steps=2,
        num_iterations=2,
        temporal_contrast=True,
        accuracy_reward="characters_but_on_the_first_video",
    )
    trained = []
    compute_loss = trainer._compute_loss

    def recording(model, inputs):
        trained.append(inputs["advantages"].tolist())
        return compute_loss(model, inputs)

    trainer._compute_loss = recording
    trainer.train()
    assert len(trained) == 4 and all(len(advantages) == 4 for advantages in trained)
    first = trainer.state.log_history[0]
    zeros = sum(a == 0 for advantages in trained for a in advantages)
    if dynamic:
        assert zeros == 0
        assert first["dynamic/zero_variance_groups"] == 2 and first["dynamic/kept_zero_variance_groups"] == 0
    else:
        assert zeros == 2 * 2 * 2  # the two flat groups' rows, in both iterations
        assert "dynamic/zero_variance_groups" not in first
    assert first["temporal/shuffled_accuracy"] > 0 and "temporal/bonus_fraction" in first


def test_the_tiny_peers_recipe_trains_with_t_grpo_the_band_and_dynamic_sampling(
    tiny_world, sft_model, tmp_path, launcher
):
    """`recipes/tiny/grpo_peers.yaml` as written, through the GRPO entry point, on the tiny mix (image and video
    rows): every step logs T-GRPO's and dynamic sampling's figures, and the band takes the recipe's `reward_kwargs`."""
    from test_mixture import tiny_mix_arguments

    from rewatch_trl.grpo import main, parse_args

    arguments = tiny_mix_arguments("grpo_peers", tiny_world, sft_model, tmp_path, launcher)
    trainer = main(*parse_args(arguments + ["--max_steps", "2", "--num_generations", "2"]))
    assert trainer.reward_funcs[-1].keywords == {"low": 16, "high": 48, "bonus": 0.2}
    from rewatch_trl.temporal import TemporalContrast

    contrast = trainer.feature(TemporalContrast)
    assert contrast.rollouts == 1 and contrast.accuracy == 1
    steps = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert 0 <= entry["temporal/shuffled_accuracy"] <= 1 and 0 <= entry["temporal/bonus_fraction"] <= 1
        assert entry["dynamic/resample_rounds"] <= 2
        assert entry["dynamic/kept_zero_variance_groups"] <= entry["dynamic/zero_variance_groups"]
