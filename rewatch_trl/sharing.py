"""Sharing one prompt's video and prefix across its G completions, exactly.

Two stand-ins, installed on a Qwen-VL backbone by `VideoGRPOTrainer` and handed by it, around each model call, the
`SharedRows` of that call: which rows hold the same prompt and video (rows that share a sample dict).

- `SharedVideoFeatures` replaces `get_video_features`: the vision tower runs once per distinct video (its deepstack
  features, which Qwen3-VL adds to the first layers of the language model, shared with the rest);
- `SharedPrefix` replaces the backbone's `forward` in the log-prob passes: each distinct prompt goes through the
  language model once and the completions attend to its cached keys and values.

Both give what the unshared model gives (tests/test_sharing.py: log-probs within 1e-5, gradients within 1e-4).
"""

import contextlib
import functools
import inspect
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


# The processor's tensors of one visual item by its modality: its pixels' key and its grid's key.
MODALITIES = {"video": ("pixel_values_videos", "video_grid_thw"), "image": ("pixel_values", "image_grid_thw")}

# The names a forward takes its key-value cache by: `cache` from transformers 5.24, `past_key_values` before (and,
# deprecated, until 5.40).
CACHE_KEYWORDS = ("cache", "past_key_values")

# By backbone class: whether its vision tower hands back each deepstack layer already split per item (transformers
# 5.18 on) rather than concatenated over the items. Read off each tower call; shared features are given back in the
# same form, since the backbone's forward consumes that form.
_DEEPSTACK_SPLIT: dict[type, bool] = {}


def cache_keyword(forward) -> str:
    """The keyword `forward` takes its key-value cache by (`cache` or `past_key_values`), read off its signature."""
    parameters = inspect.signature(forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in parameters), CACHE_KEYWORDS[-1])


def cache_given(kwargs: dict):
    """The key-value cache a call was given, by either of its names."""
    return next((kwargs[name] for name in CACHE_KEYWORDS if kwargs.get(name) is not None), None)


def modality(sample: dict) -> str:
    """The modality of a visual item's sample dict: "image" (an image row's) or "video" (a video or a clip)."""
    return "image" if "image_grid_thw" in sample else "video"


def first_rows(samples: list[dict]) -> dict[int, int]:
    """Each distinct sample of a call (rows that share a sample dict hold the same prompt and video) → its first
    row, in order of first appearance."""
    first: dict[int, int] = {}
    for row, sample in enumerate(samples):
        first.setdefault(id(sample), row)
    return first


@dataclass
class SharedRows:
    """The rows of one model call and what they share: one sample dict per row (the processor's video tensors of
    its prompt), the G copies of a prompt holding the same dict, so the same prompt and the same video; in a
    log-prob pass, the `completion_length` tokens that end each row (0 in generation); in agentic mode, the
    clips each row was shown in its completion (`clips[i]`: sample dicts, in order; a clip's dict may be shared);
    and, when the model is handed only the ends of the rows (the last prompt token and the completion: all that TRL's
    log-prob head reads), the whole rows, `input_ids` and `attention_mask`.

    Example:
    ```python
    >>> video_a, video_b, clip = {}, {}, {}
    >>> SharedRows([video_a, video_a, video_b]).distinct
    [0, 2]
    >>> SharedRows([video_a, video_a], clips=[[clip], []]).video_rows
    [0, 2]
    ```
    """

    samples: list[dict]
    completion_length: int = 0
    clips: list[list[dict]] | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @functools.cached_property
    def distinct(self) -> list[int]:
        """The first row of each distinct sample, in order of first appearance."""
        return list(first_rows(self.samples).values())

    @functools.cached_property
    def videos(self) -> list[dict]:
        """Every video of the call in the model's order: each row's prompt video, then its clips."""
        if self.clips is None:
            return self.samples
        return [video for sample, clips in zip(self.samples, self.clips, strict=True) for video in (sample, *clips)]

    @functools.cached_property
    def video_rows(self) -> list[int]:
        """The index in `videos` of each row's prompt video."""
        if self.clips is None:
            return list(range(len(self.samples)))
        starts = [0]
        for clips in self.clips[:-1]:
            starts.append(starts[-1] + 1 + len(clips))
        return starts

    def of(self, kind: str) -> list[dict]:
        """The call's visual items of modality `kind` ("video": videos and clips; "image"), in the model's order: the
        order of the processor's tensors of that modality."""
        return [video for video in self.videos if modality(video) == kind]


