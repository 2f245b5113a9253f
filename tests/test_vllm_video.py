"""vLLM requests without the engine: placeholders, and the proxy's plumbing (the engine's tier: tests/vllm/)."""

import copy
import pickle
from types import SimpleNamespace

import pytest

from rewatch_trl.suppression import SUPPRESSION_BIAS, suppression_logit_bias
from rewatch_trl.vllm_video import VideoLLM, collapse_placeholders


CONFIG = SimpleNamespace(video_token_id=9, image_token_id=8, vision_start_token_id=7, vision_end_token_id=6)


def test_each_placeholder_run_collapses_to_one():
    assert collapse_placeholders([9, 9, 1, 9, 9, 9, 2, 9], 9) == [9, 1, 9, 2, 9]
    assert collapse_placeholders([1, 2], 9) == [1, 2]


def test_the_proxy_copies_and_pickles_without_recursing():
    proxy = VideoLLM(SimpleNamespace(name="engine"), CONFIG)
    assert copy.copy(proxy).name == "engine"
    assert pickle.loads(pickle.dumps(proxy)).llm.name == "engine"
    bare = VideoLLM.__new__(VideoLLM)  # what copy and pickle start from
    assert not hasattr(bare, "anything")  # an AttributeError, not a RecursionError


def test_suppression_bias_covers_the_vision_tokens():
    assert suppression_logit_bias(CONFIG) == {7: SUPPRESSION_BIAS, 8: SUPPRESSION_BIAS, 9: SUPPRESSION_BIAS}


def test_suppressed_head_scores_what_vllm_samples_and_saves_nothing(tiny_world, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    from rewatch_trl.suppression import suppress_vision_tokens, suppressed_token_ids

    model = AutoModelForImageTextToText.from_pretrained(tiny_world.root).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        suppress_vision_tokens(model)
        suppress_vision_tokens(model)  # idempotent
        after = model(input_ids=ids).logits
    banned = suppressed_token_ids(model.config)
    assert torch.allclose(after[..., banned], before[..., banned] + SUPPRESSION_BIAS)
    others = [t for t in range(before.size(-1)) if t not in banned]
    assert torch.equal(after[..., others], before[..., others])
    assert not any("lm_head.bias" in name for name, _ in model.named_parameters())
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.lm_head.bias is None


def test_the_paper_recipe_reserves_the_context_its_videos_need():
    from pathlib import Path

    import yaml

    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes/grpo.yaml").read_text())
    grids = recipe["video_max_frames"] // 2  # the processor's temporal patch of 2 frames
    video_tokens = grids * recipe["video_max_pixels"] // (28 * 28)  # one token a 28x28 (merged) patch
    assert video_tokens == 12288
    reserved = recipe["vllm_max_model_length"]
    assert reserved >= video_tokens + recipe["max_completion_length"] + 1024  # room for the prompt's text
    assert reserved < 32768  # not the model's whole context


# In the vLLM tier: from transformers 5.23 the Qwen3-VL processor drops the template's outer vision pair (each frame
# pair keeps its own), a layout no vLLM release runs with (vLLM 0.34 requires transformers < 5.23).
@pytest.mark.vllm
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_prompt_collapses_to_the_templates_ids(family, family_world):
    """vLLM expands each video's placeholder in the template's ids (`<|vision_start|><|video_pad|><|vision_end|>`)
    itself, Qwen3's into per-frame-pair timestamps and blocks inside that pair: the trainer's expanded prompt must
    collapse back to exactly the template's ids. The control: collapsing each pad run alone leaves Qwen3's frame
    blocks and timestamps behind (vLLM would expand the first and read the rest as text)."""
    from transformers import AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.video import VideoCache

    world = family_world(family)
    processor = AutoProcessor.from_pretrained(world.root)
    collator = VideoCollator(processor, world.video_settings, world.video_dir, VideoCache())
    row = world.rows[0]
    expanded = collator([row])["input_ids"][0].tolist()
    template = processor.tokenizer(collator.prompt_text(collator.messages(row)), add_special_tokens=False)["input_ids"]
    tokens = processor.tokenizer.convert_tokens_to_ids(["<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
    assert collapse_placeholders(expanded, *tokens) == template
    assert (collapse_placeholders(expanded, tokens[0]) == template) == (family == "qwen2_5_vl")
