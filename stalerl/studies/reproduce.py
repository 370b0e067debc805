"""``stalerl reproduce STUDY``: run a study's conditions and write its verdict table and report.

Output directory (default ``studies/<study>``)::

    runs/<condition>-seed<k>/    one stalerl train run per condition and seed
    verdicts.md, verdicts.json   each claim: the paper's numbers, the testbed's, reproduced or not
    stats.json                   per-run statistics the verdicts are computed from
    report/                      the comparison report (stalerl report over all runs)

A run whose ``summary.json`` exists is reused, and a half-done run resumes from its newest checkpoint
(or starts over if it had none), so an interrupted study continues where it stopped.
All conditions share the cached warm-start of the testbed model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stalerl.studies.definitions import PAPER_OVERRIDES, QUICK_OVERRIDES, STUDIES, TESTBED_OVERRIDES, Study
from stalerl.errors import UserError
from stalerl.training.logger import read_jsonl
from stalerl.training.rundir import is_run


def condition_overrides(study: Study, condition, *, scale: str, quick: bool, seed: int, run_dir: Path,
                        extra: list[str]) -> list[str]:
    """The ``stalerl train`` overrides of one condition and seed."""
    if scale == "paper":
        base = _merge(PAPER_OVERRIDES, study.paper_scale)
    elif quick:
        base = list(QUICK_OVERRIDES)
    else:
        base = _merge(TESTBED_OVERRIDES, study.testbed_scale)
    staleness = study.staleness(scale, quick)
    out = list(base)
    out += [f"objective.name={condition.objective}", f"stale.staleness={staleness if condition.stale else 0}",
            f"seed={seed}", f"run_dir={run_dir}"]
    out += [f"objective.hparams.{k}={v}" for k, v in condition.hparams.items()]
    return out + list(extra)


def _merge(base: list[str], study_scale: dict[str, Any]) -> list[str]:
    """``base`` overrides with the study's own values replacing those of the same key (staleness aside)."""
    own = {k: v for k, v in study_scale.items() if k != "stale.staleness"}
    return [o for o in base if o.split("=", 1)[0] not in own] + [f"{k}={v}" for k, v in own.items()]


def run_stats(run_dir: Path) -> dict[str, Any]:
    """The statistics the claims are checked on, from a finished run directory."""
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" not in r]
    updates = read_jsonl(run_dir / "updates.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())

    def series(key, records=steps):
        return [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    def agg(fn, values):
        return float(fn(values)) if values else None

    evals = series("eval/accuracy")
    trained = [r["eval/accuracy"] for r in steps if r.get("step", 0) >= 1 and isinstance(r.get("eval/accuracy"), (int, float))]
    stats = {
        "eval_start": evals[0] if evals else None,
        "eval_final": evals[-1] if evals else None,
        # the best checkpoint once training has started (step 0 is the shared starting model: a run
        # that only degrades would otherwise tie every other run at its start)
        "eval_best": agg(max, trained),
        "reward_best": agg(max, series("rollout/reward_mean")),
        "clipfrac_mean": agg(np.mean, series("actor/pg_clipfrac")),
        "accept_mean": agg(np.mean, series("actor/traj_accept_rate")),
        "accepted_std_mean": agg(np.mean, series("actor/accepted_log_ratio_std")),
        "grad_norm_mean": agg(np.mean, series("train/grad_norm", updates)),
        # AC-MIS-PO's adaptive trajectory log-bound b_k (per update): where it started and ended
        "bound_first": (series("actor/traj_bound", updates) or [None])[0],
        "bound_last": (series("actor/traj_bound", updates) or [None])[-1],
        "crashed_at": summary.get("crashed_at"),
        "steps_done": summary.get("steps_done"),
    }
    accept, m2 = [], []
    for u in updates:
        a, b = u.get("actor/traj_accept_rate"), u.get("actor/m2")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b):
            accept.append(a)
            m2.append(b)
    stats["accept_m2_pearson"] = None
    if len(accept) > 2 and np.std(accept) > 0 and np.std(m2) > 0:
        stats["accept_m2_pearson"] = float(np.corrcoef(accept, m2)[0, 1])
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in stats.items()}


