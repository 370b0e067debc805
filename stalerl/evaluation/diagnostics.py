"""Diagnostics of off-policy runs: the seed papers' analyses as functions.

Every analysis is a function of plain arrays (testable on synthetic inputs), with a loader that
reads the arrays from a run directory written by ``stalerl train``:

==============================  ===============================  ==============================
analysis                        array function                   run-directory loader
==============================  ===============================  ==============================
grad norm mean / p99 / max      :func:`grad_norm_stats`          :func:`run_grad_norms`
token entropy vs ``|r - 1|``    :func:`entropy_by_ratio_bins`    :func:`run_entropy_ratio`
log rho(tau) of accepted trajs  :func:`log_rho_stats`            :func:`run_accepted_log_ratios`
KS test between two objectives  :func:`ks_test`                  (two loaders)
share the other would reject    :func:`reject_share`             :func:`run_acceptance_band`
accept rate vs M̂2 correlation  :func:`acceptance_m2_correlation` :func:`run_acceptance_m2`
==============================  ===============================  ==============================

:func:`analyze_run` and :func:`compare_runs` bundle them for one run / a pair of runs.

Where the data come from (written by :mod:`stalerl.training.loop`):

* ``updates.jsonl`` -- one record per optimizer update: ``train/grad_norm`` (NaN/null for a
  skipped, non-finite update), ``actor/traj_accept_frac``, ``actor/m2``, ``actor/traj_bound``...
* ``diagnostics.jsonl`` -- one record per update: ``traj_log_ratio`` (log rho(tau) of each
  trajectory, the mean token log-ratio), ``traj_accepted`` (only for objectives that filter
  trajectories: the MIS-PO family), and a sample of tokens' ``entropy`` and ``ratio``.

Conventions: log rho(tau) is the *mean* token log-ratio of a trajectory (AC-MIS-PO eqs. 1-2);
acceptance bands are given in log space, ``(low, high)`` with ``low <= log rho <= high``
accepted (``-inf``/``inf`` for an open side). An objective that does not filter trajectories
accepts every trajectory, so its "accepted" distribution is that of all its trajectories.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stalerl import run_files

__all__ = [
    "DEFAULT_RATIO_BINS",
    "grad_norm_stats",
    "entropy_by_ratio_bins",
    "accepted_log_ratios",
    "log_rho_stats",
    "ks_test",
    "reject_share",
    "acceptance_m2_correlation",
    "read_jsonl",
    "load_updates",
    "load_diagnostics",
    "run_grad_norms",
    "run_entropy_ratio",
    "run_accepted_log_ratios",
    "run_acceptance_band",
    "run_acceptance_m2",
    "analyze_run",
    "compare_runs",
]

#: Default bin edges of ``|r - 1|`` for :func:`entropy_by_ratio_bins` (bins are ``[lo, hi)``,
#: the last one open-ended).
DEFAULT_RATIO_BINS: tuple[float, ...] = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, math.inf)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def _none_to_nan(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


# ============================================================================ array functions

def grad_norm_stats(grad_norms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, 99th percentile and maximum of the gradient norms of a run's updates.

    Non-finite values (skipped updates, logged as NaN/null) are left out and counted.

    Args:
        grad_norms: one gradient norm (before clipping) per optimizer update.

    Returns:
        ``{"mean", "p99", "max", "n", "nonfinite"}``; ``p99`` is ``numpy.percentile(x, 99)``
        (linear interpolation: 99.01 for the numbers 1..100). Mean/p99/max are NaN when no
        update has a finite norm.
    """
    raw = np.asarray(_none_to_nan(list(np.asarray(grad_norms, dtype=object).reshape(-1))))
    x = raw[np.isfinite(raw)]
    out = {"n": int(x.size), "nonfinite": int(raw.size - x.size)}
    if x.size == 0:
        return {"mean": math.nan, "p99": math.nan, "max": math.nan, **out}
    return {"mean": float(x.mean()), "p99": float(np.percentile(x, 99)), "max": float(x.max()), **out}


