"""Sequence parallelism: the N processes of a group hold the same rows and split each row's sequence among them.

With `sequence_parallel_size: N`, consecutive ranks form groups of N (`SequenceGroup`). In the log-prob passes
(policy, old, reference; with the shared prefix too) each process of a group

- encodes 1/N of the frames of the call's videos and images in the vision tower, and the features are gathered
  (`SequenceParallel` wraps the tower): a trained tower's gradients flow back to the process that encoded them;
- runs the language model on 1/N of each row's tokens (contiguous shards, sizes differing by at most one): each
  decoder layer gets its shard of the hidden states, of the rotary cos/sin (M-RoPE positions computed from the whole
  rows, so every token keeps its position) and of the mask's query rows; Qwen3's deepstack features are added to
  the tokens of the shard that holds them; the last hidden states are gathered after the final norm, so TRL's head
  and loss run unchanged on every process of the group.

Attention needs every earlier key: each layer's keys and values are gathered across the group (through the layer's
key-value cache, `_GatheredKeys`) and a shard's queries attend to the keys up to its own end. Why that and not
Ulysses (DeepSpeed's all-to-all of heads): Ulysses needs the query heads (and key-value heads) divisible by N —
Qwen2.5-VL-7B's 28 query heads rule out N = 8, the tiny model's single head any N — and DeepSpeed's
`UlyssesSPAttentionHF` drops every padding mask, while TRL's rows are left-padded prompts and right-padded
completions. Gathering keys and values keeps the model's own mask and attention kernel (sdpa, eager, flash: a
shard's causal mask is the bottom-right one flash applies when queries are fewer than keys), and with grouped-query
attention the gathered keys and values are small (Qwen2.5-VL-7B: 4 of 28 heads, 0.29 of the hidden size a token
for both). The cost: the last shard attends to the most keys (no zig-zag balancing).

Gradients: each gather's backward sums the group's gradients and hands each process its own part. The processes of
a group compute the same loss from the gathered states, so every part arrives N times over, and the data-parallel
average over all W processes (DDP, DeepSpeed) divides by N·D: the result is the average over the D groups, the
gradient a D-process run without sequence parallelism computes (tests/test_sequence_parallel.py).

Example:
```python
>>> Shard.of(length=10, size=4, rank=1)
Shard(start=2, end=5, length=10, sizes=(2, 3, 2, 3))
```
"""

import contextlib
import functools
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rewatch_trl.sharing import CACHE_KEYWORDS, backbone, cache_given, cache_keyword


