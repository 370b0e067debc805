"""One generation batch: generate -> reward -> advantages -> behaviour log-probs (docs/DESIGN.md#stale-k).

* :class:`RolloutBatch` -- a generation batch as the stale buffer stores it, each trajectory unpadded.
* :func:`make_rollout_batch` -- sample ``P`` prompts x ``G`` responses with the current policy,
  score them, compute the group advantages and the behaviour log-probs; the synchronous loop
  (:mod:`stalerl.training.loop`) and the asynchronous rollout worker
  (:mod:`stalerl.staleness.async_rollout`) both make their batches with it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from stalerl.models import precision
from stalerl.rollout.advantages import group_advantages
from stalerl.rollout.generation import behaviour_log_probs, generate
from stalerl.rollout.groups import collect_groups, score_groups


class RolloutBatch:
    """One generation batch, as stored in the buffer: each trajectory unpadded. Tensors live on the CPU.

    Storage (all flat, trajectories one after the other, offsets from the lengths):

    * ``tokens`` ``(sum_i p_i + r_i,)`` int32: prompt then response ids of each trajectory;
    * ``old_log_prob`` (and ``rollout_log_prob`` when recorded) ``(sum_i r_i,)`` float32;
    * ``prompt_lengths``, ``response_lengths`` ``(N,)`` int32; ``advantages``, ``rewards`` ``(N,)`` float32.

    That is 4 B per prompt token, 8 B per response token (12 B with the sampler's log-probs) and
    16 B per trajectory (:attr:`nbytes`), whatever the padding of the generation batch. Padding is
    made only when a micro-batch is built (:meth:`micro_batch`: left-padded prompts, right-padded
    responses, trimmed to the longest of its own rows). The constructor takes the padded layout
    :func:`stalerl.rollout.generation.generate` returns, and the padded properties
    (:attr:`input_ids` ...) rebuild it for the whole batch.
    """

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                 old_log_prob: torch.Tensor, advantages: torch.Tensor, rewards: torch.Tensor, policy_version: int,
                 rollout_log_prob: torch.Tensor | None = None, info: dict[str, Any] | None = None,
                 pad_token_id: int = 0, loss_rows: torch.Tensor | None = None) -> None:
        """Pack a padded batch: ``input_ids``/``attention_mask`` ``(N, L + R)`` (prompt left-padded,
        response right-padded), ``response_mask``/``old_log_prob``/``rollout_log_prob`` ``(N, R)``,
        ``advantages``/``rewards`` ``(N,)``. The response part of ``attention_mask`` is
        ``response_mask``; ``pad_token_id`` fills the padding when micro-batches are rebuilt.
        ``loss_rows`` ``(N,)`` bool: rows that count in the loss (None: all); a row outside it keeps
        its tokens but gets an all-zero ``response_mask`` (TRL's ``mask_truncated_completions``)."""
        R = response_mask.shape[1]
        L = input_ids.shape[1] - R
        prompt_mask = attention_mask[:, :L].bool()
        response = response_mask.bool()
        plen, rlen = prompt_mask.sum(-1), response.sum(-1)
        cols = torch.arange(L)
        if not torch.equal(prompt_mask, cols >= (L - plen)[:, None]) or \
                not torch.equal(response, torch.arange(R) < rlen[:, None]):
            raise ValueError("RolloutBatch expects left-padded prompts and right-padded responses "
                             "(attention_mask ones at the end of the prompt part, response_mask ones first)")
        keep = torch.cat([prompt_mask, response], dim=1)
        self.tokens = input_ids[keep].to(torch.int32)
        self.old_log_prob_flat = old_log_prob[response].float()
        self.rollout_log_prob_flat = rollout_log_prob[response].float() if rollout_log_prob is not None else None
        self.prompt_lengths = plen.to(torch.int32)
        self.response_lengths = rlen.to(torch.int32)
        self.advantages = advantages.float()
        self.rewards = rewards.float()
        self.policy_version = int(policy_version)
        self.info = dict(info or {})  # generation-time metrics, logged when the batch is made
        self.pad_token_id = int(pad_token_id)
        self.loss_rows = None if loss_rows is None else loss_rows.to(torch.bool)

    # ------------------------------------------------------------------ storage

    _TENSORS = ("tokens", "old_log_prob_flat", "rollout_log_prob_flat", "prompt_lengths", "response_lengths",
                "advantages", "rewards", "loss_rows")

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for name in self._TENSORS if (t := getattr(self, name)) is not None)

    @property
    def num_tokens(self) -> int:
        """Prompt plus response tokens stored."""
        return self.tokens.numel()

    def __len__(self) -> int:
        return self.prompt_lengths.shape[0]

    @property
    def response_length(self) -> int:
        """R of the padded layout: the longest response (at least 1)."""
        return max(int(self.response_lengths.max()) if len(self) else 0, 1)

    # ------------------------------------------------------------------ padding on demand

    def micro_batch(self, index: torch.Tensor, device=None) -> dict[str, torch.Tensor]:
        """Rows ``index`` padded for a forward pass, trimmed to their own longest prompt and response.

        Returns ``input_ids``/``attention_mask`` ``(n, L + R)``, ``response_mask``/``old_log_prob``
        (and ``rollout_log_prob``) ``(n, R)`` and ``advantages`` ``(n,)`` on ``device``.
        """
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        plen = self.prompt_lengths.long()
        rlen = self.response_lengths.long()
        starts = torch.cumsum(plen + rlen, 0) - plen - rlen
        rstarts = torch.cumsum(rlen, 0) - rlen
        p, r, s, rs = plen[index], rlen[index], starts[index], rstarts[index]
        L = int(p.max()) if index.numel() else 0
        R = max(int(r.max()) if index.numel() else 0, 1)
        col = torch.arange(L + R)
        # column c of row i holds flat token start_i + p_i - L + c (prompt right-aligned at L)
        valid = (col >= (L - p)[:, None]) & (col < (L + r)[:, None])
        src = (s + p - L)[:, None] + col
        ids = self.tokens[src.clamp(0, max(self.num_tokens - 1, 0))].long()
        response_mask = (torch.arange(R) < r[:, None]).long()
        if self.loss_rows is not None:
            response_mask = response_mask * self.loss_rows[index].long()[:, None]
        rsrc = (rs[:, None] + torch.arange(R)).clamp(0, max(self.old_log_prob_flat.numel() - 1, 0))
        out = {
            "input_ids": torch.where(valid, ids, torch.full_like(ids, self.pad_token_id)),
            "attention_mask": valid.long(),
            "response_mask": response_mask,
            "old_log_prob": self._gather(self.old_log_prob_flat, rsrc) * response_mask,
            "advantages": self.advantages[index],
        }
        if self.rollout_log_prob_flat is not None:
            out["rollout_log_prob"] = self._gather(self.rollout_log_prob_flat, rsrc) * response_mask
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    @staticmethod
    def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``flat[index]``, zeros where ``flat`` is empty (a batch whose responses are all empty)."""
        return flat[index] if flat.numel() else torch.zeros(index.shape, dtype=flat.dtype)

    def _padded(self, key: str) -> torch.Tensor:
        return self.micro_batch(torch.arange(len(self)))[key]

    @property
    def input_ids(self) -> torch.Tensor:
        """(N, L + R) prompt (left-padded) followed by response (right-padded), built on demand."""
        return self._padded("input_ids")

    @property
    def attention_mask(self) -> torch.Tensor:
        """(N, L + R) 1 for real tokens, built on demand."""
        return self._padded("attention_mask")

    @property
    def response_mask(self) -> torch.Tensor:
        """(N, R) 1 for response tokens up to and including EOS, built on demand."""
        return self._padded("response_mask")

    @property
    def old_log_prob(self) -> torch.Tensor:
        """(N, R) behaviour log-probs, computed by the training model at generation time."""
        return self._padded("old_log_prob")

    @property
    def rollout_log_prob(self) -> torch.Tensor | None:
        """(N, R) the sampler's own log-probs, when recorded (TIS, MIS-PO reference='rollout')."""
        return self._padded("rollout_log_prob") if self.rollout_log_prob_flat is not None else None

    # ------------------------------------------------------------------ serialisation

    def state_dict(self) -> dict[str, Any]:
        """The stored tensors and the metadata (what the async worker sends, what checkpoints save)."""
        state = {name: getattr(self, name) for name in self._TENSORS}
        state.update(policy_version=self.policy_version, info=self.info, pad_token_id=self.pad_token_id)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RolloutBatch":
        batch = cls.__new__(cls)
        for name in cls._TENSORS:
            setattr(batch, name, state.get(name))
        batch.policy_version = int(state["policy_version"])
        batch.info = dict(state.get("info") or {})
        batch.pad_token_id = int(state.get("pad_token_id", 0))
        return batch


def make_rollout_batch(config, model, tokenizer, sampler, reward_fn, policy_version: int, record_rollout: bool):
    """Generate one batch (P prompts x G responses) with the current policy and score it; the
    ``algorithm`` options (DAPO's overlong penalty and dynamic sampling, masking truncated
    completions) act here, through :mod:`stalerl.rollout.groups`."""
    rc = config.rollout
    times = {"timing_s/gen": 0.0, "timing_s/reward": 0.0}
    sampling_model = precision.generation_model(model, config.model)  # bf16 copy over float32 masters

    def sample_round(n_prompts: int):
        prompts = sampler.take(n_prompts)
        t0 = time.perf_counter()
        gen = generate(
            sampling_model, tokenizer, [p.text for p in prompts], group_size=rc.group_size,
            temperature=rc.temperature, top_p=rc.top_p, max_new_tokens=rc.max_new_tokens, batch_size=rc.batch_size,
            record_log_prob=record_rollout, engine=rc.engine, max_batch_tokens=rc.max_batch_tokens,
        )
        times["timing_s/gen"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = score_groups(reward_fn, gen.texts, prompts, rc.group_size)
        times["timing_s/reward"] += time.perf_counter() - t0
        return gen, scored

    gen, scored, rewards, shaping = collect_groups(sample_round, config, tokenizer.pad_token_id)
    sampling_model = None  # free the copy before the behaviour pass
    t_generate, t_score = times["timing_s/gen"], times["timing_s/reward"]
    advantages, zero_variance = group_advantages(rewards, rc.group_size)
    t0 = time.perf_counter()
    with precision.autocast(config.model, model):  # scoring runs in model.dtype over float32 masters
        old_log_prob = behaviour_log_probs(
            model, gen.input_ids, gen.attention_mask, gen.response_mask.shape[1], temperature=rc.temperature,
            micro_batch_size=config.optim.micro_batch_size, chunk_size=config.model.logprob_chunk_size,
        )
    t_behaviour = time.perf_counter() - t0
    lengths = gen.response_mask.sum(-1).float()
    info = {
        "rollout/reward_mean": rewards.mean().item(),
        "rollout/accuracy": float(np.mean(scored.correct)),
        "rollout/extracted_frac": float(np.mean(scored.extracted)),
        "rollout/response_length_mean": lengths.mean().item(),
        "rollout/response_length_max": lengths.max().item(),
        "rollout/truncated_frac": gen.truncated.float().mean().item(),
        "rollout/zero_variance_group_frac": zero_variance,
        "rollout/policy_version": float(policy_version),
        "timing_s/gen": t_generate,
        "timing_s/reward": t_score,
        "timing_s/old_log_prob": t_behaviour,
        "perf/generated_tokens": lengths.sum().item(),
    }
    for key, count in scored.counts.items():
        info[f"rollout/count_{key}"] = float(count)
    info.update(shaping)
    loss_rows = ~gen.truncated if config.algorithm.mask_truncated_completions else None
    return RolloutBatch(
        input_ids=gen.input_ids, attention_mask=gen.attention_mask, response_mask=gen.response_mask,
        old_log_prob=old_log_prob, advantages=advantages, rewards=rewards, policy_version=policy_version,
        rollout_log_prob=gen.rollout_log_prob, info=info, pad_token_id=tokenizer.pad_token_id, loss_rows=loss_rows,
    )
