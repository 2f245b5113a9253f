"""Evaluate a model on seed-format rows: batched generation, scored with our rewards, resumable.

    rewatch-trl eval --model runs/rewatch-grpo --data data/video-bench --split test --out report.json

Predictions go to `OUT.predictions.jsonl` as they are made (one line a row); a second run with the same
`--out` skips the rows already there, so an interrupted evaluation resumes where it stopped.
"""

import json
from collections import defaultdict
from pathlib import Path

from rewatch_trl.data import FIELDS
from rewatch_trl.react import parse_react
from rewatch_trl.rewards import accuracy_reward, react_format_reward


NEEDED = ("problem_id", "problem", "answer", "multiple_choice")


def check_rows(dataset) -> None:
    """A dataset without the fields evaluation needs raises one error that names them."""
    columns = set(dataset.column_names)
    missing = [name for name in NEEDED if name not in columns]
    if "image_path" not in columns:  # video rows: their video and its duration (an image row has its image)
        missing += [name for name in ("videos", "duration") if name not in columns]
    if missing:
        raise ValueError(f"the dataset lacks {', '.join(missing)} (seed fields: {', '.join(FIELDS)})")


def predictions_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".predictions.jsonl")


def score(row: dict, completion: str, rewatched: list[dict] | None = None) -> dict:
    """One prediction with its scores: accuracy (MCQ letter, a Video-R1 kind's rule, or open-ended token F1), format
    (an image row's without re-watch steps), re-watch steps, and the clips really re-watched (agentic mode)."""
    trace = parse_react(completion)
    columns = {"answer": [row["answer"]], "multiple_choice": [row["multiple_choice"]], "problem": [row["problem"]]}
    columns |= {"problem_type": [row.get("problem_type")]}  # a Video-R1 row's kind (numerical, OCR, ...)
    return {
        "problem_id": row["problem_id"],
        "question_type": row.get("question_type"),
        "multiple_choice": bool(row["multiple_choice"]),
        "completion": completion,
        "prediction": trace.answer,
        "answer": row["answer"],
        "accuracy": accuracy_reward([completion], **columns)[0],
        "format": react_format_reward([completion], data_type=[row.get("data_type")])[0],
        "steps": len(trace.steps),
        "rewatched": rewatched or [],
    }


def report(predictions: list[dict]) -> dict:
    """Accuracy overall, per question type and per kind (MCQ / open-ended), format rate, mean re-watch steps; with
    real re-watches (agentic mode), their mean count and the accuracy of predictions with and without one."""

    def mean(values):
        return sum(values) / len(values) if values else None

    def summary(items):
        result = {
            "n": len(items),
            "accuracy": mean([p["accuracy"] for p in items]),
            "format_rate": mean([p["format"] for p in items]),
            "mean_steps": mean([p["steps"] for p in items]),
        }
        if any(p.get("rewatched") for p in predictions):
            shown = [p for p in items if p.get("rewatched")]
            result |= {
                "mean_rewatches": mean([len(p.get("rewatched", [])) for p in items]),
                "rewatched_rate": mean([bool(p.get("rewatched")) for p in items]),
                "accuracy_rewatched": mean([p["accuracy"] for p in shown]),
                "accuracy_not_rewatched": mean([p["accuracy"] for p in items if not p.get("rewatched")]),
            }
        return result

    by_type, by_kind = defaultdict(list), defaultdict(list)
    for p in predictions:
        by_type[p["question_type"] or "unknown"].append(p)
        by_kind["multiple_choice" if p["multiple_choice"] else "open_ended"].append(p)
    return {
        "overall": summary(predictions),
        "by_kind": {kind: summary(items) for kind, items in sorted(by_kind.items())},
        "by_question_type": {kind: summary(items) for kind, items in sorted(by_type.items())},
    }


def evaluate(predictor, dataset, out, batch_size: int = 8, limit: int | None = None, progress: bool = True) -> dict:
    """Generate for every row not yet in the predictions file, append them as they come, write the report."""
    from tqdm.auto import tqdm

    from rewatch_trl.rollouts import media_block

    check_rows(dataset)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    path = predictions_path(out)
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                prediction = json.loads(line)
                done[prediction["problem_id"]] = prediction
    todo = [row for row in dataset if row["problem_id"] not in done]
    collator = getattr(predictor, "collator", None)  # a stand-in predictor may have none
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("a") as handle,
        tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc="evaluating", disable=not progress) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            for row, (completion, rewatched) in zip(rows, predictor.rollouts(rows), strict=True):
                prediction = score(row, completion, rewatched)
                # what the rollout page shows beside it (`rewatch-trl rollouts PREDICTIONS`)
                prediction["problem"] = row["problem"]
                if collator is not None:
                    prediction["media"] = media_block(collator.messages(row))
                done[row["problem_id"]] = prediction
                handle.write(json.dumps(prediction, ensure_ascii=False) + "\n")
            handle.flush()
            bar.update(len(rows))
    result = report([done[row["problem_id"]] for row in dataset])
    Path(out).write_text(json.dumps(result, indent=2))
    return result
