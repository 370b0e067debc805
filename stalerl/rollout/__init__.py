"""Generation of rollouts with transformers ``generate`` (KV cache) and the behaviour log-probs.

* :func:`generate` -- sample ``G`` responses per prompt, returning a :class:`Generation`
  (token ids, masks, the sampler's own log-probs).
* :func:`behaviour_log_probs` -- the training model's log-probs of those responses, stored with
  the batch as the behaviour policy's (docs/DESIGN.md#stale-k).

Imported on first use: :mod:`stalerl.rollout.generation` needs the log-prob module of
:mod:`stalerl.training`, whose loop imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.rollout.generation import Generation, behaviour_log_probs, generate

__getattr__, __dir__ = lazy_exports(__name__, {
    "Generation": "stalerl.rollout.generation",
    "generate": "stalerl.rollout.generation",
    "behaviour_log_probs": "stalerl.rollout.generation",
})

__all__ = ["generate", "behaviour_log_probs", "Generation"]
