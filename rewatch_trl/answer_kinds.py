"""How an answer of each kind is scored against its reference: Video-R1's rules (its `problem_type`s), pure Python.

| kind | score |
| --- | --- |
| `multiple choice` | 1 if the stripped texts are equal |
| `numerical` | 1 if both or neither have a decimal mark (`.` or `,`) and they are equal to 2 decimals (`,` dropped) |
| `OCR` | `1 - WER`, word-level edit distance over the reference's words, clipped to [0, 1] |
| `free-form` | the mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures (stemmed), clipped to [0, 1] |
| `regression` | `1 - min(1, relative error)` |

A number that does not parse scores 0. The project's own kinds, `open-ended` (token F1 or the judge) and the
multiple choice of a ReWatch row (by the letter chosen, `rewards.extract_choice`), are scored in `rewards`.

Example:
```python
>>> answer_in_tags("<think>...</think><answer> 3,5 </answer>")
'3,5'
>>> kind_score("numerical", "3.50", "3.5"), kind_score("numerical", "3", "3.0")
(1.0, 0.0)
>>> round(kind_score("regression", "90", "100"), 6)
0.9
```
"""

import re


KINDS = ("multiple choice", "numerical", "OCR", "free-form", "regression")
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def answer_in_tags(text: str | None) -> str:
    """The text inside the first `<answer>…</answer>` of `text` (stripped), or "" when there is none."""
    match = _ANSWER.search(text or "")
    return match.group(1).strip() if match else ""


def to_number(text: str) -> float | None:
    """`text` as a number, its `,` dropped (`1,024` is 1024); None when it is not one."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def numerical_score(prediction: str, reference: str) -> float:
    if ("." in prediction or "," in prediction) != ("." in reference or "," in reference):
        return 0.0
    predicted, expected = to_number(prediction), to_number(reference)
    if predicted is None or expected is None:
        return 0.0
    return float(round(predicted, 2) == round(expected, 2))


def word_error_rate(prediction: str, reference: str) -> float:
    """Word-level Levenshtein distance (whitespace-split, case-sensitive) over the reference's words (at least 1)."""
    hypothesis, words = prediction.split(), reference.split()
    row = list(range(len(hypothesis) + 1))
    for i, word in enumerate(words, start=1):
        previous, row[0] = row[0], i
        for j, guess in enumerate(hypothesis, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != guess))
    return row[-1] / max(1, len(words))


def ocr_score(prediction: str, reference: str) -> float:
    return min(1.0, max(0.0, 1.0 - word_error_rate(prediction, reference)))


_ROUGE = None


def free_form_score(prediction: str, reference: str) -> float:
    global _ROUGE
    if _ROUGE is None:  # rouge-score loads nltk's stemmer: only where a free-form row is scored
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = _ROUGE.score(reference, prediction)
    return min(1.0, max(0.0, sum(score.fmeasure for score in scores.values()) / 3))


def regression_score(prediction: str, reference: str) -> float:
    predicted, expected = to_number(prediction), to_number(reference)
    if predicted is None or expected is None:
        return 0.0
    return 1.0 - min(1.0, (abs(predicted - expected) + 1e-9) / (abs(expected) + 1e-9))


_SCORES = {
    "multiple choice": lambda prediction, reference: float(prediction.strip() == reference.strip()),
    "numerical": numerical_score,
    "OCR": ocr_score,
    "free-form": free_form_score,
    "regression": regression_score,
}


def kind_score(kind: str, prediction: str, reference: str) -> float:
    """The score of an answer of `kind` (one of `KINDS`) against its reference; an unknown kind is an error naming
    the known ones."""
    if kind not in _SCORES:
        raise ValueError(f"unknown kind of answer {kind!r}; known: {', '.join(KINDS)}")
    return _SCORES[kind](prediction, reference)
