"""M-RoPE positions: the original Qwen2.5-VL rule, written out by hand, and the positions the language model
really receives in generation, in the log-prob passes (shared prefix on and off) and in SFT."""

import json

import pytest
import torch
import transformers
from packaging.version import Version
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.positions import rope_index


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def config(tiny_model_and_processor):
    config = tiny_model_and_processor[0].config
    assert (config.vision_config.spatial_merge_size, config.vision_config.tokens_per_second) == (2, 2)
    return config


def sequence(config, *parts):
    """Token ids from parts: an int n is n text tokens, ("video", k) / ("image", k) k vision tokens."""
    ids = []
    for part in parts:
        if isinstance(part, int):
            ids += [7] * part
        else:
            kind, count = part
            ids += [config.video_token_id if kind == "video" else config.image_token_id] * count
    return torch.tensor([ids])


def stock_positions(model, ids, grid, seconds):
    """transformers' own `get_rope_index` (the class's, not the one `use_original_rope` installs)."""
    video = (ids == model.config.video_token_id).long() * 2
    return qwen.Qwen2_5_VLModel.get_rope_index(
        model.model, ids, video, video_grid_thw=grid, second_per_grid_ts=seconds
    )[0]


def text(start, count):
    return [list(range(start, start + count))] * 3


def joined(*blocks):
    return [sum((block[axis] for block in blocks), []) for axis in range(3)]


def test_tiny_video(config, tiny_model_and_processor):
    ids = sequence(config, 30, ("video", 16), 40)
    grid, seconds = torch.tensor([[4, 4, 4]]), torch.tensor([2.0])
    positions, deltas = rope_index(config, ids, video_grid_thw=grid, second_per_grid_ts=seconds)
    # merged grid (4, 2, 2); 2 s a grid x 2 tokens a second: 4 apart; the text after resumes at 42 + 1
    video = [[30] * 4 + [34] * 4 + [38] * 4 + [42] * 4, [30, 30, 31, 31] * 4, [30, 31, 30, 31] * 4]
    expected = joined(text(0, 30), video, text(43, 40))
    assert positions[:, 0].tolist() == expected
    assert deltas.tolist() == [[83 - 86]]
    # transformers 5.17's own rule resumes the text at 30 + 2 (the video's spatial extent): all 40 differ
    stock = stock_positions(tiny_model_and_processor[0], ids, grid, seconds)
    assert stock[:, 0, :46].tolist() == [axis[:46] for axis in expected]  # the video itself agrees
    assert stock[0, 0, 46:].tolist() == list(range(32, 72))
    assert (stock != positions).any(0).sum() == 40


def test_ten_minute_video_at_192_frames(config, tiny_model_and_processor):
    # 192 frames over 601 s: 6.2604 s a temporal grid (float32, as the processor returns it)
    ids = sequence(config, 30, ("video", 96 * 4), 40)
    grid, seconds = torch.tensor([[96, 4, 4]]), torch.tensor([6.2604])
    positions, deltas = rope_index(config, ids, video_grid_thw=grid, second_per_grid_ts=seconds)
    firsts = positions[0, 0, 30 : 30 + 384 : 4].tolist()
    assert firsts[:6] == [30, 42, 55, 67, 80, 92]  # 30 + int(i * 12.5208)
    assert firsts == [30 + int(i * 6.2604 * 2) for i in range(96)]
    assert firsts[-1] == 30 + 1189
    assert positions[:, 0, 30 + 384 :].tolist() == text(1220, 40)
    assert deltas.tolist() == [[1260 - 454]]
    stock = stock_positions(tiny_model_and_processor[0], ids, grid, seconds)
    if Version(transformers.__version__) < Version("5.18"):
        # transformers 5.17 counts int(6.2604) = 6 s a grid: 12 apart
        assert stock[0, 0, 30 : 30 + 384 : 4].tolist()[:6] == [30, 42, 54, 66, 78, 90]
        assert (stock != positions).any(0).sum() > 350
    else:
        # 5.18 fixed its rounding of fractional seconds: the frames' positions are the original rule's; but the text
        # after the video resumes after the video's widest spatial extent (30 + 4 // 2), not after its last time
        assert torch.equal(stock[:, :, : 30 + 384], positions[:, :, : 30 + 384])
        assert stock[:, 0, 30 + 384 :].tolist() == text(32, 40)


