"""Agentic re-watching: the clip an action names is sampled, shown, masked out of the loss, and scored exactly."""

import functools
import json

import pytest
import torch

from rewatch_trl.agentic import AgenticRollouts
from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.positions import rope_index
from rewatch_trl.rewatch import CLIP_TEXT, RewatchSettings, requested_clip
from rewatch_trl.tiny import TINY_VIDEO_SETTINGS
from rewatch_trl.video import sample_clip


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SCRIPT = "<action>Re-watch [00:02-00:04]</action>"
TINY_REWATCH = dict(
    rewatch_mode="agentic", rewatch_fps=4.0, rewatch_max_frames=8, rewatch_max_pixels=3136, max_rewatches=2
)


def test_requested_clip_reads_the_last_action():
    assert requested_clip("<action>[00:01-00:02]</action> x <action>Re-watch [00:03-00:05]</action>", 8) == (3, 5)
    assert requested_clip("<action>at 00:05</action>", 8) == (4.0, 6.0)
    assert requested_clip("<action>Re-watch [00:06-00:20]</action>", 8) == (6.0, 8)  # cut at the end
    assert "past the end" in requested_clip("<action>Re-watch [00:09-00:10]</action>", 8)
    assert "names no clip" in requested_clip("<action>look again</action>", 8)
    assert "names no clip" in requested_clip("<action>Re-watch [00:75-00:80]</action>", 8)
    assert "before it starts" in requested_clip("<action>Re-watch [00:05-00:03]</action>", 8)


def test_settings_check_their_fields():
    with pytest.raises(ValueError, match="rewatch_mode"):
        RewatchSettings(rewatch_mode="real")
    with pytest.raises(ValueError, match="rewatch_fps"):
        RewatchSettings(rewatch_fps=0)
    clip = RewatchSettings(**TINY_REWATCH).clip_settings(TINY_VIDEO_SETTINGS)
    assert (clip.video_fps, clip.video_max_frames, clip.video_max_pixels) == (4.0, 8, 3136)


@pytest.fixture
def rewatcher(tiny_world):
    from transformers import AutoProcessor

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.rewatch import Rewatcher
    from rewatch_trl.video import VideoCache

    processor = AutoProcessor.from_pretrained(tiny_world.root)
    collator = VideoCollator(processor, TINY_VIDEO_SETTINGS, tiny_world.video_dir, VideoCache())
    return Rewatcher(collator, RewatchSettings(**TINY_REWATCH), [processor.tokenizer.eos_token_id])


def run_rollout(rewatcher, tiny_world, turns, max_tokens):
    """A rollout of one prompt whose generation rounds write `turns` (texts, in order); the calls it made."""
    tokenizer = rewatcher.tokenizer
    video = rewatcher.collator.videos(tiny_world.rows[:1])[0]
    calls = []

    def generate(sequences, videos, samples, stop, budget):
        calls.append((stop, budget, len(videos[0])))
        text = turns[len(calls) - 1]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [(ids + ([tokenizer.eos_token_id] if text.endswith("</answer>") else []), None)]

    (completion,) = rewatcher.rollout([[1, 2, 3]], [video], [{}], generate, max_tokens)
    return completion, calls


def test_rollout_serves_actions_until_max_rewatches(rewatcher, tiny_world):
    from rewatch_trl.rewatch import ACTION_END

    late = "<action>Re-watch [00:00-00:02]</action> and more text <answer>A</answer>"
    completion, calls = run_rollout(rewatcher, tiny_world, [SCRIPT, "<action>at 00:06</action>", late], 200)
    # two actions served (max_rewatches = 2), the third round runs to the end without stopping at its action
    assert [(stop, videos) for stop, _, videos in calls] == [([ACTION_END], 1), ([ACTION_END], 2), (None, 3)]
    assert completion.rewatched == [{"start": 2.0, "end": 4.0, "frames": 8}, {"start": 5.0, "end": 7.0, "frames": 8}]
    assert completion.done and completion.ids[-1] == rewatcher.tokenizer.eos_token_id
    text = rewatcher.tokenizer.decode(completion.model_ids())
    assert text == SCRIPT + "<action>at 00:06</action>" + late + rewatcher.tokenizer.eos_token
    assert completion.model_mask.count(0) == 2 * 18  # two clips of 16 video tokens + their start and end


def test_rollout_replies_to_an_action_outside_the_video(rewatcher, tiny_world):
    completion, calls = run_rollout(
        rewatcher, tiny_world, ["<action>Re-watch [00:12-00:14]</action>", "<answer>B</answer>"], 200
    )
    assert completion.rewatched == [] and completion.actions_served == 1
    inserted = [t for t, m in zip(completion.ids, completion.model_mask, strict=True) if not m]
    assert rewatcher.tokenizer.decode(inserted) == "(no re-watch: 00:12 is past the end of the video, 00:08)"
    assert calls[1][2] == 1  # no clip was added to the sequence's videos


