"""Sequence parallelism against the whole model, in one job of 2 processes:
`accelerate launch --num_processes 2 tests/sequence_parallel_run.py WORLD.json OUT_DIR`.

Both processes build the same trainer (`sequence_parallel_size` 2) and score the same batch with the same seed.
Each then computes, on its own, the log-probs and gradients of the whole model (the reference), and with the group
splitting each row (its gradients averaged over the group, as DDP does): with the prompt prefix shared and not,
with gradient checkpointing and without. Two controls plant what the checks must
catch: rank 1's rotary positions one token late, and the vision features of the other process's frames left out.
Then `sequence_parallel_generation: split`, each process sampling its half of the rows from its own seed.
Each process writes `OUT_DIR/process-<i>.json`: the largest differences, the shards' and frames' sizes, what split
generation sampled where."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import build_trainer
from test_sharing import logps, scored_batch


G = 2


def gradients(trainer, inputs, split: bool) -> dict:
    trainer.model.zero_grad()
    saved = trainer._sequence_parallel
    if not split:
        trainer._sequence_parallel = []
    try:
        trainer._compute_loss(trainer.model, inputs).backward()
    finally:
        trainer._sequence_parallel = saved
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    if split:  # the data-parallel average DDP takes (here over the one group)
        for grad in grads.values():
            dist.all_reduce(grad, group=trainer.sequence_group.group)
            grad /= trainer.sequence_group.size
    return grads


def log_probs(trainer, inputs, split: bool) -> torch.Tensor:
    saved = trainer._sequence_parallel
    if not split:
        trainer._sequence_parallel = []
    try:
        return logps(trainer, inputs, True)
    finally:
        trainer._sequence_parallel = saved


def largest(a: dict, b: dict) -> float:
    """The largest difference of two gradient dicts, relative to each gradient's scale."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-12)) for n in a)


def record(trainer, inputs) -> dict:
    kept = inputs["completion_mask"].bool()
    whole, split = log_probs(trainer, inputs, False), log_probs(trainer, inputs, True)
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())
    whole_grads, split_grads = gradients(trainer, inputs, False), gradients(trainer, inputs, True)
    return {
        "logps": float((whole[kept] - split[kept]).abs().max()),
        "old_logps": float((inputs["old_per_token_logps"][kept] - whole[kept]).abs().max()),
        "grads": largest(split_grads, whole_grads),
        "visual_grads": any("visual" in name for name in split_grads),
    }


def main(world_file: Path, out: Path):
    from rewatch_trl.tiny import TinyWorld

    world = TinyWorld(
        **{
            key: value if key in ("rows", "family") else Path(value)
            for key, value in json.loads(world_file.read_text()).items()
        }
    )
    trainer, dataset = build_trainer(
        world,
        out,
        num_generations=G,
        per_device_train_batch_size=2 * G,
        num_iterations=2,  # TRL's old-policy pass runs too, split
        sequence_parallel_size=2,
        sequence_parallel_generation="whole",
        share_prompt_prefix=True,
    )
    rank = trainer.sequence_group.rank
    parallel = trainer._sequence_parallel[0]
    shards, frames = [], []
    begin, share = parallel._begin, parallel._visual_share

    def seen_begin(module, args, kwargs):
        begin(module, args, kwargs)
        if parallel.call is not None:
            shards.append([parallel.call.start, parallel.call.end, parallel.call.length])

    def seen_share(forward, pixels, grid_thw, count, **kwargs):
        frames.append(count)
        return share(forward, pixels, grid_thw, count, **kwargs)

    parallel._begin, parallel._visual_share = seen_begin, seen_share
    # the language model's pre-hook was bound at install: route it through the recording one
    for hook_id, hook in list(parallel.language_model._forward_pre_hooks.items()):
        if getattr(hook, "__func__", None) is type(parallel)._begin:
            parallel.language_model._forward_pre_hooks[hook_id] = seen_begin
    torch.manual_seed(0)  # the same completions on both processes
    rows = [dataset[i] for i in (0, 2) for _ in range(G)]
    inputs = scored_batch(trainer, rows)
    result = {"exact": record(trainer, inputs), "shards": shards[:4], "frames": frames[:2]}
    prefixes = trainer._shared_prefixes
    trainer._shared_prefixes = []  # the prefix not shared: whole rows split
    result["unshared"] = record(trainer, inputs)
    # as `train()` runs it: the layers checkpointed, replayed in the backward
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    result["checkpointed_unshared"] = record(trainer, inputs)
    trainer._shared_prefixes = prefixes
    result["checkpointed"] = record(trainer, inputs)
    # the controls: rank 1's positions one token late; the other process's frames' features left out
    positions = parallel._positions
    if rank == 1:
        parallel._positions = lambda shard, emb: tuple(t.roll(1, -2) for t in positions(shard, emb))
    result["late_positions"] = record(trainer, inputs)
    parallel._positions = positions

    def ungathered(features, tokens):
        start = sum(tokens[:rank])
        whole = features.new_zeros(sum(tokens), features.size(-1))
        return torch.cat([whole[:start], features, whole[start + tokens[rank] :]])

    parallel._visual_gather = ungathered
    result["no_visual_gather"] = record(trainer, inputs)
    del parallel._visual_gather
    result["prefix_rows"] = sum(shared.prefix_rows for shared in trainer._shared_prefixes)
    # `split`: each process samples half of each prompt's completions; the group's gathered. Its processes share
    # one seed, as the trainer seeds them: each must still sample its half apart, and leave the seed shared
    trainer.args.sequence_parallel_generation = "split"
    generated, generate_rows = [], trainer._generate_rows

    def counted(prompt_ids, *args, **kwargs):
        generated.append(len(prompt_ids))
        return generate_rows(prompt_ids, *args, **kwargs)

    trainer._generate_rows = counted
    torch.manual_seed(1)
    split_inputs = scored_batch(trainer, rows)
    ids = split_inputs["completion_ids"].tolist()
    both, states = [None, None], [None, None]
    dist.all_gather_object(both, ids, group=trainer.sequence_group.group)
    dist.all_gather_object(states, torch.get_rng_state().tolist(), group=trainer.sequence_group.group)
    result["split"] = {
        "generated_rows": generated,
        "rows": len(ids),
        "same_on_both": both[0] == both[1],
        "copies_differ": ids[0] != ids[1],
        "seed_shared_after": states[0] == states[1],
        "exact": record(trainer, split_inputs),
    }
    (out / f"process-{trainer.accelerator.process_index}.json").write_text(json.dumps(result))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