def test_four_fps_clip_resumes_after_its_widest_extent(config):
    # 4 fps, 2 frames a grid: 0.5 s a grid, 1 position a grid; merged grid (4, 2, 6): the width reaches furthest
    ids = sequence(config, 10, ("video", 48), 3)
    positions, deltas = rope_index(
        config, ids, video_grid_thw=torch.tensor([[4, 4, 12]]), second_per_grid_ts=torch.tensor([0.5])
    )
    video = [
        [10] * 12 + [11] * 12 + [12] * 12 + [13] * 12,
        ([10] * 6 + [11] * 6) * 4,
        list(range(10, 16)) * 8,
    ]
    assert positions[:, 0].tolist() == joined(text(0, 10), video, text(16, 3))
    assert deltas.tolist() == [[19 - 61]]


def test_two_videos_and_an_image_in_one_sequence(config):
    ids = sequence(config, 5, ("video", 16), 3, ("video", 8), 2, ("image", 4), 1)
    positions, deltas = rope_index(
        config,
        ids,
        video_grid_thw=torch.tensor([[4, 4, 4], [2, 4, 4]]),
        second_per_grid_ts=torch.tensor([2.0, 1.0]),
        image_grid_thw=torch.tensor([[1, 4, 4]]),
    )
    first = [[5] * 4 + [9] * 4 + [13] * 4 + [17] * 4, [5, 5, 6, 6] * 4, [5, 6, 5, 6] * 4]
    second = [[21] * 4 + [23] * 4, [21, 21, 22, 22] * 2, [21, 22, 21, 22] * 2]
    image = [[26] * 4, [26, 26, 27, 27], [26, 27, 26, 27]]
    expected = joined(text(0, 5), first, text(18, 3), second, text(24, 2), image, text(28, 1))
    assert positions[:, 0].tolist() == expected
    assert deltas.tolist() == [[29 - 39]]


