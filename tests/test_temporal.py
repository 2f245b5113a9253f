"""T-GRPO's temporal contrast (Video-R1) and the gate of its length bonus: the rules on scripted accuracies, and the
shuffled rollouts in a GRPO batch (their frames, their vision pass, kept out of the loss)."""

import functools

import pytest
import torch

from rewatch_trl.collator import prompt_key
from rewatch_trl.rewards import get_reward_funcs, length_band_reward
from rewatch_trl.rewatch import CLIP_TEXT
from rewatch_trl.temporal import frame_order, length_band_gate, temporal_bonus


NAN = float("nan")


def test_the_bonus_goes_to_the_right_rollouts_of_prompts_whose_order_matters():
    accuracy = torch.tensor(
        [
            [1.0, 0.0, 0.1, 0.11],  # p = 0.3025 ≥ 0.8 · 0.25: the rollouts above 0.1 (not at it) are paid
            [1.0, 0.0, 0.0, 0.0],  # p = 0.25 < 0.8 · 0.5: none
            [0.5, 0.5, 0.5, 0.5],  # p = 0.5 = 0.8 · 0.625: paid (≥)
            [1.0, 1.0, 1.0, 1.0],  # an image prompt: no shuffled rollout, no temporal term
            [1.0, NAN, 0.0, 1.0],  # unscored rows are left out of p and never paid; p = 2/3 ≥ 0.8 · 0
        ]
    )
    shuffled = torch.tensor([0.25, 0.5, 0.625, NAN, 0.0])
    bonus = temporal_bonus(accuracy.flatten(), shuffled, 4, alpha=0.3, ratio=0.8).view(5, 4)
    expected = [[0.3, 0, 0, 0.3], [0, 0, 0, 0], [0.3] * 4, [0, 0, 0, 0], [0.3, 0, 0, 0.3]]
    assert torch.allclose(bonus, torch.tensor(expected))
    # the control: the ratio that Video-R1 uses is what splits the first two prompts
    assert temporal_bonus(accuracy[1], shuffled[1:2], 4, ratio=0.4).tolist() == pytest.approx([0.3, 0, 0, 0])


def test_the_length_band_pays_its_edges_and_video_r1s_gate_right_answers_of_varied_prompts():
    ids = [[7] * n for n in (319, 320, 512, 513)]
    assert length_band_reward([""] * 4, completion_ids=ids) == [0.0, 0.2, 0.2, 0.0]
    (band,) = get_reward_funcs(["length_band"], reward_kwargs={"length_band": {"low": 1, "high": 319, "bonus": 1.0}})
    assert band([""] * 4, completion_ids=ids) == [1.0, 0.0, 0.0, 0.0]
    assert band.__name__ == "length_band_reward"
    with pytest.raises(ValueError, match="completion_ids"):
        length_band_reward([""])
    with pytest.raises(ValueError, match=r"reward_kwargs names \['lenght_band'\]"):
        get_reward_funcs(["length_band"], reward_kwargs={"lenght_band": {}})
    # more than one right answer (> 0.1) in the prompt: the right ones; one alone, or answers at 0.1: none
    accuracy = torch.tensor([1.0, 0.5, 0.1, 0.0, 1.0, 0.1, 0.0, NAN])
    assert length_band_gate(accuracy, 4).tolist() == [True, True, False, False] + [False] * 4


def test_a_prompts_frame_order_is_the_same_on_every_process_and_new_each_step():
    order = frame_order(8, "prompt", step=3, seed=0)
    assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
    assert torch.equal(order, frame_order(8, "prompt", step=3, seed=0))
    assert not torch.equal(order, frame_order(8, "prompt", step=4, seed=0))
    assert not torch.equal(order, frame_order(8, "other prompt", step=3, seed=0))


class Scripted:
    """An accuracy reward that answers each call with the next scripted list, and keeps what it was asked."""

    __name__ = "scripted_accuracy"

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, completions, completion_ids, **columns):
        self.calls.append({"completion_ids": completion_ids, "data_type": columns["data_type"]})
        return self.answers.pop(0)


