"""Dynamic sampling on one generation batch, recorded: `recorded_dynamic_batch` in a test's process, or this script
under `accelerate launch --num_processes 2 tests/dynamic_sampling_run.py WORLD.json OUT_DIR` (each process writes
`OUT_DIR/process-<i>.json`), the processes holding the rows `process_rows` gives them."""

import json
import sys
from pathlib import Path

from conftest import build_trainer
from varied_reward import characters_but_on_the_first_video

from rewatch_trl.dynamic import zero_variance_groups


G = 2


def dynamic_trainer(world, out, **config):
    return build_trainer(
        world,
        out,
        num_generations=G,
        per_device_train_batch_size=2 * G,
        dynamic_sampling=True,
        max_resample_rounds=3,
        __init__={"reward_funcs": [characters_but_on_the_first_video]},
        **config,
    )


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
        batch = score(inputs)
        zero = zero_variance_groups(trainer._batch_rewards, G)
        index, local = trainer.accelerator.process_index, len(inputs) // G
        scored.append({"groups": groups(batch), "zero": zero[index * local : (index + 1) * local].tolist()})
        return batch

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
        "num_items_in_batch": final["num_items_in_batch"].item(),
        "tokens": final["completion_mask"].sum().item(),
        "metrics": metrics,
    }


if __name__ == "__main__":
    from rewatch_trl.tiny import TinyWorld

    world_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    world = TinyWorld(
        **{key: value if key == "rows" else Path(value) for key, value in json.loads(world_file.read_text()).items()}
    )
    trainer, dataset = dynamic_trainer(world, out)
    record = recorded_dynamic_batch(trainer, process_rows(dataset, trainer.accelerator.process_index))
    (out / f"process-{trainer.accelerator.process_index}.json").write_text(json.dumps(record))
