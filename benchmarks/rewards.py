"""Completions per second of each reward on one core, side by side with TRL's `think_format_reward`.

    python benchmarks/rewards.py [--n 20000]

Completions are ReAct traces of about 1–2k characters (2–4 re-watch steps) in chat-message form, as TRL passes
them for conversational datasets. "together" times the three rewards called one after the other on the same
completions, from a cold parse cache, the way `GRPOTrainer` calls its reward functions in a step.
"""

import argparse
import gc
import os
import random
import time


os.environ.setdefault("OMP_NUM_THREADS", "1")

from trl.rewards import think_format_reward  # noqa: E402

from rewatch_trl import rewards as R  # noqa: E402
from rewatch_trl.rewards import parsed  # noqa: E402


WORDS = [
    "the",
    "red",
    "square",
    "moves",
    "right",
    "then",
    "a",
    "blue",
    "circle",
    "appears",
    "near",
    "the",
    "left",
    "edge",
    "while",
    "music",
    "plays",
]


def make_completion(rng: random.Random) -> str:
    parts = [" ".join(rng.choices(WORDS, k=rng.randint(20, 60)))]
    t = rng.randint(0, 500)
    for _ in range(rng.randint(2, 4)):
        start, end = t, t + rng.randint(3, 30)
        t = end + rng.randint(0, 60)
        parts.append(f"<action>Re-watch [{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}]</action>")
        parts.append(f"<observation>{' '.join(rng.choices(WORDS, k=rng.randint(20, 60)))}</observation>")
        parts.append(" ".join(rng.choices(WORDS, k=rng.randint(5, 30))))
    parts.append(f"<answer>{rng.choice('ABCD')}</answer>")
    return "\n".join(parts)


def clear_caches() -> None:
    """Every memo of the rewards, emptied: each timed call starts cold, as a new GRPO step's completions do."""
    for cached in (parsed._trace, parsed.parse_options, parsed._right_choice):
        cached.cache_clear()


def rate(func, completions, columns, batch, repeats=9) -> float:
    """Completions/s of `func` called on batches of `batch` completions (what one GRPO step hands a reward).
    Each batch's time is its best of `repeats` (every cache cold each time), the repeats spread over the whole
    measurement (all batches once, then again) so that a slow phase of this shared machine cannot take all of
    one batch's tries; the garbage collector is off during timing, as `timeit` does."""
    chunks = [
        (completions[i : i + batch], {k: v[i : i + batch] for k, v in columns.items()})
        for i in range(0, len(completions), batch)
    ]
    best = [float("inf")] * len(chunks)
    gc.disable()
    try:
        for _ in range(repeats):
            for i, (chunk, chunk_columns) in enumerate(chunks):
                clear_caches()
                start = time.perf_counter()
                func(chunk, **chunk_columns)
                best[i] = min(best[i], time.perf_counter() - start)
    finally:
        gc.enable()
    return len(completions) / sum(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256, help="completions per reward call (one GRPO step)")
    args = parser.parse_args()
    rng = random.Random(0)
    texts = [make_completion(rng) for _ in range(args.n)]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    problem = "What happens?\nA: one\nB: two\nC: three\nD: four"
    columns = dict(
        answer=[rng.choice("ABCD") for _ in texts],
        multiple_choice=[True] * args.n,
        problem=[problem] * args.n,
        duration=[900] * args.n,
        captions=["[00:00-05:00] the red square moves right\n[05:00-15:00] a blue circle appears"] * args.n,
    )
    mean = sum(map(len, texts)) / len(texts)
    print(f"{args.n} completions, mean {mean:.0f} characters, in calls of {args.batch}, one core")
    think = rate(think_format_reward, completions, {}, args.batch)
    print(f"{'reward':<32}{'completions/s':>15}{'vs think_format':>17}")
    print(f"{'trl think_format_reward':<32}{think:>15,.0f}{1.0:>16.2f}x")
    for name in ["format", "mcq_accuracy", "open_ended_accuracy", "temporal_grounding", "observation", "rewatch"]:
        (func,) = R.get_reward_funcs([name])
        value = rate(func, completions, columns, args.batch)
        print(f"{func.__name__:<32}{value:>15,.0f}{value / think:>16.2f}x")

    def together(completions, **columns):
        R.react_format_reward(completions, **columns)  # parses; the next two reuse the parse
        R.mcq_accuracy_reward(completions, **columns)
        R.temporal_grounding_reward(completions, **columns)

    value = rate(together, completions, columns, args.batch)
    print(f"format+mcq+grounding: {value:,.0f} completions/s".replace(",", ""))


if __name__ == "__main__":
    main()