def test_rollout_ends_when_the_last_action_fills_the_completion(rewatcher, tiny_world):
    # max_rewatches = 2: the second clip uses the last action and the last token; no round follows
    script = len(rewatcher.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"])
    completion, calls = run_rollout(rewatcher, tiny_world, [SCRIPT, SCRIPT], 2 * (script + 18))
    assert len(calls) == 2 and len(completion.rewatched) == 2 and completion.done


def test_rollout_ends_when_a_clip_fills_the_completion(rewatcher, tiny_world):
    script = len(rewatcher.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"])
    completion, calls = run_rollout(rewatcher, tiny_world, [SCRIPT], script + 18)
    assert len(calls) == 1 and completion.done and len(completion.ids) == script + 18
    assert completion.model_mask == [1] * script + [0] * 18
    # one token short of the clip: the reply that it does not fit, cut to the budget
    completion, calls = run_rollout(rewatcher, tiny_world, [SCRIPT], script + 17)
    assert completion.rewatched == [] and completion.done and len(completion.ids) == script + 17


def clips_lose_their_pair(family: str) -> bool:
    """Whether this transformers writes a Qwen3 clip outside its vision pair (5.23 on): agentic mode is refused there
    (`rewatch.check_clip_layout`); these tests also run in the vLLM tier, on the older transformers it allows."""
    import transformers
    from packaging.version import Version

    return family != "qwen2_5_vl" and Version(transformers.__version__) >= Version("5.23")


def agentic_trainer(make_trainer, world, tmp_path, **config):
    """An agentic `VideoGRPOTrainer` on the tiny world: one prompt of G = 2 a batch, 48 completion tokens."""
    settings = dict(num_generations=2, per_device_train_batch_size=2, max_completion_length=48)
    return make_trainer(world, tmp_path, **(TINY_REWATCH | settings | config))


def scripted_rollout(trainer, rows, script=SCRIPT):
    """The batch of an agentic rollout whose first generation round writes `script` in every completion (the
    engine is not asked); every later round is the model's. `script` may also be a list of rounds, each a text per
    completion (TRL's row order): those rounds are written, the rest are the model's. Also returns the completions
    the rewards received."""
    agentic = trainer.feature(AgenticRollouts)
    real_round = agentic.generation_round
    rounds, rewarded = [], []
    scripts = [[script] * len(rows)] if isinstance(script, str) else script
    tokenize = trainer.processing_class.tokenizer

    def generation_round(sequences, videos, samples, stop, max_tokens):
        rounds.append([len(v) for v in videos])
        if len(rounds) <= len(scripts):
            texts = scripts[len(rounds) - 1]
            assert len(texts) == len(sequences), "a scripted round is for every completion"
            return [(tokenize(text, add_special_tokens=False)["input_ids"], None) for text in texts]
        return real_round(sequences, videos, samples, stop, max_tokens)

    calculate = trainer._calculate_rewards

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        rewarded.extend(completions)
        return calculate(inputs, prompts, completions, completion_ids_list)

    agentic.generation_round = generation_round
    trainer._calculate_rewards = calculate_rewards
    try:
        return trainer._generate_and_score_completions(rows), rounds, rewarded
    finally:
        del agentic.generation_round, trainer._calculate_rewards


def direct_logps(model, config, ids, videos):
    """Log-probs of one unpadded sequence (`ids`, its `videos` in order) from the model's own forward."""
    ids = ids[None]
    mm = torch.zeros_like(ids)
    mm[ids == config.video_token_id] = 2
    seconds = [v["second_per_grid_ts"] for v in videos if "second_per_grid_ts" in v]  # Qwen3 families: none
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values_videos=torch.cat([v["pixel_values_videos"] for v in videos]),
            video_grid_thw=torch.cat([v["video_grid_thw"] for v in videos]),
            mm_token_type_ids=mm,
            **({"second_per_grid_ts": torch.cat(seconds)} if seconds else {}),
        ).logits[0, :-1]
    return logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize("sharing", [True, False])
def test_scripted_rewatch_is_shown_masked_and_scored_exactly(tiny_world, tmp_path, received, sharing, make_trainer):
    trainer, dataset = agentic_trainer(
        make_trainer, tiny_world, tmp_path, share_video_features=sharing, share_prompt_prefix=sharing
    )
    trainer.model.eval()
    row = dataset[0]
    output, rounds, rewarded = scripted_rollout(trainer, [row, row])
    config = trainer.model.config
    tokenizer = trainer.processing_class.tokenizer
    script_ids = tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]

    # the clip shown is exactly `sample_clip`'s frames of 00:02-00:04, encoded by the processor
    clip = sample_clip(
        str(tiny_world.video_dir / row["videos"]),
        2.0,
        4.0,
        trainer.feature(AgenticRollouts).rewatcher.clip_video_settings,
        VideoCacheless(),
    )
    assert clip.frame_indices[0] / clip.video_fps >= 2.0 and clip.frame_indices[-1] / clip.video_fps <= 4.0
    assert len(clip.frame_indices) == 8  # 4 fps over 2 s: denser than the whole video's 1 frame a second
    expected = trainer.video_collator.encode([CLIP_TEXT], [clip])
    assert rounds[0] == [1, 1] and rounds[1] == [2, 2]  # the second round sees the prompt's video and the clip
    assert output["clip_inputs"][0][0] is output["clip_inputs"][1][0]  # the same clip: one dict, encoded once
    for clips in output["clip_inputs"]:
        (shown,) = clips
        assert torch.equal(shown["pixel_values_videos"], expected["pixel_values_videos"])
        assert torch.equal(shown["video_grid_thw"], expected["video_grid_thw"])

    # the completion: the script, the clip's tokens (masked), then the model's own tokens (unmasked)
    clip_ids = expected["input_ids"][0].tolist()
    assert clip_ids[0] == config.vision_start_token_id and clip_ids[-1] == config.vision_end_token_id
    # 8 frames of 56x56 px: 4 temporal patches of 4x4 patches, merged 2x2: 16 tokens
    assert clip_ids.count(config.video_token_id) == len(clip_ids) - 2 == 16
    n_script, n_clip = len(script_ids), len(clip_ids)
    completion_mask, tool_mask = output["completion_mask"], output["tool_mask"]
    for i in range(2):
        ids = output["completion_ids"][i]
        assert ids[:n_script].tolist() == script_ids
        assert ids[n_script : n_script + n_clip].tolist() == clip_ids
        assert tool_mask[i, :n_script].tolist() == [1] * n_script
        assert tool_mask[i, n_script : n_script + n_clip].tolist() == [0] * n_clip
        kept = completion_mask[i].bool()
        assert tool_mask[i, n_script + n_clip :][kept[n_script + n_clip :]].all()
        assert kept[n_script + n_clip :].any(), "the model wrote nothing after the clip"
        # the rewards read the model's text: the script and what followed, no clip tokens
        text = rewarded[i][0]["content"]
        assert text.startswith(SCRIPT) and "<|video_pad|>" not in text and "vision" not in text
        written = [t for t, m in zip(ids[kept].tolist(), tool_mask[i][kept].tolist(), strict=True) if m]
        assert text == tokenizer.decode(written, skip_special_tokens=True)

    # the continuation's generation (prompt, script, clip: one prefill of both rows) received the rule's positions
    prompt = output["prompt_ids"][0][output["prompt_mask"][0].bool()].tolist()
    continued = torch.tensor([prompt + output["completion_ids"][0, : n_script + n_clip].tolist()])
    grid = torch.cat([output["video_inputs"][0]["video_grid_thw"], expected["video_grid_thw"]])
    seconds = torch.cat(
        [output["video_inputs"][0]["second_per_grid_ts"], torch.as_tensor(expected["second_per_grid_ts"])]
    )
    rule, _ = rope_index(config, continued, video_grid_thw=grid, second_per_grid_ts=seconds)
    (prefill,) = [p for p in received if p is not None and p.shape[-1] == continued.size(1)]
    assert torch.equal(prefill, rule.expand(3, 2, -1))

    # log-probs of the model's tokens == a direct forward of each whole sequence with both its videos
    received.clear()
    trainer.sharing_counter.take()
    ids, mask, (logps, _, _) = agentic_pass(trainer, output)
    # shared: the prompt's video once and the clip (the same in both completions) once; else each row's two
    assert trainer.sharing_counter.take()["videos_encoded"] == (2 if sharing else 4)
    assert_scored_as_whole_sequences(trainer, output, ids, mask, logps, received, sharing)


