"""VideoGRPOTrainer sees the video in every pass, on the tiny world."""

import pytest
import torch
from trl import GRPOTrainer

from rewatch_trl.collator import split_video_inputs, video_forward_kwargs
from rewatch_trl.families import FAMILIES
from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.tiny import TINY_VIDEO_SETTINGS
from rewatch_trl.video import sample_video
from rewatch_trl.vllm_video import VideoLLM, collapse_placeholders, vllm_video_requests


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def direct_logps(model, collator, rows, completion_ids, completion_mask, pixel_transform=None):
    """Log-probs of the completions from a plain forward of the model with each row's video."""
    batch = collator(rows)
    if pixel_transform is not None:
        batch["pixel_values_videos"] = pixel_transform(batch["pixel_values_videos"])
    ids = torch.cat([batch["input_ids"], completion_ids], 1)
    mask = torch.cat([batch["attention_mask"], completion_mask], 1)
    mm = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion_ids)], 1)
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            mm_token_type_ids=mm,
            pixel_values_videos=batch["pixel_values_videos"],
            video_grid_thw=batch["video_grid_thw"],
            **{key: batch[key] for key in ("second_per_grid_ts",) if key in batch},  # a family that has it
        ).logits
    k = completion_ids.size(1)
    logps = logits[:, -k - 1 : -1].float().log_softmax(-1)
    return logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_logp_pass_sees_the_video(family, family_world, tmp_path, make_trainer):
    world = family_world(family)
    # with the sharing of each family on (Qwen3.5: its vision sharing only)
    trainer, dataset = make_trainer(world, tmp_path, beta=0.1, num_iterations=2)
    assert trainer.args.share_video_features
    assert trainer.args.share_prompt_prefix == FAMILIES[family].supports("share_prompt_prefix")
    rows = [dataset[i] for i in (0, 0, 1, 1)]  # two prompts, G = 2, of different lengths (left padding)
    trainer.model.train()
    output = trainer._generate_and_score_completions(rows)
    completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
    collator = trainer.video_collator
    assert torch.equal(output["prompt_ids"], collator(rows)["input_ids"])
    expected = direct_logps(trainer.model, collator, rows, completion_ids, completion_mask)
    kept = completion_mask.bool()
    for key, model in [("old_per_token_logps", trainer.model), ("ref_per_token_logps", trainer.ref_model)]:
        reference = (
            expected
            if model is trainer.model
            else direct_logps(model, collator, rows, completion_ids, completion_mask)
        )
        assert (output[key][kept] - reference[kept]).abs().max() <= 1e-5, key
    # other frames, other log-probs: the video is really used
    flipped = direct_logps(trainer.model, collator, rows, completion_ids, completion_mask, lambda p: p.flip(0))
    assert (flipped[kept] - expected[kept]).abs().max() > 1e-4
    # and what stock TRL computes for the same sequences (no video): not the model's log-probs with the video
    ids = torch.cat([output["prompt_ids"], completion_ids], 1)
    mask = torch.cat([output["prompt_mask"], completion_mask], 1)
    with torch.no_grad():
        try:
            stock, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, trainer.model, ids, mask, completion_ids.size(1)
            )
        except Exception:  # stock may even fail outright on video tokens without features; either way it is wrong
            stock = None
    assert stock is None or (stock[kept] - expected[kept]).abs().max() > 1e-3


