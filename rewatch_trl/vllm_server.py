"""Generation on a vLLM server (`vllm_mode: server`, started as `trl vllm-serve` starts it) with videos.

TRL's server client sends images through vLLM's render endpoint, which decodes and processes them itself; a video
so sent would be re-decoded and re-sampled there. Here the server gets the trainer's own processed tensors: each
prompt goes to vLLM's tokens-in endpoint (`/inference/v1/generate`, served with `--enable-scale-out`, which
`trl vllm-serve` passes) as the trainer's token ids (each video's placeholder run expanded, as the trainer has them)
and, for each video (or image) of the row, the processor's tensors (`pixel_values_videos`, `video_grid_thw`,
`second_per_grid_ts`) serialized as vLLM's multimodal features: no frame is decoded or processed again, and the
server's M-RoPE positions are computed from the same grids and seconds as the trainer's.

Weights reach the server by TRL's NCCL transfer (GPUs), or by `reload` (`vllm_weight_sync: reload`): the policy is
written as one safetensors file to a directory both can read, and the server's workers reload it in place (vLLM's
`reload_weights`, through the dev-mode `/collective_rpc`), which works where NCCL does not (the CPU tests).

Example:
```python
>>> placeholder_runs([1, 9, 9, 2, 9, 9, 9, 3], token_ids={9})
[(1, 2), (4, 3)]
```
"""

import contextlib
import functools
import hashlib
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from rewatch_trl.sharing import MODALITIES
from rewatch_trl.vllm_video import RoundLimits


logger = logging.getLogger(__name__)


def placeholder_runs(ids: list[int], token_ids: set[int]) -> list[tuple[int, int]]:
    """(offset, length) of each run of the tokens `token_ids` in `ids`: where each video's (image's) features go."""
    runs, start = [], None
    for i, token in enumerate([*ids, None]):
        if token in token_ids and start is None:
            start = i
        elif token not in token_ids and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def raw_pixels(pixels: torch.Tensor, processor) -> torch.Tensor:
    """The processor's normalized patches (`(patches, channels × pixels)`, channel-major rows) back to the frames'
    uint8 values: what a vLLM server that normalizes on its device (`mm_device_do_normalize`, its default for the
    Qwen-VL families) takes, as its own processing hands its model. Exact for frames of uint8 pixels (every video
    frame; the processor's resize rounds to uint8 too)."""
    channels = len(processor.image_mean)
    mean = torch.tensor(processor.image_mean, dtype=torch.float64).view(1, channels, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float64).view(1, channels, 1)
    values = pixels.detach().cpu().double().reshape(pixels.shape[0], channels, -1) * std + mean
    values = values / processor.rescale_factor
    return values.round().clamp(0, 255).to(torch.uint8).reshape(pixels.shape)


def _item(sample: dict[str, torch.Tensor]):
    """vLLM's kwargs item of one video (or image) from the processor's tensors of it (`collator.split_video_inputs`),
    and its modality."""
    from transformers import BatchFeature
    from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems

    modality = "image" if MODALITIES["image"][1] in sample else "video"
    pixels_key, grid_key = MODALITIES[modality]
    grid = sample[grid_key].cpu()
    config = {
        pixels_key: MultiModalFieldConfig.flat_from_sizes(modality, grid.prod(-1)),
        grid_key: MultiModalFieldConfig.batched(modality, keep_on_cpu=True),
    }
    tensors = {pixels_key: sample[pixels_key].detach().cpu(), grid_key: grid}
    if "second_per_grid_ts" in sample:
        config["second_per_grid_ts"] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        tensors["second_per_grid_ts"] = torch.as_tensor(sample["second_per_grid_ts"]).detach().cpu().reshape(-1)
    return modality, MultiModalKwargsItems.from_hf_inputs(BatchFeature(tensors), config)[modality][0]


