import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewatch_trl import rewards as R
from rewatch_trl.react import parse_clips, parse_react


PROBLEM = "At 01:40, what jewelry?\nA: A beaded necklace\nB: A large gold medallion\nC: A leather wristband\nD: A silver chain"
PAIR = "<action>Re-watch [01:35-01:45]</action><observation>He wears a silver chain.</observation>"


def mcq(answer_text, truth="D"):
    completion = f"{PAIR}<answer>{answer_text}</answer>"
    return R.mcq_accuracy_reward([completion], answer=[truth], multiple_choice=[True], problem=[PROBLEM])[0]


@pytest.mark.parametrize(
    "text",
    [
        "D",
        "(D)",
        "D.",
        "D: A silver chain",
        "D) A silver chain",
        "The answer is D",
        "the answer is (D).",
        "A silver chain",
        "a silver chain.",
        " D ",
    ],
)
def test_mcq_right_letter_forms(text):
    assert mcq(text) == 1.0


@pytest.mark.parametrize(
    "text",
    ["A", "(B)", "C.", "A: A beaded necklace", "The answer is C", "A beaded necklace", "", "silver", "E"],
)
def test_mcq_wrong_forms(text):
    assert mcq(text) == 0.0


def test_mcq_without_answer_tag_is_wrong_and_open_ended_rows_are_none():
    assert R.mcq_accuracy_reward(["D"], answer=["D"], multiple_choice=[True], problem=[PROBLEM]) == [0.0]
    assert R.mcq_accuracy_reward(["<answer>x</answer>"], answer=["x"], multiple_choice=[False]) == [None]


def test_mcq_flag_inferred_from_letter_answer_when_column_missing():
    assert R.mcq_accuracy_reward(["<answer>(B)</answer>"], answer=["B"]) == [1.0]
    assert R.mcq_accuracy_reward(["<answer>B</answer>"], answer=["a dog"]) == [None]


def test_chat_message_completions_everywhere():
    completion = [{"role": "assistant", "content": f"{PAIR}<answer>D</answer>"}]
    assert R.react_format_reward([completion]) == [1.0]
    assert R.mcq_accuracy_reward([completion], answer=["D"], multiple_choice=[True], problem=[PROBLEM]) == [1.0]
    assert R.temporal_grounding_reward([completion], duration=[972]) == [1.0]


def test_format_reward_cases():
    good = f"Let me look.\n{PAIR}\n<answer>D</answer>\n"
    cases = [
        good,
        f"{PAIR}<answer>D",  # missing </answer>
        f"{PAIR}<answer>D</answer> and more",  # text after </answer>
        f"{PAIR}<answer>D</answer><answer>C</answer>",  # two answers
        "<action>[01:35-01:45]</action><answer>D</answer>",  # action without observation
        "<observation>x</observation><action>[01:35-01:45]</action><answer>D</answer>",  # swapped
        "",
        "   ",
    ]
    assert R.react_format_reward(cases) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_open_ended_accuracy():
    completions = ["<answer>A silver chain</answer>", "<answer>a gold chain</answer>", "<answer>no idea</answer>", "x"]
    scores = R.open_ended_accuracy_reward(completions, answer=["a silver chain"] * 4, multiple_choice=[False] * 4)
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(2 * (1 / 2 * 1 / 2) / (1 / 2 + 1 / 2))  # "gold chain" vs "silver chain"
    assert scores[2:] == [0.0, 0.0]
    assert R.open_ended_accuracy_reward(["<answer>D</answer>"], answer=["D"], multiple_choice=[True]) == [None]


def test_accuracy_mixes_both_by_row():
    out = R.accuracy_reward(
        ["<answer>D</answer>", "<answer>silver chain</answer>"],
        answer=["D", "a silver chain"],
        multiple_choice=[True, False],
        problem=[PROBLEM, "what?"],
    )
    assert out == [1.0, 1.0]


def test_temporal_grounding():
    completions = [
        "<action>[00:10-00:20]</action><action>[00:30-00:40]</action>",
        "<action>[00:10-00:20]</action><action>[15:00-17:00]</action>",  # past the end of a 16:12 video
        "<action>[00:20-00:10]</action>",  # backwards
        "<action>at 00:10</action>",  # an instant is no clip
        "<action>the start</action>",  # no timestamp
        "<action>[01:75-02:00]</action>",  # malformed
        "no actions",
    ]
    scores = R.temporal_grounding_reward(completions, duration=[972] * len(completions))
    assert scores == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert R.temporal_grounding_reward(["<action>[15:00-17:00]</action>"], duration=[None]) == [1.0]


