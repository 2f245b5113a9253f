"""Image rows beside video rows (Video-R1's): the prompt said of an image, the collator's mixed batches, the model
seeing each row's image, SFT on Video-R1's COT rows, `infer` on an image file, `eval` by kind. GRPO refuses image
rows by name, for now."""

import json

import pytest
import torch

from rewatch_trl.collator import VideoCollator
from rewatch_trl.data import DataError, load_qa
from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.tiny import write_synthetic_image


@pytest.fixture(scope="module")
def video_r1_rows(tiny_world):
    dataset, _ = load_qa(tiny_world.video_r1_path, video_root=tiny_world.root, format="video-r1", progress=False)
    rows = dataset.to_list()
    return [row for row in rows if row["data_type"] == "image"], [row for row in rows if row["data_type"] == "video"]


def collator_of(world):
    from transformers import AutoProcessor

    return VideoCollator(AutoProcessor.from_pretrained(world.root), world.video_settings, world.root)


def test_an_image_rows_prompt_says_image_and_has_no_duration(tiny_world, video_r1_rows):
    images, videos = video_r1_rows
    collator = collator_of(tiny_world)
    text = collator.prompt_text(collator.messages(images[0]))
    assert "You are given an image and a question" in text and "Video Duration" not in text
    assert text.count("<|image_pad|>") == 1 and "<|video_pad|>" not in text  # one placeholder before expansion
    assert "Video Duration" in collator.prompt_text(collator.messages(videos[0]))


def test_a_mixed_batch_holds_each_rows_image_or_video_in_its_place(tiny_world, video_r1_rows):
    images, videos = video_r1_rows
    collator = collator_of(tiny_world)
    config = collator.processor.tokenizer
    batch = collator([images[0], videos[0], images[1]])
    image_pad, video_pad = (config.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>"))
    per_row = [(int((ids == image_pad).sum()), int((ids == video_pad).sum())) for ids in batch["input_ids"]]
    # a 64x64 image resized to 56x56 (the 28-px unit): 4 tokens; the video: its 8 frames' 4 tokens a frame pair
    assert per_row == [(4, 0), (0, 16), (4, 0)]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]] and batch["video_grid_thw"].tolist() == [
        [4, 4, 4]
    ]
    alone = collator([images[1]])
    assert torch.equal(batch["pixel_values"][16:], alone["pixel_values"])  # the second image's patches, in order


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_the_model_reads_each_rows_image_in_a_mixed_batch(family, family_world, tmp_path):
    """A mixed batch scores each row as that row alone (the positions and the images in order), and the image is
    read: another image moves the image row's logits and leaves the video row's as they were."""
    from transformers import AutoModelForImageTextToText

    from rewatch_trl.positions import use_original_rope

    world = family_world(family)
    dataset, _ = load_qa(world.video_r1_path, video_root=world.root, format="video-r1", progress=False)
    rows = dataset.to_list()
    image = next(row for row in rows if row["data_type"] == "image")
    video = next(row for row in rows if row["data_type"] == "video")
    collator = collator_of(world)
    collator.processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(world.root).eval()
    if family == "qwen2_5_vl":
        use_original_rope(model)
    with torch.no_grad():
        mixed = model(**collator([image, video])).logits[:, -1]
        alone = torch.cat([model(**collator([row])).logits[:, -1] for row in (image, video)])
        write_synthetic_image(tmp_path / "other.png", "blue", "EXIT")
        other = model(**collator([image | {"image_path": str(tmp_path / "other.png")}, video])).logits[:, -1]
    assert (mixed - alone).abs().max() <= 1e-5
    assert (other[0] - mixed[0]).abs().max() > 1e-3 and (other[1] - mixed[1]).abs().max() <= 1e-5


def test_sft_learns_on_video_r1s_cot_rows_of_images_and_videos(tiny_world, tmp_path, launcher):
    """The SFT entry point on Video-R1's COT rows (`process` + `solution`), images and videos in its batches: the
    loss falls by more than a third in 20 steps."""
    from rewatch_trl.sft import main, parse_args

    overrides = dict(dataset_name=tiny_world.video_r1_path, dataset_format="video-r1", video_root=tiny_world.root)
    overrides |= dict(captions="", max_steps=20, logging_steps=5, save_strategy="no")
    trainer = main(*parse_args(launcher.recipe_args(tiny_world, tmp_path / "sft", "sft", **overrides)))
    assert set(trainer.train_dataset["data_type"]) == {"image", "video"}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses


