"""``mispo`` and ``mispo_token_only``: MIS-filtered Policy Optimization (Huang et al. 2026).

Token ratio ``x_t = pi_theta / pi_ref`` and trajectory ratio ``rho(tau) = exp(mean_t log x_t)``
(AC-MIS-PO paper eqs. 1-2). Binary accept/reject masks replace continuous clipping::

    L = -E[ 1_tok(x_t) * 1_traj(rho(tau)) * x_t * A_t ]        (AC-MIS-PO paper eq. 3)

with ``1_tok = [0.5 <= x_t <= 2]`` and ``1_traj = [0.996 <= rho <= 1.001]``.
``mispo_token_only`` drops the trajectory mask (the TokenOnly ablation of the mechanism test).

Decisions the papers leave open (docs/DESIGN.md#open-decisions):

* The reference policy is the behaviour policy (``old_log_prob``), the staleness setting of the
  seeds' experiments. ``reference="rollout"`` uses ``rollout_log_prob`` (the inference engine's
  log-probs), the training/inference-mismatch setting of the original MIS-PO.
* Rejected tokens and trajectories stay in the denominator of the mean: the loss is averaged over
  all valid tokens (this is what starves MIS-PO of gradient when acceptance is low).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stalerl.objectives import core
from stalerl.objectives.base import Objective, ObjectiveConfig
from stalerl.objectives.core import Stat


@dataclass
class MISPOConfig(ObjectiveConfig):
    """Hyperparameters of the MIS-PO family."""

    token_low: float = 0.5
    """A token is accepted when its ratio x_t >= token_low."""
    token_high: float = 2.0
    """A token is accepted when its ratio x_t <= token_high."""
    traj_low: float = 0.996
    """A trajectory is accepted when rho(tau) >= traj_low."""
    traj_high: float = 1.001
    """A trajectory is accepted when rho(tau) <= traj_high."""
    reference: str = "behaviour"
    """Denominator of the ratios: ``behaviour`` (old_log_prob, the staleness setting) or
    ``rollout`` (rollout_log_prob, the inference-mismatch setting)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference not in ("behaviour", "rollout"):
            raise ValueError(f"reference={self.reference!r} must be 'behaviour' or 'rollout'")
        if not (0 < self.token_low <= self.token_high):
            raise ValueError("need 0 < token_low <= token_high")
        if not (0 < self.traj_low <= self.traj_high):
            raise ValueError("need 0 < traj_low <= traj_high")


class MISPO(Objective):
    name = "mispo"
    summary = "MIS-PO: token mask x in [0.5,2] AND trajectory mask rho in [0.996,1.001]; M*x*A"
    config_class = MISPOConfig
    use_traj_mask = True

    # -- the MIS-PO family shares these three steps; subclasses change traj_accept only.
    def reference_log_prob(self, old_log_prob, rollout_log_prob):
        if self.config.reference == "rollout":
            if rollout_log_prob is None:
                raise ValueError(f"{self.name}: reference='rollout' needs rollout_log_prob=")
            return rollout_log_prob
        return old_log_prob

    def traj_bounds(self, batch_stats) -> tuple[float, float]:
        """(low, high) bounds on log rho(tau)."""
        return math.log(self.config.traj_low), math.log(self.config.traj_high)

    def traj_accept(self, traj_log_ratio, seq_valid, batch_stats) -> torch.Tensor:
        """Bool (B,): trajectories accepted by the trajectory filter."""
        if not self.use_traj_mask:
            return seq_valid
        low, high = self.traj_bounds(batch_stats)
        return seq_valid & (traj_log_ratio >= low) & (traj_log_ratio <= high)

    def compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats):
        cfg = self.config
        ref = self.reference_log_prob(old_log_prob, rollout_log_prob)
        token_log_ratio = core.log_ratio(log_prob, ref)
        ratio = torch.exp(token_log_ratio)
        ratio_d = ratio.detach()
        token_ok = (ratio_d >= cfg.token_low) & (ratio_d <= cfg.token_high)
        traj_log_ratio = core.sequence_log_ratio(token_log_ratio.detach(), mask)
        seq_valid = mask.sum(-1) > 0
        traj_ok = self.traj_accept(traj_log_ratio, seq_valid, batch_stats)
        keep = (token_ok & traj_ok.unsqueeze(-1)).to(mask.dtype) * mask
        loss = -keep * ratio * advantages
        rejected = mask - keep
        metrics = core.ratio_metrics(token_log_ratio, mask)
        metrics.update(core.clip_metrics(mask, rejected * (ratio_d < 1), rejected * (ratio_d >= 1)))
        seq_valid_f = seq_valid.to(mask.dtype)
        # rates over trajectories, token shares over tokens, the spread from pooled moments
        metrics["actor/traj_accept_frac"] = Stat.mean(traj_ok.to(mask.dtype), seq_valid_f)
        metrics["actor/token_accept_frac"] = Stat.mean(token_ok.to(mask.dtype), mask)
        metrics["actor/masked_frac"] = Stat.mean(rejected, mask)
        accepted_traj = traj_ok.to(mask.dtype) * seq_valid_f
        metrics["actor/accepted_log_ratio_std"] = Stat.std(traj_log_ratio, accepted_traj)
        extras = {"traj_log_ratio": traj_log_ratio, "traj_accepted": traj_ok, "token_kept": keep > 0}
        return loss, mask, metrics, extras



class MISPOTokenOnly(MISPO):
    name = "mispo_token_only"
    summary = "MIS-PO TokenOnly ablation: token mask x in [0.5,2] only"
    use_traj_mask = False