@dataclass(frozen=True)
class Shard:
    """The tokens `[start, end)` of a sequence of `length` that one process of a group holds; `sizes`: every
    process's share, in rank order."""

    start: int
    end: int
    length: int
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, length: int, size: int, rank: int) -> "Shard":
        bounds = [length * r // size for r in range(size + 1)]
        sizes = tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        return cls(bounds[rank], bounds[rank + 1], length, sizes)

    def take(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This shard's part of `tensor` along `dim` (a whole-sequence dimension)."""
        return tensor.narrow(dim, self.start, self.end - self.start)


@dataclass(frozen=True)
class SequenceGroup:
    """The sequence-parallel group this process belongs to: `size` consecutive ranks, this process being `rank` in
    it; `group` its process group (None when `size` is 1). `data_rank` / `data_size`: which of the data-parallel
    groups it is, and how many there are."""

    size: int = 1
    rank: int = 0
    group: object = None
    data_rank: int = 0
    data_size: int = 1

    @classmethod
    def build(cls, size: int) -> "SequenceGroup":
        """The groups of `size` consecutive ranks of the running job (every process builds every group, as
        `torch.distributed.new_group` requires)."""
        if size <= 1:
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            rank = dist.get_rank() if world > 1 else 0
            return cls(1, 0, None, rank, world)
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"sequence_parallel_size={size} needs a distributed launch (accelerate launch)")
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % size:
            raise ValueError(f"sequence_parallel_size={size} must divide the number of processes ({world})")
        mine = None
        for first in range(0, world, size):
            group = dist.new_group(list(range(first, first + size)))
            if first <= rank < first + size:
                mine = group
        return cls(size, rank % size, mine, rank // size, world // size)

    def gather(self, tensor: torch.Tensor, dim: int, sizes: tuple[int, ...]) -> torch.Tensor:
        """The group's parts of a tensor (this process's is `tensor`; `sizes[r]` long along `dim` on rank r),
        concatenated along `dim` in rank order, with gradients flowing back to the part's owner."""
        return _Gather.apply(tensor, dim, sizes, self.group, self.rank)


@contextlib.contextmanager
def splitting(parallels: list["SequenceParallel"]):
    """Within the block, the calls of every model of `parallels` (the policy's, the reference's) are split across
    the group; none: nothing changes."""
    with contextlib.ExitStack() as stack:
        for parallel in parallels:
            stack.enter_context(parallel.splitting())
        yield


def split_generation(group: SequenceGroup, rows: int, generate) -> tuple[list, list | None]:
    """`sequence_parallel_generation: split`: of a generation's `rows` (a prompt's G copies in a row, the same rows
    on every process of the group), this process samples every N-th from its rank on, `generate(indices)` giving
    their completion ids and log-probs (or None); the group's completions are gathered back into row order, so every
    process of the group holds all of them.

    Example (a group of one):
    ```python
    >>> split_generation(SequenceGroup(), 3, lambda rows: ([[r] for r in rows], None))
    ([[0], [1], [2]], None)
    ```
    """
    mine = list(range(group.rank, rows, group.size))
    if group.size == 1:
        return generate(mine)
    # the processes of a group share one seed (the trainer's, a data-parallel group's): each samples its rows from
    # its own, drawn from the shared one, which every process then has moved on alike
    seed = int(torch.randint(2**62, (1,)))
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed + group.rank)
        # an agentic round's active rows may be fewer than the group's processes
        completions, logprobs = generate(mine) if mine else ([], None)
    shares = [None] * group.size
    dist.all_gather_object(shares, (mine, completions, logprobs), group=group.group)
    ordered_ids, ordered_logprobs = [None] * rows, [None] * rows
    for indices, ids, logps in shares:
        for position, row in enumerate(indices):
            ordered_ids[row] = ids[position]
            ordered_logprobs[row] = None if logps is None else logps[position]
    sampled_logprobs = any(logps is not None for indices, _, logps in shares if indices)
    return ordered_ids, ordered_logprobs if sampled_logprobs else None


class GroupSampler(torch.utils.data.Sampler):
    """TRL's index stream with each run of `rows` indices (one process's batch) repeated `times` over in a row:
    accelerate deals batch k to process k mod W, so the `times` consecutive ranks of a group get the same rows. A
    last run short of `rows` is filled from the stream's first indices, as accelerate fills the last batches of a
    data-parallel run, so that no batch holds two groups' rows.

    Example:
    ```python
    >>> list(GroupSampler(range(4), rows=2, times=2))
    [0, 1, 0, 1, 2, 3, 2, 3]
    >>> list(GroupSampler(range(3), rows=2, times=2))
    [0, 1, 0, 1, 2, 0, 2, 0]
    ```
    """

    def __init__(self, sampler, rows: int, times: int):
        self.sampler, self.rows, self.times = sampler, rows, times

    def __iter__(self):
        batch, first = [], []
        for index in self.sampler:
            batch.append(index)
            if len(first) < self.rows:
                first.append(index)
            if len(batch) == self.rows:
                for _ in range(self.times):
                    yield from batch
                batch = []
        if batch:
            batch += (first * self.rows)[: self.rows - len(batch)]
            for _ in range(self.times):
                yield from batch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.rows) * self.rows * self.times

    def set_epoch(self, epoch: int) -> None:
        """The epoch accelerate's data loader hands a seedable sampler, handed on."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class _Gather(torch.autograd.Function):
    """All-gather of parts of unequal sizes along `dim`; the backward sums the group's gradients (all-reduce: gloo
    has no reduce-scatter) and gives each process its own part's."""

    @staticmethod
    def forward(ctx, tensor, dim, sizes, group, rank):
        ctx.dim, ctx.sizes, ctx.group, ctx.rank = dim, sizes, group, rank
        most = max(sizes)
        padding = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [0, most - tensor.size(dim)]
        padded = torch.nn.functional.pad(tensor, padding).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes, strict=True)], dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.sizes[ctx.rank]), None, None, None, None


class _GatheredKeys:
    """Stands in for a sharded layer's key-value cache (or wraps the one it was given, the shared prefix's): the
    shard's keys and values are gathered across the group, handed on to the wrapped cache whole, and the layer's
    attention gets those up to the shard's end."""

    def __init__(self, group: SequenceGroup, shard: Shard, cache=None):
        self.group, self.shard, self.cache = group, shard, cache

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys = self.group.gather(key_states, -2, self.shard.sizes)
        values = self.group.gather(value_states, -2, self.shard.sizes)
        if self.cache is not None:
            keys, values = self.cache.update(keys, values, layer_idx, *args, **kwargs)
        return keys[..., : self.shard.end, :], values[..., : self.shard.end, :]

    def __getattr__(self, name):
        return getattr(self.cache, name)


