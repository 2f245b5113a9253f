"""The family table (`rewatch_trl/families.py`): a tiny world of each family, its frames in the family's pixel unit,
the collator's inputs as its processor makes them, its model's own positions; the trainers say which they train."""

import pytest
import torch

from rewatch_trl.families import FAMILIES
from rewatch_trl.generation_batch import GenerationBatch


def test_an_unknown_family_is_an_error_naming_the_known(tmp_path):
    from rewatch_trl.families import family_of
    from rewatch_trl.tiny import build_tiny_world

    with pytest.raises(ValueError, match="unknown model family .llava.; rewatch-trl knows qwen2_5_vl, qwen3_vl, "):
        family_of({"model_type": "llava"})
    with pytest.raises(ValueError, match="unknown model family 'qwen9'"):
        build_tiny_world(tmp_path, family="qwen9")


def test_each_familys_frames_and_video_tokens(qwen3_world, tiny_world):
    """Qwen3-VL's frames are resized in 32-px units (Qwen2.5-VL's in 28): 64x64 against 56x56, 4 tokens a frame
    each; its processor writes each frame pair's time into the text and returns no `second_per_grid_ts`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator, split_video_inputs
    from rewatch_trl.video import VideoCache

    seen = {}
    for world in (tiny_world, qwen3_world):
        processor = AutoProcessor.from_pretrained(world.root)
        model = AutoModelForImageTextToText.from_pretrained(world.root).eval()
        assert model.config.model_type == world.family
        collator = VideoCollator(processor, world.video_settings, world.video_dir, VideoCache())
        (video,) = collator.videos(world.rows[:1])
        batch = collator(world.rows[:1])
        config = model.config
        tokens = int((batch["input_ids"] == config.video_token_id).sum())
        grid = batch["video_grid_thw"][0].tolist()
        seen[world.family] = (tuple(video.frames.shape), tokens, "second_per_grid_ts" in batch)
        assert tokens == grid[0] * grid[1] * grid[2] // 4  # the 2x2 merge
        (sample,) = split_video_inputs(batch)
        assert ("second_per_grid_ts" in sample) == (world.family == "qwen2_5_vl")
        with torch.no_grad():
            logits = model(**batch).logits
            generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
        assert torch.isfinite(logits).all() and generated.shape[1] == batch["input_ids"].shape[1] + 4
        if world.family == "qwen3_vl":
            text = processor.tokenizer.decode(batch["input_ids"][0])
            assert text.count(" seconds>") == grid[0]  # one timestamp a frame pair
    assert seen == {"qwen2_5_vl": ((8, 3, 56, 56), 16, True), "qwen3_vl": ((8, 3, 64, 64), 16, False)}


def test_qwen3_keeps_transformers_positions_and_qwen2_5_gets_the_original_rule(qwen3_world, tiny_world):
    from transformers import AutoModelForImageTextToText

    from rewatch_trl.positions import use_original_rope

    for world, replaced in ((tiny_world, True), (qwen3_world, False)):
        model = use_original_rope(AutoModelForImageTextToText.from_pretrained(world.root))
        assert ("get_rope_index" in vars(model.model)) == replaced


def test_a_path_not_wired_for_a_family_says_why(family_world, tmp_path, make_trainer, caplog):
    """Qwen3.5's prompt prefix is a recurrent state: its prefix sharing is switched off with the reason logged (its
    vision sharing kept), and the path is refused by name with that reason where it is asked for."""
    import logging

    with caplog.at_level(logging.WARNING, logger="rewatch_trl.trainer"):
        trainer, _ = make_trainer(family_world("qwen3_5"), tmp_path)
    assert trainer.args.share_video_features and not trainer.args.share_prompt_prefix
    messages = [record.getMessage() for record in caplog.records]
    assert any("share_prompt_prefix is off" in m and "Gated DeltaNet" in m for m in messages), messages
    with pytest.raises(NotImplementedError, match="share_prompt_prefix does not run qwen3_5 models yet: its Gated"):
        FAMILIES["qwen3_5"].check("share_prompt_prefix")
    with pytest.raises(ValueError, match="unknown path"):
        FAMILIES["qwen3_5"].supports("share_everything")


def test_the_tiny_command_builds_a_world_of_the_family(tmp_path, capsys):
    import json

    from rewatch_trl.cli import main

    assert main(["tiny", "--family", "qwen3_vl", "--num-videos", "1", "--out", str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "w" / "config.json").read_text())["model_type"] == "qwen3_vl"
    # the keys that point the tiny recipe at it, frames in its 32-px unit (two units a side)
    printed = capsys.readouterr().out
    assert f"--model_name_or_path {tmp_path / 'w'} " in printed and "--video_max_pixels 4096 " in printed


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_sft_learns_on_each_qwen3_family(family, family_world, tmp_path, launcher):
    """The SFT cold start on the tiny world of each Qwen3 family (frames of 64x64 px, their unit): the loss at least
    halves."""
    from rewatch_trl.sft import main, parse_args

    world = family_world(family)
    args = parse_args(launcher.recipe_args(world, tmp_path / "sft", "sft", max_steps=20, logging_steps=5))
    assert args[3].video_max_pixels == 64 * 64  # the world's frames (`recipe_keys`), not the recipe's 56x56
    trainer = main(*args)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] <= losses[0] / 2, losses
    assert trainer.model.config.model_type == family


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_a_left_padded_batch_scores_each_row_as_alone(family, family_world):
    """TRL pads prompts on the left: every family's model (Qwen3.5's linear-attention layers too) gives a padded
    row the logits of that row alone; the control, the padding attended to, moves them."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.positions import use_original_rope
    from rewatch_trl.video import VideoCache

    world = family_world(family)
    processor = AutoProcessor.from_pretrained(world.root)
    model = use_original_rope(AutoModelForImageTextToText.from_pretrained(world.root).eval())
    collator = VideoCollator(processor, world.video_settings, world.video_dir, VideoCache())
    rows = world.rows[:2]  # a multiple-choice and an open-ended question: different lengths
    batch = collator(rows)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 2
    with torch.no_grad():
        padded = model(**batch).logits[:, -1]
        alone = torch.cat([model(**collator([row])).logits[:, -1] for row in rows])
        attended = model(**(batch | {"attention_mask": torch.ones_like(batch["attention_mask"])})).logits[:, -1]
    assert (padded - alone).abs().max() <= 1e-5
    assert (attended - alone).abs().max() > 1e-3


