import json

import pytest

from rewatch_trl.cli import main as cli
from rewatch_trl.data import DataError, load_captions, load_prepared, load_qa, read_jsonl


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def rows(tiny_world):
    return [dict(row) for row in tiny_world.rows]


def test_valid_rows_load_with_captions_and_round_trip(tiny_world, tmp_path):
    dataset, report = load_qa(tiny_world.qa_path, tiny_world.captions_path, tiny_world.video_dir, progress=False)
    assert report.kept == len(tiny_world.rows) and report.skipped == []
    assert dataset[0]["problem"] == tiny_world.rows[0]["problem"]
    assert dataset[0]["captions"].startswith("[00:00-00:02] a ")
    dataset.save_to_disk(str(tmp_path / "ds"))
    again = load_prepared(tmp_path / "ds")
    assert again.to_list() == dataset.to_list()


def test_broken_json_line_names_its_line(tiny_world, rows, tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [rows[0], '{"problem_id": "x", broken', rows[1]])
    with pytest.raises(DataError, match=r"qa.jsonl:2: invalid JSON"):
        load_qa(qa, video_root=tiny_world.video_dir, progress=False)
    with pytest.raises(DataError, match=r"qa.jsonl:2: invalid JSON"):
        load_qa(qa, video_root=tiny_world.video_dir, skip_invalid=True, progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": "E"}, r"field 'answer': 'E' is not one of the options A, B, C, D"),
        ({"videos": "nowhere.mp4"}, r"field 'videos': video not found: .*nowhere.mp4"),
        ({"problem": "What happens at 00:30?\nA: red\nB: blue"}, r"field 'problem': timestamp 00:30 is past the end"),
        ({"duration_str": "00:00-09:59"}, r"field 'duration_str': '00:00-09:59' disagrees with duration 8"),
        ({"duration": 600, "duration_str": "00:00-10:00"}, r"field 'duration': 600 s, but video .* lasts 8.0 s"),
        ({"duration": "ten"}, r"field 'duration': expected a number, got 'ten'"),
        ({"multiple_choice": "yes"}, r"field 'multiple_choice': expected bool"),
        ({"problem": None}, r"field 'problem': missing"),
        ({"data_type": "audio"}, r"field 'data_type': expected 'video' or 'image', got 'audio'"),
        ({"data_type": "image"}, r"field 'image_path': missing"),
    ],
)
def test_bad_rows_name_file_line_and_field(tiny_world, rows, tmp_path, change, message):
    bad = {**rows[0], **change}
    qa = write_jsonl(tmp_path / "qa.jsonl", [rows[1], bad, rows[2]])
    with pytest.raises(DataError, match=r"qa.jsonl:2: " + message):
        load_qa(qa, video_root=tiny_world.video_dir, progress=False)


def test_skip_invalid_keeps_every_good_row_and_lists_the_bad(tiny_world, rows, tmp_path):
    bad_letter = {**rows[0], "answer": "Z"}
    missing_video = {**rows[2], "problem_id": "other", "videos": "gone.mp4"}
    qa = write_jsonl(tmp_path / "qa.jsonl", [bad_letter, *rows[1:], missing_video])
    dataset, report = load_qa(qa, video_root=tiny_world.video_dir, skip_invalid=True, progress=False)
    assert report.kept == len(rows) - 1 == len(dataset)
    assert [p.split(": ")[0] for p in report.skipped] == [f"{qa}:1", f"{qa}:{len(rows) + 1}"]
    assert [r["problem_id"] for r in dataset] == [r["problem_id"] for r in rows[1:]]


def test_repeated_problem_id_is_an_error(tiny_world, rows, tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [rows[0], rows[0]])
    with pytest.raises(DataError, match=r"qa.jsonl:2: field 'problem_id': .* repeats line 1"):
        load_qa(qa, video_root=tiny_world.video_dir, progress=False)