def recorded_generations(trainer):
    """Each generation call of `trainer` from now on: its prompts, videos, samples and completions."""
    calls = []
    generate = trainer._generate_single_turn

    def recording(prompt_ids, *args, **kwargs):
        generation = trainer.generation
        calls.append({"ids": prompt_ids, "videos": generation.videos, "samples": generation.samples})
        output = generate(prompt_ids, *args, **kwargs)
        calls[-1]["completion_ids"] = output[0]
        return output

    trainer._generate_single_turn = recording
    return calls


def test_shuffled_rollouts_see_the_frames_permuted_once_and_stay_out_of_the_loss(tiny_world, tmp_path, make_trainer):
    from test_images import absolute_rows
    from test_sharing import rows_of, scored_batch

    # one video prompt and one image prompt, G = 4: the video's first 2 rollouts also sample with its frames shuffled
    accuracy = Scripted([1.0, 0.0, 0.1, 0.5] + [1.0] * 4, [0.5, 0.0], [1.0, 0.0, 0.1, 0.5] + [1.0] * 4, [1.0, 1.0])
    rows = absolute_rows(tiny_world, [("video", "multiple choice"), ("image", "OCR")])
    trainer, dataset = make_trainer(
        tiny_world,
        tmp_path,
        rows=rows,
        num_generations=4,
        per_device_train_batch_size=8,
        temporal_contrast=True,
        accuracy_reward="scripted_accuracy",
        __init__={"reward_funcs": [accuracy, functools.partial(length_band_reward, low=0, high=4)]},
    )
    calls = recorded_generations(trainer)
    policy = trainer._shared_features[0]
    inputs = scored_batch(trainer, rows_of(dataset, [0, 1], 4))
    ordered, shuffled = calls
    video = ordered["videos"][0]
    assert len(shuffled["ids"]) == 2 and shuffled["ids"] == ordered["ids"][:2]  # the same prompt tokens
    key = prompt_key(dataset[0]["prompt"])
    order = frame_order(len(video.frames), key, step=0, seed=0)
    assert order.tolist() != sorted(order.tolist())
    for seen in shuffled["videos"]:
        assert torch.equal(seen.frames, video.frames[order]) and seen.frame_indices == video.frame_indices
    # one processor call and one vision pass for the two: they share one sample, whose pixels are the shuffled frames'
    first, second = shuffled["samples"]
    assert first is second
    assert not torch.equal(first["pixel_values_videos"], ordered["samples"][0]["pixel_values_videos"])
    again = trainer.video_collator.encode([CLIP_TEXT], [shuffled["videos"][0]])["pixel_values_videos"]
    assert torch.equal(first["pixel_values_videos"], again)
    assert policy.videos_encoded == 2 + 1  # the ordered generation (the video, the image), the shuffled one
    # scored by the accuracy reward on the shuffled completions (of the video rows), none of them in the loss's batch
    assert accuracy.calls[1] == {"completion_ids": shuffled["completion_ids"], "data_type": ["video", "video"]}
    assert accuracy.calls[0]["completion_ids"] == ordered["completion_ids"]
    kept = inputs["completion_mask"].bool()
    assert [ids[m].tolist() for ids, m in zip(inputs["completion_ids"], kept, strict=True)] == ordered[
        "completion_ids"
    ]
    assert all(sample is not first for sample in inputs["video_inputs"])
    # p = 0.4 ≥ 0.8 · 0.25: the video prompt's right rollouts +0.3; the image prompt: none
    logged = list(trainer._logs["rewards"]["scripted_accuracy"])
    assert logged[-8:] == pytest.approx([1.3, 0.0, 0.1, 0.8] + [1.0] * 4)
    metrics = trainer._metrics["train"]
    assert metrics["temporal/ordered_accuracy"][-1] == pytest.approx(0.4)
    assert metrics["temporal/shuffled_accuracy"][-1] == pytest.approx(0.25)
    assert metrics["temporal/bonus_fraction"][-1] == pytest.approx(0.5)
    # the length band: right answers of the prompts with more than one (both prompts), among completions ≤ 4 tokens
    lengths = [len(ids) for ids in ordered["completion_ids"]]
    right = [True, False, False, True] + [True] * 4
    assert list(trainer._logs["rewards"]["length_band_reward"])[-8:] == pytest.approx(
        [0.2 if r and n <= 4 else 0.0 for r, n in zip(right, lengths, strict=True)]
    )
    # the control: the same ordered accuracies against shuffled ones of 1.0: p = 0.4 < 0.8, no bonus
    scored_batch(trainer, rows_of(dataset, [0, 1], 4))
    assert list(trainer._logs["rewards"]["scripted_accuracy"])[-8:] == pytest.approx([1.0, 0.0, 0.1, 0.5] + [1.0] * 4)


