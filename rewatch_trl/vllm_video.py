"""vLLM requests with videos, for the trainer's colocated rollouts and for `infer`/`eval --backend vllm`.

One video per prompt, the frames `video.py` sampled (the loss pass's frames), the prompt as the trainer's token
ids with each video's placeholder run collapsed to one `<|video_pad|>` (vLLM expands it itself: given the
processor's expanded ids it would expand every pad again), and the vision tokens suppressed by a logit bias.
Nothing here imports vLLM: requests are plain dicts, and `VideoLLM` wraps whatever `LLM` it is given.

Example:
```python
>>> collapse_placeholders([1, 9, 9, 9, 2], video_token_id=9)
[1, 9, 2]
>>> same_prompt_rows([{"prompt_token_ids": [1]}, {"prompt_token_ids": [2]}, {"prompt_token_ids": [1]}])
[[0, 2], [1]]
```
"""

import contextlib
import copy
import functools

from rewatch_trl.collator import PROCESSOR_VIDEO_KWARGS
from rewatch_trl.image import LoadedImage
from rewatch_trl.suppression import suppression_logit_bias
from rewatch_trl.video import SampledVideo


def collapse_placeholders(
    token_ids: list[int],
    video_token_id: int,
    vision_start_id: int | None = None,
    vision_end_id: int | None = None,
    image_token_id: int | None = None,
) -> list[int]:
    """The prompt as vLLM expects it before it expands each video's (image's) placeholder itself: the template's ids.
    Each run of `video_token_id` (or `image_token_id`) becomes one token (Qwen2.5-VL:
    `<|vision_start|><|video_pad|>×N<|vision_end|>`); with the vision start and end ids, a video whose frame pairs
    each carry a timestamp and a block of their own inside the template's pair (the Qwen3 families:
    `<|vision_start|><0.6 seconds><|vision_start|><|video_pad|>×N<|vision_end|>…<|vision_end|>`) becomes that pair
    around one placeholder."""
    pads = {video_token_id} | ({image_token_id} if image_token_id is not None else set())
    ids, collapsed, i = list(token_ids), [], 0
    while i < len(ids):
        end = None
        if vision_start_id is not None and ids[i] == vision_start_id:
            end = _timestamped_video_end(ids, i, video_token_id, vision_start_id, vision_end_id)
        if end is not None:
            collapsed += [vision_start_id, video_token_id, vision_end_id]
            i = end
            continue
        if ids[i] not in pads or not collapsed or collapsed[-1] != ids[i]:
            collapsed.append(ids[i])
        i += 1
    return collapsed


def _timestamped_video_end(ids: list[int], start: int, pad: int, vision_start: int, vision_end: int) -> int | None:
    """Where a timestamped video that opens at `ids[start]` ends (after its closing `vision_end`), or None if none
    opens there: one or more frame-pair blocks (a timestamp's text, `vision_start`, pads, `vision_end`), then the
    template's `vision_end`."""
    special, i = {pad, vision_start, vision_end}, start + 1
    while True:
        text = i
        while i < len(ids) and ids[i] not in special:
            i += 1
        if i == text or i >= len(ids) or ids[i] != vision_start:
            return None
        pads = i = i + 1
        while i < len(ids) and ids[i] == pad:
            i += 1
        if i == pads or i >= len(ids) or ids[i] != vision_end:
            return None
        i += 1
        if i < len(ids) and ids[i] == vision_end:
            return i + 1


def vllm_video_requests(
    requests: list[dict],
    videos: list[SampledVideo | LoadedImage | list[SampledVideo]],
    video_token_id: int,
    vision_start_id: int | None = None,
    vision_end_id: int | None = None,
    image_token_id: int | None = None,
) -> list[dict]:
    """TRL's vLLM requests (`{"prompt_token_ids": ...}`, the processor's ids, one per prompt) with the frames of
    each prompt's video (or videos, in order: the prompt's, then the clips an agentic completion was shown), or its
    image (an image row's, resized as the loss pass has it): the same frames, fps and processor settings as the loss
    pass, so that vLLM's prompt ids and M-RoPE temporal positions (`second_per_grid_ts`) are the trainer's.

    Example:
    ```python
    >>> vllm_video_requests([{"prompt_token_ids": [1, 2]}], [video], 9)[0]["mm_processor_kwargs"]  # doctest: +SKIP
    {'do_sample_frames': False, 'do_resize': False, 'cap_pixels_per_frame': True}
    ```
    """
    if len(requests) != len(videos):
        raise ValueError(f"{len(requests)} vLLM requests for {len(videos)} videos")
    return [
        {
            **request,
            "prompt_token_ids": collapse_placeholders(
                request["prompt_token_ids"], video_token_id, vision_start_id, vision_end_id, image_token_id
            ),
            "multi_modal_data": {"image": video.image}
            if isinstance(video, LoadedImage)
            else {"video": _video_data(video)},
            "mm_processor_kwargs": dict(PROCESSOR_VIDEO_KWARGS),
        }
        for request, video in zip(requests, videos, strict=True)
    ]


