"""The vLLM tier: the real engine (vLLM's CPU build), in-process, on the tiny world. `make test-vllm` runs it.

The engine is TRL's own (`VLLMGeneration` builds `LLM(...)` as a user's recipe gets it), in the trainer's fp32:
`VideoGRPOTrainer` builds it in the trainer's dtype, where TRL's "auto" would make an fp32 checkpoint bf16 and its
log-probs differ from the trainer's by bf16 rounding (~2e-3), hiding anything smaller. Agreement is asserted at
what the README claims (1e-5, fp32), beside a control that must exceed it: the stock position rule, or an engine
left with stale weights.
"""

import functools
from types import SimpleNamespace

import pytest
import torch

from rewatch_trl import dynamic as dynamic_module
from rewatch_trl.generation_batch import GenerationBatch
from rewatch_trl.positions import rope_index


pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def engine(tiny_world, tmp_path_factory, make_trainer):
    """A colocated-vLLM `VideoGRPOTrainer` (3 steps, lr 5e-2), the requests that reach the engine and the M-RoPE
    positions vLLM computes."""
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as VllmQwen

    positions = []
    original = VllmQwen.get_mrope_input_positions

    def spy(self, input_tokens, mm_features):
        result = original(self, input_tokens, mm_features)
        positions.append((list(input_tokens), result[0].clone(), result[1]))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VllmQwen, "get_mrope_input_positions", spy)
        trainer, dataset = make_trainer(
            tiny_world,
            tmp_path_factory.mktemp("grpo-vllm"),
            use_vllm=True,
            vllm_mode="colocate",
            vllm_max_model_length=1024,
            max_steps=3,
            learning_rate=5e-2,
        )
        llm_engine = trainer.vllm_generation.llm.llm.llm_engine
        requests = []
        add_request = llm_engine.add_request

        def count(*args, **kwargs):
            requests.append(args[0] if args else kwargs.get("request_id"))
            return add_request(*args, **kwargs)

        llm_engine.add_request = count
        yield SimpleNamespace(trainer=trainer, dataset=dataset, positions=positions, requests=requests)


def prompt_batch(trainer, rows):
    generation = trainer.generation = GenerationBatch()
    ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    return ids, generation.videos, generation.samples


def test_vllm_renders_the_trainer_prompt_ids_and_positions(engine):
    from vllm import SamplingParams

    from rewatch_trl.collator import PROCESSOR_VIDEO_KWARGS

    trainer, dataset = engine.trainer, engine.dataset
    config = trainer.model.config
    ids, videos, video_inputs = prompt_batch(trainer, [dataset[0], dataset[0], dataset[1], dataset[1]])
    llm = trainer.vllm_generation.llm
    engine.positions.clear()
    engine.requests.clear()
    with llm.serving(videos):
        outputs = llm.generate([{"prompt_token_ids": row} for row in ids], SamplingParams(max_tokens=2))
    assert [output.prompt_token_ids for output in outputs] == ids
    assert ids[0].count(config.video_token_id) == 16
    assert len(engine.requests) == 2  # two prompts, each one request for its G = 2 completions
    # vLLM's M-RoPE positions for those prompts are the trainer's rule
    assert engine.positions
    for tokens, positions, delta in engine.positions:
        row = ids.index(tokens)
        expected, deltas = rope_index(
            config,
            torch.tensor([tokens]),
            video_grid_thw=video_inputs[row]["video_grid_thw"],
            second_per_grid_ts=video_inputs[row]["second_per_grid_ts"],
        )
        assert torch.equal(positions, expected[:, 0]), row
        assert delta == deltas.item()
    # what the processor's expanded ids make of vLLM: each video pad expanded again (15 pads fed as text)
    doubled = llm.llm.generate(
        [
            {
                "prompt_token_ids": ids[0],
                "multi_modal_data": {"video": (videos[0].frames, videos[0].metadata())},
                "mm_processor_kwargs": dict(PROCESSOR_VIDEO_KWARGS),
            }
        ],
        SamplingParams(max_tokens=1),
    )
    assert len(doubled[0].prompt_token_ids) == len(ids[0]) + 15
    assert doubled[0].prompt_token_ids.count(config.video_token_id) == 31


