"""Mini-batch statistics for stalerl's objectives inside verl's actor update (verl 0.9.1).

verl's engines call the actor loss (``verl.workers.utils.losses.ppo_loss`` -> the registered policy
loss) once per micro-batch. M2PO's M̂2 cut-off (M2PO paper, eq. 6), RandomTraj's N_acc and
AC-MIS-PO's acceptance quantile (and its controller step) are defined over the whole optimizer
mini-batch. This module gives verl's update step what stalerl's own loop does in
``stalerl.training.loop.update``::

    per mini-batch (one optimizer step):
        stats = objective.batch_stats(current log-probs of every micro-batch, no grad)   # 1 extra forward
        for micro-batch in the SAME split verl's engine makes:
            loss = policy_loss(..., batch_stats=stats)                                      # forward + backward

* :func:`mini_batch_stats` runs the no-grad pass through the engine's own ``infer_batch`` with a
  collecting "loss function", so the micro-batches are exactly those of the training pass
  (``prepare_micro_batches`` with the training micro-batch settings; RandomTraj's draws are read in
  that order), and computes ``objective.batch_stats`` over them. With ``torch.distributed``
  initialised the objectives all-reduce/all-gather over the default process group
  (:mod:`stalerl.objectives.distributed`), so the statistics span all data-parallel ranks and are
  identical on every rank (AC-MIS-PO's controller steps once per mini-batch, the same on all ranks).
* :func:`with_mini_batch_stats` wraps one training pass: while it runs, :func:`current_stats`
  hands the statistics to the policy loss (``stalerl.integrations.verl``).

The worker classes that call this are in :mod:`stalerl.integrations.verl_actor`. The default
process group must be the data-parallel group (FSDP/FSDP2 without Ulysses sequence parallelism):
:func:`check_dp_is_world` refuses other layouts rather than count a trajectory twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from stalerl.objectives import distributed as dist_utils
from stalerl.objectives.base import BatchStats, Objective

__all__ = ["check_dp_is_world", "current_stats", "loss_inputs", "mini_batch_stats", "with_mini_batch_stats"]

_ACTIVE: list[tuple[Objective, BatchStats]] = []


def current_stats(obj: Objective) -> BatchStats | None:
    """The mini-batch statistics of ``obj`` for the training pass now running (``None`` outside one)."""
    for active, stats in reversed(_ACTIVE):
        if active is obj:
            return stats
    return None


@contextlib.contextmanager
def active_stats(obj: Objective, stats: BatchStats) -> Iterator[BatchStats]:
    """Make ``stats`` the statistics the policy loss of ``obj`` uses until the block ends."""
    _ACTIVE.append((obj, stats))
    try:
        yield stats
    finally:
        _ACTIVE.pop()


def loss_inputs(model_output: dict, data: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log_prob, old_log_prob, advantages, response_mask)``, each (B, R), of one verl micro-batch.

    The same conversion as the head of ``verl.workers.utils.losses.ppo_loss`` (no-padding model
    output -> padded response tensors), so the statistics see the tensors the loss will see.
    """
    from verl.workers.utils.padding import no_padding_2_padding

    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    padded = data.select("response_mask", "old_log_probs", "advantages").to_padded_tensor()
    return log_prob.detach(), padded["old_log_probs"], padded["advantages"], padded["response_mask"].to(torch.bool)


def check_dp_is_world(dp_size: int) -> None:
    """Refuse layouts where the default process group is not the data-parallel group."""
    world = dist_utils.world_size()
    if dist_utils.is_distributed() and dp_size != world:
        raise ValueError(
            f"stalerl's mini-batch statistics gather over the default process group ({world} ranks), but verl's "
            f"data-parallel group has {dp_size} ranks (tensor/sequence/pipeline parallelism): use the FSDP engine "
            "with ulysses_sequence_parallel_size=1, or set stats_scope: micro in actor.policy_loss.stalerl"
        )


def mini_batch_stats(engine: Any, data: Any, obj: Objective) -> BatchStats:
    """``obj.batch_stats`` over one optimizer mini-batch, from a no-grad pass of verl's ``engine``.

    ``engine.infer_batch(data, loss_function=...)`` splits ``data`` into micro-batches exactly as
    ``engine.train_batch`` will (same ``prepare_micro_batches`` settings in ``data``) and calls the
    collector once per micro-batch, in order.
    """
    parts: list[tuple[torch.Tensor, ...]] = []

    def collect(model_output: dict, data: Any, dp_group: Any = None) -> tuple[torch.Tensor, dict]:
        parts.append(loss_inputs(model_output, data))
        return torch.zeros((), device=parts[-1][0].device), {}

    engine.infer_batch(data, loss_function=collect)
    if not parts:
        raise RuntimeError("verl's engine ran no micro-batch for the mini-batch statistics pass")
    lps, olps, advs, masks = (list(x) for x in zip(*parts, strict=True))
    return obj.batch_stats(lps, olps, advs, masks)


def with_mini_batch_stats(engine: Any, data: Any, obj: Objective | None, run: Callable[[], Any]) -> Any:
    """Run the training pass ``run()`` with ``obj``'s mini-batch statistics active (plain ``run()``
    when ``obj`` is ``None``, i.e. the loss has no mini-batch statistics)."""
    if obj is None:
        return run()
    stats = mini_batch_stats(engine, data, obj)
    with active_stats(obj, stats):
        return run()
