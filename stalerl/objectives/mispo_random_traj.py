"""``mispo_random_traj``: the RandomTraj control of the MIS-PO mechanism test.

Accept exactly ``N_acc`` trajectories chosen uniformly at random, where ``N_acc`` is the number
``mispo`` would accept in this mini-batch (trajectory ratio in [traj_low, traj_high]); then apply
the MIS-PO token mask. It separates *how many* trajectories are kept from *which* ones: if
RandomTraj matches or beats MIS-PO at equal acceptance, MIS-PO's trajectory filter helps by
thinning the batch, not by picking well-behaved trajectories.

Decisions (docs/DESIGN.md#batch-statistics): ``N_acc`` and the draw are statistics of the whole optimizer mini-batch (and
of all data-parallel ranks: every rank draws the same permutation from identically seeded
generators and takes its slice). Only trajectories with at least one valid token are drawn. The
generator is seeded by ``seed`` and its state is part of :meth:`state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stalerl.objectives import core
from stalerl.objectives import distributed as dist_utils
from stalerl.objectives.base import BatchStatsConfig
from stalerl.objectives.core import Stat
from stalerl.objectives.mispo import MISPO, MISPOConfig


@dataclass
class RandomTrajConfig(MISPOConfig, BatchStatsConfig):
    """Hyperparameters of RandomTraj."""

    seed: int = 0
    """Seed of the generator that draws the accepted trajectories."""


class MISPORandomTraj(MISPO):
    name = "mispo_random_traj"
    summary = "RandomTraj: accept N_acc random trajectories (N_acc = mispo's count), then token mask"
    config_class = RandomTrajConfig
    uses_batch_stats = True

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def compute_stats(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, stats):
        low, high = MISPO.traj_bounds(self, stats)
        valid, in_band = [], []
        for i, (lp, olp, m) in enumerate(zip(log_prob, old_log_prob, mask, strict=True)):
            ref = self.reference_log_prob(olp, None if rollout_log_prob is None else rollout_log_prob[i])
            traj = core.sequence_log_ratio(core.log_ratio(lp, ref), m)
            v = m.sum(-1) > 0
            valid.append(v)
            in_band.append(v & (traj >= low) & (traj <= high))
        valid = torch.cat(valid).cpu()
        counts = torch.stack([valid.sum(), torch.cat(in_band).sum().cpu()])
        if self._cross_rank():
            counts = dist_utils.all_reduce_sum(counts)
            offset, _ = dist_utils.rank_offsets(int(valid.sum()))
        else:
            offset = 0
        n_valid, n_accept = (int(c) for c in counts)
        chosen = torch.zeros(n_valid, dtype=torch.bool)
        chosen[torch.randperm(n_valid, generator=self.generator)[:n_accept]] = True
        mine = chosen[offset: offset + int(valid.sum())]
        accept = torch.zeros_like(valid)
        accept[valid] = mine
        stats.payload["accept"] = accept
        stats.metrics["actor/n_accept"] = Stat.total(n_accept)

    def traj_accept(self, traj_log_ratio, seq_valid, batch_stats) -> torch.Tensor:
        start = batch_stats.cursor
        accept = batch_stats.payload["accept"][start: start + seq_valid.shape[0]]
        if accept.shape[0] != seq_valid.shape[0]:
            raise ValueError(
                f"{self.name}: batch_stats covers fewer trajectories than were passed "
                f"(needed rows {start}..{start + seq_valid.shape[0]}, have {batch_stats.payload['accept'].shape[0]})"
            )
        batch_stats.cursor += seq_valid.shape[0]
        return accept.to(seq_valid.device) & seq_valid

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
