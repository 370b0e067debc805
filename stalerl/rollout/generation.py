"""Generation of rollouts with transformers (KV cache, temperature, top-p, EOS).

:func:`generate` samples G responses for each prompt and returns token tensors in the layout
the rest of stalerl uses: prompts left-padded to a common length L, responses right-padded to R
(the longest response), ``response_mask`` marking response tokens up to and including the first
EOS. Two engines produce that layout (``rollout.engine``):

* ``continuous`` (default): :func:`stalerl.rollout.engine.decode_continuous`, continuous batching
  over a pool of live rows: a row that ends leaves the batch and a waiting prompt takes its place,
  so a step costs the live rows, not the longest row of a chunk. Same distribution as ``static``,
  different samples for the same seed (each row has its own random stream; see the engine's
  docstring), and the same samples whatever ``batch_size`` and ``max_batch_tokens``.
* ``static``: one ``model.generate`` per chunk of rows; every row of a chunk decodes until the
  chunk's longest row ends. The same samples as stalerl's earlier releases for the same seed.

Both batch by rows (``batch_size``) and by a token budget (``max_batch_tokens``: rows x (longest
prompt + ``max_new_tokens``), the KV-cache positions a batch can need). Both record the same
sampler log-prob when asked: ``log q(y)`` with ``q = softmax(top_p_mask(logits / T))``, the
nucleus renormalised (``stalerl.rollout.engine.sampler_log_probs``); at ``top_p=1`` that is
``log_softmax(logits / T)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from stalerl.models.logprobs import completion_log_probs
from stalerl.rollout import engine as continuous

Engine = Literal["continuous", "static"]
ENGINES: tuple[str, ...] = ("continuous", "static")


@dataclass
class Generation:
    """Sampled sequences of one call to :func:`generate`."""

    input_ids: torch.Tensor
    """(N, L + R) prompt (left-padded) + response (right-padded)."""
    attention_mask: torch.Tensor
    """(N, L + R) 1 for real tokens (prompt and response up to EOS)."""
    response_mask: torch.Tensor
    """(N, R) 1 for response tokens up to and including EOS."""
    texts: list[str]
    """Decoded responses (special tokens removed)."""
    truncated: torch.Tensor
    """(N,) bool: the response hit max_new_tokens without EOS."""
    rollout_log_prob: torch.Tensor | None = None
    """(N, R) the sampler's log-probs ``log q(y)`` (temperature, then top-p renormalised), when
    requested; 0 outside ``response_mask``."""


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad token nor an EOS token")


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    record_log_prob: bool = False,
    engine: Engine = "continuous",
    max_batch_tokens: int | None = None,
    logits_processor=None,
) -> Generation:
    """Sample ``group_size`` responses per prompt (responses of a prompt are consecutive rows).

    ``batch_size`` is the most rows decoded at once, ``max_batch_tokens`` (None: no limit) the most
    ``rows x (longest prompt + max_new_tokens)``; one row always runs. ``logits_processor``
    (transformers' ``LogitsProcessorList`` semantics) runs on the logits before the temperature.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    pad_id = _pad_token_id(tokenizer)
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_id
    expanded = [p for p in prompts for _ in range(group_size)]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    if engine == "continuous" and not continuous.supports_model(model):
        warnings.warn(
            f"rollout.engine=continuous does not handle the cache of {type(model).__name__} (sliding-window or "
            "non-attention layers); generating with rollout.engine=static instead",
            stacklevel=2,
        )
        engine = "static"
    was_training = model.training
    model.eval()
    try:
        if engine == "static":
            response, response_mask, log_prob = _generate_static(
                model, prompt_ids, prompt_mask, pad_id=pad_id, eos_id=eos_id, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                record_log_prob=record_log_prob, logits_processor=logits_processor,
            )
        else:
            response, response_mask, log_prob = _generate_continuous(
                model, prompt_ids, prompt_mask, pad_id=pad_id, eos_id=eos_id, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                logits_processor=logits_processor,
            )
    finally:
        if was_training:
            model.train()
    response = torch.where(response_mask.bool(), response, torch.full_like(response, pad_id))
    is_eos = (response == eos_id) & response_mask.bool()
    truncated = ~is_eos.any(-1)
    texts = tokenizer.batch_decode(response * response_mask + pad_id * (1 - response_mask), skip_special_tokens=True)
    return Generation(
        input_ids=torch.cat([prompt_ids, response], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        response_mask=response_mask,
        texts=texts,
        truncated=truncated,
        rollout_log_prob=log_prob * response_mask if record_log_prob else None,
    )


def rows_per_chunk(batch_size: int, max_batch_tokens: int | None, prompt_length: int, max_new_tokens: int) -> int:
    """Rows of one static chunk: ``batch_size``, fewer if ``max_batch_tokens`` binds (at least 1)."""
    if max_batch_tokens is None:
        return batch_size
    return max(1, min(batch_size, max_batch_tokens // (prompt_length + max_new_tokens)))


def _generate_continuous(model, prompt_ids, prompt_mask, *, pad_id, eos_id, temperature, top_p, max_new_tokens,
                         batch_size, max_batch_tokens, logits_processor):
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask, strict=True)]
    # One draw from torch's global generator seeds every row's stream: the caller's seed decides.
    seed = int(torch.randint(0, 2**62, (1,)).item())
    tokens, log_prob, lengths = continuous.decode_continuous(
        model, rows, eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, max_rows=batch_size, max_batch_tokens=max_batch_tokens, seed=seed,
        logits_processor=logits_processor,
    )
    R = max(int(lengths.max()), 1) if len(rows) else 1
    response_mask = (torch.arange(R).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return tokens[:, :R], response_mask, log_prob[:, :R]


def _generate_static(model, prompt_ids, prompt_mask, *, pad_id, eos_id, temperature, top_p, max_new_tokens,
                     batch_size, max_batch_tokens, record_log_prob, logits_processor):
    """One ``model.generate`` per chunk (the sampler's log-probs from the processed scores)."""
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    if logits_processor is not None and not isinstance(logits_processor, LogitsProcessorList):
        logits_processor = LogitsProcessorList([logits_processor])
    L = prompt_ids.shape[1]
    chunk = rows_per_chunk(batch_size, max_batch_tokens, L, max_new_tokens)
    responses, sampler_lp = [], []
    for start in range(0, prompt_ids.shape[0], chunk):
        ids = prompt_ids[start:start + chunk].to(device)
        mask = prompt_mask[start:start + chunk].to(device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=record_log_prob,
            logits_processor=logits_processor,
        )
        resp = out.sequences[:, L:].cpu()
        responses.append(resp)
        if record_log_prob:
            # the scores after the logits processors, the temperature and top-p: log_softmax is log q
            scores = torch.stack(out.scores, dim=1).float()
            sampler_lp.append(torch.log_softmax(scores, -1).gather(-1, resp.to(scores.device).unsqueeze(-1)).squeeze(-1).cpu())
    R = max(r.shape[1] for r in responses)
    response = torch.full((prompt_ids.shape[0], R), pad_id, dtype=torch.long)
    log_prob = torch.zeros(prompt_ids.shape[0], R)
    row = 0
    for i, r in enumerate(responses):
        response[row:row + r.shape[0], : r.shape[1]] = r
        if record_log_prob:
            log_prob[row:row + r.shape[0], : r.shape[1]] = sampler_lp[i]
        row += r.shape[0]
    response_mask = _mask_through_eos(response, eos_id, [r.shape[1] for r in responses], [r.shape[0] for r in responses])
    # an unsampled token after EOS may score -inf: keep the recorded values finite
    log_prob = torch.where(response_mask.bool(), log_prob, torch.zeros_like(log_prob))
    return response, response_mask, log_prob


def _mask_through_eos(response: torch.Tensor, eos_id: int, lengths: list[int], rows: list[int]) -> torch.Tensor:
    """1 up to and including the first EOS, and never past what a chunk actually generated."""
    is_eos = response == eos_id
    after_eos = (torch.cumsum(is_eos.to(torch.long), dim=1) - is_eos.to(torch.long)) > 0
    mask = (~after_eos).to(torch.long)
    row = 0
    for n, length in zip(rows, lengths, strict=True):
        mask[row:row + n, length:] = 0
        row += n
    return mask


@torch.no_grad()
def behaviour_log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
    micro_batch_size: int = 32,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Log-probs of the responses under ``model`` (the training model), computed without grad.

    This is how the behaviour log-probs of a generation batch are stored (docs/DESIGN.md#stale-k): recomputed by
    the training model right after generation, as the released M2PO code does.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, input_ids.shape[0], micro_batch_size):
        lp, _ = completion_log_probs(
            model,
            input_ids[start:start + micro_batch_size].to(device),
            attention_mask[start:start + micro_batch_size].to(device),
            response_length,
            temperature=temperature,
            chunk_size=chunk_size,
            compute_entropy=False,
        )
        out.append(lp.float().cpu())
    if was_training:
        model.train()
    return torch.cat(out)
