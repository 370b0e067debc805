"""Continuous-batching generation: a KV-cache decode loop over a pool of live rows.

:func:`decode_continuous` keeps a pool of *live* rows (prompt + response so far) that share one
``transformers`` ``DynamicCache``. Each iteration feeds every live row its last sampled token, samples
the next one, and drops the rows that just ended (EOS or ``max_new_tokens``) from the cache; when a
quarter of the pool is free, waiting prompts are prefilled in one forward pass and appended to it
(continuous batching). A step therefore costs the live rows, not the longest row of a fixed chunk::

    waiting = all rows (a prompt, repeated group_size times)
    while waiting or live:
        if waiting and (no live row or >= 1/4 of the pool free):
            prefill(admit(waiting))        # within batch_size rows and max_batch_tokens
        sample(decode(live)); drop ended rows

**Layout of the cache.** Rows are right-aligned: column ``C-1`` holds each row's most recent token,
a row's earlier columns its prompt and response, and the columns before them are padding, masked out
by the attention mask. Position ids count a row's real tokens (as ``generate`` computes them from a
left-padded mask). Columns that are padding in every live row are cut, so the cache holds
``rows x max_row(prompt + generated)`` positions.

**Token budget.** A row is admitted only if ``rows x (longest live prompt + max_new_tokens) <=
max_batch_tokens`` still holds with it: the cache can never outgrow the budget, whatever the rows
sample. ``max_rows`` (``rollout.batch_size``) caps the rows as well; one row is always admitted.
Like ``DynamicCache`` itself (which concatenates at every step), appending and dropping rows copy
the cache, so the peak is transiently about twice the resident cache.

**The sampler and its log-prob.** For the logits ``z`` of one row (after the ``logits_processor``,
if any), the sampling distribution is

    q = softmax(top_p_mask(z / T))

where ``top_p_mask`` is transformers' ``TopPLogitsWarper`` (sort ascending, drop the tokens whose
cumulative probability is ``<= 1 - top_p``, always keep the most likely one; their logits become
``-inf``), i.e. the nucleus renormalised. The recorded log-prob of the sampled token ``y`` is
``log q(y)``: the exact log-density of the sampler. At ``top_p=1`` it is ``log_softmax(z / T)[y]``,
what the training model's teacher-forced recomputation at temperature ``T`` estimates
(``tests/test_generation.py::test_sampler_log_probs_equal_teacher_forced_recomputation``). Only
the gathered value is kept, never the ``(rows, V)`` distribution of more than the current step.

**Seeds.** Row ``i`` (its index among the ``len(prompts) x group_size`` rows) draws its tokens by
inverse-CDF sampling from its own stream of uniforms, seeded from one integer drawn from torch's
global generator at the start of the call. A row's sample is therefore a function of the global
seed and ``i`` only: the same seed gives the same output whatever ``batch_size``,
``max_batch_tokens`` or the order in which rows are admitted and end. It differs from the static
path's samples for the same seed, which draw one ``torch.multinomial`` over a whole chunk per step
(a row's draw there depends on which rows share its chunk); the two have the same distribution
(``tests/test_generation.py::test_engines_sample_the_same_distribution``).

**Why not transformers' own continuous batching.** ``model.generate_batch`` /
``ContinuousBatchingManager`` (transformers 5.10) was tried on the testbed on CPU: it works, and
returns per-token log-probs of the processed scores, but (1) it is built for CUDA (paged attention,
CUDA graphs, a background thread): on CPU it took 9.7 s where ``model.generate`` took 0.45 s for the
same 64 rows x 64 tokens; (2) its ``seed`` calls ``torch.manual_seed`` on the global generator,
which would reset the training loop's random state (and its resume); (3) it offers no per-row
sampling streams. Hence this compact engine; the static ``generate`` path stays as the fallback
(``rollout.engine=static``, and automatically for caches this engine does not handle, such as
sliding-window or linear-attention layers).
"""

from __future__ import annotations

import inspect
import logging
from collections import deque

import torch

logger = logging.getLogger(__name__)

#: Prompts are admitted when at least this share of the pool is free (or no row is live): a
#: prefill is a forward pass of its own, so admitting one row at a time would double the passes.
REFILL_FRACTION = 0.25

#: Mixes a row's index into the call's seed (the 64-bit golden ratio, as in splitmix64).
_SEED_STRIDE = 0x9E3779B97F4A7C15


