"""``m2po``: Second-Moment Trust Policy Optimization (M2PO paper, Algorithm 1 and eq. 5).

Per token, ``M̂2_t = (log r_t)^2``. Algorithm 1 masks trust-region tokens, largest M̂2 first, until
the mean M̂2 of the remaining trust-region tokens is at most ``tau`` (0.04); then::

    J = (1 / sum_i |o_i|) * sum_i sum_t M_i,t * r_i,t * A_i,t          (eq. 5)

averaged over *all* tokens, masked ones included (paper footnote 2).

Decisions the paper leaves open (docs/DESIGN.md#open-decisions):

* Trust-region tokens are those a PPO clip could act on: (A > 0 and r > 1) or (A < 0 and r < 1);
  tokens with A = 0 never count. ``trust_region_only=False`` constrains all valid tokens.
* The mask removes as few tokens as possible, largest (log r)^2 first, so that the mean of the
  remaining trust-region tokens is <= tau. It is vectorised: sort ascending, prefix means, the
  kept set is the longest prefix whose mean is <= tau (prefix means of an ascending sequence never
  decrease). No Python loop over tokens, and no full sort either: :func:`m2_cut` keeps every value
  <= tau outright and sorts only the log-scale bin in which the running mean crosses tau. Ties
  exactly at the cut-off are kept in batch order.
* M̂2 is a statistic of the whole optimizer mini-batch (and of all data-parallel ranks), not of
  one micro-batch; ``stats_scope="micro"`` reproduces the released code's per-micro-batch behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stalerl.objectives import core
from stalerl.objectives import distributed as dist_utils
from stalerl.objectives.base import BatchStatsConfig, Objective
from stalerl.objectives.core import Stat


@dataclass
class M2POConfig(BatchStatsConfig):
    """Hyperparameters of M2PO."""

    tau: float = 0.04
    """Second-moment budget tau_M2: mean (log r)^2 of the kept trust-region tokens stays <= tau."""
    trust_region_only: bool = True
    """Constrain only trust-region tokens ((A>0, r>1) or (A<0, r<1)); False: all valid tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau < 0:
            raise ValueError(f"tau={self.tau} must be >= 0")


def m2po_candidates(config: M2POConfig, token_log_ratio, advantages, mask) -> torch.Tensor:
    """Bool (B, T): the tokens whose (log r)^2 the M2 constraint applies to."""
    if config.trust_region_only:
        return core.trust_region_tokens(token_log_ratio, advantages, mask)
    return mask > 0


def m2_candidate_values(config: M2POConfig, log_prob, old_log_prob, advantages, mask) -> torch.Tensor:
    """1-D: (log r)^2 of every candidate token of a mini-batch given as lists of micro-batches.

    The statistic M̂2 of Algorithm 1 is taken over these values (after :meth:`Objective.gather`),
    by ``m2po`` to choose its mask and by ``m2po_capped`` to solve its cap.
    """
    values = []
    for lp, olp, adv, m in zip(log_prob, old_log_prob, advantages, mask, strict=True):
        lr = core.log_ratio(lp, olp)
        values.append(lr.square()[m2po_candidates(config, lr, adv, m)])
    return torch.cat(values)


_M2_BINS = 4096
"""Log-spaced bins of :func:`m2_cut` (relative width ~0.2% over (log r)^2 in [tau, 400])."""


