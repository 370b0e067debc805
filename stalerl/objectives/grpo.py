"""``grpo``: PPO's clipped surrogate with group-relative advantages.

Objective per token (GRPO, Shao et al. 2024; PPO, Schulman et al. 2017; M2PO paper eq. 1)::

    J = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),   r = exp(logp - old_logp)

with optional dual clip (Ye et al. 2020): for A < 0 the loss is further bounded by ``-c A``.
Same numerics as verl 0.9.1's ``vanilla`` loss (set ``dual_clip=3.0`` to match verl's default
``clip_ratio_c``) and TRL's ``grpo``/``dapo``/``bnpo`` loss types (``epsilon``/``epsilon_high``).

Presets: ``grpo_clip_higher`` (DAPO's 0.2/0.28, used by the MinPRO paper and the M2PO paper's
Figure 11).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective, ObjectiveConfig


@dataclass
class ClipConfig(ObjectiveConfig):
    """Hyperparameters of PPO-clip objectives."""

    epsilon_low: float = 0.2
    """Lower clip: the ratio is clipped at ``1 - epsilon_low`` (verl's ``clip_ratio_low``)."""
    epsilon_high: float = 0.2
    """Upper clip: the ratio is clipped at ``1 + epsilon_high`` (verl's ``clip_ratio_high``)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (verl's ``clip_ratio_c``); ``None`` = off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip={self.dual_clip} must be > 1 (or None to disable)")
        if self.epsilon_low < 0 or self.epsilon_high < 0:
            raise ValueError("epsilon_low and epsilon_high must be >= 0")


def clipped_surrogate(config: ClipConfig, log_prob, old_log_prob, advantages, mask):
    """The PPO-clip per-token loss and its metrics; shared by ``grpo`` and ``tis``."""
    token_log_ratio = core.log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(token_log_ratio)
    loss, low, high, dual = core.ppo_clip_loss(
        ratio, advantages, 1 - config.epsilon_low, 1 + config.epsilon_high, config.dual_clip
    )
    metrics = core.ratio_metrics(token_log_ratio, mask)
    metrics.update(core.clip_metrics(mask, low, high))
    metrics["actor/pg_clipfrac_lower"] = core.Stat.mean(dual, mask)
    return loss, metrics, token_log_ratio


class GRPO(Objective):
    name = "grpo"
    summary = "PPO clip min(rA, clip(r, 1-eps_low, 1+eps_high)A), optional dual clip"
    config_class = ClipConfig

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        loss, metrics, token_log_ratio = clipped_surrogate(self.config, log_prob, old_log_prob, advantages, mask)
        extras = {"traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask).detach()}
        return loss, mask, metrics, extras
