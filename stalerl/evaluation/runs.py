"""Run directories as the figures and the report read them: one :class:`RunData` per run, and
runs grouped by configuration minus the seed (:func:`group_runs`), one colour per group.

:func:`load_run` needs ``metrics.jsonl``; ``config.yaml``, ``summary.json`` and ``updates.jsonl``
are optional. A run's crash step comes from ``summary.json`` or else from the last ``crash``
event of ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stalerl.errors import RunDirError

__all__ = ["RunData", "Group", "load_run", "group_runs", "as_runs", "describe_hparams", "COLORS"]

#: One colour per group, in order (matplotlib's tab10, reordered so the first two contrast).
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22")


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
        raise RunDirError(f"{str(path)!r} is not a stalerl run directory: it has no {files.metrics.name}")
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


def describe_hparams(hparams: dict[str, Any]) -> str:
    """``k=v, ...`` of hyperparameters, sorted, floats in ``%g`` (legend labels, report tables)."""
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
            label += f" ({describe_hparams(first.hparams)})"
        if len(stalenesses) > 1:
            label += f" s={first.staleness}"
        groups.append(Group(label, COLORS[i % len(COLORS)], list(rs)))
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


def as_runs(run_dirs: Sequence[str | Path | RunData]) -> list[RunData]:
    """Load the entries that are paths; pass :class:`RunData` through."""
    return [r if isinstance(r, RunData) else load_run(r) for r in run_dirs]
