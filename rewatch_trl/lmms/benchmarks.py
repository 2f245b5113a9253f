"""The paper's benchmarks for lmms-eval: each task asks the question as the seed's prompt does (options as
`A: text` lines, the ReAct instruction added by the model class), reads its videos from a local directory named
by an environment variable, and scores the `<answer>` of the ReAct completion with the stock task's own scorer.
"""

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


def strip_letter(option: str) -> str:
    """`A. text` / `(A) text` / `A: text` → `text` (the seed lists options as `A: text` itself)."""
    return re.sub(r"^\(?[A-H][.):]\s*", "", str(option).strip())


# Video-Holmes: rows `video ID`, `Question`, `Options` ({letter: text}), `Answer`; $VIDEO_HOLMES_VIDEO_DIR
def video_holmes_doc_to_visual(doc):
    return [local_video("VIDEO_HOLMES_VIDEO_DIR", doc["video ID"], "rewatch_video_holmes")]


def video_holmes_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = doc["Options"]
    return question_with_options(str(doc["Question"]), [str(options[letter]) for letter in sorted(options)])


def video_holmes_process_results(doc, results):
    from lmms_eval.tasks.video_holmes import utils as stock

    return stock.video_holmes_process_results(doc, answered(results))


# VideoMathQA (multiple choice): rows `videoID`, `question`, `options` (`A. text`), `answer`; $VIDEOMATHQA_VIDEO_DIR
def videomathqa_doc_to_visual(doc):
    return [local_video("VIDEOMATHQA_VIDEO_DIR", doc["videoID"], "rewatch_videomathqa")]


def videomathqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return question_with_options(str(doc["question"]), [strip_letter(option) for option in doc["options"]])


def videomathqa_process_results(doc, results):
    from lmms_eval.tasks.videomathqa import utils as stock

    return stock.videomathqa_process_results(doc, answered(results))


# CG-AV-Counting (whole video): rows `video` (a file name), `question`, `answer` (a count); $CGAV_COUNTING_VIDEO_DIR
def cgav_counting_doc_to_visual(doc):
    return [local_video("CGAV_COUNTING_VIDEO_DIR", str(doc["video"]), "rewatch_cgav_counting")]


def cgav_counting_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']} Answer with a number."


def cgav_counting_process_results(doc, results):
    from lmms_eval.tasks.cgav_counting import utils as stock

    return stock.cgav_process_results_long(doc, answered(results))


# Video-MME: rows `videoID`, `question`, `options` (`A. text`), `answer`; $VIDEOMME_VIDEO_DIR
def videomme_doc_to_visual(doc):
    return [local_video("VIDEOMME_VIDEO_DIR", doc["videoID"], "rewatch_videomme")]


def videomme_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return question_with_options(str(doc["question"]), [strip_letter(option) for option in doc["options"]])


def videomme_process_results(doc, results):
    from lmms_eval.tasks.videomme import utils as stock

    return stock.videomme_process_results(doc, answered(results))