@pytest.mark.both_tiers
@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_a_qwen3_rewatch_is_shown_with_its_times_masked_and_scored_exactly(
    family, family_world, tmp_path, make_trainer
):
    """Agentic re-watching on the Qwen3 families: the clip enters the completion as their processor renders it (each
    frame pair's time in the video written before it), wholly out of the loss (markers, pads and times), and the
    model's own tokens score as a direct forward of each whole sequence with both its videos (sharing on: Qwen3-VL's
    deepstack features of the clip too)."""
    import re

    world = family_world(family)
    pixels = world.video_settings.video_max_pixels  # the clip's frames in the family's unit
    # the clip's timestamps are text: 4 frame pairs take ~80 tokens of the tiny tokenizer
    build = functools.partial(
        agentic_trainer, make_trainer, world, tmp_path, rewatch_max_pixels=pixels, max_completion_length=192
    )
    if clips_lose_their_pair(family):
        with pytest.raises(NotImplementedError, match="rewatch_mode='agentic' with"):
            build()
        return
    trainer, dataset = build()
    trainer.model.eval()
    output, rounds, rewarded = scripted_rollout(trainer, [dataset[0], dataset[0]])
    assert rounds[1] == [2, 2]  # the second round sees the prompt's video and the clip
    tokenizer = trainer.processing_class.tokenizer
    n_script = len(tokenizer(SCRIPT, add_special_tokens=False)["input_ids"])
    for i in range(2):
        ids, tool = output["completion_ids"][i].tolist(), output["tool_mask"][i].tolist()
        assert tool[:n_script] == [1] * n_script
        n_clip = tool[n_script:].index(1)  # the clip: the tokens after the action that the model did not write
        clip = tokenizer.decode(ids[n_script : n_script + n_clip])
        times = [float(t) for t in re.findall(r"<([0-9.]+) seconds>", clip)]
        assert len(times) == 4 and all(2.0 <= t <= 4.0 for t in times), clip  # 8 frames of 00:02-00:04, in pairs
        assert clip.startswith("<|vision_start|>") and clip.endswith("<|vision_end|>")
        assert "seconds" not in rewarded[i][0]["content"]  # the rewards read what the model wrote
    trainer.sharing_counter.take()
    ids, mask, (logps, _, _) = agentic_pass(trainer, output)
    assert trainer.sharing_counter.take()["videos_encoded"] == 2  # the prompt's video once, the clip once
    for i in range(ids.size(0)):
        sequence = ids[i][mask[i].bool()]
        videos = [output["video_inputs"][i], *output["clip_inputs"][i]]
        direct = direct_logps(trainer.model, trainer.model.config, sequence, videos)
        written = (output["completion_mask"][i] * output["tool_mask"][i]).bool()
        n = int(output["completion_mask"][i].sum())
        assert (logps[i, :n][written[:n]] - direct[-n:][written[:n]]).abs().max() <= 1e-5, i


def agentic_pass(trainer, output, **kwargs):
    """The trainer's log-prob pass (policy, no grad) over an agentic batch `output`, its prompts' videos and clips
    bound: the rows' ids and attention mask, and what the pass returns (log-probs, entropies, aux loss)."""
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
    trainer.generation = GenerationBatch.for_loss(output)
    try:
        with torch.no_grad():
            result = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, output["completion_ids"].size(1), **kwargs
            )
    finally:
        trainer.generation = None
    return ids, mask, result


def assert_scored_as_whole_sequences(trainer, output, ids, mask, logps, received, sharing):
    """Every call of the pass received the rule's positions for the whole sequences (each row's prompt video and
    clips; shared: each distinct prompt once, then every row's completion), and the log-probs of the model's own
    tokens are a direct forward's of each whole sequence with its videos (≤ 1e-5)."""
    config = trainer.model.config
    videos = [
        v
        for sample, clips in zip(output["video_inputs"], output["clip_inputs"], strict=True)
        for v in [sample, *clips]
    ]
    grid = torch.cat([v["video_grid_thw"] for v in videos])
    seconds = torch.cat([v["second_per_grid_ts"] for v in videos])
    positions, _ = rope_index(config, ids, mask, grid, seconds)
    kept = mask.bool()
    if sharing:
        prefix, completion = received
        prompt = output["prompt_ids"].size(1)
        distinct = list(dict.fromkeys(map(id, output["video_inputs"])))
        rows = [[id(sample) for sample in output["video_inputs"]].index(key) for key in distinct]
        assert torch.equal(prefix, positions[:, rows, :prompt])
        assert torch.equal(completion, positions[:, :, prompt:])
    else:
        (full,) = received
        assert torch.equal(full[:, kept], positions[:, kept])
    for i in range(ids.size(0)):
        sequence = ids[i][kept[i]]
        direct = direct_logps(trainer.model, config, sequence, [output["video_inputs"][i], *output["clip_inputs"][i]])
        written = (output["completion_mask"][i] * output["tool_mask"][i]).bool()
        n = int(output["completion_mask"][i].sum())
        assert (logps[i, :n][written[:n]] - direct[-n:][written[:n]]).abs().max() <= 1e-5, i


class VideoCacheless:
    """A cache that keeps nothing: the clip decoded afresh, not the trainer's copy."""

    decodes = 0

    def get(self, path, settings, start=None, end=None):
        from rewatch_trl.video import decode_video

        return decode_video(path, settings, start, end)