def test_captions_errors_and_forms(tmp_path):
    good = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"videos": "a.mp4", "captions": "[00:00-00:05] red"},
            {"videos": "b.mp4", "captions": [{"start": 0, "end": 3, "text": "blue"}]},
        ],
    )
    assert load_captions(good) == {"a.mp4": "[00:00-00:05] red", "b.mp4": "[00:00-00:03] blue"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"videos": "a.mp4", "captions": "no timestamps"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'captions'"):
        load_captions(bad)


def test_captions_past_the_end_and_missing_captions(tiny_world, rows, tmp_path):
    captions = [json.loads(line) for line in tiny_world.captions_path.read_text().splitlines()]
    captions[0]["captions"] += "\n[00:20-00:30] nothing"
    path = write_jsonl(tmp_path / "c.jsonl", captions)
    with pytest.raises(DataError, match=r"qa.jsonl:1: field 'captions': caption \[00:20-00:30\] is past the end"):
        load_qa(tiny_world.qa_path, path, tiny_world.video_dir, progress=False)
    path = write_jsonl(tmp_path / "c2.jsonl", captions[1:])
    with pytest.raises(DataError, match=r"qa.jsonl:1: field 'videos': no captions for 'synthetic_000.mp4'"):
        load_qa(tiny_world.qa_path, path, tiny_world.video_dir, progress=False)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no valid rows"):
        load_qa(write_jsonl(tmp_path / "empty.jsonl", []), progress=False)


def test_data_command_writes_a_dataset_with_its_videos(tiny_world, tmp_path, capsys):
    out = tmp_path / "prepared"
    code = cli(
        [
            "data",
            "--qa", str(tiny_world.qa_path),
            "--captions", str(tiny_world.captions_path),
            "--video-root", str(tiny_world.video_dir),
            "--save-to-disk", str(out),
            "--embed-videos",
        ]
    )  # fmt: skip
    assert code == 0
    assert f"wrote {len(tiny_world.rows)} rows" in capsys.readouterr().out
    dataset = load_prepared(out)
    assert len(dataset) == len(tiny_world.rows)
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted({r["videos"] for r in tiny_world.rows})


def test_data_command_reports_bad_input_and_exits_2(tiny_world, rows, tmp_path, capsys):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{**rows[0], "answer": "Q"}])
    code = cli(
        ["data", "--qa", str(qa), "--video-root", str(tiny_world.video_dir), "--save-to-disk", str(tmp_path / "o")]
    )
    assert code == 2
    assert "qa.jsonl:1: field 'answer'" in capsys.readouterr().err


def test_data_command_needs_a_destination(tiny_world, capsys):
    code = cli(["data", "--qa", str(tiny_world.qa_path), "--video-root", str(tiny_world.video_dir)])
    assert code == 2
    assert "--save-to-disk DIR and/or --push-to-hub ID" in capsys.readouterr().err


def test_each_video_file_is_probed_once_per_file(tiny_world, monkeypatch):
    from rewatch_trl import video

    calls = []
    real = video.video_duration
    monkeypatch.setattr(video, "video_duration", lambda path: calls.append(path) or real(path))
    load_qa(tiny_world.qa_path, video_root=tiny_world.video_dir, progress=False)
    assert len(tiny_world.rows) == 2 * len(calls) == 8  # two questions a video, one probe a video


def test_a_prepared_dataset_remembers_where_its_videos_are(tiny_world, tmp_path, monkeypatch, capsys):
    from rewatch_trl.data import check_videos, video_root_of

    out = tmp_path / "ds"
    code = cli(
        [
            "data",
            "--qa",
            str(tiny_world.qa_path),
            "--video-root",
            str(tiny_world.video_dir),
            "--save-to-disk",
            str(out),
        ]
    )
    assert code == 0
    monkeypatch.chdir(tmp_path)  # not where the videos are
    dataset = load_prepared(out)
    assert video_root_of(out, None, dataset) == tiny_world.video_dir.absolute()
    check_videos(dataset, video_root_of(out, None, dataset), str(out))
    report = tmp_path / "report.json"
    args = ["eval", "--model", str(tiny_world.root), "--data", str(out), "--out", str(report), "--limit", "1"]
    args += ["--max-new-tokens", "4", "--max-frames", "8", "--min-pixels", "3136", "--max-pixels", "3136"]
    assert cli(args + ["--total-pixels", "25088"]) == 0
    assert json.loads(report.read_text())["overall"]["n"] == 1
    # an explicit root still wins; where the videos are not, the error names the dataset, the rows and the flag
    with pytest.raises(DataError) as error:
        check_videos(dataset, video_root_of(out, tmp_path / "elsewhere", dataset), str(out))
    message = str(error.value)
    assert message.startswith(f"{out}: 8 row(s) name a video that is not there: row 0: {tmp_path / 'elsewhere'}")
    assert "(and 5 more)" in message and "--video-root DIR" in message
    assert "prepared without its videos (`rewatch-trl data --embed-videos`" in message


def test_a_jsonl_finds_the_videos_folder_beside_it(tiny_world):
    from rewatch_trl.data import video_root_of

    assert video_root_of(tiny_world.qa_path) == tiny_world.video_dir


