"""M-RoPE positions by the rule Qwen2.5-VL was pretrained with, the rule vLLM computes for the rollouts.

transformers 5.17's `Qwen2_5_VLModel.get_rope_index` departs from it twice: it multiplies by
`int(second_per_grid_ts)` (a 6.26 s temporal grid counts as 6 s), and it resumes the text after a video at the
video's start plus its spatial extent, ignoring its temporal extent. The original rule:

- text advances by one from the largest position so far plus one (0 at the start of the sequence);
- a video (or image) of merged grid (t, h, w) starting at position s gets, for its token of grid indices
  (i, j, k): temporal `s + int(i * second_per_grid_ts * tokens_per_second)`, height `s + j`, width `s + k`
  (an image, or a video without `second_per_grid_ts`, counts 0 s and 1 s per grid respectively).

`use_original_rope(model)` makes a Qwen2.5-VL compute its positions this way in every forward pass and in
`generate` (transformers calls the backbone's `get_rope_index` for both, and derives the decoding steps' positions
from the deltas it returns).

Example:
```python
>>> ids = torch.tensor([[1, 2, VIDEO, VIDEO, VIDEO, VIDEO, 3]])  # a 2x(2x2) video: grid (2, 4, 4) before merging
>>> position_ids, deltas = rope_index(config, ids, video_grid_thw=torch.tensor([[2, 4, 4]]),
...                                   second_per_grid_ts=torch.tensor([2.0]))  # doctest: +SKIP
>>> position_ids[0, 0].tolist(), deltas.tolist()  # doctest: +SKIP
([0, 1, 2, 2, 6, 6, 7], [[1]])
```
"""

import bisect
import itertools

import torch


def rope_index(
    config,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D positions `(3, batch, length)` of `input_ids` by the original Qwen2.5-VL rule, and the deltas
    `(batch, 1)` (largest position + 1 - the row's length without padding) that place the tokens generated after
    them. Videos and images are taken in order through the batch, as the processor lays out their grids. Each
    `second_per_grid_ts` is read at the value its dtype holds, and the temporal index is computed in double
    precision, as vLLM computes it. Padding (`attention_mask` 0, either side) gets position 1."""
    vision = getattr(config, "vision_config", config)
    merge = vision.spatial_merge_size
    tokens_per_second = getattr(vision, "tokens_per_second", 1)
    image_token, video_token = config.image_token_id, config.video_token_id
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = torch.ones(3, *input_ids.shape, dtype=torch.long, device=input_ids.device)
    deltas = []
    images = iter(image_grid_thw if image_grid_thw is not None else [])
    videos = iter(video_grid_thw if video_grid_thw is not None else [])
    # without `second_per_grid_ts`, a video's temporal grids are 1 s apart (as in transformers and vLLM)
    seconds = iter(second_per_grid_ts) if second_per_grid_ts is not None else itertools.repeat(torch.tensor(1.0))
    for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
        ids = ids[mask.bool()]
        vision_at = torch.nonzero((ids == image_token) | (ids == video_token)).flatten().tolist()
        blocks, start, next_position = [], 0, 0
        while True:
            following = bisect.bisect_left(vision_at, start)
            end = vision_at[following] if following < len(vision_at) else len(ids)
            blocks.append(torch.arange(end - start).expand(3, -1) + next_position)
            next_position += end - start
            if end == len(ids):
                break
            if ids[end] == video_token:
                grid, second = next(videos, None), next(seconds, None)
            else:
                grid, second = next(images, None), torch.tensor(0.0)
            if grid is None or second is None:
                raise ValueError(f"row {row} has more vision tokens than the grids given describe")
            t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
            step = float(second) * tokens_per_second
            temporal = (torch.arange(t, dtype=torch.float64) * step).long().repeat_interleave(h * w)
            height = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
            width = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
            block = torch.stack([temporal, height, width]) + next_position
            blocks.append(block)
            next_position = int(block.max()) + 1
            start = end + t * h * w
        row_positions = torch.cat(blocks, dim=1)
        positions[:, row, mask.bool()] = row_positions.to(positions.device)
        deltas.append(int(row_positions.max()) + 1 - len(ids))
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def use_original_rope(model, seconds_dtype: torch.dtype | None = None):
    """Have a (PEFT-wrapped or not) Qwen2.5-VL compute its M-RoPE positions with `rope_index`, in training passes,
    `generate` and its decoding steps alike. Returns the model.

    `second_per_grid_ts` is first cast to `seconds_dtype` (by default the model's dtype), as vLLM does: it casts
    every floating output of the processor to its model's dtype, so in a bf16 run a 6.2604 s grid counts 6.25 s."""
    from rewatch_trl.families import family_of
    from rewatch_trl.sharing import backbone

    if not family_of(model).original_rope:  # transformers' own rule is the model's
        return model
    inner = backbone(model)
    dtype = seconds_dtype or inner.dtype

    # transformers' signature: its forward and `generate` call the backbone's `get_rope_index` with these names
    def get_rope_index(
        input_ids,
        mm_token_type_ids=None,
        image_grid_thw=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
        attention_mask=None,
        **kwargs,
    ):
        if second_per_grid_ts is not None:
            second_per_grid_ts = torch.as_tensor(second_per_grid_ts).to(dtype)
        return rope_index(inner.config, input_ids, attention_mask, video_grid_thw, second_per_grid_ts, image_grid_thw)

    inner.get_rope_index = get_rope_index
    return model
