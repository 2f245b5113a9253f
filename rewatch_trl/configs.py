"""The dataclasses a recipe fills, parsed by `TrlParser` (open-r1 style): script, training, model, video.

An unknown key in a recipe is an error that names it (`TrlParser` with `fail_with_unknown_args`).
"""

from dataclasses import dataclass, field

import trl

from rewatch_trl.prompts import VideoSettings
from rewatch_trl.rewatch import RewatchSettings


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """Where the data is, which rewards score it, and the judge they may ask.

    `dataset_name` is a `save_to_disk` directory, a QA file (`dataset_format`), or a Hub dataset id; or
    `dataset_mixture` names several.
    """

    dataset_mixture: dict | None = field(
        default=None,
        metadata={
            "help": "Several datasets mixed into the training set (open-r1's shape: `datasets`, each with `id`, "
            "`format`, `media_root`, `captions`, `rows` or `weight`, ...; `seed`), instead of `dataset_name` "
            "(rewatch_trl/mixture.py)."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Format of a QA file: rewatch (the seed's JSONL), video-r1, longvideo-reason, or auto (told by "
            "its fields).",
            "choices": ["auto", "rewatch", "video-r1", "longvideo-reason"],
        },
    )

    captions: str | None = field(
        default=None, metadata={"help": "Captions JSONL ({videos, captions} a line), when dataset_name is a QA JSONL."}
    )
    video_root: str | None = field(
        default=None,
        metadata={
            "help": "Directory the rows' videos (and images) are relative to: Video-R1's data root (default: `videos/`"
            " beside the dataset)."
        },
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "Leave invalid rows of a QA JSONL out (listed) instead of stopping."}
    )
    response_field: str = field(
        default="response",
        metadata={"help": "SFT: the column holding the assistant target (ReAct trace, caption, answer)."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "accuracy"],
        metadata={"help": "Reward names (see rewatch_trl.rewards.REWARDS); weights go in `reward_weights`."},
    )
    reward_kwargs: dict | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of rewards, by their name in reward_funcs (`{length_band: {low: 256, high: "
            "768, bonus: 0.2}}`)."
        },
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible endpoint of the judge (else REWATCH_JUDGE_BASE_URL)."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "Judge model name (else REWATCH_JUDGE_MODEL)."})
    judge_max_concurrency: int = field(default=16, metadata={"help": "Judge requests in flight at once."})
    judge_verdict_request: dict | None = field(
        default=None,
        metadata={
            "help": "Fields added to the judge's yes/no requests (the OpenAI client's extra_body); behind vLLM, "
            '`{structured_outputs: {choice: ["yes", "no"]}}` (quoted: YAML reads a bare yes as true) makes a small '
            "judge's every verdict readable."
        },
    )


@dataclass
class SequenceParallelSettings:
    """How many processes split each row's sequence (`sequence_parallel.py`): a part of the GRPO and SFT configs."""

    sequence_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Processes that hold the same rows and split each row's sequence (its frames in the vision "
            "tower, its tokens in the language model) in every pass: for videos longer than one GPU holds "
            "(rewatch_trl/sequence_parallel.py). Must divide the number of processes."
        },
    )

    def __post_init__(self):
        size = self.sequence_parallel_size
        if size < 1:
            raise ValueError(f"sequence_parallel_size must be at least 1, got {size}")
        super().__post_init__()
        if size > 1 and self.world_size > 1 and self.world_size % size:
            raise ValueError(
                f"sequence_parallel_size ({size}) must divide the number of processes ({self.world_size})"
            )


