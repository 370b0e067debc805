"""``cispo``: Clipped IS-weight Policy Optimization (MiniMax-M1, Chen et al. 2025).

Objective per token (MinPRO paper eq. 3)::

    J = sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * logp

The weight is clipped and detached; every token keeps its gradient (soft clipping).
Defaults eps_low = 1.0, eps_high = 4.0, i.e. weight in [0, 5] (the MinPRO paper's setting).
Clip convention: stalerl writes bounds as ``1 ± eps`` like verl; TRL's ``cispo`` takes an
absolute upper cap (``epsilon_high=5.0`` in TRL is ``epsilon_high=4.0`` here).
Preset ``cispo_m2po_paper``: eps = 0.2 on both sides (the M2PO paper's CISPO baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective, ObjectiveConfig


@dataclass
class CISPOConfig(ObjectiveConfig):
    """Hyperparameters of CISPO and MinPRO."""

    epsilon_low: float = 1.0
    """The detached weight is clipped below at ``1 - epsilon_low`` (1.0 -> 0)."""
    epsilon_high: float = 4.0
    """The detached weight is clipped above at ``1 + epsilon_high`` (4.0 -> 5)."""


def truncated_is_loss(config: CISPOConfig, weight_log_ratio, log_prob, advantages, mask):
    """``-sg(clip(exp(weight_log_ratio), 1-eps_low, 1+eps_high)) * A * logp`` and clip metrics.

    Shared by CISPO (weight = r) and MinPRO (weight = rho_bar * r)."""
    weight, low, high = core.clip_weight(
        torch.exp(weight_log_ratio), 1 - config.epsilon_low, 1 + config.epsilon_high
    )
    return -weight * advantages * log_prob, core.clip_metrics(mask, low, high)


class CISPO(Objective):
    name = "cispo"
    summary = "sg(clip(r, 1-eps_low, 1+eps_high)) * A * logp  (soft clipping)"
    config_class = CISPOConfig

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        token_log_ratio = core.log_ratio(log_prob, old_log_prob)
        loss, metrics = truncated_is_loss(self.config, token_log_ratio.detach(), log_prob, advantages, mask)
        metrics.update(core.ratio_metrics(token_log_ratio, mask))
        return loss, mask, metrics, {"traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask).detach()}
