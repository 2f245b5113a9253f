"""Dynamic sampling and T-GRPO on generation batches, recorded: `recorded_dynamic_batch` in a test's process, or
this script under `accelerate launch --num_processes 2 tests/peer_options_run.py WORLD.json OUT_DIR` (each process
writes `OUT_DIR/process-<i>.json`): dynamic sampling on the rows `process_rows` gives each process, then T-GRPO on a
prompt whose G = 4 rollouts sit on both processes (`recorded_temporal_batches`)."""

import json
import sys
from pathlib import Path

from conftest import build_trainer
from test_sharing import scored_batch
from test_temporal import Scripted, recorded_generations
from varied_reward import characters_but_on_the_first_video

from rewatch_trl.dynamic import zero_variance_groups
from rewatch_trl.temporal import TemporalContrast


G = 2


def dynamic_trainer(world, out, **config):
    settings = dict(num_generations=G, per_device_train_batch_size=2 * G, dynamic_sampling=True, max_resample_rounds=3)
    reward = {"reward_funcs": [characters_but_on_the_first_video]}
    return build_trainer(world, out, **(settings | config), __init__=reward)


def process_rows(dataset, process: int) -> list[dict]:
    """Process 0: a prompt on synthetic_000.mp4 (its rewards never vary) and one on synthetic_001.mp4; process 1:
    prompts on the two other videos, nothing to replace."""
    first = [0, 2] if process == 0 else [4, 6]
    return [dataset[i] for i in first for _ in range(G)]


def groups(batch: dict) -> list[list[list[int]]]:
    """Per group of the batch, each row's prompt and completion tokens (padding left out)."""
    rows = []
    for ids, mask, completion, kept in zip(
        batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"], strict=True
    ):
        rows.append(ids[mask.bool()].tolist() + [-1] + completion[kept.bool()].tolist())
    return [rows[i : i + G] for i in range(0, len(rows), G)]


def recorded_dynamic_batch(trainer, rows) -> dict:
    """The batch dynamic sampling makes of `rows`, and each batch scored on the way (the first, then the refills):
    its groups and which of this process's groups had rewards that did not vary."""
    scored = []
    score = trainer._scored_batch

    def recording(inputs):
        batch, totals = score(inputs)
        zero = zero_variance_groups(totals, G)
        index, local = trainer.accelerator.process_index, len(inputs) // G
        scored.append({"groups": groups(batch), "zero": zero[index * local : (index + 1) * local].tolist()})
        return batch, totals

    trainer._scored_batch = recording
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    try:
        final = trainer._generate_and_score_completions(rows)
    finally:
        del trainer._scored_batch
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items() if key.startswith("dynamic/")}
    return {
        "scored": scored,
        "final": groups(final),
        "advantages": final["advantages"].tolist(),
        # what TRL logs of the completions (its table, the rollout page): every process's rows trained on
        "logged_advantages": list(trainer._logs["advantages"])[-len(rows) * trainer.accelerator.num_processes :],
        "num_items_in_batch": final["num_items_in_batch"].item(),
        "tokens": final["completion_mask"].sum().item(),
        "metrics": metrics,
    }


def signature(video) -> list[float]:
    """Each frame's sum: two videos hold the same frames in the same order if their signatures are equal."""
    return [float(frame.float().sum()) for frame in video.frames]


def recorded_temporal_batches(world, out) -> dict:
    """T-GRPO on one prompt of G = 4 rollouts, 2 on each process, scripted accuracies: with 3 shuffled rollouts (2 on
    process 0, 1 on process 1), then with 2 (process 1 has none: it samples a stand-in and drops it)."""
    accuracy = Scripted()
    trainer, dataset = build_trainer(
        world,
        out,
        num_generations=4,
        per_device_train_batch_size=2,
        temporal_contrast=True,
        temporal_rollouts=3,
        accuracy_reward="scripted_accuracy",
        __init__={"reward_funcs": [accuracy]},
    )
    first = trainer.accelerator.process_index == 0
    # ordered p = mean(1, 0, 0.5, 0) = 0.375; shuffled p̃ = mean(0, 1, 0) = 1/3 (3 rollouts), then mean(0, 1) = 0.5
    accuracy.answers = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]] if first else [[0.5, 0.0], [0.0], [0.5, 0.0]]
    calls = recorded_generations(trainer)
    rows = [dataset[0]] * 2
    record = {}
    for rollouts in (3, 2):
        trainer.feature(TemporalContrast).rollouts = rollouts
        start = len(calls)
        scored_batch(trainer, rows)
        ordered, shuffled = calls[start:]
        record[rollouts] = {
            "ordered": signature(ordered["videos"][0]),
            "shuffled": [signature(video) for video in shuffled["videos"]],
            "rewards": list(trainer._logs["rewards"]["scripted_accuracy"])[-4:],
            "scored": [len(call["completion_ids"]) for call in accuracy.calls[-2:]],
        }
    return record


if __name__ == "__main__":
    from rewatch_trl.tiny import TinyWorld

    world_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    world = TinyWorld(
        **{key: value if key == "rows" else Path(value) for key, value in json.loads(world_file.read_text()).items()}
    )
    trainer, dataset = dynamic_trainer(world, out)
    record = recorded_dynamic_batch(trainer, process_rows(dataset, trainer.accelerator.process_index))
    record["temporal"] = recorded_temporal_batches(world, out)
    (out / f"process-{trainer.accelerator.process_index}.json").write_text(json.dumps(record))
    # leave together: a process that exits while its peer still talks to it over gloo tears its threads down mid-call
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