def _content_hash(sample: dict[str, torch.Tensor]) -> str:
    """A key of the item's content: the server caches encoder outputs by it (reset at each weight sync)."""
    digest = hashlib.sha256()
    for key in sorted(sample):
        tensor = sample[key].detach().cpu().contiguous()
        digest.update(key.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _frame_pairs(sample: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A video's tensors as one image a frame pair (grid `(1, h, w)`): the Qwen3 families' towers encode a video's
    pairs apart, as images of two frames, and place each pair's block at its own run, as an image's; vLLM's tokens-in
    endpoint takes no mask of a video's embedded tokens among its timestamps. An image's tensors as they are."""
    pixels_key, grid_key = MODALITIES["video"]
    if grid_key not in sample:
        return [sample]
    (_, h, w), pixels = sample[grid_key][0].tolist(), sample[pixels_key]
    grid = torch.tensor([[1, h, w]], dtype=sample[grid_key].dtype)
    image_pixels, image_grid = MODALITIES["image"]
    return [{image_pixels: part, image_grid: grid} for part in torch.split(pixels, h * w)]


def _raw(sample: dict[str, torch.Tensor], processor) -> dict[str, torch.Tensor]:
    """`sample` with its pixels as the frames' uint8 values (`raw_pixels`, by the processor that normalized them)."""
    kind = "image" if MODALITIES["image"][1] in sample else "video"
    pixels_key = MODALITIES[kind][0]
    normalizer = processor.image_processor if kind == "image" else processor.video_processor
    return {**sample, pixels_key: raw_pixels(sample[pixels_key], normalizer)}


def _encoded_items(sample: dict[str, torch.Tensor], processor, pairs: bool) -> list[tuple[str, str, dict]]:
    """(modality, content hash, vLLM's serialized kwargs item) of each item `sample` goes as: itself, or with `pairs`
    its frame pairs (`_frame_pairs`); with `processor`, its pixels as the frames' uint8 values (`raw_pixels`)."""
    from vllm.entrypoints.scale_out.token_in_token_out.mm_serde import encode_mm_kwargs_item

    if processor is not None:
        sample = _raw(sample, processor)
    encoded = []
    for piece in _frame_pairs(sample) if pairs else [sample]:
        modality, item = _item(piece)
        encoded.append((modality, _content_hash(piece), encode_mm_kwargs_item(item)))
    return encoded


def video_features(
    ids: list[int], samples: list[dict[str, torch.Tensor]], config, processor=None, encoded: dict | None = None
) -> dict:
    """vLLM's `MultiModalFeatures` of a prompt's videos and images (`samples`, in their order in `ids`, which hold
    each one's expanded placeholder run): the processor's tensors serialized, placed at the runs. With `processor`
    (the trainer's), the pixels go as the frames' uint8 values (`raw_pixels`), for a server that normalizes them
    itself. `encoded`: the items already serialized, by sample (`id`), for the prompts of one generation that share
    a video (a prompt's G rows; an agentic round's rows and their clips)."""
    runs = placeholder_runs(ids, {config.video_token_id, config.image_token_id})
    # the Qwen3 families give each frame pair its own run, its timestamp's text before it
    pairs = len(runs) > len(samples)
    encoded = {} if encoded is None else encoded
    items = []
    for sample in samples:
        key = (id(sample), pairs)
        if key not in encoded:
            encoded[key] = _encoded_items(sample, processor, pairs)
        items += encoded[key]
    if len(runs) != len(items):
        raise ValueError(f"a prompt holds {len(runs)} video or image placeholder runs for {len(items)} videos")
    features = {"mm_hashes": {}, "mm_placeholders": {}, "kwargs_data": {}}
    for (offset, length), (modality, digest, item) in zip(runs, items, strict=True):
        features["mm_hashes"].setdefault(modality, []).append(digest)
        features["mm_placeholders"].setdefault(modality, []).append({"offset": offset, "length": length})
        features["kwargs_data"].setdefault(modality, []).append(item)
    return features


class VideoServerClient(RoundLimits):
    """TRL's `VLLMClient` (the main process's) whose `generate` sends each prompt with its videos' `features` (set by
    `serving`) to the tokens-in endpoint, the vision tokens suppressed; a weight sync resets the server's encoder
    cache with its prefix cache. A request that fails (the server gone) is retried, said, until `wait` seconds have
    passed; `on_restart` runs once the server answers again (the weights re-synced before it samples). Anything else
    goes to the client itself."""

    def __init__(self, client, logit_bias: dict[int, float], wait: float = 600.0, on_restart=None):
        self.client, self.logit_bias, self.wait, self.on_restart = client, logit_bias, wait, on_restart
        self.features: list[dict] | None = None

    @contextlib.contextmanager
    def serving(self, features: list[dict]):
        """Within the block, `generate` (as TRL calls it, a prompt a request) is for prompts with these `features`."""
        self.features = features
        try:
            yield self
        finally:
            self.features = None

    def generate(self, prompts, features=None, n=1, generation_kwargs=None, **sampling):
        if self.features is None:
            raise RuntimeError("the vLLM server client generates within `serving`: for rows whose videos it holds")
        if len(self.features) != len(prompts):
            raise RuntimeError(f"{len(self.features)} videos' features for {len(prompts)} prompts")
        params = {"n": n, **sampling, **(generation_kwargs or {}), **self.sampling}
        structured = params.pop("structured_outputs_regex", None)
        if structured is not None:
            params["structured_outputs"] = {"regex": structured}
        params["logit_bias"] = {**(params.get("logit_bias") or {}), **{str(k): v for k, v in self.logit_bias.items()}}
        # the server leaves a non-streaming request's default output kind, under which n > 1 loses sequences
        params["output_kind"] = 2  # FINAL_ONLY
        logprobs = params.get("logprobs") is not None

        def send(index):
            body = {
                "request_id": f"rewatch-{uuid.uuid4().hex}",
                "model": self.client.model,
                "token_ids": prompts[index],
                "features": self.features[index],
                "sampling_params": params,
                "return_token_ids": True,
            }
            return self.post("/inference/v1/generate", body)

        with ThreadPoolExecutor(max_workers=max(1, min(64, len(prompts)))) as executor:
            responses = list(executor.map(send, range(len(prompts))))
        for prompt, response in zip(prompts, responses, strict=True):
            echoed = response.get("prompt_token_ids")
            if echoed is not None and list(echoed) != list(prompt):
                raise RuntimeError("the vLLM server's prompt token ids differ from the trainer's")
        choices = [choice for response in responses for choice in response["choices"]]
        return {
            "prompt_ids": list(prompts),
            "completion_ids": [choice["token_ids"] for choice in choices],
            "logprobs": [_logprobs(choice) for choice in choices] if logprobs else None,
            "logprob_token_ids": [_logprob_ids(choice) for choice in choices] if logprobs else None,
        }

    def post(self, path: str, body: dict | None = None, params: dict | None = None) -> dict:
        """POST `body` to the server's `path`; while the server cannot be reached (or answers 5xx), wait and retry,
        saying so, up to `wait` seconds; after an outage, `on_restart` first."""
        import requests

        started, outage = time.monotonic(), None
        while True:
            try:
                response = requests.post(f"{self.client.base_url}{path}", json=body, params=params, timeout=self.wait)
                if response.status_code < 500:
                    break
                error = f"HTTP {response.status_code}: {response.text[:200]}"
            except requests.RequestException as caught:
                error = f"{type(caught).__name__}: {caught}"
            if time.monotonic() - started > self.wait:
                raise ConnectionError(
                    f"the vLLM server at {self.client.base_url} did not answer for {self.wait} s: {error}"
                )
            if outage is None:
                outage = time.monotonic()
                logger.warning(
                    "the vLLM server at %s does not answer (%s): waiting for it", self.client.base_url, error
                )
            time.sleep(2.0)
        if response.status_code != 200:
            raise RuntimeError(f"the vLLM server refused {path}: HTTP {response.status_code}: {response.text[:500]}")
        if outage is not None:
            logger.warning("the vLLM server answers again after %.0f s", time.monotonic() - outage)
            if self.on_restart is not None and path != "/collective_rpc":
                self.on_restart()
                return self.post(path, body, params)
        return response.json() if response.content else {}

    def reset_prefix_cache(self):
        # after a weight sync: the encoder cache, keyed by the video's content, would hand a video seen before it the
        # old vision tower's features
        self.post("/reset_prefix_cache")
        self.post("/reset_encoder_cache")

    def __getattr__(self, name):
        if name == "client":
            raise AttributeError(name)
        return getattr(self.client, name)


def _logprobs(choice: dict) -> list[list[float | None]]:
    """The sampled token's log-prob a position (tokens mode: `{"content": [{"token_id", "logprob", ...}]}`), as TRL's
    client hands them: one list a position."""
    return [[entry["logprob"]] for entry in (choice.get("logprobs") or {}).get("content", [])]


def _logprob_ids(choice: dict) -> list[list[int]]:
    return [[entry["token_id"]] for entry in (choice.get("logprobs") or {}).get("content", [])]


def write_and_reload(generation, directory: str, transposed: tuple[str, ...] = ()) -> None:
    """`vllm_weight_sync: reload`: the policy's weights (gathered one at a time under ZeRO-3, adapters merged, as
    TRL iterates them: every process iterates) written by the main process as `directory/model.safetensors`, which
    the server's workers reload in place; then its prefix and encoder caches are reset."""
    from safetensors.torch import save_file

    from rewatch_trl.vllm_video import weights_as_vllm_reads

    named = weights_as_vllm_reads(generation._iter_named_params(), transposed)
    if not generation.accelerator.is_main_process:
        for _ in named:
            pass
        return
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in named}
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, "model.safetensors.partial")
    save_file(tensors, partial)
    os.replace(partial, os.path.join(directory, "model.safetensors"))
    reload_written(generation.vllm_client, directory)