def _video_data(videos: SampledVideo | list[SampledVideo]):
    # vLLM's `multi_modal_data`: one (frames, metadata) pair, or a list of them for several videos
    data = [(video.frames, video.metadata()) for video in ([videos] if isinstance(videos, SampledVideo) else videos)]
    return data if len(data) > 1 else data[0]


def same_prompt_rows(requests: list[dict]) -> list[list[int]]:
    """The rows of vLLM requests grouped by prompt: same token ids and the same video (the G copies of a prompt),
    groups in order of first appearance. One request per group with `n` = its size has vLLM prefill each prompt
    (and encode its video) once, and sample its G completions from that one prefill."""
    groups: dict[tuple, list[int]] = {}
    for row, request in enumerate(requests):
        media = request.get("multi_modal_data", {})
        video = media.get("video")
        frames = [video] if isinstance(video, tuple) else video or []
        key = (tuple(request["prompt_token_ids"]), tuple(id(item[0]) for item in frames), id(media.get("image")))
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def engine_dtype(model, args) -> str:
    """The dtype the colocated engine samples in: the trainer's compute dtype (bf16 or fp16 autocast, else the
    policy's parameters; `model` may be a name TRL loads with `model_init_kwargs`)."""
    if args.bf16:
        return "bfloat16"
    if args.fp16:
        return "float16"
    dtype = getattr(model, "dtype", None) or (args.model_init_kwargs or {}).get("dtype") or "auto"
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def engine_built_as(overrides: dict | None = None, **engine_kwargs):
    """Within the block, TRL's colocated `LLM(...)` is built with `engine_kwargs` too (the trainer's dtype, a family's
    `vllm_kwargs`), and with `overrides` in place of TRL's own (the seed a sequence-parallel group shares). TRL
    passes no dtype, and vLLM's "auto" makes an fp32 checkpoint bf16: its log-probs then differ from an fp32
    trainer's by bf16 rounding (2e-3 on the tiny recipe), which TRL's correction would take for a policy mismatch."""
    import trl.generation.vllm_generation as generation

    build = generation.LLM

    @functools.wraps(build)
    def built_as(*args, **kwargs):
        return build(*args, **(engine_kwargs | kwargs | (overrides or {})))

    generation.LLM = built_as
    try:
        yield
    finally:
        generation.LLM = build


def weights_as_vllm_reads(named_parameters, transposed: tuple[str, ...] = ()):
    """`(name, tensor)` pairs of the policy as vLLM's loader reads them: the weights whose names end with one of
    `transposed` (a family's `published_transposed`) with their last two dimensions swapped (a view)."""
    for name, tensor in named_parameters:
        yield name, tensor.transpose(-1, -2) if name.endswith(transposed) else tensor


def _process_reloaded_experts(model) -> None:
    """vLLM 0.31's in-place reload copies new expert weights in but skips their kernel's own post-processing (its CPU
    build's repacking), which a fresh load runs: without it the experts read unpacked weights (log-probs 5e-2 off).
    Run once after each reload: it is not idempotent."""
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    for layer in model.modules():
        kernel = getattr(getattr(layer, "quant_method", None), "moe_kernel", None)
        if isinstance(layer, RoutedExperts) and kernel is not None:
            kernel.fused_experts.process_weights_after_loading(layer)


def reload_weights(generation, transposed: tuple[str, ...] = ()) -> None:
    """TRL's colocated weight sync (`VLLMGeneration.sync_weights`) through vLLM's in-place `reload_weights`: the
    policy's parameters streamed (gathered one at a time under ZeRO-3, adapters merged under PEFT, as TRL iterates
    them) into one reload that re-runs vLLM's weight post-processing. TRL writes each parameter with the model's
    `load_weights`, which vLLM's CPU build cannot take (its linear layers hand their weights to packed kernels and
    keep empty ones); one path serves both. `transposed`: `weights_as_vllm_reads`. With sleep mode, the weights are
    woken first, as TRL's sync does."""
    if generation.enable_sleep_mode:
        generation.llm.wake_up(tags=["weights"])
        generation._llm_weights_sleeping = False
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=weights_as_vllm_reads(generation._iter_named_params(), transposed))
    _process_reloaded_experts(runner.get_model())
    generation.llm.reset_prefix_cache()  # a `VideoLLM` resets the encoder cache with it


