"""lmms-eval with the `rewatch` model (its plugin entry point) and our MINERVA task, offline, on the tiny world.

lmms-eval runs in a subprocess (`rewatch-trl lmms-eval`): importing it silences every warning of the process and
replaces loguru's handlers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def video_args(world) -> dict[str, int]:
    """The world's frames (in its family's pixel unit), as the `rewatch` model's arguments name them."""
    settings = world.video_settings
    keys = ("video_max_frames", "video_min_pixels", "video_max_pixels", "video_total_pixels")
    return {key: getattr(settings, key) for key in keys}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_lmms_eval_answers_as_rewatch_trl_eval(family, family_world, sft_model, tmp_path):
    """The `rewatch` model in lmms-eval asks each question as the seed asks it and completes it as `rewatch-trl eval`
    does (Qwen2.5-VL: the SFT cold start; the Qwen3 families: their tiny worlds' models, frames in their unit)."""
    from rewatch_trl.cli import main as cli
    from rewatch_trl.eval import predictions_path

    tiny_world = family_world(family)
    model = sft_model if family == "qwen2_5_vl" else tiny_world.root
    frames = video_args(tiny_world)
    rows = minerva_rows(tiny_world)
    assert len(rows) == sum(row["multiple_choice"] for row in tiny_world.rows) >= 2
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
    model_args = ",".join(f"{key}={value}" for key, value in frames.items())
    command += ["--model_args", f"pretrained={model},max_new_tokens=24,{model_args}"]
    command += ["--tasks", "rewatch_minerva_tiny", "--include_path", str(tmp_path / "tasks"), "--batch_size", "2"]
    command += ["--output_path", str(out), "--log_samples"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MINERVA_VIDEO_DIR": str(tiny_world.video_dir)}
    env |= {"HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | env, timeout=600)
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
    args = ["eval", "--model", str(model), "--data", str(qa), "--video-root", str(tiny_world.video_dir)]
    args += ["--out", str(report), "--max-new-tokens", "24", "--max-frames", str(frames["video_max_frames"])]
    args += ["--min-pixels", str(frames["video_min_pixels"]), "--max-pixels", str(frames["video_max_pixels"])]
    assert cli(args + ["--total-pixels", str(frames["video_total_pixels"])]) == 0
    predictions = [json.loads(line) for line in predictions_path(report).read_text().splitlines()]
    # lmms-eval strips what a model returns before its filters (`Task.process_results`): a leading space goes
    expected = [prediction["completion"].strip() for prediction in predictions]
    assert completions == expected


def stand_in_rows(world) -> dict[str, list[dict]]:
    """Two rows of each shipped benchmark's row format, about the tiny world's videos."""
    colors = ["blue", "green", "red", "yellow"]
    lettered = [f"{letter}. {color}" for letter, color in zip("ABCD", colors, strict=True)]
    rows = {name: [] for name in ("video_holmes", "videomathqa", "cgav_counting", "videomme")}
    for i, row in enumerate([row for row in world.rows if row["multiple_choice"]][:2]):
        stem, question = Path(row["videos"]).stem, row["problem"].split("\n")[0]
        rows["video_holmes"].append(
            {"video ID": stem, "Question": question, "Options": dict(zip("ABCD", colors, strict=True)),
             "Answer": row["answer"], "Question Type": "SR"}
        )  # fmt: skip
        rows["videomathqa"].append(
            {"videoID": stem, "question": question, "options": lettered,
             "answer": row["answer"], "category": "Counting", "question_id": str(i), "length": "short"}
        )  # fmt: skip
        rows["cgav_counting"].append(
            {"index": i, "video": row["videos"], "question": "How many times does the square change colour?",
             "answer": 3, "category": "event", "type": "count", "query_interval": [0.0, 8.0], "clue": "[]"}
        )  # fmt: skip
        rows["videomme"].append(
            {"videoID": stem, "question_id": f"{i}-1", "duration": "short", "domain": "Knowledge",
             "sub_category": "Humanity & History", "task_type": "Temporal Perception", "question": question,
             "options": lettered, "answer": row["answer"]}
        )  # fmt: skip
    return rows


def test_every_shipped_benchmark_loads_and_runs_on_a_stand_in(tiny_world, tmp_path):
    import re

    names = [
        "rewatch_minerva",
        "rewatch_video_holmes",
        "rewatch_videomathqa",
        "rewatch_cgav_counting",
        "rewatch_videomme",
    ]
    assert sorted(path.name for path in TASKS_DIR.iterdir() if path.is_dir()) == sorted(names)
    # each found by lmms-eval's task manager, offline (a subprocess: lmms-eval's import side effects stay there)
    code = (
        "from lmms_eval.tasks import TaskManager; import sys; "
        f"m = TaskManager(include_path={str(TASKS_DIR)!r}); print(sorted(n for n in m.all_tasks if n.startswith('rewatch_')))"
    )
    offline = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline, check=True)
    assert listed.stdout.strip().splitlines()[-1] == str(sorted(names))
    # each run on two local rows of its format, with local videos, in one lmms-eval run
    tasks = tmp_path / "tasks"
    env = dict(offline)
    for benchmark, rows in stand_in_rows(tiny_world).items():
        name = f"rewatch_{benchmark}"
        data = tmp_path / f"{benchmark}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        folder = tasks / f"{name}_tiny"
        folder.mkdir(parents=True)
        (folder / "utils.py").write_text((TASKS_DIR / name / "utils.py").read_text())
        recipe = (TASKS_DIR / name / f"{name}.yaml").read_text()
        local = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test"
        recipe = re.sub(r"(?ms)^dataset_path:.*?^test_split: test$", local, recipe)
        (folder / f"{name}_tiny.yaml").write_text(recipe.replace(f"task: {name}", f"task: {name}_tiny"))
        env[f"{benchmark.upper()}_VIDEO_DIR"] = str(tiny_world.video_dir)
    out = tmp_path / "lmms"
    command = [sys.executable, "-m", "rewatch_trl.cli", "lmms-eval", "--model", "rewatch"]
    command += ["--model_args", f"pretrained={tiny_world.root},max_new_tokens=8,{MODEL_ARGS}"]
    command += ["--tasks", ",".join(f"{name}_tiny" for name in names[1:]), "--include_path", str(tasks)]
    command += ["--batch_size", "2", "--output_path", str(out), "--log_samples"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]
    for name, metric in zip(
        names[1:],
        ["video_holmes_accuracy", "videomathqa_perception_score", "acc", "videomme_perception_score"],
        strict=True,
    ):
        assert f"{metric},none" in results[f"{name}_tiny"], (name, results[f"{name}_tiny"])
        (samples,) = out.rglob(f"*_samples_{name}_tiny.jsonl")
        assert len(samples.read_text().splitlines()) == 2


def test_a_missing_video_names_the_variable_and_the_file(tmp_path, monkeypatch):
    from rewatch_trl.lmms.benchmarks import local_video

    monkeypatch.setenv("VIDEOMME_VIDEO_DIR", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=rf"rewatch_videomme: video 'abc' is not in VIDEOMME_VIDEO_DIR={tmp_path}"
    ):
        local_video("VIDEOMME_VIDEO_DIR", "abc", "rewatch_videomme")
    monkeypatch.delenv("VIDEOMME_VIDEO_DIR")
    with pytest.raises(FileNotFoundError, match="set VIDEOMME_VIDEO_DIR"):
        local_video("VIDEOMME_VIDEO_DIR", "abc", "rewatch_videomme")


def test_the_entry_point_module_is_light():
    code = "import sys, rewatch_trl.lmms; print('torch' in sys.modules, 'lmms_eval' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
    # and lmms-eval's registry finds the model through it
    code = "from lmms_eval.models import get_model; print(get_model('rewatch', force_simple=True).__module__)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.stdout.strip().splitlines()[-1] == "rewatch_trl.lmms.model", found.stderr[-2000:]


SCORE_SNIPPET = """
import importlib.util, json, re, sys
from pathlib import Path

tasks, docs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
scores = {}
for name, planted in docs.items():
    spec = importlib.util.spec_from_file_location(name + "_utils", tasks / name / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    recipe = (tasks / name / (name + ".yaml")).read_text()
    score = getattr(utils, re.search(r"process_results: !function utils\\.(\\w+)", recipe).group(1))
    results = [score(dict(doc), [completion]) for doc, completion in planted]
    scores[name] = {
        metric: getattr(utils, function)([result[metric] for result in results])
        for metric, function in re.findall(r"- metric: (\\w+)\\n\\s+aggregation: !function utils\\.(\\w+)", recipe)
    }
print("SCORES " + json.dumps(scores))
"""


def test_each_benchmark_scores_planted_answers_as_counted_by_hand(tiny_world, tmp_path):
    """Each shipped task's own scorer and aggregations (as its YAML names them) over two of its rows: one ReAct
    completion answering right, one answering wrong (a counting answer 5 for 3). Counted by hand: half right, in
    each benchmark's scale (percent for the four multiple-choice ones), and for CG-AV-Counting a mean absolute error
    of 1 and a root mean square error of √2."""

    def trace(answer):
        return f"<action>Re-watch [00:01-00:02]</action><observation>a square</observation><answer>{answer}</answer>"

    def wrong(letter):
        return "ABCD"["ABCD".index(letter) - 1]

    rows = stand_in_rows(tiny_world) | {"minerva": minerva_rows(tiny_world)[:2]}
    right_letter = {
        "minerva": lambda row: "ABCDE"[row["answer_id"]],
        "video_holmes": lambda row: row["Answer"],
        "videomathqa": lambda row: row["answer"],
        "videomme": lambda row: row["answer"],
    }
    planted = {}
    for benchmark, (first, second) in rows.items():
        if benchmark == "cgav_counting":
            answers = [str(first["answer"]), str(second["answer"] + 2)]
        else:
            answers = [right_letter[benchmark](first), wrong(right_letter[benchmark](second))]
        planted[f"rewatch_{benchmark}"] = [(first, trace(answers[0])), (second, trace(answers[1]))]
    docs = tmp_path / "planted.json"
    docs.write_text(json.dumps(planted))
    offline = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", SCORE_SNIPPET, str(TASKS_DIR), str(docs)], capture_output=True, text=True, env=offline
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("SCORES ")]
    scores = json.loads(line.removeprefix("SCORES "))
    assert scores == {
        "rewatch_minerva": {"minerva_acc": 50.0},
        "rewatch_video_holmes": {"video_holmes_accuracy": 50.0},
        "rewatch_videomathqa": {"videomathqa_perception_score": 50.0},
        "rewatch_videomme": {"videomme_perception_score": 50.0},
        "rewatch_cgav_counting": {"acc": 0.5, "oboa": 0.5, "mae": 1.0, "rmse": pytest.approx(2**0.5)},
    }


