"""``stalerl reproduce STUDY``: run a study's conditions and write its verdict table and report.

Output directory (default ``studies/<study>``)::

    runs/<condition>-seed<k>/    one stalerl train run per condition and seed
    verdicts.md, verdicts.json   each claim: the paper's sentence, the statistic, the testbed's numbers with
                                 95% bootstrap intervals, and reproduced / contradicted / inconclusive
    stats.json                   per-run statistics the verdicts are computed from
    report/                      the comparison report (stalerl report over all runs)
    sweep.md, sweep.png          a sweep study only (``staleness-sweep``): accuracy and stability of each
                                 objective against the staleness (:mod:`stalerl.studies.sweep`)

A run whose ``summary.json`` exists is reused, and a half-done run resumes from its newest checkpoint
(or starts over if it had none), so an interrupted study continues where it stopped. The runs go
seed by seed (every condition's seed 0, then every condition's seed 1, ...) unless a condition
derives its hyperparameters from earlier ones, so that a study stopped early holds complete seeds
that ``--seeds K`` can already judge.
All conditions share the cached warm-start of the testbed model.

``--jobs J`` runs up to J of the runs at once, each a ``stalerl train`` subprocess (its output in
``runs/<run>/train.log``) given ``runtime.cores = cores // J`` (the cores of ``runtime.cores``,
else ``$OMP_NUM_THREADS``, else this process's CPU affinity, divided among the J runs, at least
one each), so that the runs share the cores instead of each taking all of them
(:mod:`stalerl.runtime`). A condition whose hyperparameters are derived from earlier conditions
starts once those have finished.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stalerl.errors import UserError
from stalerl.studies.definitions import (
    EVAL_LAST_K,
    PAPER_OVERRIDES,
    QUICK_OVERRIDES,
    STUDIES,
    TESTBED_OVERRIDES,
    Study,
)
from stalerl.run_files import RunFiles, read_jsonl, read_steps, read_updates
from stalerl.training.rundir import is_run

log = logging.getLogger(__name__)

REWARD_SMOOTHING = 5
"""Steps of the moving average the largest reward drop is measured on (one batch is noisy)."""


def condition_overrides(study: Study, condition, *, scale: str, quick: bool, seed: int, run_dir: Path,
                        extra: list[str]) -> list[str]:
    """The ``stalerl train`` overrides of one condition and seed."""
    if scale == "paper":
        base = _merge(PAPER_OVERRIDES, study.paper_scale)
    elif quick:
        base = list(QUICK_OVERRIDES)
    else:
        base = _merge(TESTBED_OVERRIDES, study.testbed_scale)
    out = list(base)
    out += [f"objective.name={condition.objective}", f"stale.staleness={condition.staleness_at(study, scale, quick)}",
            f"seed={seed}", f"run_dir={run_dir}"]
    out += [f"objective.hparams.{k}={v}" for k, v in condition.hparams.items()]
    return out + list(extra)


def _merge(base: list[str], study_scale: dict[str, Any]) -> list[str]:
    """``base`` overrides with the study's own values replacing those of the same key (staleness aside)."""
    own = {k: v for k, v in study_scale.items() if k != "stale.staleness"}
    return [o for o in base if o.split("=", 1)[0] not in own] + [f"{k}={v}" for k, v in own.items()]


