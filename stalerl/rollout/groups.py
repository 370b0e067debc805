"""Shaping one generation batch: DAPO's overlong penalty, dynamic sampling and overlong masking.

All three are off by default (``algorithm.*``, see docs/OPTIONS.md) and act inside
:func:`stalerl.rollout.batch.make_rollout_batch`, so a batch keeps the policy version of the model
that generated every one of its rounds (the sync loop and the async worker do not change the
model while they make a batch).

* **Soft overlong punishment** (DAPO, Yu et al. 2025, eq. 13), added to the reward of a response
  of ``|y|`` tokens (EOS included), with ``L_max = rollout.max_new_tokens`` and
  ``L_cache = algorithm.overlong_buffer_len``::

      R_length(y) = 0                                   if |y| <= L_max - L_cache
                  = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max

  times ``overlong_penalty_factor`` (verl's ``DAPORewardManager``:
  ``min(-exceed_len / buffer_len * penalty_factor, 0)``).
* **Dynamic sampling** (DAPO section 3.2, eq. 11): a group whose G rewards are all equal has zero
  advantage; it is dropped, and rounds of ``rollout.prompts_per_step`` new prompts are generated
  until P groups with unequal rewards are collected (groups beyond P are discarded, as verl's
  ``filter_groups`` does), at most ``algorithm.dynamic_sampling_max_tries`` rounds. A batch still
  short then is completed with the last dropped groups and the shortfall is logged
  (``rollout/dynamic_sampling_unfilled``) instead of stopping the run (verl raises there).
  The rewards compared are the shaped ones (after the overlong penalty): those are what the
  advantages are computed from.
* **Masking truncated completions** (TRL's ``mask_truncated_completions``; DAPO section 3.4
  "overlong filtering"): a response that hit ``max_new_tokens`` without EOS is left out of the
  loss (``RolloutBatch.loss_rows``: its ``response_mask`` is zero, its tokens stay), and it still
  counts in its group's advantage.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import torch

from stalerl.rollout.generation import Generation

__all__ = ["score_groups", "overlong_penalty", "equal_reward_groups", "select_rows", "concat_generations", "collect_groups"]

log = logging.getLogger(__name__)


def score_groups(reward_fn, texts: list[str], prompts: list, group_size: int):
    """Score ``texts`` (``group_size`` consecutive responses per prompt of ``prompts``). A user
    reward function also gets the prompt text and the row's other fields when it asks for them
    (:class:`stalerl.rewards.reward.UserReward`)."""
    from stalerl.rewards.reward import UserReward

    answers = [p.answer for p in prompts for _ in range(group_size)]
    if isinstance(reward_fn, UserReward):
        return reward_fn(texts, answers, prompts=[p.text for p in prompts for _ in range(group_size)],
                         extras=[p.extra for p in prompts for _ in range(group_size)])
    return reward_fn(texts, answers)


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer_len: int, factor: float) -> torch.Tensor:
    """``(N,)`` DAPO eq. 13 times ``factor`` for response lengths ``(N,)``; zeros when ``buffer_len`` is 0."""
    if buffer_len <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    exceed = lengths.float() - (max_new_tokens - buffer_len)
    return torch.clamp(-exceed / buffer_len * factor, max=0.0)


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(N / G,)`` bool: the groups (consecutive ``group_size`` rows) whose rewards are all equal."""
    grouped = rewards.view(-1, group_size)
    return grouped.max(dim=1).values == grouped.min(dim=1).values


def select_rows(gen: Generation, rows: torch.Tensor) -> Generation:
    """The rows ``rows`` of a generation."""
    pick = rows.tolist()
    return replace(
        gen, input_ids=gen.input_ids[rows], attention_mask=gen.attention_mask[rows],
        response_mask=gen.response_mask[rows], texts=[gen.texts[i] for i in pick], truncated=gen.truncated[rows],
        rollout_log_prob=None if gen.rollout_log_prob is None else gen.rollout_log_prob[rows],
    )


def concat_generations(gens: list[Generation], pad_id: int) -> Generation:
    """Generations stacked row-wise, prompts re-padded on the left and responses on the right."""
    if len(gens) == 1:
        return gens[0]
    prompt_len = [g.input_ids.shape[1] - g.response_mask.shape[1] for g in gens]
    L, R = max(prompt_len), max(g.response_mask.shape[1] for g in gens)

    def pad(t: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (left, right), value=value)

    ids, attn, resp, lp = [], [], [], []
    for g, lg in zip(gens, prompt_len, strict=True):
        rg = g.response_mask.shape[1]
        ids.append(torch.cat([pad(g.input_ids[:, :lg], L - lg, 0, pad_id), pad(g.input_ids[:, lg:], 0, R - rg, pad_id)], 1))
        attn.append(torch.cat([pad(g.attention_mask[:, :lg], L - lg, 0, 0), pad(g.attention_mask[:, lg:], 0, R - rg, 0)], 1))
        resp.append(pad(g.response_mask, 0, R - rg, 0))
        if g.rollout_log_prob is not None:
            lp.append(pad(g.rollout_log_prob, 0, R - rg, 0.0))
    return Generation(
        input_ids=torch.cat(ids), attention_mask=torch.cat(attn), response_mask=torch.cat(resp),
        texts=[t for g in gens for t in g.texts], truncated=torch.cat([g.truncated for g in gens]),
        rollout_log_prob=torch.cat(lp) if len(lp) == len(gens) else None,
    )


