"""Rollouts: generation with transformers ``generate`` (KV cache) and one generation batch.

* :func:`generate` -- sample ``G`` responses per prompt, returning a :class:`Generation`
  (token ids, masks, the sampler's own log-probs).
* :func:`behaviour_log_probs` -- the training model's log-probs of those responses, stored with
  the batch as the behaviour policy's (docs/DESIGN.md#stale-k).
* :func:`make_rollout_batch` -- one generation batch, generate -> reward -> advantages ->
  behaviour log-probs, as a :class:`RolloutBatch`; :func:`group_advantages` (GRPO advantages).

Imported on first use (torch is loaded then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.rollout.advantages import group_advantages
    from stalerl.rollout.batch import RolloutBatch, make_rollout_batch
    from stalerl.rollout.generation import Generation, behaviour_log_probs, generate

__getattr__, __dir__ = lazy_exports(__name__, {
    "Generation": "stalerl.rollout.generation",
    "generate": "stalerl.rollout.generation",
    "behaviour_log_probs": "stalerl.rollout.generation",
    "RolloutBatch": "stalerl.rollout.batch",
    "make_rollout_batch": "stalerl.rollout.batch",
    "group_advantages": "stalerl.rollout.advantages",
})

__all__ = ["generate", "behaviour_log_probs", "Generation", "RolloutBatch", "make_rollout_batch", "group_advantages"]
