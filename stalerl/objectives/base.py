"""The uniform contract every objective follows.

An objective is built from keyword hyperparameters (a typed config dataclass per objective,
each field documented where it is declared) and called on one batch::

    out = obj(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None)
    out.loss      # scalar, differentiable w.r.t. log_prob
    out.metrics   # dict[str, float], verl-style "actor/..." names
    out.extras    # detached per-trajectory / per-token tensors for diagnostics

**Batch-level statistics.** M2PO's M̂2, RandomTraj's N_acc and AC-MIS-PO's quantile are taken
over the whole optimizer mini-batch (docs/DESIGN.md#batch-statistics). A caller that splits a mini-batch into
micro-batches computes them once with :meth:`Objective.batch_stats` (from detached current
log-probs of the whole mini-batch, as a list of micro-batches or one tensor) and hands the result
to every micro-batch call as ``batch_stats=``; the micro-batch losses then also share the
mini-batch's normaliser (token and sequence counts, over all ranks and divided by the number of
ranks, as verl's ``agg_loss`` does for gradient averaging), so their sum is the mini-batch loss.
Without ``batch_stats`` a call treats its own tensors as the mini-batch and normalises locally.
With ``torch.distributed`` initialised the statistics are gathered across ranks;
``stats_scope="micro"`` reproduces the released M2PO code: statistics of each call alone (a
given ``batch_stats`` then only supplies the normaliser).

**Metrics pool over the mini-batch.** An objective reports each metric as a
:class:`~stalerl.objectives.core.Stat` with a declared reduction (a sum and a count, a maximum,
pooled moments...). :func:`reduce_metrics` pools the calls of one mini-batch (and, given a
``gather``, all ranks), so that a metric has one value per mini-batch whatever the micro-batch
size: maxima stay maxima, trajectory rates are rates over trajectories, spreads come from pooled
moments, token means are weighted by tokens. ``out.stats`` holds a call's own statistics,
``out.batch_metrics`` those of the mini-batch statistics (counted once); ``out.metrics`` are
the values of this call. The loop, the TRL trainer and the verl loss all use
:func:`reduce_metrics` (tests/test_training.py checks equality at micro-batch sizes 16, 4, 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from stalerl.errors import ObjectiveError
from stalerl.objectives import core
from stalerl.objectives import distributed as dist_utils
from stalerl.objectives.core import Stat


@dataclass
class ObjectiveOutput:
    """What an objective returns."""

    loss: torch.Tensor
    """Scalar loss (= -objective), differentiable with respect to ``log_prob``."""
    metrics: dict[str, float]
    """Scalar metrics with verl's ``actor/...`` names (clip fractions, KL, M̂2, acceptance...)."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached tensors for diagnostics: ``traj_log_ratio`` (B,), ``traj_accepted`` (B,) bool,
    ``token_kept`` (B, T) bool where an objective masks tokens."""
    stats: dict[str, Stat] = field(default_factory=dict)
    """This call's metrics as sufficient statistics (host), to pool with :func:`reduce_metrics`."""
    batch_metrics: dict[str, Stat] = field(default_factory=dict)
    """Metrics of statistics that already span the mini-batch (and the ranks): count them once."""


@dataclass
class PerTokenLoss:
    """What :meth:`Objective.per_token_loss` returns."""

    loss_mat: torch.Tensor
    """(B, T) per-token loss, with gradient through ``log_prob`` (float32/float64)."""
    agg_mask: torch.Tensor
    """(B, T) the mask the aggregation averages over (all valid tokens)."""
    metrics: dict[str, float]
    extras: dict[str, torch.Tensor]
    batch_stats: "BatchStats"
    stats: dict[str, Stat] = field(default_factory=dict)
    """As :attr:`ObjectiveOutput.stats`."""
    batch_metrics: dict[str, Stat] = field(default_factory=dict)
    """As :attr:`ObjectiveOutput.batch_metrics`."""


@dataclass
class BatchStats:
    """Statistics of a whole optimizer mini-batch, computed once by :meth:`Objective.batch_stats`.

    ``num_tokens``/``num_seqs`` are the mini-batch's valid token and sequence counts (over all
    ranks) divided by the data-parallel size, used as loss normalisers; ``payload`` holds what the
    objective needs (a cut-off, a bound, an acceptance vector). Consuming objectives (RandomTraj)
    read their part of the payload in call order through ``cursor``.
    """

    num_tokens: float
    num_seqs: float
    payload: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Stat] = field(default_factory=dict)
    """Metrics of the mini-batch statistics (M̂2 before masking, N_acc, the bound), with host parts."""
    cursor: int = 0
    horizon: float | None = None
    """Response length that ``seq-mean-token-sum-norm`` divides by, fixed for the mini-batch."""


