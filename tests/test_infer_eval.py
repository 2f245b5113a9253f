import json

import pytest
from datasets import Dataset

from rewatch_trl.cli import main as cli
from rewatch_trl.eval import evaluate, predictions_path
from rewatch_trl.families import FAMILIES
from rewatch_trl.infer import Predictor, infer
from rewatch_trl.prompts import REACT_PROMPT
from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, write_synthetic_video
from rewatch_trl.video import VideoError


def test_infer_builds_the_seeds_prompt_from_the_files_duration(tiny_world, tmp_path):
    video = tmp_path / "ninety_seconds.mp4"
    write_synthetic_video(video, seconds=90, fps=2, seed=3)
    question = "What happened from [01:00] to [01:10]?"
    result = infer(str(tiny_world.root), str(video), question, TINY_VIDEO_SETTINGS, max_new_tokens=12)
    instruction = REACT_PROMPT.format(video_duration="00:00-01:30", question=question)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|video_pad|><|vision_end|>{instruction}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert result["prompt"] == expected
    assert result["duration"] == 90 and result["duration_str"] == "00:00-01:30"
    assert result["frames"]["count"] == 8 and result["frames"]["size"] == [56, 56]
    assert isinstance(result["completion"], str)
    assert set(result["timings"]) == {"load_s", "decode_s", "generate_s"}
    json.dumps(result)  # the --json output is plain JSON


def video_flags(world) -> list[str]:
    """The infer and eval flags of the world's frames (in its family's pixel unit)."""
    settings = world.video_settings
    flags = {"--max-frames": settings.video_max_frames, "--min-pixels": settings.video_min_pixels}
    flags |= {"--max-pixels": settings.video_max_pixels, "--total-pixels": settings.video_total_pixels}
    return [str(part) for flag in flags.items() for part in flag]


