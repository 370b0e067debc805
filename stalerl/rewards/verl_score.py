"""The M2PO reward as verl's ``custom_reward_function`` (``compute_score``).

    reward.custom_reward_function.path=pkg://stalerl.rewards.verl_score
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.format_score=0.1     # optional (the paper's value)

Scores one response the way ``stalerl train`` does (:class:`stalerl.rewards.MathReward`): the last
``\\boxed{...}`` of the response checked against the reference with math-verify, 1.0 if correct,
``format_score`` (the M2PO paper: 0.1; the released code: 0.0) if an answer was extracted but is
wrong, 0 with no box. The check runs in stalerl's verifier worker processes with a hard timeout
(:class:`stalerl.rewards.MathVerifier`), so an output crafted to hang math-verify (huge nested
powers, factorials of towers) cannot stall verl's reward loop.

Decision: a check that timed out or crashed scores **0**, not ``format_score``: the format reward is
for a well-formed answer, and an output that hangs the verifier must not earn it (``stalerl
train``'s ``MathReward`` gives such an answer ``format_score``; it counts it under ``timeout``).

One verifier per process and per settings, created on first use (verl's reward workers are
separate processes; the verifier is not fork-safe, so a forked child makes its own).
"""

from __future__ import annotations

import os
from typing import Any

from stalerl.rewards.reward import MathReward

__all__ = ["compute_score"]

_REWARDS: dict[tuple, tuple[int, MathReward]] = {}


def _reward(format_score: float, timeout_s: float, num_workers: int | None) -> MathReward:
    key = (float(format_score), float(timeout_s), num_workers)
    pid, reward = _REWARDS.get(key, (None, None))
    if reward is None or pid != os.getpid():
        reward = MathReward(format_score=format_score, timeout_s=timeout_s, num_workers=num_workers)
        _REWARDS[key] = (os.getpid(), reward)
    return reward


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    format_score: float = 0.1,
    timeout_s: float = 5.0,
    num_workers: int | None = 1,
    **kwargs: Any,
) -> dict[str, Any]:
    """The M2PO reward of one response (verl's ``compute_score`` signature).

    Returns verl's dict form ``{"score": reward, "acc": 1.0 if correct else 0.0, "pred": the
    extracted answer or ""}``: verl trains on ``score`` and reports ``acc`` (not the reward, which
    includes the 0.1 format reward) as ``val-core/<data_source>/acc/mean@n``, and ``pred`` gives
    its ``maj@n``.

    Args:
        data_source: the row's ``data_source`` (unused: every source is scored as math).
        solution_str: the decoded response.
        ground_truth: the reference answer (``reward_model.ground_truth``); non-strings use ``str``.
        extra_info: the row's ``extra_info`` (unused).
        format_score: reward of an extracted but wrong answer (M2PO paper: 0.1).
        timeout_s: wall-clock limit of one math-verify check, in seconds; a timed-out check scores 0.
        num_workers: verifier worker processes in this process.
        **kwargs: other keywords verl passes (ignored).
    """
    batch = _reward(format_score, timeout_s, num_workers)([solution_str], [ground_truth])
    pred = (batch.answers[0] if batch.answers else None) or ""
    if batch.counts.get("timeout") or batch.counts.get("error"):
        return {"score": 0.0, "acc": 0.0, "pred": pred}
    return {"score": float(batch.scores[0]), "acc": float(batch.correct[0]), "pred": pred}
