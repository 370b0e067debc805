"""``python -m stalerl.integrations.verl_main <Hydra overrides>``: verl 0.9.1's PPO entry point with
stalerl's actor worker and stale-k trainer.

Same config and overrides as ``python -m verl.trainer.main_ppo`` (verl's ``ppo_trainer.yaml``), plus
an optional ``+stalerl.staleness=S``. It runs verl's DataProto trainer (``trainer.use_v1=False``,
``verl.trainer.main_ppo_v0``) through verl's own ``run_ppo(config, task_runner_class=...)`` hook
(the one verl's recipes use) with a task runner that selects:

* :class:`stalerl.integrations.verl_actor.StaleRLActorRolloutRefWorker` for the actor (mini-batch
  statistics before the micro-batches; objective state in checkpoints);
* :class:`stalerl.integrations.verl_stale.StaleKRayPPOTrainer` as the trainer (the exact stale-k
  FIFO; with ``stalerl.staleness=0``, the default, it is verl's trainer unchanged).

verl's V1 trainer (``trainer.use_v1=True``) moves data through TransferQueue and has no DataProto
``_update_actor`` to extend; it is refused here.
"""

from __future__ import annotations

import os

import hydra
import ray
import verl
from verl.trainer.main_ppo_v0 import TaskRunner

from stalerl.integrations.verl_stale import stale_config

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
"""verl's own Hydra config directory (``ppo_trainer.yaml``)."""


class StaleRLTaskRunner(TaskRunner.__ray_actor_class__):
    """verl's ``main_ppo_v0.TaskRunner`` selecting stalerl's actor worker and trainer."""

    def add_actor_rollout_worker(self, config):
        from stalerl.integrations.verl_actor import StaleRLActorRolloutRefWorker

        _, worker_group_cls = super().add_actor_rollout_worker(config)
        for role in list(self.role_worker_mapping):
            self.role_worker_mapping[role] = ray.remote(StaleRLActorRolloutRefWorker)
        return StaleRLActorRolloutRefWorker, worker_group_cls

    def run(self, config):
        import verl.trainer.main_ppo_v0 as v0

        from stalerl.integrations.verl_stale import StaleKRayPPOTrainer

        # verl's TaskRunner.run builds the trainer by this module-level name; this runs in the task
        # runner's own Ray actor process, so nothing else sees the substitution.
        v0.RayPPOTrainer = StaleKRayPPOTrainer
        return super().run(config)


def check_config(config) -> None:
    """What stalerl needs of a verl config, checked in the driver before Ray starts."""
    if config.trainer.get("use_v1", False):
        raise ValueError(
            "stalerl's verl launcher runs verl's DataProto trainer: set trainer.use_v1=False "
            "(the V1 trainer keeps batches in TransferQueue and has no _update_actor to extend)"
        )
    stale_config(config)


@hydra.main(config_path=CONFIG_DIR, config_name="ppo_trainer", version_base=None)
def main(config) -> None:
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    check_config(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=ray.remote(StaleRLTaskRunner))


if __name__ == "__main__":
    main()
