"""Resuming inside a generation. TRL generates once every `steps_per_generation × num_iterations` micro-steps and
trains on that generation's buffer in between, a buffer and a micro-step count it keeps in the process. A checkpoint
saved between two generations holds both here, one file a process (`generation_buffer_rank{R}.pt`), so a relaunch
trains on the buffered generation where the uninterrupted run did and ends with its weights (Trainer's own RNG state,
saved with the checkpoint, was saved after that generation drew its samples). A checkpoint that falls inside a
generation and lacks the file is refused at resume, with the reason.

Example:
```python
>>> from rewatch_trl.generation_buffer import inside_a_generation
>>> inside_a_generation(micro_steps=2, steps_per_generation=4, num_iterations=1)
True
>>> inside_a_generation(micro_steps=8, steps_per_generation=4, num_iterations=1)
False
```
"""

import math
import os

import torch
from accelerate.utils import send_to_device


BUFFER_FILE = "generation_buffer_rank{}.pt"


def inside_a_generation(micro_steps: int, steps_per_generation: int, num_iterations: int) -> bool:
    """Whether, after `micro_steps`, TRL still trains on a buffered generation (it would not generate next)."""
    return micro_steps % (steps_per_generation * num_iterations) != 0


def save_generation_buffer(trainer, checkpoint_dir: str) -> None:
    """Write this process's generation buffer and micro-step count into `checkpoint_dir`, when the checkpoint falls
    inside a generation (otherwise there is nothing the next step reads)."""
    if trainer.args.save_only_model or trainer._buffered_inputs is None:
        return
    if not inside_a_generation(trainer._step, trainer.args.steps_per_generation, trainer.num_iterations):
        return
    os.makedirs(checkpoint_dir, exist_ok=True)
    state = {"step": trainer._step, "processes": trainer.accelerator.num_processes, "buffer": trainer._buffered_inputs}
    torch.save(state, os.path.join(checkpoint_dir, BUFFER_FILE.format(trainer.accelerator.process_index)))


def restore_generation_buffer(trainer, checkpoint_dir: str) -> None:
    """Restore what `save_generation_buffer` wrote; raise, saying why, for a checkpoint inside a generation that holds
    no buffer (a run saved by an older rewatch-trl, or with `save_only_model`) or was saved by another number of
    processes."""
    args = trainer.args
    path = os.path.join(checkpoint_dir, BUFFER_FILE.format(trainer.accelerator.process_index))
    micro_steps = trainer.state.global_step * args.gradient_accumulation_steps
    if not os.path.isfile(path):
        if inside_a_generation(micro_steps, args.steps_per_generation, trainer.num_iterations):
            every = args.steps_per_generation * trainer.num_iterations
            optimizer_steps = every // math.gcd(every, args.gradient_accumulation_steps)
            raise ValueError(
                f"{checkpoint_dir} was saved inside a generation (TRL generates every steps_per_generation × "
                f"num_iterations = {every} micro-steps) and holds no generation buffer, so a resume from it would "
                f"not be the run it resumes: resume from a checkpoint at a multiple of {optimizer_steps} optimizer "
                "steps, or save with save_steps at such a multiple"
            )
        return
    # our own file, written by `save_generation_buffer`: the buffer holds the batch's tensors and lists
    state = send_to_device(torch.load(path, map_location="cpu", weights_only=False), trainer.accelerator.device)
    if state["processes"] != trainer.accelerator.num_processes:
        raise ValueError(
            f"{checkpoint_dir} was saved by {state['processes']} processes inside a generation; resuming it on "
            f"{trainer.accelerator.num_processes} would split that generation otherwise: resume on "
            f"{state['processes']} processes"
        )
    trainer._step, trainer._buffered_inputs = state["step"], state["buffer"]
