"""Figures of the diagnostics of :mod:`stalerl.evaluation.diagnostics`, one line or histogram per
label (a group of runs in the report):

* :func:`plot_entropy_vs_ratio` -- mean token entropy per bin of ``|r - 1|``;
* :func:`plot_log_rho` -- histograms of the accepted log rho(tau), with each label's band;
* :func:`plot_accept_vs_m2` -- per-update acceptance rate against M̂2, with Spearman's rho.

Each returns the PNG path, or None (no file) when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stalerl.evaluation.runs import COLORS

__all__ = ["plot_entropy_vs_ratio", "plot_log_rho", "plot_accept_vs_m2", "bin_label"]


def _finish(fig, ax, out_png: str | Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png


def bin_label(lo: float, hi: float) -> str:
    """``[lo, hi)`` of a ratio bin, with ``∞`` and a plain ``0``."""
    def f(x: float) -> str:
        return "∞" if math.isinf(x) else ("0" if x == 0 else f"{x:g}")

    return f"[{f(lo)}, {f(hi)})"


def plot_entropy_vs_ratio(
    binned: dict[str, dict[str, list[float]]], out_png: str | Path, colors: dict[str, str] | None = None
) -> Path | None:
    """Mean token entropy per bin of ``|r - 1|``, one line per label.

    Args:
        binned: label -> :func:`~stalerl.evaluation.diagnostics.entropy_by_ratio_bins` output
            (all with the same bins).
        out_png: the file to write.
        colors: optional label -> colour.

    Returns:
        The path, or None when no bin of any label holds a token.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    binned = {k: v for k, v in binned.items() if any(c > 0 for c in v["count"])}
    if not binned:
        return None
    first = next(iter(binned.values()))
    labels = [bin_label(lo, hi) for lo, hi in zip(first["low"], first["high"], strict=True)]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(labels) + 2), 3.8))
    x = np.arange(len(labels))
    for i, (name, b) in enumerate(binned.items()):
        y = np.asarray(b["mean_entropy"], dtype=float)
        total = sum(b["count"])
        ax.plot(x, y, marker="o", lw=1.8, color=(colors or {}).get(name, COLORS[i % len(COLORS)]),
                label=f"{name} ({total} tokens)")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlabel("|r − 1| bin (token importance ratio r = π_θ / π_old)")
    ax.set_ylabel("mean token entropy (nats)")
    ax.set_title("Token entropy by distance of the ratio from 1")
    ax.grid(True, alpha=0.3)
    return _finish(fig, ax, out_png)


def plot_log_rho(
    samples: dict[str, np.ndarray],
    out_png: str | Path,
    bands: dict[str, tuple[float, float] | None] | None = None,
    colors: dict[str, str] | None = None,
    bins: int = 40,
) -> Path | None:
    """Histograms (density) of the accepted log rho(tau) per label, with each label's
    acceptance band as dashed vertical lines. Returns the path, or None when all are empty."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    samples = {k: np.asarray(v, dtype=float)[np.isfinite(v)] for k, v in samples.items()}
    samples = {k: v for k, v in samples.items() if v.size}
    if not samples:
        return None
    pooled = np.concatenate(list(samples.values()))
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 1e-3, hi + 1e-3
    span = hi - lo
    for band in (bands or {}).values():  # show the bands unless they would squash the data
        for edge in band or ():
            if math.isfinite(edge) and lo - 2 * span <= edge <= hi + 2 * span:
                lo, hi = min(lo, edge - 0.03 * span), max(hi, edge + 0.03 * span)
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (name, x) in enumerate(samples.items()):
        color = (colors or {}).get(name, COLORS[i % len(COLORS)])
        ax.hist(np.clip(x, lo, hi), bins=edges, density=True, histtype="step", lw=1.8, color=color,
                label=f"{name} (n={x.size}, std={x.std():.2g})")
        band = (bands or {}).get(name)
        if band is not None:
            for edge in band:
                if math.isfinite(edge) and lo <= edge <= hi:
                    ax.axvline(edge, color=color, ls="--", lw=1.0, alpha=0.8)
    ax.set_xlabel("log ρ(τ) (mean token log-ratio of a trajectory)")
    ax.set_ylabel("density")
    ax.set_title("log ρ(τ) of accepted trajectories (dashed: acceptance band)")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    return _finish(fig, ax, out_png)


def plot_accept_vs_m2(
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    out_png: str | Path,
    colors: dict[str, str] | None = None,
) -> Path | None:
    """Per-update trajectory acceptance rate against M̂2, one colour per label. ``pairs`` maps
    label -> (accept_rate, m2). Returns the path, or None when no finite pair exists."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from stalerl.evaluation.diagnostics import acceptance_m2_correlation

    cleaned = {}
    for name, (acc, m2) in pairs.items():
        acc, m2 = np.asarray(acc, dtype=float), np.asarray(m2, dtype=float)
        ok = np.isfinite(acc) & np.isfinite(m2)
        if ok.any():
            cleaned[name] = (acc[ok], m2[ok], acceptance_m2_correlation(acc, m2))
    if not cleaned:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for i, (name, (acc, m2, corr)) in enumerate(cleaned.items()):
        r = corr["spearman"]
        tag = f"Spearman {r:.2f}" if math.isfinite(r) else "ρ n/a"
        ax.scatter(m2, acc, s=18, alpha=0.75, color=(colors or {}).get(name, COLORS[i % len(COLORS)]),
                   label=f"{name} ({tag}, {acc.size} updates)")
    m2_all = np.concatenate([v[1] for v in cleaned.values()])
    if m2_all.min() > 0 and m2_all.max() / m2_all.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel("M̂2 of the update (mean squared token log-ratio)")
    ax.set_ylabel("trajectory acceptance rate")
    ax.set_title("Acceptance rate vs M̂2, per update")
    ax.grid(True, alpha=0.3)
    return _finish(fig, ax, out_png)
