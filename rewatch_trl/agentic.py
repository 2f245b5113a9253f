"""Agentic mode (`rewatch_mode: agentic`) in the trainer: rollouts that re-watch for real, through TRL's generation.

TRL's `rollout_func` hook runs `AgenticRollouts.rollout`: the prompts encoded as in the paper's mode, then
`Rewatcher.rollout` (`rewatch.py`), whose generation rounds (`generation_round`) go through TRL's own generation
(transformers, or colocated vLLM with one weight sync a step) and stop at `</action>` or the tokens left; TRL's
`env_mask` keeps the inserted clips out of the loss. The rewards read what the model wrote (`generated`), and the
clips each completion was shown ride in the batch to the log-prob passes (`GenerationBatch.clips`).

Example:
```python
>>> from rewatch_trl.rewatch import RewatchSettings
>>> RewatchSettings(rewatch_mode="agentic").agentic
True
```
"""

import contextlib
import functools

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from rewatch_trl.collator import token_types
from rewatch_trl.features import Feature
from rewatch_trl.rewatch import Rewatcher
from rewatch_trl.vllm_video import awake_across_calls


class AgenticRollouts(Feature):
    """The rollouts of agentic mode for `trainer`, its `rollout_func`."""

    def __init__(self, trainer, rewatcher: Rewatcher):
        self.trainer, self.rewatcher = trainer, rewatcher
        self.policy = trainer.accelerator.unwrap_model(trainer.model)

    @classmethod
    def attach(cls, trainer) -> "AgenticRollouts | None":
        # our GRPOConfig holds the re-watch settings (a plain trl.GRPOConfig: the paper's mode)
        if not getattr(trainer.args, "agentic", False):
            return None
        if trainer.rollout_func is not None:
            raise ValueError("rewatch_mode='agentic' runs its own rollouts: it takes no `rollout_func`")
        if is_deepspeed_zero3_enabled() and not trainer.use_vllm:
            # each transformers generation round gathers the ZeRO-3 shards, a collective; processes whose
            # completions need different numbers of rounds would wait on each other forever
            raise NotImplementedError("rewatch_mode='agentic' under ZeRO-3 needs use_vllm (colocate)")
        agentic = cls(trainer, Rewatcher(trainer.video_collator, trainer.args, trainer.eos_token_ids))
        trainer.rollout_func = agentic.rollout
        return agentic

    def clip_settings(self):
        """How the clips are sampled (the rollout pages show them)."""
        return self.trainer.args.clip_settings(self.trainer.video_collator.settings)

    def rollout(self, prompts: list, trainer=None) -> dict:
        """TRL's `rollout_func`: the rows' prompt ids, completions, their sampling log-probs (vLLM) and `env_mask`."""
        trainer = self.trainer
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        generation = trainer.generation
        samples, videos = generation.samples, generation.videos
        # one weight sync a step however many rounds a process needs: under ZeRO-3 each sync is a collective
        engine = (
            awake_across_calls(trainer.vllm_generation, self.sync_weights)
            if trainer.use_vllm
            else contextlib.nullcontext()
        )
        # what pads a round kept in step (`in_step`): the rollout's first row
        self.filler = (prompt_ids[0], [videos[0]], [samples[0]])
        with engine:
            completions = self.rewatcher.rollout(
                prompt_ids,
                videos,
                samples,
                self.generation_round,
                trainer.max_completion_length,
                trainer.accelerator.device,
                anywhere=self.anywhere if self.in_step() else bool,
            )
        generation.samples, generation.videos = samples, None
        generation.clips = [completion.clips for completion in completions]
        generation.model_texts = trainer.processing_class.batch_decode(
            [completion.model_ids() for completion in completions], skip_special_tokens=True
        )
        self.log_clips(completions, generation.mode)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [completion.ids for completion in completions],
            "logprobs": [completion.logprobs for completion in completions] if trainer.use_vllm else None,
            "env_mask": [completion.model_mask for completion in completions],
        }

    def log_clips(self, completions, mode: str) -> None:
        """`rewatch/*`: clips a completion, frames a clip, the share of completions that re-watched (all processes)."""
        accelerator, metrics = self.trainer.accelerator, self.trainer._metrics[mode]
        clips = torch.tensor([len(c.clips) for c in completions], dtype=torch.float, device=accelerator.device)
        frames = sum(sum(clip["frames"] for clip in c.rewatched) for c in completions)
        frames = torch.tensor(float(frames), device=accelerator.device)
        clips, frames = accelerator.gather(clips), accelerator.gather(frames).sum()
        metrics["rewatch/clips_per_completion"].append(clips.mean().item())
        metrics["rewatch/clip_frames"].append((frames / clips.sum().clamp(min=1)).item())
        metrics["rewatch/rewatched_fraction"].append((clips > 0).float().mean().item())

    def generated(self, trainer, generation, prompts, output):
        if generation.model_texts is None:  # a batch of another mode's rollouts
            return output
        # the rewards read what the model wrote: the clips' tokens and the replies to failed actions left out
        completions, texts = output[3], generation.model_texts
        if completions and isinstance(completions[0], list):
            texts = [[{"role": "assistant", "content": text}] for text in texts]
        return (*output[:3], texts, *output[4:])

    def sync_weights(self) -> None:
        """The policy's weights into the colocated engine, as TRL's `_generate_single_turn` syncs them."""
        trainer = self.trainer
        trainer.vllm_generation.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step

    def in_step(self) -> bool:
        """Whether the processes' rounds are collectives, to be run by every process together: TRL's server
        generation gathers every process's prompts (and hands each its share by an equal count), and a tensor
        parallel group's processes share one engine (each gathers the group's prompts)."""
        trainer = self.trainer
        if not trainer.use_vllm or trainer.accelerator.num_processes == 1:
            return False
        return trainer.vllm_generation.mode == "server" or trainer.vllm_generation.tensor_parallel_size > 1

    def anywhere(self, has: bool) -> bool:
        """Whether any process `has` it."""
        flags = self.trainer.accelerator.gather(torch.tensor([has], device=self.trainer.accelerator.device))
        return bool(flags.any())

    def generation_round(self, sequences, videos, samples, stop, max_tokens):
        """One generation round of an agentic rollout (`rewatch.Generate`), through `_generate_single_turn`. Rounds
        kept in step (`in_step`) have every process send as many rows as the process with most (its own padded
        with its rollout's first row, whose completions are dropped) and the most tokens any of them needs."""
        trainer = self.trainer
        generation = trainer.generation
        rows = len(sequences)
        if self.in_step():
            needs = torch.tensor([rows, max_tokens], device=trainer.accelerator.device)
            most = trainer.accelerator.gather(needs).view(-1, 2).max(dim=0).values.tolist()
            ids, shown, inputs = self.filler
            padding = most[0] - rows
            sequences, videos, samples = (
                sequences + [ids] * padding,
                videos + [shown] * padding,
                samples + [inputs] * padding,
            )
            max_tokens = most[1]
        generation.samples = [row[0] for row in samples]
        generation.clips = [row[1:] for row in samples]
        generation.videos = videos
        fields = trainer._generation_fields(
            [token_types(torch.tensor(ids), trainer._vision_config).tolist() for ids in sequences]
        )
        try:
            with self.round_limits(stop, max_tokens):
                completion_ids, logprobs = trainer._generate_single_turn(sequences, None, fields, 1)
        finally:
            generation.clips = None
        return list(zip(completion_ids, logprobs or [None] * len(completion_ids), strict=True))[:rows]

    @contextlib.contextmanager
    def round_limits(self, stop: list[str] | None, max_tokens: int):
        """A generation round ends at a stop string and after `max_tokens`: vLLM's sampling parameters, or the
        policy's `generate` (TRL calls it with the generation config alone; stop strings need the tokenizer)."""
        trainer = self.trainer
        if trainer.use_vllm and trainer.vllm_generation.mode == "server":
            # the main process's client samples for every process
            client = trainer.vllm_generation.vllm_client if trainer.accelerator.is_main_process else None
            with client.limits(stop, max_tokens) if client is not None else contextlib.nullcontext():
                yield
            return
        if trainer.use_vllm:
            with trainer.vllm_generation.llm.limits(stop, max_tokens):
                yield
            return
        limits = {"max_new_tokens": max_tokens}
        if stop:
            limits |= {"stop_strings": stop, "tokenizer": trainer._tokenizer}
        self.policy.generate = functools.partial(type(self.policy).generate, self.policy, **limits)
        try:
            yield
        finally:
            del self.policy.generate