def reload_written(client: VideoServerClient, directory: str) -> None:
    """The server's workers reload the weights last written to `directory` (a restarted server holds the
    checkpoint's), and its prefix and encoder caches are reset."""
    client.post(
        "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": os.path.abspath(directory)}}
    )
    client.reset_prefix_cache()


@contextlib.contextmanager
def client_built_as(weight_sync: str):
    """Within the block, TRL's server client is built for `weight_sync`: with `reload`, it joins no NCCL group (TRL's
    `init_communicator` needs CUDA; the weights travel through files)."""
    if weight_sync != "reload":
        yield
        return
    from trl.generation.vllm_client import VLLMClient

    joins = VLLMClient.init_communicator
    VLLMClient.init_communicator = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        VLLMClient.init_communicator = joins


@dataclass
class ServerVideos:
    """How the rows' videos reach the server: the model's `config` (its placeholder ids), the `processor` whose
    normalization is undone for a server that normalizes pixels itself (None: the processor's pixels as they are), and
    the `dtype` the server computes in (it reads `second_per_grid_ts` in it; None where the server does not say)."""

    config: object
    processor: object | None = None
    dtype: torch.dtype | None = None

    def serving(
        self,
        trainer,
        prompt_ids: list[list[int]],
        samples: list[dict],
        num_generations: int,
        clips: list[list[dict]] | None = None,
    ):
        """The context within which TRL's server generation of these rows (`prompt_ids`, the processor's tensors of
        each row's video `samples`, and of the `clips` an agentic round's row was shown) sends their videos: every
        process's rows' features gathered to the main process's client, one a prompt (TRL sends a prompt's G copies
        as one request)."""
        from accelerate.utils import gather_object

        encoded = {}  # each video (or clip) serialized once, however many rows show it
        features = [
            video_features(ids, [sample, *(clips[row] if clips else [])], self.config, self.processor, encoded)
            for row, (ids, sample) in enumerate(zip(prompt_ids, samples, strict=True))
        ]
        everything = gather_object(features)
        if not trainer.accelerator.is_main_process:
            return contextlib.nullcontext()
        return trainer.vllm_generation.vllm_client.serving(everything[::num_generations])