def concat_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat(tensors)` (along rows), without the copy when the tensors are adjacent row blocks of one tensor,
    in order: the processor's pixels split per video and taken back whole, as each log-prob pass and each vision
    run does. Then the result is a view of those rows.

    Example:
    ```python
    >>> pixels = torch.zeros(6, 4)
    >>> concat_rows(list(pixels.split([2, 4]))).data_ptr() == pixels.data_ptr()
    True
    ```
    """
    first = tensors[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for tensor in tensors:
        adjacent = (
            tensor.is_contiguous()
            and not tensor.requires_grad
            and tensor.shape[1:] == first.shape[1:]
            and tensor.untyped_storage().data_ptr() == storage
            and tensor.storage_offset() == offset
        )
        if not adjacent:
            return torch.cat(tensors)
        offset += tensor.numel()
    rows = sum(tensor.size(0) for tensor in tensors)
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


def split_deepstack(output) -> list[list[torch.Tensor]]:
    """Per video of a vision-tower call, its deepstack features (one tensor a deepstack layer), which the tower
    returns per layer concatenated over the videos (transformers < 5.18) or already split; `[[], ...]` for a tower
    without them (Qwen2.5-VL, Qwen3.5)."""
    layers = getattr(output, "deepstack_features", None) or []
    sizes = [len(features) for features in output.pooler_output]
    per_layer = [layer.split(sizes) if isinstance(layer, torch.Tensor) else layer for layer in layers]
    return [[layer[video] for layer in per_layer] for video in range(len(sizes))]


def encode_items(get_image_features, items: list[dict], **kwargs) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """The features (and deepstack features) of each visual item of `items` (sample dicts, videos and images alike:
    every family's `get_video_features` is its `get_image_features`), in one vision-tower call: under ZeRO-3 each
    module's forward gathers its parameters collectively, so every process must call the tower as often as the
    others, whatever its rows hold."""
    pixels = concat_rows([item[MODALITIES[modality(item)][0]] for item in items])
    grid = torch.cat([item[MODALITIES[modality(item)][1]] for item in items])
    output = get_image_features(pixels, grid, **kwargs)
    layers = getattr(output, "deepstack_features", None)
    if layers:
        owner = getattr(get_image_features, "__self__", get_image_features)  # the backbone of a bound method
        _DEEPSTACK_SPLIT[type(owner)] = not isinstance(layers[0], torch.Tensor)
    return list(zip(output.pooler_output, split_deepstack(output), strict=True))


class SharedVideoFeatures:
    """Stands in for a Qwen-VL model's `get_video_features` (and, as `images`, its `get_image_features`): runs the
    vision tower once a call on the distinct videos and images of its rows and hands every row the features of its
    item (and their deepstack features), so the G completions of a prompt share one encoding. A forward that holds
    both modalities encodes both in its first call (the second finds its features): one tower run a pass.

    `rows` (set by the trainer around each call, `rows.videos` one sample per visual item of the call) says which
    items are the same; with `frozen`, the features are also kept on the sample (`sample["video_features"]` and
    `sample["deepstack_features"]`, no grad) and reused by every later pass over it. `videos_encoded` counts the
    items (videos and images) that went through the tower.
    """

    def __init__(self, base_model, frozen: bool = False):
        self.backbone_class = type(base_model)
        self.get_video_features = base_model.get_video_features
        self.get_image_features = base_model.get_image_features
        self.frozen = frozen
        self.videos_encoded = 0
        self._rows: SharedRows | None = None
        self._encoded: dict[int, tuple] = {}  # by item: the features this call's rows got so far
        self._encoding_videos = False

    @property
    def rows(self) -> SharedRows | None:
        return self._rows

    @rows.setter
    def rows(self, rows: SharedRows | None) -> None:
        self._rows, self._encoded = rows, {}

    def __call__(self, pixel_values_videos, video_grid_thw=None, **kwargs):
        # Qwen3-VL's `get_video_features` encodes through its `get_image_features`: that call is the video's own
        self._encoding_videos = True
        try:
            return self._shared("video", self.get_video_features, pixel_values_videos, video_grid_thw, **kwargs)
        finally:
            self._encoding_videos = False

    def images(self, pixel_values, image_grid_thw=None, **kwargs):
        """`get_image_features`, shared alike."""
        if self._encoding_videos:
            return self.get_image_features(pixel_values, image_grid_thw, **kwargs)
        return self._shared("image", self.get_image_features, pixel_values, image_grid_thw, **kwargs)

    def features(self, items: list[dict], **kwargs) -> dict[int, tuple[torch.Tensor, list[torch.Tensor]]]:
        """`(features, deepstack features)` of each of `items` by its id: those not known yet (to this call, or kept
        on a frozen tower's sample) encoded together, in one tower call."""
        distinct = list({id(item): item for item in items}.values())
        for item in distinct:
            if id(item) not in self._encoded and "video_features" in item:
                self._encoded[id(item)] = (item["video_features"], item["deepstack_features"])
        todo = [item for item in distinct if id(item) not in self._encoded]
        if todo:
            self.videos_encoded += len(todo)
            for item, (feature, deep) in zip(todo, encode_items(self.get_image_features, todo, **kwargs), strict=True):
                self._encoded[id(item)] = (feature, deep)
                if self.frozen:
                    item["video_features"] = feature.detach()
                    item["deepstack_features"] = [layer.detach() for layer in deep]
        return {id(item): self._encoded[id(item)] for item in distinct}

    def _shared(self, kind: str, encode, pixels, grid, **kwargs):
        samples = self.rows.of(kind) if self.rows is not None else None
        if samples is None or len(samples) != len(grid):
            self.videos_encoded += len(grid)
            return encode(pixels, grid, **kwargs)
        known = self.features(self.rows.videos, **kwargs)  # both modalities of the call's rows, if it holds both
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        output = BaseModelOutputWithPooling(last_hidden_state=None)
        output.pooler_output = tuple(known[id(sample)][0] for sample in samples)
        layers = zip(*(known[id(sample)][1] for sample in samples), strict=True)
        split = _DEEPSTACK_SPLIT.get(self.backbone_class, False)
        output.deepstack_features = [layer if split else torch.cat(layer) for layer in layers]
        return output


class SharedPrefix:
    """Stands in for a Qwen-VL backbone's `forward` in the log-prob passes: the prompt of each distinct sample
    goes through the model once (video included), and the G completions of that prompt attend to its cached keys
    and values, instead of G full sequences. M-RoPE positions come from the full sequences, so every token sits
    where it would have. Handed the ends of the rows (`SharedRows.input_ids` holding the whole rows), it returns
    the hidden states of those ends alone: no (rows, prompt, width) copy of the prompts' states is made for the G
    completions, whose log-probs read only the last prompt position; handed whole rows, those of the whole rows.

    The trainer sets `rows` (a sample per row, the completion length) around each pass. Under gradient
    checkpointing (the policy pass of a checkpointed run) the keys and values go through a `PrefixCache`, whose
    writes and reads give the same tensors when a checkpointed layer is replayed in the backward; only reentrant
    checkpointing, whose forward keeps no graph to the cached states, takes the model's own path.
    `prefix_rows` counts the prompt rows that went through the language model.
    """

    def __init__(self, base_model, shared_features: SharedVideoFeatures | None = None):
        self.inner = base_model
        self.forward = base_model.forward
        self.shared_features = shared_features
        self.rows: SharedRows | None = None
        self.prefix_rows = 0

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        rows = self.rows
        length = rows.completion_length if rows is not None else 0
        tail = None  # the model was handed the last `tail` tokens of each row
        if rows is not None and rows.input_ids is not None and input_ids is not None:
            tail, input_ids, attention_mask = input_ids.size(1), rows.input_ids, rows.attention_mask
        layers = self.inner.language_model.layers
        # TRL switches checkpointing off for its no-grad passes; layers only checkpoint in training mode
        checkpointed = self.inner.training and any(layer.gradient_checkpointing for layer in layers)
        # Anything but plain rows of videos and images (embeddings, a cache, positions given) takes the model's path.
        given = ("inputs_embeds", *CACHE_KEYWORDS)
        if (
            rows is None
            or input_ids is None
            or position_ids is not None
            or (checkpointed and _reentrant(layers))
            or not length
            or any(kwargs.get(key) is not None for key in given)
        ):
            output = self.forward(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
            if tail is not None:
                output.last_hidden_state = output.last_hidden_state[:, -tail:]
            return output
        for key in given:
            kwargs.pop(key, None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("use_cache", None)
        for pixels_key, _ in MODALITIES.values():
            kwargs.pop(pixels_key, None)  # each item's pixels are read from its sample
        grids = {grid_key: kwargs.pop(grid_key, None) for _, grid_key in MODALITIES.values()}
        # Qwen3 families have no `second_per_grid_ts`: their frames' times are in the text
        seconds, mm = kwargs.pop("second_per_grid_ts", None), kwargs.pop("mm_token_type_ids")
        prompt = input_ids.size(1) - length
        samples, distinct = rows.samples, rows.distinct
        where = {id(samples[row]): i for i, row in enumerate(distinct)}
        index = torch.tensor([where[id(sample)] for sample in samples], device=input_ids.device)
        # the model's own rule (`positions.use_original_rope`, installed by the trainer)
        positions, _ = self.inner.get_rope_index(
            input_ids, mm, **grids, second_per_grid_ts=seconds, attention_mask=attention_mask
        )
        items = rows.videos
        prompt_items = [items[rows.video_rows[row]] for row in distinct]
        clip_items = [items[i] for i in sorted(set(range(len(items))) - set(rows.video_rows))]
        # One vision-tower call for every distinct video and image of the pass, the prompts' and the clips'
        # (`encode_items`): every process calls the tower as often as the others, whatever its rows hold.
        if self.shared_features is not None:
            self.shared_features.rows = SharedRows(prompt_items + clip_items)
            known = self.shared_features.features(prompt_items + clip_items)
        else:
            distinct_items = list({id(item): item for item in prompt_items + clip_items}.values())
            known = dict(
                zip(
                    (id(item) for item in distinct_items),
                    encode_items(self.inner.get_image_features, distinct_items),
                    strict=True,
                )
            )
        prefix_embeds, prefix_deepstack = self._with_visuals(input_ids[distinct, :prompt], prompt_items, known)
        # agentic mode: the clips shown in the completions, in their places
        completion_embeds, completion_deepstack = self._with_visuals(input_ids[:, prompt:], clip_items, known)
        cache = PrefixCache()
        # A checkpointing layer drops the cache it is given unless told that replaying it is safe, as it is here.
        saved = [layer.__dict__.get("_can_checkpoint_with_cache") for layer in layers]
        for layer in layers:
            layer._can_checkpoint_with_cache = True
        try:
            with _language_model_given(self.inner.language_model, prefix_deepstack):
                prefix = self.forward(
                    inputs_embeds=prefix_embeds,
                    attention_mask=attention_mask[distinct, :prompt],
                    position_ids=positions[:, distinct, :prompt],
                    **{cache_keyword(self.forward): cache},
                    **kwargs,
                )
            self.prefix_rows += len(distinct)
            completion = self.inner.language_model(
                inputs_embeds=completion_embeds,
                attention_mask=attention_mask,
                position_ids=positions[:, :, prompt:],
                **{cache_keyword(self.inner.language_model.forward): cache.reader(index)},
                **completion_deepstack,
                **kwargs,
            )
        finally:
            if self.shared_features is not None:
                self.shared_features.rows = rows
            for layer, value in zip(layers, saved, strict=True):
                if value is None:
                    del layer._can_checkpoint_with_cache
                else:
                    layer._can_checkpoint_with_cache = value
        kept = prompt if tail is None else tail - length  # prompt positions returned

        def rows_of(prefix_states: torch.Tensor, completion_states: torch.Tensor) -> torch.Tensor:
            return torch.cat([prefix_states[:, prompt - kept :][index], completion_states], dim=1)

        output = type(prefix)(last_hidden_state=rows_of(prefix.last_hidden_state, completion.last_hidden_state))
        if getattr(prefix, "router_logits", None) is not None:
            # A mixture of experts (transformers >= 5.24 asks for them in training): each layer's router logits of
            # every row, (rows × tokens, experts) as the unshared forward lays them out for the load-balancing loss.
            output.router_logits = tuple(
                rows_of(p.view(len(distinct), prompt, -1), c.view(len(index), length, -1)).flatten(0, 1)
                for p, c in zip(prefix.router_logits, completion.router_logits, strict=True)
            )
        return output

    def _with_visuals(self, input_ids: torch.Tensor, items: list[dict], known: dict) -> tuple[torch.Tensor, dict]:
        """The embeddings of `input_ids` with the features of their visual `items` (in order; their features and
        deepstack features in `known`, by id) at their placeholders, and the language model's deepstack arguments
        for them (none without), as the backbone's forward lays them out."""
        embeds = self.inner.get_input_embeddings()(input_ids)
        if not items:
            return embeds, {}
        by_kind = {kind: [known[id(item)] for item in items if modality(item) == kind] for kind in MODALITIES}
        features = {
            f"{kind}_features": torch.cat([feature for feature, _ in found]).to(embeds.device, embeds.dtype)
            for kind, found in by_kind.items()
            if found
        }
        image_mask, video_mask = self.inner.get_placeholder_mask(input_ids, embeds, **features)
        masks = {"image": image_mask, "video": video_mask}
        for kind in by_kind:
            if f"{kind}_features" in features:
                embeds = embeds.masked_scatter(masks[kind], features[f"{kind}_features"])
        if not any(deep for _, deep in known.values()):
            return embeds, {}
        visual = {kind: masks[kind][..., 0] for kind in by_kind if by_kind[kind]}
        positions = functools.reduce(torch.logical_or, visual.values())
        layers = []
        for layer in range(len(next(iter(known.values()))[1])):
            joint = None
            for kind, found in by_kind.items():
                if not found:
                    continue
                part = torch.cat([deep[layer] for _, deep in found])
                if joint is None:
                    joint = part.new_zeros(int(positions.sum()), part.size(-1))
                joint[visual[kind][positions]] = part
            layers.append(joint)
        return embeds, {"visual_pos_masks": positions, "deepstack_visual_embeds": layers}


@contextlib.contextmanager
def _language_model_given(language_model, arguments: dict):
    """Within the block, each call of `language_model` also gets `arguments`: the backbone's forward, handed the
    embeddings already, passes the deepstack features it has not computed as none."""
    if not arguments:
        yield
        return
    handle = language_model.register_forward_pre_hook(
        lambda module, args, kwargs: (args, kwargs | arguments), with_kwargs=True
    )
    try:
        yield
    finally:
        handle.remove()


class PrefixCache(DynamicCache):
    """The keys and values of the distinct prompts: the prefix pass writes them, and `reader(rows)` gives the cache
    the completions read them through.

    The writer keeps each layer's states (a replayed layer writes equal ones again); the reader returns the prefix
    states of each row followed by the completion's, and stores nothing. Each pass's layers hold their own of the
    two, so a layer replayed by gradient checkpointing in the backward computes what it computed in the forward,
    and the completions' gradients reach the prompt through the cached states.
    """

    def __init__(self, rows: torch.Tensor | None = None):
        super().__init__()
        self.rows = rows

    def reader(self, rows: torch.Tensor) -> "PrefixCache":
        """The cache through which row i of the completions reads prefix row `rows[i]`."""
        reader = PrefixCache(rows)
        reader.layers = self.layers
        return reader

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.rows is None:
            while len(self.layers) <= layer_idx:
                self.layers.append(DynamicLayer())
            layer = self.layers[layer_idx]
            if not layer.is_initialized:
                layer.lazy_initialization(key_states, value_states)
            layer.keys, layer.values = key_states, value_states
            return key_states, value_states
        layer = self.layers[layer_idx]
        return (
            torch.cat([layer.keys[self.rows], key_states], dim=-2),
            torch.cat([layer.values[self.rows], value_states], dim=-2),
        )


def _reentrant(layers) -> bool:
    """Whether the checkpointing of these layers is reentrant (or of a kind not known): its forward runs without
    a graph, so the cached prompt states would carry no gradient."""
    for layer in layers:
        if layer.gradient_checkpointing:
            keywords = getattr(getattr(layer, "_gradient_checkpointing_func", None), "keywords", None)
            if keywords is None or keywords.get("use_reentrant", True) is not False:
                return True
    return False


def base_model(model):
    """A PEFT-wrapped model's base model; any other model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The backbone (`Qwen2_5_VLModel`, `Qwen3VLModel`, ...) inside a (PEFT-wrapped or not) Qwen-VL for conditional
    generation."""
    return base_model(model).model


def install_shared_video_features(model, frozen: bool = False) -> SharedVideoFeatures:
    """Put a `SharedVideoFeatures` in place of the `get_video_features` and `get_image_features` of a Qwen-VL."""
    inner = backbone(model)  # its forward calls self.get_video_features and self.get_image_features
    shared = SharedVideoFeatures(inner, frozen=frozen)
    inner.get_video_features, inner.get_image_features = shared, shared.images
    return shared


def install_shared_prefix(model, shared_features: SharedVideoFeatures | None = None) -> SharedPrefix:
    """Put a `SharedPrefix` in place of the `forward` of a Qwen-VL's backbone."""
    inner = backbone(model)
    shared = SharedPrefix(inner, shared_features)
    inner.forward = shared
    return shared
