"""stalerl's objectives inside other trainers (docs/INTEGRATIONS.md).

* :mod:`stalerl.integrations.verl` — a ``verl.plugins`` entry point that registers every
  objective as a verl policy loss (``actor_rollout_ref.actor.policy_loss.loss_mode=m2po``).
* :mod:`stalerl.integrations.verl_actor`, :mod:`~stalerl.integrations.verl_minibatch` — verl actor
  workers that give those losses the whole mini-batch's statistics and checkpoint their state.
* :mod:`stalerl.integrations.verl_stale` — the exact stale-k FIFO as a verl ``RayPPOTrainer``.
* :mod:`stalerl.integrations.verl_main` — ``python -m stalerl.integrations.verl_main``, verl's PPO
  entry point with the two above; :mod:`~stalerl.integrations.verl_eval` — pass@k from verl's dumps.
* :mod:`stalerl.integrations.trl` — ``StaleRLGRPOTrainer``, a TRL ``GRPOTrainer`` whose loss is a
  stalerl objective.

Neither submodule is imported here, so ``import stalerl.integrations`` needs neither verl nor TRL.
This module holds the one helper both share: :func:`per_token_loss`, which runs an objective up to
its per-token loss matrix so that the host trainer can apply its own token weights (verl's
``rollout_is_weights``, TRL's vLLM importance ratio, KL term) and its own normalisation before the
reduction. The formulas stay in :mod:`stalerl.objectives`; nothing is re-implemented here.

See ``docs/INTEGRATIONS.md`` for the user-facing guide.
"""

from __future__ import annotations

from typing import Any

import torch

from stalerl.objectives.base import BatchStats, Objective

__all__ = ["per_token_loss"]


def per_token_loss(
    obj: Objective,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_log_prob: torch.Tensor | None = None,
    batch_stats: BatchStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token loss of one call, before aggregation.

    Returns ``(loss_mat (B, T), agg_mask (B, T), metrics)``: the objective's per-token loss (with
    gradient through ``log_prob``), the mask its aggregation uses, and its metrics as floats.

    The batch statistics an objective needs (M2PO's M̂2 cut-off, RandomTraj's draw, AC-MIS-PO's
    bound) are taken from this call's tensors, exactly as ``obj(...)`` does when it is given no
    ``batch_stats``: with ``stats_scope="mini"`` and ``torch.distributed`` initialised they are
    gathered over all ranks (every rank must then make the same number of calls), with
    ``stats_scope="micro"`` they are this call's alone. Stateful objectives (AC-MIS-PO's controller,
    RandomTraj's generator) advance once per call.

    Given ``batch_stats`` (the whole mini-batch's, from ``obj.batch_stats``), a mini-batch scoped
    objective uses them instead, as in stalerl's own loop.

    ``obj(...)`` itself equals ``core.aggregate(loss_mat, agg_mask, mode)`` of what this returns.
    """
    out = obj.per_token_loss(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=rollout_log_prob,
                             batch_stats=batch_stats)
    return out.loss_mat, out.agg_mask, out.metrics


def _as_plain(value: Any) -> Any:
    """An OmegaConf/BaseConfig mapping or list as plain Python containers (for hashing and JSON)."""
    try:  # omegaconf is a dependency of verl, not of stalerl
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, dict) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return {str(k): _as_plain(value[k]) for k in value.keys()}
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    return value