def m2_cut(values: torch.Tensor, tau: float) -> tuple[int, float, int, float, float]:
    """Where Algorithm 1 cuts ``values`` (1-D, the candidates' (log r)^2), without a full sort.

    Same result as sorting ascending and keeping the largest k whose prefix mean is <= tau: keep
    the ``keep`` smallest values. Returns ``(keep, cutoff, ties_keep, kept_sum, total)``: the kept values are those
    ``< cutoff`` and the first ``ties_keep`` of those ``== cutoff`` (``cutoff`` is the keep-th
    smallest value; +inf when all are kept, -inf when none is); sums in float64.

    Values <= tau never lift the prefix mean above tau, so all of them are kept and only the larger
    ones need ordering; those are binned on a fine log scale (two ``bincount``), and only the bin
    where the running mean crosses tau is sorted. O(n) instead of O(n log n).
    """
    n = values.numel()
    v = values.reshape(-1)
    total = float(v.sum(dtype=torch.float64)) if n else 0.0
    if n == 0 or total <= tau * n:
        return n, math.inf, 0, total, total
    big = v[v > tau]
    n0 = n - big.numel()
    s0 = total - float(big.sum(dtype=torch.float64))
    idx = torch.zeros_like(big, dtype=torch.long)
    if tau > 0 and big.numel():
        lb = torch.log(big / tau)
        hi = float(lb.max())
        if hi > 0:
            idx = (lb * (_M2_BINS / hi)).long().clamp_(0, _M2_BINS - 1)
    cnt = torch.bincount(idx, minlength=_M2_BINS).to(torch.float64)
    sm = torch.bincount(idx, weights=big.to(torch.float64), minlength=_M2_BINS)
    ccnt = n0 + torch.cumsum(cnt, 0)
    csum = s0 + torch.cumsum(sm, 0)
    over = csum > tau * ccnt
    j = int(over.to(torch.int8).argmax()) if bool(over.any()) else _M2_BINS - 1
    before_cnt = int(ccnt[j] - cnt[j])
    before_sum = float(csum[j] - sm[j])
    bucket = torch.sort(big[idx == j]).values.to(torch.float64)
    prefix = before_sum + torch.cumsum(bucket, 0)
    mean = prefix / torch.arange(before_cnt + 1, before_cnt + bucket.numel() + 1, dtype=torch.float64,
                                 device=bucket.device)
    exceed = mean > tau
    k = int(exceed.to(torch.int8).argmax()) if bool(exceed.any()) else bucket.numel()
    keep = before_cnt + k
    if keep == 0:
        return 0, -math.inf, 0, 0.0, total
    if k > 0:
        cutoff, kept_sum = float(bucket[k - 1]), float(prefix[k - 1])
    else:  # the cut falls at the start of bin j: the cut-off is the largest value below it
        cutoff, kept_sum = float(torch.cat([v[v <= tau], big[idx < j]]).max()), before_sum
    return keep, cutoff, keep - int((v < cutoff).sum()), kept_sum, total


class M2PO(Objective):
    name = "m2po"
    summary = "M2PO (Algorithm 1): mask largest (log r)^2 trust-region tokens until mean M2 <= tau; M*r*A"
    config_class = M2POConfig
    uses_batch_stats = True

    def compute_stats(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, stats):
        local = m2_candidate_values(self.config, log_prob, old_log_prob, advantages, mask)
        values = self.gather(local)
        keep, cutoff, ties_keep, kept_sum, total = m2_cut(values, self.config.tau)
        n = values.numel()
        ties_seen = 0
        if self._cross_rank() and 0 < keep < n:
            # Ties at the cut-off are kept in the rank-ordered batch order: this rank's ties come
            # after those of lower ranks (same condition on every rank, so the collective matches).
            ties_seen, _ = dist_utils.rank_offsets(int((local == cutoff).sum()), device=local.device)
        stats.payload.update(cutoff=cutoff, ties_keep=ties_keep, ties_seen=ties_seen)
        stats.metrics.update({
            "actor/m2_before": Stat.ratio(total, n),
            "actor/m2_after": Stat.ratio(kept_sum, keep),
            "actor/m2_masked_tokens": Stat.total(n - keep),
            "actor/m2_trust_region_tokens": Stat.total(n),
        })

    def keep_mask(self, values: torch.Tensor, candidates: torch.Tensor, stats) -> torch.Tensor:
        """Bool (B, T): candidates kept under the mini-batch cut-off (ties in batch order)."""
        p = stats.payload
        below = candidates & (values < p["cutoff"])
        ties = candidates & (values == p["cutoff"])
        tie_rank = torch.cumsum(ties.reshape(-1).to(torch.long), 0).reshape(ties.shape) + p["ties_seen"]
        p["ties_seen"] += int(ties.sum())
        return below | (ties & (tie_rank <= p["ties_keep"]))

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        token_log_ratio = core.log_ratio(log_prob, old_log_prob)
        values = token_log_ratio.detach().square()
        candidates = m2po_candidates(self.config, token_log_ratio, advantages, mask)
        kept = self.keep_mask(values, candidates, batch_stats)
        masked = candidates & ~kept
        token_mask = mask * (~masked).to(mask.dtype)
        loss = -token_mask * torch.exp(token_log_ratio) * advantages
        masked_f = masked.to(mask.dtype)
        metrics = core.ratio_metrics(token_log_ratio, mask)
        metrics.update(core.clip_metrics(mask, masked_f * (token_log_ratio < 0), masked_f * (token_log_ratio >= 0)))
        metrics["actor/masked_frac"] = Stat.mean(masked_f, mask)
        extras = {
            "traj_log_ratio": core.sequence_log_ratio(token_log_ratio, mask).detach(),
            "token_kept": (token_mask > 0),
        }
        return loss, mask, metrics, extras