@pytest.mark.parametrize("hub", ["closed port", "offline mode"])
def test_a_hub_push_that_fails_says_so_in_one_line_after_saving(tiny_world, tmp_path, hub):
    """`rewatch-trl data --save-to-disk D --push-to-hub me/x` where the Hub cannot be reached (`HF_ENDPOINT` at a
    closed port on 127.0.0.1, or `HF_HUB_OFFLINE=1`): the dataset is on disk, one line says what failed and what to
    do, exit code 2, no traceback."""
    import os
    import socket
    import subprocess
    import sys

    from datasets import load_from_disk

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path)}
    env["HF_HUB_OFFLINE"] = "1" if hub == "offline mode" else "0"
    saved = tmp_path / "saved"
    command = [sys.executable, "-m", "rewatch_trl.cli", "data", "--qa", str(tiny_world.qa_path)]
    command += ["--captions", str(tiny_world.captions_path), "--video-root", str(tiny_world.video_dir)]
    command += ["--save-to-disk", str(saved), "--push-to-hub", "me/x"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("rewatch-trl data: error:")]
    assert line == result.stderr.strip().splitlines()[-1]  # the last word, after the progress bars
    assert "could not push to the Hub dataset me/x" in line and str(saved) in line
    assert ("HF_HUB_OFFLINE" in line) if hub == "offline mode" else (f"127.0.0.1:{port}" in line)
    assert len(load_from_disk(str(saved))) == len(tiny_world.rows)


TINY_VIDEO_FLAGS = ["--fps", "2", "--max-frames", "8", "--min-pixels", "3136", "--max-pixels", "3136"]
TINY_VIDEO_FLAGS += ["--total-pixels", "25088", "--video-backend", "decord"]


def test_check_decode_finds_the_video_that_does_not_decode(tiny_world, tmp_path, capsys):
    """A folder of 4 videos, 1 with a readable header and no frames (which row validation lets through): the check
    decodes each once (in 2 processes, then in this one), says 1 of 4, writes it with its decoder's error;
    `--drop-undecodable` saves the rest."""
    import shutil

    from test_video import corrupt_frames

    videos = tmp_path / "videos"
    shutil.copytree(tiny_world.video_dir, videos)
    corrupt_frames(videos / "synthetic_002.mp4")
    arguments = ["data", "--qa", str(tiny_world.qa_path), "--captions", str(tiny_world.captions_path)]
    arguments += ["--video-root", str(videos), *TINY_VIDEO_FLAGS]
    kept = tmp_path / "kept"
    assert cli([*arguments, "--save-to-disk", str(kept)]) == 0  # the control: validation alone passes it
    assert "unreadable" not in capsys.readouterr().out and len(load_prepared(kept)) == 8

    assert cli([*arguments, "--check-decode", "--num-proc", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 videos do not decode" in out and "synthetic_002.mp4" in out
    assert "decord cannot decode, by container: .mp4 1 of 4" in out
    assert "variable frame rate" not in out  # the control of the test below

    dropped = tmp_path / "dropped"
    assert cli([*arguments, "--check-decode", "--drop-undecodable", "--save-to-disk", str(dropped)]) == 0
    out = capsys.readouterr().out
    assert "dropped the 2 rows of the 1 video(s) that do not decode" in out
    dataset = load_prepared(dropped)
    assert len(dataset) == 6 and "synthetic_002.mp4" not in dataset["videos"]
    (record,) = [json.loads(line) for line in (dropped / "undecodable.jsonl").read_text().splitlines()]
    assert record["path"] == str(videos / "synthetic_002.mp4") and record["backend"] == "decord"
    assert "cannot decode" in record["error"] and "read_video" not in record["error"]


def test_check_decode_names_a_variable_rate_video_and_its_drift(tiny_world, tmp_path, capsys):
    """A row's video replaced by a variable-rate one: it decodes, and the check names it with how far its frames'
    times are from where the readers place them."""
    import shutil

    from test_video import write_variable_rate

    videos = tmp_path / "videos"
    shutil.copytree(tiny_world.video_dir, videos)
    write_variable_rate(videos / "synthetic_001.mp4", slow=24)  # 8 s, as its rows say
    arguments = ["data", "--qa", str(tiny_world.qa_path), "--video-root", str(videos), *TINY_VIDEO_FLAGS]
    assert cli([*arguments, "--check-decode"]) == 0
    out = capsys.readouterr().out
    assert "0 of 4 videos do not decode" in out and "by container" not in out
    assert "1 video(s) have a variable frame rate" in out
    drift = 16 / (40 / 7.625) - 2.0  # frame 16: 2.0 s, placed at 3.05 s
    assert f"  {videos / 'synthetic_001.mp4'}: {drift:.2f} s" in out


def test_drop_undecodable_needs_check_decode(tiny_world, tmp_path, capsys):
    arguments = ["data", "--qa", str(tiny_world.qa_path), "--video-root", str(tiny_world.video_dir)]
    assert cli([*arguments, "--drop-undecodable", "--save-to-disk", str(tmp_path / "o")]) == 2
    assert "--drop-undecodable needs --check-decode" in capsys.readouterr().err
