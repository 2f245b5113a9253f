"""Sharing the video across the G completions of a prompt: exact, and counted."""

import pytest
import torch

from rewatch_trl.generation_batch import GenerationBatch


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def rows_of(dataset, indices, g):
    # MCQ (long) and open-ended (short) prompts together: left padding of different lengths in one batch
    return [dataset[i] for i in indices for _ in range(g)]


class Sharing:
    """Switch both kinds of sharing (vision features, prompt prefix) on or off for a block."""

    def __init__(self, trainer, on: bool):
        self.trainer, self.on = trainer, on

    def __enter__(self):
        t = self.trainer
        self.saved = t._shared_features, t._shared_prefixes
        if not self.on:
            t._shared_features, t._shared_prefixes = [], []

    def __exit__(self, *exc):
        self.trainer._shared_features, self.trainer._shared_prefixes = self.saved


def logps(trainer, inputs, sharing: bool):
    with Sharing(trainer, sharing):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        trainer.generation = GenerationBatch.for_loss(inputs)
        try:
            with torch.no_grad():
                return trainer._get_per_token_logps_and_entropies(
                    trainer.model, ids, mask, inputs["completion_ids"].size(1)
                )[0]
        finally:
            trainer.generation = None


def loss_grads(trainer, inputs, sharing: bool):
    with Sharing(trainer, sharing):
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, inputs).backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("world", "g", "beta"),
    [("tiny_world", 2, 0.0), ("tiny_world", 4, 0.1), ("varied_world", 2, 0.0), ("varied_world", 4, 0.0),
     ("varied_world", 2, 0.1), ("varied_world", 4, 0.1)],
)  # fmt: skip
def test_sharing_is_exact(world, tmp_path, g, beta, make_trainer, request):
    """Sharing on equals sharing off (log-probs, gradients). On the varied world the two prompts hold different
    videos, grids, fractional `second_per_grid_ts` and prompt lengths: features split by one grid for all, or seconds
    truncated to whole numbers, would show; on the uniform one, two questions about one video."""
    varied = world == "varied_world"
    world = request.getfixturevalue(world)
    trainer, dataset = make_trainer(
        world, tmp_path, num_generations=g, per_device_train_batch_size=2 * g, beta=beta, num_iterations=2
    )
    inputs = scored_batch(trainer, rows_of(dataset, [0, 2] if varied else [0, 1], g))
    if varied:
        grids = {tuple(s["video_grid_thw"][0].tolist()) for s in inputs["video_inputs"]}
        seconds = {s["second_per_grid_ts"].item() for s in inputs["video_inputs"]}
        assert len(grids) == 2 and seconds == {2.0, 2.75}
    assert_sharing_exact(trainer, inputs, g, beta)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_sharing_is_exact_on_each_family(family, family_world, tmp_path, make_trainer, monkeypatch):
    """Sharing on equals sharing off on the Qwen3 families, whose vision tower also hands deepstack features to the
    first layers of the language model (Qwen3-VL and its MoE): shared with the rest (the control: dropped, they move
    the log-probs by more than 1e-2). Qwen3.5's prompt prefix is also a recurrent state (its Gated DeltaNet layers):
    its prefix sharing is off, with the reason logged, and its vision sharing on."""
    from rewatch_trl.families import FAMILIES

    g = 2
    trainer, dataset = make_trainer(
        family_world(family),
        tmp_path,
        num_generations=g,
        per_device_train_batch_size=2 * g,
        beta=0.1,
        num_iterations=2,
    )
    assert trainer._shared_features
    assert bool(trainer._shared_prefixes) == FAMILIES[family].supports("share_prompt_prefix")
    inputs = scored_batch(trainer, rows_of(dataset, [0, 1], g))
    assert_sharing_exact(trainer, inputs, g, 0.1)
    if getattr(trainer.model.config.vision_config, "deepstack_visual_indexes", None):
        kept = inputs["completion_mask"].bool()
        off = logps(trainer, inputs, False)
        from rewatch_trl import sharing

        encode = sharing.encode_items

        def without_deepstack(*args, **kwargs):
            return [
                (feature, [torch.zeros_like(layer) for layer in deep]) for feature, deep in encode(*args, **kwargs)
            ]

        monkeypatch.setattr(sharing, "encode_items", without_deepstack)
        dropped = logps(trainer, inputs, True)
        assert (dropped[kept] - off[kept]).abs().max() > 1e-2


