"""The sampler's truncation on the trainer's side (`sampling.py`): hand-counted masses; vLLM's own functions in the
vLLM tier (tests/test_vllm_sampling.py)."""

import math

import pytest
import torch

from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.sampling import completion_kept_log_mass, kept_log_mass, truncates


PROBS = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]])


@pytest.mark.parametrize(
    ("settings", "kept"),
    [
        ({"top_p": 0.95}, 0.96),  # 0.04 dropped (0.04 <= 0.05), 0.06 kept (0.10 > 0.05)
        ({"top_p": 0.9}, 0.9),  # 0.04 + 0.06 = 0.10 <= 0.10: both dropped
        ({"top_p": 0.5}, 0.7),
        ({"top_p": 0.01}, 0.4),  # the most likely token always stays
        ({"top_k": 2}, 0.7),
        ({"top_k": 3, "top_p": 0.7}, 0.7),  # top-p on the top-k-renormalised 0.4/0.9, 0.3/0.9, 0.2/0.9
        ({"min_p": 0.2}, 0.9),  # < 0.2 * 0.4 = 0.08 dropped
        ({"min_p": 0.5, "top_k": 1}, 0.4),
        ({}, 1.0),
        ({"top_k": 0, "top_p": 1.0, "min_p": 0.0}, 1.0),
    ],
)
def test_kept_mass_is_hand_counted(settings, kept):
    assert kept_log_mass(PROBS.log(), **settings).exp().item() == pytest.approx(kept, abs=1e-6)
    assert truncates(**settings) == (kept < 1.0)


def test_ties_with_the_kth_value_are_kept():
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    probs = logits.softmax(-1)[0]
    assert kept_log_mass(logits, top_k=2).exp().item() == pytest.approx((probs[0] + probs[1] + probs[2]).item())


def test_completion_mass_reads_the_head_and_its_bias_at_the_temperature():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    hidden = torch.randn(2, 3, 8)
    mass = completion_kept_log_mass(hidden, head, 0.7, top_p=0.9)
    assert mass.shape == (2, 3)
    expected = kept_log_mass(head(hidden).detach() / 0.7, top_p=0.9)
    assert torch.allclose(mass, expected, atol=1e-6)
    # a control: another temperature, or the head without its bias, keeps another mass
    assert (completion_kept_log_mass(hidden, head, 1.0, top_p=0.9) - mass).abs().max() > 1e-3
    unbiased = torch.nn.Linear(8, 50)
    unbiased.weight.data, unbiased.bias.data = head.weight.data, torch.zeros(50)
    assert (completion_kept_log_mass(hidden, unbiased, 0.7, top_p=0.9) - mass).abs().max() > 1e-3
    assert math.isclose(completion_kept_log_mass(hidden, head, 0.7).abs().max().item(), 0.0, abs_tol=1e-6)


def test_old_policy_pass_is_put_on_the_samplers_support(tiny_world, tmp_path, make_trainer):
    """The old-policy pass after generation is scored on the sampler's support (`log p - log S`) for TRL's
    correction, and the loss gets the whole distribution's log-probs back; a policy pass is left alone."""
    from rewatch_trl.collator import video_forward_kwargs

    trainer, dataset = make_trainer(tiny_world, tmp_path, top_p=0.8, temperature=0.7)
    trainer._sampler_truncates = True  # as with use_vllm and TRL's correction (the vLLM tier runs the engine)
    rows = [dataset[0], dataset[0], dataset[1], dataset[1]]
    generation = trainer.generation = GenerationBatch()
    prompt_ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    completion = [[10, 11, 12], [13, 14, 15], [16, 17, 18], [19, 20, 21]]
    longest = max(len(p) for p in prompt_ids)
    pad = trainer.processing_class.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (longest - len(p)) + p + c for p, c in zip(prompt_ids, completion, strict=True)])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * (len(p) + 3) for p in prompt_ids])
    with torch.no_grad():
        full, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 3)
        generation.old_pass_pending = True
        truncated, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 3)
        again, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 3)
    kept = generation.old_kept_mass
    assert kept.shape == (4, 3) and (kept < -1e-3).all() and (kept <= 0).all()
    assert torch.allclose(truncated, full - kept, atol=1e-6)
    assert torch.equal(again, full)  # only the first pass after generation
    # the mass is that of the model's own next-token distributions at the completion's positions
    with torch.no_grad():
        logits = trainer.model(
            input_ids=ids,
            attention_mask=mask,
            **video_forward_kwargs(generation.samples, ids, trainer.model.config),
        ).logits[:, -4:-1]
    assert torch.allclose(kept, kept_log_mass(logits / 0.7, top_p=0.8), atol=1e-5)
    # a control: one position off
    assert (kept[:, 1:] - kept_log_mass(logits[:, :-1] / 0.7, top_p=0.8)).abs().max() > 1e-3