def run_stats(run_dir: Path) -> dict[str, Any]:
    """The statistics the claims are checked on, from a finished run directory."""
    steps, updates = read_steps(run_dir), read_updates(run_dir)
    summary = json.loads(RunFiles(run_dir).summary.read_text())

    def series(key, records=steps):
        return [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    def agg(fn, values):
        return float(fn(values)) if values else None

    evals = series("eval/accuracy")
    trained = [r["eval/accuracy"] for r in steps if r.get("step", 0) >= 1 and isinstance(r.get("eval/accuracy"), (int, float))]
    eval_steps = [r["step"] for r in steps if isinstance(r.get("eval/accuracy"), (int, float))]
    half = max(eval_steps or [0]) / 2
    first_half = [a for st, a in zip(eval_steps, evals, strict=False) if 0 < st <= half]
    rewards = series("train/data_reward_mean")
    stats = {
        "eval_start": evals[0] if evals else None,
        "eval_final": evals[-1] if evals else None,
        # the best checkpoint once training has started (step 0 is the shared starting model: a run
        # that only degrades would otherwise tie every other run at its start)
        "eval_best": agg(max, trained),
        "reward_best": agg(max, series("rollout/reward_mean")),
        # noise-robust accuracy: the mean of the last evaluations (and of the first half, the
        # "prosperity" phase of the M2PO paper's Fig. 1)
        "eval_lastk": agg(np.mean, evals[-EVAL_LAST_K:]),
        "eval_first_half": agg(np.mean, first_half),
        # the trained-on batches' reward (the MinPRO paper's training-reward curves)
        "reward_second_half": agg(np.mean, rewards[len(rewards) // 2:]),
        "reward_largest_drop": largest_drop(rewards, REWARD_SMOOTHING),
        "clipfrac_mean": agg(np.mean, series("actor/pg_clipfrac")),
        "accept_mean": agg(np.mean, series("actor/traj_accept_frac")),
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
        a, b = u.get("actor/traj_accept_frac"), u.get("actor/m2")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b):
            accept.append(a)
            m2.append(b)
    stats["accept_m2_pearson"] = None
    if len(accept) > 2 and np.std(accept) > 0 and np.std(m2) > 0:
        stats["accept_m2_pearson"] = float(np.corrcoef(accept, m2)[0, 1])
    stats.update(_problem_stats(run_dir, half))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in stats.items()}


def _problem_stats(run_dir: Path, half: float) -> dict[str, Any]:
    """Per held-out problem accuracies (same problem order in every run): the mean of the last
    ``EVAL_LAST_K`` evaluations, of the first half's, and the final evaluation's."""
    records = [r for r in read_jsonl(RunFiles(run_dir).eval_problems) if isinstance(r.get("accuracy"), list)]
    if not records:
        return {}
    last = np.array([r["accuracy"] for r in records[-EVAL_LAST_K:]], dtype=float)
    early = np.array([r["accuracy"] for r in records if 0 < r["step"] <= half], dtype=float)
    out = {"eval_problems_lastk": last.mean(0).tolist(), "eval_problems_final": records[-1]["accuracy"]}
    if early.size:
        out["eval_problems_first_half"] = early.mean(0).tolist()
    return out


def largest_drop(values: list[float], window: int) -> float | None:
    """Largest fall of the ``window``-step moving average below its running maximum."""
    if not values:
        return None
    w = max(1, min(window, len(values)))
    smooth = np.convolve(np.asarray(values, dtype=float), np.ones(w) / w, mode="valid")
    return float(np.max(np.maximum.accumulate(smooth) - smooth))


def verdicts(study: Study, stats: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per claim: its text, the paper's sentence, the statistic, the testbed's numbers and
    the verdict (``reproduced``/``contradicted``/``inconclusive``, None when numbers are missing)."""
    rows = []
    for claim in study.claims:
        clean = {c: [{k: (np.nan if v is None else v) for k, v in s.items()} for s in runs] for c, runs in stats.items()}
        testbed, verdict = claim.check(clean)
        rows.append({"claim": claim.text, "paper": claim.paper, "statistic": claim.statistic, "testbed": testbed,
                     "verdict": verdict})
    return rows


def write_verdicts(out: Path, study: Study, rows: list[dict[str, Any]], stats, seeds: int, quick: bool) -> None:
    (out / "verdicts.json").write_text(json.dumps(rows, indent=2))
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    lines = [f"# {study.title}", "",
             f"Seed paper: *{study.paper or study.seed_file}*. {seeds} seed(s) per condition"
             + (" — **quick mode: a smoke test, the verdicts mean nothing**." if quick else "."),
             ("Intervals are 95% paired bootstrap intervals over seeds (and held-out problems where the claim "
              "is about accuracy); verdicts: reproduced / contradicted / inconclusive."), "",
             "| claim | paper | testbed | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['testbed']} | {verdict_mark(r['verdict'])} |" for r in rows]
    lines += ["", "## Runs", "", ("| condition | seed | best acc | last-4 acc | final acc | reward 2nd half | "
                                   "largest drop | clip frac | accept | crashed at |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for cond, runs in stats.items():
        for i, s in enumerate(runs):
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                cond, i, _pct(s.get("eval_best")), _pct(s.get("eval_lastk")), _pct(s.get("eval_final")),
                _num(s.get("reward_second_half")), _num(s.get("reward_largest_drop")),
                _pct(s.get("clipfrac_mean")), _pct(s.get("accept_mean")), s.get("crashed_at") or "-"))
    (out / "verdicts.md").write_text("\n".join(lines) + "\n")


def verdict_mark(verdict: str | None) -> str:
    return {"reproduced": "reproduced", "contradicted": "**contradicted**", "inconclusive": "inconclusive",
            None: "n/a"}[verdict]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def reproduce(study_name: str, *, out: str | Path | None = None, quick: bool = False, scale: str = "testbed",
              seeds: int | None = None, overrides: list[str] | None = None, dry_run: bool = False,
              progress: bool = True, jobs: int = 1, echo: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) a study, ``jobs`` runs at a time; returns its output directory.

    ``echo`` receives what the command shows: the commands of a dry run, one line per run started,
    and the verdicts at the end (default: this module's logger at INFO level; ``stalerl reproduce``
    prints them). ``progress=False`` silences the training runs' own progress.
    """
    echo = echo or log.info
    if study_name not in STUDIES:
        raise UserError(f"unknown study {study_name!r}; available: {', '.join(STUDIES)}")
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
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
            echo("stalerl train " + " ".join(args) + note)
        return out
    if scale == "paper":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--scale paper trains Qwen3-1.7B-Base and needs a GPU (and network access to the hub "
                             "for the model and DeepScaleR); use --dry-run to print the commands")
    runner = _Runner(jobs, progress)
    to_run = sum(1 for _, _, run_dir, _ in plan if not RunFiles(run_dir).summary.exists())
    if to_run < len(plan):
        echo(f"[{study_name}] {len(plan) - to_run} of {len(plan)} runs already finished in {out}: reused")
    started = time.monotonic()
    try:
        for i in run_order(plan):
            condition, seed, run_dir, args = plan[i - 1]
            if condition.derive is not None:  # hyperparameters from the conditions run before this one
                runner.wait_all()
                derived = replace(condition, hparams=condition.derive(_plan_stats(plan[:i - 1])))
                args = condition_overrides(study, derived, scale=scale, quick=quick, seed=seed, run_dir=run_dir,
                                           extra=overrides or [])
                plan[i - 1] = (derived, seed, run_dir, args)
                _write_plan(out, plan)
            if not RunFiles(run_dir).summary.exists():
                left = time_left(time.monotonic() - started, runner.finished, to_run)
                echo(f"[{study_name}] {i}/{len(plan)}: {condition.name} seed {seed}{left}")
                runner.run(args, run_dir)
        runner.wait_all()
    finally:
        runner.stop()
    stats = _plan_stats(plan)
    rows = verdicts(study, stats)
    write_verdicts(out, study, rows, stats, seeds, quick)
    if study.sweep:  # each objective against the staleness: sweep.md, sweep.png
        from stalerl.studies.sweep import write_sweep

        write_sweep(out, study, stats)
        with open(out / "verdicts.md", "a") as f:
            f.write("\nThe sweep's table and figure (accuracy and stability per objective and staleness): "
                    "[sweep.md](sweep.md).\n")
    _report(out, [d for _, _, d, _ in plan], study.title)
    echo((out / "verdicts.md").read_text())
    return out


def time_left(elapsed: float, finished: int, total: int) -> str:
    """`` (about 25 min left)``: the ``total - finished`` runs still to finish at the pace of the
    ``finished`` ones this call has run (in ``elapsed`` seconds); empty before the first finishes."""
    if finished < 1 or finished >= total:
        return ""
    left = elapsed / finished * (total - finished)
    return f" (about {left / 60:.0f} min left)" if left < 90 * 60 else f" (about {left / 3600:.1f} h left)"


def run_order(plan) -> list[int]:
    """The 1-based positions of ``plan``'s ``(condition, seed, run_dir, args)`` entries in the order
    they run: seed-major (all conditions of seed 0 first), or the plan's own order when a condition
    derives its hyperparameters from the conditions before it."""
    positions = list(range(1, len(plan) + 1))
    if any(condition.derive is not None for condition, *_ in plan):
        return positions
    return sorted(positions, key=lambda i: (plan[i - 1][1], i))


def _plan_stats(plan) -> dict[str, list[dict[str, Any]]]:
    """Per condition, the statistics of its finished runs, in the order of the plan."""
    stats: dict[str, list[dict[str, Any]]] = {}
    for condition, _, run_dir, _ in plan:
        stats.setdefault(condition.name, []).append(run_stats(run_dir))
    return stats


class _Runner:
    """Runs ``stalerl train`` runs: in this process one after the other (``jobs=1``), or up to
    ``jobs`` subprocesses at once, each given its share of the cores (``runtime.cores``)."""

    def __init__(self, jobs: int, progress: bool) -> None:
        from stalerl.runtime import run_cores

        self.jobs = jobs
        self.progress = progress
        self.cores = max(1, run_cores() // jobs)
        self.running: list[tuple[subprocess.Popen, Path]] = []
        self.finished = 0  # runs ended so far (the pace of the study)

    def run(self, args: list[str], run_dir: Path) -> None:
        if self.jobs == 1:
            from stalerl.training.config import load_config
            from stalerl.training.loop import train

            # a run an interrupted study left half done continues from its newest checkpoint (or
            # starts over when it had none), so its logs stay one history
            train(load_config(None, args + ([] if self.progress else ["progress=false"])),
                  resume=run_dir if is_run(run_dir) else None)
            self.finished += 1
            return
        while len(self.running) >= self.jobs:
            self._wait_one()
        run_dir.mkdir(parents=True, exist_ok=True)
        # the share of the cores comes first, so that a runtime.cores given by the user wins
        resume = ["--resume", str(run_dir)] if is_run(run_dir) else []  # a half-done run continues
        cmd = [sys.executable, "-m", "stalerl", "train", *resume, f"runtime.cores={self.cores}", *args,
               "progress=false"]
        with open(run_dir / "train.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.running.append((proc, run_dir))

    def _wait_one(self) -> None:
        """Wait for the first of the running runs to end."""
        while not any(proc.poll() is not None for proc, _ in self.running):
            time.sleep(0.2)
        proc, run_dir = next((p, d) for p, d in self.running if p.returncode is not None)
        self.running.remove((proc, run_dir))
        self.finished += 1
        if proc.returncode in (0, 3):  # 3: the run crashed, a result recorded in its summary
            return
        lines = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
        message = (f"stalerl train for {run_dir} failed (exit code {proc.returncode}): "
                   f"{lines[-1] if lines else 'no output'}; its output is in {run_dir / 'train.log'}")
        # exit code 2: the run's own configuration was wrong, a user error like in this process
        raise UserError(message) if proc.returncode == 2 else RuntimeError(message)

    def wait_all(self) -> None:
        while self.running:
            self._wait_one()

    def stop(self) -> None:
        """Terminate the runs still going (after an error or an interrupt)."""
        for proc, _ in self.running:
            proc.terminate()
        for proc, _ in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running = []


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
        warnings.warn(f"stalerl reproduce: report failed ({err}); verdicts.md and stats.json are written", stacklevel=2)


def verdicts_from_stats(study_name: str, stats_file: str | Path) -> list[dict[str, Any]]:
    """The verdicts of a study recomputed from a saved ``stats.json`` (runs are not needed);
    claims whose statistics the file lacks (older runs) get the verdict None."""
    if study_name not in STUDIES:
        raise UserError(f"unknown study {study_name!r}; available: {', '.join(STUDIES)}")
    return verdicts(STUDIES[study_name], json.loads(Path(stats_file).read_text()))


def main(args) -> int:
    reproduce(args.study, out=args.out, quick=args.quick, scale=args.scale, seeds=args.seeds,
              overrides=args.overrides, dry_run=getattr(args, "dry_run", False), jobs=getattr(args, "jobs", 1),
              echo=lambda text: print(text, flush=True))
    return 0


if __name__ == "__main__":  # python -m stalerl.studies.reproduce STUDY STATS_JSON: verdicts of saved statistics
    import sys

    for row in verdicts_from_stats(sys.argv[1], sys.argv[2]):
        print(f"- {row['claim']}: {verdict_mark(row['verdict'])}\n  {row['testbed']}")