def test_a_blank_stand_in_goes_through_the_engine(engine):
    """What stands in for a video that failed to decode mid-run (`video.UndecodableVideo`: 2 blank frames of one
    token) reaches vLLM like any video: its prompt ids are the trainer's, and it is sampled from."""
    import copy

    from vllm import SamplingParams

    trainer, dataset = engine.trainer, engine.dataset
    collator = trainer.video_collator
    broken = str(trainer.video_collator.video_root / "broken.mp4")
    collator.failed(broken, "cannot decode video broken.mp4 with decord: a planted failure")
    prompt = copy.deepcopy(dataset[0]["prompt"])
    for message in prompt:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "video":
                block["video"] = broken
    try:
        generation = trainer.generation = GenerationBatch()
        ids, _, _ = trainer._tokenize_prompts([prompt, prompt])
        videos = generation.videos
        assert {video.path for video in videos} == {broken} and videos[0].frames.abs().sum() == 0
        llm = trainer.vllm_generation.llm
        with llm.serving(videos):
            outputs = llm.generate([{"prompt_token_ids": row} for row in ids], SamplingParams(max_tokens=2))
    finally:
        collator.undecodable.pop(broken)
    assert [output.prompt_token_ids for output in outputs] == ids
    assert ids[0].count(trainer.model.config.video_token_id) == 1
    assert all(len(output.outputs[0].token_ids) > 0 for output in outputs)


def sampling_difference(trainer, rows) -> float:
    """The largest |vLLM log-prob − trainer old-policy log-prob| over the completion tokens of one generation batch
    of `rows` (what TRL logs as `sampling/sampling_logp_difference/max`)."""
    output = trainer._generate_and_score_completions(rows)
    kept = output["completion_mask"].bool()
    return (output["old_per_token_logps"] - output["sampling_per_token_logps"])[kept].abs().max().item()


def test_grpo_colocate_trains_and_syncs_weights_into_vllm(engine, monkeypatch, capsys):
    trainer, dataset = engine.trainer, engine.dataset
    assert trainer.vllm_generation.llm.llm_engine.model_config.dtype == torch.float32  # the trainer's, not "auto"
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    engine.requests.clear()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 3
    assert all("rewards/letter_share/mean" in entry for entry in logs)
    differences = [entry["sampling/sampling_logp_difference/max"] for entry in logs]
    with capsys.disabled():
        print(f"\nsampling_logp_difference/max per step (vLLM vs trainer old-policy log-probs): {differences}")
    assert max(differences) <= 1e-5
    assert len(engine.requests) == 3 * 2  # 2 prompts a step, one request each
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(weights[n], p.detach())]
    assert any("visual" in n for n in changed) and any("language_model" in n for n in changed)
    # the last step's weights reach vLLM (the vision tower's too: the encoder cache is reset with the sync): its
    # samples are scored alike by the trainer
    rows = [dataset[i] for i in (2, 2, 5, 5)]
    trainer.vllm_generation.sync_weights()
    assert sampling_difference(trainer, rows) <= 1e-5
    # the control: an engine left with stale weights (the sync skipped after one more update)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    stale = sampling_difference(trainer, rows)
    with capsys.disabled():
        print(f"stale engine: {stale:.2e}")
    assert stale > 1e-3
    trainer.vllm_generation.sync_weights()
    assert sampling_difference(trainer, rows) <= 1e-5