def sampler_log_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``(S, V)`` logits -> ``(S, V)`` log-probs of the sampling distribution
    ``log_softmax(top_p_mask(logits / T))`` (transformers' ``TemperatureLogitsWarper`` then
    ``TopPLogitsWarper`` with ``min_tokens_to_keep=1``), in float32."""
    scores = logits.float() / temperature
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def sample_inverse_cdf(log_probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """``(S, V)`` log-probs, ``(S,)`` uniforms in [0, 1) -> ``(S,)`` tokens: the first token whose
    cumulative probability exceeds ``u`` (in float64, so a zero-probability token is never chosen)."""
    cdf = log_probs.double().exp().cumsum(-1)
    total = cdf[:, -1:]
    x = torch.minimum(uniforms.unsqueeze(-1).to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def row_uniforms(seed: int, rows: list[int], n: int) -> torch.Tensor:
    """``(len(rows), n)`` float64 uniforms: row ``i``'s stream depends on ``(seed, i)`` only."""
    gen = torch.Generator()
    out = torch.empty(len(rows), n, dtype=torch.float64)
    for k, row in enumerate(rows):
        gen.manual_seed((seed + row * _SEED_STRIDE) % (2**63))
        out[k] = torch.rand(n, generator=gen, dtype=torch.float64)
    return out


