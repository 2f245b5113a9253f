import json

import pytest
import torch

from rewatch_trl.collator import VideoCollator
from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, build_tiny_model, build_tiny_tokenizer, write_synthetic_video


def test_world_has_seed_format_rows_and_captions(tiny_world):
    rows = [json.loads(line) for line in tiny_world.qa_path.read_text().splitlines()]
    assert rows == tiny_world.rows
    assert {row["multiple_choice"] for row in rows} == {True, False}
    seed_keys = {"problem_id", "question_type", "multiple_choice", "problem", "data_type", "videos", "answer"}
    seed_keys |= {"answer_str", "duration", "duration_str", "response"}  # + the SFT target
    for row in rows:
        assert set(row) == seed_keys
        assert (tiny_world.video_dir / row["videos"]).is_file()
        if row["multiple_choice"]:
            # the right letter's option is the colour the open-ended twin answers
            option = dict(line.split(": ") for line in row["problem"].splitlines()[1:])[row["answer"]]
            assert option == row["answer_str"]
    captions = [json.loads(line) for line in tiny_world.captions_path.read_text().splitlines()]
    assert captions[0]["captions"].startswith("[00:00-00:02] a ")


def test_world_is_deterministic_for_a_seed(tmp_path):
    a, b = build_tiny_model(seed=3), build_tiny_model(seed=3)
    c = build_tiny_model(seed=4)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    assert write_synthetic_video(tmp_path / "x.mp4", seed=5) == write_synthetic_video(tmp_path / "y.mp4", seed=5)
    assert (tmp_path / "x.mp4").read_bytes() == (tmp_path / "y.mp4").read_bytes()


def test_tokenizer_has_qwen_special_tokens_and_template():
    tokenizer = build_tiny_tokenizer()
    for token in ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|video_pad|>", "<|image_pad|>"]:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    # `datasets` adds `"video": None` to text blocks: the template must go by the block's type.
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi", "video": None}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|video_pad|>" not in text
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_saved_world_loads_with_auto_classes(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert model.config.video_token_id == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert sum(p.numel() for p in model.parameters()) < 500_000


def _next_token_logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits[:, -1]


def test_tiny_model_sees_the_video(tiny_world, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=tiny_world.video_dir)
    row = tiny_world.rows[0]
    other = dict(row, videos=next(r["videos"] for r in tiny_world.rows if r["videos"] != row["videos"]))
    same = _next_token_logits(model, collator([row]))
    again = _next_token_logits(model, collator([row]))
    different = _next_token_logits(model, collator([other]))
    assert torch.equal(same, again)
    assert (same - different).abs().max() > 1e-4
    # and the difference comes from the pixels alone: same prompt tokens, other frames
    batch = collator([row])
    batch["pixel_values_videos"] = batch["pixel_values_videos"].flip(0)
    assert (same - _next_token_logits(model, batch)).abs().max() > 1e-4


def test_tiny_model_generates_with_the_video(tiny_world, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, video_root=tiny_world.video_dir)
    batch = collator(tiny_world.rows[:2])
    assert batch["input_ids"].shape[0] == 2
    output = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert output.shape == (2, batch["input_ids"].shape[1] + 5)


@pytest.mark.parametrize(
    "shape, parameters, vision, mrope",
    [
        ("qwen2.5-vl-7b", 8_292_166_656, 676_550_144, [16, 24, 24]),
        ("qwen3-vl-8b", 8_767_123_696, 576_388_336, [24, 20, 20]),
    ],
)
def test_the_published_shapes_build_offline(shape, parameters, vision, mrope):
    # the GPU benchmarks' random models: exactly the published parameter counts (the model cards' 8.29B and 8.77B),
    # with our tokenizer's special ids
    import torch
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    from rewatch_trl.tiny import PUBLISHED_SHAPES, build_tiny_tokenizer, tiny_config

    family, sizes = PUBLISHED_SHAPES[shape]
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, sizes, family=family)
    with torch.device("meta"):
        model = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)](config)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert sum(p.numel() for p in model.model.visual.parameters()) == vision
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.text_config.rope_parameters["mrope_section"] == mrope


def test_the_varied_world_differs_where_the_uniform_one_does_not(tmp_path):
    """`rewatch-trl tiny --varied`: its videos give different grids and fractional seconds a grid, its prompts
    different lengths; the default world's videos all give (4, 4, 4) grids of 2.0 s."""
    from transformers import AutoProcessor

    from rewatch_trl.cli import main as cli
    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS

    shapes = {}
    for name, flags in (("uniform", []), ("varied", ["--varied"])):
        assert cli(["tiny", "--out", str(tmp_path / name), *flags]) == 0
        rows = [json.loads(line) for line in (tmp_path / name / "qa.jsonl").read_text().splitlines()]
        collator = VideoCollator(
            AutoProcessor.from_pretrained(tmp_path / name), TINY_VIDEO_SETTINGS, tmp_path / name / "videos"
        )
        batch = collator(rows)
        shapes[name] = (
            {tuple(grid) for grid in batch["video_grid_thw"].tolist()},
            sorted(set(batch["second_per_grid_ts"].tolist())),
            len(set(batch["attention_mask"].sum(1).tolist())),
        )
    assert shapes["uniform"] == ({(4, 4, 4)}, [2.0], 2)  # two prompt lengths: MCQ and open-ended
    assert shapes["varied"] == ({(4, 4, 4), (4, 2, 4), (4, 4, 2)}, [1.75, 2.0, 2.75, 3.25], 8)
