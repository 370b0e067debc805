"""Shared building blocks of every objective: ratios, masks, clipping, aggregation, metrics.

Every formula that more than one objective needs is written here once. Conventions (all
tensors are ``(B, T)`` unless said otherwise, ``mask`` marks valid response tokens):

* ``log_ratio = clamp(log_prob - ref_log_prob, -20, 20)``: the clamp happens *before* any
  ``exp`` so that no objective produces inf/NaN for finite inputs (docs/OBJECTIVES.md).
* Clip bounds are always written ``1 - epsilon_low`` / ``1 + epsilon_high`` (verl's
  convention). TRL's CISPO takes an absolute cap instead; stalerl converts at the boundary.
* Losses are ``-objective`` and are aggregated with verl's ``loss_agg_mode`` names.
* Metrics are :class:`Stat` sufficient statistics (a sum and a count, a maximum, pooled moments),
  so that a mini-batch split into micro-batches, or over ranks, reports the value of the whole
  mini-batch (:func:`stalerl.objectives.base.reduce_metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

LOG_RATIO_CLAMP = 20.0
"""Log-ratios are clamped to ``[-20, 20]`` before ``exp`` (as verl does)."""

AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "token-sum",
)
"""Aggregation modes, with verl's names. The first four are the papers' (docs/OBJECTIVES.md); ``token-sum`` is verl's extra."""


