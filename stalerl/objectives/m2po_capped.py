"""``m2po_capped``: the released M2PO code's variant (caps ratios instead of masking tokens).

Over the trust-region ("harmful") tokens with ``Delta = log r``, solve for the cap ``c`` in::

    sum_t min(Delta_t^2, c^2) = tau * N          (N = number of harmful tokens)

(no cap when ``sum Delta^2 <= tau * N``), then apply the PPO clip with bounds ``[e^-c, e^c]``
to every token: ``J = min(rA, clip(r, e^-c, e^c) A)``. The released code solves ``c`` with a
Python loop and one ``.item()`` per token; here it is closed form on the sorted values: on the
interval ``[d_j, d_j+1]`` of the sorted squares the left side is ``P_j + (N - j) c^2``, so
``c^2 = (tau N - P_j) / (N - j)`` for the first j where that value is <= d_j+1.

Two details of the released solver are not reproduced (docs/OBJECTIVES.md states the exact solve): it returns
the breakpoint ``sqrt(d_k-1)`` just below the exact cap, and it never clips tighter than
``[0.7, 1.5]`` (its ``miniclip_low=0.3``, ``miniclip_high=0.5``), which leaves the cap inactive for
small budgets.

The released code took this statistic per micro-batch: use ``stats_scope="micro"`` for that; the
default takes it over the whole mini-batch like ``m2po``. (Its reward also gave 0.0 to an
extracted wrong answer: ``format_score=0.0`` in the training config.)
"""

from __future__ import annotations

import math

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective
from stalerl.objectives.core import Stat
from stalerl.objectives.m2po import M2POConfig, m2_candidate_values


def solve_m2_cap(values: torch.Tensor, tau: float) -> float:
    """The cap c >= 0 with ``sum min(v, c^2) = tau * len(v)``; ``inf`` when no cap is needed."""
    n = values.numel()
    target = tau * n
    if n == 0 or float(values.sum()) <= target:
        return math.inf
    d = torch.sort(values).values
    prefix = torch.cat([d.new_zeros(1), torch.cumsum(d, 0)[:-1]])  # P_j, j = 0..n-1
    remaining = torch.arange(n, 0, -1, dtype=d.dtype, device=d.device)  # N - j
    candidate = (target - prefix) / remaining
    ok = candidate <= d
    j = int(ok.to(torch.int8).argmax())
    return math.sqrt(max(float(candidate[j]), 0.0))


class M2POCapped(Objective):
    name = "m2po_capped"
    summary = "released M2PO code: cap c from sum min(dlogr^2, c^2) = tau*N, PPO clip to [e^-c, e^c]"
    config_class = M2POConfig
    uses_batch_stats = True

    def compute_stats(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, stats):
        values = self.gather(m2_candidate_values(self.config, log_prob, old_log_prob, advantages, mask))
        cap = solve_m2_cap(values, self.config.tau)
        stats.payload["cap"] = cap
        # one value per mini-batch; stats_scope="micro" pools the calls' caps weighted by their tokens
        shown = cap if math.isfinite(cap) else core.LOG_RATIO_CLAMP
        stats.metrics["actor/m2_cap"] = Stat.ratio(shown * max(values.numel(), 1), max(values.numel(), 1))

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        cap = batch_stats.payload["cap"]
        token_log_ratio = core.log_ratio(log_prob, old_log_prob)
        ratio = torch.exp(token_log_ratio)
        low, high = (0.0, math.inf) if math.isinf(cap) else (math.exp(-cap), math.exp(cap))
        loss, clipped_low, clipped_high, _ = core.ppo_clip_loss(ratio, advantages, low, high)
        metrics = core.ratio_metrics(token_log_ratio, mask)
        metrics.update(core.clip_metrics(mask, clipped_low, clipped_high))
        return loss, mask, metrics, {"traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask).detach()}