CAPTIONS = "[00:00-00:05] a red square moves right\n[00:05-00:10] a blue circle moves left"


def test_observation_reward_offline():
    right = "<action>[00:00-00:05]</action><observation>a red square moves right</observation>"
    wrong = "<action>[00:00-00:05]</action><observation>a blue circle moves left</observation>"
    outside = "<action>[09:00-09:05]</action><observation>a red square moves right</observation>"
    two = right + "<action>[00:05-00:10]</action><observation>a green triangle</observation>"
    scores = R.observation_reward([right, wrong, outside, two, "<answer>A</answer>"], captions=[CAPTIONS] * 5)
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(R.token_f1("a blue circle moves left", "a red square moves right"))
    assert scores[1] < 0.5
    assert scores[2] == 0.0
    assert scores[3] == pytest.approx((1.0 + R.token_f1("a green triangle", "a blue circle moves left")) / 2)
    assert scores[4] == 0.0
    assert R.observation_reward([right], captions=[None]) == [None]
    listed = [{"start": 0, "end": 5, "text": "a red square moves right"}]
    assert R.observation_reward([right], captions=[listed]) == [1.0]


def test_rewatch_reward_offline_product():
    c_right = "<action>[00:00-00:05]</action><observation>a red square moves right</observation><answer>B</answer>"
    c_wrong = c_right.replace("<answer>B", "<answer>C")
    c_unformatted = "<answer>B</answer>"
    scores = R.rewatch_reward(
        [c_right, c_wrong, c_unformatted], answer=["B"] * 3, multiple_choice=[True] * 3, captions=[CAPTIONS] * 3
    )
    # acc * (1 + obs + rea) + fmt, rea = 0 offline
    assert scores == [1.0 * (1 + 1.0) + 1.0, 0.0 + 1.0, 1.0 * (1 + 0.0) + 0.0]


class FakeJudge:
    """Replies by rule, to check what the judge rewards do with verdicts and failures (no network)."""

    def __init__(self, replies):
        self.replies = replies
        self.prompts = []

    def ask(self, prompts):
        self.prompts += prompts
        return [self.replies(p) for p in prompts]

    def score(self, prompts):
        from rewatch_trl.judge import parse_verdict

        return [parse_verdict(r) for r in self.ask(prompts)]


def test_judge_rewards_with_a_judge_object():
    def replies(prompt):
        if 'Reply with "Score' in prompt:
            return "Score: 0.5" if "red" in prompt.split("observation:")[-1] else "Score: 0"
        if "Prediction:" in prompt:
            return "yes" if "Prediction: silver chain" in prompt else "no"
        return None if "FAIL" in prompt else "silver chain"

    judge = FakeJudge(replies)
    completion = "<action>[00:00-00:05]</action><observation>red things</observation><answer>silver chain</answer>"
    columns = dict(answer=["a silver chain"], problem=["what?"], multiple_choice=[False], captions=[CAPTIONS])
    assert R.judge_accuracy_reward([completion], judge=judge, **columns) == [1.0]
    assert R.observation_reward([completion], judge=judge, captions=[CAPTIONS]) == [0.5]
    assert R.reasoning_reward([completion], judge=judge, **columns) == [1.0]
    assert R.rewatch_reward([completion], judge=judge, **columns) == [1.0 * (1 + 0.5 + 1.0) + 1.0]
    # an MCQ row needs no judge call for its accuracy
    judge.prompts.clear()
    mcq_columns = dict(answer=["D"], problem=[PROBLEM], multiple_choice=[True])
    assert R.judge_accuracy_reward(["<answer>(D)</answer>"], judge=judge, **mcq_columns) == [1.0]
    assert judge.prompts == []
    # a failed reasoning call gives None; a failed accuracy verdict gives None for the total
    failing = "<action>[00:00-00:05]</action><observation>FAIL</observation><answer>x</answer>"
    assert R.reasoning_reward([failing], judge=judge, **columns) == [None]
    nobody = FakeJudge(lambda p: None)
    assert R.rewatch_reward([completion], judge=nobody, **columns) == [None]


def test_registry():
    funcs = R.get_reward_funcs(["format", "mcq_accuracy", "temporal_grounding", "rewatch", "react_format_reward"])
    assert [f.__name__ for f in funcs] == [
        "react_format_reward",
        "mcq_accuracy_reward",
        "temporal_grounding_reward",
        "rewatch_reward",
        "react_format_reward",
    ]
    with pytest.raises(ValueError, match="unknown reward 'formatt'.*known rewards: accuracy, format"):
        R.get_reward_funcs(["formatt"])
    judged = R.get_reward_funcs(["observation_judge", "judge_accuracy"], base_url="http://127.0.0.1:9/v1", model="m")
    assert [f.__name__ for f in judged] == ["observation_reward_judge", "judge_accuracy_reward"]
    assert judged[0].keywords["judge"] is judged[1].keywords["judge"]


