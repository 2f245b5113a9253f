"""The paper's benchmarks for lmms-eval: each task asks the question as the seed's prompt does (options as
`A: text` lines, the ReAct instruction added by the model class), reads its videos from a local directory named
by an environment variable, and scores the `<answer>` of the ReAct completion with the stock task's own scorer.
"""

import importlib
import os
import re
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


def stock_scorer(task: str, function: str):
    """The `process_results` of a stock lmms-eval task (`lmms_eval.tasks.<task>.utils.<function>`), applied to the
    `<answer>` of the ReAct completion; the stock module is imported when lmms-eval first scores."""

    def process_results(doc, results):
        scorer = getattr(importlib.import_module(f"lmms_eval.tasks.{task}.utils"), function)
        return scorer(doc, answered(results))

    process_results.__name__ = f"{task}_process_results"
    return process_results


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


minerva_process_results = stock_scorer("minerva", "minerva_process_results")


def strip_letter(option: str) -> str:
    """`A. text` / `(A) text` / `A: text` → `text` (the seed lists options as `A: text` itself)."""
    return re.sub(r"^\(?[A-H][.):]\s*", "", str(option).strip())


# Video-Holmes: rows `video ID`, `Question`, `Options` ({letter: text}), `Answer`; $VIDEO_HOLMES_VIDEO_DIR
def video_holmes_doc_to_visual(doc):
    return [local_video("VIDEO_HOLMES_VIDEO_DIR", doc["video ID"], "rewatch_video_holmes")]


def video_holmes_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = doc["Options"]
    return question_with_options(str(doc["Question"]), [str(options[letter]) for letter in sorted(options)])


video_holmes_process_results = stock_scorer("video_holmes", "video_holmes_process_results")


# VideoMathQA (multiple choice): rows `videoID`, `question`, `options` (`A. text`), `answer`; $VIDEOMATHQA_VIDEO_DIR
def videomathqa_doc_to_visual(doc):
    return [local_video("VIDEOMATHQA_VIDEO_DIR", doc["videoID"], "rewatch_videomathqa")]


def videomathqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return question_with_options(str(doc["question"]), [strip_letter(option) for option in doc["options"]])


videomathqa_process_results = stock_scorer("videomathqa", "videomathqa_process_results")


# CG-AV-Counting (whole video): rows `video` (a file name), `question`, `answer` (a count); $CGAV_COUNTING_VIDEO_DIR
def cgav_counting_doc_to_visual(doc):
    return [local_video("CGAV_COUNTING_VIDEO_DIR", str(doc["video"]), "rewatch_cgav_counting")]


def cgav_counting_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']} Answer with a number."


cgav_counting_process_results = stock_scorer("cgav_counting", "cgav_process_results_long")


# Video-MME: rows `videoID`, `question`, `options` (`A. text`), `answer`; $VIDEOMME_VIDEO_DIR
def videomme_doc_to_visual(doc):
    return [local_video("VIDEOMME_VIDEO_DIR", doc["videoID"], "rewatch_videomme")]


# the rows lay out their question and options as VideoMathQA's do
videomme_doc_to_text = videomathqa_doc_to_text


videomme_process_results = stock_scorer("videomme", "videomme_process_results")
