"""Figures of runs: learning curves and the diagnostics of :mod:`stalerl.evaluation.diagnostics`.

* :func:`learning_curves` -- the one-figure overview of one or more runs (written by
  ``stalerl train`` as ``curves.png`` at the end of each run): every panel of :data:`PANELS`
  whose metric exists in at least one run.
* :func:`plot_panels` -- a chosen subset of panels (the report draws "learning" and "dynamics").
* :func:`plot_entropy_vs_ratio`, :func:`plot_log_rho`, :func:`plot_accept_vs_m2` -- diagnostics.

Several runs share axes; runs are grouped by their configuration minus the seed (objective,
hyperparameters, staleness...), one colour per group: a group of several seeds is drawn as its
mean (thick) over light individual lines. A crashed run's curves end with an ✕ at the crash step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Panel",
    "PANELS",
    "RunData",
    "Group",
    "load_run",
    "group_runs",
    "learning_curves",
    "plot_panels",
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

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")


# ============================================================================ runs

@dataclass
class RunData:
    """What the figures and the report read from one run directory."""

    path: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]]
    """``metrics.jsonl`` step records (events removed)."""
    updates: list[dict[str, Any]]
    summary: dict[str, Any]
    crashed_at: int | None
    crash_reason: str | None = None

    @property
    def objective(self) -> str:
        return str(self.config.get("objective", {}).get("name") or self.summary.get("objective") or "?")

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.config.get("objective", {}).get("hparams") or self.summary.get("hparams") or {})

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def staleness(self) -> Any:
        return self.config.get("stale", {}).get("staleness", self.summary.get("staleness"))

    @property
    def name(self) -> str:
        return self.path.name

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-step metric, skipping records without a finite value."""
        xs, ys = [], []
        for rec in self.steps:
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(rec["step"])
                ys.append(float(v))
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def has(self, key: str) -> bool:
        return any(isinstance(rec.get(key), (int, float)) for rec in self.steps)


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (``metrics.jsonl`` required; the other files optional), with today's
    metric names (:func:`stalerl.run_files.canonical`)."""
    from stalerl.run_files import RunFiles, read_events, read_steps, read_updates

    path = Path(run_dir)
    files = RunFiles(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    if not files.metrics.is_file():
        raise ValueError(f"{str(path)!r} is not a stalerl run directory: it has no {files.metrics.name}")
    steps = read_steps(path, skip_damaged=True)
    crashes = [r for r in read_events(path, skip_damaged=True) if r.get("event") == "crash"]
    config: dict[str, Any] = {}
    if files.config.is_file():
        import yaml

        config = yaml.safe_load(files.config.read_text()) or {}
    summary: dict[str, Any] = {}
    if files.summary.is_file():
        try:
            summary = json.loads(files.summary.read_text())
        except json.JSONDecodeError:
            summary = {}
    crashed_at = summary.get("crashed_at")
    reason = summary.get("crash_reason")
    if crashed_at is None and crashes:
        crashed_at, reason = crashes[-1].get("step"), crashes[-1].get("reason")
    return RunData(path, config, steps, read_updates(path, skip_damaged=True), summary,
                   int(crashed_at) if crashed_at is not None else None, reason)


@dataclass
class Group:
    """Runs that differ only by seed (and run directory): one colour, one legend entry."""

    label: str
    color: str
    runs: list[RunData] = field(default_factory=list)


def _group_key(run: RunData) -> str:
    cfg = json.loads(json.dumps(run.config, default=str)) if run.config else {
        "objective": {"name": run.objective, "hparams": run.hparams}}
    for k in ("seed", "run_dir", "tensorboard", "plots", "progress", "checkpoint_every", "keep_checkpoints"):
        cfg.pop(k, None)
    return json.dumps(cfg, sort_keys=True)


def _describe(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))


def group_runs(runs: Sequence[RunData]) -> list[Group]:
    """Group runs by configuration minus seed, in first-appearance order, with readable labels
    (the objective name, plus its hyperparameters and staleness where groups share a name)."""
    keyed: dict[str, list[RunData]] = {}
    for run in runs:
        keyed.setdefault(_group_key(run), []).append(run)
    members = list(keyed.values())
    by_name: dict[str, int] = {}
    for rs in members:
        by_name[rs[0].objective] = by_name.get(rs[0].objective, 0) + 1
    stalenesses = {rs[0].staleness for rs in members}
    groups = []
    for i, rs in enumerate(members):
        first = rs[0]
        label = first.objective
        if by_name[first.objective] > 1 and first.hparams:
            label += f" ({_describe(first.hparams)})"
        if len(stalenesses) > 1:
            label += f" s={first.staleness}"
        groups.append(Group(label, _COLORS[i % len(_COLORS)], list(rs)))
    labels = [g.label for g in groups]
    for label in {lab for lab in labels if labels.count(lab) > 1}:  # another config key differs
        same = [g for g in groups if g.label == label]
        flat = [_flatten(json.loads(_group_key(g.runs[0]))) for g in same]
        keys = sorted({k for f in flat for k in f if len({json.dumps(x.get(k), default=str) for x in flat}) > 1})
        for g, f in zip(same, flat, strict=True):
            parts = [f"{k.split('.')[-1]}={f.get(k)}" for k in keys[:2]]
            g.label += f" ({', '.join(parts)})" if parts else f" [{g.runs[0].name}]"
    return groups


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_runs(run_dirs: Sequence[str | Path | RunData]) -> list[RunData]:
    return [r if isinstance(r, RunData) else load_run(r) for r in run_dirs]


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

    runs = _as_runs(run_dirs)
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
    runs = _as_runs(run_dirs)
    if title is None:
        title = runs[0].name if len(runs) == 1 else f"{len(runs)} runs"
    drawn = plot_panels(runs, out_png, title=title)
    return Path(out_png) if drawn else None


# ============================================================================ diagnostics

def _finish(fig, ax, out_png: str | Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png


def _bin_label(lo: float, hi: float) -> str:
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
    labels = [_bin_label(lo, hi) for lo, hi in zip(first["low"], first["high"], strict=True)]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(labels) + 2), 3.8))
    x = np.arange(len(labels))
    for i, (name, b) in enumerate(binned.items()):
        y = np.asarray(b["mean_entropy"], dtype=float)
        total = sum(b["count"])
        ax.plot(x, y, marker="o", lw=1.8, color=(colors or {}).get(name, _COLORS[i % len(_COLORS)]),
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
        color = (colors or {}).get(name, _COLORS[i % len(_COLORS)])
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
        ax.scatter(m2, acc, s=18, alpha=0.75, color=(colors or {}).get(name, _COLORS[i % len(_COLORS)]),
                   label=f"{name} ({tag}, {acc.size} updates)")
    m2_all = np.concatenate([v[1] for v in cleaned.values()])
    if m2_all.min() > 0 and m2_all.max() / m2_all.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel("M̂2 of the update (mean squared token log-ratio)")
    ax.set_ylabel("trajectory acceptance rate")
    ax.set_title("Acceptance rate vs M̂2, per update")
    ax.grid(True, alpha=0.3)
    return _finish(fig, ax, out_png)
