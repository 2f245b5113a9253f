"""The sampler's truncated distribution, on the trainer's side: what vLLM's top-k, top-p and min-p keep.

TRL builds vLLM with `logprobs_mode="processed_logprobs"`: the log-probs vLLM returns are those of the truncated,
renormalised distribution it sampled from (temperature, logit bias, min-p, top-k, top-p applied), while the trainer's
are over the whole vocabulary. Each token's importance ratio then carries the kept mass S ≤ 1, and TRL's default
`sequence_mask` multiplies them over the sequence: at top_p 0.9 and 2k tokens the ratio is ~0.9^2000 and the loss
is scaled to nothing (huggingface/trl#6789). Like must be compared with like: for the correction, the trainer's
log-prob of a sampled token is put on the sampler's support, `log p(token) - log S`, where S is the mass that the
trainer's own distribution keeps under the same truncation; the correction is then left with the real mismatch
between the engines.

`kept_log_mass` reproduces vLLM 0.31's V1 sampler (`vllm/v1/sample/sampler.py`, `ops/topk_topp_sampler.py`):
min-p (`probs < min_p * max_prob` dropped) after the temperature, then top-k (ties with the k-th value kept), then
top-p on the top-k-truncated distribution (ascending sort, tokens whose cumulative mass is `<= 1 - top_p` dropped,
the most likely one always kept), in float32.

Example:
```python
>>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
>>> round(kept_log_mass(logits, top_p=0.7).exp().item(), 6)  # 0.05 and 0.15 dropped (0.2 <= 0.3)
0.8
>>> round(kept_log_mass(logits, top_k=1).exp().item(), 6)
0.5
>>> kept_log_mass(logits).item()  # nothing truncated
0.0
```
"""

import contextlib

import torch


# Rows of logits at a time: a (rows, vocabulary) float32 block, its sort and its indices
CHUNK_ROWS = 256


def truncates(top_k: int | None = None, top_p: float | None = None, min_p: float | None = None) -> bool:
    """Whether these sampling settings truncate the distribution (vLLM: top_k 0 or -1, top_p 1, min_p 0: none)."""
    return bool(top_k and top_k > 0) or (top_p is not None and top_p < 1.0) or bool(min_p and min_p > 0.0)


def kept_log_mass(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None, min_p: float | None = None
) -> torch.Tensor:
    """log S per row of `logits` (..., vocabulary; temperature and biases applied): the log of the probability mass
    that vLLM's min-p, top-k and top-p keep, ≤ 0 (0 when nothing is truncated)."""
    logits = logits.float()
    full = torch.logsumexp(logits, dim=-1)
    kept = logits
    if min_p and min_p > 0.0:
        probs = torch.softmax(kept, dim=-1)
        kept = kept.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    if top_k and 0 < top_k < kept.size(-1):
        kth = torch.topk(kept, top_k, dim=-1).values[..., -1:]
        kept = kept.masked_fill(kept < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(kept, dim=-1)
        cumulative = torch.softmax(ascending, dim=-1).cumsum(dim=-1)
        dropped = cumulative <= 1 - top_p
        dropped[..., -1] = False
        kept = kept.scatter(-1, order, ascending.masked_fill(dropped, float("-inf")))
    return torch.logsumexp(kept, dim=-1) - full


def completion_kept_log_mass(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """`kept_log_mass` of the next-token distributions at `hidden` (batch, tokens, width) through the LM `head`
    (its bias included: the suppressed vision tokens) at `temperature`, `CHUNK_ROWS` rows at a time, without grad;
    under ZeRO-3 the head's weight is gathered for the call."""
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    rows = hidden.reshape(-1, hidden.size(-1))
    masses = []
    with torch.no_grad(), maybe_gather_lm_head_ctx(head.weight, head.bias):
        for chunk in rows.split(CHUNK_ROWS):
            logits = torch.nn.functional.linear(chunk.to(head.weight.dtype), head.weight, head.bias)
            masses.append(kept_log_mass(logits.float() / temperature, top_k, top_p, min_p))
    return torch.cat(masses).view(hidden.shape[:-1])


@contextlib.contextmanager
def kept_mass_recorded(
    backbone: torch.nn.Module,
    model: torch.nn.Module,
    logits_to_keep: int,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
):
    """Within the block, each call of the language `backbone` appends to the list yielded the log of the mass the
    sampler's truncation keeps of the next-token distribution (through `model`'s output embeddings) at each of the
    last `logits_to_keep` tokens: the old-policy pass's share of the sampler's support, for TRL's correction."""
    head = model.get_output_embeddings()
    masses = []

    def hook(module, args, output):
        hidden = output.last_hidden_state[:, -(logits_to_keep + 1) : -1]
        masses.append(completion_kept_log_mass(hidden, head, temperature, top_k, top_p, min_p))

    handle = backbone.register_forward_hook(hook)
    try:
        yield masses
    finally:
        handle.remove()
