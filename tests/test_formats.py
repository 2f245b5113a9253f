"""The QA formats beside the seed's (`rewatch_trl/formats.py`, `data.load_qa(format=...)`): Video-R1's JSON list and
LongVideo-Reason's JSONL, as the tiny world writes them, become project rows that keep their own columns; a bad row
is named by file, line and field."""

import json
from pathlib import Path

import pytest

from rewatch_trl import rewards as R
from rewatch_trl.answer_kinds import KINDS
from rewatch_trl.cli import main as cli
from rewatch_trl.data import DataError, check_videos, load_qa, refuse_images


def load(path, root, **options):
    return load_qa(path, video_root=root, progress=False, **options)


@pytest.mark.parametrize("format", ["auto", "video-r1"])
def test_video_r1_rows_become_project_rows_of_every_kind(tiny_world, format):
    dataset, report = load(tiny_world.video_r1_path, tiny_world.root, format=format)
    rows = dataset.to_list()
    source = json.loads(tiny_world.video_r1_path.read_text())
    assert report.kept == len(source) == 6 * len(tiny_world.rows) // 2 and not report.skipped
    assert {row["problem_type"] for row in rows} == set(KINDS)
    assert {row["data_type"] for row in rows} == {"image", "video"}
    for row, original in zip(rows, source, strict=True):
        assert row["problem_id"] == str(original["problem_id"])
        assert row["multiple_choice"] == (original["problem_type"] == "multiple choice")
        assert row["solution"] == original["solution"] and row["options"] == original["options"]
        assert row["response"] == original["process"] + "\n" + original["solution"]  # Video-R1's SFT target
        if row["data_type"] == "video":
            assert row["videos"] == original["path"].removeprefix("./") and row["image_path"] is None
            assert row["duration"] == pytest.approx(8.0, abs=0.3)  # read from the file
        else:
            assert row["image_path"] == original["path"].removeprefix("./") and row["videos"] is None
            assert (tiny_world.root / row["image_path"]).is_file() and row["duration"] is None
    mcq = next(row for row in rows if row["multiple_choice"])
    assert mcq["problem"].endswith("?Options:\nA. red\nB. green\nC. blue\nD. yellow\n")  # as Video-R1 asks
    assert mcq["answer"] in "ABCD" and len(mcq["answer"]) == 1
    # each row's own answer scores 1 by Video-R1's reward (its solution) and by the project's (its answer); the
    # control: the answers of the next row do not
    solutions, kinds = dataset["solution"], dataset["problem_type"]
    expected = pytest.approx([1.0] * len(rows))
    assert R.video_r1_accuracy_reward(solutions, problem_type=kinds, solution=solutions) == expected
    columns = {key: dataset[key] for key in ("answer", "multiple_choice", "problem", "problem_type")}
    completions = [f"<answer>{answer}</answer>" for answer in dataset["answer"]]
    assert R.accuracy_reward(completions, **columns) == expected
    shifted = R.video_r1_accuracy_reward(solutions[1:] + solutions[:1], problem_type=kinds, solution=solutions)
    assert sum(shifted) < len(rows) / 2


@pytest.mark.parametrize("format", ["longvideo-reason", "auto"])
def test_longvideo_reason_rows_as_released_become_project_rows_scored_by_their_kind(tiny_world, format):
    """LongVideo-Reason's rows as released (no id; `problem_type` the reasoning perspective, not a kind of answer):
    a letter among the problem's options makes a multiple-choice row, free text an open-ended one; the perspective
    stays a column. Each is scored as its kind (the control: the other kind's reward does not apply)."""
    import rewatch_trl.rewards as R
    from rewatch_trl.tiny import LONGVIDEO_REASON_PERSPECTIVES

    source = [json.loads(line) for line in tiny_world.longvideo_reason_path.read_text().splitlines()]
    assert not any("problem_id" in row or "data_type" in row for row in source)
    assert {row["problem_type"] for row in source} == set(LONGVIDEO_REASON_PERSPECTIVES)
    assert {Path(row["videos"]).suffix for row in source} == {".mp4", ".webm", ".mkv"}  # its containers
    dataset, report = load(tiny_world.longvideo_reason_path, tiny_world.root, format=format)
    assert report.kept == len(source)
    rows = dataset.to_list()
    assert len({row["problem_id"] for row in rows}) == len(rows)
    for i, (row, original) in enumerate(zip(rows, source, strict=True)):
        assert row["multiple_choice"] == (i % 2 == 0)
        assert row["answer"] == original["answer"].removeprefix("<answer>").removesuffix("</answer>")
        assert row["perspective"] == row["question_type"] == original["problem_type"]
        assert row["solution"] == original["answer"] and row["reasoning"] == original["reasoning"]
        assert row["problem"] == original["problem"] and row["videos"] == original["videos"]
        assert row["duration"] == pytest.approx(8.0, abs=0.3)
    right = [f"<answer>{row['answer']}</answer>" for row in rows]
    columns = {key: [row[key] for row in rows] for key in ("answer", "multiple_choice", "problem", "problem_type")}
    assert R.accuracy_reward(right, **columns) == [1.0] * len(rows)
    mcq = R.mcq_accuracy_reward(right, **columns)
    open_ended = R.open_ended_accuracy_reward(right, **columns)
    assert mcq == [1.0 if i % 2 == 0 else None for i in range(len(rows))]
    assert open_ended == [None if i % 2 == 0 else 1.0 for i in range(len(rows))]
    assert R.video_r1_accuracy_reward(right, columns["problem_type"], right) == [None] * len(rows)
    wrong = right[1:] + right[:1]
    assert R.accuracy_reward(wrong, **columns) != [1.0] * len(rows)


