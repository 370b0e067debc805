"""The staleness sweep's table and figure: each objective's accuracy and stability against the staleness.

For every condition of a sweep study (an objective at a staleness s, ``Condition.staleness``), over
its seeds:

* **accuracy**: the noise-robust held-out accuracy, the mean of the last ``EVAL_LAST_K``
  evaluations, with a 95% bootstrap interval over seeds and held-out problems
  (:func:`stalerl.studies.statistics.paired_bootstrap` with one sample); the best checkpoint's
  accuracy (mean of seeds) next to it, the best of the evaluations the run made (the sweep's
  runs evaluate at the start and the last ``EVAL_LAST_K`` times only, ``SWEEP_EVAL_FROM``);
* **change from s = 0**: the same objective's accuracy at this staleness minus at s = 0, paired
  over seeds and held-out problems (every run of a seed evaluates the same problems), with its
  95% interval: the staleness effect with the problems' difficulty taken out, far narrower than
  the two accuracies' own intervals;
* **stability**: the largest drop of the trained-on reward (running maximum minus value of its
  5-step moving average, ``reward_largest_drop``) with a 95% bootstrap interval over seeds, and the
  share of seeds that *collapse*: a largest drop above ``COLLAPSE_DROP`` or a crashed run. The
  drop is read on the reward the run trains on, as the MinPRO paper's Fig. 3 and the M2PO paper's
  Fig. 1 show collapse; a run that never improves has no drop and does not count as collapsed
  (its accuracy shows it).

``sweep.md`` holds the table, ``sweep.png`` the figure: x the staleness (the values are powers of
4 from 16, drawn evenly spaced, i.e. on a log scale, with s = 0 one step to the left), one curve per
objective; left the accuracy with its interval as error bars, in the middle its change from s = 0
(paired), right the largest reward drop.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from stalerl.studies import statistics as stats
from stalerl.studies.definitions import EVAL_LAST_K, Study, _accuracy

COLLAPSE_DROP = 0.2
"""A run *collapses* when its trained-on reward's 5-step moving average falls this far below its
running maximum (reward units: 1 for a correct answer; a fifth of the reward scale) or when it
crashes."""


def sweep_points(study: Study, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per condition of ``study`` that has runs: objective label, staleness, accuracy and
    stability with their intervals (:class:`~stalerl.studies.statistics.Interval`), collapses."""
    rows = []
    on_policy = {c.name.rsplit("-s", 1)[0]: c.name for c in study.conditions if c.staleness == 0}
    for cond in study.conditions:
        seeds = runs.get(cond.name)
        if not seeds or cond.staleness is None:
            continue
        objective = cond.name.rsplit("-s", 1)[0]
        acc = stats.paired_bootstrap(_accuracies(seeds))
        base = on_policy.get(objective)
        change = None
        if cond.staleness != 0 and runs.get(base):  # seed k against seed k, per problem where both saved them
            mine, theirs, _ = _accuracy(runs, cond.name, base)
            change = stats.paired_bootstrap(mine, theirs)
        drop = stats.paired_bootstrap([s.get("reward_largest_drop") for s in seeds])
        best = [s["eval_best"] for s in seeds if _finite(s.get("eval_best"))]
        collapsed = sum(1 for s in seeds if s.get("crashed_at") is not None
                        or (_finite(s.get("reward_largest_drop")) and s["reward_largest_drop"] > COLLAPSE_DROP))
        rows.append({"condition": cond.name, "objective": objective, "staleness": cond.staleness,
                     "testbed_staleness": cond.staleness_at(study),
                     "accuracy": acc, "change": change, "best": float(np.mean(best)) if best else float("nan"), "drop": drop,
                     "collapsed": collapsed, "seeds": len(seeds)})
    return rows


