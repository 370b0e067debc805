"""stalerl: off-policy reinforcement learning of language models on stale rollouts.

The core is :mod:`stalerl.objectives` (every policy objective behind one contract); around it,
the stale-k buffer (:mod:`stalerl.staleness`), generation (:mod:`stalerl.rollout`), verifiable
rewards (:mod:`stalerl.rewards`), data (:mod:`stalerl.data`), the policy model's device, precision
and per-token log-probs (:mod:`stalerl.models`), the embedded CPU testbed (:mod:`stalerl.testbed`),
the training loop (:mod:`stalerl.training`), evaluation and reports (:mod:`stalerl.evaluation`),
and integrations with verl and TRL (:mod:`stalerl.integrations`). Which may import which is in
docs/DESIGN.md#layers.

A run from Python (the same as ``stalerl train --config testbed steps=20``)::

    from stalerl import load_config, train

    config = load_config("testbed", ["steps=20", "objective.name=m2po"])  # shipped config + overrides
    result = train(config)                 # a RunResult; a run that crashed is a result too
    print(result.run_dir, result.crashed_at, result.final_metrics["rollout/reward_mean"])

``train``, ``RunResult``, ``TrainConfig``, ``load_config``, ``ConfigError`` and ``UserError`` (the base
of every error the CLI reports in one line) are imported on
first use, so ``import stalerl`` does not load transformers or the training loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl import runtime as _runtime  # standard library only

# OpenMP threads that sleep while they wait instead of spinning on a core another process needs;
# read once when torch loads its OpenMP runtime, so before the imports below (docs/PERFORMANCE.md)
_runtime.passive_waits()

from stalerl import objectives  # noqa: E402  (the public contract: stalerl.objectives.build)
from stalerl._lazy import lazy_exports  # noqa: E402

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.errors import UserError
    from stalerl.training.config import ConfigError, TrainConfig, load_config
    from stalerl.training.loop import RunResult, train

__getattr__, __dir__ = lazy_exports(__name__, {
    "train": "stalerl.training.loop",
    "RunResult": "stalerl.training.loop",
    "TrainConfig": "stalerl.training.config",
    "load_config": "stalerl.training.config",
    "ConfigError": "stalerl.training.config",
    "UserError": "stalerl.errors",
})

__all__ = ["train", "RunResult", "TrainConfig", "load_config", "ConfigError", "UserError", "objectives", "__version__"]
