"""Generation of rollouts with transformers (KV cache, temperature, top-p, EOS).

:func:`generate` samples G responses for each prompt and returns token tensors in the layout
the rest of stalerl uses: prompts left-padded to a common length L, responses right-padded to R,
``response_mask`` marking response tokens up to and including the first EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stalerl.training.logprobs import completion_log_probs


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
    """(N, R) the sampler's log-probs (after temperature), when requested."""


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
) -> Generation:
    """Sample ``group_size`` responses per prompt (responses of a prompt are consecutive rows)."""
    device = next(model.parameters()).device
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
    L = prompt_ids.shape[1]
    was_training = model.training
    model.eval()
    responses, sampler_lp = [], []
    for start in range(0, len(expanded), batch_size):
        ids = prompt_ids[start:start + batch_size].to(device)
        mask = prompt_mask[start:start + batch_size].to(device)
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
            output_logits=record_log_prob,
        )
        resp = out.sequences[:, L:].cpu()
        responses.append(resp)
        if record_log_prob:
            logits = torch.stack(out.logits, dim=1).float() / temperature
            sampler_lp.append(torch.log_softmax(logits, -1).gather(-1, resp.to(logits.device).unsqueeze(-1)).squeeze(-1).cpu())
    if was_training:
        model.train()
    R = max(r.shape[1] for r in responses)
    response = torch.full((len(expanded), R), pad_id, dtype=torch.long)
    row = 0
    for r in responses:
        response[row:row + r.shape[0], : r.shape[1]] = r
        row += r.shape[0]
    response_mask = _mask_through_eos(response, eos_id, [r.shape[1] for r in responses], [r.shape[0] for r in responses])
    response = torch.where(response_mask.bool(), response, torch.full_like(response, pad_id))
    is_eos = (response == eos_id) & response_mask.bool()
    truncated = ~is_eos.any(-1)
    texts = tokenizer.batch_decode(response * response_mask + pad_id * (1 - response_mask), skip_special_tokens=True)
    rollout_log_prob = None
    if record_log_prob:
        rollout_log_prob = torch.zeros(len(expanded), R)
        row = 0
        for lp in sampler_lp:
            rollout_log_prob[row:row + lp.shape[0], : lp.shape[1]] = lp
            row += lp.shape[0]
        rollout_log_prob = rollout_log_prob * response_mask
    return Generation(
        input_ids=torch.cat([prompt_ids, response], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        response_mask=response_mask,
        texts=texts,
        truncated=truncated,
        rollout_log_prob=rollout_log_prob,
    )


def _mask_through_eos(response: torch.Tensor, eos_id: int, lengths: list[int], rows: list[int]) -> torch.Tensor:
    """1 up to and including the first EOS, and never past what a chunk actually generated."""
    is_eos = response == eos_id
    after_eos = (torch.cumsum(is_eos.to(torch.long), dim=1) - is_eos.to(torch.long)) > 0
    mask = (~after_eos).to(torch.long)
    row = 0
    for n, length in zip(rows, lengths):
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

    This is how the behaviour log-probs of a generation batch are stored (SPEC §3): recomputed by
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
