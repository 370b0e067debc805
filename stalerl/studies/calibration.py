"""Drift statistics of a training run, and the ranges the seed papers report for them.

The studies are meant to run where the papers ran: a policy that drifts from the behaviour policy
by as much, over the staleness s, as the papers' models did. :data:`TARGETS` lists the drift
statistics the papers report, each with its range and the figure or table it comes from;
:func:`drift_stats` measures the same statistics from a finished run directory
(``updates.jsonl`` and ``diagnostics.jsonl``, docs/METRICS.md), as medians over the updates that
train on data exactly as stale as the run's staleness (the steady state; the first ``s / m``
steps of a stale run train on the initial policy's rollouts at a smaller staleness).
``benchmarks/calibrate_testbed.py`` runs candidate testbed settings and prints both side by side;
docs/REPRODUCTION.md ("Calibration") has the measured table and the chosen setting.

Statistics (one value per update, then the median over the steady-state updates; the two token
fractions are means instead, as the M2PO paper's Fig. 6d averages the clip ratio over training and
a rare event's median is 0):

* ``clipfrac``: ``actor/pg_clipfrac``, the share of tokens the objective clipped or masked (for
  GRPO the epsilon-clip, for M2PO the second-moment mask), mean;
* ``masked_frac``: ``actor/masked_frac`` (M2PO: tokens removed from the loss), mean;
* ``m2_all``: ``actor/m2``, M̂2 = mean (log r)^2 over all tokens;
* ``m2_before``: ``actor/m2_before``, M2PO's M̂2 of the trust-region tokens before masking;
* ``kl``: ``actor/ppo_kl``, the k1 estimate of KL(behaviour || current) = mean of -log r;
* ``entropy``: ``train/entropy``, mean token entropy of the current policy on the consumed data;
* ``forking_frac``: share of the sampled token entropies (``diagnostics.jsonl``) above
  :data:`FORKING_ENTROPY` nats, the "forking" tokens the M2PO paper (Sec. 4) says clipping prunes;
* ``traj_log_ratio_std``: std of log rho(tau) = mean_t log r over the update's trajectories;
* ``mispo_accept``: share of trajectories whose rho(tau) lies in MIS-PO's default band
  [0.996, 1.001], computed from the same log rho(tau) whatever the run's objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stalerl.run_files import RunFiles, read_jsonl, read_updates

__all__ = ["FORKING_ENTROPY", "MISPO_BAND", "TARGETS", "Target", "drift_stats"]

FORKING_ENTROPY = 0.672
"""Entropy (nats) above which a token counts as a "forking" token: the 80th percentile of the
token entropies of chain-of-thought responses in Wang et al. 2025 ("Beyond the 80/20 rule"),
the work the M2PO paper cites for high-entropy tokens carrying the learning signal."""

MISPO_BAND = (0.996, 1.001)
"""MIS-PO's default trajectory band [rho_min, rho_max] (the MIS-PO mechanism paper, Sec. 3)."""


@dataclass(frozen=True)
class Target:
    """One drift statistic as a paper reports it."""

    statistic: str
    """Key of :func:`drift_stats`'s result."""
    objective: str
    """The condition the statistic is measured on: ``grpo`` on-policy (s = 0), ``grpo`` or ``m2po`` stale."""
    stale: bool
    """True: measured at the study's staleness; False: on-policy."""
    low: float | None
    """Lower end of the papers' range (None: the papers give no number)."""
    high: float | None
    """Upper end of the papers' range."""
    source: str
    """Paper, figure or table, and the numbers."""