def test_the_rewatch_model_answers_an_image_task_as_rewatch_trl_infer(tiny_world):
    """An image task's row (lmms-eval hands a PIL image) is asked as an image row (`prompts.IMAGE_REACT_PROMPT`)
    and completed as `Predictor` completes the same image from its file; a video task's row stays a video row."""
    from types import SimpleNamespace

    from PIL import Image

    from rewatch_trl.infer import Predictor
    from rewatch_trl.lmms.model import RewatchModel

    path = tiny_world.root / "images" / "sign_000.png"
    video = tiny_world.video_dir / tiny_world.rows[0]["videos"]
    docs = {0: {"image": Image.open(path)}, 1: {"video": str(video)}}
    frames = video_args(tiny_world)
    model = RewatchModel(str(tiny_world.root), max_new_tokens=12, batch_size=2, **frames)
    model.task_dict = {"tiny": {"test": docs}}

    def visual(doc):
        return [doc.get("image") or doc["video"]]

    requests = [
        SimpleNamespace(args=(question, {}, visual, i, "tiny", "test"))
        for i, question in enumerate(["What word?", "What color?"])
    ]
    completions = model.generate_until(requests)
    predictor = Predictor(str(tiny_world.root), tiny_world.video_settings, max_new_tokens=12)
    image_row = {"problem": "What word?", "image_path": str(path), "data_type": "image"}
    video_row = {"problem": "What color?", "videos": str(video), "duration": 8}
    assert completions == predictor.generate([image_row, video_row])
    assert predictor.collator.prompt_text(predictor.collator.messages(image_row)).count("<|image_pad|>") == 1
