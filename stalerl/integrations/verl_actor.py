"""stalerl's verl actor workers: mini-batch statistics and objective state in checkpoints (verl 0.9.1).

verl 0.9.1's actor is ``verl.workers.engine_workers.ActorRolloutRefWorker``; its training half is a
``TrainingWorker`` (class attribute ``actor_worker_cls``) whose ``train_mini_batch`` calls
``train_batch`` once per optimizer mini-batch, and ``train_batch`` runs the engine's micro-batches
(``engine.train_batch`` -> ``forward_backward_batch`` -> ``ppo_loss`` -> the policy loss). Two
subclasses, no fork:

* :class:`StaleRLTrainingWorker` (extends ``TrainingWorker``): ``train_batch`` first computes the
  objective's statistics over the whole mini-batch in a no-grad pass through the same engine
  (:func:`stalerl.integrations.verl_minibatch.mini_batch_stats`: the same micro-batch split, all
  data-parallel ranks) and then runs verl's own ``train_batch`` with those statistics handed to every
  micro-batch's loss. Objectives without mini-batch statistics (or ``stats_scope: micro``) run
  exactly verl's ``train_batch``. Cost: one extra forward over the mini-batch for ``m2po``,
  ``m2po_capped``, ``mispo_random_traj`` and ``ac_mispo`` only.
* :class:`StaleRLActorRolloutRefWorker` (extends ``ActorRolloutRefWorker``): uses
  ``StaleRLTrainingWorker`` for the actor and writes the stateful objectives' state (AC-MIS-PO's
  controller step and bound, RandomTraj's generator) as ``stalerl_objectives.pt`` into each actor
  checkpoint, restoring it on ``load_checkpoint``. The state is identical on every rank (the
  statistics are gathered), rank 0 writes it, every rank reads it.

verl picks the actor worker class in its task runner, not from a config key; stalerl's launcher
``python -m stalerl.integrations.verl_main`` (:mod:`stalerl.integrations.verl_main`) selects these
classes (see docs/INTEGRATIONS.md).
"""

from __future__ import annotations

import logging
import os

import torch
from verl.single_controller.base.decorator import (
    Dispatch,
    make_nd_compute_dataproto_dispatch_fn,
    register,
)
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from stalerl.integrations import verl as stalerl_verl
from stalerl.integrations import verl_minibatch

logger = logging.getLogger(__name__)

__all__ = ["OBJECTIVE_STATE_FILE", "StaleRLActorRolloutRefWorker", "StaleRLTrainingWorker"]

OBJECTIVE_STATE_FILE = "stalerl_objectives.pt"
"""File written into verl's actor checkpoint directory with the stateful objectives' state."""


def _loss_config(loss_fn):
    """The ActorConfig bound into verl's loss function (``functools.partial(ppo_loss, config=...)``)."""
    return getattr(loss_fn, "keywords", {}).get("config")


class StaleRLTrainingWorker(TrainingWorker):
    """verl's ``TrainingWorker`` with stalerl's mini-batch statistics pass before the micro-batches."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="train"), blocking=False)
    def train_batch(self, data):
        obj = stalerl_verl.stats_objective(_loss_config(self.loss_fn))
        if obj is None:
            return super().train_batch(data)
        # The keys TrainingWorker.train_batch would add, added now so that the statistics pass
        # splits the mini-batch into the training micro-batches (not the log-prob ones).
        defaults = {
            "use_remove_padding": self.model_config.get("use_remove_padding", False),
            "use_dynamic_bsz": self.engine_config.use_dynamic_bsz,
            "max_token_len_per_gpu": self.engine_config.max_token_len_per_gpu,
            "micro_batch_size_per_gpu": self.engine_config.micro_batch_size_per_gpu,
            "use_fused_kernels": self.engine_config.use_fused_kernels,
        }
        present = set(data.keys())  # a TensorDict's keys, non-tensor entries included
        for key, val in defaults.items():
            if key not in present:
                tu.assign_non_tensor(data, **{key: val})
        verl_minibatch.check_dp_is_world(self.engine.get_data_parallel_size())
        disable_auto_offload = tu.get(data, key="disable_auto_offload", default=False)
        with self.engine.train_mode(disable_auto_offload=disable_auto_offload):
            stats = verl_minibatch.mini_batch_stats(self.engine, data, obj)
        with verl_minibatch.active_stats(obj, stats):
            return super().train_batch(data)


class StaleRLActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's ``ActorRolloutRefWorker`` with :class:`StaleRLTrainingWorker` as its actor and the
    objectives' state in its checkpoints."""

    actor_worker_cls = StaleRLTrainingWorker

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        states = stalerl_verl.objective_states()
        if states and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
            os.makedirs(local_path, exist_ok=True)
            torch.save(states, os.path.join(local_path, OBJECTIVE_STATE_FILE))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        path = os.path.join(local_path, OBJECTIVE_STATE_FILE) if local_path else None
        states = torch.load(path, weights_only=False) if path and os.path.exists(path) else None
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        if states:
            stalerl_verl.load_objective_states(states)
            logger.info("restored stalerl objective state from %s", path)