def _concat_scored(parts):
    from stalerl.rewards.reward import RewardBatch

    counts: dict[str, int] = {}
    for p in parts:
        for key, value in p.counts.items():
            counts[key] = counts.get(key, 0) + value
    return RewardBatch(
        [s for p in parts for s in p.scores], [c for p in parts for c in p.correct],
        [e for p in parts for e in p.extracted], counts, [a for p in parts for a in p.answers],
    )


def _select_scored(scored, rows: list[int]):
    from stalerl.rewards.reward import RewardBatch

    answers = [scored.answers[i] for i in rows] if scored.answers else []
    # category counts cannot be split per row: collect_groups sums them over every scored round
    return RewardBatch([scored.scores[i] for i in rows], [scored.correct[i] for i in rows],
                       [scored.extracted[i] for i in rows], {}, answers)


def shaped_rewards(gen: Generation, scored, config) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards (N,), overlong penalty (N,))``: the reward function's scores plus DAPO eq. 13."""
    ac = config.algorithm
    penalty = overlong_penalty(gen.response_mask.sum(-1), config.rollout.max_new_tokens, ac.overlong_buffer_len,
                               ac.overlong_penalty_factor)
    return torch.tensor(scored.scores, dtype=torch.float32) + penalty, penalty


def collect_groups(sample_round: Callable[[int], tuple[Generation, object]], config, pad_id: int):
    """One batch of ``rollout.prompts_per_step`` groups: ``(generation, scores, rewards, info)``.

    ``sample_round(n)`` generates and scores ``n`` new prompts x G responses. Without dynamic
    sampling it is called once; with it, as described in the module docstring.
    """
    rc, ac = config.rollout, config.algorithm
    P, G = rc.prompts_per_step, rc.group_size
    info: dict[str, float] = {}
    if not ac.dynamic_sampling:
        gen, scored = sample_round(P)
        rewards, penalty = shaped_rewards(gen, scored, config)
        if ac.overlong_buffer_len:
            info["rollout/overlong_penalty_mean"] = penalty.mean().item()
        return gen, scored, rewards, info
    kept: list[tuple[Generation, object, torch.Tensor]] = []
    dropped: list[tuple[Generation, object, torch.Tensor]] = []
    n_kept = n_dropped = tries = 0
    tokens = 0.0
    penalties, rounds = [], []
    while n_kept < P and tries < ac.dynamic_sampling_max_tries:
        tries += 1
        gen, scored = sample_round(P)
        rounds.append(scored)
        tokens += gen.response_mask.sum().item()
        rewards, penalty = shaped_rewards(gen, scored, config)
        penalties.append(penalty)
        equal = equal_reward_groups(rewards, G)
        n_dropped += int(equal.sum())
        for want, bucket in ((False, kept), (True, dropped)):
            groups = torch.nonzero(equal == want).flatten()
            if bucket is kept:
                groups = groups[: P - n_kept]
                n_kept += len(groups)
            if len(groups):
                rows = (groups[:, None] * G + torch.arange(G)).flatten()
                bucket.append((select_rows(gen, rows), _select_scored(scored, rows.tolist()), rewards[rows]))
    unfilled = P - n_kept
    if unfilled:
        log.warning("dynamic sampling: %d of %d groups still had equal rewards after %d rounds "
                    "(algorithm.dynamic_sampling_max_tries); filled with zero-advantage groups", unfilled, P, tries)
        filler = concat_generations([d[0] for d in dropped], pad_id)
        rows = torch.arange(filler.input_ids.shape[0] - unfilled * G, filler.input_ids.shape[0])
        kept.append((select_rows(filler, rows), _select_scored(_concat_scored([d[1] for d in dropped]), rows.tolist()),
                     torch.cat([d[2] for d in dropped])[rows]))
    gen = concat_generations([k[0] for k in kept], pad_id)
    scored = _concat_scored([k[1] for k in kept])
    scored.counts = _concat_scored(rounds).counts
    info.update({
        "rollout/dynamic_sampling_tries": float(tries),
        "rollout/dynamic_sampling_dropped_groups": float(n_dropped),
        "rollout/dynamic_sampling_unfilled": float(unfilled),
        "perf/generated_tokens": tokens,
    })
    if ac.overlong_buffer_len:
        info["rollout/overlong_penalty_mean"] = torch.cat(penalties).mean().item()
    return gen, scored, torch.cat([k[2] for k in kept]), info
