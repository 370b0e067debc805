"""Learning-rate schedule of ``stalerl train``: linear warmup, then constant, linear or cosine decay.

With ``u`` the optimizer update (0-based), ``W = optim.warmup_steps``, ``U`` the run's total
updates (``steps * mini_batches``), ``r = optim.min_lr_ratio`` and ``p = (u - W) / max(1, U - W)``,
the learning rate is ``optim.lr`` times

* ``u / W`` while ``u < W`` (the first update of a warmup runs at 0, as verl and transformers do);
* ``constant``: 1;
* ``linear``: ``r + (1 - r) * (1 - p)``;
* ``cosine``: ``max(r, r + (1 - r) * (1 + cos(pi * p)) / 2)``.

``constant`` and ``cosine`` are verl's ``get_constant_schedule_with_warmup`` and
``get_cosine_schedule_with_warmup`` (``verl.utils.torch_functional``); ``linear`` with ``r = 0`` is
transformers' ``get_linear_schedule_with_warmup``; ``tests/test_training_options.py`` checks all
three against those functions. The scheduler is a :class:`torch.optim.lr_scheduler.LambdaLR`
stepped once per optimizer update (skipped non-finite updates included, so the schedule follows
the update counter) and its state is saved in every checkpoint.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["lr_ratio", "build_scheduler"]


def lr_ratio(update: int, *, schedule: str, warmup_steps: int, total_updates: int, min_lr_ratio: float) -> float:
    """The multiplier of ``optim.lr`` at optimizer update ``update`` (0-based); formula above."""
    if update < warmup_steps:
        return update / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (update - warmup_steps) / max(1, total_updates - warmup_steps)
    progress = min(progress, 1.0)
    if schedule == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return max(min_lr_ratio, min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"optim.schedule={schedule!r} must be constant, linear or cosine")


def build_scheduler(optimizer: torch.optim.Optimizer, optim_config, total_updates: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's scheduler for ``optimizer`` (``optim_config`` is the ``optim`` config section)."""
    oc = optim_config

    def ratio(update: int) -> float:
        return lr_ratio(update, schedule=oc.schedule, warmup_steps=oc.warmup_steps, total_updates=total_updates,
                        min_lr_ratio=oc.min_lr_ratio)

    return _PerUpdateLR(optimizer, ratio)


class _PerUpdateLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR stepped once per optimizer update, skipped ones included: a skipped (non-finite)
    update calls no ``optimizer.step()``, which torch would report as a misordered call."""

    def step(self, epoch=None) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            super().step(epoch)