def test_loss_pass_log_probs_follow_the_shuffled_batch(tiny_world, tmp_path, make_trainer):
    # questions tagged with their id, so that a sample's prompt text tells which row (and video) it came from
    tagged = [row | {"problem": f"[{row['problem_id']}] {row['problem']}"} for row in tiny_world.rows]
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, tagged, steps_per_generation=2, gradient_accumulation_steps=1
    )
    trainer.model.train()
    seen = []
    original = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result[0].detach())
        return result

    trainer._get_per_token_logps_and_entropies = spy
    generation_batch = [dataset[i] for i in (0, 0, 1, 1, 2, 2, 3, 3)]
    inputs = trainer._prepare_inputs(generation_batch)  # generates, shuffles and splits into 2 batches of 4
    seen.clear()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read by the loss
    trainer._compute_loss(trainer.model, inputs)
    (policy_logps,) = seen
    # each sample of the shuffled half still carries its own video: rebuild the rows from the prompt tokens
    texts = trainer.processing_class.batch_decode(inputs["prompt_ids"], skip_special_tokens=False)
    rows = [next(r for r in dataset if f"[{r['problem_id']}]" in t) for t in texts]
    for row, video in zip(rows, inputs["video_inputs"], strict=True):
        expected = split_video_inputs(trainer.video_collator([row]))[0]["pixel_values_videos"]
        assert torch.equal(video["pixel_values_videos"], expected)
    expected = direct_logps(
        trainer.model, trainer.video_collator, rows, inputs["completion_ids"], inputs["completion_mask"]
    )
    kept = inputs["completion_mask"].bool()
    assert (policy_logps[kept] - expected[kept]).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_two_grpo_steps_learn_and_log_rewards(family, family_world, tmp_path, make_trainer):
    world = family_world(family)
    trainer, _ = make_trainer(world, tmp_path, save_strategy="steps", save_steps=2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/letter_share/mean" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert 0.0 < entry["rewards/letter_share/mean"] <= 1.0
        assert entry["rewards/react_format_reward/mean"] == 0.0  # random text is never a ReAct trace
        assert entry["reward_std"] > 0  # so the advantages are non-zero ...
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any("lm_head" in n for n in changed)  # ... and the policy moved
    assert any("visual" in n for n in changed)  # the vision tower got gradients: the loss saw the video
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    assert trainer.state.global_step == 2


def test_video_tokens_are_never_generated(tiny_world, tmp_path, make_trainer):
    trainer, _ = make_trainer(tiny_world, tmp_path)
    config = trainer.model.config
    suppressed = set(trainer.generation_config.suppress_tokens)
    assert {config.video_token_id, config.image_token_id, config.vision_start_token_id} <= suppressed


def test_vllm_requests_carry_the_loss_pass_frames(tiny_world, tmp_path, make_trainer):
    trainer, dataset = make_trainer(tiny_world, tmp_path)
    rows = [dataset[0], dataset[0], dataset[2], dataset[2]]
    generation = trainer.generation = GenerationBatch()
    prompt_ids, _, fields = trainer._tokenize_prompts([row["prompt"] for row in rows])
    video_token = trainer.model.config.video_token_id
    requests = vllm_video_requests([{"prompt_token_ids": ids} for ids in prompt_ids], generation.videos, video_token)
    loss_inputs = generation.samples
    processor = trainer.processing_class
    for request, ids, loss_video in zip(requests, prompt_ids, loss_inputs, strict=True):
        # one placeholder a video: vLLM expands it to the video's 16 tokens itself
        assert ids.count(video_token) == 16 and request["prompt_token_ids"].count(video_token) == 1
        first = ids.index(video_token)
        assert request["prompt_token_ids"] == ids[: first + 1] + ids[first + 16 :]
        frames, metadata = request["multi_modal_data"]["video"]
        assert request["mm_processor_kwargs"] == {
            "do_sample_frames": False,
            "do_resize": False,
            "cap_pixels_per_frame": True,
        }
        # what vLLM's copy of the processor makes of these frames is exactly the loss pass's pixels and timing
        again = processor.video_processor(
            videos=[frames], video_metadata=[metadata], return_tensors="pt", **request["mm_processor_kwargs"]
        )
        assert torch.equal(again["pixel_values_videos"], loss_video["pixel_values_videos"])
        assert torch.equal(again["video_grid_thw"], loss_video["video_grid_thw"])
        sampled_fps = len(metadata["frames_indices"]) / metadata["total_num_frames"] * metadata["fps"]
        assert processor.video_processor.temporal_patch_size / sampled_fps == pytest.approx(
            loss_video["second_per_grid_ts"].item()
        )
    with pytest.raises(ValueError, match="2 vLLM requests for 4 videos"):
        vllm_video_requests(requests[:2], generation.videos, video_token)


def test_vllm_gets_one_request_per_prompt_for_its_g_completions(tiny_world, tmp_path, make_trainer):
    import copy
    from types import SimpleNamespace

    class Params(SimpleNamespace):  # vLLM's SamplingParams as TRL sets it: n = 1, cloned per request group
        def clone(self):
            return copy.deepcopy(self)

    class FakeLLM:
        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            self.calls = list(zip(prompts, sampling_params, strict=True))
            return [
                SimpleNamespace(
                    prompt_token_ids=p["prompt_token_ids"],
                    outputs=[SimpleNamespace(token_ids=[k, len(p["prompt_token_ids"])]) for k in range(params.n)],
                )
                for p, params in self.calls
            ]

    trainer, dataset = make_trainer(tiny_world, tmp_path)
    rows = [dataset[0], dataset[2], dataset[0], dataset[0], dataset[2], dataset[1]]
    generation = trainer.generation = GenerationBatch()
    prompt_ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    llm = VideoLLM(FakeLLM(), trainer.model.config)
    params = Params(n=1, logit_bias=None)
    with llm.serving(generation.videos):
        outputs = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params, use_tqdm=False
        )
    calls = llm.llm.calls
    prompt_ids = [collapse_placeholders(ids, trainer.model.config.video_token_id) for ids in prompt_ids]
    # three distinct prompts: three requests, for 3, 2 and 1 completions, each with its video and the banned tokens
    assert [p["prompt_token_ids"] for p, _ in calls] == [prompt_ids[0], prompt_ids[1], prompt_ids[5]]
    assert [params.n for _, params in calls] == [3, 2, 1]
    assert all("video" in p["multi_modal_data"] for p, _ in calls)
    assert all(params.logit_bias[trainer._vision_config.video_token_id] == -100.0 for _, params in calls)
    # one output per row, in TRL's order, each holding one completion of its own prompt, none given twice
    assert len(outputs) == len(rows)
    assert [o.prompt_token_ids for o in outputs] == prompt_ids
    assert all(len(o.outputs) == 1 for o in outputs)
    assert [o.outputs[0].token_ids for o in outputs] == [
        [0, len(prompt_ids[0])], [0, len(prompt_ids[1])], [1, len(prompt_ids[0])], [2, len(prompt_ids[0])],
        [1, len(prompt_ids[1])], [0, len(prompt_ids[5])],
    ]  # fmt: skip