@contextlib.contextmanager
def awake_across_calls(generation, sync):
    """Within the block, a colocated engine in sleep mode stays awake between `generate` calls (an agentic rollout's
    rounds): one weight sync, one wake and one sleep for all of them, instead of TRL's sleep (level 2: weights
    discarded, prefix and encoder caches reset) after each call and a full sync before the next. `sync()` syncs the
    weights when the engine holds none. Without sleep mode, nothing changes: the engine is always awake."""
    if not (generation.mode == "colocate" and generation.enable_sleep_mode):
        yield
        return
    if generation._llm_weights_sleeping:
        sync()
    generation.llm.wake_up(tags=["kv_cache"])
    generation.enable_sleep_mode = False  # TRL's `generate` neither wakes nor sleeps the engine in the block
    try:
        yield
    finally:
        generation.enable_sleep_mode = True
        generation.llm.sleep(level=2)
        generation._llm_weights_sleeping = True


class RoundLimits:
    """`limits`: what ends an agentic rollout's generation round (`rewatch.py`) besides the engine's own limits, as
    vLLM sampling parameters (`self.sampling`, empty outside the block), for the colocated engine (`VideoLLM`) and
    the server's client (`vllm_server.VideoServerClient`) alike."""

    sampling: dict = {}  # replaced, never mutated

    @contextlib.contextmanager
    def limits(self, stop: list[str] | None, max_tokens: int):
        """Within the block, generation also ends at the `stop` strings (kept in the output) and after
        `max_tokens`."""
        self.sampling = {"max_tokens": max_tokens}
        if stop:
            self.sampling |= {"stop": list(stop), "include_stop_str_in_output": True}
        try:
            yield self
        finally:
            self.sampling = {}


class VideoLLM(RoundLimits):
    """A vLLM `LLM` whose `generate` takes TRL's requests (one per row, a prompt's G copies in a row) and the
    `videos` of those rows: it adds each row's video, suppresses the vision tokens, and sends the G copies of a
    prompt as one request for G completions (`same_prompt_rows`), handing back one output per row. Resetting the
    prefix cache (as TRL does after a weight sync) resets the encoder cache too. Anything else (weight loading,
    sleep) goes to the `LLM` itself. `group`: TRL's tensor parallel group (`VLLMGeneration.tp_group`), whose
    processes share one engine.
    """

    def __init__(self, llm, config, group=None):
        self.llm, self.group = llm, group
        self.video_ids = (
            config.video_token_id,
            config.vision_start_token_id,
            config.vision_end_token_id,
            config.image_token_id,
        )
        self.logit_bias = suppression_logit_bias(config)
        self.videos: list[SampledVideo | list[SampledVideo]] | None = None

    @contextlib.contextmanager
    def serving(self, videos: list[SampledVideo | list[SampledVideo]]):
        """Within the block, `generate` (as TRL calls it, without videos) is for rows holding `videos`. With a tensor
        parallel `group`, TRL's `generate` gathers the group's prompts, in rank order, for one request to the engine
        its processes share: their videos are gathered alike."""
        if self.group is not None:
            import torch.distributed as dist

            gathered = [None] * dist.get_world_size(group=self.group)
            dist.all_gather_object(gathered, videos, group=self.group)
            videos = [video for share in gathered for video in share]
        self.videos = videos
        try:
            yield self
        finally:
            self.videos = None

    def generate(self, prompts, sampling_params=None, videos: list[SampledVideo] | None = None, **kwargs):
        videos = self.videos if videos is None else videos
        if videos is None:
            return self.llm.generate(prompts, sampling_params=sampling_params, **kwargs)
        requests = vllm_video_requests(prompts, videos, *self.video_ids)
        if self.sampling:
            sampling_params = sampling_params.clone()
            for key, value in self.sampling.items():
                setattr(sampling_params, key, value)
        sampling_params.logit_bias = {**(sampling_params.logit_bias or {}), **self.logit_bias}
        groups = same_prompt_rows(requests)
        params = []
        for rows in groups:
            group_params = sampling_params
            if len(rows) > 1:
                group_params = sampling_params.clone()
                group_params.n = len(rows) * sampling_params.n
            params.append(group_params)
        outputs = self.llm.generate([requests[rows[0]] for rows in groups], sampling_params=params, **kwargs)
        # Back to one output per row, in TRL's order, each with its share of its group's completions.
        per_row = [None] * len(requests)
        share = sampling_params.n
        for rows, output in zip(groups, outputs, strict=True):
            for i, row in enumerate(rows):
                row_output = copy.copy(output)
                row_output.outputs = output.outputs[i * share : (i + 1) * share]
                per_row[row] = row_output
        return per_row

    def reset_prefix_cache(self, *args, **kwargs):
        # TRL calls this after each weight sync. vLLM's encoder cache, keyed by the video's content, would otherwise
        # hand a video seen before the sync the vision features of the old weights (vision tower trained).
        reset = self.llm.reset_prefix_cache(*args, **kwargs)
        self.llm.llm_engine.reset_encoder_cache()
        return reset

    def __getattr__(self, name):
        # only called for names not found on the proxy; a copy or unpickled proxy has no `llm` yet: no recursion
        if name == "llm":
            raise AttributeError(name)
        return getattr(self.llm, name)