def serve_videos(trainer, transposed: tuple[str, ...] = ()) -> ServerVideos:
    """Set `trainer`'s server generation up for videos: the main process's client wrapped (`VideoServerClient`), the
    weight sync by `vllm_weight_sync`. Returns how the rows' videos are sent (`ServerVideos`)."""
    from accelerate.utils import broadcast_object_list

    from rewatch_trl.suppression import suppression_logit_bias

    generation, args = trainer.vllm_generation, trainer.args
    reload = args.vllm_weight_sync == "reload"
    found = [None, False]
    if trainer.accelerator.is_main_process:
        client = VideoServerClient(
            generation.vllm_client, suppression_logit_bias(trainer._vision_config), args.vllm_server_wait
        )
        client.on_restart = (
            functools.partial(reload_written, client, args.vllm_weights_dir) if reload else _cannot_resync
        )
        generation.vllm_client = client
        info = client.get_server_info()
        model = info.get("model_config") or {}
        found[0] = str(model.get("dtype") or "").removeprefix("torch.") or None
        # a server that normalizes pixels on its device takes the frames' values (vLLM's own processing hands its
        # model those); one that does not, the processor's normalized ones
        found[1] = bool((model.get("multimodal_config") or {}).get("mm_device_do_normalize"))
    broadcast_object_list(found, from_process=0)
    if reload:
        generation.sync_weights = functools.partial(write_and_reload, generation, args.vllm_weights_dir, transposed)
    return ServerVideos(
        trainer._vision_config,
        trainer.processing_class if found[1] else None,
        getattr(torch, found[0]) if found[0] else None,
    )


def _cannot_resync() -> None:
    raise RuntimeError(
        "the vLLM server was restarted: it holds the checkpoint's weights, and TRL's NCCL weight transfer cannot "
        "join it again; with vllm_weight_sync: reload (a path both can read) a restarted server is re-synced"
    )