def verdicts(study: Study, stats: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for claim in study.claims:
        clean = {c: [{k: (np.nan if v is None else v) for k, v in s.items()} for s in runs] for c, runs in stats.items()}
        testbed, ok = claim.check(clean)
        rows.append({"claim": claim.text, "paper": claim.paper, "testbed": testbed,
                     "reproduced": None if ok is None else bool(ok)})
    return rows


def write_verdicts(out: Path, study: Study, rows: list[dict[str, Any]], stats, seeds: int, quick: bool) -> None:
    (out / "verdicts.json").write_text(json.dumps(rows, indent=2))
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    mark = {True: "yes", False: "**no**", None: "n/a"}
    lines = [f"# {study.title}", "",
             f"Seed paper: `shared/seeds/{study.seed_file}`. {seeds} seed(s) per condition"
             + (" — **quick mode: a smoke test, the verdicts mean nothing**." if quick else "."), "",
             "| claim | paper | testbed | reproduced |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['testbed']} | {mark[r['reproduced']]} |" for r in rows]
    lines += ["", "## Runs", "", "| condition | seed | best acc | final acc | peak reward | clip frac | accept | crashed at |",
              "|---|---|---|---|---|---|---|---|"]
    for cond, runs in stats.items():
        for i, s in enumerate(runs):
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                cond, i, _pct(s["eval_best"]), _pct(s["eval_final"]), _num(s["reward_best"]),
                _pct(s["clipfrac_mean"]), _pct(s["accept_mean"]), s["crashed_at"] or "-"))
    (out / "verdicts.md").write_text("\n".join(lines) + "\n")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def reproduce(study_name: str, *, out: str | Path | None = None, quick: bool = False, scale: str = "testbed",
              seeds: int | None = None, overrides: list[str] | None = None, dry_run: bool = False,
              progress: bool = True) -> Path:
    """Run (or resume) a study; returns its output directory."""
    from stalerl.training.config import load_config
    from stalerl.training.loop import train

    if study_name not in STUDIES:
        raise ValueError(f"unknown study {study_name!r}; available: {', '.join(STUDIES)}")
    study = STUDIES[study_name]
    out = Path(out) if out else Path("studies") / (study_name + ("-quick" if quick else ""))
    seeds = seeds if seeds is not None else (1 if quick else study.seeds)
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: a study needs at least one seed per condition (this one uses {study.seeds})")
    if seeds < study.seeds and not quick:
        warnings.warn(f"--seeds {seeds}: the {study_name} study's verdicts are meant for {study.seeds} seeds per "
                      "condition; with fewer, a verdict may reflect one seed's noise", stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    plan = []
    for condition in study.conditions:
        for seed in range(seeds):
            run_dir = out / "runs" / f"{condition.name}-seed{seed}"
            args = condition_overrides(study, condition, scale=scale, quick=quick, seed=seed, run_dir=run_dir,
                                       extra=overrides or [])
            plan.append((condition, seed, run_dir, args))
    _write_plan(out, plan)
    if dry_run:
        for condition, _, _, args in plan:
            note = "   # hyperparameters derived at run time from the earlier conditions" if condition.derive else ""
            print("stalerl train " + " ".join(args) + note)
        return out
    if scale == "paper":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--scale paper trains Qwen3-1.7B-Base and needs a GPU (and network access to the hub "
                             "for the model and DeepScaleR); use --dry-run to print the commands")
    stats: dict[str, list[dict[str, Any]]] = {}
    for i, (condition, seed, run_dir, args) in enumerate(plan, 1):
        if condition.derive is not None:  # hyperparameters from the conditions run before this one
            derived = replace(condition, hparams=condition.derive(stats))
            args = condition_overrides(study, derived, scale=scale, quick=quick, seed=seed, run_dir=run_dir,
                                       extra=overrides or [])
            plan[i - 1] = (derived, seed, run_dir, args)
            _write_plan(out, plan)
        if not (run_dir / "summary.json").exists():
            print(f"[{study_name}] {i}/{len(plan)}: {condition.name} seed {seed}")
            config = load_config(None, args + ([] if progress else ["progress=false"]))
            # a run an interrupted study left half done continues from its newest checkpoint (or
            # starts over when it had none), so its logs stay one history
            train(config, resume=run_dir if is_run(run_dir) else None)
        stats.setdefault(condition.name, []).append(run_stats(run_dir))
    rows = verdicts(study, stats)
    write_verdicts(out, study, rows, stats, seeds, quick)
    _report(out, [d for _, _, d, _ in plan], study.title)
    print((out / "verdicts.md").read_text())
    return out


def _write_plan(out: Path, plan) -> None:
    (out / "plan.json").write_text(json.dumps([{"condition": c.name, "seed": s, "run_dir": str(d),
                                                "command": "stalerl train " + " ".join(a)} for c, s, d, a in plan], indent=2))


def _report(out: Path, run_dirs: list[Path], title: str) -> None:
    try:
        from stalerl.evaluation.report import build_report
    except ImportError:
        return
    try:
        build_report(run_dirs, out / "report", title=title)
    except Exception as err:  # the verdicts are written already; a figure must not lose them
        print(f"stalerl reproduce: report failed ({err})")


def main(args) -> int:
    reproduce(args.study, out=args.out, quick=args.quick, scale=args.scale, seeds=args.seeds,
              overrides=args.overrides, dry_run=getattr(args, "dry_run", False))
    return 0