def test_a_reward_named_by_its_import_path_is_that_function():
    """As TRL's `grpo` script: a name outside the registry is `module.function`; a bad one is an error naming it."""
    import string

    (func,) = R.get_reward_funcs(["string.capwords"])
    assert func is string.capwords
    with pytest.raises(ValueError, match=r"unknown reward 'string\.nope'.*no function 'nope' in module 'string'"):
        R.get_reward_funcs(["string.nope"])
    with pytest.raises(ValueError, match=r"unknown reward 'no_such_module\.f'.*No module named 'no_such_module'"):
        R.get_reward_funcs(["no_such_module.f"])


def test_judge_reward_without_configuration_says_what_to_set(monkeypatch):
    for name in ["REWATCH_JUDGE_BASE_URL", "OPENAI_BASE_URL", "REWATCH_JUDGE_MODEL"]:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="REWATCH_JUDGE_BASE_URL"):
        R.get_reward_funcs(["judge_accuracy"])


def test_importing_rewards_loads_no_torch_or_transformers():
    code = "import sys, rewatch_trl.rewards; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'openai', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


tags = st.sampled_from(
    [
        "<action>",
        "</action>",
        "<observation>",
        "</observation>",
        "<answer>",
        "</answer>",
        "[00:10-00:20]",
        "99:99",
        "01:02:03",
        " to ",
        "A",
        "(D)",
        "\n",
        "<",
        ">",
    ]
)
texts = st.one_of(st.text(max_size=300), st.lists(st.one_of(tags, st.text(max_size=5)), max_size=40).map("".join))
RANGES = {
    "react_format_reward": (0.0, 1.0),
    "mcq_accuracy_reward": (0.0, 1.0),
    "open_ended_accuracy_reward": (0.0, 1.0),
    "accuracy_reward": (0.0, 1.0),
    "temporal_grounding_reward": (0.0, 1.0),
    "observation_reward": (0.0, 1.0),
    "rewatch_reward": (0.0, 4.0),
}


@settings(max_examples=300, deadline=None)
@given(text=texts, mcq_flag=st.booleans(), duration=st.one_of(st.none(), st.integers(0, 5000)), answer=texts)
def test_every_offline_reward_is_in_range_on_any_text(text, mcq_flag, duration, answer):
    columns = dict(
        answer=[answer], multiple_choice=[mcq_flag], problem=[PROBLEM], duration=[duration], captions=[CAPTIONS]
    )
    for func in R.get_reward_funcs(
        ["format", "mcq_accuracy", "open_ended_accuracy", "accuracy", "temporal_grounding", "observation", "rewatch"]
    ):
        for completion in (text, [{"role": "assistant", "content": text}]):
            (score,) = func([completion], **columns)
            low, high = RANGES[func.__name__]
            assert score is None or (isinstance(score, float) and low <= score <= high), (func.__name__, score)


free = st.lists(
    st.one_of(st.sampled_from(["[00:10-00:20]", "01:02:03", " to ", "<", ">", "<act>", "\n"]), st.text(max_size=5))
)
free = free.map("".join).filter(lambda t: not any(tag in t for tag in ("action>", "observation>", "answer>")))
well_formed = st.builds(
    lambda pairs, answer, tail: (
        "".join(f"{a}<action>{b}</action>{c}<observation>{d}</observation>" for a, b, c, d in pairs)
        + f"<answer>{answer}</answer>{tail}"
    ),
    st.lists(st.tuples(free, free, free, free), min_size=1, max_size=4),
    free,
    st.sampled_from(["", " ", "\n"]),
)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(texts, well_formed))
def test_parse_agrees_with_the_general_step_pattern_on_any_text(text):
    # Well-formed completions take a fast path (plain splits); it must find what the general pattern finds.
    from rewatch_trl.react import _STEP

    expected = [(m[1].strip(), None if m[2] is None else m[2].strip()) for m in _STEP.finditer(text)]
    expected_clips = [parse_clips(action) or [] for action, _ in expected]
    assert parse_react(text).clips == expected_clips  # clips first: from the actions alone
    trace = parse_react(text)
    assert [tuple(step) for step in trace.steps] == expected
    assert trace.clips == expected_clips  # clips after the steps: from them
