"""GRPO group-relative advantages (M2PO paper eq. 2)."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> tuple[torch.Tensor, float]:
    """``A = (r - mean_group(r)) / (std_group(r) + eps)`` for consecutive groups of ``group_size``.

    Returns ``(advantages (N,), fraction of groups whose rewards are all equal)``. Such a group has
    zero advantage for every response: it carries no learning signal and is counted, not dropped.
    The standard deviation is the unbiased one (``torch.std``), as verl's GRPO estimator uses.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} cannot be split into groups of {group_size}")
    grouped = rewards.view(-1, group_size).to(torch.float32)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = ((grouped - mean) / (std + eps)).view(-1)
    zero_variance = (grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean().item()
    return advantages, zero_variance
