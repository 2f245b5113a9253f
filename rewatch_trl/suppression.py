"""The vision tokens a completion must never hold, suppressed alike wherever the policy samples or is scored.

A sampled `<|video_pad|>`, `<|image_pad|>` or `<|vision_start|>` would make the next forward pass look for visual
features that do not exist, so generation suppresses them: vLLM with a logit bias, transformers with
`suppress_tokens`. The policy that samples is then the suppressed one, and the trainer's log-probs must be those
of that policy too, or TRL's importance-sampling correction compares two distributions (on the tiny random model,
log(513/510) ≈ 0.006 apart on every token). `suppress_vision_tokens(model)` puts the same bias on the model's
LM head, which TRL's fused log-prob head reads.

Example:
```python
>>> suppression_logit_bias(config)  # doctest: +SKIP
{5: -100.0, 6: -100.0, 3: -100.0}
```
"""

# What vLLM adds to a suppressed token's logit, and what the trainer's LM head adds (exp(-100) ≈ 4e-44: nothing
# of a suppressed token's probability is left in either).
SUPPRESSION_BIAS = -100.0


def suppressed_token_ids(config) -> list[int]:
    """The vision tokens of a Qwen2.5-VL config that a completion must never hold."""
    return sorted({config.video_token_id, config.image_token_id, config.vision_start_token_id})


def suppression_logit_bias(config) -> dict[int, float]:
    """vLLM's `SamplingParams.logit_bias` that suppresses `suppressed_token_ids(config)`."""
    return dict.fromkeys(suppressed_token_ids(config), SUPPRESSION_BIAS)


def suppress_vision_tokens(model) -> None:
    """Give a (PEFT-wrapped or not) model's LM head a fixed bias, `SUPPRESSION_BIAS` at the suppressed tokens and 0
    elsewhere: every pass that scores a completion (TRL's fused log-prob head included) then scores it under the
    distribution it was sampled from. The bias is a non-persistent buffer: not trained, not saved, not synced to
    vLLM (which applies the same bias itself)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head.bias is not None and not isinstance(head.bias, torch.nn.Parameter):
        return  # already installed
    if head.bias is not None:
        raise ValueError("the LM head already has a trained bias: suppression would replace it")
    # `out_features`, not the weight's shape: under ZeRO-3 the weight is a partitioned (empty) placeholder
    bias = torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device)
    bias[suppressed_token_ids(base.config)] = SUPPRESSION_BIAS
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        # TRL's fused head gathers the head's weight and bias under ZeRO-3, reading each one's `ds_status`: this
        # bias is a buffer, whole on every rank, so it is there already
        bias.ds_status = ZeroParamStatus.AVAILABLE
    del head.bias
    head.register_buffer("bias", bias, persistent=False)
