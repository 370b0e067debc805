"""Figures of runs over training steps: learning curves and training dynamics.

* :func:`learning_curves` -- the one-figure overview of one or more runs (written by
  ``stalerl train`` as ``curves.png`` at the end of each run): every panel of :data:`PANELS`
  whose metric exists in at least one run.
* :func:`plot_panels` -- a chosen subset of panels (the report draws "learning" and "dynamics").

Several runs share axes; runs are grouped by their configuration minus the seed (objective,
hyperparameters, staleness...; :func:`stalerl.evaluation.runs.group_runs`), one colour per group:
a group of several seeds is drawn as its mean (thick) over light individual lines. A crashed
run's curves end with an ✕ at the crash step.

Reading runs lives in :mod:`stalerl.evaluation.runs` and the diagnostics' figures in
:mod:`stalerl.evaluation.diagnostic_plots`; their public names are importable from here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stalerl.evaluation.diagnostic_plots import plot_accept_vs_m2, plot_entropy_vs_ratio, plot_log_rho
from stalerl.evaluation.runs import Group, RunData, as_runs, group_runs, load_run

__all__ = [
    "Panel",
    "PANELS",
    "LEARNING_KEYS",
    "learning_curves",
    "plot_panels",
    # from stalerl.evaluation.runs
    "RunData",
    "Group",
    "load_run",
    "group_runs",
    # from stalerl.evaluation.diagnostic_plots
    "plot_entropy_vs_ratio",
    "plot_log_rho",
    "plot_accept_vs_m2",
]


@dataclass(frozen=True)
class Panel:
    """One subplot: a per-step metric of ``metrics.jsonl``."""

    key: str
    title: str
    ylabel: str
    log: bool = False
    """Log y-axis when the positive values span more than two decades."""
    share: bool = False
    """A share in [0, 1]: a flat curve is shown on the whole [0, 1] range."""


#: Every panel the figures know, in drawing order.
PANELS: tuple[Panel, ...] = (
    Panel("rollout/reward_mean", "Rollout reward", "mean reward"),
    Panel("eval/accuracy", "Held-out accuracy", "accuracy (avg@n)", share=True),
    Panel("actor/pg_clipfrac", "Clip fraction (clipped or masked tokens)", "share of tokens", share=True),
    Panel("actor/traj_accept_frac", "Trajectory acceptance rate", "share of trajectories", share=True),
    Panel("actor/traj_bound", "Trajectory bound b (AC-MIS-PO)", "log-bound b"),
    Panel("train/grad_norm", "Gradient norm", "L2 norm before clipping", log=True),
    Panel("actor/m2", "M̂2 (mean squared token log-ratio)", "M̂2", log=True),
    Panel("actor/kl_k3", "KL to behaviour policy (k3)", "KL (nats / token)", log=True),
    Panel("train/entropy", "Token entropy", "nats / token"),
    Panel("train/staleness", "Staleness of consumed data", "policy updates behind"),
)
LEARNING_KEYS = ("rollout/reward_mean", "eval/accuracy")
"""The panels of the report's "learning curves" figure; the others are "training dynamics"."""


# ============================================================================ curves

def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs at each step where at least one run has a value."""
    values: dict[float, list[float]] = {}
    for xs, ys in curves:
        for x, y in zip(xs, ys, strict=True):
            values.setdefault(float(x), []).append(float(y))
    steps = np.array(sorted(values))
    return steps, np.array([np.mean(values[s]) for s in steps])


def _use_log(curves: list[np.ndarray]) -> bool:
    pos = np.concatenate([c[c > 0] for c in curves]) if curves else np.array([])
    return pos.size > 1 and pos.max() / pos.min() > 100.0


def _draw_panel(ax, panel: Panel, groups: list[Group]) -> bool:
    drawn = False
    all_y = []
    for g in groups:
        curves = [(run, *run.series(panel.key)) for run in g.runs]
        curves = [c for c in curves if c[1].size]
        if not curves:
            continue
        drawn = True
        many = len(g.runs) > 1
        for run, xs, ys in curves:
            all_y.append(ys)
            style = dict(color=g.color, lw=1.0, alpha=0.35) if many else dict(color=g.color, lw=1.8)
            if xs.size <= 30:
                style.update(marker="o", ms=3 if not many else 2)
            ax.plot(xs, ys, **style)
            if run.crashed_at is not None:
                ax.plot([run.crashed_at], [ys[-1]], marker="X", ms=11, color=g.color, mec="black", mew=0.8,
                        ls="none", zorder=5)
        if many:
            mx, my = _mean_curve([(xs, ys) for _, xs, ys in curves])
            ax.plot(mx, my, color=g.color, lw=2.2, zorder=4)
    if not drawn:
        return False
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("training step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    if panel.log and _use_log(all_y):
        ax.set_yscale("log")
    pooled = np.concatenate(all_y)
    if panel.share and np.ptp(pooled) < 1e-9:
        ax.set_ylim(-0.05, 1.05)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    return True


def _legend_handles(groups: list[Group], crashed: bool):
    from matplotlib.lines import Line2D

    handles = []
    for g in groups:
        n = len(g.runs)
        label = g.label + (f" (mean of {n} seeds)" if n > 1 else "")
        handles.append(Line2D([], [], color=g.color, lw=2.2, label=label))
    if crashed:
        handles.append(Line2D([], [], color="0.4", marker="X", ms=10, mec="black", ls="none", label="crashed"))
    return handles


def plot_panels(
    run_dirs: Sequence[str | Path | RunData],
    out_png: str | Path,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    ncols: int = 3,
) -> list[str] | None:
    """Draw the panels of ``keys`` (default: all of :data:`PANELS`) that exist in at least one
    run, on shared axes; write ``out_png``. Returns the keys drawn, or None (no file) when no
    run has any of them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    runs = as_runs(run_dirs)
    groups = group_runs(runs)
    wanted = [p for p in PANELS if keys is None or p.key in keys]
    if keys is not None:  # keys unknown to PANELS get a generic panel
        known = {p.key for p in PANELS}
        wanted += [Panel(k, k, k.split("/")[-1]) for k in keys if k not in known]
    panels = [p for p in wanted if any(r.has(p.key) for r in runs)]
    if not panels:
        return None
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.4 * nrows + 0.9), squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw_panel(ax, panel, groups)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    crashed = any(r.crashed_at is not None for r in runs)
    handles = _legend_handles(groups, crashed)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), ncols + 1), frameon=False, fontsize=11)
    if title:
        fig.suptitle(title, fontsize=13)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [p.key for p in panels]


def learning_curves(run_dirs: Sequence[str | Path], out_png: str | Path, title: str | None = None) -> Path | None:
    """The single-figure overview of runs: every panel of :data:`PANELS` with data in at least
    one run (reward, held-out accuracy, clip/masked fraction, acceptance and bound, grad norm,
    M̂2, KL, entropy, staleness). Returns the PNG path, or None when there is nothing to plot."""
    runs = as_runs(run_dirs)
    if title is None:
        title = runs[0].name if len(runs) == 1 else f"{len(runs)} runs"
    drawn = plot_panels(runs, out_png, title=title)
    return Path(out_png) if drawn else None