def scored_batch(trainer, rows):
    """A generated and scored batch of `rows`, the model in training mode as in a step."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer._generate_and_score_completions(rows)


def assert_sharing_exact(trainer, inputs, g, beta):
    """Log-probs (those the trainer stored, and again) and gradients with sharing on equal those with it off."""
    assert inputs["prompt_mask"][:, 0].tolist().count(0) == g  # the short prompts are left-padded
    assert len({id(s) for s in inputs["video_inputs"]}) == 2  # G copies share one sample
    kept = inputs["completion_mask"].bool()
    on, off = logps(trainer, inputs, True), logps(trainer, inputs, False)
    assert (on[kept] - off[kept]).abs().max() <= 1e-5
    # the old-policy (and reference) log-probs the trainer stored were made with sharing on: the same again
    assert (inputs["old_per_token_logps"][kept] - off[kept]).abs().max() <= 1e-5
    if beta:
        assert "ref_per_token_logps" in inputs
    # advantages must be non-zero for gradients to mean anything
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())
    grads_on, grads_off = loss_grads(trainer, inputs, True), loss_grads(trainer, inputs, False)
    assert grads_on.keys() == grads_off.keys()
    assert any("visual" in n for n in grads_on)
    for name, grad in grads_off.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (grads_on[name] - grad).abs().max() / scale <= 1e-4, name


def count_step(trainer, rows):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(rows)
    trainer._compute_loss(trainer.model, inputs).backward()
    return [shared.videos_encoded for shared in trainer._shared_features]


def test_vision_tower_runs_once_per_distinct_video_per_pass(tiny_world, tmp_path, make_trainer):
    g = 4
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, num_generations=g, per_device_train_batch_size=2 * g, beta=0.1, num_iterations=2
    )
    policy, reference = count_step(trainer, rows_of(dataset, [0, 2], g))
    assert (policy, reference) == (2 * 3, 2)  # 2 videos x (generation, old policy, loss) ; 2 videos x reference
    assert trainer.video_collator.cache.decodes == 2  # each video decoded once


def test_frozen_vision_tower_runs_once_per_video_per_step(tiny_world, tmp_path, make_trainer):
    g = 4
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, num_generations=g, per_device_train_batch_size=2 * g, beta=0.1, num_iterations=2,
        freeze_vision_tower=True,
    )  # fmt: skip
    assert not any(p.requires_grad for p in trainer.model.model.visual.parameters())
    policy, reference = count_step(trainer, rows_of(dataset, [0, 2], g))
    assert (policy, reference) == (2, 0)  # once, in generation; every later pass reuses the features


def test_without_sharing_the_tower_runs_per_completion(tiny_world, tmp_path, make_trainer):
    g = 4
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, num_generations=g, per_device_train_batch_size=2 * g,
        share_video_features=False, share_prompt_prefix=False,
    )  # fmt: skip
    assert trainer._shared_features == [] and trainer._shared_prefixes == []
    videos = []

    def count(module, args, kwargs):
        videos.append(len(kwargs["grid_thw"]))

    trainer.model.model.visual.register_forward_pre_hook(count, with_kwargs=True)
    count_step(trainer, rows_of(dataset, [0, 2], g))
    assert videos == [2 * g, 2 * g]  # generation and loss each encode all 8 rows' videos (2 distinct)


def test_each_prompt_goes_through_the_language_model_once_per_pass(tiny_world, tmp_path, make_trainer):
    g = 4
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, num_generations=g, per_device_train_batch_size=2 * g, beta=0.1, num_iterations=2
    )
    count_step(trainer, rows_of(dataset, [0, 2], g))
    policy, reference = (prefix.prefix_rows for prefix in trainer._shared_prefixes)
    assert (policy, reference) == (2 * 2, 2)  # 2 prompts x (old policy, loss) ; 2 prompts x reference


@pytest.mark.parametrize("reentrant", [False, True])
def test_sharing_under_gradient_checkpointing_is_exact(tiny_world, tmp_path, reentrant, make_trainer):
    g = 2
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, num_generations=g, per_device_train_batch_size=2 * g, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": reentrant}, num_iterations=2,
    )  # fmt: skip
    # as Trainer.train() does (and TRL again after each of its no-grad passes)
    trainer.model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(rows_of(dataset, [0, 1], g))
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())
    # TRL runs its no-grad passes (here the old policy's) with checkpointing off: the prefix was shared there
    before = trainer._shared_prefixes[0].prefix_rows
    assert before == 2
    grads_on, grads_off = loss_grads(trainer, inputs, True), loss_grads(trainer, inputs, False)
    # non-reentrant: the checkpointed policy pass shares the prefix too (2 prompts); reentrant: the full path
    assert trainer._shared_prefixes[0].prefix_rows == before + (0 if reentrant else 2)
    assert grads_on.keys() == grads_off.keys()
    assert any("visual" in n for n in grads_on) and any("layers.0.self_attn.k_proj" in n for n in grads_on)
    for name, grad in grads_off.items():
        assert (grads_on[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-12) <= 1e-4, name


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sharing_with_a_lora_policy_and_its_disabled_adapter_as_reference(
    tiny_world, tmp_path, checkpointing, make_trainer
):
    from peft import LoraConfig

    g = 2
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer, dataset = make_trainer(
        tiny_world, tmp_path, peft_config=lora, num_generations=g, per_device_train_batch_size=2 * g, beta=0.1,
        num_iterations=2, gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )  # fmt: skip
    assert trainer.ref_model is None  # the reference is the model with its adapter off
    if checkpointing:
        trainer.model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(rows_of(dataset, [0, 1], g))
    kept = inputs["completion_mask"].bool()
    assert (logps(trainer, inputs, True) - logps(trainer, inputs, False))[kept].abs().max() <= 1e-5
    with trainer.model.disable_adapter():
        reference = logps(trainer, inputs, False)
    assert (inputs["ref_per_token_logps"] - reference)[kept].abs().max() <= 1e-5
    assert (inputs["ref_per_token_logps"] - inputs["old_per_token_logps"])[kept].abs().max() > 1e-4  # the adapter acts
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())
    before = trainer._shared_prefixes[0].prefix_rows
    grads_on, grads_off = loss_grads(trainer, inputs, True), loss_grads(trainer, inputs, False)
    assert trainer._shared_prefixes[0].prefix_rows == before + 2  # the policy pass shared its 2 prompts
    assert grads_on and all("lora" in name for name in grads_on)
    for name, grad in grads_off.items():
        assert (grads_on[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-12) <= 1e-4, name


def test_pixels_of_each_distinct_video_once():
    from rewatch_trl.trainer import video_fields

    def sample(value, frames):
        grid = torch.tensor([[frames, 2, 2]])
        return {"pixel_values_videos": torch.full((frames * 4, 3), float(value)), "video_grid_thw": grid,
                "second_per_grid_ts": torch.tensor([2.0])}  # fmt: skip

    a, b = sample(1, 2), sample(2, 4)
    rows = [a, a, a, b, b, b]
    full, distinct = video_fields(rows), video_fields(rows, distinct_pixels=True)
    assert full["pixel_values_videos"].shape[0] == 3 * 8 + 3 * 16
    assert distinct["pixel_values_videos"].shape[0] == 8 + 16
    assert torch.equal(full["video_grid_thw"], distinct["video_grid_thw"]) and full["video_grid_thw"].shape[0] == 6
    pixels = [row["pixel_values_videos"] for row in rows]
    assert torch.equal(full["pixel_values_videos"], torch.cat(pixels))
    assert torch.equal(distinct["pixel_values_videos"], torch.cat([pixels[0], pixels[3]]))
    # an image row's tensors go to the image keys, each modality in the rows' order
    image = {"pixel_values": torch.full((4, 3), 7.0), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    mixed = video_fields([image, image, a, b], distinct_pixels=True)
    assert torch.equal(mixed["pixel_values"], image["pixel_values"]) and mixed["image_grid_thw"].shape[0] == 2
    assert torch.equal(mixed["pixel_values_videos"], torch.cat([pixels[0], pixels[3]]))


def test_concat_rows_is_a_view_only_of_adjacent_blocks_in_order():
    from rewatch_trl.sharing import concat_rows

    pixels = torch.arange(24.0).reshape(8, 3)
    blocks = list(pixels.split([2, 1, 5]))
    whole = concat_rows(blocks)
    assert torch.equal(whole, pixels) and whole.data_ptr() == pixels.data_ptr()
    tail = concat_rows(blocks[1:])
    assert torch.equal(tail, pixels[2:]) and tail.data_ptr() == pixels[2:].data_ptr()
    for parts in ([blocks[2], blocks[0]], [blocks[0], blocks[2]], [blocks[0], torch.ones(1, 3)], [pixels[:, :2]]):
        joined = concat_rows(parts)
        assert torch.equal(joined, torch.cat(parts))
        assert all(joined.data_ptr() != part.data_ptr() for part in parts if part.numel())


def test_sharing_counts_are_logged_per_step(tiny_world, tmp_path, make_trainer):
    g = 4
    rows = [tiny_world.rows[i] for i in (0, 2)]
    trainer, _ = make_trainer(
        tiny_world, tmp_path, rows, num_generations=g, per_device_train_batch_size=2 * g, beta=0.1, num_iterations=2,
        max_steps=2,
    )  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "sharing/videos_encoded" in entry]
    assert len(logs) == 2
    first, second = logs
    # step 1 generates: the two videos decoded once; the tower runs once per distinct video in generation,
    # old-policy, loss and reference passes (2 x 4); the language model takes the 8 rows in generation's prefill,
    # then each prompt once in the old-policy, loss and reference passes (8 + 2 x 3)
    assert (first["sharing/videos_decoded"], first["sharing/videos_encoded"], first["sharing/prompt_rows"]) == (
        2,
        8,
        14,
    )
    # step 2 reuses step 1's generation (num_iterations 2): the loss pass only, nothing decoded
    assert (second["sharing/videos_decoded"], second["sharing/videos_encoded"], second["sharing/prompt_rows"]) == (
        0,
        2,
        2,
    )
    from rewatch_trl.cli import reward_summary

    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))
    table = reward_summary(tmp_path).splitlines()
    assert table[0].split()[-3:] == ["decoded", "encoded", "prompts"]
    assert table[1].split()[-3:] == ["2", "8", "14"] and table[2].split()[-3:] == ["0", "2", "2"]


def test_shared_log_prob_pass_makes_no_copy_of_the_prompts_states(tiny_world, tmp_path, make_trainer):
    """With the prefix shared, the log-prob passes hand the model the rows' ends (the last prompt token and the
    completion, all TRL's head reads): no (rows, prompt, width) tensor is made for the G copies of the prompts. The
    control, the model handed whole rows, makes one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from rewatch_trl.collator import video_forward_kwargs

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    self.shapes.add(tuple(tensor.shape))
            return out

    trainer, dataset = make_trainer(tiny_world, tmp_path, num_generations=4)
    rows = [dataset[2]] * 4
    trainer.generation = GenerationBatch()
    prompt_ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    ids = torch.tensor([p + [10, 11, 12, 13, 14] for p in prompt_ids])
    prompt, width = len(prompt_ids[0]), trainer.model.config.text_config.hidden_size
    copies = {(4, length, width) for length in range(prompt, ids.size(1) + 1)}
    recorder = Shapes()
    with recorder:
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), 5)
    assert logps.shape == (4, 5)
    assert (1, prompt, width) in recorder.shapes  # the one prefill of the prompt
    assert not recorder.shapes & copies
    control = Shapes()
    samples = trainer.generation.samples
    with control, trainer.shared_rows(samples, 5):
        trainer.model(input_ids=ids, **video_forward_kwargs(samples, ids, trainer.model.config))
    assert control.shapes & copies