def _accuracies(seeds: list[dict[str, Any]]) -> list:
    """Per seed, the last evaluations' accuracy per held-out problem, or the mean where a run lacks them."""
    per_problem = [s.get("eval_problems_lastk") for s in seeds]
    return per_problem if all(isinstance(v, list) for v in per_problem) else [s.get("eval_lastk") for s in seeds]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and bool(np.isfinite(x))


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of :func:`sweep_points`' rows."""
    lines = [f"| objective | s (papers) | s (testbed) | held-out accuracy, last {EVAL_LAST_K} evals [95% CI] | "
             "change from s = 0, paired [95% CI] | best checkpoint | largest reward drop [95% CI] | collapsed seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "n/a" if not np.isfinite(r["best"]) else f"{100 * r['best']:.1f}%"
        change = "–" if r.get("change") is None else r["change"].text()
        lines.append(f"| {r['objective']} | {r['staleness']} | {r.get('testbed_staleness', r['staleness'])} | "
                     f"{_pct(r['accuracy'])} | {change} | {best} | "
                     f"{r['drop'].text(pct=False)} | {r['collapsed']}/{r['seeds']} |")
    return lines


def _pct(ci: stats.Interval) -> str:
    if not np.isfinite(ci.estimate):
        return "n/a"
    return f"{100 * ci.estimate:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def plot_sweep(rows: list[dict[str, Any]], out_png: Path, title: str = "") -> bool:
    """Draw the sweep's figure; False (and nothing written) without a finite point."""
    if not any(np.isfinite(r["accuracy"].estimate) for r in rows):
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = sorted({r["staleness"] for r in rows})
    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    width = 0.3  # the objectives' points spread over this much of the gap between two staleness values
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(objectives):
        mine = sorted((r for r in rows if r["objective"] == name), key=lambda r: r["staleness"])
        x = np.array([values.index(r["staleness"]) for r in mine], dtype=float)
        x += width * (k / max(1, len(objectives) - 1) - 0.5)
        has_change = any(r["change"] is not None for r in mine)
        for ax, key, scale in ((axes[0], "accuracy", 100.0), (axes[1], "change", 100.0), (axes[2], "drop", 1.0)):
            if key == "change":  # 0 by definition at s = 0 (the curve's start); none without an s = 0 run
                keep = [i for i, r in enumerate(mine) if has_change and (r["change"] is not None or r["staleness"] == 0)]
                cis = [mine[i]["change"] or stats.Interval(0.0, 0.0, 0.0, mine[i]["seeds"]) for i in keep]
                xs = x[keep]
            else:
                cis, xs = [r[key] for r in mine], x
            if not cis:
                continue
            est = np.array([ci.estimate for ci in cis]) * scale
            err = np.array([[max(0.0, ci.estimate - ci.low), max(0.0, ci.high - ci.estimate)] for ci in cis]).T * scale
            ax.errorbar(xs, est, yerr=err, marker="o", ms=4, capsize=3, lw=1.5, color=cmap(k % 10), label=name)
    for ax, ylabel, panel in ((axes[0], f"held-out accuracy, mean of last {EVAL_LAST_K} evals (%)", "Accuracy"),
                              (axes[1], "accuracy minus the same objective's at s = 0 (points)",
                               "Change from s = 0, paired"),
                              (axes[2], "largest drop of the trained-on reward (5-step mean)", "Stability")):
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel("staleness s (the papers' updates; log scale, s = 0 at the left)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{panel} (95% bootstrap CI)")
        ax.grid(alpha=0.3)
    axes[1].axhline(0.0, color="grey", lw=1)
    axes[2].axhline(COLLAPSE_DROP, color="grey", ls="--", lw=1)
    axes[2].text(len(values) - 1, COLLAPSE_DROP, " collapse", va="bottom", ha="right", color="grey", fontsize=8)
    axes[0].legend(fontsize=8, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write_sweep(out: Path, study: Study, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Write ``sweep.md`` (and ``sweep.png`` when it can be drawn) into ``out``; return the rows."""
    rows = sweep_points(study, runs)
    lines = [f"# {study.title}", "", (f"Per objective and staleness, over {max((r['seeds'] for r in rows), default=0)} "
             "seed(s): held-out accuracy with a 95% bootstrap interval over seeds and problems, its change from the "
             "same objective at s = 0 (paired over seeds and problems: the staleness effect), the best checkpoint "
             f"(mean of seeds), and stability: the largest drop of the trained-on reward and the seeds that collapse "
             f"(a drop above {COLLAPSE_DROP:g} or a crash)."), ""]
    try:
        if plot_sweep(rows, out / "sweep.png", study.title):
            lines += ["![staleness sweep](sweep.png)", ""]
    except ImportError as err:  # the table is the result; the figure needs matplotlib
        warnings.warn(f"staleness sweep: no figure ({err}); the table is in sweep.md", stacklevel=2)
    (out / "sweep.md").write_text("\n".join(lines + sweep_table(rows)) + "\n")
    return rows