@pytest.mark.parametrize("format", ["longvideo-reason", "auto"])
def test_the_data_command_loads_longvideo_reason_rows_as_released(tiny_world, tmp_path, format):
    from datasets import load_from_disk

    from rewatch_trl.cli import main

    out = tmp_path / "lvr"
    qa, root = str(tiny_world.longvideo_reason_path), str(tiny_world.root)
    assert main(["data", "--qa", qa, "--format", format, "--media-root", root, "--save-to-disk", str(out)]) == 0
    saved = load_from_disk(str(out))
    assert saved["multiple_choice"] == [i % 2 == 0 for i in range(len(saved))]
    assert set(saved["perspective"]) == set(saved["problem_type"]) and None not in saved["perspective"]


def write_list(path, rows):
    path.write_text(json.dumps(rows, indent=2))
    return path


def line_of(path, problem_id):
    """The line the list element with `problem_id` opens on (the `{` before its first key)."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if f'"problem_id": {problem_id},' in line) - 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"problem_type": "counting"}, r"field 'problem_type': expected one of multiple choice, numerical"),
        ({"solution": "3"}, r"field 'solution': no '<answer>…</answer>' text in '3'"),
        ({"path": "./videos/nowhere.mp4"}, r"field 'videos': video not found: .*nowhere.mp4"),
        (
            {"path": "./images/nowhere.png", "data_type": "image"},
            r"field 'image_path': image not found: .*nowhere.png",
        ),
        ({"solution": "<answer>E</answer>"}, r"field 'answer': 'E' is not one of the options A, B, C, D"),
    ],
)
def test_a_bad_video_r1_row_is_named_by_its_line_and_field(tiny_world, tmp_path, change, message):
    source = json.loads(tiny_world.video_r1_path.read_text())
    bad = source[0] | change
    bad["problem_id"] = 999
    path = write_list(tmp_path / "video_r1.json", [source[1], bad, source[2]])
    with pytest.raises(DataError, match=f"video_r1.json:{line_of(path, 999)}: {message}"):
        load(path, tiny_world.root, format="video-r1")
    dataset, report = load(path, tiny_world.root, format="video-r1", skip_invalid=True)
    assert report.kept == 2 and len(report.skipped) == 1 and "999" not in dataset["problem_id"]


def test_a_bad_longvideo_reason_row_and_bad_files_say_where(tiny_world, tmp_path):
    source = [json.loads(line) for line in tiny_world.longvideo_reason_path.read_text().splitlines()]
    path = tmp_path / "lvr.jsonl"
    path.write_text(json.dumps(source[0]) + "\n" + json.dumps(source[1] | {"answer": "B"}) + "\n")
    with pytest.raises(DataError, match=r"lvr.jsonl:2: field 'solution': no '<answer>…</answer>' text in 'B'"):
        load(path, tiny_world.root, format="longvideo-reason")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"problem_id": 1},\n  {"problem_id": 2,, }\n]')
    with pytest.raises(DataError, match=r"broken.json:3: invalid JSON"):
        load(broken, tiny_world.root, format="video-r1")
    with pytest.raises(DataError, match=r"lvr.jsonl:1: cannot tell the format from the fields data_type, question"):
        path.write_text(json.dumps({"question": "x", "data_type": "video"}) + "\n")
        load(path, tiny_world.root, format="auto")
    with pytest.raises(DataError, match=r"unknown format 'videor1'; known: rewatch, video-r1"):
        load(tiny_world.video_r1_path, tiny_world.root, format="videor1")
    with pytest.raises(DataError, match=r"field 'duration': video-r1 rows give none: .*--media-root"):
        load(tiny_world.video_r1_path, None, format="video-r1")


def test_the_data_command_prepares_video_r1_and_grpo_refuses_its_images_by_name(tiny_world, tmp_path, capsys):
    from datasets import load_from_disk

    out = tmp_path / "prepared"
    cli(
        ["data", "--format", "video-r1", "--qa", str(tiny_world.video_r1_path)]
        + ["--media-root", str(tiny_world.root), "--save-to-disk", str(out)]
    )
    rows = len(json.loads(tiny_world.video_r1_path.read_text()))
    assert f"kept {rows} rows, skipped 0" in capsys.readouterr().out
    dataset = load_from_disk(str(out))
    assert set(dataset["problem_type"]) == set(KINDS)
    with pytest.raises(DataError, match=rf"{rows // 3} of its {rows} rows are images, and GRPO does not train them"):
        refuse_images(dataset, str(out))
    check_videos(dataset, tiny_world.root, str(out))  # every row's video or image is there
    with pytest.raises(DataError, match=r"1 row\(s\) name a video that is not there: row 0: .*nowhere.png"):
        check_videos(dataset.select([5]).map(lambda row: {"image_path": "nowhere.png"}), tiny_world.root, str(out))


def test_auto_tells_a_row_that_lacks_a_field_and_validation_names_it(tiny_world, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({key: value for key, value in tiny_world.rows[0].items() if key != "duration"}) + "\n")
    with pytest.raises(DataError, match=r"qa.jsonl:1: field 'duration': missing"):
        load(path, tiny_world.root / "videos", format="auto")
