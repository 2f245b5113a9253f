"""The paper's benchmarks for lmms-eval: each task asks the question as the seed's prompt does (options as
`A: text` lines, the ReAct instruction added by the model class), reads its videos from a local directory named
by an environment variable, and scores the `<answer>` of the ReAct completion with the stock task's own scorer.
"""

import os
from pathlib import Path

from rewatch_trl.react import parse_react


LETTERS = "ABCDEFGH"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov")


def local_video(variable: str, name: str, task: str) -> str:
    """The video file `name` (any usual suffix) in the directory the environment variable `variable` names."""
    root = os.environ.get(variable, "").strip()
    if not root:
        raise FileNotFoundError(f"{task}: set {variable} to the directory that holds the benchmark's videos")
    for suffix in ("", *VIDEO_SUFFIXES):
        path = Path(root) / f"{name}{suffix}"
        if path.is_file():
            return str(path)
    raise FileNotFoundError(
        f"{task}: video {name!r} is not in {variable}={root} (looked for {name} with {', '.join(VIDEO_SUFFIXES)})"
    )


def answered(results: list[str]) -> list[str]:
    """lmms-eval's results (one completion) → the `<answer>` of the ReAct completion, for a stock scorer."""
    trace = parse_react(results[0] if results else "")
    return [trace.answer or ""]


def question_with_options(question: str, options: list[str]) -> str:
    return "\n".join([question.strip(), *(f"{LETTERS[i]}: {option}" for i, option in enumerate(options))])


# MINERVA: rows `video_id`, `question`, `answer_choice_0..4`, `answer_id`; videos in $MINERVA_VIDEO_DIR (as stock)
def minerva_doc_to_visual(doc):
    return [local_video("MINERVA_VIDEO_DIR", doc["video_id"], "rewatch_minerva")]


def minerva_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = [
        str(doc[f"answer_choice_{i}"]).strip() for i in range(5) if str(doc.get(f"answer_choice_{i}", "")).strip()
    ]
    return question_with_options(str(doc["question"]), options)


def minerva_process_results(doc, results):
    from lmms_eval.tasks.minerva import utils as stock

    return stock.minerva_process_results(doc, answered(results))
