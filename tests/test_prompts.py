import pytest

from rewatch_trl.prompts import (
    REACT_PROMPT,
    VideoSettings,
    build_messages,
    duration_string,
    react_instruction,
    seconds_to_timestamp,
    timestamp_to_seconds,
)


# The seed README's prompt, copied here character for character: the module must not drift from it.
SEED_PROMPT = """You are a video understanding expert. You are given a video and a question. You need to answer the question based on the video content. Please answer the question step by step. When you need more video details, you will re-watch the relevant clips and use <action> and </action> to mark the actions, and use <observation> and </observation> to mark the visual details you observe. When you have enough information to determine the final answer, you will wrap the final answer in <answer> and </answer>.

**Video Information and Question:**
- **Video Duration**: {video_duration}
- **Question**: {question}"""

SEED_ROW = {
    "problem_id": "1Yc9DM8j378.mp4_temporal_localization_multiple_choice",
    "question_type": "temporal_localization",
    "multiple_choice": True,
    "problem": "At 01:40, what specific piece of jewelry is Man 2 described as wearing, a detail consistent with "
    "Abram's later appearance in the bar?\nA: A beaded necklace\nB: A large gold medallion\nC: A leather "
    "wristband\nD: A silver chain",
    "data_type": "video",
    "videos": "1Yc9DM8j378.mp4",
    "answer": "D",
    "answer_str": "A silver chain",
    "duration": 972,
    "duration_str": "00:00-16:12",
}


def seed_seconds_to_timestamp(seconds):
    minutes = seconds // 60
    seconds = seconds % 60
    return f"{minutes:02d}:{seconds:02d}"


def test_prompt_is_the_seeds():
    assert REACT_PROMPT == SEED_PROMPT


def test_prompt_of_a_seed_row_equals_the_seed_prompt_filled():
    expected = SEED_PROMPT.format(
        video_duration=f"00:00-{seed_seconds_to_timestamp(SEED_ROW['duration'])}", question=SEED_ROW["problem"]
    )
    assert react_instruction(SEED_ROW["problem"], SEED_ROW["duration"]) == expected
    assert duration_string(SEED_ROW["duration"]) == SEED_ROW["duration_str"]


def test_messages_carry_the_seeds_video_settings():
    messages = build_messages(SEED_ROW["problem"], "v.mp4", SEED_ROW["duration"])
    assert messages[0]["role"] == "system"
    video, text = messages[1]["content"]
    assert video == {
        "type": "video",
        "video": "v.mp4",
        "total_pixels": 12288 * 28 * 28,
        "min_pixels": 128 * 28 * 28,
        "max_pixels": 128 * 28 * 28,
        "fps": 2.0,
        "max_frames": 192,
        "min_frames": 4,
    }
    assert text["text"].endswith("- **Question**: " + SEED_ROW["problem"])
    assert VideoSettings().video_max_frames == 192


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 599, 600, 972, 3599])
def test_short_timestamps_match_the_seed(seconds):
    assert seconds_to_timestamp(seconds) == seed_seconds_to_timestamp(seconds)
    assert timestamp_to_seconds(seconds_to_timestamp(seconds)) == seconds


@pytest.mark.parametrize(("seconds", "text"), [(3600, "01:00:00"), (3725, "01:02:05"), (36000, "10:00:00")])
def test_hour_long_timestamps(seconds, text):
    assert seconds_to_timestamp(seconds) == text
    assert timestamp_to_seconds(text) == seconds


def test_fractional_seconds_drop_the_fraction():
    assert seconds_to_timestamp(61.9) == "01:01"
    assert duration_string(600.4) == "00:00-10:00"


@pytest.mark.parametrize("bad", [-1, -0.5, "ten", None, float("nan"), float("inf"), True])
def test_bad_durations_raise_naming_the_value(bad):
    with pytest.raises(ValueError, match="duration"):
        duration_string(bad)


@pytest.mark.parametrize("bad", ["", "1:2", "12:60", "01:75", "ab:cd", "01:02:03:04", "1:60:00", "12-30", None])
def test_malformed_timestamps_raise_naming_them(bad):
    with pytest.raises(ValueError, match="malformed timestamp"):
        timestamp_to_seconds(bad)