@pytest.mark.parametrize("family", FAMILIES)
def test_infer_command_json(family, family_world, capsys):
    world = family_world(family)
    video = str(world.video_dir / "synthetic_000.mp4")
    command = ["infer", "--model", str(world.root), *video_flags(world), "--max-new-tokens", "4"]
    assert cli([*command, video, "What color?", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["duration_str"] == "00:00-00:08"
    assert result["answer"] is None or isinstance(result["answer"], str)


def test_bad_inputs_give_one_clear_error(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        Predictor(str(tmp_path / "no-model"))
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Predictor(str(tmp_path / "empty-model"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoError, match="broken.mp4"):
        infer(str(tiny_world.root), str(broken), "q?", TINY_VIDEO_SETTINGS)
    with pytest.raises(ValueError, match="lacks answer, multiple_choice"):
        evaluate(
            object(),
            Dataset.from_list([{"problem_id": "a", "problem": "q", "videos": "v", "duration": 1}]),
            tmp_path / "r.json",
        )


class PlantedPredictor:
    """Answers by problem_id from a table; can fail after some rows, as an interrupted run would."""

    def __init__(self, answers, fail_after=None):
        self.answers, self.fail_after, self.calls = answers, fail_after, []

    def rollouts(self, rows):
        if self.fail_after is not None and len(self.calls) + len(rows) > self.fail_after:
            raise KeyboardInterrupt
        self.calls += [row["problem_id"] for row in rows]
        return [(self.answers[row["problem_id"]], []) for row in rows]


def planted(rows):
    trace = "<action>[00:00-00:02]</action><observation>x</observation>"
    answers = {}
    for i, row in enumerate(rows):
        if row["multiple_choice"]:  # right, right, wrong, unformatted-right
            letter = row["answer"] if i % 8 != 4 else ("A" if row["answer"] != "A" else "B")
            answers[row["problem_id"]] = (
                f"<answer>{letter}</answer>" if i % 8 == 6 else f"{trace}<answer>{letter}</answer>"
            )
        else:  # the colour (F1 1.0) or a wrong word (0.0), two steps each
            word = row["answer"] if i % 4 == 1 else "purple"
            answers[row["problem_id"]] = f"{trace}{trace}<answer>{word}</answer>"
    return answers


def test_eval_report_matches_a_count_by_hand_and_resumes(tiny_world, tmp_path):
    rows = [dict(r, question_type="color" if i < 4 else "motion") for i, r in enumerate(tiny_world.rows)]
    dataset = Dataset.from_list(rows)
    answers = planted(rows)
    out = tmp_path / "report.json"
    first = PlantedPredictor(answers, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(first, dataset, out, batch_size=2, progress=False)
    assert len(predictions_path(out).read_text().splitlines()) == 2  # the finished batch was kept
    second = PlantedPredictor(answers)
    result = evaluate(second, dataset, out, batch_size=2, progress=False)
    assert second.calls == [r["problem_id"] for r in rows[2:]]  # nothing redone
    # by hand: rows alternate MCQ (even i) / open-ended (odd i); 8 rows
    # MCQ rows i = 0, 2, 4, 6: right, right, wrong (4), right without format (6)
    # open-ended rows i = 1, 3, 5, 7: right when i % 4 == 1 -> 1 and 5; every one with two steps
    assert result["by_kind"]["multiple_choice"] == {
        "n": 4,
        "accuracy": 3 / 4,
        "format_rate": 3 / 4,
        "mean_steps": 3 / 4,
    }
    assert result["by_kind"]["open_ended"] == {"n": 4, "accuracy": 2 / 4, "format_rate": 1.0, "mean_steps": 2.0}
    assert result["overall"]["n"] == 8 and result["overall"]["accuracy"] == 5 / 8
    assert result["by_question_type"]["color"]["accuracy"] == (1 + 1 + 1 + 0) / 4  # i = 0, 1, 2, 3
    assert result["by_question_type"]["motion"]["accuracy"] == (0 + 1 + 1 + 0) / 4  # i = 4, 5, 6, 7
    assert json.loads(out.read_text()) == result
    # a clean run gives the same report
    clean = evaluate(PlantedPredictor(answers), dataset, tmp_path / "clean.json", progress=False)
    assert clean == result


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_command_end_to_end(family, family_world, tmp_path, capsys):
    world = family_world(family)
    out = tmp_path / "report.json"
    args = ["eval", "--model", str(world.root), *video_flags(world), "--max-new-tokens", "4"]
    args += ["--data", str(world.qa_path), "--video-root", str(world.video_dir), "--limit", "3", "--batch-size", "2"]
    args += ["--out", str(out)]
    assert cli(args) == 0
    report = json.loads(out.read_text())
    assert report["overall"]["n"] == 3
    assert len(predictions_path(out).read_text().splitlines()) == 3
    assert "3 rows: accuracy" in capsys.readouterr().out
    # its predictions make the rollout page: each row's question, its video's frames, its completion
    predictions = [json.loads(line) for line in predictions_path(out).read_text().splitlines()]
    assert all(p["media"]["type"] == "video" and p["problem"] for p in predictions)
    assert cli(["rollouts", str(predictions_path(out)), *video_flags(world)]) == 0
    page = predictions_path(out).with_suffix(".html").read_text()
    assert (
        page.count('class="rollout') == 3 and page.count('class="frame"') == 3 * world.video_settings.video_max_frames
    )


def test_vllm_backend_without_vllm_says_how_to_install(tiny_world):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"rewatch-trl\[vllm\]"):
            Predictor(str(tiny_world.root), backend="vllm")
    with pytest.raises(ValueError, match="unknown backend 'tgi'"):
        Predictor(str(tiny_world.root), backend="tgi")


def test_infer_does_not_import_the_trainer():
    import subprocess
    import sys

    code = "import sys, rewatch_trl.infer; print('rewatch_trl.trainer' in sys.modules, 'trl' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_eval_report_counts_real_rewatches_and_splits_accuracy(tiny_world, tmp_path):
    rows = tiny_world.rows[:4]
    right = {row["problem_id"]: f"<answer>{row['answer']}</answer>" for row in rows}
    clip = {"start": 2.0, "end": 4.0, "frames": 8}

    class Rewatching(PlantedPredictor):
        def rollouts(self, batch):
            # rows 0 and 1 re-watch (once, twice); row 0 is right, row 1 wrong; rows 2 (right) and 3 (wrong) do not
            shown = {0: [clip], 1: [clip, clip]}
            return [
                (right[row["problem_id"]] if i in (0, 2) else "<answer>purple</answer>", shown.get(i, []))
                for row in batch
                for i in [rows.index(row)]
            ]

    result = evaluate(
        Rewatching(right), Dataset.from_list(rows), tmp_path / "report.json", batch_size=4, progress=False
    )
    overall = result["overall"]
    assert overall["mean_rewatches"] == 3 / 4 and overall["rewatched_rate"] == 2 / 4
    assert overall["accuracy_rewatched"] == 1 / 2 and overall["accuracy_not_rewatched"] == 1 / 2
    predictions = [json.loads(line) for line in predictions_path(tmp_path / "report.json").read_text().splitlines()]
    assert [len(p["rewatched"]) for p in predictions] == [1, 2, 0, 0]