@pytest.mark.vllm
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_agentic_rollout_through_vllm(family, family_world, tmp_path, vllm_positions, make_trainer):
    """The continued request (the sequence so far, both videos) renders in vLLM to the trainer's ids and positions,
    and vLLM samples after the clip what the trainer scores (the engine saw the clip as the loss pass does; TRL
    builds the engine as it does). Qwen3-VL: the clip's times written between its frame pairs, collapsed and
    rendered again as the prompt's video."""
    from rewatch_trl.collator import token_types

    world = family_world(family)
    settings = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024, max_completion_length=192)
    settings["rewatch_max_pixels"] = world.video_settings.video_max_pixels  # the clip's frames in the family's unit
    trainer, dataset = agentic_trainer(make_trainer, world, tmp_path, **settings)
    row = dataset[1]
    output, rounds, _ = scripted_rollout(trainer, [row, row])
    config = trainer.model.config
    script_ids = trainer.processing_class.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]
    (clip,) = output["clip_inputs"][0]
    n = len(script_ids) + output["tool_mask"][0, len(script_ids) :].tolist().index(1)  # the action, then the clip
    prompt = output["prompt_ids"][0][output["prompt_mask"][0].bool()].tolist()
    continued = [prompt + output["completion_ids"][i, :n].tolist() for i in range(2)]
    assert continued[0] == continued[1] and continued[0][-1] == config.vision_end_token_id
    # vLLM rendered the continued request (its pads collapsed, then expanded again) to the trainer's ids
    requests = [(tokens, positions) for tokens, positions in vllm_positions if len(tokens) == len(continued[0])]
    assert requests and all(tokens == continued[0] for tokens, _ in requests)
    videos = [output["video_inputs"][0], clip]
    ids = torch.tensor([continued[0]])
    seconds = [v["second_per_grid_ts"] for v in videos if "second_per_grid_ts" in v]
    expected, _ = trainer.model.model.get_rope_index(  # the trainer's rule (Qwen2.5-VL's: `positions.rope_index`)
        ids,
        token_types(ids, config),
        video_grid_thw=torch.cat([v["video_grid_thw"] for v in videos]),
        **({"second_per_grid_ts": torch.cat(seconds)} if seconds else {}),
    )
    for _, positions in requests:
        assert torch.equal(positions, expected[:, 0])
    # what vLLM sampled after the clip, scored by the trainer with both videos: the same log-probs
    after = output["completion_mask"].bool() & output["tool_mask"].bool()
    after[:, :n] = False
    assert after.any()
    difference = (output["old_per_token_logps"] - output["sampling_per_token_logps"])[after].abs().max().item()
    # fp32 (the trainer's dtype): 5e-7 here; the clip's frames left out (the prompt's shown twice) give 4e-3
    assert difference <= 1e-5, f"max |vLLM log-prob - trainer log-prob| after the clip: {difference:.2e}"


def test_agentic_training_logs_its_rewatches(tiny_world, tmp_path, make_trainer):
    """Two optimizer steps of agentic GRPO (each rollout's first round scripted to re-watch, the rest the model's,
    generation batches shuffled and split over two steps): the clips reach the loss and the logs."""
    trainer, _ = make_trainer(
        tiny_world,
        tmp_path,
        **TINY_REWATCH,
        num_generations=2,
        per_device_train_batch_size=2,
        steps_per_generation=2,
        max_completion_length=40,
        max_steps=2,
    )
    script_ids = trainer.processing_class.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]
    agentic = trainer.feature(AgenticRollouts)
    real_round, first = agentic.generation_round, []

    def generation_round(sequences, videos, samples, stop, max_tokens):
        if all(len(v) == 1 for v in videos):  # a rollout's first round
            first.append(len(sequences))
            return [(list(script_ids), None) for _ in sequences]
        return real_round(sequences, videos, samples, stop, max_tokens)

    agentic.generation_round = generation_round
    seen = []
    compute_loss = trainer._compute_loss

    def spy(model, inputs):
        seen.append([len(clips) for clips in inputs["clip_inputs"]])
        return compute_loss(model, inputs)

    trainer._compute_loss = spy
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert first == [4]  # one generation batch: 2 prompts x G = 2, for both steps
    assert seen == [[1, 1], [1, 1]]
    logs = [entry for entry in trainer.state.log_history if "rewatch/clips_per_completion" in entry]
    assert len(logs) == 1  # logged with the step that generated
    assert logs[0]["rewatch/clips_per_completion"] == 1.0 and logs[0]["rewatch/rewatched_fraction"] == 1.0
    assert logs[0]["rewatch/clip_frames"] == 8.0
    assert any(not torch.equal(weights[n], p.detach()) for n, p in trainer.model.named_parameters())


@pytest.fixture(scope="module")
def flash_world(tmp_path_factory):
    from rewatch_trl.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("flash-world"), num_videos=2, seed=1, flashes=True)


def flash_share(frames, color) -> torch.Tensor:
    """The share of each frame's pixels within 40 of `color` (frames: T, C, H, W)."""
    target = torch.tensor(color, dtype=torch.float)[None, :, None, None]
    return ((frames.float() - target).abs().amax(1) < 40).float().mean((1, 2))


def test_flash_is_between_the_sampled_frames_and_in_the_rewatched_clip(flash_world):
    from rewatch_trl.tiny import COLORS, TINY_REWATCH_SETTINGS
    from rewatch_trl.video import VideoCache, sample_video

    flashes = [row for row in flash_world.rows if row["question_type"] == "flash" and row["multiple_choice"]]
    assert len(flashes) == 2
    for row in flashes:
        path = str(flash_world.video_dir / row["videos"])
        color = COLORS[row["answer_str"]]
        whole = sample_video(path, TINY_VIDEO_SETTINGS, VideoCache())
        assert flash_share(whole.frames, color).max() < 0.5  # no sampled frame shows the flash
        (window,) = [clip for clips in [parse_window(row["response"])] for clip in clips]
        settings = TINY_REWATCH_SETTINGS.clip_settings(TINY_VIDEO_SETTINGS)
        clip = sample_clip(path, *window, settings, VideoCache())
        assert (flash_share(clip.frames, color) > 0.9).sum() == 1  # the re-watched clip shows it, in one frame
        captions = [line for line in flash_world.captions_path.read_text().splitlines() if row["videos"] in line][0]
        assert f"a {row['answer_str']} flash" in captions


def parse_window(trace: str) -> list[tuple[float, float]]:
    from rewatch_trl.rewatch import shown_clips

    return shown_clips(trace, 8.0, 1)[1]


@pytest.fixture(scope="module")
def flash_worlds(flash_world, tmp_path_factory):
    """`flash_worlds(family)`: the flash world of a family (Qwen2.5-VL's is `flash_world`), built once."""
    from rewatch_trl.tiny import build_tiny_world

    worlds = {"qwen2_5_vl": flash_world}

    def world(family):
        if family not in worlds:
            out = tmp_path_factory.mktemp(f"flash-{family}")
            worlds[family] = build_tiny_world(out, num_videos=2, seed=1, flashes=True, family=family)
        return worlds[family]

    return world