def supports_model(model) -> bool:
    """Whether every layer of the model's cache is a plain ``DynamicLayer`` (full attention), the
    only kind whose rows this engine can select, pad and cut."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class _Pool:
    """The live rows: their cache and per-row state, all on the model's device."""

    def __init__(self, device, track_tokens: bool):
        self.cache = None
        self.device = device
        self.track_tokens = track_tokens
        z = torch.zeros(0, dtype=torch.long, device=device)
        self.rows = z                 # (S,) index of the row among all rows
        self.plen = z                 # (S,) prompt length
        self.generated = z            # (S,) response tokens sampled so far
        self.cached = z               # (S,) real tokens in the cache (the last sampled one is not)
        self.last = z                 # (S,) last sampled token, fed at the next decode step
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)     # (S, C)
        self.tokens = torch.zeros(0, 0, dtype=torch.long, device=device)   # (S, C), for logits processors
        self.uniforms = torch.zeros(0, 0, dtype=torch.float64, device=device)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def keep(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` and cut the columns that are padding in all of them."""
        for name in ("rows", "plen", "generated", "cached", "last", "mask", "tokens", "uniforms"):
            value = getattr(self, name)
            if value.shape[0]:
                setattr(self, name, value[index])
        if len(self) == 0:
            self.cache = None
            return
        cut = self.mask.shape[1] - int(self.cached.max())
        self.mask = self.mask[:, cut:]
        if self.track_tokens:
            self.tokens = self.tokens[:, cut:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:]
            layer.values = layer.values[index, :, cut:]

    def append(self, other: _Pool) -> None:
        """Append ``other``'s rows, left-padding the shorter cache so both stay right-aligned."""
        if len(self) == 0:
            self.__dict__.update(other.__dict__)
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        for a, b in zip(self.cache.layers, other.cache.layers, strict=True):
            a.keys = torch.cat([_left_pad(a.keys, width, -2), _left_pad(b.keys, width, -2)])
            a.values = torch.cat([_left_pad(a.values, width, -2), _left_pad(b.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        if self.track_tokens:
            self.tokens = torch.cat([_left_pad(self.tokens, width, 1), _left_pad(other.tokens, width, 1)])
        for name in ("rows", "plen", "generated", "cached", "last", "uniforms"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


@torch.no_grad()
def decode_continuous(
    model,
    prompts: list[list[int]],
    *,
    eos_id: int,
    pad_id: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    max_rows: int,
    max_batch_tokens: int | None,
    seed: int,
    logits_processor=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one response per prompt (token-id lists without padding).

    Returns ``tokens`` ``(N, max_new_tokens)`` (``pad_id`` after the end), ``log_probs``
    ``(N, max_new_tokens)`` (the sampler's ``log q(y)``, 0 after the end) and ``lengths`` ``(N,)``
    (response tokens, the EOS included), on the CPU. A row ends at its first EOS or at
    ``max_new_tokens``. ``logits_processor`` (transformers' ``LogitsProcessorList`` semantics: called
    with the ``(S, t)`` left-padded token ids so far and the ``(S, V)`` logits) runs before the
    temperature.
    """
    device = next(model.parameters()).device
    n = len(prompts)
    out_tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(n, max_new_tokens, dtype=torch.float32, device=device)
    out_len = torch.zeros(n, dtype=torch.long, device=device)
    plen_all = [len(p) for p in prompts]
    waiting = deque(range(n))
    pool = _Pool(device, logits_processor is not None)
    accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    refill_below = 0

    def sample(logits: torch.Tensor, part: _Pool, input_ids: torch.Tensor | None) -> None:
        if logits_processor is not None:
            logits = logits_processor(input_ids, logits.float())
        log_q = sampler_log_probs(logits, temperature, top_p)
        uniforms = part.uniforms.gather(1, part.generated.unsqueeze(1)).squeeze(1)
        token = sample_inverse_cdf(log_q, uniforms)
        out_tokens[part.rows, part.generated] = token
        out_lp[part.rows, part.generated] = log_q.gather(1, token.unsqueeze(1)).squeeze(1)
        part.last = token
        part.generated = part.generated + 1
        out_len[part.rows] = part.generated

    def drop_ended() -> None:
        live = (pool.last != eos_id) & (pool.generated < max_new_tokens)
        if not bool(live.all()):
            pool.keep(live.nonzero().squeeze(1))

    while waiting or len(pool):
        if waiting and len(pool) <= refill_below:
            admitted = _admit(waiting, pool, plen_all, max_rows, max_batch_tokens, max_new_tokens)
        else:
            admitted = []
        if admitted:
            new, logits = _prefill(model, prompts, admitted, pad_id, seed, max_new_tokens, device, pool.track_tokens,
                                   accepts_keep)
            sample(logits, new, new.tokens if pool.track_tokens else None)
            pool.append(new)
            refill_below = int(len(pool) * (1 - REFILL_FRACTION))
            drop_ended()
            if not len(pool):
                continue
        elif waiting and len(pool) <= refill_below:
            refill_below = len(pool) - 1          # the budget is full: try again when a row ends
        mask = torch.cat([pool.mask, torch.ones_like(pool.last).unsqueeze(1)], dim=1)
        if pool.track_tokens:
            pool.tokens = torch.cat([pool.tokens, pool.last.unsqueeze(1)], dim=1)
        out = model(
            input_ids=pool.last.unsqueeze(1), attention_mask=mask, position_ids=pool.cached.unsqueeze(1),
            past_key_values=pool.cache, use_cache=True,
        )
        pool.mask = mask
        pool.cached = pool.cached + 1
        sample(out.logits[:, -1], pool, pool.tokens if pool.track_tokens else None)
        drop_ended()
    return out_tokens.cpu(), out_lp.cpu(), out_len.cpu()


def _admit(waiting: deque, pool: _Pool, plen: list[int], max_rows: int, max_batch_tokens: int | None,
           max_new_tokens: int) -> list[int]:
    """Rows to admit, in order, while ``rows <= max_rows`` and ``rows x (longest prompt +
    max_new_tokens) <= max_batch_tokens`` (at least one row when the pool is empty)."""
    live = len(pool)
    longest = int(pool.plen.max()) if live else 0
    admitted: list[int] = []
    while waiting and live + len(admitted) < max_rows:
        longer = max(longest, plen[waiting[0]])
        rows = live + len(admitted) + 1
        if max_batch_tokens is not None and rows > 1 and rows * (longer + max_new_tokens) > max_batch_tokens:
            break
        admitted.append(waiting.popleft())
        longest = longer
    return admitted


def _prefill(model, prompts, rows: list[int], pad_id: int, seed: int, max_new_tokens: int, device,
             track_tokens: bool, accepts_keep: bool) -> tuple[_Pool, torch.Tensor]:
    """Run the prompts of ``rows`` (left-padded) through the model into a fresh cache; returns the
    new rows and the ``(n, V)`` logits of their first response token."""
    from transformers import DynamicCache

    width = max(len(prompts[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(prompts[r]):] = torch.tensor(prompts[r], dtype=torch.long)
        mask[k, width - len(prompts[r]):] = 1
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if accepts_keep else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, **extra)
    part = _Pool(device, track_tokens)
    part.cache = out.past_key_values
    part.rows = torch.tensor(rows, dtype=torch.long, device=device)
    part.plen = mask.sum(-1)
    part.generated = torch.zeros(len(rows), dtype=torch.long, device=device)
    part.cached = part.plen.clone()
    part.mask = mask
    part.tokens = ids if track_tokens else part.tokens
    part.uniforms = row_uniforms(seed, rows, max_new_tokens).to(device)
    return part, out.logits[:, -1]
