import time

import pytest

from rewatch_trl.react import Clip, Segment, completion_text, overlapping, parse_captions, parse_clips, parse_react


GOOD = (
    "I should check the start.\n<action>Re-watch [00:10-00:20]</action>\n"
    "<observation>A red square moves right.</observation>\n"
    "<action>Look at 01:00 to 01:05</action><observation>It turns blue.</observation>\n<answer>B</answer>"
)


def test_good_trace():
    trace = parse_react(GOOD)
    assert trace.well_formed
    assert trace.answer == "B"
    assert trace.clips == [[Clip(10, 20)], [Clip(60, 65)]]
    assert [s.observation for s in trace.steps] == ["A red square moves right.", "It turns blue."]


@pytest.mark.parametrize(
    ("text", "clips"),
    [
        ("[05:00-05:10]", [Clip(300, 310)]),
        ("[05:00 - 05:10]", [Clip(300, 310)]),
        ("05:00 to 05:10", [Clip(300, 310)]),
        ("from 05:00 to 05:10", [Clip(300, 310)]),
        ("[05:00]-[05:10]", [Clip(300, 310)]),
        ("from 01:02:03 until 01:02:09", [Clip(3723, 3729)]),
        ("at 07:30", [Clip(450, 450)]),
        ("[00:01-00:03] and then 00:09", [Clip(1, 3), Clip(9, 9)]),
        ("no time here", []),
    ],
)
def test_clip_forms(text, clips):
    assert parse_clips(text) == clips


def test_malformed_clip_is_none():
    assert parse_clips("[01:75-02:00]") is None
    assert parse_react("<action>[01:75-02:00]</action><observation>x</observation><answer>A</answer>").clips[0] == []


@pytest.mark.parametrize(
    "text",
    [
        "<answer>B</answer>",  # no action
        "<action>[00:01-00:02]</action><answer>B</answer>",  # action without observation
        "<observation>x</observation><action>[00:01-00:02]</action><answer>B</answer>",  # swapped
        "<action>[00:01-00:02]</action><observation>x</observation><answer>B",  # missing </answer>
        "<action>[00:01-00:02]</action><observation>x</observation><answer>B</answer> trailing",
        "<action>[00:01-00:02]</action><observation>x</observation><answer>B</answer><answer>C</answer>",
        "<action>[00:01-00:02]<observation>x</observation></action><answer>B</answer>",  # nested
        "<action>[00:01-00:02]</answer><observation>x</observation><answer>B</answer>",  # mismatched close
        "",
        "   \n ",
    ],
)
def test_malformed_traces(text):
    assert not parse_react(text).well_formed


def test_first_answer_is_the_answer_and_tags_are_lower_case():
    assert parse_react("<action>[00:01-00:02]</action><observation>x</observation><answer> C </answer>").answer == "C"
    # the seed's prompt writes its tags in lower case; other cases are not the format
    assert not parse_react("<ACTION>[00:01-00:02]</ACTION><Observation>x</Observation><answer>C</answer>").well_formed
    assert parse_react("<answer>A</answer><answer>B</answer>").answer == "A"


def test_chat_message_completions():
    messages = [{"role": "assistant", "content": GOOD}]
    assert completion_text(messages) == GOOD
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]
    assert parse_react(blocks).well_formed


def test_non_ascii_text():
    trace = parse_react("<action>重看 [00:01-00:02]</action><observation>红色方块 → ✓</observation><answer>Ü</answer>")
    assert trace.well_formed and trace.answer == "Ü" and trace.steps[0].observation == "红色方块 → ✓"


def test_parsing_is_linear_on_huge_tag_soup():
    def soup(n):
        return "<action>[00:0" * n + "</observation><answer" * n + "1:1:1:1:" * n

    def best_time(text):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            trace = parse_react(text)
            times.append(time.perf_counter() - start)
        assert not trace.well_formed
        return min(times)

    small, large = soup(2500), soup(10000)
    assert len(large) > 100_000
    # four times the text: four times the time if linear, sixteen if quadratic
    assert best_time(large) / best_time(small) < 8


def test_captions_both_forms():
    text = "[00:00-00:05] a red square\nnot a caption\n[00:05-01:10] a blue circle\n[01:99-02:00] bad"
    assert parse_captions(text) == [Segment(0, 5, "a red square"), Segment(5, 70, "a blue circle")]
    listed = [{"start": 0, "end": 5, "text": "red"}, {"start": "00:05", "end": "00:10", "text": "blue"}, {"x": 1}]
    assert parse_captions(listed) == [Segment(0, 5, "red"), Segment(5, 10, "blue")]
    assert parse_captions(None) == []


def test_overlap():
    segments = [Segment(0, 5, "a"), Segment(5, 10, "b"), Segment(10, 15, "c")]
    assert [s.text for s in overlapping(segments, Clip(4, 11))] == ["a", "b", "c"]
    assert [s.text for s in overlapping(segments, Clip(5, 10))] == ["b"]
    assert overlapping(segments, Clip(20, 30)) == []


def test_timestamps_glued_to_other_digits_or_colons_are_not_clips():
    assert parse_clips("1:02:03:04") == []
    assert parse_clips("123:45") == []
    assert parse_clips("x12:30") == []
    assert parse_clips("12:30") == [Clip(750, 750)]


def test_clips_of_many_actions_parse_as_each_alone():
    actions = ["[00:10-00:20] and 00:30", "nothing here", "[01:75-02:00]", "at 1:02:03", "01:00\0-01:10", ""]
    completion = "".join(f"<action>{a}</action><observation>x</observation>" for a in actions) + "<answer>A</answer>"
    trace = parse_react(completion)
    assert trace.clips == [parse_clips(a) or [] for a in actions]
    assert trace.clips == [[Clip(10, 20), Clip(30, 30)], [], [], [Clip(3723, 3723)], [Clip(60, 60), Clip(70, 70)], []]