def entropy_by_ratio_bins(
    entropy: Sequence[float] | np.ndarray,
    ratio: Sequence[float] | np.ndarray,
    bins: Sequence[float] | None = None,
) -> dict[str, list[float]]:
    """Mean token entropy per bin of ``|r - 1|`` (r the token's importance ratio).

    Args:
        entropy: the entropy of each sampled token.
        ratio: the importance ratio ``r = pi_theta / pi_old`` of the same tokens (parallel).
        bins: increasing bin edges of ``|r - 1|``; a token falls in ``[edges[i], edges[i+1])``
            (the last edge may be ``inf``). Default :data:`DEFAULT_RATIO_BINS`. Tokens outside
            all bins are dropped.

    Returns:
        ``{"low": [...], "high": [...], "mean_entropy": [...], "count": [...],
        "mean_abs_dev": [...]}`` with one entry per bin; empty bins have count 0 and NaN means.

    Raises:
        ValueError: when the two arrays differ in length or the edges are not increasing.
    """
    ent = np.asarray(entropy, dtype=np.float64).reshape(-1)
    r = np.asarray(ratio, dtype=np.float64).reshape(-1)
    if ent.shape != r.shape:
        raise ValueError(f"entropy ({ent.size}) and ratio ({r.size}) must have the same length")
    edges = np.asarray(DEFAULT_RATIO_BINS if bins is None else bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be at least two strictly increasing edges, got {list(edges)}")
    ok = np.isfinite(ent) & np.isfinite(r)
    ent, dev = ent[ok], np.abs(r[ok] - 1.0)
    out: dict[str, list[float]] = {"low": [], "high": [], "mean_entropy": [], "count": [], "mean_abs_dev": []}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (dev >= lo) & (dev < hi)
        count = int(sel.sum())
        out["low"].append(float(lo))
        out["high"].append(float(hi))
        out["count"].append(count)
        out["mean_entropy"].append(float(ent[sel].mean()) if count else math.nan)
        out["mean_abs_dev"].append(float(dev[sel].mean()) if count else math.nan)
    return out


def accepted_log_ratios(
    traj_log_ratio: Sequence[float] | np.ndarray, accepted: Sequence[bool] | np.ndarray | None = None
) -> np.ndarray:
    """log rho(tau) of the accepted trajectories (all of them when ``accepted`` is None)."""
    x = np.asarray(traj_log_ratio, dtype=np.float64).reshape(-1)
    if accepted is not None:
        acc = np.asarray(accepted, dtype=bool).reshape(-1)
        if acc.shape != x.shape:
            raise ValueError(f"traj_log_ratio ({x.size}) and accepted ({acc.size}) must have the same length")
        x = x[acc]
    return x[np.isfinite(x)]


def log_rho_stats(log_ratios: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Summary of a distribution of log rho(tau): ``n``, ``mean``, ``std`` (population, ddof=0),
    ``min``, ``p01``, ``p50``, ``p99``, ``max`` (NaN when empty)."""
    x = _finite(log_ratios)
    if x.size == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "std", "min", "p01", "p50", "p99", "max")}}
    return {
        "n": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
        "p01": float(np.percentile(x, 1)), "p50": float(np.median(x)), "p99": float(np.percentile(x, 99)),
        "max": float(x.max()),
    }


def ks_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``, two-sided) between two
    distributions (e.g. the accepted log rho(tau) of two objectives).

    Returns:
        ``{"statistic", "pvalue", "n_a", "n_b"}``; NaN statistic and p-value when a sample is
        empty.
    """
    from scipy import stats

    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return {"statistic": math.nan, "pvalue": math.nan, "n_a": int(x.size), "n_b": int(y.size)}
    res = stats.ks_2samp(x, y)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n_a": int(x.size), "n_b": int(y.size)}


def reject_share(
    log_ratios: Sequence[float] | np.ndarray,
    low: float | Sequence[float] | np.ndarray = -math.inf,
    high: float | Sequence[float] | np.ndarray = math.inf,
) -> float:
    """Share of trajectories (one objective's accepted log rho) that another objective with
    acceptance band ``[low, high]`` on log rho(tau) would reject.

    Args:
        log_ratios: log rho(tau) of the trajectories the first objective accepted.
        low, high: the other objective's band in log space (``log(traj_low)``,
            ``log(traj_high)`` for MIS-PO; ``-b``, ``b`` for AC-MIS-PO's bound ``b``). Scalars
            or one value per trajectory (a bound that changes with the update).

    Returns:
        The share in [0, 1] of values outside ``[low, high]`` (NaN for no trajectories).
    """
    x = np.asarray(log_ratios, dtype=np.float64).reshape(-1)
    lo = np.broadcast_to(np.asarray(low, dtype=np.float64), x.shape)
    hi = np.broadcast_to(np.asarray(high, dtype=np.float64), x.shape)
    ok = np.isfinite(x)
    if not ok.any():
        return math.nan
    x, lo, hi = x[ok], lo[ok], hi[ok]
    return float(np.mean((x < lo) | (x > hi)))


def acceptance_m2_correlation(
    accept_rate: Sequence[float] | np.ndarray, m2: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Pearson and Spearman correlation of the per-update trajectory acceptance rate with M̂2.

    Pairs where either value is missing/non-finite are dropped.

    Returns:
        ``{"pearson", "pearson_p", "spearman", "spearman_p", "n"}`` (``scipy.stats.pearsonr`` /
        ``spearmanr``); NaN when fewer than 3 pairs remain or a series is constant.
    """
    from scipy import stats

    a = _none_to_nan(list(np.asarray(accept_rate, dtype=object).reshape(-1)))
    b = _none_to_nan(list(np.asarray(m2, dtype=object).reshape(-1)))
    if a.shape != b.shape:
        raise ValueError(f"accept_rate ({a.size}) and m2 ({b.size}) must have the same length")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out = {"pearson": math.nan, "pearson_p": math.nan, "spearman": math.nan, "spearman_p": math.nan, "n": int(a.size)}
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    p = stats.pearsonr(a, b)
    s = stats.spearmanr(a, b)
    out.update(pearson=float(p[0]), pearson_p=float(p[1]), spearman=float(s[0]), spearman_p=float(s[1]))
    return out


# ============================================================================ loaders

def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (a missing file gives ``[]``; a damaged line is skipped)."""
    return run_files.read_jsonl(Path(path), skip_damaged=True)


def _run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    return path


def load_updates(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-update records of a run (``updates.jsonl``), with today's metric names."""
    return run_files.read_updates(_run_dir(run_dir), skip_damaged=True)


def load_diagnostics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-update diagnostic samples of a run (``diagnostics.jsonl``)."""
    return read_jsonl(run_files.RunFiles(_run_dir(run_dir)).diagnostics)


def run_grad_norms(run_dir: str | Path) -> np.ndarray:
    """``train/grad_norm`` of every update (NaN for skipped updates)."""
    return _none_to_nan([u.get("train/grad_norm") for u in load_updates(run_dir)])


def run_entropy_ratio(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The sampled tokens' ``(entropy, ratio)`` of every update, concatenated."""
    ent, ratio = [], []
    for rec in load_diagnostics(run_dir):
        e, r = rec.get("entropy") or [], rec.get("ratio") or []
        n = min(len(e), len(r))
        ent += e[:n]
        ratio += r[:n]
    return _none_to_nan(ent), _none_to_nan(ratio)


def run_accepted_log_ratios(run_dir: str | Path, accepted_only: bool = True) -> np.ndarray:
    """log rho(tau) of the trajectories the run's objective accepted (every trajectory for an
    objective that does not filter, or with ``accepted_only=False``)."""
    out: list[float] = []
    for rec in load_diagnostics(run_dir):
        lr = rec.get("traj_log_ratio") or []
        acc = rec.get("traj_accepted")
        if accepted_only and acc is not None and len(acc) == len(lr):
            out += [x for x, a in zip(lr, acc, strict=True) if a]
        else:
            out += list(lr)
    return accepted_log_ratios(_none_to_nan(out))


def run_acceptance_band(run_dir: str | Path) -> tuple[float, float] | None:
    """The log-space band ``(low, high)`` on log rho(tau) inside which the run's objective
    accepts a trajectory, or None for an objective that does not filter trajectories.

    MIS-PO family: ``(log traj_low, log traj_high)`` of its hyperparameters (``config.yaml``).
    AC-MIS-PO: ``(-b, b)`` with ``b`` the bound of its last update (``actor/traj_bound`` in
    ``updates.jsonl``), i.e. its final bound (the bound moves during a run).
    """
    config = _config(run_dir)
    name = config.get("objective", {}).get("name")
    hparams = config.get("objective", {}).get("hparams") or {}
    if not name:
        return None
    try:
        from stalerl import objectives

        obj = objectives.build(name, **hparams)
    except Exception:
        return None
    if obj.name == "ac_mispo":
        bounds = [u.get("actor/traj_bound") for u in load_updates(run_dir)]
        bounds = [b for b in bounds if b is not None]
        b = float(bounds[-1]) if bounds else float(obj.config.bound_max)
        return -b, b
    cfg = obj.config
    if getattr(obj, "use_traj_mask", False) and hasattr(cfg, "traj_low") and hasattr(cfg, "traj_high"):
        return math.log(cfg.traj_low), math.log(cfg.traj_high)
    return None


def run_acceptance_m2(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per update: ``actor/traj_accept_frac`` and ``actor/m2`` (NaN where not logged)."""
    ups = load_updates(run_dir)
    return (_none_to_nan([u.get("actor/traj_accept_frac") for u in ups]),
            _none_to_nan([u.get("actor/m2") for u in ups]))


def _config(run_dir: str | Path) -> dict[str, Any]:
    path = run_files.RunFiles(_run_dir(run_dir)).config
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def analyze_run(run_dir: str | Path, bins: Sequence[float] | None = None) -> dict[str, Any]:
    """Every single-run diagnostic of a run directory, as plain numbers.

    Returns:
        ``{"grad_norm": grad_norm_stats, "entropy_by_ratio": entropy_by_ratio_bins,
        "accepted_log_rho": log_rho_stats, "all_log_rho": log_rho_stats,
        "acceptance_band": (low, high) or None, "accept_m2": acceptance_m2_correlation}``.
    """
    ent, ratio = run_entropy_ratio(run_dir)
    acc, m2 = run_acceptance_m2(run_dir)
    band = run_acceptance_band(run_dir)
    return {
        "grad_norm": grad_norm_stats(run_grad_norms(run_dir)),
        "entropy_by_ratio": entropy_by_ratio_bins(ent, ratio, bins),
        "accepted_log_rho": log_rho_stats(run_accepted_log_ratios(run_dir)),
        "all_log_rho": log_rho_stats(run_accepted_log_ratios(run_dir, accepted_only=False)),
        "acceptance_band": list(band) if band is not None else None,
        "accept_m2": acceptance_m2_correlation(acc, m2),
    }


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Compare the accepted log rho(tau) of two runs (two objectives).

    Returns:
        ``{"ks": ks_test(a, b), "std_a", "std_b", "a_rejected_by_b", "b_rejected_by_a"}`` where
        ``a_rejected_by_b`` is the share of a's accepted trajectories outside b's acceptance
        band (:func:`run_acceptance_band`; None when b does not filter trajectories).
    """
    a, b = run_accepted_log_ratios(run_a), run_accepted_log_ratios(run_b)
    band_a, band_b = run_acceptance_band(run_a), run_acceptance_band(run_b)
    return {
        "ks": ks_test(a, b),
        "std_a": float(a.std()) if a.size else math.nan,
        "std_b": float(b.std()) if b.size else math.nan,
        "a_rejected_by_b": reject_share(a, *band_b) if band_b is not None else None,
        "b_rejected_by_a": reject_share(b, *band_a) if band_a is not None else None,
    }