TARGETS: list[Target] = [
    Target("clipfrac", "grpo", False, 0.0005, 0.0007,
           "M2PO paper Fig. 6d: GRPO s=0 averages 0.07% (Qwen3-1.7B-Base), 0.05% (Qwen2.5-32B)"),
    Target("clipfrac", "grpo", True, 0.0066, 0.0122,
           "M2PO paper Fig. 6d: GRPO s=256 averages 0.66% (Qwen3-1.7B-Base), 1.22% (Qwen2.5-32B)"),
    Target("clipfrac", "m2po", True, 0.0002, 0.0006,
           "M2PO paper Fig. 6d: M2PO s=256 averages 0.02% (Qwen3-1.7B-Base), 0.06% (Qwen2.5-32B)"),
    Target("m2_before", "m2po", True, None, None,
           "not reported; implied: near tau_M2 = 0.04 (Sec. 5, App. B), since masking 0.02-0.06% of the "
           "tokens brings it below 0.04"),
    Target("kl", "grpo", True, None, None,
           "not reported per update; for small drift KL ~ M̂2 / 2, so M̂2 near 0.04 is KL near 0.02 nats"),
    Target("entropy", "grpo", True, None, None,
           "not reported as a number (M2PO paper Fig. 4b: entropy rises with |r - 1|; MinPRO paper Fig. 2b: "
           "entropy curves)"),
    Target("forking_frac", "grpo", True, 0.2, 0.2,
           f"Wang et al. 2025 (cited in the M2PO paper, Sec. 4): 20% of tokens have entropy above {FORKING_ENTROPY}"),
    Target("traj_log_ratio_std", "grpo", True, 0.026, 0.026,
           "MIS-PO mechanism paper Fig. 3a: std of log rho(tau) of the trajectories RandomTraj accepts (a "
           "uniform sample) at s=256: 0.026 (Qwen3-1.7B-Base)"),
    Target("mispo_accept", "grpo", True, 0.1755, 0.92,
           "trajectories inside [0.996, 1.001] at s=256: 30-70% at the start and 17.55% on average (MIS-PO "
           "mechanism paper, Sec. 3.2 and Table 1), ~92% (AC-MIS-PO paper, Table 2)"),
]


def _finite(values: list) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _median(values: list) -> float | None:
    return float(np.median(_finite(values))) if _finite(values) else None


def _mean(values: list) -> float | None:
    return float(np.mean(_finite(values))) if _finite(values) else None


def drift_stats(run_dir: str | Path, staleness: int | None = None) -> dict[str, Any]:
    """The drift statistics of one finished (or running) run over its steady-state updates.

    ``staleness``: the run's ``stale.staleness``; default read from its ``config.yaml``. Updates
    whose ``train/staleness`` is below it (the fill-up phase) are left out; ``updates`` says how
    many were kept.
    """
    files = RunFiles(Path(run_dir))
    if staleness is None:
        staleness = _run_staleness(files.config)
    updates = [u for u in read_updates(files.root)
               if isinstance(u.get("train/staleness"), (int, float)) and u["train/staleness"] >= staleness]
    kept = {u["update"] for u in updates}
    keys = {"clipfrac": "actor/pg_clipfrac", "masked_frac": "actor/masked_frac", "m2_all": "actor/m2",
            "m2_before": "actor/m2_before", "kl": "actor/ppo_kl", "entropy": "train/entropy"}
    out: dict[str, Any] = {name: _median([u.get(key) for u in updates]) for name, key in keys.items()}
    for name in ("clipfrac", "masked_frac"):
        out[name] = _mean([u.get(keys[name]) for u in updates])
    low, high = math.log(MISPO_BAND[0]), math.log(MISPO_BAND[1])
    forking, spread, accept = [], [], []
    for record in read_jsonl(files.diagnostics):
        if record.get("update") not in kept:
            continue
        entropy = [e for e in record.get("entropy") or [] if e is not None]
        if entropy:
            forking.append(float(np.mean(np.asarray(entropy) > FORKING_ENTROPY)))
        traj = np.asarray([t for t in record.get("traj_log_ratio") or [] if t is not None], dtype=float)
        if traj.size > 1:
            spread.append(float(np.std(traj)))
            accept.append(float(np.mean((traj >= low) & (traj <= high))))
    out.update(forking_frac=_median(forking), traj_log_ratio_std=_median(spread), mispo_accept=_median(accept),
               updates=len(updates), staleness=staleness)
    return out


def _run_staleness(config_file: Path) -> int:
    import yaml

    config = yaml.safe_load(config_file.read_text()) or {}
    return int((config.get("stale") or {}).get("staleness", 0))