def test_left_padded_batch(config):
    pad = config.text_config.pad_token_id if hasattr(config, "text_config") else 0
    video = config.video_token_id
    ids = torch.tensor([[pad, pad, 7, 7, *[video] * 4, 7], [7, 7, 7, 7, *[video] * 4, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    positions, deltas = rope_index(
        config,
        ids,
        mask,
        video_grid_thw=torch.tensor([[2, 2, 4], [2, 2, 4]]),
        second_per_grid_ts=torch.tensor([1.0, 0.5]),
    )
    # merged grid (2, 1, 2); 2 and 1 positions a grid
    assert positions[:, 0, 2:].tolist() == [[0, 1, 2, 2, 4, 4, 5], [0, 1, 2, 2, 2, 2, 5], [0, 1, 2, 3, 2, 3, 5]]
    assert positions[:, 1].tolist() == [
        [0, 1, 2, 3, 4, 4, 5, 5, 6],
        [0, 1, 2, 3, 4, 4, 4, 4, 6],
        [0, 1, 2, 3, 4, 5, 4, 5, 6],
    ]
    assert deltas.tolist() == [[6 - 7], [7 - 9]]


def test_more_vision_tokens_than_grids_is_an_error(config):
    with pytest.raises(ValueError, match="row 0 has more vision tokens"):
        rope_index(config, sequence(config, 2, ("video", 4)))


def expected_positions(config, ids, mask, video_inputs):
    grid = torch.cat([sample["video_grid_thw"] for sample in video_inputs])
    seconds = torch.cat([sample["second_per_grid_ts"] for sample in video_inputs])
    return rope_index(config, ids, mask, grid, seconds)


def test_rollout_generation_receives_the_rule(tiny_world, tmp_path, received, make_trainer):
    trainer, dataset = make_trainer(tiny_world, tmp_path, max_completion_length=6)
    rows = [dataset[i] for i in (0, 0, 1, 1)]  # two prompts of different lengths: left padding
    output = trainer._generate_and_score_completions(rows)
    config = trainer.model.config
    positions, deltas = expected_positions(config, output["prompt_ids"], output["prompt_mask"], output["video_inputs"])
    prefill, *steps = received[: 1 + output["completion_ids"].size(1) - 1]
    kept = output["prompt_mask"].bool()
    assert torch.equal(prefill[:, kept], positions[:, kept])
    assert (output["prompt_mask"] == 0).any()
    # each decoding step: one past the largest prompt position, then counting up
    largest = positions.masked_fill(~kept, -1).amax(dim=(0, 2))
    assert steps, "no decoding step seen"
    for k, step in enumerate(steps):
        assert step.shape[-1] == 1
        assert torch.equal(step[:, :, 0], (largest + 1 + k).expand(3, -1)), k
    assert torch.equal(largest + 1 - kept.sum(1), deltas[:, 0])


@pytest.mark.parametrize("model", ["policy", "reference"])
@pytest.mark.parametrize("sharing", [False, True])
def test_log_prob_passes_receive_the_rule(tiny_world, tmp_path, received, sharing, model, make_trainer):
    """The policy's and the reference model's passes (beta > 0: TRL's own reference copy) position every token by
    the rule, compared with the rule's positions themselves (a reference left with transformers' stock rule, or
    handed the policy's positions of other rows, fails here)."""
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, share_video_features=sharing, share_prompt_prefix=sharing, beta=0.1
    )
    scored = trainer.model if model == "policy" else trainer.ref_model
    assert scored is not None and (model == "policy" or scored is not trainer.model)
    rows = [dataset[i] for i in (0, 0, 1, 1)]
    output = trainer._generate_and_score_completions(rows)
    received.clear()
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
    trainer.generation = GenerationBatch.for_loss(output)
    with torch.no_grad():
        trainer._get_per_token_logps_and_entropies(scored, ids, mask, output["completion_ids"].size(1))
    positions, _ = expected_positions(trainer.model.config, ids, mask, output["video_inputs"])
    kept = mask.bool()
    if sharing:  # the two distinct prompts once, then every row's completion
        prefix, completion = received
        prompt = output["prompt_ids"].size(1)
        assert prefix.shape[1] == 2
        assert torch.equal(prefix, positions[:, [0, 2], :prompt])
        assert torch.equal(completion, positions[:, :, prompt:])
    else:
        (full,) = received
        assert torch.equal(full[:, kept], positions[:, kept])


def test_sft_receives_the_rule(tiny_world, tmp_path, received, monkeypatch, launcher):
    from rewatch_trl.sft import SFTVideoCollator, main, parse_args

    batches = []
    collate = SFTVideoCollator.__call__

    def keep(self, rows):
        batches.append(collate(self, rows))
        return batches[-1]

    monkeypatch.setattr(SFTVideoCollator, "__call__", keep)
    args = parse_args(launcher.recipe_args(tiny_world, tmp_path / "sft", "sft", save_strategy="no"))
    trainer = main(*args)
    training_passes = [positions for positions in received if positions.shape[-1] > 1][:2]
    assert len(training_passes) == 2 and len(batches) >= 2
    for batch, positions in zip(batches, training_passes, strict=False):
        expected, _ = rope_index(
            trainer.model.config,
            batch["input_ids"],
            batch["attention_mask"],
            batch["video_grid_thw"],
            batch["second_per_grid_ts"],
        )
        kept = batch["attention_mask"].bool()
        assert torch.equal(positions[:, kept], expected[:, kept])


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_inference_and_evaluation_receive_the_rule(tiny_world, tmp_path, received, command):
    """`Predictor.generate` (infer) and `rewatch-trl eval` prefill their prompts with the rule's positions."""
    from rewatch_trl.cli import main as cli
    from rewatch_trl.collator import split_video_inputs
    from rewatch_trl.infer import Predictor
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS

    rows = tiny_world.rows[:2]  # prompts of different lengths
    predictor = Predictor(str(tiny_world.root), TINY_VIDEO_SETTINGS, tiny_world.video_dir, max_new_tokens=3)
    batch = predictor.collator(rows)
    if command == "infer":
        predictor.generate(rows)
    else:
        qa = tmp_path / "qa.jsonl"
        qa.write_text("".join(json.dumps(row) + "\n" for row in rows))
        args = ["eval", "--model", str(tiny_world.root), "--data", str(qa), "--video-root", str(tiny_world.video_dir)]
        args += ["--out", str(tmp_path / "report.json"), "--max-new-tokens", "3", "--max-frames", "8"]
        assert cli(args + ["--min-pixels", "3136", "--max-pixels", "3136", "--total-pixels", "25088"]) == 0
    expected, _ = expected_positions(
        predictor.config, batch["input_ids"], batch["attention_mask"], split_video_inputs(batch)
    )
    prefills = [positions for positions in received if positions.shape[-1] > 1]
    assert prefills, "no prefill seen"
    kept = batch["attention_mask"].bool()
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: left padding
    assert torch.equal(prefills[0][:, kept], expected[:, kept])