@pytest.mark.both_tiers
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_agentic_sft_shows_each_clip_without_labels(family, flash_worlds):
    """An agentic SFT trace shows each clip it names (the frames `sample_clip` gives), and its labels are the trace's
    tokens alone, as without the clip: not the clip's video tokens, nor (Qwen3) the timestamps written between its
    frame pairs."""
    import dataclasses

    from transformers import AutoProcessor

    from rewatch_trl.collator import IGNORE_INDEX, VideoCollator
    from rewatch_trl.sft import SFTVideoCollator
    from rewatch_trl.tiny import TINY_REWATCH_SETTINGS
    from rewatch_trl.video import VideoCache

    world = flash_worlds(family)
    settings = world.video_settings
    rewatch = dataclasses.replace(TINY_REWATCH_SETTINGS, rewatch_max_pixels=settings.video_max_pixels)
    processor = AutoProcessor.from_pretrained(world.root, padding_side="right")
    collator = VideoCollator(processor, settings, world.video_dir, VideoCache())
    rows = [row for row in world.rows if row["question_type"] == "flash"][:2]
    if clips_lose_their_pair(family):
        with pytest.raises(NotImplementedError, match="rewatch_mode='agentic' with Qwen3VLProcessor"):
            SFTVideoCollator(collator, rewatch=rewatch)
        return
    agentic = SFTVideoCollator(collator, rewatch=rewatch)(rows)
    imagined = SFTVideoCollator(collator)(rows)
    tokenizer = processor.tokenizer
    vision = [tokenizer.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>")]
    # two videos a row (the prompt's, then the clip), the clip's frames exactly `sample_clip`'s of the window
    assert agentic["video_grid_thw"].shape[0] == 4 and imagined["video_grid_thw"].shape[0] == 2
    window = parse_window(rows[0]["response"])[0]
    clip_settings = rewatch.clip_settings(collator.settings)  # in the model's pixel unit, as the collator's
    clip = sample_clip(str(world.video_dir / rows[0]["videos"]), *window, clip_settings, VideoCache())
    expected = collator.encode([CLIP_TEXT], [clip])
    sizes = agentic["video_grid_thw"].prod(-1).tolist()
    assert torch.equal(torch.split(agentic["pixel_values_videos"], sizes)[1], expected["pixel_values_videos"])
    clip_ids = expected["input_ids"][0].tolist()
    for i in range(2):
        ids, labels = agentic["input_ids"][i], agentic["labels"][i]
        assert (labels[torch.isin(ids, torch.tensor(vision))] == IGNORE_INDEX).all()
        # the labels are the trace's tokens, as without the clip: the clip is read, not written
        agentic_targets = labels[labels != IGNORE_INDEX].tolist()
        imagined_targets = imagined["labels"][i][imagined["labels"][i] != IGNORE_INDEX].tolist()
        assert agentic_targets == imagined_targets
    if family != "qwen2_5_vl":  # the control: Qwen3's clip writes its frames' times as text, between the markers
        assert "seconds>" in tokenizer.decode([t for t in clip_ids if t not in vision])


def test_infer_rewatch_lists_the_clips_it_showed(tiny_world, monkeypatch):
    from rewatch_trl.infer import Predictor, infer

    real_round = Predictor._round
    rounds = []

    def scripted(self, sequences, videos, samples, stop, max_tokens):
        rounds.append(len(videos[0]))
        if len(rounds) == 1:
            return [(self.processor.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"], None)]
        return real_round(self, sequences, videos, samples, stop, max_tokens)

    monkeypatch.setattr(Predictor, "_round", scripted)
    video = tiny_world.video_dir / tiny_world.rows[0]["videos"]
    result = infer(
        str(tiny_world.root),
        str(video),
        "What color?",
        TINY_VIDEO_SETTINGS,
        40,
        rewatch=RewatchSettings(**TINY_REWATCH),
    )
    assert result["rewatched"] == [{"start": 2.0, "end": 4.0, "frames": 8}]
    assert rounds[:2] == [1, 2]
    assert result["completion"].startswith(SCRIPT) and "vision" not in result["completion"]
    assert result["actions"][0] == "Re-watch [00:02-00:04]"


def test_agentic_sft_then_grpo_then_infer_rewatch(flash_world, tmp_path, launcher):
    """`make demo-rewatch` in small, as a user runs it: the agentic recipes through `accelerate launch` (GRPO on
    two processes), then
    `rewatch-trl infer --rewatch --json` with the trained checkpoint really re-watches a clip of the video."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from rewatch_trl.cli import main as cli
    from rewatch_trl.rollouts import read_rollouts

    sft, grpo = tmp_path / "sft", tmp_path / "grpo"
    launcher.run(launcher.command(flash_world, sft, stage="sft", recipe="sft_rewatch", max_steps=60))
    # two processes: each rank runs its own rounds (as many as its completions need); nothing waits on the other
    # the recipe's completion length (the launcher's tests default to 8 tokens: no room for a clip)
    settings = dict(recipe="grpo_rewatch", model_name_or_path=sft, max_steps=2, save_strategy="no")
    settings["max_completion_length"] = 96
    # logged to trackio (local: TRACKIO_DIR), its rollouts written (the clips' frames too) for the rollout page
    logged = dict(report_to="trackio", project="rewatch-test", run_name="agentic", log_completions="true")
    trackio = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    launcher.run(launcher.command(flash_world, grpo, 2, **settings, **logged), env=trackio)
    logs = [entry for entry in launcher.state(grpo)["log_history"] if "rewatch/clips_per_completion" in entry]
    assert len(logs) == 2 and sum(entry["rewatch/clips_per_completion"] for entry in logs) > 0  # it re-watched
    read = "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
    read += "print(json.dumps(S.get_logs('rewatch-test', 'agentic'), default=str))"
    tracked = json.loads(
        subprocess.run(
            [sys.executable, "-c", read],
            capture_output=True,
            text=True,
            check=True,
            env=launcher.environment() | trackio,
        ).stdout
    )
    for key in ("rewatch/clips_per_completion", "sharing/videos_encoded", "reward"):  # as transformers names them
        tracked_values = [entry[f"train/{key}"] for entry in tracked if f"train/{key}" in entry]
        assert tracked_values == pytest.approx([entry[key] for entry in logs]), key
    assert cli(["rollouts", str(grpo)]) == 0
    clips = [
        clip
        for step in read_rollouts(grpo)
        for group in step["groups"]
        for rollout in group["rollouts"]
        for clip in rollout["clips"]
        if clip.get("thumbs")
    ]
    assert clips, "no re-watched clip's frames were written"
    page = (grpo / "rollouts.html").read_text()
    assert page.count("re-watched ") >= len(clips) and '<div class="clipframes"><div class="thumb' in page
    # under DeepSpeed ZeRO-2 (2 CPU processes): the same run, the same weights
    zero2 = tmp_path / "zero2"
    launcher.run(launcher.command(flash_world, zero2, 2, config="tests/deepspeed/zero2_cpu.yaml", **settings))
    trained, reference = load_file(str(zero2 / "model.safetensors")), load_file(str(grpo / "model.safetensors"))
    assert max((trained[name] - reference[name]).abs().max().item() for name in reference) <= 1e-5
    start = load_file(str(sft / "model.safetensors"))
    assert max((start[name] - reference[name]).abs().max().item() for name in reference) > 1e-5  # the steps moved it
    assert (
        launcher.state(zero2)["log_history"][0]["rewatch/clips_per_completion"]
        == logs[0]["rewatch/clips_per_completion"]
    )
    tiny = ["--max-frames", "8", "--min-pixels", "3136", "--max-pixels", "3136", "--total-pixels", "25088"]
    tiny += ["--rewatch-fps", "4", "--rewatch-max-frames", "8", "--rewatch-max-pixels", "3136", "--max-rewatches", "2"]
    row = next(row for row in flash_world.rows if row["question_type"] == "flash")
    video = flash_world.video_dir / row["videos"]
    command = [sys.executable, "-m", "rewatch_trl.cli"]
    command += ["infer", "--model", str(grpo), *tiny, "--max-new-tokens", "96", "--rewatch", "--json"]
    output = subprocess.run(
        [*command, str(video), row["problem"]], capture_output=True, text=True, env=launcher.environment(), check=True
    )
    result = json.loads(output.stdout)
    assert result["rewatched"], result["completion"]
    for clip in result["rewatched"]:
        assert 0 <= clip["start"] < clip["end"] <= 8 and clip["frames"] > 0


def test_agentic_transformers_generation_is_refused_under_zero3(tiny_world, tmp_path, make_trainer, monkeypatch):
    """Under ZeRO-3 each transformers generation round gathers the shards, a collective: processes whose completions
    need different numbers of rounds would wait on each other, so agentic mode there needs vLLM. The control: the
    same trainer without ZeRO-3 is built."""
    import rewatch_trl.agentic

    assert agentic_trainer(make_trainer, tiny_world, tmp_path / "ddp")[0].feature(AgenticRollouts) is not None
    monkeypatch.setattr(rewatch_trl.agentic, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(NotImplementedError, match="under ZeRO-3 needs use_vllm"):
        agentic_trainer(make_trainer, tiny_world, tmp_path / "zero3")


def script_first_round(monkeypatch, prefill=False):
    """`Predictor`'s first generation round writes `SCRIPT` in every rollout; later rounds are the model's. With
    `prefill`, the engine runs on the prompts first (its output dropped), so its caches hold them."""
    from rewatch_trl.infer import Predictor

    real_round = Predictor._round

    def scripted(self, sequences, videos, samples, stop, max_tokens):
        if all(len(v) == 1 for v in videos):
            if prefill:
                real_round(self, sequences, videos, samples, stop, max_tokens)
            return [(self.processor.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"], None) for _ in sequences]
        return real_round(self, sequences, videos, samples, stop, max_tokens)

    monkeypatch.setattr(Predictor, "_round", scripted)


def vllm_predictor(tiny_world, rewatch, **vllm_kwargs):
    """A greedy `Predictor` of the tiny world on vLLM's engine (fp32, eager), 40 new tokens."""
    from rewatch_trl.infer import Predictor

    vllm_kwargs = {"enforce_eager": True, "max_model_len": 1024} | vllm_kwargs
    return Predictor(
        str(tiny_world.root),
        TINY_VIDEO_SETTINGS,
        tiny_world.video_dir,
        40,
        backend="vllm",
        dtype="float32",
        vllm_kwargs=vllm_kwargs,
        rewatch=rewatch,
    )


@pytest.mark.vllm
def test_infer_rewatch_on_vllm_continues_as_transformers_does(tiny_world, monkeypatch):
    """`infer --rewatch --backend vllm`: after the same scripted action, vLLM's greedy continuation (the clip
    shown through its own processor) is the transformers backend's, token for token."""
    from rewatch_trl.infer import Predictor

    script_first_round(monkeypatch)
    rows = tiny_world.rows[:2]
    rewatch = RewatchSettings(**TINY_REWATCH)
    local = Predictor(str(tiny_world.root), TINY_VIDEO_SETTINGS, tiny_world.video_dir, 40, rewatch=rewatch)
    served = vllm_predictor(tiny_world, rewatch)
    expected, received = local.rollouts(rows), served.rollouts(rows)
    assert [clips for _, clips in received] == [[{"start": 2.0, "end": 4.0, "frames": 8}]] * 2
    assert received == expected
    assert all(len(text) > len(SCRIPT) for text, _ in received)


@pytest.mark.vllm
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_continuations_are_prefilled_from_vllms_caches(tiny_world, monkeypatch, prefix_caching):
    """A continuation is a new request (the sequence so far, all its videos), yet vLLM does not compute its prompt
    again: its prefix cache holds the full KV blocks of the prompt prefilled in the first round, and only the clip
    goes through the vision tower (the prompt's video is in the encoder cache). The control, prefix caching off:
    nothing is reused but the encoder's output."""
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as VllmQwen

    encoded = []
    process_video = VllmQwen._process_video_input

    def spy(self, video_input):
        encoded.append(video_input["video_grid_thw"].tolist())
        return process_video(self, video_input)

    monkeypatch.setattr(VllmQwen, "_process_video_input", spy)
    script_first_round(monkeypatch, prefill=True)
    # clips of 4 frames: a temporal grid of 2, the prompt's video has 4
    rewatch = RewatchSettings(**TINY_REWATCH | {"rewatch_max_frames": 4})
    predictor = vllm_predictor(tiny_world, rewatch, enable_prefix_caching=prefix_caching)
    rounds = []
    generate = predictor.model.llm.generate

    def recorded(*args, **kwargs):
        encoded.clear()
        outputs = generate(*args, **kwargs)
        rounds.append(([(len(o.prompt_token_ids), o.num_cached_tokens) for o in outputs], list(encoded)))
        return outputs

    predictor.model.llm.generate = recorded
    rows = tiny_world.rows[:2]
    assert rows[0]["videos"] == rows[1]["videos"]  # one video, two questions
    received = predictor.rollouts(rows)
    assert [clips for _, clips in received] == [[{"start": 2.0, "end": 4.0, "frames": 4}]] * 2
    (first, first_encoded), (second, second_encoded) = rounds[:2]
    (video_grid,) = first_encoded[0]
    clip_grid = [2, *video_grid[1:]]
    assert second_encoded == [[clip_grid]]  # the clip alone, once for the two rollouts
    script = predictor.processor.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]
    clip_length = len(script) + 2 + clip_grid[0] * clip_grid[1] * clip_grid[2] // 4
    assert [length for length, _ in second] == [length + clip_length for length, _ in first]
    block = predictor.model.llm.llm_engine.vllm_config.cache_config.block_size
    full_blocks = [length // block * block for length, _ in first]
    assert min(full_blocks) > 0
    assert [cached for _, cached in second] == (full_blocks if prefix_caching else [0, 0])


def test_generation_rounds_stop_at_actions_within_the_budget(tiny_world, tmp_path, make_trainer, monkeypatch):
    """Each transformers round reaches the model's `generate` (through TRL's generation) with the round's limits:
    stop at `</action>` (with the tokenizer stop strings need) while actions are left, the tokens left."""
    trainer, dataset = agentic_trainer(make_trainer, tiny_world, tmp_path)
    calls = []
    generate = type(trainer.model).generate

    def spy(self, *args, **kwargs):
        calls.append({key: kwargs.get(key) for key in ("stop_strings", "tokenizer", "max_new_tokens")})
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(type(trainer.model), "generate", spy)
    output, rounds, _ = scripted_rollout(trainer, [dataset[0], dataset[0]])
    (call,) = calls  # the first round was scripted; the model's round after the clip
    n = len(trainer.processing_class.tokenizer(SCRIPT, add_special_tokens=False)["input_ids"]) + 18
    assert call["stop_strings"] == ["</action>"] and call["tokenizer"] is trainer.processing_class.tokenizer
    assert call["max_new_tokens"] == 48 - n
    assert "generate" not in vars(trainer.model)  # the round's binding is gone after it


@pytest.mark.vllm
@pytest.mark.parametrize("awake", [True, False])
def test_agentic_rounds_keep_a_sleeping_engine_awake(tiny_world, tmp_path, monkeypatch, make_trainer, awake):
    """With sleep mode, an agentic rollout syncs the weights once and keeps the engine awake across its rounds,
    however many a process needs (under ZeRO-3 each sync is a collective), and vLLM's prefix cache serves each
    continuation (the prompt's full blocks, for both rows). The control, TRL's sleep after every call: a sync and
    emptied caches every round."""
    import contextlib

    import trl.generation.vllm_generation as generation
    from sleeping_vllm import SleepingLLM

    import rewatch_trl.agentic as agentic_module
    from rewatch_trl.rewatch import Completion

    monkeypatch.setattr(generation, "LLM", SleepingLLM)
    if not awake:
        monkeypatch.setattr(agentic_module, "awake_across_calls", lambda *args: contextlib.nullcontext())
    trainer, dataset = agentic_trainer(
        make_trainer,
        tiny_world,
        tmp_path,
        use_vllm=True,
        vllm_enable_sleep_mode=True,
        vllm_max_model_length=1024,
        max_completion_length=24,
    )
    engine = trainer.vllm_generation.llm.llm
    assert engine.events == ["sleep"]  # TRL puts it to sleep once built
    cached = []
    generate = engine.llm.generate

    def counted(*args, **kwargs):
        outputs = generate(*args, **kwargs)
        cached.append(sum(output.num_cached_tokens for output in outputs))
        return outputs

    engine.llm.generate = counted

    def rollout(prompt_ids, videos, samples, generate, max_tokens, device=None, anywhere=bool):
        """Three rounds, each continuing the sequences so far (as the re-watch loop continues after a clip)."""
        completions = [Completion() for _ in prompt_ids]
        for _ in range(3):
            outputs = generate(
                [ids + c.ids for ids, c in zip(prompt_ids, completions, strict=True)],
                [[video] for video in videos],
                [[sample] for sample in samples],
                None,
                8,
            )
            for completion, (ids, logprobs) in zip(completions, outputs, strict=True):
                completion.add(list(ids), by_model=True, logprobs=logprobs)
        return completions

    agentic = trainer.feature(AgenticRollouts)
    monkeypatch.setattr(agentic.rewatcher, "rollout", rollout)
    trainer.state.global_step = 1  # a step after the engine was built: its weights must be synced
    with trainer.generating():
        agentic.rollout([dataset[0]["prompt"]] * 2)
    if awake:
        assert engine.events == ["sleep", "sync", "generate", "generate", "generate", "sleep"]
        # the first round's G = 2 samples share one prefill; later rounds find the prompt cached for both rows
        assert cached[1:] == [2 * cached[0]] * 2 and cached[0] > 0
    else:
        assert engine.events.count("sync") == 3 and engine.events.count("sleep") == 4
        assert cached == [cached[0]] * 3  # each round starts from emptied caches


def test_a_shared_pass_calls_the_vision_tower_once_with_or_without_clips(tiny_world, tmp_path, make_trainer):
    """Under ZeRO-3 every module's forward gathers its parameters collectively: a process whose completions hold a
    clip and one whose completions hold none must call the vision tower as often. A shared log-prob pass calls it
    once, for the prompts' videos and the clips together."""
    trainer, dataset = agentic_trainer(make_trainer, tiny_world, tmp_path)
    output, _, _ = scripted_rollout(trainer, [dataset[0], dataset[0]])
    assert all(len(clips) == 1 for clips in output["clip_inputs"])
    calls = []
    handle = trainer.model.model.visual.register_forward_pre_hook(lambda module, args: calls.append(1))
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    length = output["completion_ids"].size(1)
    try:
        for clips in (output["clip_inputs"], [[], []]):
            trainer.generation = GenerationBatch(samples=output["video_inputs"], clips=clips)
            if not clips[0]:  # the same rows with no clip shown: text where the clip was
                ids = ids.masked_fill(ids == trainer.model.config.video_token_id, 10)
                ids[:, : output["prompt_ids"].size(1)] = output["prompt_ids"]
            calls.clear()
            with torch.no_grad():
                trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, length)
            assert len(calls) == 1, (len(clips[0]), len(calls))
    finally:
        handle.remove()
        trainer.generation = None


def eval_command(world, out, *extra):
    tiny = ["--max-frames", "8", "--min-pixels", "3136", "--max-pixels", "3136", "--total-pixels", "25088"]
    rewatch = ["--rewatch", "--rewatch-fps", "4", "--rewatch-max-frames", "8", "--rewatch-max-pixels", "3136"]
    args = ["eval", "--model", str(world.root), *tiny, *rewatch, "--max-new-tokens", "40", "--limit", "2"]
    return args + ["--data", str(world.qa_path), "--video-root", str(world.video_dir), "--out", str(out), *extra]


def test_eval_rewatch_through_the_command_line(tiny_world, tmp_path, monkeypatch):
    """`rewatch-trl eval --rewatch`: each prediction lists the clip its (scripted) action was shown, and the report
    counts the real re-watches."""
    from rewatch_trl.cli import main as cli
    from rewatch_trl.eval import predictions_path

    script_first_round(monkeypatch)
    out = tmp_path / "report.json"
    assert cli(eval_command(tiny_world, out)) == 0
    predictions = [json.loads(line) for line in predictions_path(out).read_text().splitlines()]
    assert [p["rewatched"] for p in predictions] == [[{"start": 2.0, "end": 4.0, "frames": 8}]] * 2
    assert all(p["completion"].startswith(SCRIPT) for p in predictions)
    report = json.loads(out.read_text())["overall"]
    assert report["n"] == 2 and report["mean_rewatches"] == 1.0 and report["rewatched_rate"] == 1.0


@pytest.mark.vllm
def test_eval_rewatch_on_vllm_through_the_command_line(tiny_world, tmp_path, monkeypatch):
    """`rewatch-trl eval --rewatch --backend vllm`: the same predictions as the transformers backend, greedy, after
    the same scripted action and clip."""
    from rewatch_trl.cli import main as cli
    from rewatch_trl.eval import predictions_path

    script_first_round(monkeypatch)
    local, served = tmp_path / "local.json", tmp_path / "served.json"
    assert cli(eval_command(tiny_world, local)) == 0
    vllm = ["--backend", "vllm", "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
    assert cli(eval_command(tiny_world, served, *vllm)) == 0
    expected = [json.loads(line) for line in predictions_path(local).read_text().splitlines()]
    received = [json.loads(line) for line in predictions_path(served).read_text().splitlines()]
    assert [p["rewatched"] for p in received] == [[{"start": 2.0, "end": 4.0, "frames": 8}]] * 2
    assert [p["completion"] for p in received] == [p["completion"] for p in expected]


# Two prompts (different videos, prompt lengths) of G = 2, each completion re-watching two clips of its own
TWO_ACTIONS = [
    ["<action>Re-watch [00:02-00:04]</action>", "<action>Re-watch [00:04-00:06]</action>",
     "<action>Re-watch [00:01-00:03]</action>", "<action>Re-watch [00:02-00:04]</action>"],
    ["<observation>a</observation><action>Re-watch [00:00-00:02]</action>",
     "<observation>b</observation><action>Re-watch [00:05-00:07]</action>",
     "<observation>c</observation><action>Re-watch [00:06-00:08]</action>",
     "<observation>d</observation><action>Re-watch [00:00-00:02]</action>"],
]  # fmt: skip
TWO_CLIPS = [[(2.0, 4.0), (0.0, 2.0)], [(4.0, 6.0), (5.0, 7.0)], [(1.0, 3.0), (6.0, 8.0)], [(2.0, 4.0), (0.0, 2.0)]]


@pytest.mark.parametrize("sharing", [True, False])
def test_each_completion_is_shown_its_own_clips(tiny_world, tmp_path, received, sharing, make_trainer):
    """Two prompts of different lengths and videos, each completion with two actions of its own: every row's two
    clips are `sample_clip`'s frames of its video's windows, every pass positions every row by the rule with its
    own videos, and the log-probs of the model's tokens are a direct forward's of each whole sequence. (Giving every
    completion completion 0's clips, or one grid for all, fails here.)"""
    trainer, dataset = agentic_trainer(
        make_trainer,
        tiny_world,
        tmp_path,
        per_device_train_batch_size=4,
        max_completion_length=96,
        share_video_features=sharing,
        share_prompt_prefix=sharing,
    )
    trainer.model.eval()
    rows = [dataset[0], dataset[0], dataset[3], dataset[3]]
    assert rows[0]["videos"] != rows[2]["videos"]
    output, rounds, _ = scripted_rollout(trainer, rows, TWO_ACTIONS)
    assert rounds[:3] == [[1] * 4, [2] * 4, [3] * 4]  # the third round sees the prompt's video and both clips
    assert (output["prompt_mask"] == 0).any()  # prompts of different lengths: left padding
    for i, row in enumerate(rows):
        clips = output["clip_inputs"][i]
        assert len(clips) == 2, i
        for clip, (start, end) in zip(clips, TWO_CLIPS[i], strict=True):
            frames = sample_clip(
                str(tiny_world.video_dir / row["videos"]), start, end, trainer.feature(AgenticRollouts).rewatcher.clip_video_settings,
                VideoCacheless(),
            )  # fmt: skip
            expected = trainer.video_collator.encode([CLIP_TEXT], [frames])
            assert torch.equal(clip["pixel_values_videos"], expected["pixel_values_videos"]), (i, start)
            assert torch.equal(clip["video_grid_thw"], expected["video_grid_thw"]), (i, start)
    # rows 0 and 3 ask for the same window of different videos: different clips
    assert not torch.equal(
        output["clip_inputs"][0][0]["pixel_values_videos"], output["clip_inputs"][3][0]["pixel_values_videos"]
    )

    received.clear()
    ids, mask, (logps, _, _) = agentic_pass(trainer, output)
    assert_scored_as_whole_sequences(trainer, output, ids, mask, logps, received, sharing)


def test_clip_tokens_are_out_of_the_kl_and_the_entropy(tiny_world, tmp_path, make_trainer):
    """TRL multiplies the rollout's `env_mask` (its `tool_mask`) into the mask of the loss, the KL and the entropy:
    the logged entropy and KL are the means over the model's own tokens, not over the clip's (computed here from the
    trainer's own per-token entropies and log-probs; the control, the mean over every completion token, differs)."""
    trainer, dataset = agentic_trainer(make_trainer, tiny_world, tmp_path, beta=0.1)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs, _, _ = scripted_rollout(trainer, [dataset[0], dataset[0]])
    torch.manual_seed(0)
    with torch.no_grad():  # the policy moves away from the reference: a KL to measure
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    trainer._compute_loss(trainer.model, inputs)
    entropy, kl = trainer._metrics["train"]["entropy"][-1], trainer._metrics["train"]["kl"][-1]
    _, _, (logps, entropies, _) = agentic_pass(trainer, inputs, compute_entropy=True)
    ref = inputs["ref_per_token_logps"]
    per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
    written = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
    every = inputs["completion_mask"].bool()
    assert (every & ~written).any()  # the clip's tokens are in the completion
    assert abs(entropy - entropies[written].mean().item()) <= 1e-6
    assert abs(kl - per_token_kl[written].mean().item()) <= 1e-6
    # the control: the means over every completion token, the clip's included
    assert abs(entropies[every].mean().item() - entropy) > 1e-5
    assert abs(per_token_kl[every].mean().item() - kl) > 1e-5