def test_infer_answers_about_an_image_file_and_counts_its_tokens(tiny_world, capsys):
    from test_infer_eval import video_flags

    from rewatch_trl.cli import main as cli

    image = tiny_world.root / "images" / "sign_000.png"
    arguments = ["infer", "--model", str(tiny_world.root), "--max-new-tokens", "8", "--json", *video_flags(tiny_world)]
    assert cli(arguments + [str(image), "What word is written?"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image"] == str(image) and result["size"] == [56, 56] and "duration" not in result
    assert result["visual_tokens"] == 4 and "an image and a question" in result["prompt"]
    assert result["prompt_tokens"] > result["visual_tokens"]
    video = tiny_world.video_dir / tiny_world.rows[0]["videos"]
    assert cli(arguments + [str(video), "What color?"]) == 0
    assert json.loads(capsys.readouterr().out)["visual_tokens"] == 16  # 8 frames of 56x56: 4 pairs of 4 tokens


def test_eval_scores_video_r1_rows_by_their_kind(tiny_world, tmp_path):
    from rewatch_trl.eval import evaluate, score
    from rewatch_trl.infer import Predictor

    dataset, _ = load_qa(tiny_world.video_r1_path, video_root=tiny_world.root, format="video-r1", progress=False)
    ocr = next(row for row in dataset if row["problem_type"] == "OCR")
    assert score(ocr, f"<answer>{ocr['answer']}</answer>")["accuracy"] == 1.0
    assert score(ocr, "<answer>something else</answer>")["accuracy"] == 0.0
    assert score(ocr, f"<answer>{ocr['answer']}</answer>")["format"] == 1.0  # no re-watch needed on an image
    subset = dataset.select(range(6))  # one row of each case: images and videos
    predictor = Predictor(str(tiny_world.root), tiny_world.video_settings, tiny_world.root, max_new_tokens=4)
    report = evaluate(predictor, subset, tmp_path / "report.json", progress=False)
    assert report["overall"]["n"] == 6
    assert set(report["by_question_type"]) == {row["problem_type"] for row in subset}


def test_grpo_refuses_image_rows_where_they_are_not_wired_before_loading_a_model(tiny_world, tmp_path):
    from rewatch_trl.configs import GRPOConfig, ScriptArguments
    from rewatch_trl.grpo import images_not_wired
    from rewatch_trl.training import load_train_dataset

    args = ScriptArguments(
        dataset_name=str(tiny_world.video_r1_path), dataset_format="video-r1", video_root=str(tiny_world.root)
    )
    plain = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    assert images_not_wired(plain) is None
    agentic = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", rewatch_mode="agentic")
    why = images_not_wired(agentic)
    assert why == "GRPO does not train them with rewatch_mode: agentic yet"
    with pytest.raises(DataError, match=r"rows are images, and GRPO does not train them with rewatch_mode: agentic"):
        load_train_dataset(args, why)
    dataset, _ = load_train_dataset(args)  # images and videos
    assert set(dataset["data_type"]) == {"image", "video"}


def absolute_rows(world, kinds):
    """One Video-R1 row of each (data type, problem type) in `kinds`, its media path absolute."""
    dataset, _ = load_qa(world.video_r1_path, video_root=world.root, format="video-r1", progress=False)
    rows = []
    for data_type, problem_type in kinds:
        row = next(r for r in dataset if r["data_type"] == data_type and r["problem_type"] == problem_type)
        key = "image_path" if data_type == "image" else "videos"
        rows.append(row | {key: str(world.root / row[key])})
    return rows


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_grpo_passes_read_each_rows_image_and_share_it_exactly(family, family_world, tmp_path, make_trainer):
    """A GRPO batch of an image prompt and a video prompt (G = 2 each): the image's sample is shared by its G rows
    and encoded once a pass; sharing on equals sharing off (log-probs and gradients, the image rows' too); and every
    pass reads the image: another image of the same size moves the image rows' log-probs, not the video rows'."""
    from test_sharing import assert_sharing_exact, logps, rows_of, scored_batch

    from rewatch_trl.sharing import modality

    world = family_world(family)
    rows = absolute_rows(world, [("image", "OCR"), ("video", "numerical")])
    g = 2
    trainer, dataset = make_trainer(
        world, tmp_path, rows=rows, num_generations=g, per_device_train_batch_size=2 * g, beta=0.1, num_iterations=2
    )
    policy, reference = trainer._shared_features
    inputs = scored_batch(trainer, rows_of(dataset, [0, 1], g))
    kinds = [modality(sample) for sample in inputs["video_inputs"]]
    assert sorted(kinds) == ["image"] * g + ["video"] * g
    # the generation and old-policy passes (the policy), the reference pass: the image and the video once each
    assert (policy.videos_encoded, reference.videos_encoded) == (2 * 2, 2)
    assert_sharing_exact(trainer, inputs, g, 0.1)
    kept = inputs["completion_mask"].bool()
    before = logps(trainer, inputs, True)
    write_synthetic_image(tmp_path / "other.png", "green", "OPEN")
    collator = trainer.video_collator
    other = collator([rows[0] | {"image_path": str(tmp_path / "other.png")}])["pixel_values"]
    image_sample = next(sample for sample in inputs["video_inputs"] if modality(sample) == "image")
    assert other.shape == image_sample["pixel_values"].shape
    image_sample["pixel_values"] = other
    after = logps(trainer, inputs, True)
    image_rows = torch.tensor([kind == "image" for kind in kinds])
    moved = (after - before).abs().masked_fill(~kept, 0).amax(dim=1)
    assert moved[image_rows].min() > 1e-3 and moved[~image_rows].max() <= 1e-6


def trainer_positions(trainer, tokens: list[int], sample: dict) -> torch.Tensor:
    """The M-RoPE positions the trainer gives a prompt (its family's rule) with its image or video."""
    from rewatch_trl.collator import token_types
    from rewatch_trl.positions import rope_index

    prompt, config = torch.tensor([tokens]), trainer.model.config
    grids = {key: sample[key] for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if key in sample}
    if config.model_type == "qwen2_5_vl":
        return rope_index(config, prompt, **grids)[0][:, 0]
    grids.pop("second_per_grid_ts", None)
    return trainer.model.model.get_rope_index(prompt, token_types(prompt, config), **grids)[0][:, 0]


@pytest.mark.vllm
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_colocated_vllm_renders_an_image_prompt_as_the_trainer_and_samples_its_log_probs(
    family, family_world, tmp_path, make_trainer, vllm_positions
):
    """TRL's engine on a batch of an image prompt and a video prompt: vLLM expands the collapsed prompt to exactly
    the trainer's ids with the trainer's M-RoPE positions, and two GRPO steps (lr 5e-2, weights synced) sample with
    the trainer's log-probs to 1e-5 in fp32. The control: the image's pads left expanded give vLLM other ids."""
    from vllm import SamplingParams
    from vllm.distributed.parallel_state import destroy_model_parallel

    from rewatch_trl.sharing import modality
    from rewatch_trl.vllm_video import collapse_placeholders

    destroy_model_parallel()
    world = family_world(family)
    rows = absolute_rows(world, [("image", "OCR"), ("video", "numerical")])
    trainer, dataset = make_trainer(
        world, tmp_path, rows=rows, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024, learning_rate=5e-2
    )
    llm = trainer.vllm_generation.llm
    batch = [dataset[0], dataset[0], dataset[1], dataset[1]]
    generation = trainer.generation = GenerationBatch()
    ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in batch])
    samples, media = generation.samples, generation.videos
    assert [modality(sample) for sample in samples] == ["image", "image", "video", "video"]
    vllm_positions.clear()
    with llm.serving(media):
        outputs = llm.generate([{"prompt_token_ids": row} for row in ids], SamplingParams(max_tokens=1))
    assert [output.prompt_token_ids for output in outputs] == ids
    assert {tuple(tokens) for tokens, _ in vllm_positions} == {tuple(row) for row in ids}
    for tokens, positions in vllm_positions:
        row = ids.index(tokens)
        assert torch.equal(positions, trainer_positions(trainer, tokens, samples[row])), row
    # the control: the image's pads not collapsed (as for a video alone) are not the ids vLLM renders the trainer's
    config = trainer.model.config
    uncollapsed = collapse_placeholders(ids[0], config.video_token_id, config.vision_start_token_id)
    assert uncollapsed.count(config.image_token_id) > 1
    try:
        control = llm.llm.generate(
            [{"prompt_token_ids": uncollapsed, "multi_modal_data": {"image": media[0].image}}],
            SamplingParams(max_tokens=1),
        )[0].prompt_token_ids
    except ValueError as error:  # vLLM may refuse placeholders that do not match its image
        control = str(error)
    assert control != ids[0]
    trainer.train()
    differences = [
        entry["sampling/sampling_logp_difference/max"]
        for entry in trainer.state.log_history
        if "sampling/sampling_logp_difference/max" in entry
    ]
    images = [entry["data/image_rows"] for entry in trainer.state.log_history if "data/image_rows" in entry]
    assert len(differences) == 2 and max(differences) <= 1e-5, differences
    assert sum(images) > 0


def test_the_summary_shows_a_reward_that_applied_to_no_row_of_a_step(tmp_path):
    """TRL logs None for a reward none of a step's rows got (the grounding reward on a step of image rows, the
    observation reward without captions): `rewatch-trl summary` shows it as "-", and the others as numbers."""
    from rewatch_trl.cli import reward_summary

    history = [
        {"step": 1, "reward": 1.5, "rewards/temporal_grounding_reward/mean": None, "rewards/format_reward/mean": 1.0},
        {"step": 2, "reward": 0.5, "rewards/temporal_grounding_reward/mean": 0.25, "rewards/format_reward/mean": 0.5},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    lines = reward_summary(tmp_path).splitlines()
    assert lines[1].split() == ["1", "1.500", "1.000", "-"]
    assert lines[2].split() == ["2", "0.500", "0.500", "0.250"]
    assert lines[-1] == "mean reward: first 1 steps 1.500 -> last 1 steps 0.500"
