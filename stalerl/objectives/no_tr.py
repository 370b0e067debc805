"""``no_tr``: importance-weighted policy gradient with no trust region.

Objective per token: ``J = r A`` (the "GRPO no TR" baseline of the M2PO paper, §4 and Figure 1,
whose *prosperity before collapse* it exhibits). Nothing is clipped: under staleness it learns
fast, then the unbounded ratios blow up.
"""

from __future__ import annotations

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective, ObjectiveConfig


class NoTrustRegion(Objective):
    name = "no_tr"
    summary = "unclipped importance-weighted PG rA (M2PO paper's 'no trust region' baseline)"
    config_class = ObjectiveConfig

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        token_log_ratio = core.log_ratio(log_prob, old_log_prob)
        loss = -advantages * torch.exp(token_log_ratio)
        metrics = core.ratio_metrics(token_log_ratio, mask)
        metrics.update(core.clip_metrics(mask, torch.zeros_like(mask), torch.zeros_like(mask)))
        extras = {"traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask).detach()}
        return loss, mask, metrics, extras
