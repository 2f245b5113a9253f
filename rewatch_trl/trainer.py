"""`VideoGRPOTrainer`: TRL's `GRPOTrainer` with videos in every pass.

Stock TRL 1.16 takes video prompts without error but generates and computes the loss without the video (its
multimodal path collects images only). Four small overrides wire the video through, each calling `super()`:

- `_tokenize_prompts`: prompts go through the `VideoCollator` (frames from `video.py`, the seed's sampling),
  and the video inputs are kept per sample for the log-prob passes;
- `_get_per_token_logps_and_entropies`: the model is called with those video inputs (policy, old policy and
  reference passes alike);
- `_generate_and_score_completions` / `_compute_loss`: carry the per-sample video inputs through TRL's
  shuffle and split of the generation batch, to the loss pass;
- with `use_vllm` (colocate), TRL's `LLM.generate` requests get the same frames and the G copies of a prompt go
  to vLLM as one request for G completions: one prefill (`vllm_video.VideoLLM`).

The G completions of a prompt share its video: one decode, one processor call, one vision-tower run per pass,
and one prompt prefill in the log-prob passes (`sharing.py`, switched by the config's `share_*` options). With
`sequence_parallel_size`, groups of processes hold the same rows and split each pass's frames and tokens among them
(`sequence_parallel.py`: the sampler, the generation's share, the passes).

What lives for one generation lives in one `GenerationBatch` (`generation_batch.py`), opened when the generation
starts and gone once it is scored; a loss pass opens its own from TRL's batch. Everything else a run may do is a
`Feature` (`features.py`), attached at start by its config key and called at three points of each generation
(`generated`, `rewarded`, `scored`), in `FEATURES` order: rows of broken videos (`undecodable.py`), agentic
re-watching (`agentic.py`), the judge watch (`judge_watch.py`), the length band and T-GRPO (`temporal.py`), dynamic
sampling (`dynamic.py`). Step and log ends are `TrainerCallback`s (`sharing_counts.py`, `rollout_recorder.py`).
The private TRL this class overrides and reads is listed, with why, in `trl_surface.py`.

Example:
```python
>>> trainer = VideoGRPOTrainer(model="runs/tiny-world", reward_funcs=get_reward_funcs(["format"]),
...                            args=GRPOConfig(...), train_dataset=dataset, video_settings=VideoSettings())  # doctest: +SKIP
```
"""

import contextlib
import functools
import logging
import os

import datasets
import torch
from transformers import AutoConfig, set_seed
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from rewatch_trl.agentic import AgenticRollouts
from rewatch_trl.collator import (
    VideoCollator,
    prompt_key,
    split_video_inputs,
    video_fields,
    video_forward_kwargs,
)
from rewatch_trl.dynamic import DynamicSampling
from rewatch_trl.families import family_of
from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.generation_buffer import restore_generation_buffer, save_generation_buffer
from rewatch_trl.judge_watch import JudgeWatch
from rewatch_trl.positions import use_original_rope
from rewatch_trl.prompts import VideoSettings
from rewatch_trl.rewatch import RewatchSettings
from rewatch_trl.rollout_recorder import RolloutRecorder
from rewatch_trl.sampling import kept_mass_recorded, truncates
from rewatch_trl.sequence_parallel import (
    GroupSampler,
    SequenceGroup,
    SequenceParallel,
    split_generation,
    splitting,
)
from rewatch_trl.sharing import (
    SharedRows,
    backbone,
    base_model,
    install_shared_prefix,
    install_shared_video_features,
    modality,
)
from rewatch_trl.sharing_counts import SharingCounter, SharingCounts
from rewatch_trl.suppression import suppress_vision_tokens, suppressed_token_ids
from rewatch_trl.temporal import LengthBand, TemporalContrast
from rewatch_trl.training import keep_used_weight_conversions
from rewatch_trl.trl_surface import check_trl
from rewatch_trl.undecodable import LeaveOutUndecodable
from rewatch_trl.video import (
    VideoCache,
    check_shared_memory,
    decoded_video_bytes,
)
from rewatch_trl.vllm_server import client_built_as, serve_videos
from rewatch_trl.vllm_video import VideoLLM, engine_built_as, engine_dtype, reload_weights


