"""lmms-eval with the `rewatch` model (its plugin entry point) and our MINERVA task, offline, on the tiny world.

lmms-eval runs in a subprocess (`rewatch-trl lmms-eval`): importing it silences every warning of the process and
replaces loguru's handlers.
"""

import json
import subprocess
import sys
from pathlib import Path

from rewatch_trl.lmms import TASKS_DIR


MODEL_ARGS = "video_max_frames=8,video_min_pixels=3136,video_max_pixels=3136,video_total_pixels=25088"
MINERVA_URL = "https://huggingface.co/datasets/lmms-lab-eval/minerva/resolve/main/minerva.json"


def minerva_rows(world) -> list[dict]:
    """The tiny world's multiple-choice rows in MINERVA's row format."""
    rows = []
    for row in world.rows:
        if not row["multiple_choice"]:
            continue
        question, *options = row["problem"].split("\n")
        choices = {f"answer_choice_{i}": option.split(": ", 1)[1] for i, option in enumerate(options)}
        rows.append(
            {
                "key": row["problem_id"],
                "video_id": Path(row["videos"]).stem,
                "question": question,
                **choices,
                "answer_id": "ABCD".index(row["answer"]),
                "answer": row["answer_str"],
                "question_type": row["question_type"],
                "split": "test",
                "category": "synthetic",
            }
        )
    return rows


def test_lmms_eval_answers_as_rewatch_trl_eval(tiny_world, sft_model, tmp_path):
    from rewatch_trl.cli import main as cli
    from rewatch_trl.eval import predictions_path

    rows = minerva_rows(tiny_world)
    assert len(rows) == 4
    data = tmp_path / "minerva.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # our MINERVA task, pointed at the local rows
    tasks = tmp_path / "tasks" / "rewatch_minerva_tiny"
    tasks.mkdir(parents=True)
    shipped = TASKS_DIR / "rewatch_minerva"
    (tasks / "utils.py").write_text((shipped / "utils.py").read_text())
    recipe = (shipped / "rewatch_minerva.yaml").read_text()
    assert MINERVA_URL in recipe
    recipe = recipe.replace(MINERVA_URL, str(data)).replace("task: rewatch_minerva", "task: rewatch_minerva_tiny")
    (tasks / "rewatch_minerva_tiny.yaml").write_text(recipe)
    out = tmp_path / "lmms"
    command = [sys.executable, "-m", "rewatch_trl.cli", "lmms-eval", "--model", "rewatch"]
    command += ["--model_args", f"pretrained={sft_model},max_new_tokens=24,{MODEL_ARGS}"]
    command += ["--tasks", "rewatch_minerva_tiny", "--include_path", str(tmp_path / "tasks"), "--batch_size", "2"]
    command += ["--output_path", str(out), "--log_samples"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MINERVA_VIDEO_DIR": str(tiny_world.video_dir)}
    env |= {"HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, env=__import__("os").environ | env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]["rewatch_minerva_tiny"]
    assert "minerva_acc,none" in results
    (samples_file,) = out.rglob("*_samples_rewatch_minerva_tiny.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    completions = [sample["filtered_resps"] for sample in samples]  # the model's whole completion, as scored
    questions = [row["problem"] for row in tiny_world.rows if row["multiple_choice"]]
    assert [sample["input"] for sample in samples] == questions  # asked as the seed asks
    # the same rows through `rewatch-trl eval`: the seed's format, the same question text
    qa = tmp_path / "qa.jsonl"
    seed_rows = [row for row in tiny_world.rows if row["multiple_choice"]]
    qa.write_text("".join(json.dumps(row) + "\n" for row in seed_rows))
    report = tmp_path / "report.json"
    args = ["eval", "--model", str(sft_model), "--data", str(qa), "--video-root", str(tiny_world.video_dir)]
    args += ["--out", str(report), "--max-new-tokens", "24", "--max-frames", "8", "--min-pixels", "3136"]
    assert cli(args + ["--max-pixels", "3136", "--total-pixels", "25088"]) == 0
    predictions = [json.loads(line) for line in predictions_path(report).read_text().splitlines()]
    expected = [prediction["completion"] for prediction in predictions]
    assert completions == expected