def test_old_policy_log_probs_agree_with_vllm(engine, monkeypatch, capsys):
    trainer, dataset = engine.trainer, engine.dataset
    rows = [dataset[i] for i in (0, 0, 3, 3)]
    difference = sampling_difference(trainer, rows)
    # the control: the trainer scoring with transformers' stock position rule (vLLM samples under the original one)
    monkeypatch.delattr(trainer.model.model, "get_rope_index")
    control = sampling_difference(trainer, rows)
    with capsys.disabled():
        print(
            f"\nmax |vLLM log-prob - trainer old-policy log-prob|: {difference:.2e} (stock position rule: {control:.2e})"
        )
    assert difference <= 1e-5 < control


def test_infer_and_eval_backends_see_the_same_prompt_and_frames(tiny_world, engine):
    from rewatch_trl.infer import Predictor
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS

    rows = tiny_world.rows[:2]
    local = Predictor(str(tiny_world.root), TINY_VIDEO_SETTINGS, tiny_world.video_dir, max_new_tokens=4)
    batch = local.collator(rows)
    served = Predictor(
        str(tiny_world.root),
        TINY_VIDEO_SETTINGS,
        tiny_world.video_dir,
        max_new_tokens=4,
        backend="vllm",
        dtype="float32",
        vllm_kwargs={"enforce_eager": True, "max_model_len": 1024},
    )
    seen = []
    generate = served.model.llm.generate

    def keep(requests, *args, **kwargs):
        outputs = generate(requests, *args, **kwargs)
        seen.extend(
            (output.prompt_token_ids, request["multi_modal_data"]["video"][0])
            for output, request in zip(outputs, requests, strict=True)
        )
        return outputs

    served.model.llm.generate = keep
    texts = served.generate(rows)
    assert len(texts) == 2
    keep_mask = batch["attention_mask"].bool()
    assert [prompt for prompt, _ in seen] == [
        row[m].tolist() for row, m in zip(batch["input_ids"], keep_mask, strict=True)
    ]
    for (_, frames), video in zip(seen, local.collator.videos(rows), strict=True):
        assert torch.equal(torch.as_tensor(frames), video.frames)


def test_bf16_engine_and_trainer_agree_on_a_fractional_grid(tiny_world, engine, tmp_path, monkeypatch, make_trainer):
    """vLLM casts `second_per_grid_ts` to its model dtype: in bf16 a 6.2604 s grid counts 6.25 s. The trainer,
    told the engine's dtype, reads it alike (here its own weights are fp32)."""
    import dataclasses

    import trl.generation.vllm_generation as generation
    import vllm
    from datasets import Dataset
    from vllm import SamplingParams

    from rewatch_trl.collator import VideoCollator
    from rewatch_trl.grpo import add_prompts
    from rewatch_trl.tiny import TINY_VIDEO_SETTINGS, write_synthetic_video

    write_synthetic_video(tmp_path / "long.mp4", seconds=601, fps=1, size=(56, 56))
    monkeypatch.setattr(generation, "LLM", functools.partial(vllm.LLM, enforce_eager=True))
    trainer, _ = make_trainer(
        tiny_world, tmp_path / "run", use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024, bf16=True
    )
    llm = trainer.vllm_generation.llm
    assert llm.llm_engine.model_config.dtype == torch.bfloat16  # bf16 autocast: the engine samples in bf16
    settings = dataclasses.replace(TINY_VIDEO_SETTINGS, video_max_frames=192, video_total_pixels=192 * 56 * 56)
    trainer.video_collator = VideoCollator(trainer.processing_class, settings, tmp_path)
    row = tiny_world.rows[0] | {"videos": "long.mp4", "duration": 601}
    (row,) = add_prompts(Dataset.from_list([row]), trainer.video_collator)
    ids, videos, video_inputs = prompt_batch(trainer, [row])
    seconds, grid = video_inputs[0]["second_per_grid_ts"], video_inputs[0]["video_grid_thw"]
    assert grid[0, 0].item() == 96 and seconds.dtype == torch.float32 and abs(seconds.item() - 6.2604) < 1e-4
    engine.positions.clear()
    with llm.serving(videos):
        (output,) = llm.generate([{"prompt_token_ids": ids[0]}], SamplingParams(max_tokens=1))
    assert output.prompt_token_ids == ids[0]
    ((tokens, positions, delta),) = engine.positions
    received, deltas = trainer.model.model.get_rope_index(
        torch.tensor([tokens]), video_grid_thw=grid, second_per_grid_ts=seconds
    )
    assert torch.equal(positions, received[:, 0]) and delta == deltas.item()
    # read in fp32, the same grid would place the video and the text after it elsewhere
    fp32, _ = rope_index(trainer.model.config, torch.tensor([tokens]), video_grid_thw=grid, second_per_grid_ts=seconds)
    assert (fp32[:, 0] != positions).any(0).sum() > 100


