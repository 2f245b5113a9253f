import torch

from rewatch_trl.collator import IGNORE_INDEX, VideoCollator
from rewatch_trl.tiny import TINY_VIDEO_SETTINGS


def test_prompt_batch_is_left_padded_with_the_video(tiny_world, tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=tiny_world.video_dir)
    rows = tiny_world.rows[:2]  # an MCQ and an open-ended row: prompts of different lengths
    batch = collator(rows)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "pixel_values_videos",
        "video_grid_thw",
        "second_per_grid_ts",
    }
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]  # left padding: prompts end together
    assert batch["attention_mask"][1, 0] == 0
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    tokens_per_video = (batch["video_grid_thw"].prod(-1) // 4).tolist()
    assert (batch["input_ids"] == video_id).sum(-1).tolist() == tokens_per_video
    assert (batch["mm_token_type_ids"] == 2).sum(-1).tolist() == tokens_per_video
    text = processor.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
    assert text.endswith("<|im_start|>assistant\n")


def test_sft_labels_cover_the_answer_alone(tiny_world, tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=tiny_world.video_dir)
    answers = [
        "<answer>A</answer>",
        "<action>[00:00-00:02]</action><observation>red</observation><answer>red</answer>",
    ]
    batch = collator(tiny_world.rows[:2], answers=answers)
    for i, answer in enumerate(answers):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        assert processor.tokenizer.decode(labelled) == answer + "<|im_end|>"
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)


def test_frames_are_processed_on_the_device_asked_for(tiny_world, tiny_model_and_processor):
    # the trainer asks for its device (a GPU in a GPU run); "meta" shows the frames were processed there
    _, processor = tiny_model_and_processor
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=tiny_world.video_dir)
    conversations = [collator.messages(row) for row in tiny_world.rows[:2]]
    here, _ = collator.encode_messages(conversations)
    there, _ = collator.encode_messages(conversations, device="meta")
    assert here["pixel_values_videos"].device.type == "cpu"
    assert there["pixel_values_videos"].device.type == "meta"
    assert there["pixel_values_videos"].shape == here["pixel_values_videos"].shape
    assert torch.equal(there["input_ids"], here["input_ids"])