def test_on_qwen3_vl_the_shuffled_frames_keep_the_prompts_timestamps_in_true_order(
    qwen3_world, tmp_path, make_trainer
):
    """Qwen3-VL writes each frame pair's time in the prompt's text (`<0.7 seconds>`): the shuffled rollouts see the
    same prompt tokens, timestamps rising, beside the permuted frames (Video-R1 shuffles the frames alone)."""
    import re

    from test_sharing import rows_of, scored_batch

    accuracy = Scripted([1.0, 0.0, 1.0, 0.0], [0.0, 1.0])
    trainer, dataset = make_trainer(
        qwen3_world,
        tmp_path,
        num_generations=2,
        per_device_train_batch_size=4,
        temporal_contrast=True,
        accuracy_reward="scripted_accuracy",
        __init__={"reward_funcs": [accuracy]},
    )
    calls = recorded_generations(trainer)
    scored_batch(trainer, rows_of(dataset, [0, 1], 2))
    ordered, shuffled = calls
    assert shuffled["ids"] == [ordered["ids"][0], ordered["ids"][2]]  # one shuffled rollout a prompt, same tokens
    text = trainer.processing_class.decode(shuffled["ids"][0])
    seconds = [float(t) for t in re.findall(r"<([\d.]+) seconds>", text)]
    assert len(seconds) == len(ordered["videos"][0].frames) // 2 and seconds == sorted(seconds)
    orders = []
    for prompt, seen, video in zip((0, 1), shuffled["videos"], ordered["videos"][::2], strict=True):
        key = prompt_key(dataset[prompt]["prompt"])
        orders.append(frame_order(len(video.frames), key, step=0, seed=0).tolist())
        assert orders[-1] != sorted(orders[-1])
        assert torch.equal(seen.frames, video.frames[orders[-1]]) and seen.frame_indices == video.frame_indices
    assert orders[0] != orders[1]  # two questions on one video: an order each
    # the pixels differ, the grid does not; p = 0.5 against p̃ = 0: the bonus; against p̃ = 1 (the control): none
    first, second = shuffled["samples"]
    assert torch.equal(first["video_grid_thw"], ordered["samples"][0]["video_grid_thw"])
    assert not torch.equal(first["pixel_values_videos"], ordered["samples"][0]["pixel_values_videos"])
    assert list(trainer._logs["rewards"]["scripted_accuracy"])[-4:] == pytest.approx([1.3, 0.0, 1.0, 0.0])


def test_temporal_contrast_needs_its_accuracy_reward_named(tiny_world, tmp_path, make_trainer):
    with pytest.raises(ValueError, match="name it in accuracy_reward"):
        make_trainer(tiny_world, tmp_path, temporal_contrast=True)
    with pytest.raises(ValueError, match=r"accuracy_reward 'acuracy' is not among the rewards \['letter_share'"):
        make_trainer(tiny_world, tmp_path, temporal_contrast=True, accuracy_reward="acuracy")
    with pytest.raises(NotImplementedError, match="agentic"):
        make_trainer(tiny_world, tmp_path, temporal_contrast=True, accuracy_reward="accuracy", rewatch_mode="agentic")
