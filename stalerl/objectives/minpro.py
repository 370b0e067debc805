"""``minpro``: Minimum Prefix Ratio policy optimization (MinPRO paper, eq. 7).

Objective per token t of trajectory i::

    J = sg(clip(rho_bar_t * r_t, 1 - eps_low, 1 + eps_high)) * A * logp_t
    rho_bar_t = min_{i < t} r_i,   rho_bar_1 = 1

The prefix term replaces the exact (cumulative, unstable) prefix importance ratio with the
smallest token ratio seen so far. Decision left open by the paper (docs/DESIGN.md#open-decisions): the minimum is
taken strictly over *earlier* tokens (an exclusive cumulative minimum) in log space, over valid
tokens only; the first token gets rho_bar = 1. Defaults as CISPO: eps_low = 1, eps_high = 4.
"""

from __future__ import annotations

from stalerl.objectives import core
from stalerl.objectives.base import Objective
from stalerl.objectives.cispo import CISPOConfig, truncated_is_loss


class MinPRO(Objective):
    name = "minpro"
    summary = "sg(clip(rho_bar_t * r_t)) * A * logp, rho_bar_t = min over earlier tokens of r"
    config_class = CISPOConfig

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        token_log_ratio = core.log_ratio(log_prob, old_log_prob).detach()
        log_prefix_min = core.exclusive_cummin(token_log_ratio, mask, first=0.0)
        weight_log_ratio = core.clamp_log(log_prefix_min + token_log_ratio)
        loss, metrics = truncated_is_loss(self.config, weight_log_ratio, log_prob, advantages, mask)
        metrics.update(core.ratio_metrics(core.log_ratio(log_prob, old_log_prob), mask))
        metrics["actor/prefix_ratio_mean"] = core.Stat.mean(log_prefix_min.exp(), mask)
        return loss, mask, metrics, {"traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask)}