logger = logging.getLogger(__name__)


class VideoGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` for prompts that hold one video each (a `{"type": "video", "video": PATH}` block), and in
    agentic mode (`GRPOConfig.rewatch_mode`) completions that show the clips their actions name.

    Args:
        video_settings: how frames are sampled (the seed's settings by default).
        video_root: directory relative video paths are resolved against.
        video_cache: where sampled videos are kept (a process-wide cache by default).
        Everything else: as `trl.GRPOTrainer`.
    """

    _tag_names = ["trl", "grpo", "rewatch-trl", "video"]
    # what a run may do beside wiring videos through TRL, in the order each acts at a generation's points
    FEATURES = (LeaveOutUndecodable, AgenticRollouts, JudgeWatch, LengthBand, TemporalContrast, DynamicSampling)

    def __init__(
        self,
        model,
        reward_funcs=None,
        args=None,
        *rest,
        video_settings: VideoSettings | None = None,
        video_root=None,
        video_cache: VideoCache | None = None,
        **kwargs,
    ):
        check_trl()  # the private TRL this class overrides, before anything is built on it
        for unsupported in ("tools", "environment_factory"):
            if kwargs.get(unsupported):
                raise NotImplementedError(
                    f"VideoGRPOTrainer does not take `{unsupported}`: its prompts are single-turn video prompts "
                    "rendered by the VideoCollator (tool calls and environments would need multi-turn video)"
                )
        family = family_of(AutoConfig.from_pretrained(model) if isinstance(model, str) else model)
        # sequence parallelism (`sequence_parallel.py`): groups of processes that split each prompt's passes
        sequence_group = SequenceGroup.build(getattr(args, "sequence_parallel_size", 1))
        if sequence_group.size > 1:
            family.check("sequence_parallel")
        engine = contextlib.nullcontext()
        server = getattr(args, "use_vllm", False) and args.vllm_mode == "server"
        if server:
            family.check("vllm")
            family.check("vllm_server")
            engine = client_built_as(args.vllm_weight_sync)
        elif getattr(args, "use_vllm", False):
            family.check("vllm")
            # the colocated engine samples in the trainer's dtype (TRL builds it in vLLM's "auto")
            dtype = engine_dtype(model, args)
            engine_kwargs = family.vllm_kwargs(dtype, colocated=True)
            if engine_kwargs["dtype"] != dtype:
                logger.warning(
                    "vLLM samples %s models in %s (the trainer computes in %s): TRL's importance sampling corrects "
                    "for the difference (rewatch_trl/families.py)",
                    family.name,
                    engine_kwargs["dtype"],
                    dtype,
                )
            # `whole`: the engines of a group sample alike (TRL seeds each process's apart)
            whole = sequence_group.size > 1 and args.sequence_parallel_generation == "whole"
            engine = engine_built_as({"seed": sequence_group.data_rank} if whole else None, **engine_kwargs)
        if isinstance(args, RewatchSettings) and args.agentic:
            family.check("agentic")
        with engine:
            super().__init__(model, reward_funcs, args, *rest, **kwargs)
        check_trl(self)
        keep_used_weight_conversions(self.model)  # a model TRL loaded from its name, saved under ZeRO-3
        for switch in ("share_video_features", "share_prompt_prefix"):
            if getattr(self.args, switch, False) and not family.supports(switch):
                logger.warning("%s is off: %s", switch, family.why_not(switch))
                setattr(self.args, switch, False)
        # a video that fails to decode mid-run costs its rows (`undecodable.py`), not the run
        self.video_collator = VideoCollator(
            self.processing_class,
            video_settings,
            video_root,
            video_cache,
            self.chat_template_kwargs,
            tolerate_undecodable=True,
        )
        self._vision_config = self.model.config
        seconds_dtype = None
        if server:
            self.server_videos = serve_videos(self, family.published_transposed)
            seconds_dtype = self.server_videos.dtype
        elif self.use_vllm:
            tensor_parallel = self.vllm_generation.tensor_parallel_size > 1
            group = self.vllm_generation.tp_group if tensor_parallel else None
            self.vllm_generation.llm = VideoLLM(self.vllm_generation.llm, self._vision_config, group)
            self.vllm_generation.sync_weights = functools.partial(
                reload_weights, self.vllm_generation, family.published_transposed
            )
            # vLLM reads `second_per_grid_ts` in its model's dtype: the positions here must read it alike
            seconds_dtype = self.vllm_generation.llm.llm_engine.model_config.dtype
        else:
            known = list(self.generation_kwargs.get("suppress_tokens") or [])
            suppressed = suppressed_token_ids(self._vision_config)
            self.generation_kwargs["suppress_tokens"] = sorted(set(known) | set(suppressed))
            self.generation_config.suppress_tokens = self.generation_kwargs["suppress_tokens"]
        # the policy and the reference (if any), unwrapped: every per-model install below serves both
        models = [self.accelerator.unwrap_model(m) for m in (self.model, self.ref_model) if m is not None]
        for model in models:
            # the position rule the model was pretrained with and vLLM samples under, also for a model handed in
            use_original_rope(model, seconds_dtype)
            # scored under the distribution that samples: the vision tokens suppressed
            suppress_vision_tokens(model)
        self._shared_features = []
        self._shared_prefixes = []
        if getattr(self.args, "freeze_vision_tower", False):
            backbone(self.model).visual.requires_grad_(False)
        if getattr(self.args, "share_video_features", False):
            frozen = getattr(self.args, "freeze_vision_tower", False)
            self._shared_features = [install_shared_video_features(m, frozen) for m in models]
        if getattr(self.args, "share_prompt_prefix", False):
            features = self._shared_features or [None] * len(models)
            self._shared_prefixes = [install_shared_prefix(m, f) for m, f in zip(models, features, strict=True)]
        self.sequence_group = sequence_group
        self._sequence_parallel = []
        if self.sequence_group.size > 1:
            self._sequence_parallel = [SequenceParallel(m, self.sequence_group) for m in models]
            # the processes of a group sample alike: one seed a data-parallel group (TRL's is one a process)
            set_seed(self.args.seed + self.sequence_group.data_rank)
        if is_deepspeed_zero3_enabled():
            params = list(self.model.parameters())
            # a parameter ZeRO-3 partitions at load keeps an empty placeholder here
            partitioned = sum(1 for p in params if hasattr(p, "ds_numel") and p.numel() < p.ds_numel)
            logger.info("ZeRO-3: %d of the policy's %d parameters are partitioned", partitioned, len(params))
        self.sharing_counter = SharingCounter(models, self.video_collator)
        self.add_callback(SharingCounts(self.sharing_counter, self._metrics))
        # what the generation (or loss pass) at hand knows of its rows; None between them (`generation_batch.py`)
        self.generation: GenerationBatch | None = None
        # vLLM samples from a truncated distribution (top-k, top-p, min-p): the importance-sampling correction then
        # compares the trainer's log-probs on that support (`sampling.py`); the old-policy pass's kept mass
        self._sampler_truncates = (
            self.use_vllm
            and self.vllm_importance_sampling_correction
            and truncates(self.top_k, self.top_p, self.min_p)
        )
        # the features this run's settings ask for, in the order they act (`features.py`)
        self.features = [f for f in (feature.attach(self) for feature in self.FEATURES) if f is not None]
        agentic = self.feature(AgenticRollouts)
        self.rollout_recorder = RolloutRecorder.attach(self, agentic.clip_settings() if agentic else None)

    def feature(self, kind: type):
        """The attached feature of class `kind` (`FEATURES`), or None when this run's settings left it off."""
        return next((feature for feature in self.features if isinstance(feature, kind)), None)

    def _tokenize_prompts(self, prompts: list):
        # The G copies of a prompt are encoded once and share one sample dict: that is how the later passes
        # know which rows hold the same video.
        keys = [prompt_key(prompt) for prompt in prompts]
        distinct = list(dict.fromkeys(keys))
        device = self.accelerator.device
        # the video processor's normalise and patchify run where the model is (on the GPU in a GPU run)
        batch, videos = self.video_collator.encode_messages(
            [prompts[keys.index(key)] for key in distinct], device=device
        )
        keep = batch["attention_mask"].bool()
        ids = [row_ids[row].tolist() for row_ids, row in zip(batch["input_ids"], keep, strict=True)]
        mm = [row_mm[row].tolist() for row_mm, row in zip(batch["mm_token_type_ids"], keep, strict=True)]
        samples = [{key: value.to(device) for key, value in sample.items()} for sample in split_video_inputs(batch)]
        rows = [distinct.index(key) for key in keys]
        generation = self.generation
        generation.samples = [samples[i] for i in rows]
        generation.videos = [videos[i] for i in rows]
        generation.paths = [videos[i].path for i in rows]
        return [ids[i] for i in rows], None, self._generation_fields([mm[i] for i in rows])

    def _generation_fields(self, types: list[list[int]]) -> dict:
        """What TRL's transformers generation hands `generate` beside the ids of the rows at hand: their video
        tensors (prompt videos, then clips) and `types`, their `mm_token_type_ids`. vLLM takes the frames
        themselves (`VideoLLM.serving`) and ignores these: none are built, no pixels copied each round."""
        if self.use_vllm:
            return {}
        generation = self.generation
        fields = video_fields(generation.samples, bool(self._shared_features), generation.clips)
        # a per-token field: TRL left-pads lists of lists like the prompt ids
        return fields | {"mm_token_type_ids": types}

    @contextlib.contextmanager
    def shared_rows(
        self,
        samples: list[dict],
        completion_length: int = 0,
        clips: list[list[dict]] | None = None,
        whole_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """Within the block, the model is called on rows holding `samples` (one per row; the G copies of a prompt
        hold the same dict: the same prompt and video) that end in `completion_length` completion tokens, in which
        (agentic mode) `clips` were shown; with `whole_rows` (their ids and attention mask), the model is handed
        only their ends: the shared video features and prompt prefix (`sharing.py`) encode each distinct video, and
        prefill each distinct prompt, once."""
        rows = SharedRows(samples, completion_length, clips, *(whole_rows or (None, None)))
        for shared in self._shared_features:
            shared.rows = rows
        for shared in self._shared_prefixes:
            shared.rows = rows if completion_length else None
        try:
            yield rows
        finally:
            for shared in [*self._shared_features, *self._shared_prefixes]:
                shared.rows = None

    def _save_checkpoint(self, model, trial):
        # the generation buffer first: the trainer state, written last, marks a checkpoint whole (`training.py`)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        save_generation_buffer(self, os.path.join(self._get_output_dir(trial=trial), folder))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            restore_generation_buffer(self, checkpoint)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        group = self.sequence_group
        if group.size == 1 or self.args.sequence_parallel_generation == "whole":
            return self._generate_rows(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)
        # a share of the rows on each process of the group (`split_generation`), with their videos
        generation = self.generation

        def generate(rows: list[int]):
            self.generation = generation.rows(rows)
            try:
                types = multimodal_fields.get("mm_token_type_ids")  # none with vLLM, which takes the frames
                fields = multimodal_fields if types is None else self._generation_fields([types[i] for i in rows])
                share = [prompt_ids[i] for i in rows]
                # a prompt's G copies (or one row: an agentic round's, a shuffled rollout's), every N-th here
                copies = max(1, num_generations // group.size)
                return self._generate_rows(share, images, fields, copies, *args, **kwargs)
            finally:
                self.generation = generation

        return split_generation(group, len(prompt_ids), generate)

    def _generate_rows(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        # the rows of this generation are the prompts `_tokenize_prompts` just encoded, with their videos
        generation = self.generation
        if not self.use_vllm:
            serving = contextlib.nullcontext()
        elif self.vllm_generation.mode == "server":
            serving = self.server_videos.serving(
                self, prompt_ids, generation.samples, num_generations, generation.clips
            )
        else:
            serving = self.vllm_generation.llm.serving(generation.videos)
        with self.shared_rows(generation.samples, clips=generation.clips), serving:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs
            )

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if self.sequence_group.size == 1:
            return sampler
        # each group's processes get the same rows: every process's batch of TRL's stream, once for each of them
        return GroupSampler(sampler, self._train_batch_size * self.args.steps_per_generation, self.sequence_group.size)

    def get_train_dataloader(self):
        # With DataLoader workers, the training set's videos are decoded in them, ahead of the steps that need them.
        dataset = self.train_dataset
        if self.args.dataloader_num_workers > 0 and isinstance(dataset, datasets.Dataset):
            self.train_dataset = dataset.with_transform(self.video_collator.decode_ahead)
            # each worker's batches in flight, each of its distinct prompts' videos in shared memory
            batch = self._train_batch_size * self.args.steps_per_generation
            in_flight = self.args.dataloader_num_workers * (self.args.dataloader_prefetch_factor or 2)
            videos = max(1, batch // self.num_generations) * in_flight
            warning = check_shared_memory(videos * decoded_video_bytes(self.video_collator.settings))
            if warning:
                logger.warning(warning)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = dataset

    def _generate_and_score_completions(self, inputs):
        output, totals = self._scored_batch(inputs)
        for feature in self.features:
            output = feature.scored(self, output, totals, len(inputs))
        return output

    @contextlib.contextmanager
    def generating(self):
        """Within the block, `self.generation` is a new `GenerationBatch` for the generation at hand."""
        self.generation = GenerationBatch(mode="train" if self.model.training else "eval")
        try:
            yield self.generation
        finally:
            self.generation = None

    def _scored_batch(self, inputs) -> tuple[dict, torch.Tensor]:
        """TRL's generation and scoring of `inputs` within a `GenerationBatch`: its output, and the weighted total
        reward of every process's rows."""
        # frames a DataLoader worker decoded: into this process's cache (and out of the reward functions' columns)
        self.video_collator.keep([row.pop("sampled_video") for row in inputs if "sampled_video" in row])
        with self.generating() as generation:
            # TRL's first pass over the policy after generation is the old-policy pass that its correction reads
            generation.old_pass_pending = self._sampler_truncates
            seen = self.state.num_input_tokens_seen
            output = super()._generate_and_score_completions(inputs)
            if self.sequence_group.size > 1:
                # TRL counted every process's tokens: the processes of a group hold the same ones
                counted = (self.state.num_input_tokens_seen - seen) // self.sequence_group.size
                self.state.num_input_tokens_seen = seen + counted
                self._metrics[generation.mode]["num_tokens"] = [self.state.num_input_tokens_seen]
            if generation.old_kept_mass is not None:
                # the correction compared the sampler's support on both sides; the loss's old policy is the whole
                # distribution, as its policy pass is
                output["old_per_token_logps"] = output["old_per_token_logps"] + generation.old_kept_mass
            output["video_inputs"] = generation.samples
            # what the batch held: its rows whose prompt shows an image (Video-R1's image rows), on all processes
            images = sum(modality(sample) == "image" for sample in generation.samples)
            images = self.accelerator.gather(torch.tensor(float(images), device=self.accelerator.device)).sum()
            self._metrics[generation.mode]["data/image_rows"].append(images.item())
            if generation.clips is not None:
                output["clip_inputs"] = generation.clips
        return output, generation.totals

    def _compute_loss(self, model, inputs):
        self.generation = GenerationBatch.for_loss(inputs)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.generation = None

    def _generate(self, prompts: list):
        output = super()._generate(prompts)
        for feature in self.features:
            output = feature.generated(self, self.generation, prompts, output)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        generation = self.generation
        for feature in self.features:
            feature.rewarded(self, generation, inputs, prompts, rewards_per_func)
        # the total rewards TRL's advantages are made of, for dynamic sampling
        weighted = rewards_per_func * self.reward_weights.to(rewards_per_func.device)
        generation.totals = weighted.nansum(dim=1).masked_fill(torch.isnan(rewards_per_func).all(dim=1), torch.nan)
        return rewards_per_func

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kwargs
    ):
        generation = self.generation
        if (
            generation is not None
            and generation.old_pass_pending
            and model is self.model
            and not torch.is_grad_enabled()
        ):
            # the old-policy pass: its log-probs put on the sampler's support, `log p - log S`, for the correction
            generation.old_pass_pending = False
            unwrapped = self.accelerator.unwrap_model(model)
            sampler = (self.temperature, self.top_k, self.top_p, self.min_p)
            with kept_mass_recorded(backbone(unwrapped), base_model(unwrapped), logits_to_keep, *sampler) as masses:
                logps, entropies, aux_loss = self._video_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, **kwargs
                )
            generation.old_kept_mass = torch.cat(masses)
            return logps - generation.old_kept_mass, entropies, aux_loss
        return self._video_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size, **kwargs)

    def _video_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kwargs):
        samples = self.generation.samples if self.generation is not None else None
        if samples is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, **kwargs
            )
        if len(samples) != input_ids.size(0):
            raise RuntimeError(f"{len(samples)} videos for {input_ids.size(0)} sequences")
        batch_size = batch_size or input_ids.size(0)
        logps, entropies, aux_losses = [], [], []
        # sequence parallelism: each pass split across the processes of the group (`sequence_parallel.py`)
        with splitting(self._sequence_parallel):
            for start in range(0, input_ids.size(0), batch_size):
                rows = slice(start, start + batch_size)
                # TRL's pass runs `model(**its_inputs)`: bind this chunk's videos to the call.
                clips = None if self.generation.clips is None else self.generation.clips[rows]
                video_model = functools.partial(
                    model,
                    **video_forward_kwargs(
                        samples[rows], input_ids[rows], self._vision_config, bool(self._shared_features), clips
                    ),
                )
                ids, mask = input_ids[rows], attention_mask[rows]
                # TRL's head reads the hidden states of the last prompt token and the completion alone: with the
                # prefix shared, the model is handed those ends, and the G copies of each prompt's states are never
                # made; but a mixture of experts' load-balancing loss (TRL's `compute_aux_loss`) counts every token
                # of every row
                ends_only = self._shared_prefixes and not kwargs.get("compute_aux_loss")
                whole_rows = (ids, mask) if ends_only and logits_to_keep + 1 < ids.size(1) else None
                if whole_rows is not None:
                    ids, mask = ids[:, -(logits_to_keep + 1) :], mask[:, -(logits_to_keep + 1) :]
                with self.shared_rows(samples[rows], logits_to_keep, clips, whole_rows):
                    chunk = super()._get_per_token_logps_and_entropies(
                        video_model, ids, mask, logits_to_keep, batch_size, **kwargs
                    )
                logps.append(chunk[0])
                entropies.append(chunk[1])
                aux_losses.append(chunk[2])
        return (
            torch.cat(logps),
            None if entropies[0] is None else torch.cat(entropies),
            None if aux_losses[0] is None else torch.stack(aux_losses).mean(),
        )
