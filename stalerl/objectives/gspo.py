"""``gspo`` and ``gspo_token``: Group Sequence Policy Optimization (Zheng et al. 2025).

Sequence ratio ``s_i = exp(mean_t log r_i,t)`` (the geometric mean of the token ratios) and::

    J_i = min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)

aggregated as a mean over sequences (default ``loss_agg_mode="seq-mean-token-mean"``; the per
sequence value is broadcast over its tokens, so with constant per-sequence advantages this is
exactly the sequence-level objective). ``gspo`` differentiates through ``s_i`` (every token
of the sequence receives ``s_i / |o_i|`` of the gradient); ``gspo_token`` is GSPO-token,
``s_i,t = sg(s_i) * pi_theta / sg(pi_theta)``: same value, and the same gradient when
advantages are constant per sequence, but it admits per-token advantages. verl's ``gspo`` loss is
GSPO-token; TRL's ``importance_sampling_level="sequence"`` is ``gspo``.

Defaults eps_low = 3e-4, eps_high = 4e-4 (GSPO paper, used by the M2PO paper). Preset
``gspo_minpro_paper``: 2e-3 / 2e-3 (the MinPRO paper's baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective, ObjectiveConfig


@dataclass
class GSPOConfig(ObjectiveConfig):
    """Hyperparameters of GSPO."""

    loss_agg_mode: str = "seq-mean-token-mean"
    """Aggregation; GSPO is a mean over sequences (verl's gspo always uses this mode)."""
    epsilon_low: float = 3e-4
    """Sequence ratio clipped below at ``1 - epsilon_low``."""
    epsilon_high: float = 4e-4
    """Sequence ratio clipped above at ``1 + epsilon_high``."""


class GSPO(Objective):
    name = "gspo"
    summary = "sequence ratio s_i = exp(mean_t log r); min(s_i A, clip(s_i) A), seq-mean"
    config_class = GSPOConfig
    token_level = False

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        token_log_ratio = core.log_ratio(log_prob, old_log_prob)
        seq_log_ratio = core.sequence_log_ratio(token_log_ratio, mask)  # (B,), with gradient
        if self.token_level:
            # s_i,t = sg(s_i) * pi_theta / sg(pi_theta): value s_i, gradient s_i * d log pi_t.
            log_seq = seq_log_ratio.detach().unsqueeze(-1) + log_prob - log_prob.detach()
        else:
            log_seq = seq_log_ratio.unsqueeze(-1).expand_as(log_prob)
        seq_ratio = torch.exp(core.clamp_log(log_seq))
        cfg = self.config
        loss, low, high, _ = core.ppo_clip_loss(seq_ratio, advantages, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
        metrics = core.ratio_metrics(token_log_ratio, mask)
        metrics.update(core.clip_metrics(mask, low, high))
        metrics["actor/seq_ratio_mean"] = core.Stat.mean(torch.exp(seq_log_ratio.detach()), (mask.sum(-1) > 0).to(mask.dtype))
        return loss, mask, metrics, {"traj_log_ratio": seq_log_ratio.detach()}


class GSPOToken(GSPO):
    name = "gspo_token"
    summary = "GSPO-token: s_i,t = sg(s_i) * pi/sg(pi), per-token advantages allowed"
    token_level = True
