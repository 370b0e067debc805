"""Evaluation: pass@k (unbiased estimator), avg@n and maj@n over n samples per problem.

See :mod:`stalerl.evaluation.metrics`.
"""

from stalerl.evaluation.metrics import (
    avg_at_n,
    default_ks,
    maj_at_n,
    majority_vote,
    pass_at_k,
    pass_at_k_array,
    summarize,
)

__all__ = [
    "pass_at_k",
    "pass_at_k_array",
    "avg_at_n",
    "majority_vote",
    "maj_at_n",
    "default_ks",
    "summarize",
]
