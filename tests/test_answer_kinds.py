"""Video-R1's answer kinds (`rewatch_trl/answer_kinds.py`) on real-shaped answers, and the rewards that read them:
`video_r1_accuracy_reward`, and the project's `accuracy_reward` and O&R total on a converted row of each kind."""

import pytest

from rewatch_trl import rewards as R
from rewatch_trl.answer_kinds import answer_in_tags, kind_score, word_error_rate


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("3.50", "3.5", 1.0),
        ("3.456", "3.46", 1.0),  # equal to 2 decimals
        ("3.4", "3.46", 0.0),
        ("12", "12", 1.0),
        ("3", "3.0", 0.0),  # a decimal mark on one side only
        ("1,024", "1024", 0.0),
        ("1,024", "1024.0", 1.0),  # both marked: the comma dropped
        ("twelve", "12", 0.0),
        ("", "12", 0.0),
    ],
)
def test_numerical(prediction, reference, score):
    assert kind_score("numerical", prediction, reference) == score


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("EXIT ONLY", "EXIT ONLY", 1.0),
        ("the quick brown dog", "the quick brown fox", 0.75),  # one substitution in 4 words
        ("the quick fox", "the quick brown fox", 0.75),  # one deletion
        ("Exit Only", "EXIT ONLY", 0.0),  # case-sensitive
        ("a b c d e f", "a", 0.0),  # 5 insertions: clipped at 0
        ("", "", 1.0),
    ],
)
def test_ocr(prediction, reference, score):
    assert kind_score("OCR", prediction, reference) == pytest.approx(score)


def test_word_error_rate_is_the_edit_distance_over_the_reference_words():
    assert word_error_rate("b a c", "a b c") == pytest.approx(2 / 3)  # a swap is two substitutions
    assert word_error_rate("x", "") == 1.0  # over max(1, 0) words


def test_free_form_is_the_mean_of_three_rouge_f_measures_stemmed():
    assert kind_score("free-form", "the cat sat", "the cat sat") == pytest.approx(1.0)
    # ROUGE-1 1, ROUGE-2 0 (no bigram shared), ROUGE-L 2/3 (the longest common subsequence "the sat")
    assert kind_score("free-form", "cat the sat", "the cat sat") == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert kind_score("free-form", "the cats sat", "the cat sat") == pytest.approx(1.0)  # stemmed
    paraphrase = kind_score("free-form", "a man is slicing an onion", "the man slices onions in the kitchen")
    assert 0.2 < paraphrase < 0.8
    assert kind_score("free-form", "", "the man slices onions") == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [("100", "100", 1.0), ("95", "100", 0.95), ("105.0", "100", 0.95), ("250", "100", 0.0), ("x", "100", 0.0)],
)
def test_regression(prediction, reference, score):
    assert kind_score("regression", prediction, reference) == pytest.approx(score, abs=1e-8)


def test_multiple_choice_is_the_exact_stripped_text_and_an_unknown_kind_is_an_error():
    assert kind_score("multiple choice", " B ", "B") == 1.0
    assert kind_score("multiple choice", "B.", "B") == 0.0
    with pytest.raises(ValueError, match="unknown kind of answer 'counting'; known: multiple choice, numerical"):
        kind_score("counting", "1", "1")


def test_answer_in_tags():
    assert answer_in_tags("<think>\nso 4\n</think>\n<answer>\n 4 \n</answer>") == "4"
    assert answer_in_tags("<answer>a\nb</answer><answer>c</answer>") == "a\nb"  # the first, across lines
    assert answer_in_tags("4") == "" and answer_in_tags(None) == ""


def test_video_r1_accuracy_reads_each_rows_kind():
    completions = [
        "<think>three and a half</think><answer>3.5</answer>",
        "<think>..</think><answer>EXIT ONLY</answer>",
        "<answer>A</answer>",
        "A",  # no tag: ""
        [{"role": "assistant", "content": "<answer>95</answer>"}],  # a conversational completion
    ]
    kinds = ["numerical", "OCR", "multiple choice", "multiple choice", "regression"]
    solutions = ["<answer>3.5</answer>", "<answer>EXIT ONLY</answer>", "<answer>B</answer>", "<answer>A</answer>"]
    solutions.append("<answer>100</answer>")
    assert R.video_r1_accuracy_reward(completions, problem_type=kinds, solution=solutions) == pytest.approx(
        [1.0, 1.0, 0.0, 0.0, 0.95]
    )
    # a row without a kind (a ReWatch row of a mixture) is not this reward's
    assert R.video_r1_accuracy_reward(["<answer>A</answer>"], problem_type=[None], solution=[None]) == [None]
    (registered,) = R.get_reward_funcs(["video_r1_accuracy"])
    assert registered is R.video_r1_accuracy_reward


REACT = "<action>Re-watch [00:01-00:03]</action><observation>a red square</observation><answer>{}</answer>"


def test_the_projects_accuracy_scores_a_converted_row_by_its_kind():
    completions = [REACT.format(text) for text in ("3.5", "EXIT ONLY", "95", "B", "a red square")]
    columns = dict(
        answer=["3.5", "EXIT ONLY", "100", "B", "a red square moving"],
        multiple_choice=[False, False, False, True, False],
        problem=["How long?", "What does it say?", "How many?", "Which?\nA. red\nB. blue", "What moves?"],
        problem_type=["numerical", "OCR", "regression", "multiple choice", None],
    )
    assert R.accuracy_reward(completions, **columns) == pytest.approx([1.0, 1.0, 0.95, 1.0, 0.8])
    # the control: the same rows without their kinds are open-ended (token F1): "95" against "100" is 0
    assert R.accuracy_reward(completions, **(columns | {"problem_type": None}))[2] == 0.0
    # O&R's offline total, acc · (1 + obs + rea) + fmt, with the kind's acc
    total = R.rewatch_reward(
        completions[2:3],
        captions=["[00:00-00:04] a red square"],
        **{key: value[2:3] for key, value in columns.items()},
    )
    assert total == pytest.approx([0.95 * (1 + 1.0) + 1.0])


def test_the_judge_is_not_asked_for_a_kind_scored_by_rule():
    from test_rewards import FakeJudge

    judge = FakeJudge(lambda prompt: "Yes")
    completions = [REACT.format("95"), REACT.format("a cat")]
    rewards = R.judge_accuracy_reward(
        completions,
        problem=["How many?", "What animal?"],
        answer=["100", "a cat"],
        multiple_choice=[False, False],
        problem_type=["regression", None],
        judge=judge,
    )
    assert rewards == pytest.approx([0.95, 1.0])
    assert len(judge.prompts) == 1 and "a cat" in judge.prompts[0]
