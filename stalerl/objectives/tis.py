"""``tis``: truncated importance sampling for the inference-engine mismatch (Yao et al. 2025).

The rollout engine (vLLM, SGLang) samples with slightly different probabilities than the training
engine computes. TIS reweights the ``grpo`` per-token loss by a truncated ratio of the two::

    loss_t = min(pi_behav / pi_rollout, C) * grpo_loss_t          (M2PO paper eq. 6, App. F.2)

where ``pi_behav`` is ``old_log_prob`` (the training engine's log-probs of the behaviour policy)
and ``pi_rollout`` is ``rollout_log_prob`` (required). Default C = 2; clip settings as ``grpo``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective
from stalerl.objectives.core import Stat
from stalerl.objectives.grpo import ClipConfig, clipped_surrogate


@dataclass
class TISConfig(ClipConfig):
    """Hyperparameters of TIS (plus those of ``grpo``)."""

    tis_cap: float = 2.0
    """C: the behaviour/rollout ratio is truncated at C."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap={self.tis_cap} must be > 0")


class TIS(Objective):
    name = "tis"
    summary = "truncated IS weight min(pi_behav/pi_rollout, C) times the grpo loss (needs rollout_log_prob)"
    config_class = TISConfig
    requires_rollout_log_prob = True

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        loss, metrics, token_log_ratio = clipped_surrogate(self.config, log_prob, old_log_prob, advantages, mask)
        weight = torch.clamp(torch.exp(core.log_ratio(old_log_prob, rollout_log_prob)), max=self.config.tis_cap)
        metrics["actor/tis_weight_mean"] = Stat.mean(weight, mask)
        metrics["actor/tis_truncated_frac"] = Stat.mean((weight >= self.config.tis_cap).to(mask.dtype), mask)
        return weight * loss, mask, metrics, {"traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask).detach()}
