"""The vLLM tier: the sampler's truncation as vLLM applies it, and TRL's importance-sampling correction under the
paper's top_p 0.9 as a user runs the recipe (TRL's own engine construction, no patched engine)."""

import pytest
import torch

from rewatch_trl.sampling import kept_log_mass


pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.9), (0, 0.5), (5, 1.0), (40, 0.8), (1, 0.9)])
def test_kept_mass_is_vllms_truncation(top_k, top_p):
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    torch.manual_seed(0)
    logits = torch.randn(64, 513) * torch.linspace(0.5, 6.0, 64)[:, None]  # flat to peaked distributions
    k = torch.full((64,), top_k) if top_k else None
    p = torch.full((64,), top_p) if top_p < 1 else None
    truncated = apply_top_k_top_p(logits.clone(), k, p)
    expected = torch.logsumexp(truncated, -1) - torch.logsumexp(logits, -1)
    ours = kept_log_mass(logits, top_k=top_k, top_p=top_p)
    assert (ours - expected).abs().max() <= 1e-6
    # a control: the nucleus a little wider keeps another mass
    wider = kept_log_mass(logits, top_k=top_k + 3 if top_k else 0, top_p=min(top_p + 0.05, 1.0))
    assert (wider - expected).abs().max() > 1e-3


# Qwen3-VL's colocated engine samples with the trainer's log-probs on every step in tests/test_vllm_tensor_parallel.py;
# its MoE sibling here goes through the same Qwen3 rendering
@pytest.mark.parametrize(("family", "steps"), [("qwen2_5_vl", 2), ("qwen3_vl_moe", 2)])
def test_the_tiny_recipe_at_top_p_keeps_the_importance_weight(family, steps, family_world, tmp_path, launcher):
    """`--use_vllm true --top_p 0.9 --max_completion_length 64` on the tiny recipe of each family's world (the keys
    `rewatch-trl tiny` prints), launched as a user launches it: TRL's importance-sampling ratio stays at 1 on every
    step (the engine samples in the trainer's fp32), where the whole-vocabulary comparison gave 0.0068 (trl#6789)."""
    out = tmp_path / "run"
    command = launcher.command(
        family_world(family), out, use_vllm="true", top_p=0.9, top_k=40, max_completion_length=64, max_steps=steps
    )
    launcher.run(command, timeout=600)
    logs = [
        entry for entry in launcher.state(out)["log_history"] if "sampling/importance_sampling_ratio/mean" in entry
    ]
    assert len(logs) == steps
    for entry in logs:
        assert entry["sampling/importance_sampling_ratio/mean"] >= 0.98, entry
        assert entry["sampling/importance_sampling_ratio/min"] >= 0.98, entry
        assert entry["sampling/sampling_logp_difference/max"] <= 1e-5, entry