class SequenceParallel:
    """Installed on a Qwen-VL model: within `splitting()`, each language-model call that starts a sequence (no
    cached keys before it) runs on this process's shard of its tokens, and each vision-tower call on its share of
    the frames (module docstring). Outside it, and for calls that continue a cache (the shared prefix's
    completions, generation), the model runs whole.

    """

    def __init__(self, model, group: SequenceGroup):
        self.group = group
        inner = backbone(model)
        self.merged = inner.visual.spatial_merge_size**2  # patches a visual token
        self.language_model = language_model = inner.language_model
        self.attention = getattr(language_model.config, "_attn_implementation", "sdpa") or "sdpa"
        self.enabled = False
        self.call: Shard | None = None  # the shard of the language-model call under way
        # a layer call's rotary cos → its shard: where checkpointing replays a layer's hooks in the backward
        # (transformers before 5.24), the replay finds its shard by the inputs it is replayed with
        self._shards: dict[int, tuple[weakref.ref, Shard]] = {}
        language_model.register_forward_pre_hook(self._begin, with_kwargs=True)
        language_model.register_forward_hook(self._end, always_call=True)
        for index, layer in enumerate(language_model.layers):
            layer.register_forward_pre_hook(functools.partial(self._layer, index), with_kwargs=True)
            # a checkpointed layer keeps the cache it is handed (the gathering one): replayed in the backward, it
            # gathers its keys again, as every process of the group replays it alike
            layer._can_checkpoint_with_cache = True
        language_model.norm.register_forward_hook(self._gathered)
        if hasattr(language_model, "_deepstack_process"):
            language_model._deepstack_process = self._deepstack(language_model._deepstack_process)
        inner.visual.forward = self._visual(inner.visual.forward)

    @contextlib.contextmanager
    def splitting(self):
        """Within the block, the model's calls are split across the group."""
        self.enabled, before = True, self.enabled
        try:
            yield
        finally:
            self.enabled = before

    def _begin(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        tokens = embeds if embeds is not None else (kwargs.get("input_ids") if not args else args[0])
        cache = cache_given(kwargs)
        continuing = cache is not None and cache.get_seq_length() > 0
        length = tokens.shape[1] if tokens is not None else 0
        self.call = None
        if self.enabled and not continuing and length >= self.group.size:
            self.call = Shard.of(length, self.group.size, self.group.rank)

    def _end(self, module, args, output):
        self.call = None

    def _remember(self, cos: torch.Tensor, shard: Shard) -> None:
        key = id(cos)

        def forget(ref, key=key):
            if self._shards.get(key, (None,))[0] is ref:
                del self._shards[key]

        self._shards[key] = (weakref.ref(cos, forget), shard)

    def _shard_of(self, cos: torch.Tensor) -> Shard | None:
        known = self._shards.get(id(cos))
        return known[1] if known is not None and known[0]() is cos else None

    def _layer(self, index, layer, args, kwargs):
        embeddings = kwargs.get("position_embeddings")
        if embeddings is None:
            return None
        # the cos the layer is handed (ZeRO-3's hooks hand on other tensor objects than the rotary module returned)
        shard = self.call
        if shard is not None:
            self._remember(embeddings[0], shard)
        else:
            shard = self._shard_of(embeddings[0])
        if shard is None:
            return None
        if index == 0:
            if args:
                args = (shard.take(args[0], 1), *args[1:])
            else:
                kwargs["hidden_states"] = shard.take(kwargs["hidden_states"], 1)
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["position_embeddings"] = self._positions(shard, embeddings)
        if isinstance(kwargs.get("position_ids"), torch.Tensor):
            # the text positions reach attention only for flash kernels, which would read a shard's (not starting
            # at 0) as packed sequences; the rotary cos and sin carry the positions
            flash = self.attention.startswith("flash")
            kwargs["position_ids"] = None if flash else shard.take(kwargs["position_ids"], -1)
        kwargs["attention_mask"] = self._mask_rows(kwargs.get("attention_mask"), shard, hidden)
        given = [kwargs.pop(name, None) for name in CACHE_KEYWORDS]
        given = next((cache for cache in given if cache is not None), None)
        kwargs[cache_keyword(layer.forward)] = _GatheredKeys(self.group, shard, given)
        return args, kwargs

    def _positions(self, shard: Shard, embeddings: tuple) -> tuple:
        """The shard's rotary cos and sin: the whole rows' (from their M-RoPE positions), cut."""
        return tuple(shard.take(part, -2) for part in embeddings)

    def _mask_rows(self, mask, shard: Shard, hidden: torch.Tensor):
        """The mask of this shard's queries over the keys up to its end: the model's own, cut. Where the model relies
        on the kernel's causal flag (no mask): none for flash kernels, whose causal mask of fewer queries than keys is
        the bottom-right one, nor for the first shard (square); for sdpa on a GPU, torch's bottom-right causal bias
        (its efficient kernels, nothing written out); otherwise the rows written out, additive (a boolean mask costs
        CPU sdpa a copy of it as floats)."""
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            return mask[:, :, shard.start : shard.end, : shard.end]
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask[:, : shard.end]
        if mask is not None:
            raise NotImplementedError(f"sequence parallelism takes tensor masks, not {type(mask).__name__}")
        if self.attention.startswith("flash") or (shard.start == 0 and self.attention == "sdpa"):
            return None
        if self.attention == "sdpa" and hidden.is_cuda:
            from torch.nn.attention.bias import causal_lower_right

            return causal_lower_right(shard.end - shard.start, shard.end)
        queries = torch.arange(shard.start, shard.end, device=hidden.device)[:, None]
        allowed = torch.arange(shard.end, device=hidden.device)[None, :] <= queries
        blocked = torch.finfo(hidden.dtype).min
        return torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~allowed, blocked)[
            None, None
        ]

    def _gathered(self, module, args, output):
        if self.call is None:
            return None
        return self.group.gather(output, 1, self.call.sizes)

    def _deepstack(self, process):
        def deepstack_process(hidden_states, visual_pos_masks, visual_embeds):
            shard = self.call
            if shard is None:
                return process(hidden_states, visual_pos_masks, visual_embeds)
            order = torch.zeros(visual_pos_masks.shape, dtype=torch.long, device=visual_pos_masks.device)
            order[visual_pos_masks] = torch.arange(int(visual_pos_masks.sum()), device=visual_pos_masks.device)
            local = shard.take(visual_pos_masks, 1)
            rows = shard.take(order, 1)[local]
            return process(hidden_states, local, visual_embeds[rows.to(visual_embeds.device)])

        return deepstack_process

    def _visual(self, forward):
        def visual(pixels, grid_thw=None, **kwargs):
            frames = int(grid_thw[:, 0].sum()) if grid_thw is not None else 0
            if not self.enabled or frames < self.group.size:
                return forward(pixels, grid_thw=grid_thw, **kwargs)
            return self._visual_share(forward, pixels, grid_thw, frames, **kwargs)

        return visual

    def _visual_share(self, forward, pixels, grid_thw, frames, **kwargs):
        """This process's share of the frames through the tower; every share's features, gathered."""
        grid = grid_thw.tolist()
        size, rank = self.group.size, self.group.rank
        bounds = [frames * r // size for r in range(size + 1)]

        def share_of(r):
            """(pixel rows, grid) of rank r's frames `[bounds[r], bounds[r + 1])`, item by item."""
            rows, local, first, row = [], [], 0, 0
            for t, h, w in grid:
                lo, hi = max(bounds[r], first), min(bounds[r + 1], first + t)
                if lo < hi:
                    rows.append((row + (lo - first) * h * w, (hi - lo) * h * w))
                    local.append([hi - lo, h, w])
                first, row = first + t, row + t * h * w
            return rows, local

        rows, local = share_of(rank)
        mine = torch.cat([pixels.narrow(0, start, count) for start, count in rows])
        output = forward(mine, grid_thw=torch.tensor(local, dtype=grid_thw.dtype, device=grid_thw.device), **kwargs)
        tokens = tuple(sum(t * h * w for t, h, w in share_of(r)[1]) // self.merged for r in range(size))
        output.pooler_output = self._visual_gather(output.pooler_output, tokens)
        layers = getattr(output, "deepstack_features", None)
        if layers:
            output.deepstack_features = [self._visual_gather(layer, tokens) for layer in layers]
        # the patches' states before the merger: no caller reads them, and they are the largest
        output.last_hidden_state = None
        return output

    def _visual_gather(self, features: torch.Tensor, tokens: tuple[int, ...]) -> torch.Tensor:
        """Every share's visual tokens (`tokens[r]` of rank r), gathered in frame order."""
        return self.group.gather(features, 0, tokens)
