"""Verifiable rewards: ``\\boxed{}`` extraction, math-verify in worker processes, reward functions.

* :func:`last_boxed` -- the content of the last ``\\boxed{...}`` of a completion.
* :class:`MathVerifier` -- math-verify in a pool of worker processes with a hard timeout and a
  memory cap (math-verify's own timeouts rely on ``signal.alarm`` and can hang).
* :class:`MathReward` -- the M2PO reward (1.0 correct, ``format_score`` for an extracted wrong
  answer, 0 otherwise), returning a :class:`RewardBatch`.
* :func:`load_reward_fn` -- a user reward ``"pkg.mod:fn"`` or ``"/path/file.py:fn"``.
* :func:`build_reward_fn` -- the run's reward from its ``reward`` config section.
"""

from stalerl.rewards.boxed import last_boxed
from stalerl.rewards.reward import MathReward, RewardBatch, UserReward, build_reward_fn, load_reward_fn, make_reward
from stalerl.rewards.verifier import STATUSES, MathVerifier, VerifyResult, wrap_for_parse

__all__ = [
    "last_boxed",
    "MathVerifier",
    "VerifyResult",
    "STATUSES",
    "wrap_for_parse",
    "MathReward",
    "RewardBatch",
    "UserReward",
    "load_reward_fn",
    "make_reward",
    "build_reward_fn",
]
