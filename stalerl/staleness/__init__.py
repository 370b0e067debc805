"""Stale rollouts: the stale-k buffer and the asynchronous rollout worker.

* :class:`StaleBuffer` -- the FIFO of generation batches (:class:`RolloutBatch`, made by
  :mod:`stalerl.rollout.batch` and named here too) that gives every
  update data exactly ``s`` to ``s + m - 1`` updates old (docs/DESIGN.md#stale-k);
  :func:`expected_policy_version` is the version the protocol prescribes.
* :class:`AsyncRollouts` / :class:`AsyncRolloutWorker` -- generation in its own process within
  the staleness bound (``stale.mode=async``), imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl._lazy import lazy_exports
from stalerl.rollout.batch import RolloutBatch
from stalerl.staleness.buffer import StaleBuffer, expected_policy_version

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.staleness.async_rollout import (
        AsyncRolloutWorker, AsyncRollouts, AsyncWorkerError, StalenessBoundError, min_policy_version,
    )

_ASYNC = "stalerl.staleness.async_rollout"
__getattr__, __dir__ = lazy_exports(__name__, {
    "AsyncRollouts": _ASYNC,
    "AsyncRolloutWorker": _ASYNC,
    "AsyncWorkerError": _ASYNC,
    "StalenessBoundError": _ASYNC,
    "min_policy_version": _ASYNC,
})

__all__ = [
    "StaleBuffer", "RolloutBatch", "expected_policy_version",
    "AsyncRollouts", "AsyncRolloutWorker", "AsyncWorkerError", "StalenessBoundError", "min_policy_version",
]
