"""One self-contained HTML page of recorded rollouts (`rollouts.read_rollouts`): no server and no network, its CSS, JS
and thumbnails inlined, so it opens from disk and can be mailed. Step by step, each prompt: its question and the strip
of frames the model saw (with their times); each completion with its `<action>`, `<observation>` and `<answer>`
marked, the frames its actions named marked under the strip (and, in agentic mode, the frames each clip showed), each
reward's value, the total and the advantage. Filters keep the groups whose rewards did not vary, or the wrong answers;
the run's reward curves are drawn on top.

    rewatch-trl rollouts runs/tiny-grpo --out runs/tiny-grpo/rollouts.html

Example:
```python
>>> html = render_page(read_rollouts("runs/tiny-grpo"), root=rollouts_root("runs/tiny-grpo"))  # doctest: +SKIP
```
"""

import base64
import html
import json
import re
from pathlib import Path

from rewatch_trl.prompts import seconds_to_timestamp


_PART = re.compile(r"(<(action|observation|answer)>.*?</\2>)", re.DOTALL)
# the question in the seed's prompt (the instruction before it is the same in every row)
_QUESTION = re.compile(r"\*\*(?:Video Information and Question|Image Question):\*\*\s*(.*)$", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; border-bottom: 1px solid #ccc; }
.filters label { margin-right: 1.5em; }
.group { border: 1px solid #ddd; border-radius: 6px; padding: .8em; margin: 1em 0; }
.group.flat { border-color: #e0a800; }
.question { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; background: #f6f6f6;
  padding: .5em; max-height: 8em; overflow: auto; }
.strip, .marks, .clipframes { display: flex; gap: 2px; }
.frame { margin: 0; width: 64px; text-align: center; font-size: 11px; color: #555; }
.thumb { width: 64px; height: 64px; background-size: contain; background-repeat: no-repeat;
  background-position: center; background-color: #000; }
.clipframes .thumb { width: 40px; height: 40px; }
.marks i { width: 64px; height: 5px; background: #eee; display: block; }
.marks i.on { background: #d9480f; }
.rollout { border-top: 1px dashed #ddd; padding: .5em 0; }
.rollout.wrong .text { background: #fff5f5; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
.action { background: #e7f5ff; } .observation { background: #ebfbee; } .answer { background: #fff3bf; font-weight: bold; }
table.rewards { border-collapse: collapse; font-size: 12px; margin-top: .3em; }
table.rewards td, table.rewards th { border: 1px solid #ddd; padding: 1px 6px; text-align: right; }
.curves text { font-size: 11px; }
"""

SCRIPT = """
function applyFilters() {
  const flatOnly = document.getElementById('only-flat').checked;
  const wrongOnly = document.getElementById('only-wrong').checked;
  for (const group of document.querySelectorAll('.group')) {
    let shown = 0;
    for (const rollout of group.querySelectorAll('.rollout')) {
      const keep = !wrongOnly || rollout.classList.contains('wrong');
      rollout.style.display = keep ? '' : 'none';
      shown += keep ? 1 : 0;
    }
    const keepGroup = (!flatOnly || group.classList.contains('flat')) && shown > 0;
    group.style.display = keepGroup ? '' : 'none';
  }
  const visible = [...document.querySelectorAll('.group')].filter(g => g.style.display !== 'none').length;
  document.getElementById('shown').textContent = visible;
}
document.getElementById('only-flat').addEventListener('change', applyFilters);
document.getElementById('only-wrong').addEventListener('change', applyFilters);
applyFilters();
"""

CURVE_COLORS = ["#1c7ed6", "#d9480f", "#2b8a3e", "#ae3ec9", "#f08c00", "#495057", "#0ca678"]


class _Images:
    """Each thumbnail inlined once, as a CSS class holding it (a video's strip recurs at every step)."""

    def __init__(self, root: Path):
        self.root, self.classes = Path(root), {}

    def css_class(self, thumb: str) -> str:
        if thumb not in self.classes:
            self.classes[thumb] = f"i{len(self.classes)}"
        return self.classes[thumb]

    def style(self) -> str:
        rules = []
        for thumb, name in self.classes.items():
            data = base64.b64encode((self.root / thumb).read_bytes()).decode()
            rules.append(f".{name} {{ background-image: url(data:image/jpeg;base64,{data}); }}")
        return "\n".join(rules)


def shown(text: str) -> str:
    """`text` as the page shows it: control characters (which HTML drops or cannot hold, as NUL) as U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def marked(text: str) -> str:
    """The completion as HTML, its `<action>`, `<observation>` and `<answer>` parts in spans of those classes."""
    pieces = []
    for i, piece in enumerate(_PART.split(shown(text))):
        if i % 3 == 2:  # the tag name of the part before it
            continue
        kind = _PART.fullmatch(piece)
        escaped = html.escape(piece)
        pieces.append(f'<span class="{kind[2]}">{escaped}</span>' if kind else escaped)
    return "".join(pieces)


def _value(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _strip(media: dict, images: _Images) -> str:
    cells = []
    for frame in media["frames"]:
        time = "" if frame["time"] is None else seconds_to_timestamp(frame["time"])
        cells.append(
            f'<figure class="frame"><div class="thumb {images.css_class(frame["thumb"])}"></div>'
            f"<figcaption>{time}</figcaption></figure>"
        )
    return f'<div class="strip">{"".join(cells)}</div>'


def _frames_in(clip: dict, times: list[float]) -> set[int]:
    """The frames (by index) a clip covers; an instant, or a clip between two frames, the nearest one."""
    inside = {i for i, t in enumerate(times) if clip["start"] <= t <= clip["end"]}
    middle = (clip["start"] + clip["end"]) / 2
    return inside or {min(range(len(times)), key=lambda i: abs(times[i] - middle))}


def _rollout(rollout: dict, media: dict | None, names: list[str], images: _Images) -> str:
    right = rollout.get("right")
    classes = "rollout" + (" wrong" if right is False else "") + (" right" if right else "")
    parts = [f'<div class="{classes}">', f'<div class="text">{marked(rollout["text"])}</div>']
    clips = rollout.get("clips") or []
    if media and media["kind"] == "video" and media["frames"]:
        named = set().union(*[_frames_in(clip, [f["time"] for f in media["frames"]]) for clip in clips])
        marks = ["on" if i in named else "" for i in range(len(media["frames"]))]
        parts.append('<div class="marks">' + "".join(f'<i class="{m}"></i>' for m in marks) + "</div>")
    for clip in clips:
        span = f"{seconds_to_timestamp(clip['start'])}–{seconds_to_timestamp(clip['end'])}"
        shown = "".join(f'<div class="thumb {images.css_class(t)}"></div>' for t in clip.get("thumbs", []))
        note = f" <em>{html.escape(clip['error'])}</em>" if clip.get("error") else ""
        said = "re-watched" if clip.get("thumbs") else "names"
        parts.append(f'<div class="clip">{said} {span}{note}<div class="clipframes">{shown}</div></div>')
    header = "".join(f"<th>{html.escape(name)}</th>" for name in [*names, "total", "advantage"])
    values = [rollout["rewards"].get(name) for name in names] + [rollout.get("total"), rollout.get("advantage")]
    cells = "".join(f"<td>{_value(v)}</td>" for v in values)
    parts.append(f'<table class="rewards"><tr>{header}</tr><tr>{cells}</tr></table></div>')
    return "".join(parts)


def _group(group: dict, images: _Images) -> str:
    names = list(dict.fromkeys(name for rollout in group["rollouts"] for name in rollout["rewards"]))
    media = group.get("media")
    flat = " flat" if group.get("zero_variance") else ""
    prompt = group["question"]
    question = _QUESTION.search(prompt)
    parts = [
        f'<div class="group{flat}"><div class="question">{html.escape(question[1].strip() if question else prompt)}</div>',
        f"<details><summary>whole prompt</summary><div class='question'>{html.escape(prompt)}</div></details>",
    ]
    if group.get("answer") is not None:
        parts.append(f"<div>reference answer: <b>{html.escape(str(group['answer']))}</b></div>")
    if media:
        note = f" <em>{html.escape(media['error'])}</em>" if media.get("error") else ""
        parts.append(f'<div class="media">{html.escape(media["path"])}{note}</div>' + _strip(media, images))
    parts += [_rollout(rollout, media, names, images) for rollout in group["rollouts"]]
    return "".join(parts) + "</div>"


def reward_curves(log_history: list[dict], width: int = 900, height: int = 200) -> str:
    """The run's `reward` and `rewards/<name>/mean` per step as an inline SVG; "" when it logged none."""
    keys = [
        k
        for k in dict.fromkeys(k for e in log_history for k in e)
        if k == "reward" or re.fullmatch(r"rewards/.+/mean", k)
    ]
    series = {
        k: [(e["step"], e[k]) for e in log_history if isinstance(e.get(k), (int, float)) and "step" in e] for k in keys
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return ""
    points = [p for values in series.values() for p in values]
    (x0, x1), (y0, y1) = (
        (min(p[0] for p in points), max(p[0] for p in points)),
        (min(p[1] for p in points), max(p[1] for p in points)),
    )
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-9)

    def at(step, value):
        return 40 + (step - x0) / (x1 - x0) * (width - 320), height - 20 - (value - y0) / (y1 - y0) * (height - 40)

    lines = []
    for i, (key, values) in enumerate(series.items()):
        color = CURVE_COLORS[i % len(CURVE_COLORS)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(*p) for p in values))
        lines.append(
            f'<polyline class="curve" data-key="{html.escape(key)}" fill="none" stroke="{color}" points="{path}"/>'
        )
        lines.append(f'<text x="{width - 270}" y="{20 + 14 * i}" fill="{color}">{html.escape(key)}</text>')
    axes = (
        f'<text x="2" y="{height - 20}">{y0:.2f}</text><text x="2" y="20">{y1:.2f}</text>'
        f'<text x="40" y="{height - 4}">step {x0}</text><text x="{width - 330}" y="{height - 4}">step {x1}</text>'
    )
    return f'<svg class="curves" width="{width}" height="{height}">{axes}{"".join(lines)}</svg>'


def render_page(steps: list[dict], root, title: str = "rollouts", log_history: list[dict] | None = None) -> str:
    """The page of `steps` (`read_rollouts`), their thumbnails read from `root` and inlined."""
    images = _Images(root)
    body = []
    groups = sum(len(step["groups"]) for step in steps)
    for step in steps:
        heading = "predictions" if step["step"] is None else f"step {step['step']}"
        body.append(
            f'<section class="step"><h2>{heading}</h2>{"".join(_group(g, images) for g in step["groups"])}</section>'
        )
    filters = (
        '<div class="filters"><label><input type="checkbox" id="only-flat"> only groups whose rewards did not vary'
        '</label><label><input type="checkbox" id="only-wrong"> only wrong answers</label>'
        f'<span><span id="shown">{groups}</span> of {groups} groups shown</span></div>'
    )
    curves = reward_curves(log_history or [])
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}\n{images.style()}</style></head><body><h1>{html.escape(title)}</h1>{curves}{filters}"
        f"{''.join(body)}<script>{SCRIPT}</script></body></html>"
    )


def run_log_history(source) -> list[dict]:
    """The log history of the run at `source` (its `trainer_state.json`, else its newest checkpoint's); [] if none."""
    source = Path(source)
    states = [source / "trainer_state.json"] if (source / "trainer_state.json").is_file() else []
    states += sorted(source.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))[
        -1:
    ]
    return json.loads(states[0].read_text())["log_history"] if states else []