@pytest.mark.vllm
@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_qwen3_on_colocated_vllm_renders_the_trainer_ids_and_samples_its_log_probs(
    family, family_world, tmp_path, make_trainer, vllm_positions
):
    """TRL's engine on the tiny Qwen3-VL worlds (dense and MoE) and Qwen3.5's: vLLM expands the collapsed prompt to
    exactly the trainer's ids (timestamps and frame-pair blocks) and gives them the trainer's M-RoPE positions
    (transformers' rule), and two GRPO steps (lr 5e-2, the weights synced after the first) sample with the trainer's
    log-probs: to 1e-5 in fp32; Qwen3.5's engine runs in bf16 (`Family.vllm_dtype`): 1.2e-3 on the first step, 8.3e-3
    on the second (a stale engine there, unsynced after a step at lr 5e-2: 1.6). The controls: the per-run collapse gives vLLM other ids; text positions
    are not the video's."""
    from vllm import SamplingParams
    from vllm.distributed.parallel_state import destroy_model_parallel

    from rewatch_trl.collator import PROCESSOR_VIDEO_KWARGS, token_types
    from rewatch_trl.vllm_video import collapse_placeholders

    # an earlier engine of this test process (a dense model) set vLLM's parallel groups up without the experts' one,
    # which an MoE engine would then miss (a user's run builds one engine a process)
    destroy_model_parallel()
    trainer, dataset = make_trainer(
        family_world(family),
        tmp_path,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=1024,
        learning_rate=5e-2,
    )
    llm = trainer.vllm_generation.llm
    engine_dtype = FAMILIES[family].vllm_dtype or "float32"
    assert llm.llm_engine.model_config.dtype == getattr(torch, engine_dtype)
    rows = [dataset[0], dataset[0], dataset[1], dataset[1]]
    generation = trainer.generation = GenerationBatch()
    ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    videos = generation.videos
    vllm_positions.clear()
    with llm.serving(videos):
        outputs = llm.generate([{"prompt_token_ids": row} for row in ids], SamplingParams(max_tokens=1))
    assert [output.prompt_token_ids for output in outputs] == ids
    assert vllm_positions
    for tokens, positions in vllm_positions:
        row = ids.index(tokens)
        prompt = torch.tensor([tokens])
        expected, _ = trainer.model.model.get_rope_index(
            prompt,
            token_types(prompt, trainer.model.config),
            video_grid_thw=generation.samples[row]["video_grid_thw"],
        )
        assert torch.equal(positions, expected[:, 0]), row
        assert not torch.equal(positions[0], torch.arange(len(tokens)))  # the video's positions are not the text's
    per_run = llm.llm.generate(
        [
            {
                "prompt_token_ids": collapse_placeholders(ids[0], trainer.model.config.video_token_id),
                "multi_modal_data": {"video": (videos[0].frames, videos[0].metadata())},
                "mm_processor_kwargs": dict(PROCESSOR_VIDEO_KWARGS),
            }
        ],
        SamplingParams(max_tokens=1),
    )
    assert per_run[0].prompt_token_ids != ids[0]
    trainer.train()
    differences = [
        entry["sampling/sampling_logp_difference/max"]
        for entry in trainer.state.log_history
        if "sampling/sampling_logp_difference/max" in entry
    ]
    print(f"{family} sampling_logp_difference/max per step (vLLM vs trainer): {differences}")
    bound = 1e-5 if engine_dtype == "float32" else 3e-2
    assert len(differences) == 2 and max(differences) <= bound, differences