def test_video_forward_kwargs_mark_video_tokens(tiny_world, tmp_path, make_trainer):
    trainer, dataset = make_trainer(tiny_world, tmp_path)
    batch = trainer.video_collator([dataset[0], dataset[1]])
    kwargs = video_forward_kwargs(split_video_inputs(batch), batch["input_ids"], trainer.model.config)
    assert torch.equal(kwargs["mm_token_type_ids"], batch["mm_token_type_ids"])
    assert torch.equal(kwargs["pixel_values_videos"], batch["pixel_values_videos"])


def test_dataloader_workers_decode_the_videos(tiny_world, tmp_path, make_trainer):
    seen = []

    def columns(completions, **kwargs):
        seen.append(sorted(kwargs))
        return [0.0] * len(completions)

    # 4 steps of 2 prompts: every row of the world, whose videos hold more than one question each
    trainer, _ = make_trainer(tiny_world, tmp_path, dataloader_num_workers=1, max_steps=4)
    arrived = []
    keep = trainer.video_collator.keep
    trainer.video_collator.keep = lambda videos: arrived.append(videos) or keep(videos)
    trainer.reward_funcs.append(columns)
    trainer.reward_func_names.append("columns")
    trainer.reward_processing_classes.append(None)
    trainer.reward_weights = torch.cat([trainer.reward_weights, torch.ones(1)])
    trainer.train()
    assert trainer.state.global_step == 4
    cache = trainer.video_collator.cache
    assert cache.decodes == 0 and len(cache._items) > 0  # every frame came from the worker
    # each video's frames crossed over once; its later rows came without them
    sent = [video.path for videos in arrived for video in {id(v): v for v in videos if v is not None}.values()]
    assert len(sent) == len(set(sent)) == len(cache._items)
    assert any(video is None for videos in arrived for video in videos)
    assert seen and all("sampled_video" not in keys and "answer" in keys for keys in seen)
    # each training row's video decoded in the worker equals the same video decoded here
    row = trainer.train_dataset[0]
    (video,) = trainer.video_collator.decode_ahead({key: [value] for key, value in row.items()})["sampled_video"]
    assert torch.equal(video.frames, sample_video(trainer.video_collator.video_path(row), TINY_VIDEO_SETTINGS).frames)