@dataclass
class ObjectiveConfig:
    """Hyperparameters every objective has."""

    loss_agg_mode: str = "token-mean"
    """How per-token losses become a scalar, with verl's names: ``token-mean`` (default),
    ``seq-mean-token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-sum-norm`` (or verl's
    ``token-sum``)."""
    loss_scale_factor: float | None = None
    """Divisor of ``seq-mean-token-sum-norm``; ``None`` uses the horizon T of each call (verl)."""

    def __post_init__(self) -> None:
        if self.loss_agg_mode not in core.AGG_MODES:
            raise ValueError(
                f"loss_agg_mode={self.loss_agg_mode!r} is not one of {', '.join(core.AGG_MODES)}"
            )
        if self.loss_scale_factor is not None and not self.loss_scale_factor > 0:
            raise ValueError(f"loss_scale_factor={self.loss_scale_factor!r} must be > 0 (or None)")


@dataclass
class BatchStatsConfig(ObjectiveConfig):
    """Hyperparameters of objectives that use mini-batch statistics."""

    stats_scope: str = "mini"
    """``mini`` (default): statistics over the whole optimizer mini-batch and all data-parallel
    ranks. ``micro``: over each call's tensors alone, like the released M2PO code."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stats_scope not in ("mini", "micro"):
            raise ValueError(f"stats_scope={self.stats_scope!r} must be 'mini' or 'micro'")


def _check_hparam_types(config: ObjectiveConfig, objective: str) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if "float" in kind or "int" in kind:
            if value is None and "None" in kind:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ObjectiveError(f"{objective}: hyperparameter {f.name}={value!r} must be a number")
            if not math.isfinite(float(value)):
                raise ObjectiveError(f"{objective}: hyperparameter {f.name}={value!r} must be finite")
            if kind == "int" and not isinstance(value, int):
                raise ObjectiveError(f"{objective}: hyperparameter {f.name}={value!r} must be an integer")
        elif kind == "bool" and not isinstance(value, bool):
            raise ObjectiveError(f"{objective}: hyperparameter {f.name}={value!r} must be true or false")
        elif kind == "str" and not isinstance(value, str):
            raise ObjectiveError(f"{objective}: hyperparameter {f.name}={value!r} must be a string")


class Objective:
    """Base class. Subclasses set the class attributes and implement :meth:`compute`."""

    name: ClassVar[str]
    """Registry name (``objectives.build(name)``)."""
    summary: ClassVar[str]
    """One line shown by ``stalerl objectives``."""
    config_class: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    uses_batch_stats: ClassVar[bool] = False
    """True where the objective needs mini-batch statistics (M2PO, RandomTraj, AC-MIS-PO)."""
    requires_rollout_log_prob: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        allowed = [f.name for f in dataclasses.fields(self.config_class)]
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            raise ObjectiveError(
                f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for objective "
                f"{self.name!r}; it accepts: {', '.join(allowed)}"
            )
        try:
            self.config = self.config_class(**hparams)
        except TypeError as err:  # an ill-typed value met a range check in __post_init__: name it
            unchecked = object.__new__(self.config_class)
            for f in dataclasses.fields(self.config_class):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                object.__setattr__(unchecked, f.name, hparams.get(f.name, default))
            _check_hparam_types(unchecked, self.name)
            raise ObjectiveError(f"{self.name}: {err}") from None
        _check_hparam_types(self.config, self.name)

    # ------------------------------------------------------------------ public API
    def __call__(
        self,
        log_prob: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        rollout_log_prob: torch.Tensor | None = None,
        batch_stats: BatchStats | None = None,
    ) -> ObjectiveOutput:
        """Loss and metrics on one (micro-)batch; see the module docstring for ``batch_stats``."""
        per_token = self.per_token_loss(
            log_prob, old_log_prob, advantages, response_mask,
            rollout_log_prob=rollout_log_prob, batch_stats=batch_stats,
        )
        stats = per_token.batch_stats
        loss = core.aggregate(
            per_token.loss_mat,
            per_token.agg_mask,
            self.config.loss_agg_mode,
            num_tokens=stats.num_tokens,
            num_seqs=stats.num_seqs,
            loss_scale_factor=self.config.loss_scale_factor,
            horizon=stats.horizon,
        )
        return ObjectiveOutput(loss=loss, metrics=per_token.metrics, extras=per_token.extras,
                               stats=per_token.stats, batch_metrics=per_token.batch_metrics)

    def per_token_loss(
        self,
        log_prob: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        rollout_log_prob: torch.Tensor | None = None,
        batch_stats: BatchStats | None = None,
    ) -> "PerTokenLoss":
        """The per-token loss before aggregation, for host trainers that weight tokens or
        normalise themselves (verl's ``rollout_is_weights`` and ``agg_loss``, TRL's KL term).

        ``obj(...)`` is ``core.aggregate`` of this result with the objective's ``loss_agg_mode``.
        Statistics follow the same rules as ``__call__``; stateful objectives advance once per call
        when no ``batch_stats`` is given.
        """
        log_prob, old_log_prob, advantages, mask, rollout_log_prob = self._prepare(
            log_prob, old_log_prob, advantages, response_mask, rollout_log_prob
        )
        own = batch_stats is None or (self.uses_batch_stats and not self.mini_batch_scoped)
        if own:
            # Statistics of this call alone: no batch_stats given (the call is the whole
            # mini-batch), or stats_scope="micro"; a given batch_stats still sets the normaliser.
            local = self._batch_stats_from(
                [log_prob.detach()], [old_log_prob], [advantages], [mask],
                [rollout_log_prob] if rollout_log_prob is not None else None, global_counts=False,
            )
            if batch_stats is not None:
                local.num_tokens, local.num_seqs = batch_stats.num_tokens, batch_stats.num_seqs
                local.horizon = batch_stats.horizon
            batch_stats = local
        loss_mat, agg_mask, metrics, extras = self.compute(
            log_prob, old_log_prob, advantages, mask, rollout_log_prob, batch_stats
        )
        call_stats = self._to_stats(metrics, mask)
        if own and not self._cross_rank():
            # this call's own statistics: they pool with the other calls' like any metric
            call_stats.update(batch_stats.metrics)
            batch_metrics: dict[str, Stat] = {}
        else:  # shared by every call of the mini-batch, or already gathered over the ranks
            batch_metrics = dict(batch_stats.metrics)
        floats = reduce_metrics([call_stats], batch=batch_metrics)
        return PerTokenLoss(loss_mat, agg_mask, floats, extras, batch_stats, call_stats, batch_metrics)

    def batch_stats(
        self,
        log_prob: torch.Tensor | Sequence[torch.Tensor],
        old_log_prob: torch.Tensor | Sequence[torch.Tensor],
        advantages: torch.Tensor | Sequence[torch.Tensor],
        response_mask: torch.Tensor | Sequence[torch.Tensor],
        *,
        rollout_log_prob: torch.Tensor | Sequence[torch.Tensor] | None = None,
        horizon: float | None = None,
    ) -> BatchStats:
        """Statistics of a whole optimizer mini-batch, given as tensors or lists of micro-batches.

        ``log_prob`` are the current policy's log-probs (detached) before the update. Stateful
        objectives advance their state here (AC-MIS-PO's controller takes one step), so call it
        once per mini-batch. ``horizon`` is the response length ``seq-mean-token-sum-norm``
        divides by (default: the longest padded length ``T`` among the micro-batches, over all
        ranks), so that the micro-batch losses add up to the mini-batch loss however it is split.
        """
        as_list = lambda x: None if x is None else (list(x) if isinstance(x, (list, tuple)) else [x])  # noqa: E731
        parts = [as_list(log_prob), as_list(old_log_prob), as_list(advantages), as_list(response_mask)]
        rollout_parts = as_list(rollout_log_prob)
        if len({len(p) for p in parts}) != 1 or (rollout_parts is not None and len(rollout_parts) != len(parts[0])):
            raise ValueError("batch_stats: every argument must have the same number of micro-batches")
        prepared = [
            self._prepare(lp, olp, adv, m, None if rollout_parts is None else rollout_parts[i])
            for i, (lp, olp, adv, m) in enumerate(zip(*parts, strict=True))
        ]
        lps, olps, advs, masks, rlps = (list(x) for x in zip(*prepared, strict=True))
        stats = self._batch_stats_from(
            [lp.detach() for lp in lps], olps, advs, masks, None if rollout_parts is None else rlps,
            global_counts=True, with_payload=self.mini_batch_scoped,
        )
        if horizon is None:
            longest = torch.tensor([float(max(m.shape[-1] for m in masks))], dtype=torch.float64)
            if dist_utils.is_distributed():
                longest = dist_utils.all_gather_varlen(longest.to(masks[0].device)).max().reshape(1)
            horizon = float(longest.item())
        stats.horizon = float(horizon)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless objectives)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"objective {self.name!r} is stateless but got state keys {sorted(state)}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{type(self).__name__}({fields})"

    # ------------------------------------------------------------------ for subclasses
    def compute(
        self,
        log_prob: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        rollout_log_prob: torch.Tensor | None,
        batch_stats: BatchStats,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return ``(per-token loss (B,T), aggregation mask (B,T), tensor metrics, extras)``."""
        raise NotImplementedError

    def compute_stats(
        self,
        log_prob: list[torch.Tensor],
        old_log_prob: list[torch.Tensor],
        advantages: list[torch.Tensor],
        mask: list[torch.Tensor],
        rollout_log_prob: list[torch.Tensor] | None,
        stats: BatchStats,
    ) -> None:
        """Fill ``stats.payload`` from the whole mini-batch (objectives with mini-batch statistics)."""

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D tensor over data-parallel ranks when statistics are mini-batch scoped."""
        if self._cross_rank():
            return dist_utils.all_gather_varlen(tensor)
        return tensor

    def spans_ranks(self) -> bool:
        """True when this objective's statistics are gathered over the data-parallel ranks
        (``stats_scope="mini"`` under ``torch.distributed``): every rank makes the same calls, so
        a caller may pool the metrics over the ranks too (``reduce_metrics(..., gather=...)``)."""
        return self._cross_rank()

    # ------------------------------------------------------------------ internals
    def _cross_rank(self) -> bool:
        return getattr(self.config, "stats_scope", "micro") == "mini" and dist_utils.is_distributed()

    @property
    def mini_batch_scoped(self) -> bool:
        """True when statistics are taken over the whole mini-batch (``stats_scope="mini"``)."""
        return getattr(self.config, "stats_scope", "mini") == "mini"

    def _batch_stats_from(self, lps, olps, advs, masks, rlps, global_counts: bool, with_payload: bool = True) -> BatchStats:
        counts = torch.stack(
            [sum(m.sum() for m in masks), sum((m.sum(-1) > 0).sum() for m in masks)]
        ).to(torch.float64)
        world = 1
        if global_counts and dist_utils.is_distributed():
            counts = dist_utils.all_reduce_sum(counts)
            world = dist_utils.world_size()
        tokens, seqs = counts.tolist()
        stats = BatchStats(num_tokens=tokens / world, num_seqs=seqs / world)
        if self.uses_batch_stats and with_payload:
            self.compute_stats(lps, olps, advs, masks, rlps, stats)
        return stats

    def _prepare(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob):
        name = self.name
        for arg, value in (("log_prob", log_prob), ("old_log_prob", old_log_prob),
                           ("advantages", advantages), ("response_mask", response_mask)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")
        if log_prob.dim() != 2:
            raise ValueError(f"{name}: log_prob must have shape (B, T), got {tuple(log_prob.shape)}")
        shape = tuple(log_prob.shape)
        for arg, value in (("old_log_prob", old_log_prob), ("response_mask", response_mask)):
            if tuple(value.shape) != shape:
                raise ValueError(f"{name}: {arg} has shape {tuple(value.shape)}, expected {shape} like log_prob")
        if rollout_log_prob is not None and tuple(rollout_log_prob.shape) != shape:
            raise ValueError(
                f"{name}: rollout_log_prob has shape {tuple(rollout_log_prob.shape)}, expected {shape} like log_prob"
            )
        if self.requires_rollout_log_prob and rollout_log_prob is None:
            raise ValueError(f"{name}: needs rollout_log_prob= (the inference engine's log-probs)")
        for arg, value in (("log_prob", log_prob), ("old_log_prob", old_log_prob),
                           ("advantages", advantages), ("rollout_log_prob", rollout_log_prob)):
            if value is not None and not value.is_floating_point():
                raise ValueError(f"{name}: {arg} must be a floating-point tensor, got {value.dtype}")
        if response_mask.is_complex():
            raise ValueError(f"{name}: response_mask must be bool, integer or float, got {response_mask.dtype}")
        if advantages.dim() == 1:
            if advantages.shape[0] != shape[0]:
                raise ValueError(f"{name}: advantages has shape {tuple(advantages.shape)}, expected ({shape[0]},) or {shape}")
            advantages = advantages.unsqueeze(-1).expand(shape)
        elif tuple(advantages.shape) != shape:
            raise ValueError(f"{name}: advantages has shape {tuple(advantages.shape)}, expected ({shape[0]},) or {shape}")
        # Half-precision inputs are computed in float32; float64 stays float64 (exact tests).
        dtype = torch.float64 if log_prob.dtype == torch.float64 else torch.float32
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        mask = (response_mask != 0).to(dtype)
        return cast(log_prob), cast(old_log_prob).detach(), cast(advantages).detach(), mask, (
            None if rollout_log_prob is None else cast(rollout_log_prob).detach()
        )

    @staticmethod
    def _to_stats(metrics: dict[str, Any], mask: torch.Tensor) -> dict[str, Stat]:
        """The metrics of :meth:`compute` as host :class:`Stat` (a plain tensor or number is taken
        as a token mean over this call's valid tokens, so a user objective pools by tokens)."""
        # One device->host transfer for all metrics, not one .item() each.
        tokens = mask.detach().sum().to(torch.float64)
        kinds, flat, sizes = [], [], []
        for m in metrics.values():
            if isinstance(m, Stat):
                part = torch.as_tensor(m.parts).detach().to(device=mask.device, dtype=torch.float64).reshape(-1)
                kinds.append(m.kind)
            else:
                value = torch.as_tensor(m, dtype=torch.float64, device=mask.device).detach().reshape(())
                part = torch.stack([value * tokens, tokens])
                kinds.append("mean")
            flat.append(part)
            sizes.append(part.numel())
        if not flat:
            return {}
        values = torch.cat(flat).tolist()
        out, i = {}, 0
        for name, kind, n in zip(metrics, kinds, sizes, strict=True):
            out[name] = Stat(kind, tuple(values[i:i + n]))
            i += n
        return out


def reduce_metrics(
    parts: Sequence[dict[str, Stat]],
    *,
    batch: dict[str, Stat] | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One value per metric for a mini-batch: ``parts`` (one dict per call, host :class:`Stat`)
    pooled together, then, with ``gather`` (concatenates a 1-D tensor over ranks in rank order,
    e.g. :func:`stalerl.objectives.distributed.all_gather_varlen` or accelerate's ``gather``),
    over the ranks; ``batch`` (statistics that already span the mini-batch and the ranks) is
    counted once. Every rank must hold the same metric names when ``gather`` is given.
    """
    pooled = pool_stats(parts)
    if gather is not None and pooled:
        pooled = _pool_ranks(pooled, gather)
    for name, stat in (batch or {}).items():
        pooled.setdefault(name, stat)
    return {name: stat.value() for name, stat in pooled.items()}


def pool_stats(parts: Sequence[dict[str, Stat]]) -> dict[str, Stat]:
    """The :class:`Stat` of each metric over all ``parts`` (host parts), e.g. the calls of a mini-batch."""
    pooled: dict[str, Stat] = {}
    for part in parts:
        for name, stat in part.items():
            pooled[name] = pooled[name].merge(stat) if name in pooled else Stat(stat.kind, tuple(stat.parts))
    return pooled


def _pool_ranks(pooled: dict[str, Stat], gather) -> dict[str, Stat]:
    names = sorted(pooled)
    row = [x for n in names for x in (*pooled[n].parts,)]
    gathered = gather(torch.tensor(row, dtype=torch.float64)).reshape(-1).tolist()
    if len(gathered) % len(row):
        raise ValueError("reduce_metrics: the ranks report different metrics; every rank must log the same names")
    out: dict[str, Stat] = {}
    for r in range(len(gathered) // len(row)):
        i = r * len(row)
        for n in names:
            k = len(pooled[n].parts)
            stat = Stat(pooled[n].kind, tuple(gathered[i:i + k]))
            out[n] = out[n].merge(stat) if n in out else stat
            i += k
    return out
