"""The policy model's numerics, shared by rollout and training: where it runs, in which precision,
and the per-token log-probs of its completions.

* :func:`completion_log_probs` -- per-token log-probs and entropies of completions, computed in
  chunks (:mod:`stalerl.models.logprobs`).
* :mod:`stalerl.models.precision` -- float32 master weights with bf16/fp16 compute (autocast, the
  generation copy).
* :func:`resolve_device` -- ``model.device`` as a torch device that exists here.

Imported on first use (torch is loaded then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.models.device import resolve_device
    from stalerl.models.logprobs import completion_log_probs, token_log_probs_from_hidden

__getattr__, __dir__ = lazy_exports(__name__, {
    "completion_log_probs": "stalerl.models.logprobs",
    "token_log_probs_from_hidden": "stalerl.models.logprobs",
    "resolve_device": "stalerl.models.device",
})

__all__ = ["completion_log_probs", "token_log_probs_from_hidden", "resolve_device"]
