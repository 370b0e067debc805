"""The ``stalerl train`` loop and its configuration.

* :func:`train` -- the off-policy RL loop on stale rollouts (:mod:`stalerl.training.loop`),
  returning a :class:`RunResult`.
* :class:`TrainConfig` and its sections, :func:`load_config` (defaults <- YAML file <- overrides),
  :class:`ConfigError` (:mod:`stalerl.training.config`); :func:`config_help` prints every key.
* Checkpoints (:mod:`stalerl.training.checkpoint`) and the run logger.
* :func:`group_advantages` (from :mod:`stalerl.rollout.advantages`) and :func:`completion_log_probs`
  (from :mod:`stalerl.models.logprobs`), named here too for code that imported them from this package.

Everything is imported on first use, so that importing the package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.models.logprobs import completion_log_probs
    from stalerl.rollout.advantages import group_advantages
    from stalerl.training.config import (
        AlgorithmConfig, ConfigError, DataConfig, EvalConfig, ModelConfig, ObjectiveSection, OptimConfig,
        RewardConfig, RolloutConfig, StalenessConfig, TrainConfig, load_config, packaged_configs, to_dict, validate,
    )
    from stalerl.training.config_help import config_help
    from stalerl.run_files import read_jsonl
    from stalerl.training.loop import RunResult, TrainingCrashed, train

_CONFIG = "stalerl.training.config"
__getattr__, __dir__ = lazy_exports(__name__, {
    "train": "stalerl.training.loop",
    "RunResult": "stalerl.training.loop",
    "TrainingCrashed": "stalerl.training.loop",
    "TrainConfig": _CONFIG,
    "ModelConfig": _CONFIG,
    "DataConfig": _CONFIG,
    "RolloutConfig": _CONFIG,
    "RewardConfig": _CONFIG,
    "ObjectiveSection": _CONFIG,
    "OptimConfig": _CONFIG,
    "StalenessConfig": _CONFIG,
    "EvalConfig": _CONFIG,
    "AlgorithmConfig": _CONFIG,
    "ConfigError": _CONFIG,
    "load_config": _CONFIG,
    "packaged_configs": _CONFIG,
    "to_dict": _CONFIG,
    "validate": _CONFIG,
    "config_help": "stalerl.training.config_help",
    "group_advantages": "stalerl.rollout.advantages",
    "completion_log_probs": "stalerl.models.logprobs",
    "read_jsonl": "stalerl.run_files",
})

__all__ = [
    "train", "RunResult", "TrainingCrashed",
    "TrainConfig", "ModelConfig", "DataConfig", "RolloutConfig", "RewardConfig", "ObjectiveSection",
    "OptimConfig", "StalenessConfig", "EvalConfig", "AlgorithmConfig", "ConfigError", "load_config",
    "packaged_configs", "to_dict", "validate", "config_help",
    "group_advantages", "completion_log_probs", "read_jsonl",
]