@pytest.mark.parametrize("truncation", [{"top_p": 0.9}, {"top_k": 20}, {"top_p": 0.8, "min_p": 0.05}])
def test_truncated_sampling_keeps_the_importance_weight_at_one(engine, monkeypatch, truncation):
    """vLLM's log-probs under top-k / top-p / min-p are those of the truncated distribution it sampled from: the
    correction compares the trainer's on the same support (ratio 1 in fp32), and the loss keeps the whole
    distribution's old-policy log-probs. The control, TRL's whole-vocabulary comparison, collapses the weight."""
    trainer, dataset = engine.trainer, engine.dataset
    for holder in (trainer, trainer.vllm_generation):
        for key, value in truncation.items():
            monkeypatch.setattr(holder, key, value)
    rows = [dataset[i] for i in (0, 0, 3, 3)]
    monkeypatch.setattr(trainer, "_sampler_truncates", True)
    output = trainer._generate_and_score_completions(rows)
    ratio = output["importance_sampling_ratio"]
    assert (ratio - 1).abs().max() <= 1e-3, ratio
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    trainer.generation = GenerationBatch.for_loss(output)
    try:
        with torch.no_grad():
            full, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, output["completion_ids"].size(1)
            )
    finally:
        trainer.generation = None
    kept = output["completion_mask"].bool()
    assert (output["old_per_token_logps"] - full)[kept].abs().max() <= 1e-5
    monkeypatch.setattr(trainer, "_sampler_truncates", False)  # the control
    collapsed = trainer._generate_and_score_completions(rows)["importance_sampling_ratio"]
    assert collapsed.max() < 0.9, collapsed


def test_vllm_renders_the_varied_worlds_prompts_as_the_trainer(varied_world, tmp_path, vllm_positions, make_trainer):
    """Four prompts of different lengths whose videos differ in grid and in fractional `second_per_grid_ts` (2.0,
    2.75, 1.75, 3.25 s): vLLM's prompt ids and its own M-RoPE positions are the trainer's rule, row by row (seconds
    truncated to whole numbers, or one grid for all, would move them)."""
    from vllm import SamplingParams

    seen = vllm_positions
    trainer, dataset = make_trainer(
        varied_world, tmp_path, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024
    )
    ids, videos, video_inputs = prompt_batch(trainer, [dataset[i] for i in (0, 2, 5, 6)])
    seconds = [sample["second_per_grid_ts"].item() for sample in video_inputs]
    assert seconds == [2.0, 2.75, 1.75, 3.25] and len({len(row) for row in ids}) == 4
    assert len({tuple(sample["video_grid_thw"][0].tolist()) for sample in video_inputs}) == 3
    llm = trainer.vllm_generation.llm
    with llm.serving(videos):
        outputs = llm.generate([{"prompt_token_ids": row} for row in ids], SamplingParams(max_tokens=1))
    assert [output.prompt_token_ids for output in outputs] == ids
    assert sorted(len(tokens) for tokens, _ in seen) == sorted(len(row) for row in ids)
    for tokens, positions in seen:
        row = ids.index(tokens)
        expected, _ = rope_index(
            trainer.model.config,
            torch.tensor([tokens]),
            video_grid_thw=video_inputs[row]["video_grid_thw"],
            second_per_grid_ts=video_inputs[row]["second_per_grid_ts"],
        )
        assert torch.equal(positions, expected[:, 0]), row
    # and the trainer scores what vLLM sampled from them alike (fp32)
    assert sampling_difference(trainer, [dataset[i] for i in (0, 0, 2, 2)]) <= 1e-5