def test_a_worker_sends_each_video_once(tiny_world, tmp_path, make_trainer):
    trainer, dataset = make_trainer(tiny_world, tmp_path)
    collator = trainer.video_collator
    rows = [dataset[i] for i in range(len(dataset))]
    by_video = {}
    for row in rows:
        by_video.setdefault(collator.video_path(row), []).append(row)
    assert len(by_video) >= 2 and any(len(same) > 1 for same in by_video.values())
    first, second = list(by_video.values())[:2]

    def ahead(batch_rows):
        return collator.decode_ahead({key: [row[key] for row in batch_rows] for key in batch_rows[0]})["sampled_video"]

    sent = ahead(first[:1] * 3)  # the G copies of one prompt: one object, sent
    assert sent[0] is not None and sent[0] is sent[1] is sent[2]
    again, other = ahead(first[-1:] + second[:1])
    assert again is None and other.path == collator.video_path(second[0]) != sent[0].path
    # the training process keeps what arrives and skips the rest
    collator.cache.clear()
    decodes = collator.cache.decodes
    collator.keep(sent + [None])
    assert len(collator.cache._items) == 1
    assert collator.videos(first[:1])[0] is sent[0] and collator.cache.decodes == decodes


@pytest.mark.parametrize("key", ["tools", "environment_factory"])
def test_tools_and_environments_are_refused_by_name(tiny_world, tmp_path, key, make_trainer):
    def lookup(query: str) -> str:
        """Look something up.

        Args:
            query: what to look up.
        """
        return query

    value = [lookup] if key == "tools" else (lambda: object())
    with pytest.raises(NotImplementedError, match=f"does not take `{key}`"):
        make_trainer(tiny_world, tmp_path, **{"__init__": {key: value}})


def test_chat_template_kwargs_reach_the_prompts(tiny_world, tmp_path, make_trainer):
    trainer, dataset = make_trainer(tiny_world, tmp_path, chat_template_kwargs={"reasoning": "brief"})
    processor = trainer.processing_class
    processor.chat_template = processor.chat_template + "{% if reasoning %}reasoning: {{ reasoning }}{% endif %}"
    trainer.generation = GenerationBatch()
    ids, _, _ = trainer._tokenize_prompts([dataset[0]["prompt"]])
    assert processor.tokenizer.decode(ids[0]).endswith("reasoning: brief")


def test_one_processor_call_per_video_per_step(tiny_world, tmp_path, make_trainer, monkeypatch):
    """A GRPO step (generation, old-policy, reference and policy passes: beta > 0, two iterations) sends each distinct
    video of its batch through the processor once: the later passes reuse the processor's tensors."""
    trainer, dataset = make_trainer(tiny_world, tmp_path, max_steps=1, beta=0.1, num_iterations=2)
    processor_class = type(trainer.processing_class)
    calls = []
    call = processor_class.__call__

    def counted(self, *args, videos=None, **kwargs):
        calls.append([id(frames) for frames in videos or []])
        return call(self, *args, videos=videos, **kwargs)

    monkeypatch.setattr(processor_class, "__call__", counted)
    trainer.train()
    assert trainer.state.global_step == 1
    videos = [frames for call_videos in calls for frames in call_videos]
    # per_device_train_batch_size 4, G = 2: two prompts, two distinct videos in TRL's generation batch
    assert len(calls) == 1 and len(videos) == 2, calls  # not G = 2 copies of each, nor once per pass