@dataclass
class GRPOConfig(RewatchSettings, SequenceParallelSettings, trl.GRPOConfig):
    """`trl.GRPOConfig` with the defaults a video run needs (the rewards read the dataset's columns), the sharing
    switches, and how the model re-watches (`RewatchSettings`: imagined, the paper's, or agentic)."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every column: the rewards read `answer`, `problem`, `captions`, ..."}
    )
    share_video_features: bool = field(
        default=True,
        metadata={
            "help": "Run the vision tower once per distinct video of a pass (generation, old, reference, policy) and "
            "hand its features to the G completions of that video, instead of once per completion."
        },
    )
    share_prompt_prefix: bool = field(
        default=True,
        metadata={
            "help": "In the log-prob passes, run each distinct prompt through the language model once and let its G "
            "completions attend to the cached prompt, instead of G full sequences (off under gradient "
            "checkpointing for the policy pass)."
        },
    )
    judge_max_failed_steps: int = field(
        default=20,
        metadata={
            "help": "Stop the run (with a checkpoint) when every judge call of this many consecutive steps that asked "
            "the judge failed, instead of training on unscorable rows; 0: never stop."
        },
    )
    log_rollouts: bool = field(
        default=True,
        metadata={
            "help": "With log_completions: also write the logged rollouts to <output_dir>/rollouts/ (the frames each "
            "prompt showed, as thumbnails) for `rewatch-trl rollouts OUTPUT_DIR`, in the background."
        },
    )
    accuracy_reward: str | None = field(
        default=None,
        metadata={
            "help": "The reward of reward_funcs that scores the answer (`accuracy`, `video_r1_accuracy`, ...): T-GRPO "
            "adds its bonus to it, and with it the length band pays right answers only (Video-R1's gate)."
        },
    )
    temporal_contrast: bool = field(
        default=False,
        metadata={
            "help": "T-GRPO (Video-R1): each video prompt also gets `temporal_rollouts` rollouts with its frames "
            "shuffled, outside the loss; if its ordered accuracy is at least `temporal_ratio` times theirs, its right "
            "ordered rollouts get `temporal_alpha` more accuracy. Needs `accuracy_reward`."
        },
    )
    temporal_rollouts: int | None = field(
        default=None, metadata={"help": "T-GRPO: shuffled rollouts a video prompt (default: num_generations // 2)."}
    )
    temporal_alpha: float = field(default=0.3, metadata={"help": "T-GRPO: the accuracy bonus."})
    temporal_ratio: float = field(
        default=0.8, metadata={"help": "T-GRPO: the share of the shuffled accuracy the ordered one must reach."}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling: the batch's prompts whose G rewards are all equal are replaced by newly "
            "sampled prompts whose rewards vary, generating refill batches until none is left or "
            "`max_resample_rounds` is reached."
        },
    )
    max_resample_rounds: int = field(
        default=3, metadata={"help": "Dynamic sampling: at most this many refill batches a generation batch."}
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Do not train the vision tower; its features are then computed once per video per generation "
            "batch and reused by every pass."
        },
    )
    vllm_weight_sync: str = field(
        default="nccl",
        metadata={
            "help": "vllm_mode 'server': how the weights reach the server after each step. `nccl`: TRL's NCCL "
            "transfer (GPUs); `reload`: written to `vllm_weights_dir` (a path the server can read) and reloaded in "
            "place by its workers (rewatch_trl/vllm_server.py): works where NCCL does not, and re-syncs a restarted "
            "server.",
            "choices": ["nccl", "reload"],
        },
    )
    vllm_weights_dir: str | None = field(
        default=None,
        metadata={
            "help": "`vllm_weight_sync: reload`: where the weights are written (default: output_dir/vllm-weights)."
        },
    )
    vllm_server_wait: float = field(
        default=600.0,
        metadata={
            "help": "vllm_mode 'server': seconds a request waits (retrying, and saying so) for a server that stopped "
            "answering before the run stops."
        },
    )
    sequence_parallel_generation: str = field(
        default="split",
        metadata={
            "help": "With sequence_parallel_size > 1: `split` samples a group's completions once, a share on each "
            "process, gathered; `whole` has every process of the group sample all of them as one process would.",
            "choices": ["split", "whole"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.vllm_weight_sync not in ("nccl", "reload"):
            raise ValueError(f"vllm_weight_sync must be 'nccl' or 'reload', got {self.vllm_weight_sync!r}")
        if self.vllm_weights_dir is None:
            self.vllm_weights_dir = f"{self.output_dir}/vllm-weights"
        if self.sequence_parallel_generation not in ("split", "whole"):
            raise ValueError(
                f"sequence_parallel_generation must be 'split' or 'whole', got {self.sequence_parallel_generation!r}"
            )
        size = self.sequence_parallel_size
        if size > 1 and self.use_vllm and (self.vllm_mode == "server" or self.vllm_tensor_parallel_size > 1):
            # not run: a group's processes would each send the group's rows to one engine (SP's `whole` or `split`
            # against TRL's gathering of every process's, or every tensor parallel rank's, prompts)
            raise ValueError(
                "sequence_parallel_size > 1 generates with vllm_mode='colocate' and vllm_tensor_parallel_size=1; got "
                f"vllm_mode={self.vllm_mode!r}, vllm_tensor_parallel_size={self.vllm_tensor_parallel_size}"
            )
        if size == 1 or self.world_size == 1:  # a single process (a recipe checked, not launched): the trainer refuses
            return
        # TRL sized the generation batch for world_size data-parallel processes; the groups are world_size / size
        self.generation_batch_size //= size
        rows = self.per_device_train_batch_size * self.steps_per_generation
        if rows % self.num_generations:
            raise ValueError(
                f"sequence_parallel_size > 1 needs whole prompt groups on each process: per_device_train_batch_size "
                f"* steps_per_generation ({rows}) must be a multiple of num_generations ({self.num_generations})"
            )
        if self.sequence_parallel_generation == "split" and self.num_generations % size:
            raise ValueError(
                f"sequence_parallel_generation 'split' samples num_generations / sequence_parallel_size completions "
                f"a process: num_generations ({self.num_generations}) must be a multiple of {size}"
            )


@dataclass
class SFTConfig(RewatchSettings, SequenceParallelSettings, trl.SFTConfig):
    """`trl.SFTConfig` for video conversations: our collator builds the batches; in agentic `rewatch_mode`, the
    traces show each action's clip as the agentic rollouts will."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator needs every column."})
    dataset_kwargs: dict | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Rows are raw seed rows; the video collator tokenizes them."},
    )


__all__ = ["GRPOConfig", "SFTConfig", "ScriptArguments", "VideoSettings"]