def test_an_moe_is_saved_in_the_published_layout(family_world, tmp_path):
    """transformers 5.17 saves Qwen3-VL-MoE's fused experts as it holds them, which vLLM and transformers' own
    ZeRO-3 loader read swapped: a run's saved model (and the tiny world) holds the published layout, which
    transformers loads back to the same weights; publishing twice changes nothing."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from rewatch_trl.training import save_published

    world = family_world("qwen3_vl_moe")
    model = AutoModelForImageTextToText.from_pretrained(world.root)
    held = dict(model.named_parameters())
    saved = load_file(world.root / "model.safetensors")
    experts = [name for name in held if name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"))]
    assert len(experts) == 4  # 2 layers
    for name in experts:
        assert saved[name].shape != held[name].shape and torch.equal(saved[name].transpose(-1, -2), held[name])
    model.save_pretrained(tmp_path)
    assert torch.equal(
        load_file(tmp_path / "model.safetensors")[experts[0]], held[experts[0]]
    )  # as transformers saves
    save_published(tmp_path, model)
    save_published(tmp_path, model)
    again = load_file(tmp_path / "model.safetensors")
    assert again.keys() == saved.keys() and all(torch.equal(again[name], saved[name]) for name in saved)


@pytest.mark.vllm
def test_infer_on_vllm_answers_an_moe_as_transformers_does(family_world):
    """`infer --backend vllm` on a saved Qwen3-VL-MoE (the published experts' layout): vLLM reads the family's
    `norm_topk_prob`, which transformers' config drops, and its greedy tokens are transformers'. The control: the
    engine without the family's overrides routes the experts otherwise and answers other tokens."""
    from vllm.distributed.parallel_state import destroy_model_parallel

    from rewatch_trl.infer import Predictor

    world = family_world("qwen3_vl_moe")
    settings = world.video_settings
    rows = world.rows[:2]
    local = Predictor(str(world.root), settings, world.video_dir, max_new_tokens=24, dtype="float32")
    expected = [local.processor.tokenizer(text)["input_ids"] for text in local.generate(rows)]
    answers = {}
    for overrides in (True, False):
        destroy_model_parallel()
        served = Predictor(
            str(world.root),
            settings,
            world.video_dir,
            max_new_tokens=24,
            backend="vllm",
            dtype="float32",
            vllm_kwargs={"enforce_eager": True, "max_model_len": 1024}
            | ({} if overrides else {"hf_overrides": {"text_config": {"norm_topk_prob": False}}}),
        )
        answers[overrides] = [served.processor.tokenizer(text)["input_ids"] for text in served.generate(rows)]
        del served
    assert answers[True] == expected
    assert answers[False] != expected


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "qwen3_5"])
def test_server_mode_refuses_the_families_it_has_not_run_by_name(family, family_world, tmp_path, make_trainer):
    """The trainer refuses `vllm_mode: server` for the families not run against a server, naming the family and
    why, before it reaches for the server."""
    with pytest.raises(NotImplementedError, match=f"vllm_mode='server' does not run {family} models yet: "):
        make_trainer(family_world(family), tmp_path, use_vllm=True, vllm_mode="server", vllm_server_port=1)
