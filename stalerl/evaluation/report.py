"""``stalerl report RUN_DIR [RUN_DIR ...]``: a Markdown report with PNG figures.

Writes into the output directory (default ``<first run>/report``):

* ``report.md`` -- a table per run like the seed papers' (best held-out accuracy and its step,
  final accuracy, grad-norm mean/p99/max, trajectory acceptance, crashed-at), a table per
  objective (mean ± std over seeds) when some objective has several seeds, the figures, and the
  diagnostics of :mod:`stalerl.evaluation.diagnostics` (entropy by ``|r - 1|``, accepted log
  rho(tau) with KS tests and reject shares between objectives, acceptance vs M̂2 correlation);
* ``learning.png`` (reward, held-out accuracy), ``dynamics.png`` (clip fraction, acceptance
  rate and bound, grad norm, M̂2, KL, entropy, staleness), ``entropy_vs_ratio.png``,
  ``log_rho.png``, ``accept_vs_m2.png`` -- each only when some run has its data;
* ``report.json`` -- every number of the report.

Where the numbers come from: held-out accuracy from ``eval/accuracy`` in ``metrics.jsonl``
(best = the first maximum); grad norms and acceptance from ``updates.jsonl`` (one value per
optimizer update; ``metrics.jsonl`` when a run has no ``updates.jsonl``); crashes from
``summary.json`` or the crash event in ``events.jsonl`` (``metrics.jsonl`` in runs written before it
existed); metric names as today's (:data:`stalerl.run_files.METRIC_ALIASES`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stalerl.errors import UserError
from stalerl.evaluation import diagnostics as diag
from stalerl.evaluation import plots
from stalerl.evaluation.diagnostic_plots import bin_label
from stalerl.evaluation.runs import Group, RunData, describe_hparams, group_runs, load_run
from stalerl.run_files import METRICS, UPDATES, ReportFiles, RunFiles, run_summary
from stalerl.training.rundir import check_writable

__all__ = ["run_row", "build_report", "main"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def _pm(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return _fmt(vals[0])
    return f"{np.mean(vals):.4g} ± {np.std(vals, ddof=1):.2g}"


def _finite_mean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _per_update(run: RunData, key: str) -> list[Any]:
    source = run.updates if run.updates else run.steps
    return [r.get(key) for r in source]


def run_row(run: RunData) -> dict[str, Any]:
    """The report's numbers for one run (see the module docstring for their sources): the run's
    summary (:func:`stalerl.run_files.run_summary`, as in ``summary.json``) and the update statistics."""
    summary = run_summary(run.config, run.steps, steps_done=run.summary.get("steps_done"), crashed_at=run.crashed_at,
                          crash_reason=run.crash_reason)
    grad = diag.grad_norm_stats(diag._none_to_nan(_per_update(run, "train/grad_norm")))
    accepted = diag.accepted_log_ratios([])
    if RunFiles(run.path).diagnostics.is_file():
        accepted = diag.run_accepted_log_ratios(run.path)
    return {
        "run": str(run.path),
        "name": run.name,
        "objective": run.objective,
        "hparams": run.hparams,
        "seed": run.seed,
        "staleness": run.staleness,
        "steps_done": int(summary["steps_done"]),
        **{key: summary[key] for key in ("crashed_at", "crash_reason", "eval_accuracy_start", "eval_accuracy_final",
                                         "eval_accuracy_best", "best_step")},
        "grad_norm_mean": grad["mean"],
        "grad_norm_p99": grad["p99"],
        "grad_norm_max": grad["max"],
        "skipped_updates": grad["nonfinite"],
        "traj_accept_rate_mean": _finite_mean(_per_update(run, "actor/traj_accept_frac")),
        "accepted_log_rho_std": float(accepted.std()) if accepted.size else math.nan,
        "reward_final": next((r["rollout/reward_mean"] for r in reversed(run.steps)
                              if isinstance(r.get("rollout/reward_mean"), (int, float))), None),
    }


# ============================================================================ diagnostics

def _group_diagnostics(groups: list[Group]) -> dict[str, Any]:
    """Pooled (over each group's seeds) diagnostics per group, and pairwise comparisons."""
    out: dict[str, Any] = {"entropy_by_ratio": {}, "log_rho": {}, "accept_m2": {}, "pairs": []}
    samples: dict[str, np.ndarray] = {}
    bands: dict[str, tuple[float, float] | None] = {}
    for g in groups:
        ents, ratios, rhos, accs, m2s, band_list = [], [], [], [], [], []
        for run in g.runs:
            e, r = diag.run_entropy_ratio(run.path)
            ents.append(e)
            ratios.append(r)
            rhos.append(diag.run_accepted_log_ratios(run.path))
            a, m = diag.run_acceptance_m2(run.path)
            accs.append(a)
            m2s.append(m)
            band_list.append(diag.run_acceptance_band(run.path))
        ent, ratio = np.concatenate(ents), np.concatenate(ratios)
        if ent.size:
            out["entropy_by_ratio"][g.label] = diag.entropy_by_ratio_bins(ent, ratio)
        rho = np.concatenate(rhos)
        samples[g.label] = rho
        known = [b for b in band_list if b is not None]
        band = (float(np.mean([b[0] for b in known])), float(np.mean([b[1] for b in known]))) if known else None
        bands[g.label] = band
        if rho.size:
            out["log_rho"][g.label] = {**diag.log_rho_stats(rho), "band": list(band) if band else None}
        acc, m2 = np.concatenate(accs), np.concatenate(m2s)
        if np.isfinite(acc).any():
            out["accept_m2"][g.label] = diag.acceptance_m2_correlation(acc, m2)
    for a, b in itertools.combinations([g.label for g in groups if samples[g.label].size], 2):
        out["pairs"].append({
            "a": a, "b": b, "ks": diag.ks_test(samples[a], samples[b]),
            "a_rejected_by_b": diag.reject_share(samples[a], *bands[b]) if bands[b] else None,
            "b_rejected_by_a": diag.reject_share(samples[b], *bands[a]) if bands[a] else None,
        })
    out["_samples"], out["_bands"] = samples, bands
    return out


# ============================================================================ markdown

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _hp(row: dict[str, Any]) -> str:
    return describe_hparams(row["hparams"]) if row["hparams"] else "defaults"


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``report.md``, its figures and ``report.json`` for ``run_dirs``; return the path of
    ``report.md``.

    Raises:
        FileNotFoundError / ValueError: for a missing directory or one without ``metrics.jsonl``.
    """
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else RunFiles(runs[0].path).report
    check_writable(out, "report directory")
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out)
    groups = group_runs(runs)
    color_of = {g.label: g.color for g in groups}
    label_of = {id(r): g.label for g in groups for r in g.runs}
    rows = [run_row(r) for r in runs]
    for r, row in zip(runs, rows, strict=True):
        row["group"] = label_of[id(r)]
    title = title or "stalerl report: " + ", ".join(g.label for g in groups)

    figures: dict[str, str] = {}
    if plots.plot_panels(runs, files.figure("learning"), keys=plots.LEARNING_KEYS, title="Learning curves", ncols=2):
        figures["learning"] = files.figure("learning").name
    dyn_keys = [p.key for p in plots.PANELS if p.key not in plots.LEARNING_KEYS]
    if plots.plot_panels(runs, files.figure("dynamics"), keys=dyn_keys, title="Training dynamics"):
        figures["dynamics"] = files.figure("dynamics").name
    gd = _group_diagnostics(groups)
    samples, bands = gd.pop("_samples"), gd.pop("_bands")
    if plots.plot_entropy_vs_ratio(gd["entropy_by_ratio"], files.figure("entropy"), colors=color_of):
        figures["entropy"] = files.figure("entropy").name
    if plots.plot_log_rho(samples, files.figure("log_rho"), bands=bands, colors=color_of):
        figures["log_rho"] = files.figure("log_rho").name
    pairs = {}
    for g in groups:
        accs, m2s = zip(*[diag.run_acceptance_m2(r.path) for r in g.runs], strict=True)
        pairs[g.label] = (np.concatenate(accs), np.concatenate(m2s))
    if plots.plot_accept_vs_m2(pairs, files.figure("accept_m2"), colors=color_of):
        figures["accept_m2"] = files.figure("accept_m2").name

    md: list[str] = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} run(s).", ""]
    md += ["## Runs", ""]
    header = ["run", "objective", "hparams", "seed", "s", "steps", "best acc", "best step", "final acc",
              "grad norm mean", "p99", "max", "accept rate", "crashed at"]
    md += _table(header, [[
        f"`{row['name']}`", row["group"], _hp(row), _fmt(row["seed"]), _fmt(row["staleness"]), _fmt(row["steps_done"]),
        _fmt(row["eval_accuracy_best"]), _fmt(row["best_step"]), _fmt(row["eval_accuracy_final"]),
        _fmt(row["grad_norm_mean"]), _fmt(row["grad_norm_p99"]), _fmt(row["grad_norm_max"]),
        _fmt(row["traj_accept_rate_mean"]), _fmt(row["crashed_at"]),
    ] for row in rows])
    md += ["", f"Accuracy: `eval/accuracy` (held-out avg@n) in `{METRICS}`; grad norm (before clipping) "
               f"and acceptance rate: per optimizer update (`{UPDATES}`); — = not logged.", ""]
    crashed = [row for row in rows if row["crashed_at"] is not None]
    for row in crashed:
        md.append(f"* `{row['name']}` crashed at step {row['crashed_at']}: {row['crash_reason'] or 'no reason recorded'}")
    if crashed:
        md.append("")

    group_rows = []
    for g in groups:
        grows = [row for row in rows if row["group"] == g.label]
        group_rows.append({
            "group": g.label, "runs": len(grows),
            "best_acc": [r["eval_accuracy_best"] for r in grows if r["eval_accuracy_best"] is not None],
            "final_acc": [r["eval_accuracy_final"] for r in grows if r["eval_accuracy_final"] is not None],
            "grad_norm_mean": [r["grad_norm_mean"] for r in grows],
            "accept": [r["traj_accept_rate_mean"] for r in grows],
            "crashed": sum(r["crashed_at"] is not None for r in grows),
        })
    if len(groups) < len(runs):
        md += ["## Objectives (mean ± std over seeds)", ""]
        md += _table(["objective", "runs", "best acc", "final acc", "grad norm mean", "accept rate", "crashed"], [[
            gr["group"], str(gr["runs"]), _pm(gr["best_acc"]), _pm(gr["final_acc"]), _pm(gr["grad_norm_mean"]),
            _pm(gr["accept"]), f"{gr['crashed']}/{gr['runs']}",
        ] for gr in group_rows])
        md.append("")

    if "learning" in figures or "dynamics" in figures:
        md += ["## Curves", "",
               "One colour per objective; several seeds of one configuration: thick mean line over light "
               "individual runs; ✕ = crash step.", ""]
        if "learning" in figures:
            md += [f"![learning curves]({figures['learning']})", ""]
        if "dynamics" in figures:
            md += [f"![training dynamics]({figures['dynamics']})", ""]

    md += ["## Diagnostics", ""]
    if gd["entropy_by_ratio"]:
        md += ["### Token entropy by |r − 1|", "",
               "Mean entropy of the sampled tokens (a sample of each update's tokens) per bin of the distance "
               "of their importance ratio from 1 (pooled over seeds; token count in brackets).", ""]
        labels = list(gd["entropy_by_ratio"])
        first = gd["entropy_by_ratio"][labels[0]]
        bin_rows = []
        for i, (lo, hi) in enumerate(zip(first["low"], first["high"], strict=True)):
            bin_rows.append([bin_label(lo, hi)] + [
                f"{_fmt(gd['entropy_by_ratio'][lab]['mean_entropy'][i])} ({gd['entropy_by_ratio'][lab]['count'][i]})"
                for lab in labels])
        md += _table(["\\|r − 1\\|"] + labels, bin_rows)
        md.append("")
        if "entropy" in figures:
            md += [f"![entropy vs ratio]({figures['entropy']})", ""]
    if gd["log_rho"]:
        md += ["### log ρ(τ) of accepted trajectories", "",
               "log ρ(τ) = mean token log-ratio of a trajectory; objectives that do not filter trajectories "
               "accept all of them. Band = the objective's acceptance band on log ρ(τ).", ""]
        md += _table(["objective", "n", "mean", "std", "p01", "p99", "band"], [[
            lab, _fmt(s["n"]), _fmt(s["mean"]), _fmt(s["std"]), _fmt(s["p01"]), _fmt(s["p99"]),
            f"[{_fmt(s['band'][0])}, {_fmt(s['band'][1])}]" if s["band"] else "none",
        ] for lab, s in gd["log_rho"].items()])
        md.append("")
        if gd["pairs"]:
            md += ["Kolmogorov–Smirnov tests (two-sided) between objectives, and the share of one's accepted "
                   "trajectories that the other's band would reject:", ""]
            md += _table(["A", "B", "KS statistic", "p-value", "A rejected by B", "B rejected by A"], [[
                p["a"], p["b"], _fmt(p["ks"]["statistic"]), _fmt(p["ks"]["pvalue"]),
                _fmt(p["a_rejected_by_b"]), _fmt(p["b_rejected_by_a"]),
            ] for p in gd["pairs"]])
            md.append("")
        if "log_rho" in figures:
            md += [f"![log rho]({figures['log_rho']})", ""]
    if gd["accept_m2"]:
        md += ["### Acceptance rate vs M̂2", "",
               "Per optimizer update: `actor/traj_accept_frac` against `actor/m2` (pooled over seeds).", ""]
        md += _table(["objective", "updates", "Pearson r", "p", "Spearman ρ", "p"], [[
            lab, _fmt(c["n"]), _fmt(c["pearson"]), _fmt(c["pearson_p"]), _fmt(c["spearman"]), _fmt(c["spearman_p"]),
        ] for lab, c in gd["accept_m2"].items()])
        md.append("")
        if "accept_m2" in figures:
            md += [f"![acceptance vs M2]({figures['accept_m2']})", ""]
    md += ["## Run directories", ""] + [f"* `{row['name']}`: `{row['run']}`" for row in rows] + [""]

    report_md = files.markdown
    report_md.write_text("\n".join(md))
    payload = {"title": title, "runs": rows, "groups": group_rows, "diagnostics": gd, "figures": figures}
    files.json.write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=True))
    return report_md


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def main(args) -> int:
    """``stalerl report`` entry point (``args.run_dirs``, ``args.out``, ``args.title``)."""
    report_md = build_report(args.run_dirs, args.out, getattr(args, "title", None))
    print(f"stalerl report: wrote {report_md} (figures and {ReportFiles(report_md.parent).json.name} beside it)")
    return 0
