"""SFT cold start on the tiny world: the loss falls, labels cover the answer only, the result generates."""

import pytest
import torch

from rewatch_trl.sft import main, parse_args


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_sft_learns_the_traces_and_the_model_generates_with_the_video(tiny_world, tmp_path, launcher):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS

    out = tmp_path / "sft"
    args = parse_args(launcher.recipe_args(tiny_world, out, "sft", max_steps=40, logging_steps=5))
    trainer = main(*args)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8
    assert losses[-1] <= losses[0] / 2, losses  # 8 fixed rows, 40 steps: the loss at least halves
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.padding_side == "left"  # saved ready for generation
    batch = VideoCollator(processor, TINY_VIDEO_SETTINGS, tiny_world.video_dir)(tiny_world.rows[:2])
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=40, do_sample=False)
    texts = processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(text.startswith("<action>") for text in texts), texts  # it learnt the ReAct opening


def test_sft_without_the_target_column_says_so(tiny_world, tmp_path, launcher):
    args = parse_args(launcher.recipe_args(tiny_world, tmp_path / "x", "sft", response_field="trace"))
    with pytest.raises(ValueError, match="no 'trace' column"):
        main(*args)


def test_quantization_keys_reach_the_model(tiny_world):
    from trl import ModelConfig

    from rewatch_trl.training import load_model

    # honoured, not dropped: bitsandbytes (not installed here) is asked for, where the key used to load fp32 silently
    with pytest.raises(ImportError, match="bitsandbytes"):
        load_model(ModelConfig(model_name_or_path=str(tiny_world.root), load_in_4bit=True))
    with pytest.raises(ImportError, match="bitsandbytes"):
        load_model(ModelConfig(model_name_or_path=str(tiny_world.root), load_in_8bit=True))
