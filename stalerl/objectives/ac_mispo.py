"""``ac_mispo``: Acceptance-Controlled MIS-PO (AC-MIS-PO paper, §3.3, eqs. 4-8).

MIS-PO with a symmetric trajectory bound ``[exp(-b_k), exp(b_k)]`` set by a controller that
targets an acceptance-rate schedule. At update step k, over the mini-batch's trajectories::

    z_i = |log rho(tau_i)|                                    (eq. 5)
    A*_k = A_start - (A_start - A_end) * j / K_warmup  (j <= K_warmup), else A_end   (eq. 8)
    b_cand = Quantile_{A*_k}(z)                               (eq. 6)
    b_k = clip(beta * b_{k-1} + (1 - beta) * b_cand, b_min, b_max)                   (eq. 7)

Defaults: beta = 0.9, A: 0.4 -> 0.2 over 200 training steps, b in [ln 1.0002, ln 1.01],
b_0 = b_max (= ln 1.01 ≈ 0.00995); token bounds stay [0.5, 2].

Decisions: the EMA (eq. 7) takes one step k per optimizer mini-batch (the first one is k = 1 and
uses b_0 as b_{k-1}); the schedule (eq. 8) counts *training steps* j = k / updates_per_train_step
(``warmup_train_steps`` = K_warmup = 200): the paper states K_warmup "= 200 steps" on the same
axis as its "300–400 steps" of training and its Figure 2, and reports that "by step 200, the bound
converges" and acceptance decays "to ~20–25% after warmup" (§3.4, §4.3); counted in optimizer
updates (4 per step) the schedule would end at training step 50 (docs/OBJECTIVES.md).
``stalerl train`` sets ``updates_per_train_step`` to ``optim.mini_batches``; the bound b_k computed from a batch is applied to that same batch; the
quantile is linear interpolation (``torch.quantile``); z is gathered over data-parallel ranks; a
mini-batch with no valid trajectory leaves the state unchanged. The state (k, b_k) is saved with
:meth:`state_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from stalerl.objectives import core
from stalerl.objectives.base import BatchStatsConfig
from stalerl.objectives.core import Stat
from stalerl.objectives.mispo import MISPO, MISPOConfig


@dataclass
class ACMISPOConfig(MISPOConfig, BatchStatsConfig):
    """Hyperparameters of AC-MIS-PO (traj_low/traj_high are replaced by the controller's bound)."""

    beta: float = 0.9
    """EMA coefficient of the bound."""
    accept_start: float = 0.4
    """Target acceptance rate A_start at step 0."""
    accept_end: float = 0.2
    """Target acceptance rate A_end after the warm-up."""
    warmup_train_steps: int = 200
    """K_warmup, in training steps (generation batches consumed): the target decays linearly from
    accept_start to accept_end over them (the paper: 200 steps)."""
    bound_min: float = math.log(1.0002)
    """b_min: smallest log-bound (some filtering always happens)."""
    bound_max: float = math.log(1.01)
    """b_max: largest log-bound, and the initial bound b_0."""
    updates_per_train_step: int = 1
    """Controller steps (optimizer mini-batches, or loss calls in verl) per training step, to
    convert the update count k into training steps for the schedule; ``stalerl train`` sets it to
    ``optim.mini_batches`` unless given."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta={self.beta} must lie in [0, 1]")
        if not (0 < self.accept_start < 1 and 0 < self.accept_end < 1):
            raise ValueError("accept_start and accept_end must lie in (0, 1)")
        if not 0 <= self.bound_min <= self.bound_max:
            raise ValueError("need 0 <= bound_min <= bound_max")
        if self.warmup_train_steps < 0:
            raise ValueError("warmup_train_steps must be >= 0")
        if self.updates_per_train_step < 1:
            raise ValueError("updates_per_train_step must be >= 1")


class ACMISPO(MISPO):
    name = "ac_mispo"
    summary = "AC-MIS-PO: MIS-PO with bound [e^-b, e^b] from a quantile+EMA acceptance controller"
    config_class = ACMISPOConfig
    uses_batch_stats = True

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.step = 0
        self.bound = float(self.config.bound_max)

    def target_acceptance(self, step: int) -> float:
        """A*_k of eq. 8 at controller step k = ``step`` (training step k / updates_per_train_step)."""
        cfg = self.config
        train_step = step / cfg.updates_per_train_step
        if cfg.warmup_train_steps == 0 or train_step > cfg.warmup_train_steps:
            return cfg.accept_end
        return cfg.accept_start - (cfg.accept_start - cfg.accept_end) * train_step / cfg.warmup_train_steps

    def update_bound(self, z: torch.Tensor) -> dict[str, float]:
        """One controller step from the |log rho| of a mini-batch's trajectories (eqs. 5-7)."""
        if z.numel() == 0:
            return {}
        cfg = self.config
        self.step += 1
        target = self.target_acceptance(self.step)
        candidate = float(torch.quantile(z.to(torch.float64), target))
        self.bound = min(max(cfg.beta * self.bound + (1 - cfg.beta) * candidate, cfg.bound_min), cfg.bound_max)
        return {"actor/accept_target": target, "actor/bound_candidate": candidate}

    def compute_stats(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, stats):
        z = []
        for i, (lp, olp, m) in enumerate(zip(log_prob, old_log_prob, mask, strict=True)):
            ref = self.reference_log_prob(olp, None if rollout_log_prob is None else rollout_log_prob[i])
            traj = core.sequence_log_ratio(core.log_ratio(lp, ref), m)
            z.append(traj[m.sum(-1) > 0].abs())
        stats.metrics.update({k: Stat.last(v) for k, v in self.update_bound(self.gather(torch.cat(z))).items()})
        stats.payload["bound"] = self.bound
        stats.metrics["actor/traj_bound"] = Stat.last(self.bound)
        stats.metrics["actor/controller_step"] = Stat.last(self.step)

    def traj_bounds(self, batch_stats) -> tuple[float, float]:
        bound = batch_stats.payload["bound"]
        return -bound, bound

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "bound": self.bound}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``(step, bound)``; a state that is not a mapping with an integer ``step >= 0`` and
        a finite ``bound`` is refused, naming what is wrong."""
        if not isinstance(state, dict) or not {"step", "bound"} <= set(state):
            raise ValueError(f"ac_mispo controller state must be a mapping with 'step' and 'bound', got {state!r:.80}")
        try:
            step, bound = int(state["step"]), float(state["bound"])
        except (TypeError, ValueError):
            raise ValueError(f"ac_mispo controller state: step={state['step']!r:.40} must be an integer and "
                             f"bound={state['bound']!r:.40} a number") from None
        if step < 0 or not math.isfinite(bound) or bound <= 0:
            raise ValueError(f"ac_mispo controller state: step={step} must be >= 0 and bound={bound} finite and > 0")
        self.step = step
        self.bound = bound