def clamp_log(value: torch.Tensor) -> torch.Tensor:
    """Clamp a log-ratio to ``[-20, 20]`` before it is exponentiated."""
    return torch.clamp(value, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def log_ratio(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """``clamp(log_prob - ref_log_prob, -20, 20)``: the log importance ratio log r."""
    return clamp_log(log_prob - ref_log_prob)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set (mask is 0/1 in the values' dtype)."""
    return (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set; 0 (not NaN) when the mask is empty."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of ``values`` where ``mask`` is set; 0 when the mask is empty."""
    if not bool(mask.any()):
        return values.new_zeros(())
    return values.masked_fill(mask == 0, float("-inf")).max()


def sequence_log_ratio(token_log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log rho(tau) = mean_t log r_t`` over each trajectory's valid tokens, shape ``(B,)``.

    The log of the geometric-mean ratio of GSPO (its s_i) and MIS-PO (rho(tau), eq. 2 of the
    AC-MIS-PO paper). A trajectory with no valid token gets 0 (ratio 1).
    """
    return masked_mean(token_log_ratio, mask, dim=-1)


def exclusive_cummin(values: torch.Tensor, mask: torch.Tensor, first: float = 0.0) -> torch.Tensor:
    """``out[:, t] = min_{i < t, mask_i} values[:, i]``; ``first`` where no earlier valid token exists.

    Invalid positions never take part in the minimum, so left or right padding is harmless.
    Used by MinPRO in log space (``first = 0`` is ``rho_bar_1 = 1``).
    """
    filled = values.masked_fill(mask == 0, float("inf"))
    shifted = torch.cat([filled.new_full(filled[:, :1].shape, float("inf")), filled[:, :-1]], dim=1)
    running = torch.cummin(shifted, dim=1).values
    return torch.where(torch.isinf(running), torch.full_like(running, first), running)


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
    horizon: float | None = None,
) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar, with verl's ``loss_agg_mode`` semantics.

    * ``token-mean``: sum over valid tokens / number of valid tokens.
    * ``seq-mean-token-mean``: per-sequence token mean, then mean over non-empty sequences.
    * ``seq-mean-token-sum``: per-sequence token sum, then mean over non-empty sequences.
    * ``seq-mean-token-sum-norm``: as ``seq-mean-token-sum`` then divided by
      ``loss_scale_factor``, else by ``horizon`` (a response length fixed for the whole
      mini-batch: the loop passes ``rollout.max_new_tokens``, verl's padded response length),
      else by the horizon ``T`` of this call (verl's ``agg_loss`` default).
    * ``token-sum``: sum over valid tokens.

    ``num_tokens`` / ``num_seqs`` replace the local counts by those of the whole optimizer
    mini-batch (divided by the data-parallel size), so that micro-batch losses add up to the
    mini-batch loss. An empty mask yields an exact zero that still has a graph.
    """
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        return masked_sum(loss_mat, mask) / _at_least_one(denom, loss_mat)
    if mode == "token-sum":
        return masked_sum(loss_mat, mask)
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        seq_tokens = mask.sum(dim=-1)
        seq_loss = masked_sum(loss_mat, mask, dim=-1)
        if mode == "seq-mean-token-mean":
            seq_loss = seq_loss / seq_tokens.clamp(min=1)
        seq_valid = (seq_tokens > 0).to(loss_mat.dtype)
        denom = seq_valid.sum() if num_seqs is None else num_seqs
        loss = (seq_loss * seq_valid).sum() / _at_least_one(denom, loss_mat)
        if mode == "seq-mean-token-sum-norm":
            scale = loss_scale_factor if loss_scale_factor is not None else horizon
            loss = loss / (loss_mat.shape[-1] if scale is None else scale)
        return loss
    raise ValueError(f"unknown loss_agg_mode {mode!r}; expected one of {', '.join(AGG_MODES)}")


def _at_least_one(denom, like: torch.Tensor) -> torch.Tensor:
    denom = torch.as_tensor(denom, dtype=like.dtype, device=like.device)
    return denom.clamp(min=1)


def ppo_clip_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    low: float | torch.Tensor,
    high: float | torch.Tensor,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate as a per-token loss: ``max(-rA, -clip(r, low, high)A)``.

    With ``dual_clip = c`` (> 1), negative-advantage tokens are further bounded by ``-cA``
    (Ye et al. 2020; verl's ``clip_ratio_c``). Returns ``(loss, clipped_low, clipped_high,
    dual_clipped)``, the last three float 0/1 tensors: a token is clipped where the clipped branch
    is the active one (verl's ``pg_clipfrac``), split by the side of the bound it hit.
    """
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, low, high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    clipped_low = (clipped & (ratio < 1)).to(ratio.dtype)
    clipped_high = (clipped & (ratio >= 1)).to(ratio.dtype)
    dual = torch.zeros_like(loss)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = ((loss > bound) & (advantages < 0)).to(ratio.dtype)
        loss = torch.where(advantages < 0, torch.minimum(bound, loss), loss)
    return loss, clipped_low, clipped_high, dual


def clip_weight(ratio: torch.Tensor, low, high) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``clip(ratio, low, high)`` detached (the sg(clip(.)) weight of CISPO/MinPRO) and the
    float masks of tokens truncated from below and from above."""
    weight = torch.clamp(ratio, low, high).detach()
    return weight, (ratio < low).to(ratio.dtype), (ratio > high).to(ratio.dtype)


def trust_region_tokens(token_log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens a PPO clip could act on: (A > 0 and r > 1) or (A < 0 and r < 1), valid only.

    Tokens with A = 0 never count (M2PO paper §5.2; docs/DESIGN.md#batch-statistics)."""
    harmful = ((advantages > 0) & (token_log_ratio > 0)) | ((advantages < 0) & (token_log_ratio < 0))
    return harmful & (mask > 0)


def ratio_metrics(token_log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, Stat]:
    """Ratio statistics every objective reports, verl-style names.

    ``actor/ppo_kl`` is the k1 estimate ``mean(-log r)``; ``actor/kl_k3`` is
    ``mean(r - 1 - log r)`` (non-negative); ``actor/m2`` is ``mean((log r)^2)`` over all valid
    tokens (the M2PO paper's M̂2 before any masking); ``actor/ratio_max`` the largest ratio.
    """
    token_log_ratio = token_log_ratio.detach()
    ratio = torch.exp(token_log_ratio)
    return {
        "actor/ppo_kl": Stat.mean(-token_log_ratio, mask),
        "actor/kl_k3": Stat.mean(ratio - 1 - token_log_ratio, mask),
        "actor/m2": Stat.mean(token_log_ratio.square(), mask),
        "actor/ratio_mean": Stat.mean(ratio, mask),
        "actor/ratio_max": Stat.max(ratio, mask),
    }


def clip_metrics(mask: torch.Tensor, clipped_low: torch.Tensor, clipped_high: torch.Tensor) -> dict[str, Stat]:
    """``actor/pg_clipfrac`` (all clipped/truncated/masked tokens) and its low/high split."""
    return {
        "actor/pg_clipfrac": Stat.mean(clipped_low + clipped_high, mask),
        "actor/clipped_below_frac": Stat.mean(clipped_low, mask),
        "actor/clipped_above_frac": Stat.mean(clipped_high, mask),
    }


# ============================================================================ metric statistics

STAT_KINDS = ("mean", "sum", "max", "min", "std", "last")
"""How a metric pools over micro-batches and ranks (:class:`Stat`)."""


@dataclass
class Stat:
    """A metric as sufficient statistics, so that pooling parts gives the value of their union.

    ``kind`` and ``parts`` (a 1-D tensor, or a tuple of floats once on the host):

    * ``mean``: ``(sum of w*x, sum of w)``, value ``sum / count`` (0 when the count is 0): token
      means weighted by tokens, trajectory rates weighted by trajectories;
    * ``sum``: ``(total,)``; ``max`` / ``min``: ``(extreme, count)`` (0 when nothing was counted);
    * ``std``: ``(count, mean, M)`` with ``M`` the sum of squared deviations; parts combine with
      Chan et al.'s pairwise update, value ``sqrt(M / count)`` (population std);
    * ``last``: ``(value,)``, the later part wins (a controller's state after its last step).
    """

    kind: str
    parts: Any

    @staticmethod
    def mean(values: torch.Tensor, weights: torch.Tensor) -> Stat:
        w = weights.to(values.dtype)
        return Stat("mean", torch.stack([(values * w).sum(), w.sum()]))

    @staticmethod
    def max(values: torch.Tensor, mask: torch.Tensor) -> Stat:
        return Stat("max", torch.stack([masked_max(values, mask), mask.sum().to(values.dtype)]))

    @staticmethod
    def min(values: torch.Tensor, mask: torch.Tensor) -> Stat:
        return Stat("min", torch.stack([-masked_max(-values, mask), mask.sum().to(values.dtype)]))

    @staticmethod
    def std(values: torch.Tensor, weights: torch.Tensor) -> Stat:
        w = weights.to(values.dtype)
        count = w.sum()
        avg = masked_mean(values, w)
        return Stat("std", torch.stack([count, avg, (w * (values - avg).square()).sum()]))

    @staticmethod
    def total(value: float) -> Stat:
        """A count or sum given as a number (host parts)."""
        return Stat("sum", (float(value),))

    @staticmethod
    def last(value: float) -> Stat:
        """A state given as a number (host parts)."""
        return Stat("last", (float(value),))

    @staticmethod
    def ratio(total: float, count: float) -> Stat:
        """A mean given as its sum and count (host parts)."""
        return Stat("mean", (float(total), float(count)))

    def value(self) -> float:
        """The metric's value (``parts`` on the host)."""
        p = self.parts
        if self.kind == "mean":
            return p[0] / p[1] if p[1] > 0 else 0.0
        if self.kind == "std":
            return math.sqrt(max(p[2], 0.0) / p[0]) if p[0] > 0 else 0.0
        return float(p[0])

    def merge(self, other: Stat) -> Stat:
        """The statistics of both parts together (``parts`` on the host)."""
        if other.kind != self.kind:
            raise ValueError(f"cannot pool a {self.kind!r} metric with a {other.kind!r} one")
        a, b = self.parts, other.parts
        if self.kind in ("mean", "sum"):
            return Stat(self.kind, tuple(x + y for x, y in zip(a, b, strict=True)))
        if self.kind in ("max", "min"):
            if a[1] <= 0 or b[1] <= 0:
                return self if b[1] <= 0 else other
            pick = max if self.kind == "max" else min
            return Stat(self.kind, (pick(a[0], b[0]), a[1] + b[1]))
        if self.kind == "std":  # Chan, Golub & LeVeque (1979): pooled count, mean and M
            n = a[0] + b[0]
            if n <= 0:
                return self
            delta = b[1] - a[1]
            return Stat("std", (n, a[1] + delta * b[0] / n, a[2] + b[2] + delta * delta * a[0] * b[0] / n))
        return other  # last
