"""stalerl: off-policy reinforcement learning of language models on stale rollouts.

The core is :mod:`stalerl.objectives` (every policy objective behind one contract); around it,
the stale-k buffer (:mod:`stalerl.staleness`), generation (:mod:`stalerl.rollout`), verifiable
rewards (:mod:`stalerl.rewards`), data (:mod:`stalerl.data`), the embedded CPU testbed
(:mod:`stalerl.testbed`), the training loop (:mod:`stalerl.training`), evaluation and reports
(:mod:`stalerl.evaluation`), and integrations with verl and TRL (:mod:`stalerl.integrations`).
"""

__version__ = "0.1.0"

from stalerl import objectives  # noqa: E402  (the public contract: stalerl.objectives.build)

__all__ = ["objectives", "__version__"]