def test_t_grpo_and_dynamic_sampling_on_the_colocated_engine(engine, monkeypatch):
    """T-GRPO's shuffled rollouts of a prompt reach vLLM as one request for all of them, with the frames permuted;
    dynamic sampling's refill rows keep their own sampling log-probs (the trainer's old-policy ones agree with vLLM's
    on every row of the merged batch, the control: a refill row's shifted a token)."""
    from test_sharing import scored_batch
    from varied_reward import characters_but_on_the_first_video

    from rewatch_trl.collator import prompt_key
    from rewatch_trl.dynamic import DynamicSampling
    from rewatch_trl.temporal import TemporalContrast, frame_order

    trainer, dataset = engine.trainer, engine.dataset
    trainer.vllm_generation.sync_weights()
    flat = [characters_but_on_the_first_video, *trainer.reward_funcs[1:]]  # flat on synthetic_000.mp4
    monkeypatch.setattr(trainer, "reward_funcs", flat)
    # T-GRPO on the accuracy (column 0), G = 2: both rollouts of a prompt also shuffled; and dynamic sampling
    features = [*trainer.features, TemporalContrast(accuracy=0, rollouts=2), DynamicSampling()]
    monkeypatch.setattr(trainer, "features", features)
    monkeypatch.setattr(trainer.args, "max_resample_rounds", 1)
    llm = trainer.vllm_generation.llm.llm
    requests = []
    generate = llm.generate

    def recording(prompts, sampling_params=None, **kwargs):
        requests.append(list(zip(prompts, sampling_params, strict=True)))
        return generate(prompts, sampling_params=sampling_params, **kwargs)

    monkeypatch.setattr(llm, "generate", recording)
    merged = {}
    replace = dynamic_module.replace_groups

    def kept(batch, refill, pairs, *args):
        merged.update(refill=refill, pairs=pairs)
        return replace(batch, refill, pairs, *args)

    monkeypatch.setattr(dynamic_module, "replace_groups", kept)
    rows = [dataset[i] for i in (0, 0, 2, 2)]
    output = scored_batch(trainer, rows)
    # ordered (2 prompts, n = 2 each), shuffled (the same 2 prompts, n = 2 each), then the refill's two calls
    (ordered, shuffled, *refill) = requests
    assert [params.n for _, params in ordered] == [2, 2] == [params.n for _, params in shuffled]
    assert len(refill) == 2
    for (plain, _), (permuted, _), row in zip(ordered, shuffled, rows[::2], strict=True):
        assert plain["prompt_token_ids"] == permuted["prompt_token_ids"]
        frames, metadata = plain["multi_modal_data"]["video"]
        key = prompt_key(row["prompt"])
        order = frame_order(len(frames), key, trainer.state.global_step, trainer.args.seed)
        assert torch.equal(permuted["multi_modal_data"]["video"][0], frames[order])
        assert permuted["multi_modal_data"]["video"][1] == metadata
    metrics = trainer._metrics["train"]
    assert metrics["dynamic/zero_variance_groups"][-1] == 1 and metrics["dynamic/resample_rounds"][-1] == 1
    assert [slot for slot, _ in merged["pairs"]] == [0]
    kept_tokens = output["completion_mask"].bool()
    difference = (output["old_per_token_logps"] - output["sampling_per_token_logps"])[kept_tokens].abs().max()
    assert difference <= 1e-5
    shifted = output["sampling_per_token_logps"].clone()
    shifted[:2] = shifted[:2].roll(1, dims=1)
    assert (output["old_per_token_logps"] - shifted)[kept_tokens].abs().max() > 1e-3
